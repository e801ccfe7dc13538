"""`swiftmesh jobs ls|show|watch|logs|cancel|resume|rm`: the jobs of the trainer (or the aligner).

    swiftmesh jobs ls                      # newest first, with state, progress and loss
    swiftmesh jobs show sft-1a2b3c4d       # everything about one job (--json for the proto)
    swiftmesh jobs watch sft-1a2b3c4d      # live progress bar, loss, lr, tokens/s, ETA
    swiftmesh jobs logs sft-1a2b3c4d -f    # log lines of the driver and the workers
    swiftmesh jobs cancel sft-1a2b3c4d
    swiftmesh jobs resume sft-1a2b3c4d     # from the last checkpoint

``--service aligner`` (or ``--target host:port``) talks to the aligner's jobs instead.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from google.protobuf import json_format
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from swiftmesh.cli.common import console, err_console, run_async, settings_from
from swiftmesh.clients.jobs import TERMINAL_STATES, JobsClient, job_resource_name, state_name
from swiftmesh.jobs.v1 import jobs_pb2

jobs_app = typer.Typer(help="List, watch, cancel and resume training and alignment jobs.", no_args_is_help=True)

ServiceOpt = Annotated[str, typer.Option("--service", help="Whose jobs: trainer or aligner.")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="Service address host:port (default: from settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

STATE_STYLE = {
    "QUEUED": "yellow",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLING": "magenta",
    "CANCELLED": "magenta",
}


def _target(ctx: typer.Context, service: str, target: str | None):
    if service not in ("trainer", "aligner"):
        err_console.print(f"[red]error:[/red] --service must be trainer or aligner, got {service!r}")
        raise typer.Exit(2)
    settings = settings_from(ctx)
    return settings, target or settings.endpoint(service).target


def _time(ts) -> str:
    if not ts.seconds:
        return ""
    return dt.datetime.fromtimestamp(ts.seconds).strftime("%Y-%m-%d %H:%M:%S")


def _dur(d) -> str:
    s = int(d.seconds)
    if s <= 0:
        return ""
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _state(job: jobs_pb2.Job) -> str:
    name = state_name(job.state)
    return f"[{STATE_STYLE.get(name, 'white')}]{name}[/]"


def _progress(job: jobs_pb2.Job) -> str:
    p = job.progress
    if p.total_steps:
        return f"{p.step}/{p.total_steps} ({100 * p.step / max(1, p.total_steps):.0f}%)"
    return str(p.step) if p.step else ""


def job_dict(job: jobs_pb2.Job) -> dict:
    """A job as a JSON-ready dict (for ``--json`` output)."""
    return json_format.MessageToDict(job, preserving_proto_field_name=True)


def print_job(job: jobs_pb2.Job) -> None:
    """A readable summary of one job."""
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("name", job.name)
    t.add_row("kind", job.kind)
    t.add_row("state", _state(job) + (f"  {job.state_message}" if job.state_message else ""))
    t.add_row("progress", _progress(job) + (f"  epoch {job.progress.epoch:.2f}" if job.progress.epoch else ""))
    if job.progress.tokens_per_second:
        t.add_row("tokens/s", f"{job.progress.tokens_per_second:,.0f}")
    if job.progress.eta.seconds and job.state == jobs_pb2.JOB_STATE_RUNNING:
        t.add_row("eta", _dur(job.progress.eta))
    r = job.resources
    t.add_row("resources", f"{r.num_workers} workers x {r.cpus_per_worker:g} CPU"
              + (f" x {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""))
    t.add_row("attempt", str(job.attempt))
    for k in sorted(job.metrics):
        t.add_row(k, f"{job.metrics[k]:.6g}")
    for c in job.checkpoints:
        t.add_row("checkpoint", f"step {c.step}: {c.path}")
    for a in job.artifacts:
        t.add_row("artifact", f"{a.model} ({a.kind})")
    if job.HasField("error"):
        t.add_row("error", f"[red]{job.error.reason}[/red]: {job.error.message}")
    t.add_row("created", _time(job.create_time))
    if job.start_time.seconds:
        t.add_row("started", _time(job.start_time))
    if job.end_time.seconds:
        t.add_row("ended", _time(job.end_time))
    if job.tensorboard_dir:
        t.add_row("tensorboard", job.tensorboard_dir)
    for k, v in sorted(job.labels.items()):
        t.add_row("label", f"{k}={v}")
    console.print(t)


async def follow_job(client: JobsClient, name: str, *, quiet: bool = False, start_sequence: int = 0) -> jobs_pb2.Job:
    """Live view of a job until it ends: a progress bar with loss, lr, tokens/s and ETA, plus
    state changes, checkpoints, artifacts and warnings. Returns the final job."""
    job = await client.get(name)
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} steps"),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False, disable=quiet) as bar:
        task = bar.add_task(job.name.removeprefix("jobs/"), total=job.progress.total_steps or None,
                            completed=job.progress.step, stats="")
        async for ev in client.watch(name, start_sequence=start_sequence, follow=True):
            which = ev.WhichOneof("payload")
            if which == "state_change":
                sc = ev.state_change
                bar.console.print(f"{_time(ev.time)}  state [bold]{state_name(sc.state)}[/bold]"
                                  + (f": {sc.message}" if sc.message else ""))
            elif which == "metrics":
                m = ev.metrics
                stats = []
                for key, label, fmt in (("train/loss", "loss", "{:.4f}"), ("eval/loss", "eval", "{:.4f}"),
                                        ("train/learning_rate", "lr", "{:.2e}"), ("train/grad_norm", "gnorm", "{:.3f}")):
                    if key in m.metrics:
                        stats.append(f"{label} {fmt.format(m.metrics[key])}")
                if m.progress.tokens_per_second:
                    stats.append(f"{m.progress.tokens_per_second:,.0f} tok/s")
                upd = {"completed": m.step}
                if m.progress.total_steps:
                    upd["total"] = m.progress.total_steps
                if stats:
                    upd["stats"] = "  ".join(stats)
                bar.update(task, **upd)
                if quiet and "train/loss" in m.metrics:
                    console.print(f"step {m.step}: " + "  ".join(stats))
            elif which == "checkpoint":
                c = ev.checkpoint.checkpoint
                bar.console.print(f"{_time(ev.time)}  checkpoint step {c.step}")
            elif which == "artifact":
                bar.console.print(f"{_time(ev.time)}  artifact [green]{ev.artifact.model}[/green] ({ev.artifact.kind})")
            elif which == "log" and ev.log.level in ("WARNING", "ERROR"):
                bar.console.print(f"[{'red' if ev.log.level == 'ERROR' else 'yellow'}]{ev.log.source}: "
                                  f"{ev.log.message.splitlines()[0][:300]}[/]")
    return await client.get(name)


def exit_for(job: jobs_pb2.Job) -> None:
    """Exit 0 for SUCCEEDED, 1 for FAILED, 3 for CANCELLED (for scripts)."""
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        return
    if job.state == jobs_pb2.JOB_STATE_FAILED:
        err_console.print(f"[red]{job.name} failed ({job.error.reason}):[/red] {job.error.message}")
        raise typer.Exit(1)
    if job.state == jobs_pb2.JOB_STATE_CANCELLED:
        raise typer.Exit(3)


@jobs_app.command("ls")
@run_async
async def ls(
    ctx: typer.Context,
    state: Annotated[list[str] | None, typer.Option("--state", help="Only jobs in this state (repeatable).")] = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Only jobs of this kind (repeatable).")] = None,
    service: ServiceOpt = "trainer",
    target: TargetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    settings, tgt = _target(ctx, service, target)
    states = []
    for s in state or []:
        try:
            states.append(jobs_pb2.JobState.Value("JOB_STATE_" + s.upper()))
        except ValueError:
            err_console.print(f"[red]error:[/red] unknown state {s!r}")
            raise typer.Exit(2) from None
    async with JobsClient(settings, tgt) as client:
        jobs = await client.list(states=states, kinds=kind or [])
    if as_json:
        console.print_json(json.dumps([job_dict(j) for j in jobs]))
        return
    t = Table("job", "kind", "state", "progress", "loss", "tok/s", "created", "artifacts")
    for j in jobs:
        loss = j.metrics.get("train/loss")
        t.add_row(j.name.removeprefix("jobs/"), j.kind, _state(j), _progress(j),
                  f"{loss:.4f}" if loss is not None else "",
                  f"{j.progress.tokens_per_second:,.0f}" if j.progress.tokens_per_second else "",
                  _time(j.create_time), ", ".join(a.model.removeprefix("models/") for a in j.artifacts))
    console.print(t)


@jobs_app.command("show")
@run_async
async def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Job id or jobs/ID.")],
    service: ServiceOpt = "trainer",
    target: TargetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one job: state, progress, metrics, checkpoints, artifacts, error."""
    settings, tgt = _target(ctx, service, target)
    async with JobsClient(settings, tgt) as client:
        job = await client.get(name)
    if as_json:
        console.print_json(json.dumps(job_dict(job)))
    else:
        print_job(job)


