"""Hugging Face / PEFT / DeepSpeed helpers shared by the trainer's and the aligner's kinds.

* :func:`validate_training` checks the :mod:`~swiftmesh.jobkit.settings` of a job (training,
  tuner, distribution and LoRA) and lists a field violation per bad field.
* :func:`training_arguments_kwargs` turns it into keyword arguments for
  ``transformers.TrainingArguments`` (or a TRL config, which subclasses it), with the DeepSpeed
  config of the strategy (:func:`deepspeed_config`).
* :func:`lora_config` builds PEFT's ``LoraConfig`` for the LoRA-family tuners;
  :func:`load_model_for_tuning` loads a causal LM for a tuner (QLoRA: 4-bit NF4 through
  bitsandbytes) and wraps it with PEFT; :func:`with_loraplus` gives a trainer class whose
  optimizer uses LoRA+ learning rates.

References: LoRA (Hu et al. 2021, arXiv:2106.09685); DoRA (Liu et al. 2024, arXiv:2402.09353);
rsLoRA (Kalajdzievski 2023, arXiv:2312.03732); LoRA+ (Hayou et al. 2024, arXiv:2402.12354);
QLoRA (Dettmers et al. 2023, arXiv:2305.14314); ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from swiftmesh.jobkit.settings import (
    ADAPTER_TUNERS,
    SCHEDULERS,
    DistributionSettings,
    LoraSettings,
    Strategy,
    TrainingSettings,
    Tuner,
)

_DEEPSPEED = (Strategy.ZERO2, Strategy.ZERO3, Strategy.ZERO3_OFFLOAD)


@functools.cache
def bf16_supported() -> bool:
    """bf16 where the hardware runs it natively: a CUDA device with bf16, or a CPU with
    AVX512-BF16 / AMX-BF16."""
    try:
        import torch

        if torch.cuda.is_available():
            return bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def validate_training(
    args: TrainingSettings,
    tuner: Tuner,
    lora: LoraSettings,
    dist: DistributionSettings,
    prefix: str = "spec",
) -> list[tuple[str, str]]:
    """Field violations of the training settings, as ("spec.args.<field>", why) pairs (empty when fine)."""
    v: list[tuple[str, str]] = []
    p = prefix
    if tuner == Tuner.UNSPECIFIED:
        v.append((f"{p}.tuner", "unknown tuner 0; one of ['dora', 'full', 'lora', 'lora+', 'qlora', 'rslora']"))
    if args.num_train_epochs < 0:
        v.append((f"{p}.args.num_train_epochs", f"must be > 0, got {args.num_train_epochs}"))
    if args.max_steps < 0:
        v.append((f"{p}.args.max_steps", f"must be >= 0, got {args.max_steps}"))
    if args.learning_rate is not None and (args.learning_rate < 0 or args.learning_rate > 1):
        v.append((f"{p}.args.learning_rate", f"must be in (0, 1], got {args.learning_rate}"))
    if args.lr_scheduler_type and args.lr_scheduler_type not in SCHEDULERS:
        v.append((f"{p}.args.lr_scheduler_type", f"unknown scheduler {args.lr_scheduler_type!r}; one of {list(SCHEDULERS)}"))
    if not 0 <= args.warmup_ratio < 1:
        v.append((f"{p}.args.warmup_ratio", f"must be in [0, 1), got {args.warmup_ratio}"))
    for f in ("warmup_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
              "logging_steps", "eval_steps", "save_steps", "save_total_limit", "per_device_eval_batch_size"):
        if getattr(args, f) < 0:
            v.append((f"{p}.args.{f}", f"must be >= 0, got {getattr(args, f)}"))
    if not 0 <= args.split_dataset_ratio < 1:
        v.append((f"{p}.args.split_dataset_ratio", f"must be in [0, 1), got {args.split_dataset_ratio}"))
    if args.weight_decay < 0:
        v.append((f"{p}.args.weight_decay", f"must be >= 0, got {args.weight_decay}"))
    if args.max_grad_norm < 0:
        v.append((f"{p}.args.max_grad_norm", f"must be >= 0, got {args.max_grad_norm}"))
    if tuner in ADAPTER_TUNERS:
        if lora.r < 0:
            v.append((f"{p}.lora.r", f"must be > 0, got {lora.r}"))
        if lora.lora_alpha < 0:
            v.append((f"{p}.lora.lora_alpha", f"must be > 0, got {lora.lora_alpha}"))
        if not 0 <= lora.lora_dropout < 1:
            v.append((f"{p}.lora.lora_dropout", f"must be in [0, 1), got {lora.lora_dropout}"))
        if lora.bias and lora.bias not in ("none", "all", "lora_only"):
            v.append((f"{p}.lora.bias", f"must be none, all or lora_only, got {lora.bias!r}"))
        if lora.lora_plus_lr_ratio < 0:
            v.append((f"{p}.lora.lora_plus_lr_ratio", f"must be > 0, got {lora.lora_plus_lr_ratio}"))
    strategy = dist.strategy or Strategy.NONE
    if dist.num_workers < 0:
        v.append((f"{p}.distribution.num_workers", f"must be >= 1, got {dist.num_workers}"))
    if strategy == Strategy.NONE and dist.num_workers > 1:
        v.append((f"{p}.distribution.num_workers",
                  f"strategy none runs one worker, got {dist.num_workers}; use ddp, zero2 or zero3 for more"))
    if dist.cpus_per_worker < 0 or dist.gpus_per_worker < 0 or dist.memory_bytes_per_worker < 0:
        v.append((f"{p}.distribution", "resources per worker must be >= 0"))
    if tuner == Tuner.QLORA and strategy in (Strategy.ZERO3, Strategy.ZERO3_OFFLOAD):
        v.append((f"{p}.distribution.strategy",
                  "qlora cannot be combined with ZeRO-3 (4-bit weights cannot be partitioned); use none, ddp or zero2"))
    return v


def deepspeed_config(
    strategy: Strategy, *, micro_batch: int, grad_accum: int, world_size: int, bf16: bool, max_grad_norm: float
) -> dict[str, Any] | None:
    """The DeepSpeed config of a strategy (None for none/ddp).

    ZeRO stage 2 partitions optimizer states and gradients, stage 3 also the parameters;
    ``zero3_offload`` keeps optimizer states and parameters in CPU memory (Rajbhandari et al.
    2020; ZeRO-Offload, Ren et al. 2021, arXiv:2101.06840). ``train_batch_size`` is left to
    DeepSpeed (micro batch x accumulation x world size of the process group).
    """
    if strategy not in _DEEPSPEED:
        return None
    zero: dict[str, Any] = {"stage": 2 if strategy == Strategy.ZERO2 else 3,
                            "overlap_comm": False, "contiguous_gradients": True}
    if zero["stage"] == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True, "reduce_bucket_size": 5e7,
                     "stage3_prefetch_bucket_size": 5e7, "stage3_param_persistence_threshold": 1e4})
    if strategy == Strategy.ZERO3_OFFLOAD:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(bf16)},
        "zero_allow_untested_optimizer": True,
        # Torch's AdamW also under offload (DeepSpeedCPUAdam needs a compiled extension).
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def training_arguments_kwargs(
    args: TrainingSettings,
    *,
    output_dir: str | Path,
    strategy: Strategy,
    world_size: int,
    use_gpu: bool = False,
    has_eval: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``transformers.TrainingArguments`` (or a TRL config).

    Local checkpoints: one (``save_total_limit=1``); the job machinery keeps the last K in
    its storage. ``use_cpu`` is False under DeepSpeed (HF ignores DeepSpeed otherwise).
    """
    bf16 = bool(args.bf16)
    if not use_gpu and strategy in _DEEPSPEED:
        bf16 = False  # HF refuses bf16 with use_cpu=False on a CPU; DeepSpeed on CPU runs fp32
    ds = deepspeed_config(
        strategy,
        micro_batch=args.per_device_train_batch_size,
        grad_accum=args.gradient_accumulation_steps,
        world_size=world_size,
        bf16=bf16,
        max_grad_norm=args.max_grad_norm,
    )
    kw: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps if args.max_steps > 0 else -1,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps if args.warmup_steps > 0 else args.warmup_ratio,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        data_seed=args.seed,
        bf16=bf16,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        use_cpu=(not use_gpu and ds is None),
        optim="adamw_torch",
    )
    if args.gradient_checkpointing:
        kw["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if has_eval:
        if args.eval_steps:
            kw.update(eval_strategy="steps", eval_steps=args.eval_steps)
        else:
            kw.update(eval_strategy="epoch")
    if world_size > 1 and not use_gpu:
        kw["ddp_backend"] = "gloo"
    if world_size > 1:
        kw["ddp_find_unused_parameters"] = False
    if ds is not None:
        kw["deepspeed"] = ds
        if not use_gpu:
            prepare_cpu_deepspeed_state()
            kw["accelerator_config"] = {"use_configured_state": True}
    return kw


# The variables torch.distributed's env:// rendezvous (and HF's TrainingArguments) read.
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE")


def leave_process_group_of_one(world_size: int, strategy: Strategy) -> bool:
    """With a single worker and no DeepSpeed, leave the torch.distributed group Ray Train set up
    (and unset its rendezvous variables), so that the HF Trainer runs the model as one process,
    without DistributedDataParallel: DDP over a group of one only adds gradient hooks, bucket
    copies and a gloo all-reduce per step (about 8 % of a LoRA SFT step on 2 CPU cores, see
    bench/trainer). Ray Train's own reporting and checkpoints do not use the group.

    Returns True when it left the group. Call before building ``TrainingArguments``.
    """
    import os

    if world_size != 1 or strategy in _DEEPSPEED:
        return False
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for k in _DIST_ENV:
        os.environ.pop(k, None)
    return True


def prepare_cpu_deepspeed_state() -> None:
    """Set up accelerate's process state for DeepSpeed on CPU workers (gloo).

    HF ``TrainingArguments`` with ``deepspeed=`` and ``use_cpu=False`` builds accelerate's
    ``PartialState`` without a backend; on a machine without GPUs that state falls back to
    "not distributed" (one process), while DeepSpeed runs over the torch.distributed group Ray
    set up, and the first collective fails. Building the state first with ``backend="gloo"``
    (and ``use_configured_state``) gives HF the real world size. Idempotent.
    """
    import os

    from accelerate import PartialState

    if PartialState._shared_state:
        return
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)


