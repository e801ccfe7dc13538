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

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from swiftmesh.aligner.v1 import aligner_pb2
from swiftmesh.jobkit import estimate as est
from swiftmesh.jobkit import hf
from swiftmesh.jobkit.data import METHOD_KIND, AlignmentData, load_alignment_data
from swiftmesh.jobkit.kinds import Artifact, JobKind, JobPlan, PrepareContext, refuse_oversized
from swiftmesh.jobkit.models import model_id, model_name
from swiftmesh.jobs.v1 import training_pb2
from swiftmesh.runtime.errors import InvalidArgument
from swiftmesh.services.aligner.config import (
    AlignmentConfig,
    CpoSettings,
    DpoSettings,
    GrpoSettings,
    KtoSettings,
    LoraSettings,
    PpoSettings,
    RewardSettings,
    TrainingSettings,
)

R = aligner_pb2.RlhfType
D = training_pb2.DistributionStrategy
RLHF_NAMES = {
    R.RLHF_TYPE_DPO: "dpo",
    R.RLHF_TYPE_KTO: "kto",
    R.RLHF_TYPE_ORPO: "orpo",
    R.RLHF_TYPE_CPO: "cpo",
    R.RLHF_TYPE_SIMPO: "simpo",
    R.RLHF_TYPE_RM: "rm",
    R.RLHF_TYPE_PPO: "ppo",
    R.RLHF_TYPE_GRPO: "grpo",
}
RLHF_BY_NAME = {v: k for k, v in RLHF_NAMES.items()}
# The oneof method_config field each method reads.
METHOD_FIELD = {"dpo": "dpo", "kto": "kto", "orpo": "cpo", "cpo": "cpo", "simpo": "cpo", "rm": "rm", "ppo": "ppo",
                "grpo": "grpo"}
ZERO_STAGE = {D.DISTRIBUTION_STRATEGY_ZERO2: 2, D.DISTRIBUTION_STRATEGY_ZERO3: 3, D.DISTRIBUTION_STRATEGY_ZERO3_OFFLOAD: 3}
_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$")
# Rows tokenized to measure sequence lengths for the estimate.
_LENGTH_SAMPLE = 256


def rlhf_name(spec: aligner_pb2.AlignmentSpec) -> str:
    """``"dpo"`` for RLHF_TYPE_DPO ...; InvalidArgument when unset."""
    try:
        return RLHF_NAMES[spec.rlhf_type]
    except KeyError:
        raise InvalidArgument(
            "spec.rlhf_type is required: one of " + ", ".join(f"RLHF_TYPE_{n.upper()}" for n in RLHF_BY_NAME),
            field_violations=[("spec.rlhf_type", f"got {spec.rlhf_type}")],
            reason="BAD_SPEC",
        ) from None


def _tuner(spec) -> int:
    return spec.tuner or training_pb2.TUNER_LORA


def _strategy(spec) -> int:
    return spec.distribution.strategy or D.DISTRIBUTION_STRATEGY_NONE


def _num_workers(spec) -> int:
    return spec.distribution.num_workers or 1


def _or(v, default):
    return v if v else default


