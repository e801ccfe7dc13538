"""A toy job kind for tests and as an example of the plug-in interface without an HF trainer.

:class:`ToyKind` fits ``y = 3x + 1`` with a one-weight linear model on the rows it is given,
reporting ``train/loss`` each step, saving a checkpoint every ``save_steps`` steps (all ranks,
through ``ctx.save_checkpoint``), sleeping ``step_seconds`` per step (to make room for cancel
tests), and resuming from ``ctx.resume_from``. Its spec is a plain dict (a
``google.protobuf.Struct`` on the wire) with keys ``steps``, ``save_steps``, ``step_seconds``, ``num_workers``, ``fail`` (raise at that step),
``output`` ("models/x" to upload the final weights as a "full" artifact).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from swiftmesh.jobkit.estimate import Estimate
from swiftmesh.jobkit.kinds import Artifact, JobKind, JobPlan, PrepareContext
from swiftmesh.runtime.errors import InvalidArgument


class ToyKind(JobKind):
    """The toy linear fit (see the module docstring)."""

    name = "toy"
    spec_type = dict

    def prepare(self, spec: dict, ctx: PrepareContext) -> JobPlan:
        """Plan ``spec["steps"]`` steps over 20 rows (``spec["notes"]``: extra plan notes);
        InvalidArgument for steps <= 0."""
        cfg = dict(spec)
        steps = int(cfg.get("steps", 10))
        if steps <= 0:
            raise InvalidArgument("steps must be > 0", field_violations=[("spec.steps", f"got {steps}")])
        rows = [{"x": i / 10.0, "y": 3 * i / 10.0 + 1} for i in range(20)]
        return JobPlan(
            config={
                "steps": steps,
                "save_steps": int(cfg.get("save_steps", 3)),
                "step_seconds": float(cfg.get("step_seconds", 0.0)),
                "fail": int(cfg.get("fail", 0)),
                "output": str(cfg.get("output", "")),
            },
            data={"train": rows},
            num_workers=int(cfg.get("num_workers", 1)),
            cpus_per_worker=1.0,
            total_steps=steps,
            max_failures=int(cfg.get("max_failures", 1)),
            checkpoints_to_keep=2,
            notes=[f"toy job: {steps} steps", *cfg.get("notes", [])],
        )

    def estimate(self, spec, ctx) -> Estimate:
        """1 MiB of 1 GiB: always fits."""
        return Estimate(total_bytes_per_worker=1 << 20, available_bytes_per_worker=1 << 30, fits=True)

    def train(self, ctx) -> list[Artifact]:
        """Fit the line, reporting and checkpointing as it goes."""
        import torch
        import torch.distributed as dist

        cfg = ctx.config
        torch.manual_seed(0)
        w = torch.zeros(2, requires_grad=True)
        opt = torch.optim.SGD([w], lr=0.1)
        start = 0
        if ctx.resume_from is not None:
            state = json.loads((ctx.resume_from / "state.json").read_text())
            w.data = torch.tensor(state["w"])
            start = state["step"]
            ctx.log(f"resumed at step {start}")
        xs = torch.tensor([r["x"] for r in ctx.data["train"]])
        ys = torch.tensor([r["y"] for r in ctx.data["train"]])
        for step in range(start + 1, cfg["steps"] + 1):
            if cfg["fail"] and step == cfg["fail"] and ctx.attempt == 1:
                raise RuntimeError(f"toy failure at step {step}")
            opt.zero_grad()
            loss = ((w[0] * xs + w[1] - ys) ** 2).mean()
            loss.backward()
            if dist.is_available() and dist.is_initialized() and ctx.world_size > 1:
                dist.all_reduce(w.grad)
                w.grad /= ctx.world_size
            opt.step()
            time.sleep(cfg["step_seconds"])
            ctx.report_metrics(step, {"train/loss": loss.item()}, total_steps=cfg["steps"], epoch=step / cfg["steps"])
            if step % cfg["save_steps"] == 0 or step == cfg["steps"]:
                d = ctx.work_dir / f"checkpoint-{step}"
                d.mkdir(parents=True, exist_ok=True)
                if ctx.is_main:
                    (d / "state.json").write_text(json.dumps({"w": w.tolist(), "step": step}))
                ctx.save_checkpoint(d if ctx.is_main else None, step)
        out = ctx.work_dir / "final"
        out.mkdir(parents=True, exist_ok=True)
        (out / "weights.json").write_text(json.dumps({"w": w.tolist()}))
        if cfg["output"]:
            return [Artifact(out, model_id=cfg["output"].removeprefix("models/"), kind="full", format="full")]
        return []


def final_weights(path: str | Path) -> list[float]:
    """The two weights a ToyKind run saved in ``path``."""
    return json.loads((Path(path) / "weights.json").read_text())["w"]
