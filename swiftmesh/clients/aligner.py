"""Typed async client of the aligner: AlignerService (CreateJob, EstimateJob) plus the
JobService methods of :class:`~swiftmesh.clients.jobs.JobsClient`.

    spec = build_spec(rlhf_type="dpo", model="models/SmolLM2-135M-Instruct-sft",
                      datasets=["prefs.jsonl"], beta=0.1, max_steps=50, learning_rate=5e-5)
    async with AlignerClient(settings) as aligner:
        est = await aligner.estimate(spec)
        job = await aligner.create_job(spec)
        job = await aligner.wait(job.name)

Errors raise :mod:`swiftmesh.runtime.errors` exceptions (InvalidArgument naming the dataset
file, row and the fields the method expects; NotFound for a model the hub lacks; ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from swiftmesh.aligner.v1 import aligner_pb2, aligner_pb2_grpc
from swiftmesh.clients.jobs import JobsClient
from swiftmesh.clients.trainer import STRATEGIES, TUNERS
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.runtime.client import raise_domain_errors
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import InvalidArgument

__all__ = ["AlignerClient", "build_spec", "RLHF_TYPES", "METHOD_CONFIG"]

RLHF_TYPES = {
    "dpo": aligner_pb2.RLHF_TYPE_DPO,
    "kto": aligner_pb2.RLHF_TYPE_KTO,
    "orpo": aligner_pb2.RLHF_TYPE_ORPO,
    "cpo": aligner_pb2.RLHF_TYPE_CPO,
    "simpo": aligner_pb2.RLHF_TYPE_SIMPO,
    "rm": aligner_pb2.RLHF_TYPE_RM,
    "ppo": aligner_pb2.RLHF_TYPE_PPO,
    "grpo": aligner_pb2.RLHF_TYPE_GRPO,
}
# The AlignmentSpec oneof field (and its message) holding each method's settings.
METHOD_CONFIG = {"dpo": "dpo", "kto": "kto", "orpo": "cpo", "cpo": "cpo", "simpo": "cpo", "rm": "rm", "ppo": "ppo",
                 "grpo": "grpo"}
_ARG_FIELDS = {f.name for f in training_pb2.TrainingArguments.DESCRIPTOR.fields}
_LORA_FIELDS = {f.name for f in training_pb2.LoraConfig.DESCRIPTOR.fields}


def _set(msg, k: str, v: Any) -> None:
    fd = msg.DESCRIPTOR.fields_by_name[k]
    if fd.is_repeated:
        getattr(msg, k).extend([v] if isinstance(v, str) else list(v))
    else:
        setattr(msg, k, v)


def build_spec(
    *,
    rlhf_type: str,
    model: str,
    datasets: Sequence[str] = (),
    tuner: str = "lora",
    strategy: str = "none",
    num_workers: int = 0,
    cpus_per_worker: float = 0.0,
    gpus_per_worker: float = 0.0,
    memory_bytes_per_worker: int = 0,
    ref_model: str = "",
    output_model_id: str = "",
    max_prompt_length: int = 0,
    chat_template: str = "",
    **kwargs: Any,
) -> aligner_pb2.AlignmentSpec:
    """An AlignmentSpec from plain values.

    ``kwargs`` are, in this order of precedence: fields of the method's config message
    (``DpoConfig`` for dpo: ``beta``, ``loss_type``, ``label_smoothing``, ``rpo_alpha``; ``KtoConfig``;
    ``CpoConfig`` for orpo/cpo/simpo; ``RewardConfig``; ``PpoConfig``; ``GrpoConfig``),
    ``TrainingArguments`` fields (``max_steps``, ``learning_rate``, ...) and ``LoraConfig`` fields
    (``r``, ``lora_alpha``, ``target_modules``, ...). ``None`` values are skipped.

    Raises:
        InvalidArgument: unknown rlhf_type, tuner, strategy or field.
    """
    if rlhf_type not in RLHF_TYPES:
        raise InvalidArgument(f"unknown rlhf_type {rlhf_type!r}; one of {', '.join(RLHF_TYPES)}",
                              field_violations=[("rlhf_type", rlhf_type)])
    if tuner not in TUNERS:
        raise InvalidArgument(f"unknown tuner {tuner!r}; one of {sorted(TUNERS)}", field_violations=[("tuner", tuner)])
    if strategy not in STRATEGIES:
        raise InvalidArgument(f"unknown strategy {strategy!r}; one of {sorted(STRATEGIES)}",
                              field_violations=[("strategy", strategy)])
    spec = aligner_pb2.AlignmentSpec(
        model=model if model.startswith("models/") else f"models/{model}",
        rlhf_type=RLHF_TYPES[rlhf_type],
        tuner=TUNERS[tuner],
        datasets=list(datasets),
        distribution=training_pb2.Distribution(
            strategy=STRATEGIES[strategy], num_workers=num_workers, cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker, memory_bytes_per_worker=memory_bytes_per_worker,
        ),
        ref_model=ref_model,
        output_model_id=output_model_id,
        max_prompt_length=max_prompt_length,
        chat_template=chat_template,
    )
    method_field = METHOD_CONFIG[rlhf_type]
    method_msg = getattr(spec, method_field)
    method_fields = set(method_msg.DESCRIPTOR.fields_by_name)
    touched = False
    for k, v in kwargs.items():
        if v is None:
            continue
        if k in method_fields:
            _set(method_msg, k, v)
            touched = True
        elif k in _ARG_FIELDS:
            _set(spec.args, k, v)
        elif k in _LORA_FIELDS:
            _set(spec.lora, k, v)
        else:
            raise InvalidArgument(
                f"unknown field {k!r} for rlhf_type {rlhf_type}: not a {method_msg.DESCRIPTOR.name}, "
                "TrainingArguments or LoraConfig field",
                field_violations=[(k, "unknown field")],
            )
    if not touched:
        getattr(spec, method_field).SetInParent()
    return spec


class AlignerClient(JobsClient):
    """Async aligner client. Use as ``async with AlignerClient(settings) as aligner:``."""

    def __init__(self, settings: Settings, target: str | None = None) -> None:
        super().__init__(settings, target or settings.aligner.target)
        self._aligner: aligner_pb2_grpc.AlignerServiceStub | None = None

    def _open(self) -> None:
        super()._open()
        self._aligner = aligner_pb2_grpc.AlignerServiceStub(self._channel)

    @property
    def aligner_stub(self) -> aligner_pb2_grpc.AlignerServiceStub:
        if self._aligner is None:
            raise RuntimeError("AlignerClient is not open: use `async with AlignerClient(settings) as a:`")
        return self._aligner

    async def create_job(
        self,
        spec: aligner_pb2.AlignmentSpec,
        *,
        job_id: str = "",
        labels: Mapping[str, str] | None = None,
        force: bool = False,
        validate_only: bool = False,
        timeout: float = 600.0,
    ) -> jobs_pb2.Job:
        """Validate and queue an alignment job (the data is read and checked before this returns)."""
        req = aligner_pb2.CreateJobRequest(spec=spec, job_id=job_id.removeprefix("jobs/"), labels=dict(labels or {}),
                                           force=force, validate_only=validate_only)
        with raise_domain_errors():
            return await self.aligner_stub.CreateJob(req, timeout=timeout)

    async def estimate(self, spec: aligner_pb2.AlignmentSpec, *, timeout: float = 600.0) -> training_pb2.Estimate:
        """Memory per worker and time, without running anything."""
        with raise_domain_errors():
            return await self.aligner_stub.EstimateJob(aligner_pb2.EstimateJobRequest(spec=spec), timeout=timeout)
