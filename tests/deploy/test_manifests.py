"""deploy/: every file under it goes through a validator, and the Kubernetes manifests validate
offline and agree with swiftmesh/runtime/config.py (ports, setting names, probes, images).

Kubernetes objects validate with kubernetes-validate in strict mode (unknown fields rejected). The
RayCluster (a custom resource, absent from those schemas) validates against the schema shipped in
deploy/k8s/schemas, whose pod templates and other embedded types resolve to the Kubernetes schemas.
Compose files and Dockerfiles are checked in test_compose.py and test_dockerfiles.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from swiftmesh.runtime.config import Settings

from .checks import (
    CRD_SCHEMAS,
    DEPLOY,
    K8S,
    ROOT,
    SCHEMAS,
    SERVICES,
    ManifestError,
    crd_validator,
    k8s_docs,
    k8s_objects,
    mutated,
    pod_templates,
    project_version,
    settings_env_name_valid,
    split_address,
    validate_k8s_doc,
)

DEFAULTS = {svc: Settings.model_fields[svc].default_factory() for svc in SERVICES}
NAMESPACE = "swiftmesh"


# Every file under deploy/ -------------------------------------------------------------------

# Which test validates which files. A file that matches none fails test_every_file_has_a_validator.
VALIDATED_BY = [
    (r"k8s/schemas/[^/]+\.json", "test_manifests: JSON Schema checked, used for custom resources"),
    (r"k8s/[^/]+\.ya?ml", "test_manifests: kubernetes-validate / CRD schema, consistency"),
    (r"compose/docker-compose[^/]*\.ya?ml", "test_compose: docker-compose config, consistency"),
    (r"compose/\.env\.example", "test_compose: used as --env-file of docker-compose config"),
    (r"docker/[^/]+\.Dockerfile", "test_dockerfiles: hadolint, structure, consistency"),
    (r"docker/\.hadolint\.yaml", "test_dockerfiles: hadolint's configuration"),
    (r"docker/healthcheck\.py", "test_healthcheck: run against a live service"),
    (r"tools/requirements\.txt", "test_compose: the tool environment is built from it"),
    (r"tools/setup-tools\.sh", "test_compose: builds the tool environment"),
    (r"README\.md", "test_manifests: paths it names exist"),
]


def deploy_files() -> list[str]:
    return sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def validator_of(rel: str) -> str | None:
    for pattern, by in VALIDATED_BY:
        if re.fullmatch(pattern, rel):
            return by
    return None


def test_every_file_under_deploy_has_a_validator():
    files = deploy_files()
    assert len(files) >= 20, files
    unchecked = [f for f in files if validator_of(f) is None]
    assert not unchecked, f"files under deploy/ that no test validates: {unchecked} (add a check in tests/deploy)"
    assert validator_of("k8s/new-thing.yaml") and validator_of("docker/new.Dockerfile")
    assert validator_of("k8s/notes.txt") is None


def test_readme_names_only_existing_paths():
    text = (DEPLOY / "README.md").read_text()
    # Repository paths (not image names like swiftmesh/hub:0.1.0, nor /etc/swiftmesh/...).
    named = set(re.findall(r"(?<![\w/.])((?:deploy|scripts|constraints|swiftmesh)/[\w./-]*\w)(?![\w:])", text))
    named -= {"deploy/compose/.env"}  # the user makes it from .env.example
    named = {p for p in named if not p.startswith("deploy/compose/certs")}  # the user makes them: swiftmesh certs
    assert len(named) >= 8, named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"deploy/README.md names paths that do not exist: {missing}"
    for svc in SERVICES:
        assert svc in text


# Validation -----------------------------------------------------------------------------------

def test_every_k8s_manifest_validates():
    docs = k8s_docs()
    files = {p for p, _ in docs}
    assert files == set(K8S.glob("*.y*ml")), "a YAML file under deploy/k8s holds no object"
    errors = []
    for path, doc in docs:
        try:
            validate_k8s_doc(doc, str(path.relative_to(ROOT)))
        except ManifestError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "Deployment",
            "PersistentVolumeClaim", "HorizontalPodAutoscaler", "RayCluster"} <= kinds


def test_the_validators_reject_bad_manifests():
    """The same validation fails on broken objects: wrong types, unknown fields, missing required
    fields, unknown kinds; for the RayCluster too (its own fields and its embedded pod templates)."""
    deploy = k8s_objects("Deployment")["gateway"]
    c = "spec.template.spec.containers.0"
    bad = {
        "grpc probe port by name": mutated(deploy, f"{c}.readinessProbe.grpc", {"port": "grpc"}),
        "unknown container field": mutated(deploy, f"{c}.imagePullPolicyy", "Always"),
        "missing selector": {**deploy, "spec": {k: v for k, v in deploy["spec"].items() if k != "selector"}},
        "bad hpa api": {**k8s_objects("HorizontalPodAutoscaler")["gateway"], "apiVersion": "autoscaling/v3"},
        "unknown kind": {"apiVersion": "example.invalid/v1", "kind": "Widget", "metadata": {"name": "w"}},
    }
    ray = k8s_objects("RayCluster")["swiftmesh-ray"]
    bad |= {
        "ray: start param not a string": mutated(ray, "spec.headGroupSpec.rayStartParams.num-cpus", 0),
        "ray: worker group without name": mutated(ray, "spec.workerGroupSpecs.0",
                                                  {k: v for k, v in ray["spec"]["workerGroupSpecs"][0].items()
                                                   if k != "groupName"}),
        "ray: unknown spec field": mutated(ray, "spec.headGroupSpecs", {}),
        "ray: pod template field": mutated(ray, "spec.workerGroupSpecs.0.template.spec.containers.0.imagee", "x"),
        "ray: bad upscaling mode": mutated(ray, "spec.autoscalerOptions.upscalingMode", "Fast"),
    }
    for what, doc in bad.items():
        with pytest.raises(ManifestError):
            validate_k8s_doc(doc, what)
    validate_k8s_doc(deploy)
    validate_k8s_doc(ray)


def test_custom_resource_schemas_are_valid_and_used():
    shipped = set(SCHEMAS.glob("*.json"))
    assert shipped == set(CRD_SCHEMAS.values()), "every schema under deploy/k8s/schemas is used, and only those"
    for path in shipped:
        crd_validator(path)  # check_schema + refs registry
    used = {(d["apiVersion"], d["kind"]) for _, d in k8s_docs()}
    assert set(CRD_SCHEMAS) <= used


# Consistency with the settings -----------------------------------------------------------------

def workload(svc: str) -> dict:
    kind = "StatefulSet" if svc == "hub" else "Deployment"
    objs = k8s_objects(kind)
    assert svc in objs, f"no {kind} {svc} in deploy/k8s"
    return objs[svc]


def container(svc: str) -> dict:
    containers = workload(svc)["spec"]["template"]["spec"]["containers"]
    by_name = {c["name"]: c for c in containers}
    assert svc in by_name, f"{svc}: no container named {svc}"
    return by_name[svc]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def expected_ports(svc: str) -> dict[str, int]:
    ep = DEFAULTS[svc]
    ports = {"grpc": ep.port}
    if svc == "gateway":
        ports["http"] = ep.http_port
    if ep.metrics_port:
        ports["metrics"] = ep.metrics_port
    return ports


def configmap_settings(monkeypatch, tmp_path: Path) -> Settings:
    """The ConfigMap's config.yaml as Settings. Settings.load checks that the TLS files exist and
    match, and they exist only in the pods (mounted Secrets): it loads with a dev PKI in their
    place, and the settings returned name the ConfigMap's paths again."""
    from swiftmesh.runtime.certs import make_dev_pki

    cm = k8s_objects("ConfigMap")["swiftmesh-config"]
    raw = yaml.safe_load(cm["data"]["config.yaml"])
    pki = make_dev_pki(tmp_path / "pki", ["svc"])
    stand_in = {"ca_file": pki["ca"].cert, "cert_file": pki["svc"].cert, "key_file": pki["svc"].key}
    named = {k: Path(raw["tls"][k]) for k in stand_in if raw.get("tls", {}).get(k)}
    raw.setdefault("tls", {}).update({k: str(stand_in[k]) for k in named})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    for k in list(__import__("os").environ):
        if k.startswith("SWIFTMESH_"):
            monkeypatch.delenv(k)
    s = Settings.load(path)
    return s.model_copy(update={"tls": s.tls.model_copy(update=named)})


