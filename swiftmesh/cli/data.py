"""`swiftmesh data preview`: what a training or alignment job would train on, before it runs.

    swiftmesh data preview prefs.jsonl --method dpo
    swiftmesh data preview chat.jsonl#500 other.parquet --method sft --model ./my-model --max_length 1024
    swiftmesh data preview models/my-data --method kto --model smollm2     # hub dataset and model

The dataset is read by the same code as the jobs (:mod:`swiftmesh.jobkit.data`), streamed, so
a multi-GB file previews in bounded memory: the formats detected per file, the row counts, the
first rows as the trainer sees them (converted; with ``--model`` rendered by the model's chat
template, the trained tokens between ⟦ and ⟧), token-length statistics and how many rows
``--max_length`` would cut. A bad row fails here with the error the job would give.
``--model`` is a local model directory or a model in the hub (``settings.hub.target``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from swiftmesh.cli.common import console, err_console, fail, report_error, settings_from
from swiftmesh.jobkit.data.fields import CARRIED
from swiftmesh.runtime.errors import SwiftMeshError

data_app = typer.Typer(help="Look at datasets as the training jobs will read them.", no_args_is_help=True)

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def _tokenizer(ctx: typer.Context, model: str, chat_template: str, hub_source):
    """The tokenizer of a local model directory, or of a hub model (an adapter's own, else its base's)."""
    from transformers import AutoTokenizer

    path = Path(model).expanduser()
    if path.is_dir():
        tok_dir = path
    else:
        from swiftmesh.jobkit.models import resolve_model

        names = resolve_model(hub_source(), model, field="--model")
        tok_dir = Path(hub_source().materialize(names["base_model"]))
        if names["adapter_model"]:
            adapter = Path(hub_source().materialize(names["adapter_model"]))
            tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else tok_dir
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    if chat_template:
        tok.chat_template = chat_template
    return tok


def _show(p, rows_shown: int) -> None:
    console.print(f"[bold]{p.method}[/bold]: {p.rows_read} rows read, {p.rows_kept} training rows"
                  + (f" ({p.style})" if p.style else ""))
    for file, fmts in p.formats.items():
        console.print(f"  {escape(file)}: " + ", ".join(f"{n} rows as {f}" for f, n in fmts.items()), soft_wrap=True)
    if p.ignored:
        err_console.print("[yellow]warning:[/yellow] --ignore_columns dropped "
                          + ", ".join(f"'{k}' from {n} rows" for k, n in p.ignored.items()))
    for r in p.first[:rows_shown]:
        console.rule(f"{escape(r.file)} row {r.row}" + (f" ({r.tokens} tokens)" if r.tokens is not None else ""))
        if not r.rendered:
            console.print(escape(json.dumps(r.converted, ensure_ascii=False)), highlight=False)
            continue
        for side, segments in r.rendered.items():
            if len(r.rendered) > 1:
                console.print(f"[bold]{side}:[/bold]")
            text = "".join(f"{TRAINED_OPEN}{s}{TRAINED_CLOSE}" if trained else s for s, trained in segments)
            console.print(escape(text), highlight=False)
        for k in CARRIED:
            if k in r.converted:
                console.print(f"[bold]{k}:[/bold] {escape(json.dumps(r.converted[k], ensure_ascii=False))}")
    if p.first and p.first[0].rendered:
        console.print(f"(trained tokens are between {TRAINED_OPEN} and {TRAINED_CLOSE})")
    s = p.lengths
    if s is not None:
        console.rule("token lengths")
        console.print(f"{s.count} rows{' (a seeded sample)' if p.sampled else ''}: min {s.min}, mean {s.mean:.1f}, "
                      f"p50 {s.p50:.0f}, p95 {s.p95}, max {s.max}")
        if p.max_length:
            console.print(f"--max_length {p.max_length} would cut {s.over_max} of {s.count} rows")


@data_app.command("preview")
def preview(
    ctx: typer.Context,
    dataset: Annotated[list[str] | None, typer.Argument(help="Files, directories or models/{id}; '#N' samples N "
                                                            "rows.")] = None,
    dataset_opt: Annotated[list[str] | None, typer.Option("--dataset", help="The same, ms-swift's flag (repeatable, "
                                                                            "or several values).")] = None,
    method: Annotated[str, typer.Option("--method", "--rlhf_type", "--rlhf-type",
                                        help="pt | sft | dpo | orpo | cpo | simpo | rm | kto | ppo | grpo")] = "sft",
    model: Annotated[str, typer.Option("--model", help="Local model directory or hub model: render with its chat "
                                                       "template and count tokens.")] = "",
    max_length: Annotated[int | None, typer.Option("--max_length", "--max-length",
                                                   help="Count the rows longer than this (tokens).")] = None,
    rows: Annotated[int, typer.Option("--rows", help="Rows to show.")] = 3,
    stats_rows: Annotated[int, typer.Option("--stats_rows", "--stats-rows",
                                            help="Rows measured for the token statistics (a seeded sample).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="The job's seed (it picks the '#N' rows).")] = 42,
    ignore_columns: Annotated[bool, typer.Option("--ignore_columns", "--ignore-columns",
                                                 help="Drop columns no format reads, with a warning.")] = False,
    chat_template: Annotated[str, typer.Option("--chat_template", "--chat-template")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the preview as JSON.")] = False,
    hub: Annotated[str | None, typer.Option("--hub", help="Hub address (default settings.hub.target).")] = None,
) -> None:
    """Show what a job would train on: formats, counts, rendered rows, token lengths."""
    from swiftmesh.jobkit.data.preview import preview_dataset

    dataset = [*(dataset or []), *(dataset_opt or [])]
    if not dataset:
        fail("give a dataset: swiftmesh data preview FILE... --method M", code=2)

    source = None

    def hub_source():
        nonlocal source
        if source is None:
            from swiftmesh.jobkit.models import HubModelSource

            settings = settings_from(ctx, **({"hub": {"address": hub}} if hub else {}))
            source = HubModelSource(settings)
        return source

    try:
        tok = _tokenizer(ctx, model, chat_template, hub_source) if model else None
        models = hub_source() if any(d.startswith("models/") for d in dataset) else None
        p = preview_dataset(dataset, method, tokenizer=tok, max_length=max_length, show=rows, stats_rows=stats_rows,
                            seed=seed, models=models, ignore_columns=ignore_columns)
    except SwiftMeshError as e:
        report_error(e)
        raise typer.Exit(1) from None
    except OSError as e:
        fail(f"cannot load the model's tokenizer from {model!r}: {e}")
    if as_json:
        print(json.dumps(asdict(p), ensure_ascii=False, indent=1))
    else:
        _show(p, rows)


def register(app: typer.Typer) -> None:
    """Add the `data` group to the swiftmesh command."""
    app.add_typer(data_app, name="data")
