"""A TCP proxy on loopback that can cut a connection after N bytes from the server: a network
cut in the middle of a gRPC stream, for resume tests. Counts bytes per connection."""

from __future__ import annotations

import socket
import threading


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to ``target`` ("host:port").

    ``cut_after``: the first connection whose server-to-client bytes exceed this is closed
    (both ways) at that point; later connections pass untouched. ``downstream`` lists the
    server-to-client byte count of every connection, in order of opening.
    """

    def __init__(self, target: str, cut_after: int | None = None) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.cut_after = cut_after
        self.cut_done = threading.Event()
        self.downstream: list[int] = []
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                idx = len(self.downstream)
                self.downstream.append(0)
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, idx), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, idx: int | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if idx is not None:
                    with self._lock:
                        limit = self.cut_after if not self.cut_done.is_set() else None
                        if limit is not None and self.downstream[idx] + len(data) > limit:
                            data = data[: max(0, limit - self.downstream[idx])]
                            self.downstream[idx] += len(data)
                            dst.sendall(data)
                            self.cut_done.set()
                            raise ConnectionAbortedError("cut")
                        self.downstream[idx] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
