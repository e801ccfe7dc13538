"""Validators and readers of deploy/, shared by the tests of this folder.

* Kubernetes manifests: kubernetes-validate (strict: unknown fields rejected) for the built-in
  kinds; the RayCluster custom resource against deploy/k8s/schemas/raycluster-ray-v1.json, whose
  embedded Kubernetes types (pod templates ...) resolve to kubernetes-validate's own schemas.
* Compose: `docker-compose config` (docker-compose 1.29 from the tool environment .venv-tools).
* Dockerfiles: hadolint (same tool environment) and a small parser for the structural checks.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib.resources
import json
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
DOCKER = DEPLOY / "docker"
SCHEMAS = K8S / "schemas"
TOOLS_VENV = Path(os.environ.get("SWIFTMESH_TOOLS_VENV", ROOT / ".venv-tools"))

SERVICES = ("hub", "trainer", "aligner", "worker", "gateway")
KUBERNETES_VERSION = "1.37.0"
# Custom resources and the schema each is validated against.
CRD_SCHEMAS = {("ray.io/v1", "RayCluster"): SCHEMAS / "raycluster-ray-v1.json"}


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def project_extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "cpu.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


# Kubernetes ---------------------------------------------------------------------------------

@functools.cache
def _k8s_definitions() -> dict:
    path = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict/_definitions.json"
    return json.loads(importlib.resources.files("kubernetes_validate").joinpath(path).read_text())


@functools.cache
def crd_validator(schema_path: Path) -> jsonschema.Draft202012Validator:
    """A validator of a custom resource schema of ours; `https://kubernetes.io/api/_definitions.json`
    refs resolve to kubernetes-validate's strict schemas of the same Kubernetes version."""
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    defs = _k8s_definitions()
    registry = referencing.Registry().with_resources([
        (defs["$id"], referencing.Resource.from_contents(defs)),
        (schema["$id"], referencing.Resource.from_contents(schema)),
    ])
    return jsonschema.Draft202012Validator(schema, registry=registry)


class ManifestError(AssertionError):
    pass


def validate_k8s_doc(doc: Any, where: str = "manifest") -> None:
    """Raise ManifestError unless ``doc`` is a valid Kubernetes object (or known custom resource)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        raise ManifestError(f"{where}: not a Kubernetes object (apiVersion and kind required)")
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        errors = sorted(crd_validator(CRD_SCHEMAS[key]).iter_errors(doc), key=lambda e: list(e.absolute_path))
        if errors:
            raise ManifestError(
                f"{where}: {doc['kind']} invalid: "
                + "; ".join(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5]))
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        raise ManifestError(f"{where}: no schema for {doc['apiVersion']} {doc['kind']} ({e}); "
                            "ship one under deploy/k8s/schemas and list it in CRD_SCHEMAS") from None
    except kubernetes_validate.ValidationError as e:
        raise ManifestError(f"{where}: {doc['kind']} {doc.get('metadata', {}).get('name')}: {e.message}") from None


def k8s_docs() -> list[tuple[Path, dict]]:
    """Every object of every YAML file under deploy/k8s, with its file."""
    out = []
    for path in sorted(K8S.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


def k8s_objects(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in k8s_docs() if d.get("kind") == kind}


def pod_templates() -> list[tuple[str, dict]]:
    """(owner, pod template) of every workload and RayCluster group."""
    out = []
    for _, d in k8s_docs():
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet"):
            out.append((name, d["spec"]["template"]))
        elif d["kind"] == "RayCluster":
            out.append((f"{name}/head", d["spec"]["headGroupSpec"]["template"]))
            for g in d["spec"].get("workerGroupSpecs", []):
                out.append((f"{name}/{g['groupName']}", g["template"]))
    return out


def mutated(doc: dict, path: str, value: Any) -> dict:
    """A deep copy of ``doc`` with the dotted ``path`` (list indexes as numbers) set to ``value``."""
    d = copy.deepcopy(doc)
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


# Tools (docker-compose, hadolint) ------------------------------------------------------------

def ensure_tools() -> Path:
    """The tool environment, created or refreshed by deploy/tools/setup-tools.sh (idempotent)."""
    r = subprocess.run(["bash", str(DEPLOY / "tools" / "setup-tools.sh")], check=False, capture_output=True, text=True,
                       env={**os.environ, "SWIFTMESH_TOOLS_VENV": str(TOOLS_VENV)}, timeout=900)
    if r.returncode != 0:
        raise AssertionError(f"deploy/tools/setup-tools.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return TOOLS_VENV / "bin"


def compose_config(tools: Path, compose_file: Path, env: dict[str, str] | None = None,
                   env_file: Path | None = None) -> subprocess.CompletedProcess:
    """`docker-compose config` (no engine needed): exit 0 and the resolved file, or the error."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTMESH_", "COMPOSE_", "DOCKER_"))}
    cmd = [str(tools / "docker-compose")]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    cmd += ["-f", str(compose_file), "config"]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env={**base, **(env or {})}, timeout=120)


def hadolint(tools: Path, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools / "hadolint"), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"),
                           *map(str, files)], check=False, capture_output=True, text=True, timeout=120)


# Dockerfiles ----------------------------------------------------------------------------------

@dataclass
class Instruction:
    op: str
    args: str
    line: int

    def json_args(self) -> list[str] | None:
        try:
            v = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return v if isinstance(v, list) else None


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        op, _, args = buf.partition(" ")
        out.append(Instruction(op.upper(), args.strip(), start))
        buf = ""
    return out


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Whether a path of the build context is excluded (Docker's rules, without `!` exceptions)."""
    parts = rel.split("/")
    for p in patterns:
        p = p.rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(x, p) for x in prefixes):
            return True
        if p.startswith("**/") and any(fnmatch.fnmatchcase(x, p[3:]) for x in parts):
            return True
    return False


def settings_env_name_valid(name: str) -> bool:
    """Whether SWIFTMESH_<A>[__<B>...] names a field of swiftmesh.runtime.config.Settings."""
    from pydantic import BaseModel

    from swiftmesh.runtime.config import Settings

    if name == "SWIFTMESH_CONFIG":
        return True
    if not name.startswith("SWIFTMESH_"):
        return False
    parts = name[len("SWIFTMESH_"):].lower().split("__")
    model: type[BaseModel] | None = Settings
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            return False
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None and i != len(parts) - 1:
            return False
    return model is None  # a leaf setting, not a whole section


def split_address(address: str) -> tuple[str, int]:
    m = re.fullmatch(r"(?:[a-z]+://)?([^:/]+):(\d+)", address)
    if not m:
        raise AssertionError(f"not host:port: {address!r}")
    return m.group(1), int(m.group(2))
