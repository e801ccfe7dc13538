"""`swiftmesh deploy`, `swiftmesh chat`, `swiftmesh keys ...` and `swiftmesh workers ...`:
serving models behind the gateway and using them.

    swiftmesh deploy --model SmolLM2-135M-Instruct --adapters smol-sft smol-dpo --engine vllm
    swiftmesh chat smol-dpo
    swiftmesh keys create --name ci --rpm 60 --tpm 100000
    swiftmesh keys ls
    swiftmesh keys rm apiKeys/0123abcd
    swiftmesh workers ls
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from swiftmesh.cli.common import console, err_console, fail, run_async, settings_from
from swiftmesh.clients.gateway import GatewayClient, WorkerClient, openai_base_url
from swiftmesh.names import model_id
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import SwiftMeshError
from swiftmesh.runtime.host import free_port, port_available

keys_app = typer.Typer(help="API keys of the gateway (stored hashed; the secret is shown once).",
                       no_args_is_help=True)
workers_app = typer.Typer(help="Engine workers behind the gateway.", no_args_is_help=True)


def _is_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().is_dir()


def _source(name: str) -> str:
    """What the worker is told to load: a local directory (made absolute) or a hub name."""
    return str(Path(name).expanduser().resolve()) if _is_path(name) else name


def _served_id(name: str) -> str:
    """The name a worker serves a model under: a directory's name, or the hub model id."""
    return Path(name).expanduser().name if _is_path(name) else model_id(name)


def _ts(ts) -> str:
    if not ts.seconds:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts.seconds))


