"""This machine's identity, shared by the hub (where a cache lives) and its clients (whether they
can read that cache directly); whether an address or a caller is on this machine (loopback)."""

from __future__ import annotations

import ipaddress
import os
import socket
from functools import lru_cache
from pathlib import Path

from swiftmesh.runtime.errors import InvalidArgument

# Environment variable that replaces the detected host identity (see :func:`machine_id`).
MACHINE_ID_ENV = "SWIFTMESH_MACHINE_ID"


def machine_id() -> str:
    """This machine's identity: ``<hostname>:<first 12 hex of /etc/machine-id or boot id>``.

    Two processes on one host (or in containers sharing the host's machine id and hostname)
    get the same value. The hub's ``LocalLocation.host_id`` starts with it, followed by
    ``"|"`` and the cache directory's own id.

    ``$SWIFTMESH_MACHINE_ID``, when set and not blank, replaces the detected value: set it on a
    machine (or a Ray node's ``ray start``) whose processes see a different disk than the hub
    although they share its hostname and machine id (containers with their own volumes, test
    clusters on one host), so :meth:`HubClient.materialize` mirrors instead of reading the
    hub's cache path. Raises InvalidArgument when the value contains ``"|"`` (the separator of
    ``host_id``).
    """
    override = os.environ.get(MACHINE_ID_ENV, "").strip()
    if override:
        if "|" in override:
            raise InvalidArgument(
                f"{MACHINE_ID_ENV}={override!r} must not contain '|'",
                field_violations=[(MACHINE_ID_ENV, "contains '|'")],
                reason="BAD_MACHINE_ID",
            )
        return override
    return _detected_machine_id()


@lru_cache(maxsize=1)
def _detected_machine_id() -> str:
    ident = ""
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            ident = Path(p).read_text().strip().replace("-", "")
        except OSError:
            continue
        if ident:
            break
    return f"{socket.gethostname()}:{ident[:12]}"


def port_available(host: str, port: int) -> bool:
    """Whether a TCP listener could bind ``host:port`` now (False when another process listens)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (the kernel's pick; another process may take it later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` is on this machine's loopback: an IP address or host name
    (``127.0.0.2``, ``::1``, ``[::1]``, ``localhost``), or a gRPC peer as ``context.peer()`` gives
    it (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``ipv6:[::ffff:127.0.0.1]:5000``, or
    ``unix:/path``, local by construction). Empty, other names, ``0.0.0.0`` and unparsable
    values: False."""
    if not address:
        return False
    kind, sep, rest = address.partition(":")
    if sep and kind in ("unix", "unix-abstract"):
        return True
    if sep and kind in ("ipv4", "ipv6"):
        address = rest.rsplit(":", 1)[0]
    host = address.strip("[]").split("%", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback
