"""The `swiftmesh` command: runs the services and is the client of every one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swiftmesh.cli import align, certs, data, hub, jobs, quickstart, serving, stack, train

app = typer.Typer(
    name="swiftmesh",
    help=(
        "SwiftMesh: download, fine-tune, align and serve large language models, as gRPC services.\n\n"
        "Settings come from flags, SWIFTMESH_* environment variables (nested with __, e.g. "
        "SWIFTMESH_HUB__PORT) and a YAML file (--config or SWIFTMESH_CONFIG)."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML settings file (default $SWIFTMESH_CONFIG).", exists=True, dir_okay=False),
    ] = None,
) -> None:
    """SwiftMesh command line."""
    ctx.obj = {"config": str(config) if config else None}


app.command("serve")(stack.serve)
app.command("up")(stack.up)
app.command("status")(stack.status)


for _commands in (hub, jobs, train, align, serving, quickstart, certs, data):
    _commands.register(app)

if __name__ == "__main__":
    app()
