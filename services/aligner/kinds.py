"""The aligner's job kinds for :mod:`swiftmesh.jobkit`: ``dpo``, ``kto``, ``orpo``, ``cpo``,
``simpo``, ``rm``, ``ppo`` and ``grpo`` (one :class:`AlignKind` each).

Service side (``prepare``, before any worker starts): the spec is checked field by field; the
policy looked up in the hub (NOT_FOUND when it lacks it; a PEFT adapter, e.g. from an SFT job,
is trained further on its base); every dataset read, its format detected per row, validated
and converted to TRL's columns (a bad row fails CreateJob with INVALID_ARGUMENT naming the
file, the row and the fields the method expects); long prompts truncated; reward and reference
models looked up; steps counted; memory estimated (RESOURCE_EXHAUSTED unless forced).

Worker side (``train``, in each Ray Train worker): :func:`~swiftmesh.services.aligner.methods.build_trainer`
with the job machinery's ``TrainingArguments`` (DDP / DeepSpeed ZeRO, checkpoint cadence) and
its callback (metrics on WatchJob and TensorBoard, checkpoints to Ray storage); then rank 0
returns the adapter (or full model) for the hub, with lineage ``base_model`` = the base and
``parent_model`` = the adapter the job started from (base -> sft adapter -> dpo adapter).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from swiftmesh.jobkit import estimate as est
from swiftmesh.jobkit import hf
from swiftmesh.jobkit.data import METHOD_KIND, AlignmentData, ignored_warning, load_alignment_data, split
from swiftmesh.jobkit.kinds import Artifact, JobKind, JobPlan, PrepareContext, refuse_oversized
from swiftmesh.jobkit.models import fix_adapter_config, model_name, resolve_model
from swiftmesh.jobkit.plan import count_steps, estimate_training, plan_resources, tuning_config
from swiftmesh.jobkit.settings import LoraSettings, Strategy, TrainingSettings, Tuner
from swiftmesh.runtime.errors import InvalidArgument

from .config import METHOD_FIELD, RLHF_TYPES, AlignmentConfig, AlignmentSpec

# Rows tokenized to measure sequence lengths for the estimate.
_LENGTH_SAMPLE = 256


class AlignKind(JobKind):
    """One alignment method as a jobkit job kind (see the module docstring)."""

    spec_type = AlignmentSpec

    def __init__(self, name: str) -> None:
        if name not in RLHF_TYPES:
            raise ValueError(f"unknown alignment kind {name!r}")
        self.name = name

    # Service side -------------------------------------------------------------------------
    def _check_spec(self, spec: AlignmentSpec) -> None:
        m = self.name
        v = spec.violations("required: models/{model} in the hub (a base model or a PEFT adapter)")
        which = spec.method_config
        if which and which != METHOD_FIELD[m]:
            v.append((f"spec.{which}", f"rlhf_type {m} reads spec.{METHOD_FIELD[m]}, not spec.{which}"))
        if spec.max_prompt_length < 0:
            v.append(("spec.max_prompt_length", f"must be >= 0, got {spec.max_prompt_length}"))
        c = spec.method(m)
        if m == "dpo":
            if "robust" in c.loss_type and not 0 <= c.label_smoothing < 0.5:
                v.append(("spec.dpo.label_smoothing", "must lie in [0, 0.5) for the robust loss"))
            if "exo_pair" in c.loss_type and c.label_smoothing <= 0:
                v.append(("spec.dpo.label_smoothing", "exo_pair needs label_smoothing > 0 (the paper uses 1e-3)"))
            if c.beta < 0:
                v.append(("spec.dpo.beta", f"must be > 0, got {c.beta}"))
        if m in ("ppo", "grpo"):
            if not c.reward_model and not c.reward_funcs:
                v.append((f"spec.{m}.reward_model",
                          f"{m} needs a reward: a reward model (models/{{id}}, e.g. from an rm job) or built-in "
                          f"spec.{m}.reward_funcs (e.g. \"contains:Paris\", \"token_count:42\", \"length:64\")"))
            for i, f in enumerate(c.reward_funcs):
                from .rewards import make_reward_func

                try:
                    make_reward_func(f)
                except InvalidArgument as e:
                    v.append((f"spec.{m}.reward_funcs[{i}]", e.message))
        if m == "ppo":
            p = c
            if spec.distribution.strategy not in (Strategy.NONE, Strategy.DDP):
                v.append(("spec.distribution.strategy", "ppo runs with strategy none or ddp (DeepSpeed ZeRO is not "
                                                        "supported for PPO)"))
            rb, nmb = p.rollout_batch_size, p.num_mini_batches or 1
            if rb % nmb:
                v.append(("spec.ppo.num_mini_batches", f"must divide rollout_batch_size ({rb}), got {nmb}"))
            else:
                mini = rb // nmb
                mb = spec.args.per_device_train_batch_size or 1
                if mini % min(mb, mini):
                    v.append(("spec.args.per_device_train_batch_size",
                              f"must divide the PPO minibatch rollout_batch_size / num_mini_batches ({mini}), got {mb}"))
            for f in ("kl_coef", "cliprange", "cliprange_value", "vf_coef", "temperature"):
                if getattr(p, f) < 0:
                    v.append((f"spec.ppo.{f}", f"must be >= 0, got {getattr(p, f)}"))
            if not 0 <= p.gamma <= 1 or not 0 <= p.lam <= 1:
                v.append(("spec.ppo.gamma", "gamma and lam must lie in [0, 1]"))
        if m == "grpo":
            n = c.num_generations
            batch = (spec.args.per_device_train_batch_size or 1) * (spec.args.gradient_accumulation_steps or 1) * \
                spec.distribution.num_workers
            if n < 2:
                v.append(("spec.grpo.num_generations", f"GRPO compares completions of a prompt: needs >= 2, got {n}"))
            elif batch % n:
                v.append(("spec.grpo.num_generations",
                          f"per_device_train_batch_size x gradient_accumulation_steps x num_workers ({batch}) must be "
                          f"a multiple of num_generations ({n})"))
        if spec.ref_model and spec.tuner != Tuner.FULL:
            v.append(("spec.ref_model", "only for full fine-tuning: with PEFT the reference is the policy with its "
                                        "adapter disabled (or the frozen starting adapter)"))
        if v:
            raise InvalidArgument(f"invalid alignment spec: {v[0][0]}: {v[0][1]}", field_violations=v,
                                  reason="BAD_SPEC")

    def _reward_model(self, spec: AlignmentSpec, ctx: PrepareContext) -> dict[str, str] | None:
        c = spec.method(self.name) if self.name in ("ppo", "grpo") else None
        if c is None or not c.reward_model:
            return None
        m = resolve_model(ctx.models, c.reward_model, f"spec.{self.name}.reward_model")
        return {"model": m["adapter_model"] or m["base_model"], "base": m["base_model"] if m["adapter_model"] else ""}

    def _plan_parts(self, spec: AlignmentSpec, ctx: PrepareContext):
        from .methods import truncate_prompts
        from .models import load_tokenizer

        self._check_spec(spec)
        tuner = spec.tuner
        args = spec.args.resolved(tuner)
        lora = spec.lora
        models = resolve_model(ctx.models, spec.model)
        reward = self._reward_model(spec, ctx)
        ref = model_name(spec.ref_model) if spec.ref_model else ""
        if ref:
            ctx.models.get(ref)
        base_dir = Path(ctx.models.materialize(models["base_model"]))
        adapter_dir = Path(ctx.models.materialize(models["adapter_model"])) if models["adapter_model"] else None
        tokenizer = load_tokenizer(str(base_dir), str(adapter_dir) if adapter_dir else None, spec.chat_template or None)
        data = load_alignment_data(list(spec.datasets), self.name, seed=args.seed, models=ctx.models,
                                   ignore_columns=spec.ignore_columns)
        if data.style == "conversational" and not tokenizer.chat_template:
            raise InvalidArgument(
                f"the datasets are conversational (lists of messages) but {models['base_model']} has no chat "
                "template; give spec.chat_template (a Jinja template) or use plain-text rows",
                field_violations=[("spec.chat_template", "required: the model has no chat template")],
                reason="NO_CHAT_TEMPLATE",
            )
        max_prompt = spec.max_prompt_length
        shortened = truncate_prompts(data, tokenizer, max_prompt)
        train, evals = split(data.rows, args.split_dataset_ratio, args.seed)
        if not train:
            raise InvalidArgument("the datasets hold no training rows", field_violations=[("spec.datasets", "empty")],
                                  reason="BAD_DATASET")
        notes = [f"dataset {name}: " + ", ".join(f"{n} rows as {f}" for f, n in fm.items())
                 for name, fm in data.formats.items()]
        if data.ignored:
            notes.append(ignored_warning("the datasets", data.ignored))
        notes.append(f"{len(train)} training rows ({data.style})" + (f", {len(evals)} held out" if evals else "")
                     + (f"; {shortened} prompts truncated to {max_prompt} tokens" if shortened else ""))
        return tuner, args, lora, models, reward, ref, base_dir, tokenizer, data, train, evals, notes

    def _steps(self, spec: AlignmentSpec, args: TrainingSettings, n_train: int) -> int:
        world = spec.distribution.num_workers
        if self.name == "ppo":
            p = spec.method("ppo")
            if p.total_updates > 0:
                return int(p.total_updates)
            if args.max_steps > 0:
                return args.max_steps
            per_update = p.rollout_batch_size * world
            return max(1, math.ceil(args.num_train_epochs * n_train / per_update))
        rows = n_train * (spec.method("grpo").num_generations if self.name == "grpo" else 1)
        return count_steps(rows, world, args)

    def _seq_len(self, spec: AlignmentSpec, tokenizer, train: list[dict], args: TrainingSettings) -> tuple[int, float]:
        """(longest, mean) tokens of prompt + longest reply over a sample of rows."""
        lens = []
        gen = 0
        if self.name == "ppo":
            gen = spec.method("ppo").response_length
        elif self.name == "grpo":
            gen = spec.method("grpo").max_completion_length
        for row in train[:_LENGTH_SAMPLE]:
            prompt = row["prompt"]
            replies = [row[k] for k in ("chosen", "rejected", "completion") if k in row]
            best = 0
            for r in replies or [None]:
                if isinstance(prompt, list):
                    msgs = list(prompt) + (list(r) if r else [])
                    n = len(tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=r is None,
                                                          return_dict=False))
                else:
                    n = len(tokenizer(prompt + (r or ""), add_special_tokens=True)["input_ids"])
                best = max(best, n)
            lens.append(min(best + gen, args.max_length))
        lens = lens or [1]
        return max(lens), sum(lens) / len(lens)

    def _estimate(self, spec: AlignmentSpec, args: TrainingSettings, base_dir: Path, tokenizer, train: list,
                  ctx: PrepareContext, steps: int, reward: dict | None) -> est.Estimate:
        full = spec.tuner == Tuner.FULL
        world = spec.distribution.num_workers
        seq, avg = self._seq_len(spec, tokenizer, train, args)
        # Sequences per micro-batch: DPO-family and RM forward chosen + rejected together;
        # KTO adds its mismatched KL batch; PPO/GRPO micro-batches are completions.
        seqs_per_row = 2 if METHOD_KIND[self.name] in ("paired", "unpaired") else 1
        micro = args.per_device_train_batch_size * seqs_per_row
        # Frozen copies: the reference model in full fine-tuning for methods that use one.
        uses_ref = self.name in ("dpo", "kto", "ppo") or (self.name == "grpo" and spec.method("grpo").beta > 0)
        extra = 1 if (full and uses_ref) else 0
        notes = []
        if extra:
            notes.append("full fine-tuning keeps a frozen reference copy of the model")
        elif uses_ref and not full:
            notes.append("PEFT: the reference is the policy with its adapter disabled (no second copy)")
        reward_bytes = 0
        if reward:
            rm_dir = ctx.models.materialize(reward["base"] or reward["model"])
            rm_shape = est.model_shape(str(rm_dir))
            reward_bytes = rm_shape.total_params * 4
            notes.append(f"reward model {reward['model']}: {rm_shape.total_params / 1e6:.1f} M parameters, frozen")
        # Training tokens: every row's sequences once per epoch; PPO: rollouts (generation +
        # scoring forward passes, then num_ppo_epochs training passes).
        if self.name == "ppo":
            p = spec.method("ppo")
            rollouts = steps * p.rollout_batch_size * world
            tokens = rollouts * avg * (p.num_ppo_epochs + 1)
        else:
            tokens = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world * avg * \
                seqs_per_row
        # Reference / rollout forward passes: 2P per token on top of 4-6P.
        factor = 1.5 if (uses_ref or self.name in ("ppo", "grpo")) else 1.0
        e = estimate_training(spec, args, base_dir, ctx, seq_len=seq, avg_len=avg, micro_batch=micro, tokens=tokens,
                              extra_frozen_copies=extra, extra_weight_bytes=reward_bytes, flops_factor=factor)
        e.notes.insert(0, f"{self.name}: {len(train)} training rows, longest {seq} tokens, {steps} "
                          f"{'updates' if self.name == 'ppo' else 'optimizer steps'}, ~{tokens:,.0f} tokens")
        for n in reversed(notes):
            e.notes.insert(1, n)
        return e

    def estimate(self, spec: AlignmentSpec, ctx: PrepareContext) -> est.Estimate:
        """Memory per worker and time of the job (reads the data, as prepare does)."""
        _, args, _, _, reward, _, base_dir, tok, _, train, _, _ = self._plan_parts(spec, ctx)
        steps = self._steps(spec, args, len(train))
        return self._estimate(spec, args, base_dir, tok, train, ctx, steps, reward)

    def prepare(self, spec: AlignmentSpec, ctx: PrepareContext) -> JobPlan:
        """Check the spec, read the data, estimate (ResourceExhausted unless forced), plan."""
        tuner, args, _, models, reward, ref, base_dir, tok, data, train, evals, notes = self._plan_parts(spec, ctx)
        steps = self._steps(spec, args, len(train))
        estimate = self._estimate(spec, args, base_dir, tok, train, ctx, steps, reward)
        refuse_oversized(estimate, ctx, "Use PEFT, more workers with zero3, a smaller batch or max_length, "
                                        "gradient checkpointing, or force=true")
        out_id = self.output_model_id(spec, ctx)
        config = tuning_config(spec, args, models, out_id, has_eval=bool(evals)) | {
            "rlhf_type": self.name,
            "method": asdict(spec.method(self.name)),
            "ref_model": ref,
            "reward_model": reward,
            "max_prompt_length": spec.max_prompt_length,
            "style": data.style,
        }
        notes.append(
            f"{self.name} {tuner.label} on {models['base_model']}"
            + (f" (continuing adapter {models['adapter_model']}; reference: its frozen copy)"
               if models["adapter_model"] and tuner != Tuner.FULL else "")
            + f", {spec.distribution.strategy.label} x {spec.distribution.num_workers} workers, {steps} "
            + ("updates" if self.name == "ppo" else "steps")
            + f"; estimate {est.gib(estimate.total_bytes_per_worker)} per worker"
        )
        return JobPlan(
            config=config,
            data={"train": train, "eval": evals},
            **plan_resources(spec.distribution),
            total_steps=steps,
            models=[m for m in (models["base_model"], models["adapter_model"], ref,
                                *((reward["model"], reward["base"]) if reward else ())) if m],
            checkpoints_to_keep=args.save_total_limit,
            notes=notes,
        )

    # Worker side --------------------------------------------------------------------------
    def train(self, ctx) -> list[Artifact]:
        """The alignment loop in this Ray worker (:func:`run_alignment`)."""
        return run_alignment(ctx)


def worker_config(ctx, out_dir: Path) -> AlignmentConfig:
    """The domain config of the job in this worker: local model paths, jobkit's TrainingArguments."""
    cfg = ctx.config
    args = TrainingSettings.from_json(cfg["args"])
    strategy = Strategy(cfg["strategy"])
    m = cfg["rlhf_type"]
    materialize = ctx.models.materialize
    base_dir = Path(materialize(cfg["base_model"]))
    adapter_dir = Path(materialize(cfg["adapter_model"])) if cfg["adapter_model"] else None
    hf.leave_process_group_of_one(ctx.world_size, strategy)
    kw = hf.training_arguments_kwargs(args, output_dir=out_dir, strategy=strategy, world_size=ctx.world_size,
                                      use_gpu=cfg["use_gpu"], has_eval=cfg["has_eval"])
    if m in ("dpo", "kto", "orpo", "cpo", "simpo", "rm", "grpo"):
        kw["remove_unused_columns"] = False
    settings = type(AlignmentSpec().method(m))(**cfg["method"])
    reward = cfg.get("reward_model")
    if reward and m in ("ppo", "grpo"):
        settings.reward_model = str(materialize(reward["model"]))
        settings.reward_model_base = str(materialize(reward["base"])) if reward.get("base") else None
    acfg = AlignmentConfig(
        rlhf_type=m,
        model=str(base_dir),
        adapter=str(adapter_dir) if adapter_dir else None,
        tuner=Tuner(cfg["tuner"]),
        lora=LoraSettings.from_json(cfg["lora"]),
        training=TrainingSettings(max_length=args.max_length, seed=args.seed,
                                  gradient_checkpointing=args.gradient_checkpointing,
                                  per_device_train_batch_size=args.per_device_train_batch_size),
        ref_model=str(materialize(cfg["ref_model"])) if cfg.get("ref_model") else None,
        max_prompt_length=cfg["max_prompt_length"],
        chat_template=cfg["chat_template"] or None,
        output_dir=str(out_dir),
        hf_args=kw,
    )
    setattr(acfg, {"orpo": "cpo", "simpo": "cpo"}.get(m, m), settings)
    return acfg


