"""`swiftmesh sft|pt|merge|estimate`: create trainer jobs from the command line (ms-swift flag names).

    swiftmesh sft --model SmolLM2-135M-Instruct --dataset identity.jsonl#200 --tuner lora \\
        --lora_rank 8 --lora_alpha 32 --target_modules all-linear --num_train_epochs 3 \\
        --learning_rate 2e-4 --per_device_train_batch_size 4 --max_length 512
    swiftmesh sft --model m --dataset data.jsonl --tuner lora --deepspeed zero3 --num_workers 2
    swiftmesh pt --model m --dataset corpus.jsonl --tuner full
    swiftmesh merge --model models/m-sft-1a2b3c4d           # adapter -> merged full model
    swiftmesh estimate --model m --dataset data.jsonl --tuner full

Flags follow ms-swift's ``swift sft`` where it has them (``--train_type`` / ``--tuner_type`` are aliases of
``--tuner``, ``--lora_rank`` of ``--r``, ``--nproc_per_node`` of ``--num_workers``; boolean flags
take an optional true/false as in ms-swift). The job is followed live with a progress bar
(``--detach`` returns at once); exit 0 succeeded, 1 failed, 3 cancelled.
"""


import json
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format
from rich.table import Table
from typer.core import TyperCommand

from swiftmesh.cli.common import console, err_console, run_async, settings_from
from swiftmesh.cli.jobs import exit_for, follow_job, print_job
from swiftmesh.clients.jobs import STRATEGIES, TUNERS
from swiftmesh.clients.trainer import TrainerClient, build_spec

BOOL_FLAGS = ("use_dora", "use_rslora", "gradient_checkpointing", "bf16", "assistant_only_loss", "merge_lora",
              "ignore_columns")


def BoolOpt(name: str, help: str = ""):
    """A boolean flag ms-swift style: ``--name``, ``--name true`` or ``--name false``
    (:class:`_SwiftStyleCommand` gives a bare ``--name`` its "true")."""
    return Annotated[str | None, typer.Option(f"--{name}", metavar="[true|false]", help=help)]


TRUE = ("true", "1", "yes", "on", "y", "t")
FALSE = ("false", "0", "no", "off", "n", "f")


class _SwiftStyleCommand(TyperCommand):
    """Lets boolean flags be given bare (``--gradient_checkpointing``) or with a value
    (``--gradient_checkpointing true``, as ms-swift writes them)."""

    def parse_args(self, ctx, args):
        out: list[str] = []
        for i, a in enumerate(args):
            out.append(a)
            if a.startswith("--") and a[2:] in BOOL_FLAGS:
                nxt = args[i + 1].lower() if i + 1 < len(args) else ""
                if nxt not in TRUE + FALSE:
                    out.append("true")
        return super().parse_args(ctx, out)


def _bool(name: str, v: str | None) -> bool | None:
    if v is None:
        return None
    if v.lower() in TRUE:
        return True
    if v.lower() in FALSE:
        return False
    err_console.print(f"[red]error:[/red] --{name} takes true or false, got {v!r}")
    raise typer.Exit(2)


