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

import json
import math
import shutil
from pathlib import Path
from typing import Any

from swiftmesh.jobkit import estimate as est
from swiftmesh.jobkit import hf
from swiftmesh.jobkit.kinds import Artifact, JobKind, JobPlan, PrepareContext, refuse_oversized
from swiftmesh.jobkit.models import model_id, model_name
from swiftmesh.jobs.v1 import training_pb2
from swiftmesh.runtime.errors import AlreadyExists, InvalidArgument
from swiftmesh.services.trainer import data as data_mod
from swiftmesh.services.trainer.encode import Collator, EncodeError, encode_row
from swiftmesh.trainer.v1 import trainer_pb2

TASKS = {trainer_pb2.TASK_SFT: "sft", trainer_pb2.TASK_PT: "pt", trainer_pb2.TASK_MERGE: "merge"}
D = training_pb2.DistributionStrategy
ZERO_STAGE = {D.DISTRIBUTION_STRATEGY_ZERO2: 2, D.DISTRIBUTION_STRATEGY_ZERO3: 3, D.DISTRIBUTION_STRATEGY_ZERO3_OFFLOAD: 3}


def task_name(spec: trainer_pb2.TrainingSpec) -> str:
    try:
        return TASKS[spec.task]
    except KeyError:
        raise InvalidArgument(
            "spec.task is required: TASK_SFT, TASK_PT or TASK_MERGE",
            field_violations=[("spec.task", f"got {spec.task}")],
            reason="BAD_SPEC",
        ) from None


def _strategy(spec) -> int:
    return spec.distribution.strategy or D.DISTRIBUTION_STRATEGY_NONE


def _num_workers(spec) -> int:
    return spec.distribution.num_workers or 1


def _tuner(spec) -> int:
    return spec.tuner or training_pb2.TUNER_LORA


def resolve_model(models, name: str) -> dict[str, str]:
    """Base and adapter of ``spec.model`` ("models/x"): a full model is its own base; a PEFT
    adapter's base comes from its lineage (or adapter_config.json)."""
    info = models.get(model_name(name))
    if info.format == "dataset":
        raise InvalidArgument(f"{info.name} is a dataset, not a model", field_violations=[("spec.model", "a dataset")],
                              reason="BAD_SPEC")
    if info.format != "peft_adapter":
        return {"base_model": info.name, "adapter_model": ""}
    base = info.base_model
    if not base:
        cfg_path = Path(models.materialize(info.name)) / "adapter_config.json"
        try:
            base = json.loads(cfg_path.read_text()).get("base_model_name_or_path", "")
        except (OSError, json.JSONDecodeError):
            base = ""
        if not base:
            raise InvalidArgument(f"adapter {info.name} names no base model (lineage.base_model)",
                                  field_violations=[("spec.model", "adapter without a base model")], reason="BAD_SPEC")
        base = model_name(base)
    models.get(base)  # NotFound when the hub lacks the base
    return {"base_model": model_name(base), "adapter_model": info.name}


