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

from collections.abc import Sequence
from typing import Any

from swiftmesh.aligner.v1 import aligner_pb2, aligner_pb2_grpc
from swiftmesh.clients.jobs import JobServiceClient, set_field, tuning_fields
from swiftmesh.runtime.errors import InvalidArgument

__all__ = ["METHOD_CONFIG", "RLHF_TYPES", "AlignerClient", "build_spec"]

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
    ignore_columns: bool = False,
    **kwargs: Any,
) -> aligner_pb2.AlignmentSpec:
    """An AlignmentSpec from plain values.

    ``kwargs`` are, in this order of precedence: fields of the method's config message
    (``DpoConfig`` for dpo: ``beta``, ``loss_type``, ``label_smoothing``, ``rpo_alpha``; ``KtoConfig``;
    ``CpoConfig`` for orpo/cpo/simpo; ``RewardConfig``; ``PpoConfig``; ``GrpoConfig``),
    ``TrainingArguments`` fields (``max_steps``, ``learning_rate``, ...) and ``LoraConfig`` fields
    (``r``, ``lora_alpha``, ``target_modules``, ...). ``None`` values are skipped.
    ``ignore_columns`` drops dataset columns no format reads (with a warning in the job's log)
    instead of refusing the data.

    Raises:
        InvalidArgument: unknown rlhf_type, tuner, strategy or field.
    """
    if rlhf_type not in RLHF_TYPES:
        raise InvalidArgument(f"unknown rlhf_type {rlhf_type!r}; one of {', '.join(RLHF_TYPES)}",
                              field_violations=[("rlhf_type", rlhf_type)])
    spec = aligner_pb2.AlignmentSpec(rlhf_type=RLHF_TYPES[rlhf_type], ref_model=ref_model,
                                     output_model_id=output_model_id, max_prompt_length=max_prompt_length,
                                     chat_template=chat_template, ignore_columns=ignore_columns)
    method_field = METHOD_CONFIG[rlhf_type]
    method_msg = getattr(spec, method_field)
    method_fields = set(method_msg.DESCRIPTOR.fields_by_name)
    # The method's own fields first (DpoConfig.beta before anything of the same name).
    rest = {k: v for k, v in kwargs.items() if v is not None and k not in method_fields}
    for k, v in kwargs.items():
        if v is not None and k in method_fields:
            set_field(method_msg, k, v)
    for k in tuning_fields(spec, model=model, datasets=datasets, tuner=tuner, strategy=strategy,
                           num_workers=num_workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                           memory_bytes_per_worker=memory_bytes_per_worker, kwargs=rest):
        raise InvalidArgument(
            f"unknown field {k!r} for rlhf_type {rlhf_type}: not a {method_msg.DESCRIPTOR.name}, "
            "TrainingArguments or LoraConfig field",
            field_violations=[(k, "unknown field")],
        )
    method_msg.SetInParent()  # the method's config is set even when every field keeps its default
    return spec


class AlignerClient(JobServiceClient):
    """Async aligner client. Use as ``async with AlignerClient(settings) as aligner:``; its
    ``create_job`` and ``estimate`` take an ``AlignmentSpec`` (see :func:`build_spec`)."""

    section = "aligner"
    stub_class = aligner_pb2_grpc.AlignerServiceStub
    create_request = aligner_pb2.CreateJobRequest
    estimate_request = aligner_pb2.EstimateJobRequest
