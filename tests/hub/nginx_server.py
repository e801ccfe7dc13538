"""A real nginx on loopback for hub tests and benchmarks: serves a directory with Range support,
autoindex listings, optional rate limit, and an access log that records the bytes of every
request (how the resume test counts what was fetched).

    with Nginx(root, rate="20m") as ng:
        url = ng.url("model/")            # http://127.0.0.1:<port>/model/
        ng.log_entries()                  # [{"uri", "status", "bytes", "range", "ua", "method"}]
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

LOG_FORMAT = '$request_method\\t$uri\\t$status\\t$body_bytes_sent\\t"$http_range"\\t"$http_user_agent"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (("/usr/sbin/nginx") if Path("/usr/sbin/nginx").exists() else None)


class Nginx:
    """nginx serving ``root`` on 127.0.0.1:<free port>.

    Args:
        root: directory served at "/".
        rate: ``limit_rate`` per connection ("20m" = 20 MB/s), None for unlimited.
        extra_locations: raw nginx ``location`` blocks added to the server (e.g. an HF-style API).
    """

    def __init__(self, root: Path, rate: str | None = None, extra_locations: str = "", workers: int = 1) -> None:
        self.root = Path(root).absolute()
        self.rate = rate
        self.extra = extra_locations
        self.workers = workers
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.access_log = self.dir / "access.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "") -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def start(self) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install -y nginx; scripts/setup.sh --dev does it)")
        rate = f"limit_rate {self.rate};" if self.rate else ""
        # as root, nginx workers would drop to "nobody" and could not read a private temp dir
        user = "user root;" if os.geteuid() == 0 else ""
        conf = f"""
{user}
worker_processes {self.workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    types {{ application/json json; text/html html; }}
    default_type application/octet-stream;
    log_format swm '{LOG_FORMAT}';
    access_log {self.access_log} swm;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        {rate}
        location / {{ autoindex on; }}
        {self.extra}
    }}
}}
"""
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_entries(self) -> list[dict]:
        """Parsed access log lines (nginx writes a line when a request ends)."""
        out = []
        if not self.access_log.exists():
            return out
        for line in self.access_log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) != 6:
                continue
            out.append(
                {
                    "method": parts[0],
                    "uri": parts[1],
                    "status": int(parts[2]),
                    "bytes": int(parts[3]),
                    "range": parts[4].strip('"').replace("-", "", 1) if parts[4] == '"-"' else parts[4].strip('"'),
                    "ua": parts[5].strip('"'),
                }
            )
        return out