def method_settings(spec: aligner_pb2.AlignmentSpec, method: str) -> dict[str, Any]:
    """The method's settings from the spec, defaults filled (JSON for the workers)."""
    if method == "dpo":
        c = spec.dpo
        return asdict(DpoSettings(loss_type=list(c.loss_type) or ["sigmoid"], beta=_or(c.beta, 0.1),
                                  label_smoothing=c.label_smoothing, rpo_alpha=c.rpo_alpha))
    if method == "kto":
        c = spec.kto
        return asdict(KtoSettings(beta=_or(c.beta, 0.1), desirable_weight=_or(c.desirable_weight, 1.0),
                                  undesirable_weight=_or(c.undesirable_weight, 1.0)))
    if method in ("orpo", "cpo", "simpo"):
        c = spec.cpo
        has_alpha = spec.HasField("cpo") and c.cpo_alpha != 0
        return asdict(CpoSettings(beta=c.beta or None, loss_type=c.loss_type or None, simpo_gamma=_or(c.simpo_gamma, 0.5),
                                  cpo_alpha=c.cpo_alpha if has_alpha else None, label_smoothing=c.label_smoothing))
    if method == "rm":
        c = spec.rm
        return asdict(RewardSettings(center_rewards_coefficient=c.center_rewards_coefficient or None,
                                     use_margin=c.use_margin if c.HasField("use_margin") else True))
    if method == "ppo":
        c = spec.ppo
        return asdict(PpoSettings(
            reward_model=c.reward_model or None, reward_funcs=list(c.reward_funcs),
            rollout_batch_size=_or(c.rollout_batch_size, 8), num_ppo_epochs=_or(c.num_ppo_epochs, 4),
            num_mini_batches=_or(c.num_mini_batches, 1), kl_coef=_or(c.kl_coef, 0.05), cliprange=_or(c.cliprange, 0.2),
            cliprange_value=_or(c.cliprange_value, 0.2), vf_coef=_or(c.vf_coef, 0.1), gamma=_or(c.gamma, 1.0),
            lam=_or(c.lam, 0.95), response_length=_or(c.response_length, 53), temperature=_or(c.temperature, 0.7),
            missing_eos_penalty=c.missing_eos_penalty or None, total_updates=int(c.total_episodes),
        ))
    if method == "grpo":
        c = spec.grpo
        return asdict(GrpoSettings(
            reward_model=c.reward_model or None, reward_funcs=list(c.reward_funcs),
            num_generations=_or(c.num_generations, 4), beta=_or(c.beta, 0.04),
            max_completion_length=_or(c.max_completion_length, 64), temperature=_or(c.temperature, 0.9),
            epsilon=_or(c.epsilon, 0.2), loss_type=c.loss_type or "dapo",
        ))
    raise InvalidArgument(f"unknown rlhf_type {method!r}")


def _settings_obj(method: str, d: dict[str, Any]):
    cls = {"dpo": DpoSettings, "kto": KtoSettings, "orpo": CpoSettings, "cpo": CpoSettings, "simpo": CpoSettings,
           "rm": RewardSettings, "ppo": PpoSettings, "grpo": GrpoSettings}[method]
    return cls(**d)


def resolve_model(models, name: str, field: str = "spec.model") -> dict[str, str]:
    """``{"base_model", "adapter_model"}`` of a hub model (the trainer's resolution: a PEFT
    adapter trains on its lineage base). NotFound when the hub lacks either."""
    from swiftmesh.services.trainer.kinds import resolve_model as trainer_resolve

    try:
        return trainer_resolve(models, name)
    except InvalidArgument as e:
        e.field_violations = [type(v)(field, v.description) for v in e.field_violations]
        raise


