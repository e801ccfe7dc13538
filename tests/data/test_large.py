"""A large generated JSONL is previewed and ``#N``-sampled in bounded memory, measured in a
fresh interpreter (peak RSS growth after the imports, getrusage). The file here is 30 MB, so the
test stays quick on 2 busy cores (~5 CPU-s a case); keeping every row of it (a job without ``#N``)
grows the peak by ~215 MiB (7x the file: 359 MiB measured for 50 MB), so the 48 MiB bound below
fails on any whole-file load. The subprocess timeout only guards against a hang. The 2 GB run is
``bench/data/stream_large.py`` (numbers in bench/data/README.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from swiftmesh.testing.datasets import write_large_jsonl

PROBE = r"""
import sys
from swiftmesh.testing.datasets import peak_rss_bytes
from swiftmesh.jobkit.data import load_alignment_data, load_source
from swiftmesh.jobkit.data.preview import preview_dataset
import datasets, pyarrow  # noqa: F401
dpo, sft = sys.argv[1], sys.argv[2]
base = peak_rss_bytes()
p = preview_dataset([dpo], "dpo", stats_rows=500, show=2)
assert p.rows_kept == p.rows_read and len(p.first) == 2
print("preview", p.rows_read, peak_rss_bytes() - base)
data = load_alignment_data([dpo + "#500"], "dpo", seed=3)
assert len({r["prompt"][0]["content"] for r in data.rows}) > 100  # drawn from all over the file
print("sample_dpo", len(data), peak_rss_bytes() - base)
print("sample_sft", len(load_source(sft + "#500", 0, task="sft", seed=3).rows), peak_rss_bytes() - base)
"""
BOUND = 48 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    dpo = d / "dpo.jsonl"
    sft = d / "sft.jsonl"
    rows = write_large_jsonl(dpo, 30_000_000, "dpo")
    write_large_jsonl(sft, 30_000_000, "sft")
    yield dpo, sft, rows
    dpo.unlink()
    sft.unlink()


def test_large_file_streams_in_bounded_memory(big):
    """One interpreter runs the three in turn; the peak only grows, so each line bounds them all so far."""
    dpo, sft, rows = big
    out = subprocess.run([sys.executable, "-c", PROBE, str(dpo), str(sft)], check=False, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = {line.split()[0]: (int(line.split()[1]), int(line.split()[2])) for line in out.stdout.splitlines()}
    assert seen["preview"][0] == rows and seen["sample_dpo"][0] == seen["sample_sft"][0] == 500
    for what, (_, grew) in seen.items():
        assert grew < BOUND, f"{what}: peak RSS grew {grew / 2**20:.0f} MiB on {dpo.stat().st_size / 1e6:.0f} MB files"
