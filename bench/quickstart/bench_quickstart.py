"""Wall time of each stage of the full default `swiftmesh quickstart`, and its quality check.

    python bench/quickstart/bench_quickstart.py [--out bench/quickstart/results.json]

Runs exactly what a new user runs (``swiftmesh quickstart --yes``, every default: SmolLM2-135M-
Instruct from the packaged GGUF, LoRA SFT for 3 epochs on the identity dataset, DPO for 1 epoch on
its preference pairs, the transformers engine) in a fresh data directory on free loopback ports,
so nothing is reused from an earlier run. Then it runs the same command a second time in the same
data directory: that run must pick up what is done (no download, no training) and only serve.

Reported (``results.json``): the wall time of the whole command (services started and stopped
included) and of each stage as the quickstart measured it (``pull``, ``before``, ``sft``,
``dpo``, ``after``), against the goal of 15 minutes end to end on 2 CPU cores (``goal_ratio`` =
goal / wall time: above 1.0 meets it); the answers before and after and whether the one after
names the new identity; serving tokens/s; the machine (CPUs, load average before and after,
which says how quiet it was).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOAL_S = 15 * 60


def _env(data_dir: Path) -> dict[str, str]:
    """This environment with every service on a free loopback port under ``data_dir``, metrics
    off, and none of this shell's own SWIFTMESH_* settings or RAY_ADDRESS (the test harness's)."""
    from swiftmesh.testing.services import child_env, settings_for

    return child_env(settings_for(data_dir), unset=("RAY_ADDRESS",))


def _run(env: dict[str, str], report: Path, log: Path) -> dict:
    cmd = [sys.executable, "-m", "swiftmesh.cli.main", "quickstart", "--yes", "--report", str(report)]
    start = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            check=False).returncode
    wall = time.monotonic() - start
    if rc != 0:
        raise SystemExit(f"quickstart exited {rc}; see {log}:\n{log.read_text()[-3000:]}")
    r = json.loads(report.read_text())
    return {
        "wall_seconds": round(wall, 1),
        "stage_seconds": r["stage_seconds"],
        "answer_before": r["answer_before"],
        "answer_after": r["answer_after"],
        "named_after": r["named_after"],
        "serving_tokens_per_second": round(r.get("serving_tokens_per_second", 0.0), 2),
        "models": {k: r.get(k) for k in ("base_model", "sft_model", "dpo_model")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench/quickstart/results.json")
    ap.add_argument("--data-dir", type=Path, help="Fresh directory for the run (default: a new temp dir, removed after).")
    ap.add_argument("--no-rerun", action="store_true", help="Skip the second (pick-up-what-is-done) run.")
    a = ap.parse_args()

    data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="swiftmesh-bench-qs-"))
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"--data-dir {data_dir} is not empty; the benchmark measures a fresh run")
    data_dir.mkdir(parents=True, exist_ok=True)
    env = _env(data_dir)
    load_before = os.getloadavg()
    try:
        first = _run(env, data_dir / "report-1.json", data_dir / "quickstart-1.log")
        print(f"first run: {first['wall_seconds']:.0f} s, stages {first['stage_seconds']}", flush=True)
        rerun = None if a.no_rerun else _run(env, data_dir / "report-2.json", data_dir / "quickstart-2.log")
        if rerun:
            print(f"second run: {rerun['wall_seconds']:.0f} s, stages {rerun['stage_seconds']}", flush=True)
        load_after = os.getloadavg()
    finally:
        if a.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "goal_seconds": GOAL_S,
        "first_run": first,
        "goal_ratio": round(GOAL_S / first["wall_seconds"], 2),
        "second_run": rerun,
        "date": time.strftime("%Y-%m-%d"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
