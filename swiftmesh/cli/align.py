"""`swiftmesh rlhf`: preference and RL alignment jobs on the aligner service (ms-swift's
``swift rlhf``).

    swiftmesh rlhf --rlhf_type dpo --model models/smollm2-sft --dataset prefs.jsonl --beta 0.1
    swiftmesh rlhf --rlhf_type kto --model smollm2 --dataset kto.jsonl#500 --max_steps 100
    swiftmesh rlhf --rlhf_type rm --model smollm2 --dataset prefs.jsonl --output_model_id smollm2-rm
    swiftmesh rlhf --rlhf_type ppo --model smollm2-sft --dataset prompts.jsonl --reward_model smollm2-rm
    swiftmesh rlhf --rlhf_type grpo --model smollm2 --dataset math.jsonl --reward_funcs accuracy
    swiftmesh rlhf --rlhf_type dpo ... --deepspeed zero3 --num_workers 2

Flag names follow ms-swift (``--rlhf_type``, ``--dataset``, ``--train_type``/``--tuner``,
``--deepspeed``, ``--beta``, ``--rpo_alpha``, ``--reward_model``...; the dashed spellings work
too). The job is followed live (``swiftmesh jobs watch``'s view) unless ``--detach``; the generic job
commands are shared with the trainer: ``swiftmesh jobs ls|show|watch|cancel|resume|logs
--service aligner``. The aligner is found at ``settings.aligner.target`` or ``--aligner host:port``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from google.protobuf import json_format

from swiftmesh.cli.common import console, err_console, fail, run_async, settings_from
from swiftmesh.cli.jobs import exit_for, follow_job
from swiftmesh.clients.aligner import RLHF_TYPES, AlignerClient, build_spec
from swiftmesh.clients.jobs import STRATEGIES, TUNERS, state_name

# Metrics shown at the end of a job, per method family (TensorBoard tags as jobkit reports them);
# the live view while it runs is the shared one of `swiftmesh jobs watch`.
SHOWN = ("train/loss", "train/rewards/margins", "train/rewards/accuracies", "train/kl", "train/objective/scores",
         "train/objective/kl", "train/reward", "train/loss/value_avg", "train/policy/clipfrac_avg", "train/accuracy")


def rlhf(
    ctx: typer.Context,
    rlhf_type: Annotated[str, typer.Option("--rlhf_type", "--rlhf-type",
                                           help="dpo | kto | orpo | cpo | simpo | rm | ppo | grpo")],
    model: Annotated[str, typer.Option("--model", help="Policy in the hub: models/{id} (a base model, or a PEFT "
                                                       "adapter such as an SFT job's output).")],
    dataset: Annotated[list[str], typer.Option("--dataset", help="Dataset file, directory or models/{id} (repeatable; "
                                                                 "'#N' samples N rows).")],
    tuner: Annotated[str, typer.Option("--train_type", "--train-type", "--tuner",
                                       help="full | lora | qlora | dora | rslora | lora+")] = "lora",
    deepspeed: Annotated[str, typer.Option("--deepspeed", help="none | ddp | zero2 | zero3 | zero3_offload")] = "none",
    num_workers: Annotated[int, typer.Option("--num_workers", "--num-workers", help="Ray Train workers.")] = 0,
    cpus_per_worker: Annotated[float, typer.Option("--cpus_per_worker", "--cpus-per-worker")] = 0.0,
    gpus_per_worker: Annotated[float, typer.Option("--gpus_per_worker", "--gpus-per-worker")] = 0.0,
    # Training arguments
    num_train_epochs: Annotated[float | None, typer.Option("--num_train_epochs", "--num-train-epochs")] = None,
    max_steps: Annotated[int | None, typer.Option("--max_steps", "--max-steps", help="Optimizer steps (PPO: updates).")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning_rate", "--learning-rate")] = None,
    lr_scheduler_type: Annotated[str | None, typer.Option("--lr_scheduler_type", "--lr-scheduler-type")] = None,
    warmup_ratio: Annotated[float | None, typer.Option("--warmup_ratio", "--warmup-ratio")] = None,
    per_device_train_batch_size: Annotated[int | None, typer.Option("--per_device_train_batch_size",
                                                                    "--per-device-train-batch-size", "--batch_size")] = None,
    gradient_accumulation_steps: Annotated[int | None, typer.Option("--gradient_accumulation_steps",
                                                                    "--gradient-accumulation-steps")] = None,
    max_length: Annotated[int | None, typer.Option("--max_length", "--max-length")] = None,
    max_prompt_length: Annotated[int, typer.Option("--max_prompt_length", "--max-prompt-length")] = 0,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient_checkpointing/--no-gradient_checkpointing")] = False,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="Default: where the hardware supports it.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    logging_steps: Annotated[int | None, typer.Option("--logging_steps", "--logging-steps")] = None,
    save_steps: Annotated[int | None, typer.Option("--save_steps", "--save-steps")] = None,
    save_total_limit: Annotated[int | None, typer.Option("--save_total_limit", "--save-total-limit")] = None,
    split_dataset_ratio: Annotated[float | None, typer.Option("--split_dataset_ratio", "--split-dataset-ratio")] = None,
    # LoRA
    lora_rank: Annotated[int | None, typer.Option("--lora_rank", "--lora-rank")] = None,
    lora_alpha: Annotated[int | None, typer.Option("--lora_alpha", "--lora-alpha")] = None,
    lora_dropout: Annotated[float | None, typer.Option("--lora_dropout", "--lora-dropout")] = None,
    target_modules: Annotated[list[str] | None, typer.Option("--target_modules", "--target-modules")] = None,
    # Method settings (each applies to the methods that have it)
    beta: Annotated[float | None, typer.Option("--beta", help="dpo/kto/cpo/simpo/orpo/grpo beta.")] = None,
    loss_type: Annotated[list[str] | None, typer.Option("--loss_type", "--loss-type",
                                                        help="DPO loss types (repeatable), CPO or GRPO loss type.")] = None,
    label_smoothing: Annotated[float | None, typer.Option("--label_smoothing", "--label-smoothing")] = None,
    rpo_alpha: Annotated[float | None, typer.Option("--rpo_alpha", "--rpo-alpha")] = None,
    desirable_weight: Annotated[float | None, typer.Option("--desirable_weight", "--desirable-weight")] = None,
    undesirable_weight: Annotated[float | None, typer.Option("--undesirable_weight", "--undesirable-weight")] = None,
    simpo_gamma: Annotated[float | None, typer.Option("--simpo_gamma", "--simpo-gamma")] = None,
    cpo_alpha: Annotated[float | None, typer.Option("--cpo_alpha", "--cpo-alpha")] = None,
    center_rewards_coefficient: Annotated[float | None, typer.Option("--center_rewards_coefficient")] = None,
    reward_model: Annotated[str | None, typer.Option("--reward_model", "--reward-model", help="ppo/grpo: models/{id}.")] = None,
    reward_funcs: Annotated[list[str] | None, typer.Option("--reward_funcs", "--reward-funcs",
                                                           help="ppo/grpo built-in rewards (repeatable): "
                                                                "token_count:{id|text}, contains:{text}, "
                                                                "regex:{pattern}, length:{n}, accuracy.")] = None,
    num_generations: Annotated[int | None, typer.Option("--num_generations", "--num-generations")] = None,
    max_completion_length: Annotated[int | None, typer.Option("--max_completion_length")] = None,
    response_length: Annotated[int | None, typer.Option("--response_length", help="ppo tokens per response.")] = None,
    rollout_batch_size: Annotated[int | None, typer.Option("--rollout_batch_size")] = None,
    num_ppo_epochs: Annotated[int | None, typer.Option("--num_ppo_epochs")] = None,
    num_mini_batches: Annotated[int | None, typer.Option("--num_mini_batches")] = None,
    kl_coef: Annotated[float | None, typer.Option("--kl_coef")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature")] = None,
    # Job
    ref_model: Annotated[str, typer.Option("--ref_model", "--ref-model", help="Full fine-tuning reference.")] = "",
    output_model_id: Annotated[str, typer.Option("--output_model_id", "--output-model-id")] = "",
    chat_template: Annotated[str, typer.Option("--chat_template", help="Jinja chat template (text or @file).")] = "",
    ignore_columns: Annotated[bool, typer.Option("--ignore_columns", "--ignore-columns",
                                                 help="Drop dataset columns no format reads, with a warning in the "
                                                      "job's log (default: refuse the data).")] = False,
    job_id: Annotated[str, typer.Option("--job_id", "--job-id")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE job label (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start even if the estimate says it does not fit.")] = False,
    validate_only: Annotated[bool, typer.Option("--validate_only", "--validate-only",
                                                help="Check the spec and data; queue nothing.")] = False,
    estimate: Annotated[bool, typer.Option("--estimate", help="Print the memory/time estimate; queue nothing.")] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once queued instead of following.")] = False,
    aligner: Annotated[str | None, typer.Option("--aligner", help="Aligner address host:port.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run a preference (DPO, KTO, ORPO, CPO, SimPO), reward-model or RL (PPO, GRPO) job.

    The dataset is checked before anything runs: a row that fits none of the method's formats
    is reported with its file, row number and the fields the method expects.
    """
    if rlhf_type not in RLHF_TYPES:
        fail(f"--rlhf_type must be one of {', '.join(RLHF_TYPES)}", 2)
    if tuner not in TUNERS:
        fail(f"--train_type must be one of {', '.join(t for t in TUNERS if t != 'lora_plus')}", 2)
    if deepspeed not in STRATEGIES:
        fail(f"--deepspeed must be one of {', '.join(STRATEGIES)}", 2)
    if chat_template.startswith("@"):
        with open(chat_template[1:], encoding="utf-8") as f:
            chat_template = f.read()
    labels = {}
    for item in label or []:
        k, sep, v = item.partition("=")
        if not sep:
            fail(f"--label takes KEY=VALUE, got {item!r}", 2)
        labels[k] = v
    method_loss = None
    if loss_type:
        method_loss = loss_type if rlhf_type == "dpo" else loss_type[0]
    kwargs = dict(
        num_train_epochs=num_train_epochs, max_steps=max_steps, learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type, warmup_ratio=warmup_ratio,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, max_length=max_length,
        gradient_checkpointing=gradient_checkpointing or None, bf16=bf16, seed=seed, logging_steps=logging_steps,
        save_steps=save_steps, save_total_limit=save_total_limit, split_dataset_ratio=split_dataset_ratio,
        r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules or None,
    )
    method = dict(
        beta=beta, loss_type=method_loss, label_smoothing=label_smoothing, rpo_alpha=rpo_alpha,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight, simpo_gamma=simpo_gamma,
        cpo_alpha=cpo_alpha, center_rewards_coefficient=center_rewards_coefficient, reward_model=reward_model,
        reward_funcs=reward_funcs or None, num_generations=num_generations,
        max_completion_length=max_completion_length, response_length=response_length,
        rollout_batch_size=rollout_batch_size, num_ppo_epochs=num_ppo_epochs, num_mini_batches=num_mini_batches,
        kl_coef=kl_coef, temperature=temperature,
    )
    from swiftmesh.aligner.v1 import aligner_pb2
    from swiftmesh.clients.aligner import METHOD_CONFIG

    msg_fields = set(getattr(aligner_pb2.AlignmentSpec(), METHOD_CONFIG[rlhf_type]).DESCRIPTOR.fields_by_name)
    for k, v in method.items():
        if v is None:
            continue
        if k not in msg_fields:
            fail(f"--{k} does not apply to --rlhf_type {rlhf_type}", 2)
        kwargs[k] = v
    settings = settings_from(ctx)
    _run(settings, aligner, dict(
        rlhf_type=rlhf_type, model=model, datasets=list(dataset), tuner=tuner, strategy=deepspeed,
        num_workers=num_workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
        ref_model=ref_model, output_model_id=output_model_id, max_prompt_length=max_prompt_length,
        chat_template=chat_template, ignore_columns=ignore_columns, **kwargs,
    ), job_id, labels, force, validate_only, estimate, detach, as_json)


def _print_estimate(e, as_json: bool) -> None:
    if as_json:
        console.print_json(json_format.MessageToJson(e, preserving_proto_field_name=True))
        return
    gib = 2**30
    console.print(f"memory per worker: [bold]{e.total_bytes_per_worker / gib:.2f} GiB[/bold] "
                  f"(weights {e.weights_bytes / gib:.2f}, gradients {e.gradients_bytes / gib:.2f}, optimizer "
                  f"{e.optimizer_states_bytes / gib:.2f}, activations {e.activations_bytes / gib:.2f}); "
                  f"available {e.available_bytes_per_worker / gib:.2f} GiB -> "
                  + ("[green]fits[/green]" if e.fits else "[red]does not fit[/red]"))
    console.print(f"time: ~{e.estimated_duration.seconds // 60} min {e.estimated_duration.seconds % 60} s; "
                  f"trainable {e.trainable_parameters:,} of {e.total_parameters:,} parameters")
    for n in e.notes:
        console.print(f"  - {n}")


def _fmt_metrics(metrics) -> str:
    parts = []
    for k in SHOWN:
        if k in metrics:
            parts.append(f"{k.removeprefix('train/')}={metrics[k]:.4g}")
    return " ".join(parts)


@run_async
async def _run(settings, target, spec_kwargs, job_id, labels, force, validate_only, estimate, detach, as_json) -> None:
    spec = build_spec(**spec_kwargs)
    async with AlignerClient(settings, target) as client:
        if estimate:
            _print_estimate(await client.estimate(spec), as_json)
            return
        job = await client.create_job(spec, job_id=job_id, labels=labels, force=force, validate_only=validate_only)
        if validate_only:
            if as_json:
                console.print_json(json.dumps({"valid": True, "kind": job.kind}))
            else:
                console.print(f"[green]valid[/green]: a {job.kind} job ({job.progress.total_steps} steps); nothing queued")
            return
        if detach:
            if as_json:
                console.print_json(json_format.MessageToJson(job, preserving_proto_field_name=True))
            else:
                console.print(f"queued [bold]{job.name}[/bold] ({job.kind}); follow with `swiftmesh jobs watch "
                              f"{job.name.removeprefix('jobs/')} --service aligner`")
            return
        err_console.print(f"[bold]{job.name}[/bold] ({job.kind}) queued; following (Ctrl-C stops following, "
                          "the job goes on)")
        job = await follow_job(client, job.name, quiet=as_json)
        if as_json:
            console.print_json(json_format.MessageToJson(job, preserving_proto_field_name=True))
        else:
            final = _fmt_metrics(job.metrics)
            if final:
                console.print(f"{job.name}: {state_name(job.state)}; last {final}")
        exit_for(job)


def register(app: typer.Typer) -> None:
    """Add ``swiftmesh rlhf`` to the CLI (``swiftmesh jobs`` is shared with the trainer)."""
    app.command("rlhf", context_settings={"allow_interspersed_args": True})(rlhf)
