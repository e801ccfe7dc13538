"""The `swiftmesh` CLI: up / status / Ctrl-C, --help everywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from typer.testing import CliRunner

from swiftmesh.cli.main import app
from swiftmesh.testing.services import child_env, settings_for


def _commands(group, prefix=()):
    import typer.main

    click_cmd = typer.main.get_command(group)
    out = []

    def walk(cmd, path):
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(click_cmd, prefix)
    return out


def test_help_on_every_command():
    runner = CliRunner()
    for path in _commands(app):
        r = runner.invoke(app, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "Usage" in r.output


def test_unknown_service_is_a_clear_error():
    r = CliRunner().invoke(app, ["serve", "nosuch"])
    assert r.exit_code == 2 and "unknown service 'nosuch'" in r.output


@pytest.fixture
def stack_env(tmp_path):
    """The environment of a `swiftmesh up` with every service on a free port under tmp_path."""
    return child_env(settings_for(tmp_path / "data"))


def test_up_then_status_then_ctrl_c_leaves_no_process(stack_env):
    exe = [sys.executable, "-m", "swiftmesh.cli.main"]
    up = subprocess.Popen([*exe, "up"], env=stack_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
    try:
        output = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        assert any("Press Ctrl-C" in ln for ln in output), "".join(output)
        descendants = psutil.Process(up.pid).children(recursive=True)
        assert len(descendants) >= 5

        r = subprocess.run([*exe, "status", "--json"], env=stack_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        health = json.loads(r.stdout)
        assert set(health) == {"hub", "trainer", "aligner", "worker", "gateway"}
        assert all(v["health"] == "SERVING" for v in health.values()), health

        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.wait(timeout=90) == 0
        time.sleep(0.5)
        alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.name()) for p in alive]
        r = subprocess.run([*exe, "status", "--json"], env=stack_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "UNREACHABLE" in r.stdout
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
