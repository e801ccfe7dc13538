"""deploy/compose: `docker-compose config` (docker-compose 1.29, no engine needed) accepts the
suite, and what it resolves agrees with the settings: every service, ports, addresses, the shared
token, healthchecks and the order of start (depends_on: service_healthy)."""

from __future__ import annotations

import re

import pytest
import yaml

from swiftmesh.runtime.config import Settings

from .checks import (
    COMPOSE_FILE,
    DEPLOY,
    ROOT,
    SERVICES,
    compose_config,
    ensure_tools,
    project_version,
    settings_env_name_valid,
    split_address,
)

DEFAULTS = {svc: Settings.model_fields[svc].default_factory() for svc in SERVICES}
TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def tools():
    return ensure_tools()


@pytest.fixture(scope="module")
def resolved(tools) -> dict:
    r = compose_config(tools, COMPOSE_FILE, env={"SWIFTMESH_AUTH_TOKEN": TOKEN})
    assert r.returncode == 0, f"docker-compose config failed:\n{r.stderr}"
    return yaml.safe_load(r.stdout)


def test_compose_config_accepts_the_suite(resolved):
    assert set(resolved["services"]) == set(SERVICES) | {"ray-head"}
    assert {"hub-cache", "trainer-state", "aligner-state", "gateway-state"} <= set(resolved["volumes"])


def test_the_env_example_is_a_working_env_file(tools):
    r = compose_config(tools, COMPOSE_FILE, env_file=DEPLOY / "compose" / ".env.example")
    assert r.returncode == 0, r.stderr
    env = yaml.safe_load(r.stdout)["services"]["hub"]["environment"]
    assert env["SWIFTMESH_AUTH_TOKEN"] == "change-me"


def test_compose_config_fails_without_the_token_and_on_bad_files(tools, tmp_path):
    r = compose_config(tools, COMPOSE_FILE, env={})
    assert r.returncode != 0 and "SWIFTMESH_AUTH_TOKEN" in r.stderr
    text = COMPOSE_FILE.read_text()
    control = tmp_path / "control" / "docker-compose.yml"
    control.parent.mkdir()
    control.write_text(text)
    assert compose_config(tools, control, env={"SWIFTMESH_AUTH_TOKEN": TOKEN}).returncode == 0
    for what, broken in {
        "unknown option": text.replace("    stop_grace_period: 30s\n", "    stop_grace_periodd: 30s\n", 1),
        "bad depends_on condition": text.replace("condition: service_healthy", "condition: service_ready", 1),
        "undefined volume": text.replace("- hub-cache:/var/lib/swiftmesh", "- hub-cash:/var/lib/swiftmesh"),
    }.items():
        assert broken != text, what
        bad = tmp_path / "docker-compose.yml"
        bad.write_text(broken)
        r = compose_config(tools, bad, env={"SWIFTMESH_AUTH_TOKEN": TOKEN})
        assert r.returncode != 0, f"docker-compose config accepted a file with a {what}"


def container_ports(service: dict) -> set[int]:
    out = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.add(int(p["target"]))
        else:
            out.add(int(re.sub(r"/\w+$", "", str(p)).rsplit(":", 1)[-1]))
    return out


def test_services_settings_and_ports_match(resolved):
    services = resolved["services"]
    version = project_version()
    for name, s in services.items():
        env = s.get("environment", {})
        for var in env:
            if var.startswith("SWIFTMESH_"):
                assert settings_env_name_valid(var), f"{name}: {var} is no setting of swiftmesh/runtime/config.py"
        # One token for all.
        assert env.get("SWIFTMESH_AUTH_TOKEN") == TOKEN, name
        # Every service finds every other by its compose name and default port.
        for svc in SERVICES:
            host, port = split_address(env[f"SWIFTMESH_{svc.upper()}__ADDRESS"])
            assert host == svc and host in services and port == DEFAULTS[svc].port, (name, svc)
        assert s["build"]["dockerfile"].startswith("deploy/docker/")
        assert (ROOT / s["build"]["dockerfile"]).is_file()
    for svc in SERVICES:
        s = services[svc]
        assert s["image"] == f"swiftmesh/{svc}:{version}"
        assert s["build"]["dockerfile"] == f"deploy/docker/{svc}.Dockerfile"
        ep = DEFAULTS[svc]
        env = s["environment"]
        if ep.metrics_port:
            assert int(env[f"SWIFTMESH_{svc.upper()}__METRICS_PORT"]) == ep.metrics_port
        ports = container_ports(s)
        assert ep.port in ports, f"{svc}: gRPC port {ep.port} not published"
    assert DEFAULTS["gateway"].http_port in container_ports(services["gateway"])
    assert int(services["gateway"]["environment"]["SWIFTMESH_GATEWAY__HTTP_PORT"]) == DEFAULTS["gateway"].http_port
    workers = yaml.safe_load(services["gateway"]["environment"]["SWIFTMESH_GATEWAY__WORKERS"])
    assert [split_address(w) for w in workers] == [("worker", DEFAULTS["worker"].port)]
    # The ray head runs the aligner image (every job kind's code).
    assert services["ray-head"]["image"] == f"swiftmesh/aligner:{version}"


