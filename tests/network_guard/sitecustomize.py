"""Loaded by every Python process started with this folder on PYTHONPATH (tests/test_offline.py):
refuses and records each attempt to reach a host that is not this machine.

Python raises an audit event before it resolves a name or connects a socket; this hook turns
an outside one into an ``OSError`` (so nothing leaves the machine, whatever the network) and
appends it, with the Python stack that made it, to the file ``UADP_NETWORK_LOG`` names. Child
processes inherit PYTHONPATH and so the hook; a forked one keeps it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import traceback

LOG = os.environ.get("UADP_NETWORK_LOG")
LOCAL_NAMES = {None, "", "localhost", "localhost.localdomain", "ip6-localhost"}


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False  # a name to resolve: an outside host
    return address.is_loopback or address.is_unspecified


def _outside(event: str, args: tuple) -> str | None:
    """What the event would reach, when that is not this machine."""
    if event == "socket.getaddrinfo":
        return None if _is_local(args[0]) else f"resolve {args[0]}"
    if event in ("socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        return None if _is_local(args[0]) else f"resolve {args[0]}"
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[-1]
        if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
            return None  # a Unix socket, or no address
        return None if _is_local(address[0]) else f"connect {address[0]}:{address[1]}"
    return None


def _guard(event: str, args: tuple) -> None:
    if not event.startswith("socket."):
        return
    target = _outside(event, args)
    if target is None:
        return
    if LOG:
        with open(LOG, "a") as log:
            log.write(f"pid {os.getpid()} {target} ({' '.join(sys.argv)[:200]})\n")
            log.write("".join(traceback.format_stack(limit=15)) + "\n")
    raise OSError(f"network guard: {target} refused in a test of uadp's offline promise")


sys.addaudithook(_guard)
