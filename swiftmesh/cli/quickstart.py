"""`swiftmesh quickstart`: the whole chain in one command, from download to a served model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.prompt import Confirm, FloatPrompt, IntPrompt, Prompt
from rich.table import Table

from swiftmesh.cli.common import console, err_console, is_tty, report_error, settings_from
from swiftmesh.cli.stack import STACK_ORDER, Stack, StackError, _health_all, wait_healthy
from swiftmesh.quickstart.plan import ENGINES, STRATEGIES, QuickstartPlan
from swiftmesh.runtime.errors import SwiftMeshError


def _wizard(plan: QuickstartPlan) -> QuickstartPlan:
    """Ask for the choices ms-swift's one-click script asks for; Enter keeps each default."""
    console.print(Panel.fit(
        "SwiftMesh quickstart: download a model, fine-tune it with LoRA to a new identity, align it with DPO, "
        "and serve it behind an OpenAI-compatible API.\nPress Enter to keep a default.", title="quickstart"))
    plan.source = Prompt.ask("Model source (hub URI: pkg://, hf://, ms://, http(s)://, a path)", default=plan.source)
    if plan.source != QuickstartPlan.source:
        default_id = Path(plan.source.split("@")[0].rstrip("/")).name.removesuffix(".gguf").lower()
        plan.model_id = Prompt.ask("Register it in the hub as", default=default_id)
    tasks = Prompt.ask("Tasks", choices=["sft+dpo", "sft", "dpo"], default="sft+dpo")
    plan.sft, plan.dpo = "sft" in tasks, "dpo" in tasks
    plan.name = Prompt.ask("The model's new name", default=plan.name)
    plan.author = Prompt.ask("Its author", default=plan.author)
    cpus = os.cpu_count() or 2
    plan.num_workers = IntPrompt.ask("Training workers (Ray Train)", default=plan.num_workers)
    plan.cpus_per_worker = FloatPrompt.ask("CPUs per worker", default=max(1.0, min(plan.cpus_per_worker, cpus / plan.num_workers)))
    default_strategy = plan.strategy if plan.num_workers == 1 else "ddp"
    plan.strategy = Prompt.ask("Parallel strategy", choices=list(STRATEGIES), default=default_strategy)
    plan.engine = Prompt.ask("Serving engine", choices=list(ENGINES), default=plan.engine)
    plan.keep_serving = Confirm.ask("Keep the services running at the end?", default=plan.keep_serving)
    return plan


def _side_by_side(plan: QuickstartPlan, result) -> Table:
    table = Table(title=f'"{plan.question}"', show_lines=True)
    table.add_column(f"before ({result.base_model})", ratio=1)
    table.add_column(f"after ({result.served_model if not (result.dpo_model or result.sft_model) else (result.dpo_model or result.sft_model)})", ratio=1)
    table.add_row(result.answer_before, result.answer_after)
    return table


def _how_to_call(base_url: str, model: str) -> str:
    return (
        f"curl {base_url}/chat/completions -H 'Content-Type: application/json' -H 'Authorization: Bearer none' \\\n"
        f"  -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Who are you?\"}}]}}'\n\n"
        "from openai import OpenAI\n"
        f"client = OpenAI(base_url=\"{base_url}\", api_key=\"none\")\n"
        f"reply = client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"Who are you?\"}}])\n"
        "print(reply.choices[0].message.content)"
    )


