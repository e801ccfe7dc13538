"""A large generated JSONL is previewed and ``#N``-sampled in bounded memory, measured in a
fresh interpreter (peak RSS growth after the imports, getrusage). The file here is 40 MB, so the
test stays quick on 2 busy cores; keeping every row of it (a job without ``#N``) grows the peak by
~300 MiB (7-8x the file), so the 48 MiB bound below fails on any whole-file load. The 2 GB run is
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
path, what = sys.argv[1], sys.argv[2]
base = peak_rss_bytes()
if what == "preview":
    p = preview_dataset([path], "dpo", stats_rows=500, show=2)
    n = p.rows_read
    assert p.rows_kept == n and len(p.first) == 2
elif what == "sample_dpo":
    data = load_alignment_data([path + "#500"], "dpo", seed=3)
    n = len(data)
    assert len({r["prompt"][0]["content"] for r in data.rows}) > 100  # drawn from all over the file
else:
    n = len(load_source(path + "#500", 0, task="sft", seed=3).rows)
print(n, peak_rss_bytes() - base)
"""
BOUND = 48 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    dpo = d / "dpo.jsonl"
    sft = d / "sft.jsonl"
    rows = write_large_jsonl(dpo, 40_000_000, "dpo")
    write_large_jsonl(sft, 40_000_000, "sft")
    yield dpo, sft, rows
    dpo.unlink()
    sft.unlink()


@pytest.mark.parametrize("what", ["preview", "sample_dpo", "sample_sft"])
def test_large_file_streams_in_bounded_memory(big, what):
    dpo, sft, rows = big
    path = sft if what == "sample_sft" else dpo
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), what], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    n, grew = (int(x) for x in out.stdout.split()[-2:])
    assert n == (rows if what == "preview" else 500)
    assert grew < BOUND, f"{what}: peak RSS grew {grew / 2**20:.0f} MiB on a {path.stat().st_size / 1e6:.0f} MB file"