@jobs_app.command("watch")
@run_async
async def watch(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Job id or jobs/ID.")],
    service: ServiceOpt = "trainer",
    target: TargetOpt = None,
    plain: Annotated[bool, typer.Option("--plain", help="One line per step instead of a progress bar.")] = False,
) -> None:
    """Follow a job live until it ends (exit 0 succeeded, 1 failed, 3 cancelled)."""
    settings, tgt = _target(ctx, service, target)
    async with JobsClient(settings, tgt) as client:
        job = await follow_job(client, name, quiet=plain)
    print_job(job)
    exit_for(job)


@jobs_app.command("logs")
@run_async
async def logs(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Job id or jobs/ID.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    service: ServiceOpt = "trainer",
    target: TargetOpt = None,
    events: Annotated[bool, typer.Option("--events", help="Print every event, not only log lines.")] = False,
) -> None:
    """Print a job's log lines (driver and workers)."""
    settings, tgt = _target(ctx, service, target)
    async with JobsClient(settings, tgt) as client:
        async for ev in client.watch(name, follow=follow):
            which = ev.WhichOneof("payload")
            if which == "log":
                style = {"ERROR": "red", "WARNING": "yellow"}.get(ev.log.level, "")
                line = f"{_time(ev.time)} {ev.log.level:<7} {ev.log.source:<9} {ev.log.message}"
                console.print(f"[{style}]{line}[/]" if style else line, markup=bool(style), highlight=False)
            elif events:
                console.print(f"{_time(ev.time)} {which}: "
                              + json.dumps(json_format.MessageToDict(getattr(ev, which), preserving_proto_field_name=True)),
                              highlight=False, markup=False)