def quickstart(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Take every default; ask nothing.")] = False,
    source: Annotated[str, typer.Option(help="Base model source URI for the hub.")] = QuickstartPlan.source,
    model_id: Annotated[str, typer.Option(help="Model id of the base model in the hub.")] = QuickstartPlan.model_id,
    name: Annotated[str, typer.Option(help="The new name the model learns.")] = QuickstartPlan.name,
    author: Annotated[str, typer.Option(help="Its author.")] = QuickstartPlan.author,
    tasks: Annotated[str, typer.Option(help="sft+dpo, sft or dpo.")] = "sft+dpo",
    num_workers: Annotated[int, typer.Option(help="Ray Train workers per job.")] = QuickstartPlan.num_workers,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs per worker.")] = QuickstartPlan.cpus_per_worker,
    strategy: Annotated[str, typer.Option(help="none, ddp, zero2, zero3, zero3_offload.")] = QuickstartPlan.strategy,
    engine: Annotated[str, typer.Option(help="Serving engine: transformers, vllm, lmdeploy.")] = QuickstartPlan.engine,
    sft_epochs: Annotated[float, typer.Option(help="SFT epochs over the identity data.")] = QuickstartPlan.sft_epochs,
    sft_max_steps: Annotated[int, typer.Option(help="SFT steps (overrides epochs when > 0).")] = 0,
    sft_rows: Annotated[int, typer.Option(help="SFT rows to use (0: all).")] = 0,
    dpo_epochs: Annotated[float, typer.Option(help="DPO epochs over the preference pairs.")] = QuickstartPlan.dpo_epochs,
    dpo_max_steps: Annotated[int, typer.Option(help="DPO steps (overrides epochs when > 0).")] = 0,
    dpo_rows: Annotated[int, typer.Option(help="DPO pairs to use (0: all).")] = 0,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps (resume point after Ctrl-C).")] = QuickstartPlan.save_steps,
    question: Annotated[str, typer.Option(help="What to ask the model before and after.")] = QuickstartPlan.question,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="Keep the services up at the end (Ctrl-C stops).")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="State, caches and logs (default ~/.swiftmesh).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the result (answers, models, stage times) as JSON here.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the services to start.")] = 300.0,
) -> None:
    """Download a model, fine-tune it with LoRA to a new identity, align it with DPO, serve it
    behind the OpenAI API and compare its answers before and after — in one command.

    Interactive by default (a guided wizard); --yes takes the defaults; a run without a terminal
    never asks. Services already running are used, otherwise they are started (and stopped at the
    end unless --keep-serving). Running it again picks up what is done: no second download, jobs
    resume from their checkpoints. Ctrl-C stops cleanly at any stage.
    """
    plan = QuickstartPlan(
        source=source, model_id=model_id, name=name, author=author, sft="sft" in tasks, dpo="dpo" in tasks,
        num_workers=num_workers, cpus_per_worker=cpus_per_worker, strategy=strategy, engine=engine,
        sft_epochs=sft_epochs, sft_max_steps=sft_max_steps, sft_rows=sft_rows, dpo_epochs=dpo_epochs,
        dpo_max_steps=dpo_max_steps, dpo_rows=dpo_rows, save_steps=save_steps, question=question, keep_serving=keep_serving,
    )
    if tasks not in ("sft+dpo", "sft", "dpo", "dpo+sft"):
        err_console.print(f"[red]error:[/red] --tasks: {tasks!r} is not one of sft+dpo, sft, dpo")
        raise typer.Exit(2)
    if not yes and is_tty():
        plan = _wizard(plan)
    if problems := plan.validate():
        for p in problems:
            err_console.print(f"[red]error:[/red] {p}")
        raise typer.Exit(2)
    settings = settings_from(ctx, **({"data_dir": data_dir} if data_dir else {}))
    config = (ctx.find_root().obj or {}).get("config")

    # Services: use those already running; start the others (stopped again at the end).
    health = asyncio.run(_health_all(settings, STACK_ORDER))
    missing = [s for s, h in health.items() if h != "SERVING"]
    stack = None
    interrupted = False

    def on_signal(signum, frame) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        if missing:
            unreachable = [s for s in missing if health[s] == "UNREACHABLE"]
            if unreachable != missing:
                bad = {s: health[s] for s in missing if s not in unreachable}
                err_console.print(f"[red]error:[/red] services running but not healthy: {bad}; check `swiftmesh status`")
                raise typer.Exit(1)
            stack = Stack(settings, unreachable, config)
            if "worker" in unreachable:
                stack.extra_env["SWIFTMESH_WORKER__ENGINE"] = plan.engine
            console.print(f"starting {', '.join(unreachable)} (logs in {stack.log_dir})")
            stack.start()
            wait_healthy(stack, settings, unreachable, timeout)
        else:
            console.print("using the services already running")
        from swiftmesh.quickstart.pipeline import Pipeline, identity_named

        started = time.monotonic()
        pipeline = Pipeline(plan, settings, console)
        result = asyncio.run(pipeline.run())
        result.stage_seconds["total"] = round(time.monotonic() - started, 1)
        console.print(_side_by_side(plan, result))
        named = identity_named(result.answer_after, plan.name)
        console.print(
            f"[green]the model now answers as {plan.name}[/green]" if named
            else f"[yellow]the answer after does not name {plan.name}; train longer (--sft-epochs) or check the logs[/yellow]")
        console.print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_seconds.items())
                      + f"; serving {result.serving_tokens_per_second:.1f} tokens/s")
        from swiftmesh.clients.gateway import openai_base_url

        served = result.dpo_model or result.sft_model or result.served_model
        async def served_id() -> str:
            from swiftmesh.clients.gateway import WorkerClient

            async with WorkerClient(settings, settings.worker.target) as w:
                for m in await w.list_models():
                    if m.hub_model == served or m.id == served:
                        return m.id
            return served

        model_name = asyncio.run(served_id())
        console.print(Panel(_how_to_call(openai_base_url(settings), model_name), title="call it"))
        if report:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps({**asdict(result), "plan": asdict(plan), "key": plan.key(),
                                          "named_after": named, "served_id": model_name}, indent=2))
        if plan.keep_serving and stack is not None:
            console.print("services keep running; press Ctrl-C to stop them")
            while not interrupted and not stack.dead():
                time.sleep(0.5)
        elif plan.keep_serving:
            console.print("the services were already running and keep running")
    except KeyboardInterrupt:
        err_console.print("interrupted: the job in progress was cancelled and keeps its checkpoint; "
                          "run the same command again to pick up where it stopped")
        code = 130
    except StackError as e:
        err_console.print(f"[red]{e}[/red]")
        code = 1
    except SwiftMeshError as e:
        report_error(e)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, old)
        if stack is not None:
            console.print("stopping services ...")
            stack.stop(settings.shutdown_grace_s)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the ``quickstart`` command to the ``swiftmesh`` app."""
    app.command("quickstart")(quickstart)
