"""The audit records' journal side, shared by the helper and the supervisor.

journald's native protocol: one datagram of ``KEY=value`` lines to
:data:`JOURNAL_SOCKET`, connected once at start (before any seccomp filter).
The helper's records carry :data:`MESSAGE_ID`, the supervisor's events
:data:`SESSION_MESSAGE_ID`; docs/security.md documents the fields.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import struct
from typing import Final, Literal

Result = Literal["ok", "refused", "fatal", "info"]
"""The outcome field of every audit record."""

JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"
MESSAGE_ID: Final = "2c5a1d3f0e8b4b6e9a7c5d4e3f2a1b0c"
"""MESSAGE_ID of the helper's audit records in the journal (journalctl MESSAGE_ID=… _UID=…:
anyone may send this id, only the helper's uid is the helper)."""
SESSION_MESSAGE_ID: Final = "7d3e9b1c4a2f4e8d9c6b5a4f3e2d1c0b"
"""MESSAGE_ID of the supervisor's session events."""
PRIORITY: Final[dict[str, int]] = {"ok": 6, "info": 6, "refused": 4, "fatal": 3}
"""syslog priority of a record, by its result."""


def audit_line(entry: dict[str, object]) -> bytes:
    """One line of an audit or session log: ``entry`` after the time (UTC, to the
    millisecond), as compact ASCII JSON (any text a peer chose stays on the line)."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    line = json.dumps({"time": now, **entry}, ensure_ascii=True, separators=(",", ":"))
    return f"{line}\n".encode()


def process_entry(
    source: str, op: str, result: Result, reason: str, args: object
) -> dict[str, object]:
    """The record of the supervisor and of the root runner: who (``source``, pid, uid),
    then what (``op``, ``args``, ``result``, ``reason``, at most 1,000 characters)."""
    return {
        "source": source,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "op": op,
        "args": args,
        "result": result,
        "reason": reason[:1000],
    }


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


def journal_datagram(fields: dict[str, str]) -> bytes:
    """journald's native format: KEY=value lines; values with a newline length-prefixed."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "backslashreplace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)
