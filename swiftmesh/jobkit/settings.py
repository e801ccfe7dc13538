"""The settings the trainer and the aligner share, once: the tuner and its LoRA settings, the
optimisation settings, the distribution strategy and the resources per worker, and
:class:`TuningSpec`, the part of a job's spec both services extend (the trainer's
``TrainingSpec``, the aligner's ``AlignmentSpec``).

TRL style: one dataclass per concern, each field documented with its default, unit and paper.
Values are literal (the servicers fill the proto's "0 / empty means the default" rule when they
translate a request, so ``0`` here means zero); ``None`` marks a default that depends on other
settings (the learning rate on the tuner, bf16 on the hardware). Names are PEFT's and
``transformers.TrainingArguments``'.

References: LoRA (Hu et al. 2021, arXiv:2106.09685); DoRA (Liu et al. 2024, arXiv:2402.09353);
rsLoRA (Kalajdzievski 2023, arXiv:2312.03732); LoRA+ (Hayou et al. 2024, arXiv:2402.12354);
QLoRA (Dettmers et al. 2023, arXiv:2305.14314); ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from swiftmesh.runtime.errors import InvalidArgument


class Tuner(enum.IntEnum):
    """What a job trains (values as ``swiftmesh.jobs.v1.Tuner``; stored in job plans as ints)."""

    UNSPECIFIED = 0
    #: every parameter.
    FULL = 1
    #: a LoRA adapter, W + (alpha / r) B A (arXiv:2106.09685).
    LORA = 2
    #: LoRA on a 4-bit NF4 base with double quantization (arXiv:2305.14314).
    QLORA = 3
    #: weight-decomposed LoRA, magnitude and direction (arXiv:2402.09353).
    DORA = 4
    #: rank-stabilised LoRA, scaling alpha / sqrt(r) (arXiv:2312.03732).
    RSLORA = 5
    #: LoRA with a higher learning rate for B than for A (arXiv:2402.12354).
    LORA_PLUS = 6

    @property
    def label(self) -> str:
        """"lora+" for LORA_PLUS, "full", "lora", ... (ms-swift's ``--train_type`` names)."""
        return _TUNER_LABELS[self]

    @property
    def is_adapter(self) -> bool:
        """True for the LoRA family (the job produces a PEFT adapter)."""
        return self in ADAPTER_TUNERS

    @classmethod
    def parse(cls, name: str | int | Tuner, field_name: str = "spec.tuner") -> Tuner:
        """A tuner from its label ("lora", "lora+", "lora_plus", "LORA_PLUS") or value.

        Raises InvalidArgument naming ``field_name`` for anything else.
        """
        if isinstance(name, int):
            try:
                return cls(name)
            except ValueError:
                pass
        else:
            key = str(name).strip().lower()
            key = "lora+" if key == "loraplus" else key
            for t, label in _TUNER_LABELS.items():
                if key in (label, t.name.lower()):
                    return t
        raise InvalidArgument(f"unknown tuner {name!r}; one of {sorted(_TUNER_LABELS.values())}",
                              field_violations=[(field_name, f"unknown tuner {name}")], reason="BAD_SPEC")


_TUNER_LABELS = {Tuner.FULL: "full", Tuner.LORA: "lora", Tuner.QLORA: "qlora", Tuner.DORA: "dora",
                 Tuner.RSLORA: "rslora", Tuner.LORA_PLUS: "lora+"}
ADAPTER_TUNERS = frozenset({Tuner.LORA, Tuner.QLORA, Tuner.DORA, Tuner.RSLORA, Tuner.LORA_PLUS})


class Strategy(enum.IntEnum):
    """How the workers share the work (values as ``swiftmesh.jobs.v1.DistributionStrategy``)."""

    UNSPECIFIED = 0
    #: one worker, no process group.
    NONE = 1
    #: data parallel, every worker holds the whole model (torch DistributedDataParallel).
    DDP = 2
    #: DeepSpeed ZeRO stage 2: optimizer states and gradients partitioned (arXiv:1910.02054).
    ZERO2 = 3
    #: ZeRO stage 3: parameters partitioned too.
    ZERO3 = 4
    #: ZeRO-3 with optimizer states and parameters in CPU memory (ZeRO-Offload, arXiv:2101.06840).
    ZERO3_OFFLOAD = 5

    @property
    def label(self) -> str:
        """"zero3_offload" for ZERO3_OFFLOAD, "none", "ddp", ..."""
        return self.name.lower()

    @property
    def zero_stage(self) -> int:
        """The DeepSpeed ZeRO stage (0: no DeepSpeed)."""
        return {Strategy.ZERO2: 2, Strategy.ZERO3: 3, Strategy.ZERO3_OFFLOAD: 3}.get(self, 0)

    @classmethod
    def parse(cls, name: str | int, field_name: str = "spec.distribution.strategy") -> Strategy:
        """A strategy from its label ("ddp", "zero3_offload") or value; InvalidArgument otherwise."""
        try:
            return cls(name) if isinstance(name, int) else cls[str(name).strip().upper()]
        except (KeyError, ValueError):
            raise InvalidArgument(f"unknown strategy {name!r}; one of {[s.label for s in list(cls)[1:]]}",
                                  field_violations=[(field_name, f"unknown strategy {name}")],
                                  reason="BAD_SPEC") from None


class JsonDataclass:
    """JSON round trip for the jobkit dataclasses (settings and job records): nested dataclasses
    as dicts, enums as their int values, lists and dicts element-wise."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (enums as their int values, nested settings as dicts)."""
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        """The settings from :meth:`to_json` output; unknown keys are ignored, missing ones defaulted."""
        return _dataclass_from_json(cls, d)


def _dataclass_from_json(cls: type, d: dict[str, Any]) -> Any:
    hints = _hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            kw[f.name] = _from_json(hints[f.name], d[f.name])
    return cls(**kw)


def _to_json(v: Any) -> Any:
    if isinstance(v, JsonDataclass):
        return v.to_json()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _to_json(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, enum.IntEnum):
        return int(v)
    if isinstance(v, list):
        return [_to_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items()}
    return v


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(tp: Any) -> Any:
    """The concrete type of a settings field: ``X`` for ``X | None``, else ``tp``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return tp


def _from_json(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    t = field_type(tp)
    if typing.get_origin(t) is list and typing.get_args(t):
        return [_from_json(typing.get_args(t)[0], x) for x in v]
    if isinstance(t, type) and dataclasses.is_dataclass(t):
        return _dataclass_from_json(t, v)
    if isinstance(t, type) and issubclass(t, enum.IntEnum):
        return t(v)
    return v


@dataclass
class LoraSettings(JsonDataclass):
    """PEFT ``LoraConfig`` settings of the LoRA-family tuners (Hu et al. 2021, arXiv:2106.09685)."""

    r: int = 8
    """Rank of the update matrices B (d x r) and A (r x k) (default 8)."""
    lora_alpha: int = 32
    """Scaling numerator: the update is scaled by lora_alpha / r, lora_alpha / sqrt(r) with rsLoRA
    (arXiv:2312.03732) (default 32)."""
    lora_dropout: float = 0.05
    """Dropout probability on the LoRA input (default 0.05)."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt, or ["all-linear"] for every linear layer but the output head (default)."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full and saved with the adapter, e.g. "lm_head" (default none)."""
    lora_plus_lr_ratio: float = 16.0
    """LoRA+ (Hayou et al. 2024, arXiv:2402.12354): learning rate of B / learning rate of A (default 16)."""
    bias: str = "none"
    """Which biases train: "none", "all" or "lora_only" (default "none")."""


SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay",
)


@dataclass
class TrainingSettings(JsonDataclass):
    """Optimisation settings (``transformers.TrainingArguments`` names)."""

    num_train_epochs: float = 1.0
    """Epochs over the training rows (default 1.0); ignored when max_steps > 0."""
    max_steps: int = 0
    """Optimizer steps (PPO: updates); overrides num_train_epochs when > 0 (default 0: from epochs)."""
    learning_rate: float | None = None
    """Peak learning rate (default None: 1e-4 for the LoRA family, 1e-5 for full fine-tuning)."""
    lr_scheduler_type: str = "cosine"
    """One of :data:`SCHEDULERS` (default "cosine")."""
    warmup_ratio: float = 0.05
    """Fraction of the steps with a linear warmup (default 0.05); warmup_steps wins when > 0."""
    warmup_steps: int = 0
    """Linear warmup steps (default 0: from warmup_ratio)."""
    per_device_train_batch_size: int = 1
    """Micro-batch per worker, rows (DPO family: pairs; PPO: rollouts) (default 1)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (default 1)."""
    max_length: int = 2048
    """Sequences are truncated to this many tokens (default 2048)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30 % more compute (default False)."""
    seed: int = 42
    """Seed of the model init, the data order and the eval split (default 42)."""
    bf16: bool | None = None
    """bf16 mixed precision (default None: where the hardware runs it natively)."""
    weight_decay: float = 0.0
    """AdamW weight decay (default 0)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (default 1.0)."""
    logging_steps: int = 1
    """Report metrics every N optimizer steps (default 1)."""
    split_dataset_ratio: float = 0.0
    """Fraction of the rows held out for evaluation, in [0, 1) (default 0: none)."""
    eval_steps: int = 0
    """Evaluate every N steps (default 0: at the end of each epoch when there is an eval split)."""
    save_steps: int = 50
    """Checkpoint every N optimizer steps (default 50)."""
    save_total_limit: int = 2
    """Checkpoints kept in the job's storage, the last K (default 2)."""
    assistant_only_loss: bool = True
    """SFT: loss on the assistant turns only (default True)."""
    per_device_eval_batch_size: int = 8
    """Evaluation micro-batch per worker (default 8)."""

    def resolved(self, tuner: Tuner = Tuner.LORA) -> TrainingSettings:
        """A copy with the defaults that depend on other settings filled in: the learning rate
        (1e-5 for full fine-tuning, else 1e-4) and bf16 (where supported)."""
        from swiftmesh.jobkit.hf import bf16_supported

        lr = self.learning_rate or (1e-5 if tuner == Tuner.FULL else 1e-4)
        bf16 = self.bf16 if self.bf16 is not None else bf16_supported()
        return dataclasses.replace(self, learning_rate=lr, bf16=bf16)


@dataclass
class DistributionSettings(JsonDataclass):
    """How many Ray Train workers a job runs, with what resources, under which strategy."""

    strategy: Strategy = Strategy.NONE
    """DDP or DeepSpeed ZeRO-2/3 (arXiv:1910.02054) (default NONE: one worker)."""
    num_workers: int = 1
    """Ray Train workers (default 1)."""
    cpus_per_worker: float = 1.0
    """Ray CPUs per worker (default 1)."""
    gpus_per_worker: float = 0.0
    """Ray GPUs per worker (default 0: CPU training)."""
    memory_bytes_per_worker: int = 0
    """Ray memory reservation per worker, bytes (default 0: none; the estimate then uses the
    node's available memory)."""


@dataclass
class TuningSpec(JsonDataclass):
    """What every fine-tuning job names: the model, the tuner, the data, the optimisation, the
    distribution and the output. The trainer's and the aligner's specs extend it."""

    model: str = ""
    """The model to start from, "models/{id}" in the hub (a PEFT adapter trains further on its base)."""
    tuner: Tuner = Tuner.LORA
    """What trains (default LORA)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings of the LoRA-family tuners."""
    datasets: list[str] = field(default_factory=list)
    """Dataset sources: local files (jsonl, json, csv, parquet), "models/{id}" datasets, "#N" sampling."""
    ignore_columns: bool = False
    """Drop dataset columns with content that the row's format does not use, logging a warning
    with a count per column (default False: such a column is an InvalidArgument naming row and column)."""
    args: TrainingSettings = field(default_factory=TrainingSettings)
    """Optimisation settings."""
    distribution: DistributionSettings = field(default_factory=DistributionSettings)
    """Workers, resources and strategy."""
    output_model_id: str = ""
    """Hub id of the result (default "": "<base>-<kind>-<job id>")."""
    chat_template: str = ""
    """A Jinja chat template replacing the tokenizer's (default "": the model's own)."""

    def violations(self, model_hint: str = "required: models/{model} in the hub") -> list[tuple[str, str]]:
        """Field violations of the shared settings ("spec.<field>", why); empty when fine."""
        from swiftmesh.jobkit.hf import validate_training

        v = validate_training(self.args, self.tuner, self.lora, self.distribution)
        if not self.model:
            v.append(("spec.model", model_hint))
        if not self.datasets:
            v.append(("spec.datasets", "at least one dataset is required"))
        if self.output_model_id:
            from swiftmesh.names import validate_model_id

            try:
                validate_model_id(self.output_model_id.removeprefix("models/"), "spec.output_model_id")
            except InvalidArgument:
                v.append(("spec.output_model_id", f"invalid model id {self.output_model_id!r}"))
        return v


__all__ = [
    "ADAPTER_TUNERS",
    "SCHEDULERS",
    "DistributionSettings",
    "JsonDataclass",
    "LoraSettings",
    "Strategy",
    "TrainingSettings",
    "Tuner",
    "TuningSpec",
    "field_type",
]