@pytest.mark.parametrize("svc", SERVICES)
def test_workload_ports_probes_and_image_match_settings(svc):
    w = workload(svc)
    c = container(svc)
    ports = expected_ports(svc)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == ports
    assert c["image"] == f"swiftmesh/{svc}:{project_version()}"
    assert c["args"] == ["serve", svc]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, f"{svc}: no {probe}"
        # An exec probe with the image's swiftmesh-healthcheck (the gRPC health service of the
        # gRPC port, dialled with the pod's own client certificate): the kubelet's native gRPC
        # probe cannot present one, and every service requires it (tls.require_client_cert).
        assert set(c[probe]) - {"periodSeconds", "timeoutSeconds", "failureThreshold",
                                 "successThreshold", "initialDelaySeconds"} == {"exec"}, c[probe]
        assert c[probe]["exec"]["command"] == ["swiftmesh-healthcheck", svc], f"{svc}: {probe}"
        # A Python start takes more than the kubelet's default second.
        assert c[probe]["timeoutSeconds"] >= 5, f"{svc}: {probe} timeout"
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["cpu"] and res["limits"]["memory"]
    # The Service of the same name routes each named port to the container's.
    service = k8s_objects("Service")[svc]
    assert service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
    assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
    sports = {p["name"]: p for p in service["spec"]["ports"]}
    for name, port in sports.items():
        assert name in ports, f"Service {svc}: port {name} has no container port"
        assert port["port"] == ports[name] and port["targetPort"] == name
    assert "grpc" in sports
    # Non-root, as the image's USER.
    sc = w["spec"]["template"]["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_every_object_is_in_the_namespace():
    assert NAMESPACE in k8s_objects("Namespace")
    for path, d in k8s_docs():
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{path.name}: {d['kind']} {d['metadata']['name']}"


def test_configmap_is_valid_settings_matching_defaults(monkeypatch, tmp_path):
    s = configmap_settings(monkeypatch, tmp_path)
    raw = yaml.safe_load(k8s_objects("ConfigMap")["swiftmesh-config"]["data"]["config.yaml"])
    services = k8s_objects("Service")
    for svc in SERVICES:
        ep, default = s.endpoint(svc), DEFAULTS[svc]
        assert (ep.port, ep.metrics_port) == (default.port, default.metrics_port), svc
        # Clients dial <Service>:<port>, and that Service serves that port.
        host, port = split_address(ep.target)
        assert host in services and port == default.port, f"{svc}.address {ep.target}"
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}
        # What the images set through the environment would silently win over the file.
        assert "host" not in raw.get(svc, {}), f"{svc}.host is set by the image (SWIFTMESH_{svc.upper()}__HOST)"
    assert s.gateway.http_port == DEFAULTS["gateway"].http_port
    for w in s.gateway.workers:
        host, port = split_address(w)
        assert host == "worker" and port == DEFAULTS["worker"].port
    assert "data_dir" not in raw and "auth_token" not in raw
    # Every workload drains within its grace period.
    for _, d in k8s_docs():
        if d["kind"] in ("Deployment", "StatefulSet"):
            assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > s.shutdown_grace_s