def run_alignment(ctx) -> list[Artifact]:
    """One Ray Train worker of an alignment job: build the trainer, train (or resume), save,
    and (rank 0) return the artifact for the hub."""
    import torch
    from transformers import set_seed

    from .methods import build_trainer, save_result

    cfg = ctx.config
    m = cfg["rlhf_type"]
    set_seed(int(cfg["args"]["seed"]))
    if not cfg["use_gpu"]:
        torch.set_num_threads(max(1, int(torch.get_num_threads())))
    out_dir = ctx.work_dir / "hf"
    acfg = worker_config(ctx, out_dir)
    style = cfg["style"]
    data = AlignmentData(m, ctx.data["train"], style, {})
    evals = AlignmentData(m, ctx.data.get("eval") or [], style, {}) if cfg["has_eval"] else None
    ctx.log(f"{m}: loading {cfg['base_model']}" + (f" + adapter {cfg['adapter_model']}" if cfg["adapter_model"] else "")
            + f" ({acfg.tuner.label}), {len(data)} rows")
    trainer = build_trainer(acfg, data, callbacks=[ctx.hf_callback()], eval_data=evals, prompts_truncated=True)
    ctx.log(f"{type(trainer).__name__}: world size {trainer.args.world_size}, device {trainer.args.device}, "
            f"{torch.get_num_threads()} CPU threads, bf16 {trainer.args.bf16}"
            + (", DeepSpeed" if getattr(trainer, "is_deepspeed_enabled", False) else ""))
    trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    final = ctx.work_dir / "final"
    kind = save_result(trainer, final)  # every rank (ZeRO-3 gathers); rank 0 writes
    if not ctx.is_main:
        return []
    base, adapter = cfg["base_model"], cfg["adapter_model"]
    out_kind = kind
    if kind == "adapter" and (m == "rm" and adapter):
        # A reward model trained on the merged SFT model: ship it merged (its base is not in the hub).
        from .models import merge_seq_cls_adapter

        merged = ctx.work_dir / "merged"
        merge_seq_cls_adapter(Path(acfg.output_dir) / "start-merged", final, merged)
        final, out_kind = merged, "merged"
    if out_kind == "adapter":
        fix_adapter_config(final, base)
    labels = {"swiftmesh.ai/rlhf-type": m}
    if m == "rm":
        labels["swiftmesh.ai/task"] = "reward-model"
    parent = adapter or (cfg["spec_model"] if cfg["spec_model"] != base else "")
    return [Artifact(final, model_id=cfg["output_model_id"], kind=out_kind,
                     format="peft_adapter" if out_kind == "adapter" else "full",
                     base_model=base, parent_model=parent or (base if out_kind != "adapter" else ""),
                     labels=labels)]


def kinds() -> list[JobKind]:
    """Every alignment kind, for the aligner's JobManager."""
    return [AlignKind(n) for n in RLHF_TYPES]


__all__ = ["AlignKind", "kinds", "run_alignment", "worker_config"]