@jobs_app.command("cancel")
@run_async
async def cancel(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Job id or jobs/ID.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it is CANCELLED.")] = True,
    service: ServiceOpt = "trainer",
    target: TargetOpt = None,
) -> None:
    """Cancel a job; it keeps its last checkpoint and can be resumed."""
    settings, tgt = _target(ctx, service, target)
    async with JobsClient(settings, tgt) as client:
        job = await client.cancel(name)
        if wait and job.state not in TERMINAL_STATES:
            job = await client.wait(name, timeout=120, poll_s=0.5)
    console.print(f"{job.name}: {_state(job)}" + (f" ({job.state_message})" if job.state_message else ""))


@jobs_app.command("resume")
@run_async
async def resume(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Job id or jobs/ID.")],
    watch_: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
    service: ServiceOpt = "trainer",
    target: TargetOpt = None,
) -> None:
    """Resume a FAILED or CANCELLED job from its last checkpoint."""
    settings, tgt = _target(ctx, service, target)
    async with JobsClient(settings, tgt) as client:
        job = await client.resume(name)
        console.print(f"{job.name}: {_state(job)}" + (f" ({job.state_message})" if job.state_message else ""))
        if watch_:
            last = 0
            async for ev in client.watch(name, follow=False):
                last = ev.sequence
            job = await follow_job(client, name, start_sequence=last + 1)
            print_job(job)
            exit_for(job)


@jobs_app.command("rm")
@run_async
async def rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Job id or jobs/ID.")],
    service: ServiceOpt = "trainer",
    target: TargetOpt = None,
) -> None:
    """Delete an ended job and its checkpoints (its models stay in the hub)."""
    settings, tgt = _target(ctx, service, target)
    async with JobsClient(settings, tgt) as client:
        await client.delete(name)
    console.print(f"deleted {job_resource_name(name)}")


def register(app: typer.Typer) -> None:
    """Add the ``jobs`` commands to the CLI app."""
    app.add_typer(jobs_app, name="jobs")
