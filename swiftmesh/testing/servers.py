"""PostgreSQL and Redis from the system packages, on loopback, for tests (``scripts/setup.sh --dev``
installs ``postgresql`` and ``redis-server``).

    with postgres_server(tmp) as url, redis_server(tmp) as redis_url: ...

Each server runs in a directory of its own on a free loopback port and is stopped (and its files
left to the caller's temp dir) at the end. PostgreSQL refuses to run as root: as root the data
directory is chowned to the ``postgres`` user and every PostgreSQL binary runs through
``setpriv`` as that user; as any other user it runs as that user. Raises FileNotFoundError when
a server's binaries are missing (the caller skips).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from swiftmesh.testing.services import free_port

START_TIMEOUT_S = 30.0


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} not found (scripts/setup.sh --dev installs postgresql)")
    return found


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    pw = pwd.getpwnam("postgres")
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", *argv]


def _wait_port(port: int, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} in {START_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def postgres_server(root: str | Path, database: str = "swiftmesh") -> Iterator[str]:
    """A PostgreSQL server under ``root/postgres`` (as root: a fresh temp dir owned by
    ``postgres``, removed at the end) with trust auth, loopback only; yields
    ``postgresql+psycopg://postgres@127.0.0.1:<port>/<database>``."""
    if os.geteuid() == 0:
        # The postgres user must reach the directory: a fresh one under the system temp dir
        # (the caller's, e.g. pytest's 0700 root-owned tree, may not be traversable).
        data = Path(tempfile.mkdtemp(prefix="swiftmesh-postgres-"))
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
    else:
        data = Path(root) / "postgres"
        data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(data / "data"), "-U", "postgres",
                                 "--auth=trust", "-E", "UTF8", "--no-sync"]),
                   check=True, capture_output=True)
    log = data / "postgres.log"
    ctl = _pg_bin("pg_ctl")
    subprocess.run(_as_postgres([ctl, "-D", str(data / "data"), "-l", str(log), "-w", "-t", str(int(START_TIMEOUT_S)),
                                 "-o", f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off", "start"]),
                   check=True, capture_output=True)
    try:
        subprocess.run(_as_postgres([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                     database]), check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(_as_postgres([ctl, "-D", str(data / "data"), "-m", "fast", "-w", "stop"]), check=False,
                       capture_output=True)
        if os.geteuid() == 0:
            shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def redis_server(root: str | Path) -> Iterator[str]:
    """A redis-server under ``root/redis`` (no persistence, loopback only); yields
    ``redis://127.0.0.1:<port>``."""
    exe = shutil.which("redis-server")
    if not exe:
        raise FileNotFoundError("redis-server not found (scripts/setup.sh --dev installs redis-server)")
    data = Path(root) / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(data / "redis.log", "ab") as fh:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", str(data)], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_port(port, "redis-server", proc)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
