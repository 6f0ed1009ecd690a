"""The journal's socket: connected once at start, before any seccomp filter, by the
helper's start stage, the supervisor and the root runner (process/journal.py writes the
records to it). A module of its own so that nothing that does not open it loads it: not
the launcher's root stage, not the helper's serving stage (it gets the socket open)."""

from __future__ import annotations

import os
import socket

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def open_journal(path: str = JOURNAL_SOCKET) -> socket.socket | None:
    """A non-blocking datagram socket connected to journald, or None where there is none."""
    if not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock
