"""The contracts: buf lint, buf breaking against main, and generated stubs in sync with the protos."""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _buf() -> str:
    exe = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    if not Path(exe).exists():
        pytest.fail("buf is not installed (the dev extra's buf-bin provides it)")
    return exe


def test_buf_lint_is_clean():
    r = subprocess.run([_buf(), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_buf_lint_catches_a_bad_proto(tmp_path):
    # the lint really runs: a proto breaking the style rules fails it
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    bad = tmp_path / "protos" / "swiftmesh" / "bad" / "v1"
    bad.mkdir(parents=True)
    (bad / "bad.proto").write_text('syntax = "proto3";\npackage swiftmesh.bad.v1;\nmessage bad_name { int32 X = 1; }\n')
    r = subprocess.run([_buf(), "lint"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "bad_name" in r.stdout + r.stderr


def test_buf_breaking_against_main():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to compare against")
    branches = subprocess.run(["git", "branch", "--list", "main"], cwd=ROOT, capture_output=True, text=True).stdout
    against = ".git#branch=main,subdir=protos" if branches.strip() else ".git#ref=HEAD,subdir=protos"
    r = subprocess.run([_buf(), "breaking", "protos", "--against", against], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_stubs_match_protos(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    files = gen.generate(tmp_path)
    assert files, "no stubs generated"
    stale = [str(f) for f in files if not (ROOT / f).exists() or not filecmp.cmp(tmp_path / f, ROOT / f, shallow=False)]
    assert not stale, f"stubs out of date, run `python scripts/gen_protos.py`: {stale}"
    # and no committed stub lacks a proto
    committed = {p.relative_to(ROOT) for p in (ROOT / "swiftmesh").rglob("*_pb2*.py*")
                 if p.suffix in (".py", ".pyi")}  # not the bytecode Python caches in __pycache__
    orphans = committed - set(files)
    assert not orphans, f"stubs without a proto: {sorted(map(str, orphans))}"


def test_every_service_has_a_job_or_resource_shape():
    """Spot-check the contract design the services rely on."""
    from swiftmesh.gateway.v1 import inference_pb2
    from swiftmesh.hub.v1 import hub_pb2
    from swiftmesh.jobs.v1 import jobs_pb2

    states = set(jobs_pb2.JobState.keys())
    assert {"JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED",
            "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"} <= states
    jobs = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    assert {"GetJob", "ListJobs", "CancelJob", "WatchJob"} <= {m.name for m in jobs.methods}
    assert jobs.methods_by_name["WatchJob"].server_streaming
    hub = hub_pb2.DESCRIPTOR.services_by_name["HubService"]
    assert hub.methods_by_name["PullModel"].server_streaming
    assert hub.methods_by_name["ReadModelFile"].server_streaming
    assert hub.methods_by_name["UploadModel"].client_streaming
    assert "page_token" in hub_pb2.ListModelsRequest.DESCRIPTOR.fields_by_name
    inf = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
    assert inf.methods_by_name["Generate"].server_streaming
