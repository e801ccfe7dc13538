"""`swiftmesh keys`, `swiftmesh workers`, `swiftmesh chat` and `swiftmesh deploy --worker`
against a running gateway and worker."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from swiftmesh.cli.main import app
from tests.gateway.api.conftest import start_extra_gateway


@pytest.fixture(scope="module")
def secured(stack, tmp_path_factory):
    """A gateway requiring API keys (and the service token on its gRPC admin service)."""
    other = start_extra_gateway(stack, tmp_path_factory.mktemp("cli"), auth_token="tok",
                                gateway={"require_api_key": True})
    yield other
    stack.run(other.gateway.stop(0.5))


def _env(s) -> dict[str, str]:
    env = {
        "SWIFTMESH_DATA_DIR": str(s.settings.data_dir),
        "SWIFTMESH_GATEWAY__PORT": str(s.gateway.port),
        "SWIFTMESH_GATEWAY__HTTP_PORT": str(s.gateway_service.http_port),
        "SWIFTMESH_API_KEY": "",
        "OPENAI_API_KEY": "",
    }
    if s.settings.auth_token is not None:
        env["SWIFTMESH_AUTH_TOKEN"] = s.settings.auth_token.get_secret_value()
    return env


def _run(s, *args, input: str | None = None, env: dict | None = None):
    result = CliRunner().invoke(app, list(args), env={**_env(s), **(env or {})}, input=input)
    return result


def test_keys_create_ls_rm_and_use(secured):
    r = _run(secured, "keys", "create", "--name", "ci", "--rpm", "60", "--tpm", "1000", "--json")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["secret"].startswith("sk-") and created["name"].startswith("apiKeys/")
    assert created["requests_per_minute"] == 60 and created["tokens_per_minute"] == 1000

    r = _run(secured, "keys", "ls", "--json")
    assert r.exit_code == 0, r.output
    listed = {k["name"]: k for k in json.loads(r.stdout)}
    assert listed[created["name"]]["display_name"] == "ci"
    assert created["secret"] not in r.output and created["secret"].startswith(listed[created["name"]]["prefix"])
    assert _run(secured, "keys", "ls").exit_code == 0  # the table

    # The key works on the REST API.
    reply = secured.client(api_key=created["secret"]).chat.completions.create(
        model=secured.model, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert reply.usage.completion_tokens == 1
    # Its usage is listed: one request and its prompt + completion tokens.
    r = _run(secured, "keys", "ls", "--json")
    used = next(k for k in json.loads(r.stdout) if k["name"] == created["name"])
    assert used["requests"] == 1 and used["tokens"] == reply.usage.total_tokens and used["last_use_time"] > 0

    r = _run(secured, "keys", "rm", created["name"])
    assert r.exit_code == 0, r.output
    r = _run(secured, "keys", "rm", created["name"])
    assert r.exit_code == 1 and "NOT_FOUND" in r.output
    r = _run(secured, "keys", "create", "--rpm", "-1")
    assert r.exit_code == 1 and "requests_per_minute" in r.output


def test_keys_need_the_service_token(secured):
    r = _run(secured, "keys", "ls", env={"SWIFTMESH_AUTH_TOKEN": "wrong"})
    assert r.exit_code == 1 and "UNAUTHENTICATED" in r.output


def test_workers_ls(stack):
    r = _run(stack, "workers", "ls", "--json")
    assert r.exit_code == 0, r.output
    workers = {w["address"]: w for w in json.loads(r.stdout)}
    assert set(workers) == set(stack.settings.gateway.workers)
    main = workers[stack.settings.gateway.workers[0]]
    assert main["healthy"] and main["models"] == [stack.model]


def test_chat_streams_through_the_gateway(secured):
    _, secret = secured.gateway_service.keys.create("chat")
    r = _run(secured, "chat", secured.model, "--max-tokens", "6", "--temperature", "1", "--seed", "3",
             input="Hello\n/reset\nWhat is the capital of France?\n/exit\n", env={"SWIFTMESH_API_KEY": secret})
    assert r.exit_code == 0, r.output
    assert "(conversation reset)" in r.output
    # The answers are what the API gives for each question alone (the history was reset).
    api = secured.client(api_key=secret)
    for question in ("Hello", "What is the capital of France?"):
        expected = api.chat.completions.create(
            model=secured.model, messages=[{"role": "user", "content": question}], max_tokens=6, temperature=1,
            seed=3).choices[0].message.content
        assert expected.strip() and expected in r.output


def test_chat_reports_errors(secured):
    r = _run(secured, "chat", "no-such-model", input="hi\n", env={"SWIFTMESH_API_KEY": "tok"})
    assert r.exit_code == 1 and "404" in r.output
    r = _run(secured, "chat", secured.model, input="hi\n", env={"SWIFTMESH_API_KEY": "sk-bad", "SWIFTMESH_AUTH_TOKEN": None})
    assert r.exit_code == 1 and "401" in r.output


def test_deploy_beside_a_running_worker_picks_free_ports(stack, tmp_path):
    """Issue 14: a second `swiftmesh deploy` where `swiftmesh up` already runs a worker (its gRPC
    and metrics ports taken) starts the new worker on free ports, says so, and it serves."""
    import os
    import signal
    import socket
    import time

    held = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        held.append(s)
    taken_port, taken_metrics = (s.getsockname()[1] for s in held)
    env = {"SWIFTMESH_DATA_DIR": str(tmp_path), "SWIFTMESH_WORKER__PORT": str(taken_port),
           "SWIFTMESH_WORKER__METRICS_PORT": str(taken_metrics), "SWIFTMESH_WORKER__DEVICE": "cpu",
           "OMP_NUM_THREADS": "1"}
    try:
        r = _run(stack, "deploy", "--model", str(stack.model_dir), "--timeout", "180", env=env)
        out = " ".join(r.output.split())
        assert r.exit_code == 0, r.output
        assert f"worker port {taken_port} is taken" in out and f"metrics port {taken_metrics} is taken" in out
        assert stack.model in out
        r = _run(stack, "workers", "ls", "--json")
        assert taken_port not in [int(w["address"].rsplit(":", 1)[1]) for w in json.loads(r.stdout)]
    finally:
        for s in held:
            s.close()
        for pid_file in (tmp_path / "logs").glob("worker-*.pid"):
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)  # drains and deregisters from the gateway
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:  # the worker is this process's child
                        break
                except ChildProcessError:
                    break
                time.sleep(0.2)
            else:
                os.kill(pid, signal.SIGKILL)


def test_serve_takes_database_and_redis_urls_only_where_a_service_has_them(tmp_path):
    for flag in ("--database-url", "--redis-url"):
        r = CliRunner().invoke(app, ["serve", "worker", flag, "x://y"], env={"SWIFTMESH_DATA_DIR": str(tmp_path)})
        assert r.exit_code == 2 and f"{flag}: the worker service has no" in " ".join(r.output.split()), r.output
    # An unusable URL stops the gateway at start with the setting to fix, not a traceback.
    env = {"SWIFTMESH_DATA_DIR": str(tmp_path), "SWIFTMESH_GATEWAY__PORT": "0", "SWIFTMESH_GATEWAY__HTTP_PORT": "0"}
    r = CliRunner().invoke(app, ["serve", "gateway", "--database-url", "foo://bar"], env=env)
    assert r.exit_code == 2 and "SWIFTMESH_GATEWAY__DATABASE_URL" in " ".join(r.output.split()), r.output
    r = CliRunner().invoke(app, ["serve", "gateway", "--redis-url", "foo://bar"], env=env)
    assert r.exit_code == 2 and "SWIFTMESH_GATEWAY__REDIS_URL" in " ".join(r.output.split()), r.output
