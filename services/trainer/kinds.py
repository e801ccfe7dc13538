"""The trainer's job kinds: ``sft`` and ``pt`` (:class:`TrainKind`) and ``merge`` (:class:`MergeKind`).

Service side (``prepare``): the spec is checked field by field, the model looked up in the hub
(NOT_FOUND when it lacks it; a PEFT adapter trains further on its base), every dataset read,
normalised and rendered with the model's chat template into token ids and labels (so a bad row
fails CreateJob with the file, row and field before any worker starts), the steps counted, and
the memory estimate checked against the cluster (RESOURCE_EXHAUSTED unless forced).

Worker side (``train``): HF ``Trainer`` in each Ray Train worker, with PEFT for the
LoRA-family tuners, bitsandbytes NF4 for QLoRA, DeepSpeed ZeRO-2/3 for those strategies, the
jobkit callback reporting metrics and checkpoints; then rank 0 returns the adapter (or full
model), and with ``merge_lora`` the merged model, for upload to the hub with lineage.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from swiftmesh.jobkit import data as data_mod
from swiftmesh.jobkit import estimate as est
from swiftmesh.jobkit import hf
from swiftmesh.jobkit.data import Collator, EncodeError, encode_row
from swiftmesh.jobkit.kinds import Artifact, JobKind, JobPlan, PrepareContext, refuse_oversized
from swiftmesh.jobkit.models import fix_adapter_config, model_name, resolve_model
from swiftmesh.jobkit.plan import count_steps, estimate_training, plan_resources, tuning_config
from swiftmesh.jobkit.settings import LoraSettings, Strategy, TrainingSettings, Tuner
from swiftmesh.names import model_id
from swiftmesh.runtime.errors import AlreadyExists, InvalidArgument

from .spec import TrainingSpec


def load_tokenizer(model_dir: Path, adapter_dir: Path | None = None, chat_template: str = ""):
    """The tokenizer of a job: the adapter's when it ships one, else the model's; ``chat_template``
    replaces its template; the pad token defaults to EOS."""
    from transformers import AutoTokenizer

    src = adapter_dir if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file() else model_dir
    tok = AutoTokenizer.from_pretrained(str(src))
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


class TrainKind(JobKind):
    """Supervised fine-tuning (``sft``) or continued pre-training (``pt``)."""

    spec_type = TrainingSpec

    def __init__(self, task: str = "sft") -> None:
        if task not in ("sft", "pt"):
            raise ValueError(f"TrainKind task must be sft or pt, got {task!r}")
        self.name = task

    # Service side -------------------------------------------------------------------------
    def _check_spec(self, spec: TrainingSpec) -> None:
        v = spec.violations()
        if spec.merge_lora and not spec.tuner.is_adapter:
            v.append(("spec.merge_lora", "only for adapter tuners (lora, qlora, dora, rslora, lora+)"))
        if v:
            raise InvalidArgument(f"invalid training spec: {v[0][0]}: {v[0][1]}", field_violations=v, reason="BAD_SPEC")

    def _encode(self, spec: TrainingSpec, args: TrainingSettings, ctx: PrepareContext, tokenizer) -> tuple[list, list, list[str]]:
        notes: list[str] = []
        loaded = [data_mod.load_source(s, i, task=self.name, models=ctx.models, seed=args.seed,
                                       ignore_columns=spec.ignore_columns)
                  for i, s in enumerate(spec.datasets)]
        violations: list[data_mod.Violation] = []
        rows: list[dict[str, Any]] = []
        for i, ds in enumerate(loaded):
            notes.append(f"dataset {ds.source}: {len(ds.rows)} rows, format {ds.format}")
            if ds.ignored:
                notes.append(data_mod.ignored_warning(ds.source, ds.ignored))
            for row, (file, n) in zip(ds.rows, ds.origins):
                try:
                    rows.append(encode_row(tokenizer, row, task=self.name, max_length=args.max_length,
                                           assistant_only=args.assistant_only_loss))
                except EncodeError as e:
                    violations.append(data_mod.Violation(i, file, n, "messages" if "messages" in row else "text", str(e)))
                    if len(violations) >= data_mod.MAX_VIOLATIONS:
                        break
        data_mod.raise_violations(violations)
        train, evals = data_mod.split(rows, args.split_dataset_ratio, args.seed)
        return train, evals, notes

    def _plan_parts(self, spec: TrainingSpec, ctx: PrepareContext):
        self._check_spec(spec)
        tuner = spec.tuner
        args = spec.args.resolved(tuner)
        lora = spec.lora
        models = resolve_model(ctx.models, spec.model)
        base_dir = Path(ctx.models.materialize(models["base_model"]))
        adapter_dir = Path(ctx.models.materialize(models["adapter_model"])) if models["adapter_model"] else None
        tokenizer = load_tokenizer(base_dir, adapter_dir, spec.chat_template)
        if self.name == "sft" and not tokenizer.chat_template:
            raise InvalidArgument(
                f"{models['base_model']} has no chat template; give spec.chat_template (a Jinja template)",
                field_violations=[("spec.chat_template", "required: the model has no chat template")],
                reason="NO_CHAT_TEMPLATE",
            )
        train, evals, notes = self._encode(spec, args, ctx, tokenizer)
        if not train:
            raise InvalidArgument("the datasets hold no training rows", field_violations=[("spec.datasets", "empty")],
                                  reason="BAD_DATASET")
        return tuner, args, lora, models, base_dir, train, evals, notes

    def _estimate(self, spec: TrainingSpec, args: TrainingSettings, base_dir: Path, train: list,
                  ctx: PrepareContext, steps: int) -> est.Estimate:
        lengths = sorted(len(r["input_ids"]) for r in train) or [1]
        seq = lengths[-1]
        avg = sum(lengths) / len(lengths)
        tokens = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * \
            spec.distribution.num_workers * avg
        e = estimate_training(spec, args, base_dir, ctx, seq_len=seq, avg_len=avg,
                              micro_batch=args.per_device_train_batch_size, tokens=tokens)
        e.notes.insert(0, f"{len(train)} training sequences, longest {seq} tokens, {steps} optimizer steps, "
                          f"~{tokens:,.0f} tokens")
        return e

    def estimate(self, spec: TrainingSpec, ctx: PrepareContext) -> est.Estimate:
        """Memory per worker and time of the job (reads and encodes the data, as prepare does)."""
        _, args, _, _, base_dir, train, _, _ = self._plan_parts(spec, ctx)
        steps = count_steps(len(train), spec.distribution.num_workers, args)
        return self._estimate(spec, args, base_dir, train, ctx, steps)

    def prepare(self, spec: TrainingSpec, ctx: PrepareContext) -> JobPlan:
        """Check the spec, encode the data, estimate (ResourceExhausted unless forced), plan."""
        tuner, args, _, models, base_dir, train, evals, notes = self._plan_parts(spec, ctx)
        steps = count_steps(len(train), spec.distribution.num_workers, args)
        estimate = self._estimate(spec, args, base_dir, train, ctx, steps)
        refuse_oversized(estimate, ctx, "Use more workers with zero3, a smaller batch or max_length, gradient checkpointing, or force=true")
        out_id = self.output_model_id(spec, ctx)
        config = tuning_config(spec, args, models, out_id, has_eval=bool(evals)) | {
            "task": self.name,
            "merge_lora": bool(spec.merge_lora),
            "cpus_per_worker": spec.distribution.cpus_per_worker,
        }
        notes.append(
            f"{self.name} {tuner.label} on {models['base_model']}"
            + (f" (continuing adapter {models['adapter_model']})" if models["adapter_model"] else "")
            + f", {spec.distribution.strategy.label} x {spec.distribution.num_workers} workers, {steps} steps; "
            f"estimate {est.gib(estimate.total_bytes_per_worker)} per worker"
        )
        return JobPlan(
            config=config,
            data={"train": train, "eval": evals},
            **plan_resources(spec.distribution),
            total_steps=steps,
            models=[m for m in (models["base_model"], models["adapter_model"]) if m],
            checkpoints_to_keep=args.save_total_limit,
            notes=notes,
        )

    # Worker side --------------------------------------------------------------------------
    def train(self, ctx) -> list[Artifact]:
        """The SFT/PT loop in this Ray worker (:func:`run_training`)."""
        return run_training(ctx)


def run_training(ctx) -> list[Artifact]:
    """The SFT/PT loop of one worker (HF Trainer + PEFT/bitsandbytes/DeepSpeed)."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    cfg = ctx.config
    args = TrainingSettings.from_json(cfg["args"])
    lora = LoraSettings.from_json(cfg["lora"])
    tuner, strategy = Tuner(cfg["tuner"]), Strategy(cfg["strategy"])
    set_seed(args.seed)
    if not cfg["use_gpu"]:
        # As many intra-op threads as CPUs reserved for this worker (Ray sets OMP_NUM_THREADS too).
        torch.set_num_threads(max(1, round(cfg.get("cpus_per_worker", 1.0))))
    base_dir = Path(ctx.models.materialize(cfg["base_model"]))
    adapter_dir = Path(ctx.models.materialize(cfg["adapter_model"])) if cfg["adapter_model"] else None
    tokenizer = load_tokenizer(base_dir, adapter_dir, cfg["chat_template"])
    ctx.log(f"loading {cfg['base_model']} for {tuner.label}" + (" (4-bit NF4)" if tuner == Tuner.QLORA else ""))
    model = hf.load_model_for_tuning(
        base_dir, tuner, lora, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
        adapter_dir=adapter_dir, use_gpu=cfg["use_gpu"],
    )
    out_dir = ctx.work_dir / "hf"
    hf.leave_process_group_of_one(ctx.world_size, strategy)
    kw = hf.training_arguments_kwargs(
        args, output_dir=out_dir, strategy=strategy, world_size=ctx.world_size, use_gpu=cfg["use_gpu"],
        has_eval=cfg["has_eval"],
    )
    targs = TrainingArguments(**kw)
    state = targs.distributed_state
    ctx.log(f"HF Trainer: world size {targs.world_size}, process {targs.process_index}, "
            f"{getattr(state, 'distributed_type', 'NO')}, device {targs.device}, bf16 {targs.bf16}"
            + (f", DeepSpeed ZeRO-{kw['deepspeed']['zero_optimization']['stage']}" if "deepspeed" in kw else ""))
    trainer_cls = Trainer
    if tuner == Tuner.LORA_PLUS:
        trainer_cls = hf.with_loraplus(Trainer, lora.lora_plus_lr_ratio)
    trainer = trainer_cls(
        model=model,
        args=targs,
        train_dataset=_ListDataset(ctx.data["train"]),
        eval_dataset=_ListDataset(ctx.data.get("eval") or []) if cfg["has_eval"] else None,
        data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[ctx.hf_callback()],
    )
    trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    final = ctx.work_dir / "final"
    trainer.save_model(str(final))  # every rank (ZeRO-3 gathers); rank 0 writes
    if not ctx.is_main:
        return []
    tokenizer.save_pretrained(str(final))
    # A model directory holds no pickles (the hub refuses them on upload): the Trainer's pickled
    # arguments become JSON, as ms-swift's args.json.
    (final / "training_args.bin").unlink(missing_ok=True)
    (final / "training_args.json").write_text(trainer.args.to_json_string())
    adapter = tuner.is_adapter
    if adapter:
        fix_adapter_config(final, cfg["base_model"])
    out_name = cfg["output_model_id"]
    parent = cfg["adapter_model"] or (cfg["spec_model"] if cfg["spec_model"] != cfg["base_model"] else "")
    artifacts = [Artifact(final, model_id=out_name, kind="adapter" if adapter else "full",
                          format="peft_adapter" if adapter else "full",
                          base_model=cfg["base_model"], parent_model=parent or (cfg["base_model"] if not adapter else ""))]
    if adapter and cfg["merge_lora"]:
        del trainer, model
        merged = ctx.work_dir / "merged"
        ctx.log("merging the adapter into the base model")
        merge_adapter(base_dir, final, merged, tokenizer=tokenizer)
        artifacts.append(Artifact(merged, model_id=f"{out_name}-merged", kind="merged", format="full",
                                  base_model=cfg["base_model"], parent_model=f"models/{out_name}"))
    return artifacts


