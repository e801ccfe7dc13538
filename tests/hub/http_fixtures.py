"""Small HTTP servers on loopback for hub tests: static files with Range support and fault
injection, and mirrors laid out the way huggingface_hub and the modelscope client expect.

    srv = FileServer(routes={"/a.bin": b"..."}).start()
    srv.faults["/a.bin"] = [503, 503]        # the next two GETs answer 503
    srv.cuts["/a.bin"] = 1000                # the next GET ends the connection after 1000 bytes
    srv.redirects["/old.bin"] = "http://..."   # GET/HEAD answer 302 with this Location
    srv.no_length.add("/a.bin")              # no Content-Length (HEAD: none; GET: chunked)
    srv.ignore_range.add("/a.bin")           # Range ignored: always 200 with the whole file
    srv.requests                              # [(method, path, range header)]
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serves ``routes`` (path -> bytes, or a callable answering JSON) with Range, ETag, HEAD."""

    def __init__(self, routes: dict[str, bytes] | None = None,
                 extra_headers: Callable[[str], dict[str, str]] | None = None) -> None:
        self.routes: dict[str, bytes] = dict(routes or {})
        self.json_routes: dict[str, Callable[[str], object]] = {}
        self.extra_headers = extra_headers or (lambda path: {})
        self.faults: dict[str, list[int]] = {}
        self.cuts: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.no_length: set[str] = set()
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, str, str]] = []
        self.bytes_sent: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                server._handle(self, head=True)

            def do_GET(self) -> None:
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FileServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parsed.path)
        rng = h.headers.get("Range", "")
        with self._lock:
            self.requests.append((h.command, h.path, rng))
            fault = self.faults.get(path)
            status = fault.pop(0) if fault and not head else None
            cut = self.cuts.pop(path, None) if not head and status is None else None
        location = self.redirects.get(path)
        if location is not None and status is None:
            h.send_response(302)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if status is not None:
            body = b"try again"
            h.send_response(status)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Retry-After", "0")
            h.end_headers()
            h.wfile.write(body)
            return
        for prefix, fn in self.json_routes.items():
            if path.startswith(prefix):
                doc = fn(h.path)
                if doc is None:
                    break
                body = json.dumps(doc).encode()
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                if not head:
                    h.wfile.write(body)
                return
        data = self.routes.get(path)
        if data is None and parsed.query:
            data = self.routes.get(h.path)
        if data is None:
            body = b"not found"
            h.send_response(404)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
            return
        etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
        start, end = 0, len(data)
        status = 200
        if (rng.startswith("bytes=") and path not in self.ignore_range
                and (not h.headers.get("If-Range") or h.headers.get("If-Range") == etag)):
            a, _, b = rng[6:].partition("-")
            start = int(a or 0)
            end = int(b) + 1 if b else len(data)
            status = 206
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        body = data[start:end]
        h.send_response(status)
        chunked = path in self.no_length
        if chunked:
            if not head:
                h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        for k, v in self.extra_headers(path).items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        if cut is not None:
            body = body[:cut]
        if chunked:
            for i in range(0, len(body), 1 << 16):
                piece = body[i:i + (1 << 16)]
                h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if cut is None:
                h.wfile.write(b"0\r\n\r\n")
        else:
            h.wfile.write(body)
        with self._lock:
            self.bytes_sent[path] = self.bytes_sent.get(path, 0) + len(body)
        if cut is not None:
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)

    def gets(self, path: str) -> list[tuple[str, str, str]]:
        return [r for r in self.requests if r[0] == "GET" and urllib.parse.unquote(r[1].split("?")[0]) == path]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


def hf_mirror(files: dict[str, bytes], repo: str, commit: str = "c0ffee" * 6 + "abcd",
              lfs_suffixes: tuple[str, ...] = (".safetensors", ".gguf", ".bin", ".onnx")) -> FileServer:
    """A Hugging Face endpoint for one repository: ``/api/models/<repo>[/revision/<rev>]`` (model
    info with file metadata) and ``/<repo>/resolve/<commit>/<path>``, as huggingface_hub calls them.
    Files named with ``lfs_suffixes`` are LFS files (sha256 given), the others carry a git blob sha1."""
    srv = FileServer()
    siblings = []
    for path, data in files.items():
        entry = {"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)}
        if path.endswith(lfs_suffixes):
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            entry["blobId"] = hashlib.sha1(path.encode(), usedforsecurity=False).hexdigest()
        siblings.append(entry)
        srv.routes[f"/{repo}/resolve/{commit}/{path}"] = data
    srv.info_requests = []

    def info(raw_path: str) -> object:
        path = urllib.parse.unquote(raw_path.split("?")[0])
        srv.info_requests.append(raw_path)
        if path not in (f"/api/models/{repo}", f"/api/models/{repo}/revision/main",
                        f"/api/models/{repo}/revision/{commit}", f"/api/models/{repo}/revision/v1.0"):
            return None
        return {"id": repo, "modelId": repo, "sha": commit, "private": False, "siblings": siblings,
                "tags": [], "downloads": 0, "likes": 0}

    srv.json_routes["/api/models/"] = info
    srv.commit = commit
    return srv


def ms_mirror(files: dict[str, bytes], repo: str) -> FileServer:
    """A ModelScope endpoint for one repository: ``/api/v1/models/<repo>/repo/files`` (listing with
    sha256) and ``/api/v1/models/<repo>/repo?Revision=..&FilePath=..`` downloads."""
    srv = FileServer()
    listing = [{"Path": p, "Name": p.split("/")[-1], "Size": len(d), "Sha256": hashlib.sha256(d).hexdigest(),
                "Type": "blob", "Revision": "master"} for p, d in files.items()]

    def files_route(raw_path: str) -> object:
        path = urllib.parse.unquote(raw_path.split("?")[0])
        if path != f"/api/v1/models/{repo}/repo/files":
            return None
        return {"Code": 200, "Success": True, "Data": {"Files": listing}}

    srv.json_routes[f"/api/v1/models/{repo}/repo/files"] = files_route
    for p, d in files.items():
        q = urllib.parse.urlencode({"Revision": "master", "FilePath": p}, quote_via=urllib.parse.quote_plus)
        srv.routes[f"/api/v1/models/{repo}/repo?{q}"] = d
    return srv