def test_healthchecks_and_start_order(resolved):
    services = resolved["services"]
    for name, s in services.items():
        hc = s.get("healthcheck")
        assert hc and hc["test"][0] == "CMD", f"{name}: no healthcheck"
        if name in SERVICES:
            assert hc["test"][1:] == ["swiftmesh-healthcheck", name]
        for dep, cond in (s.get("depends_on") or {}).items():
            assert dep in services and cond["condition"] == "service_healthy", (name, dep)
    deps = {n: set(s.get("depends_on") or {}) for n, s in services.items()}
    assert deps["trainer"] == deps["aligner"] == {"hub", "ray-head"}
    assert "hub" in deps["worker"] and "worker" in deps["gateway"]


def test_hub_cache_volume_and_ray_address(resolved):
    services = resolved["services"]
    hub = services["hub"]
    data_dir = "/var/lib/swiftmesh"  # the images' SWIFTMESH_DATA_DIR (test_dockerfiles checks it)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in hub["volumes"]}
    assert mounts[data_dir] == "hub-cache"
    assert hub["environment"]["SWIFTMESH_HUB__CACHE_DIR"].startswith(data_dir + "/")
    cmd = services["ray-head"]["command"]
    assert cmd[:4] == ["ray", "start", "--head", "--block"]
    client_port = int(next(a for a in cmd if a.startswith("--ray-client-server-port=")).split("=")[1])
    for svc in ("trainer", "aligner"):
        env = services[svc]["environment"]
        expected = f"ray://ray-head:{client_port}"
        assert env[f"SWIFTMESH_{svc.upper()}__RAY_ADDRESS"] == expected == env["RAY_ADDRESS"]


def test_mutual_tls_from_secrets_and_api_keys(tools, tmp_path):
    """With the certificates of `swiftmesh certs` (SWIFTMESH_CERTS_DIR), every container gets the
    CA and a key pair of its own as compose secrets at the same paths, the TLS settings point at
    them with require_client_cert, each service's certificate names the host the others dial
    (its compose name: what the healthcheck checks too), and the gateway requires API keys."""
    from cryptography import x509

    from swiftmesh.runtime.certs import make_dev_pki

    certs = tmp_path / "certs"
    make_dev_pki(certs, [*SERVICES, "ray", "operator"])
    r = compose_config(tools, COMPOSE_FILE, env={"SWIFTMESH_AUTH_TOKEN": TOKEN, "SWIFTMESH_CERTS_DIR": str(certs)})
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    secret_files = {name: s["file"] for name, s in resolved["secrets"].items()}
    for name, s in resolved["services"].items():
        env = s["environment"]
        assert env["SWIFTMESH_TLS__ENABLED"] == "true" and env["SWIFTMESH_TLS__REQUIRE_CLIENT_CERT"] == "true", name
        mounted = {f"/run/secrets/{m['target']}": m["source"] for m in s["secrets"]}
        own = "ray" if name == "ray-head" else name
        expected = {"CA_FILE": ("ca", "ca.pem"), "CERT_FILE": (f"{own}-cert", f"{own}.pem"),
                    "KEY_FILE": (f"{own}-key", f"{own}.key")}
        for setting, (secret, file) in expected.items():
            path = env[f"SWIFTMESH_TLS__{setting}"]
            assert mounted.get(path) == secret, f"{name}: {setting} {path} is not the secret {secret}"
            assert secret_files[secret] == str(certs / file), (name, secret)
        if name in SERVICES:
            cert = x509.load_pem_x509_certificate((certs / f"{name}.pem").read_bytes())
            dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
            host, _ = split_address(env[f"SWIFTMESH_{name.upper()}__ADDRESS"])
            assert host in dns, f"{name}'s certificate does not name {host}"
    assert resolved["services"]["gateway"]["environment"]["SWIFTMESH_GATEWAY__REQUIRE_API_KEY"] == "true"