class AlignKind(JobKind):
    """One alignment method as a jobkit job kind (see the module docstring)."""

    spec_type = aligner_pb2.AlignmentSpec

    def __init__(self, name: str) -> None:
        if name not in RLHF_BY_NAME:
            raise ValueError(f"unknown alignment kind {name!r}")
        self.name = name

    # Service side -------------------------------------------------------------------------
    def _check_spec(self, spec: aligner_pb2.AlignmentSpec) -> None:
        m = self.name
        v = hf.validate_training(spec.args, _tuner(spec), spec.lora, spec.distribution)
        if not spec.model:
            v.append(("spec.model", "required: models/{model} in the hub (a base model or a PEFT adapter)"))
        if not spec.datasets:
            v.append(("spec.datasets", "at least one dataset is required"))
        which = spec.WhichOneof("method_config")
        if which and which != METHOD_FIELD[m]:
            v.append((f"spec.{which}", f"rlhf_type {m} reads spec.{METHOD_FIELD[m]}, not spec.{which}"))
        if spec.max_prompt_length < 0:
            v.append(("spec.max_prompt_length", f"must be >= 0, got {spec.max_prompt_length}"))
        if spec.output_model_id and not _MODEL_ID_RE.match(spec.output_model_id.removeprefix("models/")):
            v.append(("spec.output_model_id", f"invalid model id {spec.output_model_id!r}"))
        if m == "dpo":
            if "robust" in spec.dpo.loss_type and not 0 <= spec.dpo.label_smoothing < 0.5:
                v.append(("spec.dpo.label_smoothing", "must lie in [0, 0.5) for the robust loss"))
            if "exo_pair" in spec.dpo.loss_type and spec.dpo.label_smoothing <= 0:
                v.append(("spec.dpo.label_smoothing", "exo_pair needs label_smoothing > 0 (the paper uses 1e-3)"))
            if spec.dpo.beta < 0:
                v.append(("spec.dpo.beta", f"must be > 0, got {spec.dpo.beta}"))
        if m in ("ppo", "grpo"):
            c = getattr(spec, m)
            if not c.reward_model and not c.reward_funcs:
                v.append((f"spec.{m}.reward_model",
                          f"{m} needs a reward: a reward model (models/{{id}}, e.g. from an rm job) or built-in "
                          f"spec.{m}.reward_funcs (e.g. \"contains:Paris\", \"token_count:42\", \"length:64\")"))
            for i, f in enumerate(c.reward_funcs):
                from swiftmesh.services.aligner.rewards import make_reward_func

                try:
                    make_reward_func(f)
                except InvalidArgument as e:
                    v.append((f"spec.{m}.reward_funcs[{i}]", e.message))
        if m == "ppo":
            p = spec.ppo
            if _strategy(spec) not in (D.DISTRIBUTION_STRATEGY_NONE, D.DISTRIBUTION_STRATEGY_DDP):
                v.append(("spec.distribution.strategy", "ppo runs with strategy none or ddp (DeepSpeed ZeRO is not "
                                                        "supported for PPO)"))
            rb, nmb = p.rollout_batch_size or 8, p.num_mini_batches or 1
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
            g = spec.grpo
            n = g.num_generations or 4
            batch = (spec.args.per_device_train_batch_size or 1) * (spec.args.gradient_accumulation_steps or 1) * \
                _num_workers(spec)
            if n < 2:
                v.append(("spec.grpo.num_generations", f"GRPO compares completions of a prompt: needs >= 2, got {n}"))
            elif batch % n:
                v.append(("spec.grpo.num_generations",
                          f"per_device_train_batch_size x gradient_accumulation_steps x num_workers ({batch}) must be "
                          f"a multiple of num_generations ({n})"))
        if spec.ref_model and _tuner(spec) != training_pb2.TUNER_FULL:
            v.append(("spec.ref_model", "only for full fine-tuning: with PEFT the reference is the policy with its "
                                        "adapter disabled (or the frozen starting adapter)"))
        if v:
            raise InvalidArgument(f"invalid alignment spec: {v[0][0]}: {v[0][1]}", field_violations=v,
                                  reason="BAD_SPEC")

    def _reward_model(self, spec, ctx: PrepareContext) -> dict[str, str] | None:
        c = getattr(spec, self.name, None) if self.name in ("ppo", "grpo") else None
        if c is None or not c.reward_model:
            return None
        m = resolve_model(ctx.models, c.reward_model, f"spec.{self.name}.reward_model")
        return {"model": m["adapter_model"] or m["base_model"], "base": m["base_model"] if m["adapter_model"] else ""}

    def _plan_parts(self, spec, ctx: PrepareContext):
        from swiftmesh.services.aligner.methods import truncate_prompts
        from swiftmesh.services.aligner.models import load_tokenizer

        self._check_spec(spec)
        tuner = _tuner(spec)
        args = hf.resolve_args(spec.args, tuner)
        lora = hf.resolve_lora(spec.lora)
        models = resolve_model(ctx.models, spec.model)
        reward = self._reward_model(spec, ctx)
        ref = model_name(spec.ref_model) if spec.ref_model else ""
        if ref:
            ctx.models.get(ref)
        base_dir = Path(ctx.models.materialize(models["base_model"]))
        adapter_dir = Path(ctx.models.materialize(models["adapter_model"])) if models["adapter_model"] else None
        tokenizer = load_tokenizer(str(base_dir), str(adapter_dir) if adapter_dir else None, spec.chat_template or None)
        data = load_alignment_data(list(spec.datasets), self.name, seed=args.seed, models=ctx.models)
        if data.style == "conversational" and not tokenizer.chat_template:
            raise InvalidArgument(
                f"the datasets are conversational (lists of messages) but {models['base_model']} has no chat "
                "template; give spec.chat_template (a Jinja template) or use plain-text rows",
                field_violations=[("spec.chat_template", "required: the model has no chat template")],
                reason="NO_CHAT_TEMPLATE",
            )
        max_prompt = spec.max_prompt_length or 512
        shortened = truncate_prompts(data, tokenizer, max_prompt)
        train, evals = _split(data.rows, args.split_dataset_ratio, args.seed)
        if not train:
            raise InvalidArgument("the datasets hold no training rows", field_violations=[("spec.datasets", "empty")],
                                  reason="BAD_DATASET")
        notes = [f"dataset {name}: " + ", ".join(f"{n} rows as {f}" for f, n in fm.items())
                 for name, fm in data.formats.items()]
        notes.append(f"{len(train)} training rows ({data.style})" + (f", {len(evals)} held out" if evals else "")
                     + (f"; {shortened} prompts truncated to {max_prompt} tokens" if shortened else ""))
        return tuner, args, lora, models, reward, ref, base_dir, tokenizer, data, train, evals, notes

    def _steps(self, spec, args: hf.Args, n_train: int) -> int:
        world = _num_workers(spec)
        if self.name == "ppo":
            p = spec.ppo
            if p.total_episodes > 0:
                return int(p.total_episodes)
            if args.max_steps > 0:
                return args.max_steps
            per_update = (p.rollout_batch_size or 8) * world
            return max(1, math.ceil(args.num_train_epochs * n_train / per_update))
        if args.max_steps > 0:
            return args.max_steps
        rows = n_train
        if self.name == "grpo":
            rows = n_train * (spec.grpo.num_generations or 4)
        per_rank = math.ceil(rows / world)
        batches = math.ceil(per_rank / args.per_device_train_batch_size)
        per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        return max(1, math.ceil(per_epoch * args.num_train_epochs))

    def _seq_len(self, spec, tokenizer, train: list[dict], args: hf.Args) -> tuple[int, float]:
        """(longest, mean) tokens of prompt + longest reply over a sample of rows."""
        lens = []
        gen = 0
        if self.name == "ppo":
            gen = spec.ppo.response_length or 53
        elif self.name == "grpo":
            gen = spec.grpo.max_completion_length or 64
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

    def _estimate(self, spec, args: hf.Args, lora: hf.Lora, base_dir: Path, tokenizer, train: list, ctx,
                  steps: int, reward: dict | None) -> training_pb2.Estimate:
        tuner = _tuner(spec)
        strategy = _strategy(spec)
        world = _num_workers(spec)
        shape = est.model_shape(str(base_dir))
        full = tuner == training_pb2.TUNER_FULL
        trainable = shape.total_params if full else est.lora_trainable_params(
            shape, lora.r, lora.target_modules, use_dora=tuner == training_pb2.TUNER_DORA)
        seq, avg = self._seq_len(spec, tokenizer, train, args)
        # Sequences per micro-batch: DPO-family and RM forward chosen + rejected together;
        # KTO adds its mismatched KL batch; PPO/GRPO micro-batches are completions.
        seqs_per_row = 2 if METHOD_KIND[self.name] in ("paired", "unpaired") else 1
        micro = args.per_device_train_batch_size * seqs_per_row
        # Frozen copies: the reference model in full fine-tuning for methods that use one.
        uses_ref = self.name in ("dpo", "kto", "ppo") or (self.name == "grpo" and (spec.grpo.beta or 0.04) > 0)
        extra = 1 if (full and uses_ref) else 0
        mem = est.estimate_memory(
            shape, trainable_params=trainable, full=full, qlora=tuner == training_pb2.TUNER_QLORA,
            zero_stage=ZERO_STAGE.get(strategy, 0), offload=strategy == D.DISTRIBUTION_STRATEGY_ZERO3_OFFLOAD,
            world_size=world, micro_batch=micro, seq_len=seq, bf16=args.bf16,
            gradient_checkpointing=args.gradient_checkpointing, extra_frozen_copies=extra,
        )
        notes = []
        if extra:
            notes.append("full fine-tuning keeps a frozen reference copy of the model")
        elif uses_ref and not full:
            notes.append("PEFT: the reference is the policy with its adapter disabled (no second copy)")
        if reward:
            rm_dir = ctx.models.materialize(reward["base"] or reward["model"])
            rm_shape = est.model_shape(str(rm_dir))
            mem.weights += rm_shape.total_params * 4
            notes.append(f"reward model {reward['model']}: {rm_shape.total_params / 1e6:.1f} M parameters, frozen")
        # Training tokens: every row's sequences once per epoch; PPO: rollouts (generation +
        # scoring forward passes, then num_ppo_epochs training passes).
        if self.name == "ppo":
            rollouts = steps * (spec.ppo.rollout_batch_size or 8) * world
            passes = (spec.ppo.num_ppo_epochs or 4) + 1
            tokens = rollouts * avg * passes
        else:
            tokens = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world * avg * \
                seqs_per_row
        fpt = est.flops_per_token(shape, full=full, gradient_checkpointing=args.gradient_checkpointing, seq_len=int(avg))
        if uses_ref or self.name in ("ppo", "grpo"):
            fpt *= 1.5  # reference / rollout forward passes (2P per token on top of 4-6P)
        res = ctx.resources()
        per_node = max(1, math.ceil(world / max(1, res.num_nodes)))
        per_worker_mem = spec.distribution.memory_bytes_per_worker or res.node_available_memory_bytes // per_node
        e = training_pb2.Estimate()
        est.fill_estimate(e, mem, available_bytes_per_worker=per_worker_mem, total_flops=tokens * fpt,
                          num_workers=world, cpus_per_worker=spec.distribution.cpus_per_worker or 1.0,
                          gpus_per_worker=spec.distribution.gpus_per_worker, bf16=args.bf16,
                          trainable_params=trainable, total_params=shape.total_params)
        e.notes.insert(0, f"{self.name}: {len(train)} training rows, longest {seq} tokens, {steps} "
                          f"{'updates' if self.name == 'ppo' else 'optimizer steps'}, ~{tokens:,.0f} tokens")
        for n in reversed(notes):
            e.notes.insert(1, n)
        return e

    def estimate(self, spec, ctx: PrepareContext) -> training_pb2.Estimate:
        tuner, args, lora, models, reward, ref, base_dir, tok, data, train, evals, notes = self._plan_parts(spec, ctx)
        steps = self._steps(spec, args, len(train))
        return self._estimate(spec, args, lora, base_dir, tok, train, ctx, steps, reward)

    def prepare(self, spec, ctx: PrepareContext) -> JobPlan:
        tuner, args, lora, models, reward, ref, base_dir, tok, data, train, evals, notes = self._plan_parts(spec, ctx)
        steps = self._steps(spec, args, len(train))
        estimate = self._estimate(spec, args, lora, base_dir, tok, train, ctx, steps, reward)
        refuse_oversized(estimate, ctx, "Use PEFT, more workers with zero3, a smaller batch or max_length, "
                                        "gradient checkpointing, or force=true")
        out_id = self.output_model_id(spec, ctx)
        strategy = _strategy(spec)
        config = {
            "rlhf_type": self.name,
            "tuner": tuner,
            "strategy": strategy,
            "args": args.to_json(),
            "lora": lora.to_json(),
            "method": method_settings(spec, self.name),
            "base_model": models["base_model"],
            "adapter_model": models["adapter_model"],
            "spec_model": model_name(spec.model),
            "ref_model": ref,
            "reward_model": reward,
            "output_model_id": out_id,
            "chat_template": spec.chat_template,
            "max_prompt_length": spec.max_prompt_length or 512,
            "style": data.style,
            "use_gpu": spec.distribution.gpus_per_worker > 0,
            "has_eval": bool(evals),
        }
        notes.append(
            f"{self.name} {hf.TUNER_NAMES[tuner]} on {models['base_model']}"
            + (f" (continuing adapter {models['adapter_model']}; reference: its frozen copy)"
               if models["adapter_model"] and tuner != training_pb2.TUNER_FULL else "")
            + f", {hf.STRATEGY_NAMES[strategy]} x {_num_workers(spec)} workers, {steps} "
            + ("updates" if self.name == "ppo" else "steps")
            + f"; estimate {est.gib(estimate.total_bytes_per_worker)} per worker"
        )
        return JobPlan(
            config=config,
            data={"train": train, "eval": evals},
            num_workers=_num_workers(spec),
            cpus_per_worker=spec.distribution.cpus_per_worker or 1.0,
            gpus_per_worker=spec.distribution.gpus_per_worker,
            memory_bytes_per_worker=spec.distribution.memory_bytes_per_worker,
            total_steps=steps,
            models=[m for m in (models["base_model"], models["adapter_model"], ref,
                                *((reward["model"], reward["base"]) if reward else ())) if m],
            checkpoints_to_keep=args.save_total_limit,
            notes=notes,
        )

    # Worker side --------------------------------------------------------------------------
    def train(self, ctx) -> list[Artifact]:
        return run_alignment(ctx)