class _ListDataset:
    """Rows as a map-style dataset (what HF Trainer needs: len and getitem)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, *, tokenizer=None, dtype=None) -> Path:
    """Base + PEFT adapter -> one full model directory (``merge_and_unload``), safetensors.

    The merged weights are W + (alpha/r) B A per adapted layer (DoRA: its magnitude-scaled
    form), so the merged model computes what base + adapter computed."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # After a ZeRO-3 run the process still has HF's global DeepSpeed config: from_pretrained
    # would build the model partitioned (collectives the finished peers never join). The merge
    # runs on rank 0 alone, on whole weights.
    unset_hf_deepspeed_config()
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype or torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload()
    shutil.rmtree(out_dir, ignore_errors=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tok = tokenizer or AutoTokenizer.from_pretrained(str(adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


class MergeKind(JobKind):
    """``merge``: base + PEFT adapter -> a merged full model in the hub (ms-swift ``export --merge_lora``)."""

    name = "merge"
    spec_type = TrainingSpec

    def prepare(self, spec: TrainingSpec, ctx: PrepareContext) -> JobPlan:
        """The adapter and its base from the hub; AlreadyExists when the output id is taken."""
        if not spec.model:
            raise InvalidArgument("spec.model (the adapter to merge) is required",
                                  field_violations=[("spec.model", "required")], reason="BAD_SPEC")
        models = resolve_model(ctx.models, spec.model)
        if not models["adapter_model"]:
            raise InvalidArgument(f"{model_name(spec.model)} is a full model; merge needs a PEFT adapter",
                                  field_violations=[("spec.model", "not a PEFT adapter")], reason="BAD_SPEC")
        out_id = (spec.output_model_id.removeprefix("models/") if spec.output_model_id
                  else f"{model_id(spec.model).replace('/', '-')}-merged")
        if ctx.models.exists(out_id):
            raise AlreadyExists(f"models/{out_id} already exists in the hub; set output_model_id",
                                reason="MODEL_EXISTS", field_violations=[("spec.output_model_id", "taken")])
        return JobPlan(
            config={"base_model": models["base_model"], "adapter_model": models["adapter_model"], "output_model_id": out_id},
            num_workers=1,
            cpus_per_worker=spec.distribution.cpus_per_worker,
            total_steps=0,
            models=[models["base_model"], models["adapter_model"]],
            max_failures=0,
            notes=[f"merge {models['adapter_model']} into {models['base_model']} -> models/{out_id}"],
        )

    def estimate(self, spec: TrainingSpec, ctx: PrepareContext) -> est.Estimate:
        """Memory of the merge: the base in fp32 plus the merged copy."""
        models = resolve_model(ctx.models, spec.model)
        shape = est.model_shape(str(ctx.models.materialize(models["base_model"])))
        e = est.Estimate(weights_bytes=shape.total_params * 4 * 2, total_parameters=shape.total_params)
        e.total_bytes_per_worker = e.weights_bytes + est.FRAMEWORK_OVERHEAD_BYTES
        res = ctx.resources()
        e.available_bytes_per_worker = res.node_available_memory_bytes
        e.fits = e.total_bytes_per_worker <= e.available_bytes_per_worker
        e.estimated_duration_s = float(int(est.STARTUP_SECONDS + shape.total_params / 5e7))
        e.notes.append("merge: base weights loaded in fp32, plus the merged copy written out")
        return e

    def train(self, ctx) -> list[Artifact]:
        """Merge on rank 0 and return the merged model for the hub."""
        if not ctx.is_main:
            return []
        cfg = ctx.config
        base_dir = Path(ctx.models.materialize(cfg["base_model"]))
        adapter_dir = Path(ctx.models.materialize(cfg["adapter_model"]))
        ctx.log(f"merging {cfg['adapter_model']} into {cfg['base_model']}")
        out = merge_adapter(base_dir, adapter_dir, ctx.work_dir / "merged")
        ctx.report_metrics(0, {}, total_steps=0)
        return [Artifact(out, model_id=cfg["output_model_id"], kind="merged", format="full",
                         base_model=cfg["base_model"], parent_model=cfg["adapter_model"])]


def kinds() -> list[JobKind]:
    """Every trainer kind, for the trainer's JobManager."""
    return [TrainKind("sft"), TrainKind("pt"), MergeKind()]


__all__ = ["MergeKind", "TrainKind", "kinds", "merge_adapter", "run_training"]
