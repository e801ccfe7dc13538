#!/usr/bin/env bash
# Create or refresh the tool environment that checks deploy/ offline: docker-compose (validates
# deploy/compose with `docker-compose config`, no Docker engine needed) and hadolint (lints
# deploy/docker/*.Dockerfile). tests/deploy runs it before using them: it returns at once when
# the environment is up to date.
#
#   deploy/tools/setup-tools.sh            into .venv-tools at the repository root
#   SWIFTMESH_TOOLS_VENV=DIR deploy/tools/setup-tools.sh
#
# Idempotent: a stamp records the requirements it was built from.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${SWIFTMESH_TOOLS_VENV:-$ROOT/.venv-tools}"
REQ="$ROOT/deploy/tools/requirements.txt"
STAMP="$VENV/.swiftmesh-tools"
want="$(cat "$REQ" "$0" | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/docker-compose" ] && [ -x "$VENV/bin/hadolint" ]; then
  echo "setup-tools: $VENV is up to date"
  exit 0
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@"; }
# PyYAML 5.4.1 (docker-compose needs <6) has no wheel for Python 3.11 and its build breaks with
# Cython 3: build it with Cython 0.29 and without build isolation.
pip install "cython==0.29.37" "setuptools<70" wheel
pip install --no-build-isolation "PyYAML==5.4.1"
pip install -r "$REQ"
"$VENV/bin/docker-compose" version >/dev/null
"$VENV/bin/hadolint" --version >/dev/null
echo "$want" > "$STAMP"
echo "setup-tools: installed into $VENV"