def _split(rows: list[dict], ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    from swiftmesh.jobkit.data import split

    return split(rows, ratio, seed)


def _fix_adapter_config(adapter_dir: Path, base_model: str) -> None:
    """Point ``base_model_name_or_path`` at the hub id of the base (not a worker's temp path)."""
    p = adapter_dir / "adapter_config.json"
    if p.is_file():
        cfg = json.loads(p.read_text())
        cfg["base_model_name_or_path"] = model_id(base_model)
        p.write_text(json.dumps(cfg, indent=2))


def worker_config(ctx, out_dir: Path) -> AlignmentConfig:
    """The domain config of the job in this worker: local model paths, jobkit's TrainingArguments."""
    cfg = ctx.config
    args = hf.Args(**cfg["args"])
    m = cfg["rlhf_type"]
    materialize = ctx.models.materialize
    base_dir = Path(materialize(cfg["base_model"]))
    adapter_dir = Path(materialize(cfg["adapter_model"])) if cfg["adapter_model"] else None
    hf.leave_process_group_of_one(ctx.world_size, cfg["strategy"])
    kw = hf.training_arguments_kwargs(args, output_dir=out_dir, strategy=cfg["strategy"], world_size=ctx.world_size,
                                      use_gpu=cfg["use_gpu"], has_eval=cfg["has_eval"])
    if m in ("dpo", "kto", "orpo", "cpo", "simpo", "rm", "grpo"):
        kw["remove_unused_columns"] = False
    settings = _settings_obj(m, cfg["method"])
    reward = cfg.get("reward_model")
    if reward and m in ("ppo", "grpo"):
        settings.reward_model = str(materialize(reward["model"]))
        settings.reward_model_base = str(materialize(reward["base"])) if reward.get("base") else None
    acfg = AlignmentConfig(
        rlhf_type=m,
        model=str(base_dir),
        adapter=str(adapter_dir) if adapter_dir else None,
        tuner=hf.TUNER_NAMES[cfg["tuner"]],
        lora=LoraSettings(**cfg["lora"]),
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

    from swiftmesh.services.aligner.methods import build_trainer, save_result

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
            + f" ({acfg.tuner}), {len(data)} rows")
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
        from swiftmesh.services.aligner.models import merge_seq_cls_adapter

        merged = ctx.work_dir / "merged"
        merge_seq_cls_adapter(Path(acfg.output_dir) / "start-merged", final, merged)
        final, out_kind = merged, "merged"
    if out_kind == "adapter":
        _fix_adapter_config(final, base)
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
    return [AlignKind(n) for n in RLHF_BY_NAME]


__all__ = ["AlignKind", "RLHF_NAMES", "RLHF_BY_NAME", "kinds", "method_settings", "rlhf_name", "run_alignment"]
