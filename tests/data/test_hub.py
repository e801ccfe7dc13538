"""`swiftmesh data preview` against a real hub on loopback: a dataset registered in the hub
(``models/{name}``, the hub's dataset format) rendered with a model the hub holds (--model NAME)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from swiftmesh.cli.main import app
from swiftmesh.clients.hub import format_value
from swiftmesh.clients.hub_blocking import upload_dir_sync
from swiftmesh.testing.services import start_in_process


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_model_dir):
    from swiftmesh.testing.services import settings_for

    settings = settings_for(tmp_path_factory.mktemp("hubdata"))
    svc = start_in_process("hub", settings)
    ds = tmp_path_factory.mktemp("ds")
    (ds / "part1.jsonl").write_text("".join(json.dumps({"instruction": f"What is {i}+{i}?", "chosen": str(2 * i),
                                                        "rejected": str(2 * i + 1)}) + "\n" for i in range(6)))
    upload_dir_sync(settings, ds, "prefs", format=format_value("dataset"))
    upload_dir_sync(settings, tiny_model_dir, "tiny", format=format_value("full"))
    yield settings
    svc.stop()


def test_preview_hub_dataset_with_hub_model(hub, tmp_path):
    env = {"SWIFTMESH_DATA_DIR": str(tmp_path / "client")}
    r = CliRunner().invoke(app, ["data", "preview", "models/prefs#4", "--method", "dpo", "--model", "tiny",
                                 "--hub", hub.hub.target, "--rows", "1"], env=env)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "6 rows read, 4 training rows" in out and "rows as instruction/chosen/rejected" in out
    assert "<|im_start|>user" in out and "⟦" in out and "4 rows: min" in out
    r = CliRunner().invoke(app, ["data", "preview", "models/nope", "--method", "dpo", "--hub", hub.hub.target], env=env)
    assert r.exit_code == 1 and "nope" in r.output
