import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tuner(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TUNER_UNSPECIFIED: _ClassVar[Tuner]
    TUNER_FULL: _ClassVar[Tuner]
    TUNER_LORA: _ClassVar[Tuner]
    TUNER_QLORA: _ClassVar[Tuner]
    TUNER_DORA: _ClassVar[Tuner]
    TUNER_RSLORA: _ClassVar[Tuner]
    TUNER_LORA_PLUS: _ClassVar[Tuner]

class DistributionStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTRIBUTION_STRATEGY_UNSPECIFIED: _ClassVar[DistributionStrategy]
    DISTRIBUTION_STRATEGY_NONE: _ClassVar[DistributionStrategy]
    DISTRIBUTION_STRATEGY_DDP: _ClassVar[DistributionStrategy]
    DISTRIBUTION_STRATEGY_ZERO2: _ClassVar[DistributionStrategy]
    DISTRIBUTION_STRATEGY_ZERO3: _ClassVar[DistributionStrategy]
    DISTRIBUTION_STRATEGY_ZERO3_OFFLOAD: _ClassVar[DistributionStrategy]
TUNER_UNSPECIFIED: Tuner
TUNER_FULL: Tuner
TUNER_LORA: Tuner
TUNER_QLORA: Tuner
TUNER_DORA: Tuner
TUNER_RSLORA: Tuner
TUNER_LORA_PLUS: Tuner
DISTRIBUTION_STRATEGY_UNSPECIFIED: DistributionStrategy
DISTRIBUTION_STRATEGY_NONE: DistributionStrategy
DISTRIBUTION_STRATEGY_DDP: DistributionStrategy
DISTRIBUTION_STRATEGY_ZERO2: DistributionStrategy
DISTRIBUTION_STRATEGY_ZERO3: DistributionStrategy
DISTRIBUTION_STRATEGY_ZERO3_OFFLOAD: DistributionStrategy

class LoraConfig(_message.Message):
    __slots__ = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "lora_plus_lr_ratio", "bias")
    R_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    MODULES_TO_SAVE_FIELD_NUMBER: _ClassVar[int]
    LORA_PLUS_LR_RATIO_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    modules_to_save: _containers.RepeatedScalarFieldContainer[str]
    lora_plus_lr_ratio: float
    bias: str
    def __init__(self, r: _Optional[int] = ..., lora_alpha: _Optional[int] = ..., lora_dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., modules_to_save: _Optional[_Iterable[str]] = ..., lora_plus_lr_ratio: _Optional[float] = ..., bias: _Optional[str] = ...) -> None: ...

class TrainingArguments(_message.Message):
    __slots__ = ("num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "gradient_checkpointing", "seed", "bf16", "weight_decay", "max_grad_norm", "logging_steps", "split_dataset_ratio", "eval_steps", "save_steps", "save_total_limit", "assistant_only_loss", "per_device_eval_batch_size")
    NUM_TRAIN_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_TYPE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_TRAIN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BF16_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_DATASET_RATIO_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_TOTAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_ONLY_LOSS_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_EVAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    num_train_epochs: float
    max_steps: int
    learning_rate: float
    lr_scheduler_type: str
    warmup_ratio: float
    warmup_steps: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    max_length: int
    gradient_checkpointing: bool
    seed: int
    bf16: bool
    weight_decay: float
    max_grad_norm: float
    logging_steps: int
    split_dataset_ratio: float
    eval_steps: int
    save_steps: int
    save_total_limit: int
    assistant_only_loss: bool
    per_device_eval_batch_size: int
    def __init__(self, num_train_epochs: _Optional[float] = ..., max_steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., lr_scheduler_type: _Optional[str] = ..., warmup_ratio: _Optional[float] = ..., warmup_steps: _Optional[int] = ..., per_device_train_batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., max_length: _Optional[int] = ..., gradient_checkpointing: _Optional[bool] = ..., seed: _Optional[int] = ..., bf16: _Optional[bool] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., logging_steps: _Optional[int] = ..., split_dataset_ratio: _Optional[float] = ..., eval_steps: _Optional[int] = ..., save_steps: _Optional[int] = ..., save_total_limit: _Optional[int] = ..., assistant_only_loss: _Optional[bool] = ..., per_device_eval_batch_size: _Optional[int] = ...) -> None: ...

class Distribution(_message.Message):
    __slots__ = ("strategy", "num_workers", "cpus_per_worker", "gpus_per_worker", "memory_bytes_per_worker")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    CPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    strategy: DistributionStrategy
    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    memory_bytes_per_worker: int
    def __init__(self, strategy: _Optional[_Union[DistributionStrategy, str]] = ..., num_workers: _Optional[int] = ..., cpus_per_worker: _Optional[float] = ..., gpus_per_worker: _Optional[float] = ..., memory_bytes_per_worker: _Optional[int] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("weights_bytes", "gradients_bytes", "optimizer_states_bytes", "activations_bytes", "total_bytes_per_worker", "available_bytes_per_worker", "fits", "estimated_duration", "trainable_parameters", "total_parameters", "notes", "total_flops")
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_STATES_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BYTES_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_DURATION_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FLOPS_FIELD_NUMBER: _ClassVar[int]
    weights_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    activations_bytes: int
    total_bytes_per_worker: int
    available_bytes_per_worker: int
    fits: bool
    estimated_duration: _duration_pb2.Duration
    trainable_parameters: int
    total_parameters: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    total_flops: float
    def __init__(self, weights_bytes: _Optional[int] = ..., gradients_bytes: _Optional[int] = ..., optimizer_states_bytes: _Optional[int] = ..., activations_bytes: _Optional[int] = ..., total_bytes_per_worker: _Optional[int] = ..., available_bytes_per_worker: _Optional[int] = ..., fits: _Optional[bool] = ..., estimated_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trainable_parameters: _Optional[int] = ..., total_parameters: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ..., total_flops: _Optional[float] = ...) -> None: ...
