"""Opening where audit records go: an audit log, the journal's socket; shared by the
helper, the supervisor and the root runner.

A module of its own, with nothing but ``os``, ``socket`` and ``stat``, so that the
launcher can open the supervisor's log while it is still root, and import the audit
machinery (supervisor/audit.py, privhelper/audit.py: JSON, dates, the journal's format)
only after it has started the first worker, whose start-up is the longest item of the
connect time; and so that the helper's serving stage, which gets both open, does not
load it.
"""

from __future__ import annotations

import os
import socket
import stat

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def open_log(path: str) -> int:
    """Open (or create, mode 0600) an audit log for appending; refuse anything but a
    regular file, and never follow a symlink."""
    fd = os.open(
        path,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY,
        0o600,
    )
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return fd


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