def _labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            err_console.print(f"[red]error:[/red] --label takes key=value, got {item!r}")
            raise typer.Exit(2)
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _datasets(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        for part in v.split():  # ms-swift: --dataset a.jsonl b.jsonl#100 (quoted) also works
            if part.startswith("models/"):
                out.append(part)
                continue
            path, sep, n = part.partition("#")
            p = Path(path).expanduser()
            out.append((str(p.resolve()) if p.exists() else path) + (sep + n if sep else ""))
    return out


def _spec_from_flags(task: str, **o):
    tuner = o.pop("tuner") or o.pop("train_type", None) or "lora"
    o.pop("train_type", None)
    if o.pop("use_dora", None):
        tuner = "dora"
    if o.pop("use_rslora", None):
        tuner = "rslora"
    tuner = tuner.lower().replace("lora_plus", "lora+").replace("loraplus", "lora+")
    if tuner not in TUNERS:
        err_console.print(f"[red]error:[/red] --tuner must be one of {', '.join(sorted(set(TUNERS) - {'lora_plus'}))}")
        raise typer.Exit(2)
    deepspeed = o.pop("deepspeed")
    ddp = o.pop("ddp")
    workers = o.pop("num_workers") or 0
    if deepspeed:
        strategy = deepspeed.lower().replace("-", "_").replace("zero3offload", "zero3_offload")
        if strategy not in STRATEGIES or strategy in ("none", "ddp"):
            err_console.print("[red]error:[/red] --deepspeed must be zero2, zero3 or zero3_offload")
            raise typer.Exit(2)
    elif ddp or workers > 1:
        strategy = "ddp"
    else:
        strategy = "none"
    args = {k: v for k, v in o.items() if v is not None}
    for b in ("gradient_checkpointing", "merge_lora", "assistant_only_loss", "bf16", "ignore_columns"):
        if b in args:
            args[b] = _bool(b, args[b])
    merge_lora = args.pop("merge_lora", False) or False
    ignore_columns = args.pop("ignore_columns", False) or False
    if "target_modules" in args:
        args["target_modules"] = [t for v in args["target_modules"] for t in v.replace(",", " ").split()]
    if "modules_to_save" in args:
        args["modules_to_save"] = [t for v in args["modules_to_save"] for t in v.replace(",", " ").split()]
    chat_template = args.pop("chat_template", "") or ""
    if chat_template and Path(chat_template).is_file():
        chat_template = Path(chat_template).read_text()
    if "lora_rank" in args:
        args["r"] = args.pop("lora_rank")
    if "lorap_lr_ratio" in args:
        args["lora_plus_lr_ratio"] = args.pop("lorap_lr_ratio")
    return build_spec(
        model=args.pop("model"),
        task=task,
        datasets=_datasets(args.pop("dataset", None)),
        tuner=tuner,
        strategy=strategy,
        num_workers=workers,
        cpus_per_worker=args.pop("cpus_per_worker", 0.0) or 0.0,
        gpus_per_worker=args.pop("gpus_per_worker", 0.0) or 0.0,
        memory_bytes_per_worker=int(args.pop("memory_gib_per_worker", 0) * 2**30) if args.get("memory_gib_per_worker") else 0,
        output_model_id=args.pop("output_model_id", "") or "",
        merge_lora=bool(merge_lora),
        chat_template=chat_template,
        ignore_columns=bool(ignore_columns),
        **{k: v for k, v in args.items() if k not in ("memory_gib_per_worker",)},
    )


def _print_estimate(est) -> None:
    gib = 2**30
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for label, v in (("weights", est.weights_bytes), ("gradients", est.gradients_bytes),
                     ("optimizer states", est.optimizer_states_bytes), ("activations", est.activations_bytes),
                     ("total per worker", est.total_bytes_per_worker),
                     ("available per worker", est.available_bytes_per_worker)):
        t.add_row(label, f"{v / gib:.2f} GiB")
    t.add_row("fits", "[green]yes[/green]" if est.fits else "[red]no[/red]")
    t.add_row("parameters", f"{est.trainable_parameters:,} trainable of {est.total_parameters:,}")
    t.add_row("estimated time", f"{est.estimated_duration.seconds // 60} min {est.estimated_duration.seconds % 60} s")
    t.add_row("FLOPs", f"{est.total_flops:.3g}")
    console.print(t)
    for n in est.notes:
        console.print(f"  - {n}", highlight=False)


def _make_command(task: str):
    @run_async
    async def command(
        ctx: typer.Context,
        model: Annotated[str, typer.Option("--model", help="Hub model (or PEFT adapter) to train: models/ID or ID.")],
        dataset: Annotated[list[str] | None, typer.Option("--dataset", help="jsonl/json/csv/parquet file, saved datasets dir, or models/NAME; '#N' samples N rows. Repeatable.")] = None,
        tuner: Annotated[str | None, typer.Option("--tuner", help="full, lora, qlora, dora, rslora, lora+ (default lora).")] = None,
        train_type: Annotated[str | None, typer.Option("--train_type", "--tuner_type", help="ms-swift alias of --tuner.")] = None,
        use_dora: BoolOpt("use_dora") = None,
        use_rslora: BoolOpt("use_rslora") = None,
        deepspeed: Annotated[str | None, typer.Option("--deepspeed", help="zero2, zero3 or zero3_offload.")] = None,
        ddp: Annotated[bool, typer.Option("--ddp", help="Data parallel without DeepSpeed (default when --num_workers > 1).")] = False,
        num_workers: Annotated[int | None, typer.Option("--num_workers", "--nproc_per_node", help="Ray Train workers.")] = None,
        cpus_per_worker: Annotated[float | None, typer.Option("--cpus_per_worker")] = None,
        gpus_per_worker: Annotated[float | None, typer.Option("--gpus_per_worker")] = None,
        memory_gib_per_worker: Annotated[float | None, typer.Option("--memory_gib_per_worker", help="Memory to reserve per worker, GiB.")] = None,
        num_train_epochs: Annotated[float | None, typer.Option("--num_train_epochs")] = None,
        max_steps: Annotated[int | None, typer.Option("--max_steps")] = None,
        learning_rate: Annotated[float | None, typer.Option("--learning_rate")] = None,
        lr_scheduler_type: Annotated[str | None, typer.Option("--lr_scheduler_type")] = None,
        warmup_ratio: Annotated[float | None, typer.Option("--warmup_ratio")] = None,
        warmup_steps: Annotated[int | None, typer.Option("--warmup_steps")] = None,
        per_device_train_batch_size: Annotated[int | None, typer.Option("--per_device_train_batch_size", "--batch_size")] = None,
        per_device_eval_batch_size: Annotated[int | None, typer.Option("--per_device_eval_batch_size")] = None,
        gradient_accumulation_steps: Annotated[int | None, typer.Option("--gradient_accumulation_steps")] = None,
        max_length: Annotated[int | None, typer.Option("--max_length")] = None,
        gradient_checkpointing: BoolOpt("gradient_checkpointing") = None,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        bf16: BoolOpt("bf16") = None,
        weight_decay: Annotated[float | None, typer.Option("--weight_decay")] = None,
        max_grad_norm: Annotated[float | None, typer.Option("--max_grad_norm")] = None,
        logging_steps: Annotated[int | None, typer.Option("--logging_steps")] = None,
        split_dataset_ratio: Annotated[float | None, typer.Option("--split_dataset_ratio")] = None,
        eval_steps: Annotated[int | None, typer.Option("--eval_steps")] = None,
        save_steps: Annotated[int | None, typer.Option("--save_steps")] = None,
        save_total_limit: Annotated[int | None, typer.Option("--save_total_limit")] = None,
        assistant_only_loss: BoolOpt("assistant_only_loss") = None,
        lora_rank: Annotated[int | None, typer.Option("--lora_rank", "--r")] = None,
        lora_alpha: Annotated[int | None, typer.Option("--lora_alpha")] = None,
        lora_dropout: Annotated[float | None, typer.Option("--lora_dropout")] = None,
        target_modules: Annotated[list[str] | None, typer.Option("--target_modules", help="Module names or all-linear.")] = None,
        modules_to_save: Annotated[list[str] | None, typer.Option("--modules_to_save")] = None,
        lorap_lr_ratio: Annotated[float | None, typer.Option("--lorap_lr_ratio", "--lora_plus_lr_ratio", help="LoRA+ lr(B)/lr(A).")] = None,
        bias: Annotated[str | None, typer.Option("--lora_bias", help="none, all or lora_only.")] = None,
        chat_template: Annotated[str | None, typer.Option("--chat_template", help="Jinja template (text or a file).")] = None,
        output_model_id: Annotated[str | None, typer.Option("--output_model_id", "--output_name", help="Hub id of the result.")] = None,
        merge_lora: BoolOpt("merge_lora") = None,
        ignore_columns: BoolOpt("ignore_columns", "Drop dataset columns no format reads, with a warning in the job's log (default: refuse the data).") = None,
        job_id: Annotated[str, typer.Option("--job_id", help="Job id (default generated).")] = "",
        label: Annotated[list[str] | None, typer.Option("--label", help="key=value (repeatable).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Start even if the estimate says it does not fit.")] = False,
        validate_only: Annotated[bool, typer.Option("--validate_only", help="Check the spec and data, create nothing.")] = False,
        detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once queued; don't follow.")] = False,
        plain: Annotated[bool, typer.Option("--plain", help="One line per step instead of a progress bar.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
        target: Annotated[str | None, typer.Option("--target", help="Trainer address host:port.")] = None,
        estimate_only: bool = False,
    ) -> None:
        settings = settings_from(ctx)
        spec = _spec_from_flags(
            task, model=model, dataset=dataset, tuner=tuner, train_type=train_type,
            use_dora=_bool("use_dora", use_dora), use_rslora=_bool("use_rslora", use_rslora),
            deepspeed=deepspeed, ddp=ddp, num_workers=num_workers, cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker, memory_gib_per_worker=memory_gib_per_worker,
            num_train_epochs=num_train_epochs, max_steps=max_steps, learning_rate=learning_rate,
            lr_scheduler_type=lr_scheduler_type, warmup_ratio=warmup_ratio, warmup_steps=warmup_steps,
            per_device_train_batch_size=per_device_train_batch_size, per_device_eval_batch_size=per_device_eval_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps, max_length=max_length,
            gradient_checkpointing=gradient_checkpointing, seed=seed, bf16=bf16, weight_decay=weight_decay,
            max_grad_norm=max_grad_norm, logging_steps=logging_steps, split_dataset_ratio=split_dataset_ratio,
            eval_steps=eval_steps, save_steps=save_steps, save_total_limit=save_total_limit,
            assistant_only_loss=assistant_only_loss, lora_rank=lora_rank, lora_alpha=lora_alpha,
            lora_dropout=lora_dropout, target_modules=target_modules, modules_to_save=modules_to_save,
            lorap_lr_ratio=lorap_lr_ratio, bias=bias, chat_template=chat_template, output_model_id=output_model_id,
            merge_lora=merge_lora, ignore_columns=ignore_columns,
        )
        async with TrainerClient(settings, target) as client:
            if estimate_only:
                est = await client.estimate(spec)
                if as_json:
                    console.print_json(json.dumps(json_format.MessageToDict(est, preserving_proto_field_name=True)))
                else:
                    _print_estimate(est)
                if not est.fits:
                    raise typer.Exit(4)
                return
            job = await client.create_job(spec, job_id=job_id, labels=_labels(label), force=force,
                                          validate_only=validate_only)
            if as_json and (detach or validate_only):
                console.print_json(json.dumps(json_format.MessageToDict(job, preserving_proto_field_name=True)))
                return
            if validate_only:
                console.print(f"[green]valid[/green]: {job.name} would run {job.progress.total_steps} steps "
                              f"on {job.resources.num_workers} workers")
                return
            console.print(f"created [bold]{job.name}[/bold] ({job.kind}); "
                          f"`swiftmesh jobs watch {job.name.removeprefix('jobs/')}` follows it")
            if detach:
                return
            job = await follow_job(client, job.name, quiet=plain)
        print_job(job)
        exit_for(job)

    return command


def register(app: typer.Typer) -> None:
    """Add the ``train`` commands to the CLI app."""
    docs = {
        "sft": "Supervised fine-tuning on conversations (messages, ShareGPT, Alpaca, query/response).",
        "pt": "Continued pre-training on raw text ('text' rows; conversations are trained on every token).",
    }
    for task, doc in docs.items():
        fn = _bind(_make_command(task), estimate_only=False)
        fn.__doc__ = doc + " Follows the job live unless --detach."
        app.command(task, cls=_SwiftStyleCommand)(fn)

    app.command("estimate", cls=_SwiftStyleCommand,
                help="Estimate memory per worker and time of an sft job (exit 4 if it does not fit).")(
        _bind(_make_command("sft"), estimate_only=True))

    @app.command("merge")
    @run_async
    async def merge(
        ctx: typer.Context,
        model: Annotated[str, typer.Option("--model", "--adapters", help="The PEFT adapter in the hub.")],
        output_model_id: Annotated[str | None, typer.Option("--output_model_id", "--output_name")] = None,
        job_id: Annotated[str, typer.Option("--job_id")] = "",
        detach: Annotated[bool, typer.Option("--detach", "-d")] = False,
        target: Annotated[str | None, typer.Option("--target")] = None,
    ) -> None:
        """Merge a PEFT adapter into its base model (ms-swift `export --merge_lora true`)."""
        settings = settings_from(ctx)
        spec = build_spec(model=model, task="merge", output_model_id=output_model_id or "")
        async with TrainerClient(settings, target) as client:
            job = await client.create_job(spec, job_id=job_id)
            console.print(f"created [bold]{job.name}[/bold] (merge)")
            if detach:
                return
            job = await follow_job(client, job.name, quiet=True)
        print_job(job)
        exit_for(job)


def _bind(fn, **fixed):
    import functools
    import inspect

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        return fn(*a, **kw, **fixed)

    sig = inspect.signature(fn)
    ps = [p for p in sig.parameters.values() if p.name not in fixed]
    wrapper.__signature__ = inspect.Signature(ps)
    return wrapper
