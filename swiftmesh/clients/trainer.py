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

from collections.abc import Sequence
from typing import Any

from swiftmesh.clients.jobs import JobServiceClient, tuning_fields
from swiftmesh.runtime.errors import InvalidArgument
from swiftmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

__all__ = ["TASKS", "TrainerClient", "build_spec"]

TASKS = {"sft": trainer_pb2.TASK_SFT, "pt": trainer_pb2.TASK_PT, "merge": trainer_pb2.TASK_MERGE}


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
    ignore_columns: bool = False,
    **kwargs: Any,
) -> trainer_pb2.TrainingSpec:
    """A TrainingSpec from plain values. ``kwargs`` are TrainingArguments fields
    (``max_steps``, ``learning_rate``, ...) and LoraConfig fields (``r``, ``lora_alpha``,
    ``target_modules``, ...); ``ignore_columns`` drops dataset columns no format reads (with a
    warning in the job's log) instead of refusing the data. InvalidArgument names an unknown
    tuner, strategy, task or field."""
    if task not in TASKS:
        raise InvalidArgument(f"unknown task {task!r}; one of {sorted(TASKS)}", field_violations=[("task", task)])
    spec = trainer_pb2.TrainingSpec(task=TASKS[task], output_model_id=output_model_id, merge_lora=merge_lora,
                                    chat_template=chat_template, ignore_columns=ignore_columns)
    rest = tuning_fields(spec, model=model, datasets=datasets, tuner=tuner, strategy=strategy, num_workers=num_workers,
                         cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                         memory_bytes_per_worker=memory_bytes_per_worker, kwargs=kwargs)
    spec.args.SetInParent()
    spec.lora.SetInParent()
    for k in rest:
        raise InvalidArgument(f"unknown training field {k!r}", field_violations=[(k, "not a TrainingArguments or LoraConfig field")])
    return spec


class TrainerClient(JobServiceClient):
    """Async trainer client. Use as ``async with TrainerClient(settings) as trainer:``; its
    ``create_job`` and ``estimate`` take a ``TrainingSpec`` (see :func:`build_spec`)."""

    section = "trainer"
    stub_class = trainer_pb2_grpc.TrainerServiceStub
    create_request = trainer_pb2.CreateJobRequest
    estimate_request = trainer_pb2.EstimateJobRequest
