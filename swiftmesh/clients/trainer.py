"""Typed async client of the trainer: TrainerService (CreateJob, EstimateJob) plus the
JobService methods of :class:`~swiftmesh.clients.jobs.JobsClient`.

    spec = build_spec(model="models/SmolLM2-135M-Instruct", datasets=["identity.jsonl"],
                      tuner="lora", max_steps=20, learning_rate=2e-4)
    async with TrainerClient(settings) as trainer:
        est = await trainer.estimate(spec)
        job = await trainer.create_job(spec)
        job = await trainer.wait(job.name)

Errors raise :mod:`swiftmesh.runtime.errors` exceptions (InvalidArgument naming the dataset
file, row and field; NotFound for a model the hub lacks; ResourceExhausted; ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from swiftmesh.clients.jobs import JobsClient
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.runtime.client import raise_domain_errors
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import InvalidArgument
from swiftmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

__all__ = ["TrainerClient", "build_spec", "TUNERS", "STRATEGIES", "TASKS"]

TUNERS = {
    "full": training_pb2.TUNER_FULL,
    "lora": training_pb2.TUNER_LORA,
    "qlora": training_pb2.TUNER_QLORA,
    "dora": training_pb2.TUNER_DORA,
    "rslora": training_pb2.TUNER_RSLORA,
    "lora+": training_pb2.TUNER_LORA_PLUS,
    "lora_plus": training_pb2.TUNER_LORA_PLUS,
}
STRATEGIES = {
    "none": training_pb2.DISTRIBUTION_STRATEGY_NONE,
    "ddp": training_pb2.DISTRIBUTION_STRATEGY_DDP,
    "zero2": training_pb2.DISTRIBUTION_STRATEGY_ZERO2,
    "zero3": training_pb2.DISTRIBUTION_STRATEGY_ZERO3,
    "zero3_offload": training_pb2.DISTRIBUTION_STRATEGY_ZERO3_OFFLOAD,
}
TASKS = {"sft": trainer_pb2.TASK_SFT, "pt": trainer_pb2.TASK_PT, "merge": trainer_pb2.TASK_MERGE}
_ARG_FIELDS = {f.name for f in training_pb2.TrainingArguments.DESCRIPTOR.fields}
_LORA_FIELDS = {f.name for f in training_pb2.LoraConfig.DESCRIPTOR.fields}


def build_spec(
    *,
    model: str,
    task: str = "sft",
    datasets: Sequence[str] = (),
    tuner: str = "lora",
    strategy: str = "none",
    num_workers: int = 0,
    cpus_per_worker: float = 0.0,
    gpus_per_worker: float = 0.0,
    memory_bytes_per_worker: int = 0,
    output_model_id: str = "",
    merge_lora: bool = False,
    chat_template: str = "",
    **kwargs: Any,
) -> trainer_pb2.TrainingSpec:
    """A TrainingSpec from plain values. ``kwargs`` are TrainingArguments fields
    (``max_steps``, ``learning_rate``, ...) and LoraConfig fields (``r``, ``lora_alpha``,
    ``target_modules``, ...). InvalidArgument names an unknown tuner, strategy, task or field."""
    if tuner not in TUNERS:
        raise InvalidArgument(f"unknown tuner {tuner!r}; one of {sorted(TUNERS)}", field_violations=[("tuner", tuner)])
    if strategy not in STRATEGIES:
        raise InvalidArgument(f"unknown strategy {strategy!r}; one of {sorted(STRATEGIES)}",
                              field_violations=[("strategy", strategy)])
    if task not in TASKS:
        raise InvalidArgument(f"unknown task {task!r}; one of {sorted(TASKS)}", field_violations=[("task", task)])
    args = training_pb2.TrainingArguments()
    lora = training_pb2.LoraConfig()
    for k, v in kwargs.items():
        if v is None:
            continue
        if k in _ARG_FIELDS:
            setattr(args, k, v)
        elif k in _LORA_FIELDS:
            if isinstance(v, (list, tuple)):
                getattr(lora, k).extend(v)
            else:
                setattr(lora, k, v)
        else:
            raise InvalidArgument(f"unknown training field {k!r}", field_violations=[(k, "not a TrainingArguments or LoraConfig field")])
    return trainer_pb2.TrainingSpec(
        model=model if model.startswith("models/") else f"models/{model}",
        task=TASKS[task],
        tuner=TUNERS[tuner],
        lora=lora,
        datasets=list(datasets),
        args=args,
        distribution=training_pb2.Distribution(
            strategy=STRATEGIES[strategy],
            num_workers=num_workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            memory_bytes_per_worker=memory_bytes_per_worker,
        ),
        output_model_id=output_model_id,
        merge_lora=merge_lora,
        chat_template=chat_template,
    )


class TrainerClient(JobsClient):
    """Async trainer client. Use as ``async with TrainerClient(settings) as trainer:``."""

    def __init__(self, settings: Settings, target: str | None = None) -> None:
        super().__init__(settings, target or settings.trainer.target)
        self._trainer: trainer_pb2_grpc.TrainerServiceStub | None = None

    def _open(self) -> None:
        super()._open()
        self._trainer = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    @property
    def trainer_stub(self) -> trainer_pb2_grpc.TrainerServiceStub:
        if self._trainer is None:
            raise RuntimeError("TrainerClient is not open: use `async with TrainerClient(settings) as t:`")
        return self._trainer

    async def create_job(
        self,
        spec: trainer_pb2.TrainingSpec,
        *,
        job_id: str = "",
        labels: Mapping[str, str] | None = None,
        force: bool = False,
        validate_only: bool = False,
        timeout: float = 600.0,
    ) -> jobs_pb2.Job:
        """Validate and queue a job (the data is read and tokenized before this returns)."""
        req = trainer_pb2.CreateJobRequest(spec=spec, job_id=job_id.removeprefix("jobs/"), labels=dict(labels or {}),
                                           force=force, validate_only=validate_only)
        with raise_domain_errors():
            return await self.trainer_stub.CreateJob(req, timeout=timeout)

    async def estimate(self, spec: trainer_pb2.TrainingSpec, *, timeout: float = 600.0) -> training_pb2.Estimate:
        """Memory per worker and time, without running anything."""
        with raise_domain_errors():
            return await self.trainer_stub.EstimateJob(trainer_pb2.EstimateJobRequest(spec=spec), timeout=timeout)
