"""Issue 19's large-file check: a generated multi-GB JSONL previewed (`swiftmesh data preview`'s
domain) and ``#N``-sampled (the aligner's and trainer's loaders) with bounded memory, measured.

    .venv/bin/python bench/data/stream_large.py --size_gb 2 [--dir /tmp] [--out bench/data/results.json]

Each measurement runs in its own subprocess and reports the peak RSS growth over the process's
peak after its imports (getrusage ru_maxrss), the wall time and the rows per second. The file is a
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
t = time.perf_counter()
if what == "preview":
    n = preview_dataset([path], method, stats_rows=1000).rows_read
elif what == "sample":
    n = len(load_source(path + "#1000", 0, task="sft").rows) if kind == "sft" else len(load_alignment_data([path + "#1000"], "dpo"))
else:
    n = len(load_source(path, 0, task="sft").rows) if kind == "sft" else len(load_alignment_data([path], "dpo"))
print(f"{n} {peak_rss_bytes() - base} {time.perf_counter() - t}")
"""


def measure(path: Path, what: str, kind: str) -> dict:
    """Run one mode in a fresh interpreter: rows, peak RSS growth (bytes) and seconds."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), what, kind], check=True, capture_output=True,
                         text=True).stdout.split()
    rows, grew, secs = int(out[-3]), int(out[-2]), float(out[-1])
    return {"mode": what, "kind": kind, "file_bytes": path.stat().st_size, "rows": rows,
            "peak_rss_growth_mib": round(grew / 2**20, 1), "seconds": round(secs, 1),
            "rows_per_s": round(rows / secs) if what != "sample" else None,
            "mb_per_s": round(path.stat().st_size / 1e6 / secs, 1)}


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
        results.append(measure(small, "whole", a.kind))
        small.unlink()
        big = Path(d) / "big.jsonl"
        t = time.perf_counter()
        write_large_jsonl(big, int(a.size_gb * 1e9), a.kind)
        print(f"wrote {big.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s", flush=True)
        for what in ("preview", "sample"):
            results.append(measure(big, what, a.kind))
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps(results, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
