"""The generic ``swiftmesh.jobs.v1.JobService`` servicer over a :class:`JobManager`, and the
proto <-> domain translation every job service shares.

Translation only; every service that runs jobs registers the servicer as is, with the function
that turns a job's stored spec (the JSON of its domain spec) back into the service's proto::

    service.add(JobServicer(manager, spec_proto), jobs_pb2_grpc.add_JobServiceServicer_to_server,
                JOB_SERVICE_NAME)

* :func:`spec_from_proto` / :func:`spec_to_proto`: a settings dataclass
  (:mod:`swiftmesh.jobkit.settings`) from / to its proto message, field by field by name (a
  field's ``metadata["proto"]`` names a differently called proto field). Proto3's "0 / empty /
  unset means the default" becomes the dataclass default; an unknown enum value is
  InvalidArgument naming the field.
* :func:`job_to_proto`, :func:`event_to_proto`, :func:`estimate_to_proto`: the domain records
  of :mod:`swiftmesh.jobkit.types` and :class:`~swiftmesh.jobkit.estimate.Estimate` as protos;
  :func:`job_from_proto`, :func:`event_from_proto` the way back (old job history).
* :class:`SpecTranslation`, :func:`create_job`, :func:`estimate_job`, :func:`job_service`:
  what a job service's own servicer and server share (the trainer's and the aligner's).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable
from typing import Any

from google.protobuf import any_pb2, empty_pb2, struct_pb2
from google.protobuf.message import Message

from swiftmesh.jobkit.estimate import Estimate
from swiftmesh.jobkit.manager import JobManager
from swiftmesh.jobkit.settings import field_type
from swiftmesh.jobkit.types import (
    Checkpoint,
    Job,
    JobArtifact,
    JobError,
    JobEvent,
    JobState,
    LogLine,
    MetricsReport,
    Progress,
    Resources,
    StateChange,
)
from swiftmesh.jobs.v1 import jobs_pb2, jobs_pb2_grpc, training_pb2
from swiftmesh.runtime.errors import InvalidArgument

JOB_SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name

# (kind, spec JSON) -> the proto packed into Job.spec.
SpecToProto = Callable[[str, dict[str, Any]], Message]


# Settings dataclasses <-> proto ----------------------------------------------------------------
def spec_from_proto(msg: Message, cls: type, path: str = "spec", skip: tuple[str, ...] = ()):
    """The dataclass ``cls`` from ``msg``: each field that ``msg`` has and sets (non-zero,
    non-empty, or present for ``optional`` and message fields) is taken, nested settings
    recursively; the rest keep the dataclass defaults. Fields named in ``skip`` are left to the
    caller. Raises InvalidArgument ("<path>.<field>") for an enum value the domain lacks."""
    hints = typing.get_type_hints(cls)
    by_name = msg.DESCRIPTOR.fields_by_name
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        pname = f.metadata.get("proto", f.name)
        fd = by_name.get(pname)
        if fd is None or f.name in skip:
            continue
        value = getattr(msg, pname)
        where = f"{path}.{pname}"
        tp = field_type(hints[f.name])
        if fd.is_repeated:
            if len(value):
                kw[f.name] = list(value)
        elif fd.type == fd.TYPE_MESSAGE:
            if msg.HasField(pname):
                kw[f.name] = spec_from_proto(value, tp, where)
        elif fd.has_presence:
            if msg.HasField(pname):
                kw[f.name] = value
        elif value:
            kw[f.name] = _enum(tp, value, where) if isinstance(tp, type) and issubclass(tp, enum.IntEnum) else value
    return cls(**kw)


def _enum(tp: type[enum.IntEnum], value: int, where: str) -> enum.IntEnum:
    try:
        return tp(value)
    except ValueError:
        raise InvalidArgument(f"invalid spec: {where}: unknown value {value}",
                              field_violations=[(where, f"unknown value {value}")], reason="BAD_SPEC") from None


def spec_to_proto(obj: Any, msg: Message, skip: tuple[str, ...] = ()) -> Message:
    """Fill ``msg`` from the dataclass ``obj`` (the inverse of :func:`spec_from_proto`; None
    fields stay unset, enums become their numbers). Returns ``msg``."""
    by_name = msg.DESCRIPTOR.fields_by_name
    for f in dataclasses.fields(obj):
        pname = f.metadata.get("proto", f.name)
        if pname not in by_name or f.name in skip:
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            sub = getattr(msg, pname)
            sub.SetInParent()
            spec_to_proto(value, sub)
        elif isinstance(value, list):
            getattr(msg, pname).extend(value)
        else:
            setattr(msg, pname, int(value) if isinstance(value, enum.IntEnum) else value)
    return msg


def struct_spec(kind: str, spec: dict[str, Any]) -> Message:
    """A spec kept as plain JSON (e.g. the toy kind's) as a ``google.protobuf.Struct``."""
    s = struct_pb2.Struct()
    s.update(spec)
    return s


# Records -> proto ------------------------------------------------------------------------------
def _ts(field, seconds: float) -> None:
    if seconds:
        field.FromNanoseconds(round(seconds * 1e9))


def progress_to_proto(p: Progress) -> jobs_pb2.JobProgress:
    """A :class:`~swiftmesh.jobkit.types.Progress` as ``JobProgress``."""
    out = jobs_pb2.JobProgress(step=p.step, total_steps=p.total_steps, epoch=p.epoch, fraction=p.fraction,
                               tokens_per_second=p.tokens_per_second)
    if p.eta_s is not None:
        out.eta.FromNanoseconds(int(p.eta_s * 1e9))
    return out


def _checkpoint(c: Checkpoint) -> jobs_pb2.Checkpoint:
    out = jobs_pb2.Checkpoint(step=c.step, path=c.path)
    if c.create_time:
        out.create_time.FromSeconds(int(c.create_time))
    return out


def job_to_proto(job: Job, spec_proto: SpecToProto = struct_spec) -> jobs_pb2.Job:
    """A job record as ``swiftmesh.jobs.v1.Job``, its spec packed by ``spec_proto``."""
    out = jobs_pb2.Job(
        name=job.name, uid=job.uid, kind=job.kind, state=int(job.state), state_message=job.state_message,
        metrics=job.metrics, attempt=job.attempt, labels=job.labels, tensorboard_dir=job.tensorboard_dir,
        artifacts=[jobs_pb2.JobArtifact(model=a.model, kind=a.kind) for a in job.artifacts],
        checkpoints=[_checkpoint(c) for c in job.checkpoints],
        resources=jobs_pb2.Resources(**dataclasses.asdict(job.resources)),
        progress=progress_to_proto(job.progress),
    )
    if job.spec or job.kind:
        out.spec.Pack(spec_proto(job.kind, job.spec))
    if job.error is not None:
        out.error.CopyFrom(jobs_pb2.JobError(code=job.error.code, reason=job.error.reason, message=job.error.message))
    _ts(out.create_time, job.create_time)
    _ts(out.start_time, job.start_time)
    _ts(out.end_time, job.end_time)
    _ts(out.update_time, job.update_time)
    return out


def event_to_proto(ev: JobEvent) -> jobs_pb2.JobEvent:
    """A job event as ``swiftmesh.jobs.v1.JobEvent`` (its one payload set)."""
    out = jobs_pb2.JobEvent(job=ev.job, sequence=ev.sequence)
    _ts(out.time, ev.time)
    if ev.state_change is not None:
        c = ev.state_change
        out.state_change.CopyFrom(jobs_pb2.StateChange(state=int(c.state), previous_state=int(c.previous_state),
                                                       message=c.message))
    elif ev.metrics is not None:
        m = ev.metrics
        out.metrics.CopyFrom(jobs_pb2.MetricsReport(step=m.step, epoch=m.epoch, metrics=m.metrics,
                                                    progress=progress_to_proto(m.progress)))
    elif ev.checkpoint is not None:
        out.checkpoint.CopyFrom(jobs_pb2.CheckpointSaved(checkpoint=_checkpoint(ev.checkpoint)))
    elif ev.log is not None:
        out.log.CopyFrom(jobs_pb2.LogLine(level=ev.log.level, message=ev.log.message, source=ev.log.source))
    elif ev.artifact is not None:
        out.artifact.CopyFrom(jobs_pb2.JobArtifact(model=ev.artifact.model, kind=ev.artifact.kind))
    return out


# Proto -> records (the job history of stores that kept protos, see swiftmesh.migrations 0102) ----
def _secs(ts) -> float:
    return ts.ToNanoseconds() / 1e9 if ts.seconds or ts.nanos else 0.0


def _progress_from_proto(p: jobs_pb2.JobProgress) -> Progress:
    return Progress(step=p.step, total_steps=p.total_steps, epoch=p.epoch, fraction=p.fraction,
                    eta_s=p.eta.ToNanoseconds() / 1e9 if p.HasField("eta") else None,
                    tokens_per_second=p.tokens_per_second)


def _checkpoint_from_proto(c: jobs_pb2.Checkpoint) -> Checkpoint:
    return Checkpoint(step=c.step, path=c.path, create_time=_secs(c.create_time))


def spec_json_from_any(spec: any_pb2.Any, kind: str) -> dict[str, Any]:
    """The JSON of a job's domain spec from the ``Job.spec`` a service packed: the packed message
    field by field (proto names, enums as numbers); the enum field naming the kind
    (``task``: TASK_SFT, ``rlhf_type``: RLHF_TYPE_DPO) becomes ``kind``. ``{}`` when the message
    type is unknown here (the job keeps its defaults)."""
    from google.protobuf import json_format, symbol_database

    # The services' spec types, so the default pool can unpack them.
    from swiftmesh.aligner.v1 import aligner_pb2  # noqa: F401
    from swiftmesh.trainer.v1 import trainer_pb2  # noqa: F401

    if not spec.type_url:
        return {}
    try:
        cls = symbol_database.Default().GetSymbol(spec.type_url.rsplit("/", 1)[-1])
    except KeyError:
        return {}
    msg = cls()
    spec.Unpack(msg)
    if isinstance(msg, struct_pb2.Struct):
        return json_format.MessageToDict(msg)
    out = _fields_json(msg)
    for f in msg.DESCRIPTOR.fields:
        if f.enum_type is not None and not f.is_repeated and f.name in out:
            value = f.enum_type.values_by_number.get(out[f.name])
            if value is not None and kind and value.name.lower().endswith("_" + kind.lower()):
                out[f.name] = kind
    return out


def _fields_json(msg: Message) -> dict[str, Any]:
    """The fields ``msg`` sets, by proto name: numbers as numbers (int64 too), enums as numbers,
    nested messages as dicts."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            out[fd.name] = list(value) if fd.is_repeated else value
        elif fd.message_type.GetOptions().map_entry:
            out[fd.name] = {k: _fields_json(v) if isinstance(v, Message) else v for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [_fields_json(v) for v in value]
        else:
            out[fd.name] = _fields_json(value)
    return out


def job_from_proto(pb: jobs_pb2.Job) -> Job:
    """A ``swiftmesh.jobs.v1.Job`` as the domain record (the inverse of :func:`job_to_proto`;
    the spec through :func:`spec_json_from_any`)."""
    r = pb.resources
    return Job(
        name=pb.name, uid=pb.uid, kind=pb.kind, state=JobState(pb.state), state_message=pb.state_message,
        spec=spec_json_from_any(pb.spec, pb.kind), progress=_progress_from_proto(pb.progress),
        metrics=dict(pb.metrics), artifacts=[JobArtifact(model=a.model, kind=a.kind) for a in pb.artifacts],
        error=JobError(pb.error.code, pb.error.reason, pb.error.message) if pb.HasField("error") else None,
        checkpoints=[_checkpoint_from_proto(c) for c in pb.checkpoints],
        resources=Resources(r.num_workers, r.cpus_per_worker, r.gpus_per_worker, r.memory_bytes_per_worker),
        attempt=pb.attempt, create_time=_secs(pb.create_time), start_time=_secs(pb.start_time),
        end_time=_secs(pb.end_time), update_time=_secs(pb.update_time), labels=dict(pb.labels),
        tensorboard_dir=pb.tensorboard_dir,
    )


def event_from_proto(pb: jobs_pb2.JobEvent) -> JobEvent:
    """A ``swiftmesh.jobs.v1.JobEvent`` as the domain record (the inverse of :func:`event_to_proto`)."""
    ev = JobEvent(job=pb.job, sequence=pb.sequence, time=_secs(pb.time))
    which = pb.WhichOneof("payload")
    if which == "state_change":
        c = pb.state_change
        ev.state_change = StateChange(JobState(c.state), JobState(c.previous_state), c.message)
    elif which == "metrics":
        m = pb.metrics
        ev.metrics = MetricsReport(m.step, m.epoch, dict(m.metrics), _progress_from_proto(m.progress))
    elif which == "checkpoint":
        ev.checkpoint = _checkpoint_from_proto(pb.checkpoint.checkpoint)
    elif which == "log":
        ev.log = LogLine(pb.log.level, pb.log.message, pb.log.source)
    elif which == "artifact":
        ev.artifact = JobArtifact(pb.artifact.model, pb.artifact.kind)
    return ev


def estimate_to_proto(e: Estimate) -> training_pb2.Estimate:
    """An :class:`~swiftmesh.jobkit.estimate.Estimate` as ``swiftmesh.jobs.v1.Estimate``."""
    out = training_pb2.Estimate(
        weights_bytes=e.weights_bytes, gradients_bytes=e.gradients_bytes,
        optimizer_states_bytes=e.optimizer_states_bytes, activations_bytes=e.activations_bytes,
        total_bytes_per_worker=e.total_bytes_per_worker, available_bytes_per_worker=e.available_bytes_per_worker,
        fits=e.fits, trainable_parameters=e.trainable_parameters, total_parameters=e.total_parameters,
        notes=e.notes, total_flops=e.total_flops,
    )
    if e.estimated_duration_s:
        out.estimated_duration.FromNanoseconds(round(e.estimated_duration_s * 1e9))
    return out


# A service's own spec, CreateJob and EstimateJob ---------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SpecTranslation:
    """How a service's proto spec maps to its domain spec (a settings dataclass whose
    ``kind_field`` is the job kind's name, the proto's field of the same name an enum).

    Attributes:
        domain: the domain spec class (e.g. the trainer's ``TrainingSpec``).
        proto: the proto message class of the spec.
        kind_field: the field naming the kind ("task", "rlhf_type").
        kinds: proto enum value -> kind name.
        required: the InvalidArgument message when the kind is unset or unknown.
    """

    domain: type
    proto: type[Message]
    kind_field: str
    kinds: dict[int, str]
    required: str

    def from_proto(self, msg: Message) -> Any:
        """The domain spec of ``msg``; InvalidArgument (BAD_SPEC, on ``spec.<kind_field>``) when
        the kind is unset or unknown, or an enum field holds a value the domain lacks."""
        value = getattr(msg, self.kind_field)
        try:
            kind = self.kinds[value]
        except KeyError:
            raise InvalidArgument(self.required, field_violations=[(f"spec.{self.kind_field}", f"got {value}")],
                                  reason="BAD_SPEC") from None
        spec = spec_from_proto(msg, self.domain, skip=(self.kind_field,))
        setattr(spec, self.kind_field, kind)
        return spec

    def to_proto(self, spec: Any) -> Message:
        """The proto of a domain spec (the inverse of :meth:`from_proto`)."""
        msg = spec_to_proto(spec, self.proto(), skip=(self.kind_field,))
        by_name = {v: k for k, v in self.kinds.items()}
        setattr(msg, self.kind_field, by_name.get(getattr(spec, self.kind_field), 0))
        return msg

    def job_spec(self, kind: str, spec: dict[str, Any]) -> Message:
        """A job's stored spec JSON as the proto packed into ``Job.spec`` (a :data:`SpecToProto`)."""
        return self.to_proto(self.domain.from_json(spec))


async def create_job(manager: JobManager, spec: SpecTranslation, request: Message) -> jobs_pb2.Job:
    """A service's CreateJob: translate ``request.spec``, create the job of its kind, answer the proto."""
    domain = spec.from_proto(request.spec)
    job = await manager.create(getattr(domain, spec.kind_field), domain, job_id=request.job_id,
                               labels=dict(request.labels), force=request.force,
                               validate_only=request.validate_only)
    return job_to_proto(job, spec.job_spec)


async def estimate_job(manager: JobManager, spec: SpecTranslation, request: Message) -> training_pb2.Estimate:
    """A service's EstimateJob: translate ``request.spec``, estimate it with its kind, answer the proto."""
    domain = spec.from_proto(request.spec)
    return estimate_to_proto(await manager.estimate(getattr(domain, spec.kind_field), domain))


def job_service(settings, manager: JobManager, servicer: Any, add_fn: Callable, full_name: str,
                spec: SpecTranslation):
    """The ``runtime.server.Service`` of a job service (named after ``manager.service``, on its
    endpoint): its own servicer, the shared JobService over ``manager`` (specs packed by
    ``spec``), the manager's start/stop hooks, and ``service.manager`` (tests and tools reach
    the domain through it)."""
    from swiftmesh.runtime.server import Service

    service = Service(manager.service, endpoint=settings.endpoint(manager.service))
    service.add(servicer, add_fn, full_name)
    service.add(JobServicer(manager, spec.job_spec), jobs_pb2_grpc.add_JobServiceServicer_to_server,
                JOB_SERVICE_NAME)
    service.on_start.append(manager.start)
    service.on_stop.append(manager.stop)
    service.manager = manager
    return service


# The servicer ----------------------------------------------------------------------------------
class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """GetJob, ListJobs, CancelJob, ResumeJob, DeleteJob and WatchJob over ``manager``.

    Args:
        manager: the service's JobManager.
        spec_proto: a job's (kind, spec JSON) -> the proto message packed into ``Job.spec``
            (default: a ``google.protobuf.Struct`` of the JSON).
    """

    def __init__(self, manager: JobManager, spec_proto: SpecToProto = struct_spec) -> None:
        self.manager = manager
        self.spec_proto = spec_proto

    def job(self, job: Job) -> jobs_pb2.Job:
        """A job record as the proto this service answers with."""
        return job_to_proto(job, self.spec_proto)

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context) -> jobs_pb2.Job:
        return self.job(await self.manager.get(request.name))

    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context) -> jobs_pb2.ListJobsResponse:
        jobs, token = await self.manager.list(
            page_size=request.page_size,
            page_token=request.page_token,
            states_=list(request.states),
            kinds=list(request.kinds),
        )
        return jobs_pb2.ListJobsResponse(jobs=[self.job(j) for j in jobs], next_page_token=token)

    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context) -> jobs_pb2.Job:
        return self.job(await self.manager.cancel(request.name))

    async def ResumeJob(self, request: jobs_pb2.ResumeJobRequest, context) -> jobs_pb2.Job:
        return self.job(await self.manager.resume(request.name))

    async def DeleteJob(self, request: jobs_pb2.DeleteJobRequest, context) -> empty_pb2.Empty:
        await self.manager.delete(request.name)
        return empty_pb2.Empty()

    async def WatchJob(self, request: jobs_pb2.WatchJobRequest, context):
        async for ev in self.manager.watch(request.name, start_sequence=request.start_sequence, follow=request.follow):
            yield event_to_proto(ev)