def lora_config(tuner: Tuner, lora: LoraSettings, task_type: str = "CAUSAL_LM"):
    """PEFT ``LoraConfig`` for a LoRA-family tuner (DoRA: ``use_dora``; rsLoRA: ``use_rslora``,
    scaling lora_alpha/sqrt(r)); None for full fine-tuning."""
    if tuner not in ADAPTER_TUNERS:
        return None
    from peft import LoraConfig

    targets: Any = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=targets,
        modules_to_save=lora.modules_to_save or None,
        bias=lora.bias,
        use_dora=tuner == Tuner.DORA,
        use_rslora=tuner == Tuner.RSLORA,
        task_type=task_type,
    )


def load_model_for_tuning(
    model_dir: str | Path,
    tuner: Tuner,
    lora: LoraSettings | None,
    *,
    bf16: bool,
    gradient_checkpointing: bool = False,
    adapter_dir: str | Path | None = None,
    use_gpu: bool = False,
    model_cls=None,
    task_type: str = "CAUSAL_LM",
):
    """Load a model for a tuner.

    * full: all parameters trainable (fp32 weights; bf16 runs as mixed precision).
    * LoRA family: base frozen, a PEFT adapter on ``lora.target_modules`` (or the existing
      adapter in ``adapter_dir``, trained further).
    * qlora: base linear layers as 4-bit NF4 with double quantization (bitsandbytes
      ``Linear4bit``), then ``prepare_model_for_kbit_training`` and a LoRA adapter.

    Returns the (possibly PEFT-wrapped) model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model_cls = model_cls or AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if tuner == Tuner.QLORA:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
            bnb_4bit_quant_storage=torch.uint8,
        )
        kwargs["device_map"] = {"": 0} if use_gpu else {"": "cpu"}
    model = model_cls.from_pretrained(str(model_dir), **kwargs)
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    if tuner == Tuner.FULL:
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if tuner == Tuner.QLORA:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    return get_peft_model(model, lora_config(tuner, lora or LoraSettings(), task_type))


def with_loraplus(trainer_cls, lr_ratio: float):
    """A subclass of an HF/TRL trainer class whose optimizer gives LoRA B matrices
    ``lr_ratio`` times the learning rate of A (LoRA+, Hayou et al. 2024), through
    ``peft.optimizers.create_loraplus_optimizer``. Works under DeepSpeed (the trainer's
    ``create_optimizer`` hook)."""

    class LoraPlusTrainer(trainer_cls):
        def create_optimizer(self, *a, **kw):
            if self.optimizer is None:
                import torch
                from peft.optimizers import create_loraplus_optimizer

                self.optimizer = create_loraplus_optimizer(
                    model=self.model,
                    optimizer_cls=torch.optim.AdamW,
                    lr=self.args.learning_rate,
                    loraplus_lr_ratio=lr_ratio,
                    weight_decay=self.args.weight_decay,
                )
            return self.optimizer

    LoraPlusTrainer.__name__ = f"LoraPlus{trainer_cls.__name__}"
    return LoraPlusTrainer