# --------------------------------------------------------------------------------- deploy
async def _wait_ready(settings: Settings, address: str, want: list[str], timeout: float,
                      proc: subprocess.Popen | None, log_path: Path | None) -> list:
    """Poll a worker until it is ready and serves every model in ``want`` (served ids)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc is not None and proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:]) if log_path else ""
            fail(f"the worker exited with code {proc.returncode}; last log lines:\n{tail}")
        try:
            async with WorkerClient(settings, address) as w:
                status = await w.status(timeout=5.0)
            ids = {m.id for m in status.models}
            missing = [m for m in want if m not in ids]
            if status.ready and not missing:
                return list(status.models)
            last = f"not ready (models loaded: {', '.join(sorted(ids)) or 'none'})"
        except SwiftMeshError as e:
            last = e.message
        if time.monotonic() > deadline:
            fail(f"worker {address} not ready after {timeout:.0f}s: {last}")
        await asyncio.sleep(1.0)


def _worker_ports(settings: Settings, port: int | None) -> tuple[int, int]:
    """The gRPC and metrics ports of a worker that deploy starts. Where ``swiftmesh up`` (or an
    earlier deploy) already runs a worker, the configured ports are taken: a free one is used
    instead and said. An explicit ``--port`` that is taken fails (exit 2)."""
    host = "127.0.0.1" if settings.worker.host in ("0.0.0.0", "::", "") else settings.worker.host
    if port is not None:
        if port and not port_available(host, port):
            fail(f"--port {port}: {host}:{port} is taken (another worker?); choose a free port", 2)
        grpc_port = port
    else:
        grpc_port = settings.worker.port
        if not port_available(host, grpc_port):
            grpc_port = free_port(host)
            err_console.print(f"note: worker port {settings.worker.port} is taken (a worker of `swiftmesh up`?); "
                              f"the new worker uses {grpc_port} (--port to choose)")
    metrics = settings.worker.metrics_port
    if metrics and not port_available(host, metrics):
        metrics = free_port(host)
        err_console.print(f"note: metrics port {settings.worker.metrics_port} is taken; the new worker's /metrics "
                          f"is on {host}:{metrics} (SWIFTMESH_WORKER__METRICS_PORT to choose)")
    return grpc_port, metrics


def _start_worker(settings: Settings, config: str | None, model: str, adapters: list[str], engine: str,
                  port: int, metrics_port: int, device: str | None, dtype: str | None,
                  max_model_len: int | None) -> tuple[subprocess.Popen, Path]:
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{port}.log"
    env = os.environ.copy()
    env.update({
        "SWIFTMESH_DATA_DIR": str(settings.data_dir),
        "SWIFTMESH_WORKER__ENGINE": engine,
        "SWIFTMESH_WORKER__MODEL": _source(model),
        "SWIFTMESH_WORKER__ADAPTERS": json.dumps([_source(a) for a in adapters]),
        "SWIFTMESH_WORKER__PORT": str(port),
        "SWIFTMESH_WORKER__METRICS_PORT": str(metrics_port),
        "SWIFTMESH_WORKER__REGISTER_WITH": settings.gateway.target,
    })
    if device:
        env["SWIFTMESH_WORKER__DEVICE"] = device
    if dtype:
        env["SWIFTMESH_WORKER__DTYPE"] = dtype
    if max_model_len:
        env["SWIFTMESH_WORKER__MAX_MODEL_LEN"] = str(max_model_len)
    if config:
        env["SWIFTMESH_CONFIG"] = str(Path(config).absolute())
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "swiftmesh.cli.main", "serve", "worker"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    (log_dir / f"worker-{port}.pid").write_text(str(proc.pid))
    return proc, log_path


def deploy(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help=(
        "Model to serve: a hub name (models/{model} or {model}) or a model directory on the worker's host."))],
    adapters: Annotated[list[str] | None, typer.Option(
        "--adapters", "-a", help="Adapters (PEFT LoRA; hub names or directories) to serve on top: --adapters a b "
                                 "(or repeat the flag).")] = None,
    engine: Annotated[str, typer.Option(help="transformers | vllm | lmdeploy (for a new worker).")] = "transformers",
    worker: Annotated[str | None, typer.Option(
        help="host:port of a running worker to instruct (LoadModel/LoadAdapter) instead of starting one.")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port of the new worker (default worker.port).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | cuda:N | auto (new worker).")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float16 | float32.")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context length cap, tokens.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the model to be served.")] = 900.0,
) -> None:
    """Serve a model (and adapters) behind the gateway.

    Without --worker: starts a worker process (`swiftmesh serve worker`, detached, log under
    `<data-dir>/logs/worker-<port>.log`) that loads the model from the hub. With --worker: tells
    that running worker to load the model and adapters. Either way the worker is registered
    with the gateway, and the served names are printed (use them as the OpenAI `model`).
    """
    extra = [a for a in ctx.args if not a.startswith("-")]
    unknown = [a for a in ctx.args if a.startswith("-")]
    if unknown:
        fail(f"unknown option(s): {' '.join(unknown)}", 2)
    adapter_list = [a for item in [*(adapters or []), *extra] for a in item.split(",") if a]
    if engine not in ("transformers", "vllm", "lmdeploy"):
        fail(f"unknown engine {engine!r}: choose transformers, vllm or lmdeploy", 2)
    settings = settings_from(ctx)
    config = (ctx.find_root().obj or {}).get("config")
    want = [_served_id(model), *(_served_id(a) for a in adapter_list)]

    @run_async
    async def go() -> None:
        proc = log_path = None
        if worker is None:
            wport, metrics_port = _worker_ports(settings, port)
            address = f"127.0.0.1:{wport}" if settings.worker.host in ("0.0.0.0", "::", "", "127.0.0.1") \
                else f"{settings.worker.host}:{wport}"
            proc, log_path = _start_worker(settings, config, model, adapter_list, engine, wport, metrics_port,
                                           device, dtype, max_model_len)
            console.print(f"started worker (pid {proc.pid}, engine {engine}) on {address}; log: {log_path}")
        else:
            address = worker
            async with WorkerClient(settings, address) as w:
                status = await w.status(timeout=10.0)
                if status.engine and status.engine != engine:
                    err_console.print(f"[yellow]note:[/yellow] worker {address} runs engine {status.engine!r}, "
                                      f"not {engine!r}; deploying on it anyway")
                served = {m.id: m for m in status.models}
                base = served.get(_served_id(model))
                if base is None:
                    with console.status(f"loading {model} on {address} ..."):
                        base = await w.load_model(_source(model), max_model_len=max_model_len or 0,
                                                  dtype=dtype or "")
                for a in adapter_list:
                    if _served_id(a) not in served:
                        with console.status(f"loading adapter {a} on {address} ..."):
                            await w.load_adapter(_source(a), base=base.id)
        with console.status(f"waiting for {address} to serve {', '.join(want)} ..."):
            models = await _wait_ready(settings, address, want, timeout, proc, log_path)
        async with GatewayClient(settings) as gw:
            registered = await gw.register_worker(address)
        table = Table(title=f"served by {registered.name} ({address})")
        table.add_column("model (OpenAI `model`)")
        table.add_column("parent")
        table.add_column("hub model")
        for m in models:
            table.add_row(m.id, m.parent, m.hub_model)
        console.print(table)
        console.print(f"OpenAI API: {openai_base_url(settings)}")

    go()


# ----------------------------------------------------------------------------------- chat
def _api_key(explicit: str | None, settings: Settings) -> str:
    for value in (explicit, os.environ.get("SWIFTMESH_API_KEY"), os.environ.get("OPENAI_API_KEY")):
        if value:
            return value
    if settings.auth_token is not None:
        return settings.auth_token.get_secret_value()
    return "EMPTY"


def chat(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Served model name (see `GET /v1/models`).")],
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI API base URL (default: the gateway's).")] = None,
    api_key: Annotated[str | None, typer.Option(
        help="API key (default $SWIFTMESH_API_KEY, $OPENAI_API_KEY, the service token, or none).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0: greedy).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens per answer.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (reproducible answers).")] = None,
) -> None:
    """Interactive chat with a served model through the gateway (OpenAI SDK, streamed).

    Type a message and Enter; `/reset` forgets the conversation, `/exit` or Ctrl-D quits. With
    stdin not a terminal, each input line is one user turn.
    """
    import openai

    settings = settings_from(ctx)
    client = openai.OpenAI(base_url=base_url or openai_base_url(settings), api_key=_api_key(api_key, settings),
                           max_retries=1)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"chatting with [bold]{model}[/bold] (/reset, /exit)")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            console.print()
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = history[:1] if system else []
            console.print("[dim](conversation reset)[/dim]")
            continue
        history.append({"role": "user", "content": text})
        kwargs = {}
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if seed is not None:
            kwargs["seed"] = seed
        reply: list[str] = []
        try:
            stream = client.chat.completions.create(model=model, messages=history, stream=True, **kwargs)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    piece = chunk.choices[0].delta.content
                    reply.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            console.print("[dim](interrupted)[/dim]")
        except openai.APIStatusError as e:
            history.pop()
            body = e.body if isinstance(e.body, dict) else {}
            message = body.get("message") or (body.get("error") or {}).get("message") or str(e)
            err_console.print(f"[red]error {e.status_code}:[/red] {message}")
            if e.status_code in (401, 404):
                raise typer.Exit(1) from None
            continue
        except openai.APIConnectionError as e:
            fail(f"cannot reach the gateway at {client.base_url}: {e}")
        history.append({"role": "assistant", "content": "".join(reply)})


# ----------------------------------------------------------------------------------- keys
@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="Display name.")] = "",
    rpm: Annotated[int, typer.Option("--rpm", help="Requests per minute (0: unlimited).")] = 0,
    tpm: Annotated[int, typer.Option("--tpm", help="Prompt + completion tokens per minute (0: unlimited).")] = 0,
    admin: Annotated[bool, typer.Option("--admin", help="Allow the admin endpoints with this key.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API key; prints its secret, which is shown only this once."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> None:
        async with GatewayClient(settings) as gw:
            key, secret = await gw.create_api_key(name, requests_per_minute=rpm, tokens_per_minute=tpm, admin=admin)
        if as_json:
            print(json.dumps({"name": key.name, "display_name": key.display_name, "secret": secret,
                              "requests_per_minute": key.requests_per_minute,
                              "tokens_per_minute": key.tokens_per_minute, "admin": key.admin}))
            return
        console.print(f"created {key.name} ({key.display_name or 'no name'})")
        console.print(f"secret (shown once): [bold]{secret}[/bold]", soft_wrap=True)

    go()


@keys_app.command("ls")
def keys_ls(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List API keys (never their secrets)."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> None:
        async with GatewayClient(settings) as gw:
            keys = await gw.list_api_keys()
        if as_json:
            print(json.dumps([{"name": k.name, "display_name": k.display_name, "prefix": k.prefix,
                               "requests_per_minute": k.requests_per_minute,
                               "tokens_per_minute": k.tokens_per_minute, "admin": k.admin,
                               "create_time": k.create_time.seconds, "requests": k.usage.requests,
                               "tokens": k.usage.tokens, "last_use_time": k.usage.last_use_time.seconds}
                              for k in keys]))
            return
        table = Table(title="API keys")
        for col in ("name", "display name", "prefix", "req/min", "tokens/min", "admin", "created", "requests",
                    "tokens", "last used"):
            table.add_column(col)
        for k in keys:
            table.add_row(k.name, k.display_name, k.prefix + "...", str(k.requests_per_minute or "-"),
                          str(k.tokens_per_minute or "-"), "yes" if k.admin else "", _ts(k.create_time),
                          str(k.usage.requests), str(k.usage.tokens), _ts(k.usage.last_use_time))
        console.print(table)

    go()


@keys_app.command("rm")
def keys_rm(ctx: typer.Context, name: Annotated[str, typer.Argument(help="apiKeys/{key} (or the bare id).")]) -> None:
    """Delete an API key; requests with it fail from then on."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> None:
        async with GatewayClient(settings) as gw:
            await gw.delete_api_key(name)
        console.print(f"deleted {name if name.startswith('apiKeys/') else 'apiKeys/' + name}")

    go()


