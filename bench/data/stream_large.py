"""Issue 19's large-file check: a generated multi-GB JSONL previewed (`swiftmesh data preview`'s
domain) and ``#N``-sampled (the aligner's and trainer's loaders) with bounded memory, measured.

    .venv/bin/python bench/data/stream_large.py --size_gb 2 [--dir /tmp] [--out bench/data/results.json]

Each measurement runs in its own subprocess (preview and sample side by side) and reports the
peak RSS growth over the process's peak after its imports (getrusage ru_maxrss), the wall and CPU
seconds, and MB of JSONL per CPU second. The file is a
block of 1000 distinct rows repeated (``swiftmesh.testing.datasets.write_large_jsonl``) and is
deleted afterwards. The ``whole`` mode (every row kept, as a job without ``#N`` does) is run only
on a small file (``--whole_mb``) for contrast: it grows with the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = r"""
import sys, time
from swiftmesh.testing.datasets import peak_rss_bytes
from swiftmesh.jobkit.data import load_alignment_data, load_source
from swiftmesh.jobkit.data.preview import preview_dataset
import datasets, pyarrow  # noqa: F401  (imported before the baseline, as in a job)
path, what, kind = sys.argv[1], sys.argv[2], sys.argv[3]
method = "sft" if kind == "sft" else "dpo"
base = peak_rss_bytes()
t, c = time.perf_counter(), time.process_time()
if what == "preview":
    n = preview_dataset([path], method, stats_rows=1000).rows_read
elif what == "sample":
    n = len(load_source(path + "#1000", 0, task="sft").rows) if kind == "sft" else len(load_alignment_data([path + "#1000"], "dpo"))
else:
    n = len(load_source(path, 0, task="sft").rows) if kind == "sft" else len(load_alignment_data([path], "dpo"))
print(f"{n} {peak_rss_bytes() - base} {time.perf_counter() - t} {time.process_time() - c}")
"""


def start(path: Path, what: str, kind: str) -> subprocess.Popen:
    """One mode in a fresh interpreter (the modes run side by side)."""
    return subprocess.Popen([sys.executable, "-c", PROBE, str(path), what, kind], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen, path: Path, what: str, kind: str) -> dict:
    """Rows, peak RSS growth, wall and CPU seconds of a finished mode (CPU time is what to compare
    on a loaded machine; throughput is given per CPU second)."""
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{what} failed: {stderr[-2000:]}")
    out = stdout.split()
    rows, grew, secs, cpu = int(out[-4]), int(out[-3]), float(out[-2]), float(out[-1])
    size = path.stat().st_size
    return {"mode": what, "kind": kind, "file_bytes": size, "rows": rows,
            "peak_rss_growth_mib": round(grew / 2**20, 1), "wall_s": round(secs, 1), "cpu_s": round(cpu, 1),
            "mb_per_cpu_s": round(size / 1e6 / cpu, 1)}


def main() -> None:
    from swiftmesh.testing.datasets import write_large_jsonl

    ap = argparse.ArgumentParser()
    ap.add_argument("--size_gb", type=float, default=2.0)
    ap.add_argument("--whole_mb", type=float, default=50.0)
    ap.add_argument("--kind", default="dpo", choices=["dpo", "sft"])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        small = Path(d) / "small.jsonl"
        write_large_jsonl(small, int(a.whole_mb * 1e6), a.kind)
        results.append(result(start(small, "whole", a.kind), small, "whole", a.kind))
        print(json.dumps(results[-1]), flush=True)
        small.unlink()
        big = Path(d) / "big.jsonl"
        t = time.perf_counter()
        write_large_jsonl(big, int(a.size_gb * 1e9), a.kind)
        print(f"wrote {big.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s", flush=True)
        procs = {what: start(big, what, a.kind) for what in ("preview", "sample")}
        for what, proc in procs.items():
            results.append(result(proc, big, what, a.kind))
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps(results, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