def test_settings_env_and_config_mounts(monkeypatch, tmp_path):
    secrets = k8s_objects("Secret")
    cm = k8s_objects("ConfigMap")
    for owner, tmpl in pod_templates():
        spec = tmpl["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            env = env_of(c)
            for name, e in env.items():
                if name.startswith("SWIFTMESH_"):
                    assert settings_env_name_valid(name), f"{owner}: {name} is no setting of swiftmesh/runtime/config.py"
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{owner}: {name} from unknown Secret {ref['name']}"
                    data = secrets[ref["name"]].get("stringData", {}) | secrets[ref["name"]].get("data", {})
                    assert ref["key"] in data or ref.get("optional"), f"{owner}: {name}: no key {ref['key']}"
            # The token from the Secret, the settings file from the ConfigMap.
            assert env["SWIFTMESH_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "swiftmesh-secrets", owner
            cfg = Path(env["SWIFTMESH_CONFIG"]["value"])
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert str(cfg.parent) in mounts, f"{owner}: {cfg} is not on a mounted volume"
            vol = volumes[mounts[str(cfg.parent)]["name"]]
            assert vol["configMap"]["name"] in cm and cfg.name in cm[vol["configMap"]["name"]]["data"], owner


def test_hub_cache_on_a_persistent_volume():
    hub = workload("hub")
    c = container("hub")
    claims = {t["metadata"]["name"]: t for t in hub["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert "cache" in claims and claims["cache"]["spec"]["resources"]["requests"]["storage"]
    cache_dir = env_of(c)["SWIFTMESH_HUB__CACHE_DIR"]["value"]
    assert Path(cache_dir).is_relative_to(mounts["cache"]), "the hub cache is not on its volume"
    assert hub["spec"]["serviceName"] in k8s_objects("Service")
    assert k8s_objects("Service")[hub["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    # Trainer and aligner state survive restarts too.
    pvcs = k8s_objects("PersistentVolumeClaim")
    for svc in ("trainer", "aligner"):
        vols = {v["name"]: v for v in workload(svc)["spec"]["template"]["spec"]["volumes"]}
        assert vols["state"]["persistentVolumeClaim"]["claimName"] in pvcs


def test_trainers_point_at_the_ray_cluster(monkeypatch, tmp_path):
    s = configmap_settings(monkeypatch, tmp_path)
    ray = k8s_objects("RayCluster")["swiftmesh-ray"]
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    client_port = {p["name"]: p["containerPort"] for p in head["ports"]}["client"]
    expected = f"ray://{ray['metadata']['name']}-head-svc:{client_port}"  # KubeRay's head Service
    for svc in ("trainer", "aligner"):
        assert s.endpoint(svc).ray_address == expected
        assert env_of(container(svc))["RAY_ADDRESS"]["value"] == expected
    # Ray nodes run the image with every job kind's code, at the trainers' Ray version.
    version = project_version()
    for _, tmpl in pod_templates():
        for c in tmpl["spec"]["containers"]:
            assert re.fullmatch(rf"swiftmesh/({'|'.join(SERVICES)}):{re.escape(version)}(-cuda)?", c["image"])
    groups = [ray["spec"]["headGroupSpec"]] + ray["spec"]["workerGroupSpecs"]
    for g in groups:
        c = g["template"]["spec"]["containers"][0]
        assert c["image"] == f"swiftmesh/aligner:{version}"
        assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
    from importlib.metadata import version as installed

    assert ray["spec"]["rayVersion"] == installed("ray")


def test_gateway_autoscaler():
    hpa = k8s_objects("HorizontalPodAutoscaler")["gateway"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "gateway")
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metrics = {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    for m in metrics:
        assert container("gateway")["resources"]["requests"][m], f"utilization of {m} needs a request"
    assert "replicas" not in workload("gateway")["spec"], "the autoscaler owns the gateway's replicas"


def test_mutual_tls_in_every_pod_and_api_keys_at_the_gateway(monkeypatch, tmp_path):
    """config.yaml turns on mutual TLS with certificate paths under one directory; every pod
    (the services and the Ray nodes, which run the jobs with the services' settings) mounts a
    Secret of its own there, holding the three files those paths name; the gateway requires API
    keys."""
    s = configmap_settings(monkeypatch, tmp_path)
    tls = s.tls
    assert tls.enabled and tls.require_client_cert
    paths = [Path(p) for p in (tls.ca_file, tls.cert_file, tls.key_file)]
    (tls_dir,) = {p.parent for p in paths}
    assert s.gateway.require_api_key is True
    secrets = k8s_objects("Secret")
    used = set()
    for owner, tmpl in pod_templates():
        spec = tmpl["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        (c,) = [c for c in spec["containers"] if "SWIFTMESH_CONFIG" in env_of(c)] or [None]
        assert c is not None, owner
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert str(tls_dir) in mounts, f"{owner}: nothing mounted at {tls_dir}"
        assert mounts[str(tls_dir)].get("readOnly") is True, owner
        # Not nested in the ConfigMap's read-only mount.
        assert not any(Path(m) in tls_dir.parents for m in mounts if m != str(tls_dir)), owner
        vol = volumes[mounts[str(tls_dir)]["name"]]
        name = vol["secret"]["secretName"]
        assert name in secrets, f"{owner}: Secret {name} is not in deploy/k8s"
        data = secrets[name].get("stringData", {}) | secrets[name].get("data", {})
        assert {p.name for p in paths} <= set(data), f"{owner}: {name} lacks {[p.name for p in paths]}"
        # Readable by the pod's group (fsGroup 10001), not by others.
        assert vol["secret"]["defaultMode"] & 0o007 == 0, owner
        used.add(name)
    # One key pair per component: the five services and the Ray nodes.
    assert len(used) == 6, used
