"""Helpers shared by the CLI commands: settings, console, async runner, error display."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
import typer
from rich.console import Console

from swiftmesh.runtime.client import domain_error
from swiftmesh.runtime.config import ConfigError, Settings
from swiftmesh.runtime.errors import SwiftMeshError

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")

# Process name -> module with create_service(settings) -> runtime.server.Service.
SERVICE_MODULES = {
    "hub": "swiftmesh.services.hub.server",
    "trainer": "swiftmesh.services.trainer.server",
    "aligner": "swiftmesh.services.aligner.server",
    "worker": "swiftmesh.services.gateway.worker_server",
    "gateway": "swiftmesh.services.gateway.server",
}


def settings_from(ctx: typer.Context, **overrides: Any) -> Settings:
    """Settings from the global --config plus per-command overrides; exits 2 on bad settings."""
    obj = ctx.find_root().obj or {}
    try:
        return Settings.load(obj.get("config"), **overrides)
    except ConfigError as e:
        err_console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def report_error(err: SwiftMeshError) -> None:
    """Print a domain error to stderr: code, reason, message and each field violation."""
    err_console.print(f"[red]error ({err.code_name}{'/' + err.reason if err.reason != err.code_name else ''}):[/red] {err.message}")
    for fv in err.field_violations:
        err_console.print(f"  [yellow]{fv.field}[/yellow]: {fv.description}")


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Decorator: run an async command body with asyncio; RPC and domain errors become a
    readable message and exit code 1; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except SwiftMeshError as e:
            report_error(e)
            raise typer.Exit(1) from None
        except grpc.RpcError as e:
            report_error(domain_error(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` as an error to stderr and exit with ``code``."""
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def is_tty() -> bool:
    """True when both stdin and stdout are terminals (then commands may ask questions)."""
    return sys.stdin.isatty() and sys.stdout.isatty()
