"""jobkit: the job machinery shared by the trainer and the aligner.

What it does for a service: a SQLite job store that survives restarts, the job state machine
(QUEUED -> RUNNING -> SUCCEEDED | FAILED, CANCELLING -> CANCELLED, resume -> QUEUED), a numbered
event log with live WatchJob fan-out, TensorBoard event files, Ray Train launch (embedded
local Ray, or the cluster named by RAY_ADDRESS / ``settings.<svc>.ray_address``; same code
path), cancel that frees the Ray resources within seconds, checkpoints every N steps keeping
the last K (Ray Train storage), automatic restart from the last checkpoint on worker failure
(Ray Train ``FailureConfig``), resume on request after a service restart, artifact upload to
the hub with lineage, and the generic ``swiftmesh.jobs.v1.JobService`` servicer.

What it may import: ``swiftmesh.runtime`` (errors, config, sqlite, paging, telemetry),
``swiftmesh.names``, ``swiftmesh.clients`` (the hub, for models and uploads), Ray, torch and
the HF stack. No service (``swiftmesh.services.*``), and no grpc or ``*_pb2`` outside
:mod:`.servicer`: the domain has its own types (:mod:`.types`: Job, JobEvent, JobState;
:mod:`.estimate`: Estimate; :mod:`.settings`: the tuner, LoRA, training and distribution
settings and the :class:`~.settings.TuningSpec` the trainer and the aligner extend).

Plugging in a kind of job
-------------------------
Subclass :class:`JobKind` (see :mod:`swiftmesh.jobkit.kinds`)::

    from swiftmesh import jobkit

    class DpoKind(jobkit.JobKind):
        name = "dpo"                              # Job.kind
        spec_type = AlignmentSpec                 # a domain dataclass; stored as JSON in Job.spec

        def prepare(self, spec, ctx: jobkit.PrepareContext) -> jobkit.JobPlan:
            # service side, before any worker starts: validate, read + normalise the data,
            # look models up (ctx.models.get -> NotFound), check resources (ctx.resources()).
            # Raise InvalidArgument(field_violations=[("spec.datasets[0]", "f.jsonl row 3: ...")]).
            return jobkit.JobPlan(config={...json...}, data={"train": rows},
                                  num_workers=2, cpus_per_worker=1, total_steps=100,
                                  models=["models/base"], checkpoints_to_keep=2)

        def estimate(self, spec, ctx) -> jobkit.Estimate:
            ...                                   # jobkit.estimate has the shared formulas

        def train(self, ctx: jobkit.WorkerContext) -> list[jobkit.Artifact]:
            # in every Ray Train worker (torch.distributed is initialised; gloo on CPU)
            model_dir = ctx.models.materialize(ctx.config["model"])
            trainer = DPOTrainer(..., args=DPOConfig(**jobkit.hf.training_arguments_kwargs(...)),
                                 callbacks=[ctx.hf_callback()])   # metrics + checkpoints
            trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
            trainer.save_model(out := ctx.work_dir / "out")
            return [jobkit.Artifact(out, model_id=ctx.config["output_model_id"], kind="adapter",
                                    base_model=..., parent_model=...)]   # rank 0's are uploaded

Then in the service (``swiftmesh.jobkit.servicer`` holds the proto <-> domain side)::

    SPEC = SpecTranslation(AlignmentSpec, aligner_pb2.AlignmentSpec, "rlhf_type", {...}, "...")

    class AlignerServicer(aligner_pb2_grpc.AlignerServiceServicer):
        async def CreateJob(self, request, context):
            return await create_job(self.manager, SPEC, request)
        async def EstimateJob(self, request, context):
            return await estimate_job(self.manager, SPEC, request)

    manager = jobkit.JobManager(settings, "aligner", [DpoKind(), ...])   # models: hub by default
    service = job_service(settings, manager, AlignerServicer(manager), add_AlignerServiceServicer_to_server,
                          SERVICE_NAME, SPEC)   # + the shared JobService, start/stop hooks

Worker reporting without an HF trainer: ``ctx.report_metrics(step, {"train/loss": x},
total_steps=n)``, ``ctx.log("...")``, ``ctx.save_checkpoint(local_dir, step)`` (all ranks, same
steps). ``ctx.resume_from`` is the local copy of the checkpoint to resume from (or None).

Modules: ``kinds`` (the plug-in interface), ``manager`` (JobManager: create, list, watch,
cancel, resume, delete, recovery on start), ``runs`` (the monitor thread of one run), ``types``
(the domain records), ``worker`` (WorkerContext, HF callback), ``launcher``, ``ray_runtime``,
``placement``, ``run_monitor`` (Ray), ``store`` (SQLite), ``events`` (fan-out), ``states``,
``tensorboard``, ``models`` (hub / local model sources, model resolution), ``settings`` (shared
job settings), ``plan`` (shared planning: steps, estimate, worker config), ``hf``
(TrainingArguments, PEFT and DeepSpeed helpers), ``estimate`` (memory/time formulas), ``data``
(dataset reading and encoding), ``servicer`` (JobService and the proto <-> domain translation).
"""

from swiftmesh.jobkit.estimate import Estimate
from swiftmesh.jobkit.kinds import Artifact, ClusterResources, JobKind, JobPlan, KindRegistry, PrepareContext
from swiftmesh.jobkit.manager import JobManager, job_name
from swiftmesh.jobkit.models import HubModelSource, LocalModelSource, ModelInfo, ModelSource
from swiftmesh.jobkit.servicer import JOB_SERVICE_NAME, JobServicer
from swiftmesh.jobkit.types import Job, JobEvent, JobState
from swiftmesh.jobkit.worker import FAIL_AT_STEP_LABEL, NonRetryableError, WorkerContext

__all__ = [
    "FAIL_AT_STEP_LABEL",
    "JOB_SERVICE_NAME",
    "Artifact",
    "ClusterResources",
    "Estimate",
    "HubModelSource",
    "Job",
    "JobEvent",
    "JobKind",
    "JobManager",
    "JobPlan",
    "JobServicer",
    "JobState",
    "KindRegistry",
    "LocalModelSource",
    "ModelInfo",
    "ModelSource",
    "NonRetryableError",
    "PrepareContext",
    "WorkerContext",
    "job_name",
]
