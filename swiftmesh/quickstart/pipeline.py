"""The quickstart's stages, each a client of the running services:

  pull     hub.PullModel(plan.source)                 -> models/<model_id>      (GGUF import)
  before   worker.LoadModel(base); OpenAI chat        -> the base model's answer
  sft      trainer.CreateJob(sft, lora, identity)     -> models/<id>-sft-<key>  (lineage: base)
  dpo      aligner.CreateJob(dpo, from the SFT adapter)-> models/<id>-dpo-<key>  (lineage: sft)
  after    worker.LoadAdapter(dpo); OpenAI chat       -> the new answer, and serving tokens/s

Every stage can be repeated: models already in the hub are not pulled or trained again, and
jobs have stable ids (``jobs/quickstart-<stage>-<key>``) so a second run watches a running job,
resumes a cancelled or failed one from its checkpoint, or reuses a finished one. Cancelling the
run (Ctrl-C) cancels the job in progress, which keeps its last checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from swiftmesh.aligner.v1 import aligner_pb2
from swiftmesh.clients.gateway import WorkerClient, openai_base_url
from swiftmesh.clients.hub import HubClient
from swiftmesh.clients.jobs import STRATEGIES, JobsClient, state_name
from swiftmesh.clients.trainer import TrainerClient, build_spec
from swiftmesh.data.identity import render_identity_dataset
from swiftmesh.gateway.v1 import inference_pb2
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.jobs.v1 import jobs_pb2, training_pb2
from swiftmesh.quickstart.plan import QuickstartPlan
from swiftmesh.runtime.client import raise_domain_errors
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import FailedPrecondition, NotFound


@dataclass
class QuickstartResult:
    """What the run produced, with the wall time of each stage in seconds."""

    base_model: str = ""
    sft_model: str = ""
    dpo_model: str = ""
    served_model: str = ""
    answer_before: str = ""
    answer_after: str = ""
    serving_tokens_per_second: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)


def _metric(metrics, *names: str) -> float | None:
    for n in names:
        if n in metrics:
            return metrics[n]
    return None


class Pipeline:
    """Runs the quickstart's stages against services reachable through ``settings``."""

    def __init__(self, plan: QuickstartPlan, settings: Settings, console: Console) -> None:
        self.plan = plan
        self.settings = settings
        self.console = console
        self.work_dir = settings.data_dir / "quickstart" / plan.key()
        self.result = QuickstartResult()

    async def run(self) -> QuickstartResult:
        plan = self.plan
        await self._timed("pull", self.pull)
        await self._timed("before", self.ask_before)
        adapter = ""
        if plan.sft:
            adapter = await self._timed("sft", self.sft)
        if plan.dpo:
            adapter = await self._timed("dpo", lambda: self.dpo(adapter))
        await self._timed("after", lambda: self.ask_after(adapter))
        return self.result

    async def _timed(self, stage: str, fn: Callable[[], Awaitable]):
        start = time.monotonic()
        try:
            return await fn()
        finally:
            self.result.stage_seconds[stage] = round(time.monotonic() - start, 1)

    # -- pull ---------------------------------------------------------------------------------
    async def pull(self) -> str:
        plan = self.plan
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]pull[/bold] {task.fields[stage]:<11}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        ) as progress:
            task = progress.add_task("pull", total=None, stage="resolving")

            def on_progress(p: hub_pb2.PullProgress) -> None:
                stage = hub_pb2.PullProgress.Stage.Name(p.stage).removeprefix("STAGE_").lower()
                progress.update(task, total=p.bytes_total or None, completed=p.bytes_done,
                                stage=stage + (" (following)" if p.following else ""))

            async with HubClient(self.settings) as hub:
                model = await hub.pull(plan.source, plan.model_id, on_progress=on_progress)
            progress.update(task, total=model.size_bytes, completed=model.size_bytes, stage="done")
        self.result.base_model = model.name
        self.console.print(f"  base model [cyan]{model.name}[/cyan] ({model.size_bytes / 1e6:.0f} MB, from {model.source})")
        return model.name

    # -- serving --------------------------------------------------------------------------------
    async def _chat(self, model: str, question: str, max_tokens: int = 64) -> tuple[str, int, float]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=openai_base_url(self.settings), api_key=self.plan.extra.get("api_key", "none"))
        try:
            start = time.monotonic()
            resp = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens,
                seed=self.plan.seed,
            )
            return resp.choices[0].message.content or "", resp.usage.completion_tokens, time.monotonic() - start
        finally:
            await client.close()

    async def _wait_served(self, model: str, timeout: float = 120.0) -> None:
        """Wait until the gateway lists ``model`` (it polls the workers)."""
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=openai_base_url(self.settings), api_key=self.plan.extra.get("api_key", "none"))
        deadline = time.monotonic() + timeout
        try:
            while True:
                ids = {m.id async for m in client.models.list()}
                if model in ids:
                    return
                if time.monotonic() > deadline:
                    raise FailedPrecondition(f"the gateway does not list {model!r} after {timeout:.0f} s (it lists {sorted(ids)})")
                await asyncio.sleep(0.5)
        finally:
            await client.close()

    async def _ensure_loaded(self, hub_model: str, *, adapter: bool) -> str:
        """Served id of ``hub_model`` on the worker, loading it unless it is loaded already. A
        different base model on the worker is unloaded first (one base model per worker)."""
        async with WorkerClient(self.settings, self.settings.worker.target) as worker:
            served = await worker.list_models()
            for m in served:
                if m.hub_model == hub_model:
                    return m.id
            if adapter:
                return (await worker.load_adapter(hub_model, base=self.result.served_model)).id
            for m in served:
                if not m.parent:
                    self.console.print(f"  unloading {m.id} from the engine worker to serve {hub_model}")
                    with raise_domain_errors():
                        await worker.stub.UnloadModel(inference_pb2.UnloadModelRequest(served_name=m.id))
            return (await worker.load_model(hub_model)).id

    async def ask_before(self) -> str:
        with self.console.status("loading the base model on the engine worker ..."):
            served_id = await self._ensure_loaded(self.result.base_model, adapter=False)
            await self._wait_served(served_id)
        self.result.served_model = served_id
        answer, _, _ = await self._chat(served_id, self.plan.question)
        self.result.answer_before = answer
        self.console.print(f"  before: [italic]{answer}[/italic]")
        return answer

    async def ask_after(self, adapter: str) -> str:
        model = self.result.served_model
        if adapter:
            with self.console.status(f"loading {adapter} on the engine worker ..."):
                model = await self._ensure_loaded(adapter, adapter=True)
                await self._wait_served(model)
        answer, _, _ = await self._chat(model, self.plan.question)
        self.result.answer_after = answer
        self.result.serving_tokens_per_second = await self._serving_throughput(model)
        return answer

    async def _serving_throughput(self, model: str, concurrency: int = 4, max_tokens: int = 32) -> float:
        """Completion tokens per second of ``concurrency`` simultaneous chats through the gateway."""
        questions = ["Introduce yourself.", "What can you do?", "Who made you?", "What is your name?"]
        with Progress(SpinnerColumn(), TextColumn("[bold]serve[/bold] {task.description}"), TimeElapsedColumn(),
                      console=self.console) as progress:
            task = progress.add_task(f"{concurrency} concurrent chats on {model}", total=None)
            start = time.monotonic()
            results = await asyncio.gather(*(
                self._chat(model, questions[i % len(questions)], max_tokens) for i in range(concurrency)))
            elapsed = time.monotonic() - start
            tokens = sum(r[1] for r in results)
            tps = tokens / elapsed if elapsed > 0 else 0.0
            progress.update(task, description=f"{concurrency} concurrent chats on {model}: {tps:.1f} tokens/s")
        return tps

    # -- jobs -----------------------------------------------------------------------------------
    async def _job(
        self,
        stage: str,
        client: JobsClient,
        output_model: str,
        create: Callable[[str], Awaitable[jobs_pb2.Job]],
        figures: Callable[[dict[str, float]], str],
    ) -> str:
        """Run (or pick up) the job of a stage and show its progress; returns its output model."""
        async with HubClient(self.settings) as hub:
            try:
                model = await hub.get(output_model)
                self.console.print(f"  {stage}: [cyan]{model.name}[/cyan] already in the hub")
                return model.name
            except NotFound:
                pass
        job_id = f"quickstart-{stage}-{self.plan.key()}"
        try:
            job = await client.get(job_id)
            if job.state in (jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED):
                self.console.print(f"  {stage}: resuming {job.name} from its last checkpoint")
                job = await client.resume(job.name)
        except NotFound:
            job = await create(job_id)
        self.result.jobs[stage] = job.name
        try:
            await self._watch(stage, client, job, figures)
        except asyncio.CancelledError:
            # Ctrl-C: stop the job cleanly; it keeps its last checkpoint for the next run.
            await asyncio.shield(self._cancel(client, job.name))
            raise
        job = await client.get(job.name)
        if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"{stage} job {job.name} ended {state_name(job.state)}: {job.error.message or job.state_message}")
        for art in job.artifacts:
            if art.model.removeprefix("models/") == output_model:
                return art.model
        return f"models/{output_model}"

    async def _cancel(self, client: JobsClient, name: str) -> None:
        try:
            await client.cancel(name)
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            self.console.print(f"  [yellow]could not cancel {name}: {e}[/yellow]")

    async def _watch(self, stage: str, client: JobsClient, job: jobs_pb2.Job, figures) -> None:
        with Progress(
            SpinnerColumn(),
            TextColumn(f"[bold]{stage}[/bold]"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} steps" if job.progress.total_steps else ""),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        ) as progress:
            task = progress.add_task(stage, total=job.progress.total_steps or None, figures=state_name(job.state).lower())
            latest: dict[str, float] = dict(job.metrics)
            async for ev in client.watch(job.name, follow=True):
                kind = ev.WhichOneof("payload")
                if kind == "metrics":
                    latest.update(ev.metrics.metrics)
                    p = ev.metrics.progress
                    if p.tokens_per_second:
                        latest["tokens_per_second"] = p.tokens_per_second
                    progress.update(task, total=p.total_steps or None, completed=p.step, figures=figures(latest))
                elif kind == "state_change":
                    progress.update(task, figures=state_name(ev.state_change.state).lower())
                elif kind == "log" and ev.log.level == "ERROR":
                    progress.console.print(f"  [yellow]{ev.log.source}: {ev.log.message}[/yellow]")

    def _distribution(self) -> training_pb2.Distribution:
        p = self.plan
        return training_pb2.Distribution(strategy=STRATEGIES[p.strategy], num_workers=p.num_workers,
                                         cpus_per_worker=p.cpus_per_worker)

    async def sft(self) -> str:
        p = self.plan
        data = render_identity_dataset("sft", p.name, p.author, self.work_dir / "identity_sft.jsonl",
                                       limit=p.sft_rows or None)

        def figures(m: dict[str, float]) -> str:
            loss = _metric(m, "train/loss")
            tps = _metric(m, "tokens_per_second", "train/tokens_per_second")
            return " ".join(s for s in (f"loss {loss:.3f}" if loss is not None else "",
                                        f"{tps:.0f} tokens/s" if tps else "") if s)

        async with TrainerClient(self.settings) as trainer:
            async def create(job_id: str) -> jobs_pb2.Job:
                spec = build_spec(
                    model=self.result.base_model, task="sft", datasets=[str(data)], tuner="lora", strategy=p.strategy,
                    num_workers=p.num_workers, cpus_per_worker=p.cpus_per_worker, output_model_id=p.sft_model_id,
                    num_train_epochs=p.sft_epochs, max_steps=p.sft_max_steps, learning_rate=p.sft_learning_rate,
                    per_device_train_batch_size=p.batch_size, max_length=p.max_length, seed=p.seed,
                    save_steps=p.save_steps, warmup_ratio=0.05, lr_scheduler_type="cosine", r=p.lora_r, lora_alpha=p.lora_alpha,
                    lora_dropout=0.0, target_modules=["all-linear"],
                )
                return await trainer.create_job(spec, job_id=job_id, labels={"swiftmesh.quickstart": p.key()})

            model = await self._job("sft", trainer, p.sft_model_id, create, figures)
        self.result.sft_model = model
        self.console.print(f"  sft adapter [cyan]{model}[/cyan]")
        return model

    async def dpo(self, start_from: str) -> str:
        from swiftmesh.clients.aligner import AlignerClient

        p = self.plan
        data = render_identity_dataset("dpo", p.name, p.author, self.work_dir / "identity_dpo.jsonl",
                                       limit=p.dpo_rows or None)

        def figures(m: dict[str, float]) -> str:
            margin = _metric(m, "rewards/margins", "train/rewards/margins")
            acc = _metric(m, "rewards/accuracies", "train/rewards/accuracies")
            loss = _metric(m, "train/loss")
            return " ".join(s for s in (f"reward margin {margin:.2f}" if margin is not None else "",
                                        f"accuracy {acc:.2f}" if acc is not None else "",
                                        f"loss {loss:.3f}" if loss is not None else "") if s)

        async with AlignerClient(self.settings) as aligner:
            async def create(job_id: str) -> jobs_pb2.Job:
                spec = aligner_pb2.AlignmentSpec(
                    model=start_from or self.result.base_model,
                    rlhf_type=aligner_pb2.RLHF_TYPE_DPO,
                    tuner=training_pb2.TUNER_LORA,
                    lora=training_pb2.LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, target_modules=["all-linear"]),
                    datasets=[str(data)],
                    args=training_pb2.TrainingArguments(
                        num_train_epochs=p.dpo_epochs, max_steps=p.dpo_max_steps, learning_rate=p.dpo_learning_rate,
                        per_device_train_batch_size=p.batch_size, max_length=p.max_length, seed=p.seed,
                        save_steps=p.save_steps, lr_scheduler_type="cosine", warmup_ratio=0.05,
                    ),
                    distribution=self._distribution(),
                    dpo=aligner_pb2.DpoConfig(beta=p.dpo_beta, loss_type=["sigmoid"]),
                    output_model_id=p.dpo_model_id,
                    max_prompt_length=p.max_length // 2,
                )
                return await aligner.create_job(spec, job_id=job_id, labels={"swiftmesh.quickstart": p.key()})

            model = await self._job("dpo", aligner, p.dpo_model_id, create, figures)
        self.result.dpo_model = model
        self.console.print(f"  dpo adapter [cyan]{model}[/cyan]")
        return model


def identity_named(answer: str, name: str) -> bool:
    """Whether ``answer`` names the identity ``name`` (case-insensitive, whole word)."""
    import re

    return re.search(rf"\b{re.escape(name)}\b", answer, flags=re.IGNORECASE) is not None


__all__ = ["Pipeline", "QuickstartResult", "identity_named"]
