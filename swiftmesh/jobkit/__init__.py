"""jobkit: the job machinery shared by the trainer and the aligner.

What it does for a service: a SQLite job store that survives restarts, the job state machine
(QUEUED -> RUNNING -> SUCCEEDED | FAILED, CANCELLING -> CANCELLED, resume -> QUEUED), a numbered
event log with live WatchJob fan-out, TensorBoard event files, Ray Train launch (embedded
local Ray, or the cluster named by RAY_ADDRESS / ``settings.<svc>.ray_address``; same code
path), cancel that frees the Ray resources within seconds, checkpoints every N steps keeping
the last K (Ray Train storage), automatic restart from the last checkpoint on worker failure
(Ray Train ``FailureConfig``), resume on request after a service restart, artifact upload to
the hub with lineage, and the generic ``swiftmesh.jobs.v1.JobService`` servicer.

Plugging in a kind of job
-------------------------
Subclass :class:`JobKind` (see :mod:`swiftmesh.jobkit.kinds`)::

    from swiftmesh import jobkit
    from swiftmesh.aligner.v1 import aligner_pb2

    class DpoKind(jobkit.JobKind):
        name = "dpo"                              # Job.kind
        spec_type = aligner_pb2.AlignmentSpec     # packed into Job.spec

        def prepare(self, spec, ctx: jobkit.PrepareContext) -> jobkit.JobPlan:
            # service side, before any worker starts: validate, read + normalise the data,
            # look models up (ctx.models.get -> NotFound), check resources (ctx.resources()).
            # Raise InvalidArgument(field_violations=[("spec.datasets[0]", "f.jsonl row 3: ...")]).
            return jobkit.JobPlan(config={...json...}, data={"train": rows},
                                  num_workers=2, cpus_per_worker=1, total_steps=100,
                                  models=["models/base"], checkpoints_to_keep=2)

        def estimate(self, spec, ctx) -> training_pb2.Estimate:
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

Then in the service::

    manager = jobkit.JobManager(settings, "aligner", [DpoKind(), ...])   # models: hub by default
    service.add(jobkit.JobServicer(manager), jobs_pb2_grpc.add_JobServiceServicer_to_server,
                jobkit.JOB_SERVICE_NAME)
    service.on_start.append(manager.start); service.on_stop.append(manager.stop)
    # in your CreateJob: return await manager.create("dpo", spec, job_id=..., labels=...,
    #                                              force=..., validate_only=...)
    # in your EstimateJob: return await manager.estimate("dpo", spec)

Worker reporting without an HF trainer: ``ctx.report_metrics(step, {"train/loss": x},
total_steps=n)``, ``ctx.log("...")``, ``ctx.save_checkpoint(local_dir, step)`` (all ranks, same
steps). ``ctx.resume_from`` is the local copy of the checkpoint to resume from (or None).

Modules: ``kinds`` (the plug-in interface), ``manager`` (JobManager), ``worker``
(WorkerContext, HF callback), ``launcher`` (Ray), ``store`` (SQLite), ``events`` (fan-out),
``states``, ``tensorboard``, ``models`` (hub / local model sources), ``hf`` (TrainingArguments,
PEFT and DeepSpeed helpers), ``estimate`` (memory/time formulas), ``servicer`` (JobService).
"""

from swiftmesh.jobkit.kinds import Artifact, ClusterResources, JobKind, JobPlan, KindRegistry, PrepareContext
from swiftmesh.jobkit.manager import JobManager, job_name
from swiftmesh.jobkit.models import HubModelSource, LocalModelSource, ModelInfo, ModelSource
from swiftmesh.jobkit.servicer import JOB_SERVICE_NAME, JobServicer
from swiftmesh.jobkit.worker import FAIL_AT_STEP_LABEL, NonRetryableError, WorkerContext

__all__ = [
    "Artifact",
    "ClusterResources",
    "FAIL_AT_STEP_LABEL",
    "HubModelSource",
    "JOB_SERVICE_NAME",
    "JobKind",
    "JobManager",
    "JobPlan",
    "JobServicer",
    "KindRegistry",
    "LocalModelSource",
    "ModelInfo",
    "ModelSource",
    "NonRetryableError",
    "PrepareContext",
    "WorkerContext",
    "job_name",
]
