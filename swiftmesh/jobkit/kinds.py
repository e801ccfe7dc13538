"""The plug-in interface: a :class:`JobKind` per kind of job ("sft", "dpo", ...).

A kind has three parts, used at three moments:

* :meth:`JobKind.prepare` on the service, before anything runs (CreateJob, and again for
  validate_only): check the spec, read and normalise the data, look the models up, and return a
  :class:`JobPlan` (resources, a JSON config and the data rows for the workers). Errors raised
  here (``InvalidArgument`` naming file/row/field, ``NotFound`` for a model the hub lacks,
  ``ResourceExhausted``) reach the caller as gRPC statuses and no job is created.
* :meth:`JobKind.estimate` on the service: memory per worker and time (EstimateJob).
* :meth:`JobKind.train` in every Ray Train worker, with a :class:`~swiftmesh.jobkit.worker.WorkerContext`:
  train (typically an HF/TRL trainer with ``ctx.hf_callback()``), and return the
  :class:`Artifact` directories to register in the hub (only rank 0's are uploaded).

Instances are pickled into the Ray workers: keep them stateless.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from swiftmesh.runtime.errors import InvalidArgument

if TYPE_CHECKING:
    from swiftmesh.jobkit.estimate import Estimate
    from swiftmesh.jobkit.models import ModelSource
    from swiftmesh.jobkit.worker import WorkerContext
    from swiftmesh.runtime.config import Settings


@dataclass
class Artifact:
    """A directory a worker produced, to register in the hub with lineage.

    Attributes:
        path: local directory on the worker (a PEFT adapter or a full HF model).
        model_id: hub id, without "models/".
        kind: JobArtifact.kind: "adapter", "full" or "merged".
        format: hub format, "peft_adapter" or "full" (default: "peft_adapter" when the
            directory holds adapter_config.json, else "full").
        base_model: lineage.base_model ("models/{id}").
        parent_model: lineage.parent_model ("models/{id}", the model the job started from).
        labels: hub labels.
    """

    path: str | Path
    model_id: str
    kind: str = "adapter"
    format: str = ""
    base_model: str = ""
    parent_model: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def resolved_format(self) -> str:
        """``format``, or "peft_adapter" / "full" by what the directory holds."""
        if self.format:
            return self.format
        return "peft_adapter" if (Path(self.path) / "adapter_config.json").is_file() else "full"


@dataclass
class JobPlan:
    """What :meth:`JobKind.prepare` decided; persisted with the job so a resume needs no spec re-read.

    Attributes:
        config: JSON-serialisable settings for the workers (``WorkerContext.config``).
        data: named lists of JSON rows ("train", "eval"), shipped to every worker through the
            Ray object store (``WorkerContext.data``) — the workers need no access to the
            service's disk.
        num_workers: Ray Train workers (>= 1).
        cpus_per_worker / gpus_per_worker: Ray resource requests per worker.
        memory_bytes_per_worker: Ray memory reservation per worker (0: none).
        total_steps: optimizer steps planned (0: unknown; workers report the real number).
        models: hub models the job reads ("models/{id}"); pinned while the job runs.
        max_failures: automatic restarts from the last checkpoint when a worker fails
            (Ray Train ``FailureConfig.max_failures``).
        checkpoints_to_keep: the last K checkpoints kept in storage (``CheckpointConfig.num_to_keep``).
        notes: human-readable remarks (shown as log lines when the job starts).
        placement_strategy: how Ray places the workers' placement group: "PACK" (default),
            "SPREAD", "STRICT_PACK" or "STRICT_SPREAD" (every worker on its own node). The job
            label ``swiftmesh.io/placement-strategy`` overrides it at CreateJob.
    """

    config: dict[str, Any]
    data: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_bytes_per_worker: int = 0
    total_steps: int = 0
    models: list[str] = field(default_factory=list)
    max_failures: int = 2
    checkpoints_to_keep: int = 2
    notes: list[str] = field(default_factory=list)
    placement_strategy: str = "PACK"

    def to_json(self) -> dict[str, Any]:
        """Everything but ``data`` (stored apart, it can be large)."""
        return {
            "config": self.config,
            "num_workers": self.num_workers,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
            "memory_bytes_per_worker": self.memory_bytes_per_worker,
            "total_steps": self.total_steps,
            "models": self.models,
            "max_failures": self.max_failures,
            "checkpoints_to_keep": self.checkpoints_to_keep,
            "notes": self.notes,
            "placement_strategy": self.placement_strategy,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], data: dict[str, list] | None = None) -> JobPlan:
        """The plan from :meth:`to_json` output and its data rows."""
        return cls(data=data or {}, **d)


@dataclass
class PrepareContext:
    """What :meth:`JobKind.prepare` / :meth:`JobKind.estimate` get on the service side.

    Attributes:
        settings: the service's Settings.
        models: the model source (the hub in production).
        job: "jobs/{id}" of the job being created ("" for EstimateJob).
        force: the caller asked to start even if the estimate does not fit.
        cluster: callable returning :class:`ClusterResources` (starts Ray if needed).
    """

    settings: Settings
    models: ModelSource
    job: str = ""
    force: bool = False
    cluster: Any = None

    def resources(self) -> ClusterResources:
        """The cluster's resources now (this machine's when there is no cluster callable)."""
        if self.cluster is None:
            return ClusterResources.local()
        return self.cluster()


@dataclass
class ClusterResources:
    """Totals and free amounts of the Ray cluster (bytes, CPU counts)."""

    total_cpus: float
    available_cpus: float
    total_gpus: float
    available_gpus: float
    # Memory per node, bytes: the largest node's total / available (a worker lives on one node).
    node_memory_bytes: int
    node_available_memory_bytes: int
    num_nodes: int = 1

    @classmethod
    def local(cls) -> ClusterResources:
        """This machine: its CPUs, no GPUs, its memory, one node."""
        import os

        import psutil

        vm = psutil.virtual_memory()
        n = float(os.cpu_count() or 1)
        return cls(n, n, 0.0, 0.0, vm.total, vm.available, 1)


class JobKind(abc.ABC):
    """One kind of job. Subclass it and register the instance with the service's JobManager.

    Class attributes:
        name: the Job.kind string ("sft", "dpo", ...).
        spec_type: the domain type of the spec (a :class:`~swiftmesh.jobkit.settings.JsonDataclass`,
            or ``dict``); the service's servicer translates the proto spec into it.
    """

    name: ClassVar[str]
    spec_type: ClassVar[type]

    @abc.abstractmethod
    def prepare(self, spec: Any, ctx: PrepareContext) -> JobPlan:
        """Validate ``spec`` and plan the job (service side, blocking, runs in a thread)."""

    @abc.abstractmethod
    def estimate(self, spec: Any, ctx: PrepareContext) -> Estimate:
        """Memory per worker and wall time for ``spec`` (service side, runs in a thread)."""

    @abc.abstractmethod
    def train(self, ctx: WorkerContext) -> list[Artifact] | None:
        """Run in every Ray Train worker; return the artifacts to upload (rank 0's are used)."""

    def spec_to_json(self, spec: Any) -> dict[str, Any]:
        """The spec as JSON, stored with the job (``Job.spec``)."""
        return spec.to_json() if hasattr(spec, "to_json") else dict(spec)

    def output_model_id(self, spec: Any, ctx: PrepareContext) -> str:
        """The hub id of the job's output: ``spec.output_model_id`` when set, else
        "<base model id>-<kind>-<job id>" (a job id "<kind>-x" gives "<base>-<kind>-x").

        Raises AlreadyExists when the explicit id is taken in the hub (the job would overwrite it).
        """
        from swiftmesh.runtime.errors import AlreadyExists

        explicit = getattr(spec, "output_model_id", "").removeprefix("models/")
        if explicit:
            if ctx.models.exists(explicit):
                raise AlreadyExists(f"models/{explicit} already exists in the hub; choose another output_model_id",
                                    reason="MODEL_EXISTS", field_violations=[("spec.output_model_id", "taken")])
            return explicit
        base = (getattr(spec, "model", "") or "model").removeprefix("models/").replace("/", "-")
        jid = ctx.job.removeprefix("jobs/")
        return f"{base}-{self.name}-{jid.removeprefix(f'{self.name}-')}"


def refuse_oversized(estimate: Estimate, ctx: PrepareContext, advice: str) -> None:
    """Raise ResourceExhausted (reason ESTIMATE_EXCEEDS_RESOURCES, with the memory breakdown)
    when ``estimate`` does not fit the resources per worker, unless the caller forced the job.

    ``advice``: what the user can change, e.g. "use PEFT, a smaller batch or force=true".
    """
    if estimate.fits or ctx.force:
        return
    from swiftmesh.jobkit.estimate import gib
    from swiftmesh.runtime.errors import ResourceExhausted

    raise ResourceExhausted(
        f"the job needs ~{gib(estimate.total_bytes_per_worker)} per worker (weights "
        f"{gib(estimate.weights_bytes)}, gradients {gib(estimate.gradients_bytes)}, optimizer states "
        f"{gib(estimate.optimizer_states_bytes)}, activations {gib(estimate.activations_bytes)}); "
        f"{gib(estimate.available_bytes_per_worker)} is available per worker. {advice}",
        reason="ESTIMATE_EXCEEDS_RESOURCES",
        metadata={"needed_bytes": str(estimate.total_bytes_per_worker),
                  "available_bytes": str(estimate.available_bytes_per_worker)},
    )


class KindRegistry:
    """Kinds by name, as a service's JobManager holds them."""

    def __init__(self, kinds=()) -> None:
        self._kinds: dict[str, JobKind] = {}
        for k in kinds:
            self.register(k)

    def register(self, kind: JobKind) -> JobKind:
        """Add a kind; ValueError for a kind without a name or a name taken."""
        if not getattr(kind, "name", ""):
            raise ValueError(f"{type(kind).__name__} has no name")
        if kind.name in self._kinds:
            raise ValueError(f"job kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: str) -> JobKind:
        """The kind called ``name``; InvalidArgument (UNKNOWN_JOB_KIND) for one this service lacks."""
        try:
            return self._kinds[name]
        except KeyError:
            raise InvalidArgument(
                f"unknown job kind {name!r}; this service runs {sorted(self._kinds)}",
                reason="UNKNOWN_JOB_KIND",
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._kinds

