"""Planning a fine-tuning job, the part the trainer's and the aligner's kinds share: the steps a
job runs, its memory/time estimate, the resources per worker and the worker config keys every
tuning job carries. Each kind adds what is its own (the SFT encoding, an alignment method's
sequences per row, its reward and reference models).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from swiftmesh.jobkit import estimate as est
from swiftmesh.jobkit.kinds import PrepareContext
from swiftmesh.jobkit.models import model_name
from swiftmesh.jobkit.settings import DistributionSettings, Strategy, TrainingSettings, Tuner, TuningSpec


def count_steps(n_rows: int, num_workers: int, args: TrainingSettings) -> int:
    """Optimizer steps of a job over ``n_rows`` training rows split across ``num_workers``:
    ``args.max_steps`` when > 0, else ceil(epochs x ceil(ceil(rows / workers) / micro batch) /
    accumulation), at least 1."""
    if args.max_steps > 0:
        return args.max_steps
    per_rank = math.ceil(n_rows / max(1, num_workers))
    batches = math.ceil(per_rank / args.per_device_train_batch_size)
    per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * args.num_train_epochs))


def plan_resources(dist: DistributionSettings) -> dict[str, Any]:
    """The ``JobPlan`` resource fields (workers, CPUs, GPUs, memory bytes per worker) of a spec."""
    return {
        "num_workers": dist.num_workers,
        "cpus_per_worker": dist.cpus_per_worker,
        "gpus_per_worker": dist.gpus_per_worker,
        "memory_bytes_per_worker": dist.memory_bytes_per_worker,
    }


def tuning_config(spec: TuningSpec, args: TrainingSettings, models: dict[str, str], output_model_id: str, *,
                  has_eval: bool) -> dict[str, Any]:
    """The worker-config keys of every tuning job (JSON): tuner and strategy (ints), the resolved
    ``args`` and ``lora``, the models ("base_model", "adapter_model" from
    :func:`~swiftmesh.jobkit.models.resolve_model`, "spec_model" as asked), the output id, the
    chat template, whether the workers use GPUs and whether there is an eval split."""
    return {
        "tuner": int(spec.tuner),
        "strategy": int(spec.distribution.strategy),
        "args": args.to_json(),
        "lora": spec.lora.to_json(),
        "base_model": models["base_model"],
        "adapter_model": models["adapter_model"],
        "spec_model": model_name(spec.model),
        "output_model_id": output_model_id,
        "chat_template": spec.chat_template,
        "use_gpu": spec.distribution.gpus_per_worker > 0,
        "has_eval": has_eval,
    }


def estimate_training(
    spec: TuningSpec,
    args: TrainingSettings,
    base_dir: str | Path,
    ctx: PrepareContext,
    *,
    seq_len: int,
    avg_len: float,
    micro_batch: int,
    tokens: float,
    extra_frozen_copies: int = 0,
    extra_weight_bytes: int = 0,
    flops_factor: float = 1.0,
) -> est.Estimate:
    """Memory per worker and time of a tuning job (see :mod:`swiftmesh.jobkit.estimate`).

    Args:
        spec: the job's spec (tuner, LoRA rank and targets, strategy, workers, memory reservation).
        args: its resolved training settings (bf16, gradient checkpointing).
        base_dir: the base model's directory (its config gives the shape).
        ctx: the prepare context (the cluster's free memory when the spec reserves none).
        seq_len: the longest sequence, tokens; ``avg_len``: the mean one.
        micro_batch: sequences per forward pass per worker.
        tokens: training tokens of the whole job.
        extra_frozen_copies: frozen copies of the model besides the trained one (a reference model).
        extra_weight_bytes: other frozen weights a worker holds (a reward model), bytes.
        flops_factor: FLOPs per token relative to training alone (reference/rollout passes).
    """
    tuner, strategy = spec.tuner, spec.distribution.strategy
    world = spec.distribution.num_workers
    shape = est.model_shape(str(base_dir))
    full = tuner == Tuner.FULL
    trainable = shape.total_params if full else est.lora_trainable_params(
        shape, spec.lora.r, spec.lora.target_modules, use_dora=tuner == Tuner.DORA)
    mem = est.estimate_memory(
        shape,
        trainable_params=trainable,
        full=full,
        qlora=tuner == Tuner.QLORA,
        zero_stage=strategy.zero_stage,
        offload=strategy == Strategy.ZERO3_OFFLOAD,
        world_size=world,
        micro_batch=micro_batch,
        seq_len=seq_len,
        bf16=bool(args.bf16),
        gradient_checkpointing=args.gradient_checkpointing,
        extra_frozen_copies=extra_frozen_copies,
    )
    mem.weights += extra_weight_bytes
    fpt = est.flops_per_token(shape, full=full, gradient_checkpointing=args.gradient_checkpointing,
                              seq_len=int(avg_len)) * flops_factor
    res = ctx.resources()
    per_node = max(1, math.ceil(world / max(1, res.num_nodes)))
    per_worker_mem = spec.distribution.memory_bytes_per_worker or res.node_available_memory_bytes // per_node
    return est.fill_estimate(
        est.Estimate(), mem,
        available_bytes_per_worker=per_worker_mem,
        total_flops=tokens * fpt,
        num_workers=world,
        cpus_per_worker=spec.distribution.cpus_per_worker,
        gpus_per_worker=spec.distribution.gpus_per_worker,
        bf16=bool(args.bf16),
        trainable_params=trainable,
        total_params=shape.total_params,
    )


__all__ = ["count_steps", "estimate_training", "plan_resources", "tuning_config"]
