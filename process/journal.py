"""The one path of every audit record: a line of its log and a datagram to the journal.

Shared by the helper (privhelper/audit.py), the supervisor (supervisor/audit.py) and the
root runner. A record is a map: who, ``op``, ``args``, ``result``, ``reason``.
:func:`write_record` appends it to its log as one line of compact ASCII JSON after the
time, and sends it to journald in its native protocol (one datagram of fields, each in
the protocol's binary form, to the socket process/journal_socket.py connected at start,
before any seccomp filter): ``MESSAGE``, ``MESSAGE_ID``, ``PRIORITY``,
``SYSLOG_IDENTIFIER``, and each field of the record as ``SEPCONNECT_<NAME>`` (text as it
is, anything else as JSON). docs/security.md documents the fields.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import struct
from typing import Final, Literal

Result = Literal["ok", "refused", "fatal", "info"]
"""The outcome field of every audit record."""

MESSAGE_ID: Final = "2c5a1d3f0e8b4b6e9a7c5d4e3f2a1b0c"
"""MESSAGE_ID of the helper's audit records in the journal (journalctl MESSAGE_ID=… _UID=…:
anyone may send this id, only the helper's uid is the helper)."""
PRIORITY: Final[dict[str, int]] = {"ok": 6, "info": 6, "refused": 4, "fatal": 3}
"""syslog priority of a record, by its result."""


def _json(value: object) -> str:
    """Compact ASCII JSON: any text a peer chose stays on its line."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def write_record(
    entry: dict[str, object],
    log_fd: int | None,
    journal: socket.socket | None,
    identifier: str,
    message_id: str,
) -> None:
    """``entry`` to the log (after the time, UTC to the millisecond) and to the journal
    (as ``identifier``, e.g. ``sepconnect-privhelper``), each if there is one. A full
    disk, or a journal that is full (EAGAIN) or gone, holds nothing up: the other keeps
    the record."""
    if log_fd is not None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        with contextlib.suppress(OSError):
            os.write(log_fd, f"{_json({'time': now, **entry})}\n".encode())
    if journal is None:
        return
    op, result, reason = entry["op"], str(entry["result"]), entry["reason"]
    fields = {
        "MESSAGE": f"{identifier.replace('-', ' ')}: {op} {result}"
        + (f": {reason}" if reason else ""),
        "MESSAGE_ID": message_id,
        "PRIORITY": str(PRIORITY[result]),
        "SYSLOG_IDENTIFIER": identifier,
    }
    for name, value in entry.items():
        fields[f"SEPCONNECT_{name.upper()}"] = value if isinstance(value, str) else _json(value)
    datagram = bytearray()
    for key, text in fields.items():  # the protocol's binary form: any value, newlines too
        data = text.encode("utf-8", "backslashreplace")
        datagram += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    with contextlib.suppress(OSError):
        journal.send(datagram)
