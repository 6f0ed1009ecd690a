"""The helper's audit trail: one JSON line per request and per security event.

Each record holds the time (ISO-8601, UTC), the helper's pid, the sender's
pid/uid/gid as the kernel reported them (SCM_CREDENTIALS), the request type,
its validated arguments (the message's fields), the result (``ok``,
``refused``, ``fatal`` or ``info``) and a reason. Records are appended to the
audit log, opened once before the helper drops its capabilities. Each goes out
in a single write(2), so O_APPEND keeps lines whole. Refusals and fatal events
are also told on stderr in one human-readable line: the user's terminal
should say why, without the routine records.

Where systemd-journald runs, each record also goes to the journal through
its native protocol (a datagram to /run/systemd/journal/socket, connected
once at start, before the seccomp filter) with structured fields:
``MESSAGE_ID`` :data:`MESSAGE_ID`, ``PRIORITY`` (6 ok/info, 4 refused, 3
fatal), ``SYSLOG_IDENTIFIER=sepconnect-privhelper`` and each field of the record as
``SEPCONNECT_<NAME>``: ``SEPCONNECT_OP``, ``SEPCONNECT_RESULT``, ``SEPCONNECT_REASON``,
``SEPCONNECT_HELPER_PID``, ``SEPCONNECT_PEER_PID``, ``SEPCONNECT_PEER_UID``,
``SEPCONNECT_PEER_GID``, ``SEPCONNECT_ARGS`` (the args as JSON). The journal adds its
own trusted ``_PID``, ``_UID``, ``_SYSTEMD_UNIT``. A journal that is full or gone never
holds the helper up: a record it cannot take is dropped there (the file keeps it).
process/journal.py writes both; the schema is documented in docs/security.md.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from sepconnect.process.journal import MESSAGE_ID, Result, write_record

Args = dict[str, Any]
"""A request's fields as JSON-ready values (schema.plain): addresses as text, lists, maps."""


class Audit:
    """Writes records to ``log_fd`` (if any); refusals and fatal events also to ``stderr_fd``."""

    def __init__(
        self, log_fd: int | None, stderr_fd: int | None = 2, journal: socket.socket | None = None
    ) -> None:
        self.log_fd = log_fd
        self.stderr_fd = stderr_fd
        self.journal = journal
        self.sender: tuple[int, int, int] | None = None
        """(pid, uid, gid) of the message being handled; set by the loop."""

    def record(self, op: str, result: Result, reason: str = "", args: Args | None = None) -> None:
        pid, uid, gid = self.sender if self.sender is not None else (None, None, None)
        who = {"helper_pid": os.getpid(), "peer_pid": pid, "peer_uid": uid, "peer_gid": gid}
        what = {"op": op, "args": {} if args is None else args, "result": result, "reason": reason}
        write_record(
            {**who, **what}, self.log_fd, self.journal, "sepconnect-privhelper", MESSAGE_ID
        )
        if self.stderr_fd is not None and result in ("refused", "fatal"):
            told = f"sepconnect privhelper: {result} {op}: {reason}\n"
            with contextlib.suppress(OSError):
                os.write(self.stderr_fd, told.encode("ascii", "backslashreplace"))