# -------------------------------------------------------------------------------- workers
@workers_app.command("ls")
def workers_ls(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the gateway's workers, their health, models and load."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> None:
        async with GatewayClient(settings) as gw:
            workers = await gw.list_workers()
        if as_json:
            print(json.dumps([{"name": w.name, "address": w.address, "healthy": w.healthy, "engine": w.engine,
                               "models": list(w.models), "running": w.running, "waiting": w.waiting}
                              for w in workers]))
            return
        table = Table(title="workers")
        for col in ("name", "address", "healthy", "engine", "models", "running", "waiting", "last seen"):
            table.add_column(col)
        for w in workers:
            table.add_row(w.name, w.address, "[green]yes[/green]" if w.healthy else "[red]no[/red]", w.engine,
                          ", ".join(w.models), str(w.running), str(w.waiting), _ts(w.last_seen_time))
        console.print(table)

    go()


@workers_app.command("add")
def workers_add(ctx: typer.Context, address: Annotated[str, typer.Argument(help="host:port of the worker.")]) -> None:
    """Register a running worker with the gateway."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> None:
        async with GatewayClient(settings) as gw:
            w = await gw.register_worker(address)
        console.print(f"registered {w.name} ({w.address}): {'healthy' if w.healthy else 'not healthy yet'}")

    go()


@workers_app.command("rm")
def workers_rm(ctx: typer.Context, name: Annotated[str, typer.Argument(help="workers/{id} or host:port.")]) -> None:
    """Deregister a worker (requests already on it finish)."""
    settings = settings_from(ctx)

    @run_async
    async def go() -> None:
        async with GatewayClient(settings) as gw:
            await gw.deregister_worker(name)
        console.print(f"deregistered {name}")

    go()


def register(app: typer.Typer) -> None:
    """Add the serving commands to the `swiftmesh` CLI."""
    app.command("deploy", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(deploy)
    app.command("chat")(chat)
    app.add_typer(keys_app, name="keys")
    app.add_typer(workers_app, name="workers")
