"""`swiftmesh pull` and `swiftmesh models ls|show|rm|verify` against an in-process hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from swiftmesh.cli.main import app
from tests.hub.helpers import sha256_file


def _run(h, *args: str):
    env = {"SWIFTMESH_DATA_DIR": str(h.settings.data_dir), "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_cli_pull_and_models_commands(hub_server, small_model, tmp_path, monkeypatch):
    h = hub_server()
    monkeypatch.chdir(small_model.parent)
    r = _run(h, "pull", "small", "--name", "org/small", "--label", "team=nlp", "--hub", h.target)  # relative path
    assert r.exit_code == 0, r.output
    assert "pulled models/org/small" in r.output
    assert "3/3 files" in r.output  # the progress bar's last state
    assert "100%" in r.output

    r = _run(h, "models", "ls", "--json", "--hub", h.target)
    assert r.exit_code == 0, r.output
    models = json.loads(r.stdout)
    assert [m["name"] for m in models] == ["models/org/small"]
    assert models[0]["labels"] == {"team": "nlp"}

    r = _run(h, "models", "ls", "--hub", h.target)
    assert "models/org/small" in r.output and "full" in r.output

    r = _run(h, "models", "show", "org/small", "--hub", h.target)
    assert r.exit_code == 0, r.output
    assert sha256_file(small_model / "model.safetensors") in r.output
    path = Path(json.loads(_run(h, "models", "show", "org/small", "--json", "--hub", h.target).stdout)["location"]["path"])

    assert _run(h, "models", "verify", "org/small", "--hub", h.target).exit_code == 0
    os.chmod(path / "config.json", 0o644)
    (path / "config.json").write_text("{}")
    r = _run(h, "models", "verify", "org/small", "--hub", h.target)
    assert r.exit_code == 1 and "corrupt" in r.output
    r = _run(h, "models", "verify", "org/small", "--repair", "--hub", h.target)
    assert r.exit_code == 0 and "repaired" in r.output

    r = _run(h, "pull", str(small_model), "--name", "../bad", "--hub", h.target)
    assert r.exit_code == 1
    assert "INVALID_ARGUMENT" in r.output and "model_id" in r.output

    r = _run(h, "models", "rm", "org/small", "--hub", h.target)
    assert r.exit_code == 0 and "deleted models/org/small" in r.output
    r = _run(h, "models", "rm", "org/small", "--hub", h.target)
    assert r.exit_code == 1 and "NOT_FOUND" in r.output