def load_tokenizer(model_dir: Path, adapter_dir: Path | None = None, chat_template: str = ""):
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

    spec_type = trainer_pb2.TrainingSpec

    def __init__(self, task: str = "sft") -> None:
        if task not in ("sft", "pt"):
            raise ValueError(f"TrainKind task must be sft or pt, got {task!r}")
        self.name = task

    # Service side -------------------------------------------------------------------------
    def _check_spec(self, spec: trainer_pb2.TrainingSpec) -> None:
        v = hf.validate_training(spec.args, _tuner(spec), spec.lora, spec.distribution)
        if not spec.model:
            v.append(("spec.model", "required: models/{model} in the hub"))
        if not spec.datasets:
            v.append(("spec.datasets", "at least one dataset is required"))
        if spec.merge_lora and _tuner(spec) not in hf.ADAPTER_TUNERS:
            v.append(("spec.merge_lora", "only for adapter tuners (lora, qlora, dora, rslora, lora+)"))
        if spec.output_model_id:
            import re

            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$",
                            spec.output_model_id.removeprefix("models/")):
                v.append(("spec.output_model_id", f"invalid model id {spec.output_model_id!r}"))
        if v:
            raise InvalidArgument(f"invalid training spec: {v[0][0]}: {v[0][1]}", field_violations=v, reason="BAD_SPEC")

    def _encode(self, spec, args: hf.Args, ctx: PrepareContext, tokenizer) -> tuple[list, list, list[str]]:
        notes: list[str] = []
        loaded = [data_mod.load_source(s, i, task=self.name, models=ctx.models, seed=args.seed)
                  for i, s in enumerate(spec.datasets)]
        violations: list[data_mod.Violation] = []
        rows: list[dict[str, Any]] = []
        for i, ds in enumerate(loaded):
            notes.append(f"dataset {ds.source}: {len(ds.rows)} rows, format {ds.format}")
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

    def _plan_parts(self, spec, ctx: PrepareContext, *, strict: bool):
        self._check_spec(spec)
        tuner = _tuner(spec)
        args = hf.resolve_args(spec.args, tuner)
        lora = hf.resolve_lora(spec.lora)
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

    def _steps(self, spec, args: hf.Args, n_train: int) -> int:
        world = _num_workers(spec)
        per_rank = math.ceil(n_train / world)
        batches = math.ceil(per_rank / args.per_device_train_batch_size)
        per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        if args.max_steps > 0:
            return args.max_steps
        return max(1, math.ceil(per_epoch * args.num_train_epochs))

    def _estimate(self, spec, args: hf.Args, lora: hf.Lora, base_dir: Path, train: list, ctx: PrepareContext,
                  steps: int) -> training_pb2.Estimate:
        tuner = _tuner(spec)
        strategy = _strategy(spec)
        world = _num_workers(spec)
        shape = est.model_shape(str(base_dir))
        full = tuner == training_pb2.TUNER_FULL
        trainable = shape.total_params if full else est.lora_trainable_params(
            shape, lora.r, lora.target_modules, use_dora=tuner == training_pb2.TUNER_DORA)
        lengths = sorted(len(r["input_ids"]) for r in train) or [1]
        seq = lengths[-1]
        mem = est.estimate_memory(
            shape,
            trainable_params=trainable,
            full=full,
            qlora=tuner == training_pb2.TUNER_QLORA,
            zero_stage=ZERO_STAGE.get(strategy, 0),
            offload=strategy == D.DISTRIBUTION_STRATEGY_ZERO3_OFFLOAD,
            world_size=world,
            micro_batch=args.per_device_train_batch_size,
            seq_len=seq,
            bf16=args.bf16,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        avg = sum(lengths) / len(lengths)
        tokens = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world * avg
        fpt = est.flops_per_token(shape, full=full, gradient_checkpointing=args.gradient_checkpointing, seq_len=int(avg))
        res = ctx.resources()
        per_node = max(1, math.ceil(world / max(1, res.num_nodes)))
        per_worker_mem = spec.distribution.memory_bytes_per_worker or res.node_available_memory_bytes // per_node
        e = training_pb2.Estimate()
        est.fill_estimate(
            e, mem,
            available_bytes_per_worker=per_worker_mem,
            total_flops=tokens * fpt,
            num_workers=world,
            cpus_per_worker=spec.distribution.cpus_per_worker or 1.0,
            gpus_per_worker=spec.distribution.gpus_per_worker,
            bf16=args.bf16,
            trainable_params=trainable,
            total_params=shape.total_params,
        )
        e.notes.insert(0, f"{len(train)} training sequences, longest {seq} tokens, {steps} optimizer steps, "
                          f"~{tokens:,.0f} tokens")
        return e

    def estimate(self, spec, ctx: PrepareContext) -> training_pb2.Estimate:
        tuner, args, lora, models, base_dir, train, evals, notes = self._plan_parts(spec, ctx, strict=False)
        steps = self._steps(spec, args, len(train))
        return self._estimate(spec, args, lora, base_dir, train, ctx, steps)

    def prepare(self, spec, ctx: PrepareContext) -> JobPlan:
        tuner, args, lora, models, base_dir, train, evals, notes = self._plan_parts(spec, ctx, strict=True)
        steps = self._steps(spec, args, len(train))
        estimate = self._estimate(spec, args, lora, base_dir, train, ctx, steps)
        refuse_oversized(estimate, ctx, "Use more workers with zero3, a smaller batch or max_length, gradient checkpointing, or force=true")
        out_id = self.output_model_id(spec, ctx)
        strategy = _strategy(spec)
        config = {
            "task": self.name,
            "tuner": tuner,
            "strategy": strategy,
            "args": args.to_json(),
            "lora": lora.to_json(),
            "base_model": models["base_model"],
            "adapter_model": models["adapter_model"],
            "spec_model": model_name(spec.model),
            "output_model_id": out_id,
            "merge_lora": bool(spec.merge_lora),
            "chat_template": spec.chat_template,
            "use_gpu": spec.distribution.gpus_per_worker > 0,
            "cpus_per_worker": spec.distribution.cpus_per_worker or 1.0,
            "has_eval": bool(evals),
        }
        notes.append(
            f"{self.name} {hf.TUNER_NAMES[tuner]} on {models['base_model']}"
            + (f" (continuing adapter {models['adapter_model']})" if models["adapter_model"] else "")
            + f", {hf.STRATEGY_NAMES[strategy]} x {_num_workers(spec)} workers, {steps} steps; "
            f"estimate {est.gib(estimate.total_bytes_per_worker)} per worker"
        )
        return JobPlan(
            config=config,
            data={"train": train, "eval": evals},
            num_workers=_num_workers(spec),
            cpus_per_worker=spec.distribution.cpus_per_worker or 1.0,
            gpus_per_worker=spec.distribution.gpus_per_worker,
            memory_bytes_per_worker=spec.distribution.memory_bytes_per_worker,
            total_steps=steps,
            models=[m for m in (models["base_model"], models["adapter_model"]) if m],
            checkpoints_to_keep=args.save_total_limit,
            notes=notes,
        )

    # Worker side --------------------------------------------------------------------------
    def train(self, ctx) -> list[Artifact]:
        return run_training(ctx)


def run_training(ctx) -> list[Artifact]:
    """The SFT/PT loop of one worker (HF Trainer + PEFT/bitsandbytes/DeepSpeed)."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    cfg = ctx.config
    args = hf.Args(**cfg["args"])
    lora = hf.Lora(**cfg["lora"])
    tuner, strategy = cfg["tuner"], cfg["strategy"]
    set_seed(args.seed)
    if not cfg["use_gpu"]:
        # As many intra-op threads as CPUs reserved for this worker (Ray sets OMP_NUM_THREADS too).
        torch.set_num_threads(max(1, int(round(cfg.get("cpus_per_worker", 1.0)))))
    base_dir = Path(ctx.models.materialize(cfg["base_model"]))
    adapter_dir = Path(ctx.models.materialize(cfg["adapter_model"])) if cfg["adapter_model"] else None
    tokenizer = load_tokenizer(base_dir, adapter_dir, cfg["chat_template"])
    ctx.log(f"loading {cfg['base_model']} for {hf.TUNER_NAMES[tuner]}" + (" (4-bit NF4)" if tuner == training_pb2.TUNER_QLORA else ""))
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
    if tuner == training_pb2.TUNER_LORA_PLUS:
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
    adapter = tuner in hf.ADAPTER_TUNERS
    if adapter:
        _fix_adapter_config(final, cfg["base_model"])
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


def _fix_adapter_config(adapter_dir: Path, base_model: str) -> None:
    """Point ``base_model_name_or_path`` at the hub id of the base (not a worker's temp path)."""
    p = adapter_dir / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = model_id(base_model)
    p.write_text(json.dumps(cfg, indent=2))


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
    spec_type = trainer_pb2.TrainingSpec

    def prepare(self, spec, ctx: PrepareContext) -> JobPlan:
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
            cpus_per_worker=spec.distribution.cpus_per_worker or 1.0,
            total_steps=0,
            models=[models["base_model"], models["adapter_model"]],
            max_failures=0,
            notes=[f"merge {models['adapter_model']} into {models['base_model']} -> models/{out_id}"],
        )

    def estimate(self, spec, ctx: PrepareContext) -> training_pb2.Estimate:
        models = resolve_model(ctx.models, spec.model)
        shape = est.model_shape(str(ctx.models.materialize(models["base_model"])))
        e = training_pb2.Estimate(weights_bytes=shape.total_params * 4 * 2, total_parameters=shape.total_params)
        e.total_bytes_per_worker = e.weights_bytes + est.FRAMEWORK_OVERHEAD_BYTES
        res = ctx.resources()
        e.available_bytes_per_worker = res.node_available_memory_bytes
        e.fits = e.total_bytes_per_worker <= e.available_bytes_per_worker
        e.estimated_duration.FromSeconds(int(est.STARTUP_SECONDS + shape.total_params / 5e7))
        e.notes.append("merge: base weights loaded in fp32, plus the merged copy written out")
        return e

    def train(self, ctx) -> list[Artifact]:
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
    return [TrainKind("sft"), TrainKind("pt"), MergeKind()]


__all__ = ["TrainKind", "MergeKind", "kinds", "merge_adapter", "run_training", "task_name", "resolve_model",
           ]
