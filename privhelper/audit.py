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
fatal), ``SYSLOG_IDENTIFIER=sepconnect-privhelper`` and ``SEPCONNECT_OP``,
``SEPCONNECT_RESULT``, ``SEPCONNECT_REASON``, ``SEPCONNECT_PEER_PID``,
``SEPCONNECT_PEER_UID``, ``SEPCONNECT_ARGS`` (the args as JSON). The journal
adds its own trusted ``_PID``, ``_UID``, ``_SYSTEMD_UNIT``. A journal that is
full or gone never holds the helper up: a record it cannot take is dropped
there (the file keeps it). The schema is documented in docs/security.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any

from sepconnect.ipc.schema import Message, plain
from sepconnect.process.journal import MESSAGE_ID, PRIORITY, Result, audit_line, journal_datagram

Args = dict[str, Any]


def message_args(msg: Message) -> Args:
    """A message's fields as JSON-ready values: addresses as text, lists, nested maps."""
    args: Args = plain(msg)
    return args


class Audit:
    """Writes records to ``log_fd`` (if any); refusals and fatal events also to ``stderr_fd``."""

    def __init__(
        self,
        log_fd: int | None,
        stderr_fd: int | None = 2,
        journal: socket.socket | None = None,
    ) -> None:
        self.log_fd = log_fd
        self.stderr_fd = stderr_fd
        self.journal = journal
        self.sender: tuple[int, int, int] | None = None
        """(pid, uid, gid) of the message being handled; set by the loop."""

    def record(
        self,
        op: str,
        result: Result,
        reason: str = "",
        args: Args | None = None,
    ) -> None:
        pid, uid, gid = self.sender if self.sender is not None else (None, None, None)
        entry: dict[str, object] = {
            "helper_pid": os.getpid(),
            "peer_pid": pid,
            "peer_uid": uid,
            "peer_gid": gid,
            "op": op,
            "args": args if args is not None else {},
            "result": result,
            "reason": reason,
        }
        line = audit_line(entry)
        if self.log_fd is not None:
            with contextlib.suppress(OSError):  # a full disk must not stop the cleanup
                os.write(self.log_fd, line)
        if self.journal is not None:
            self._to_journal(entry)
        if self.stderr_fd is not None and result in ("refused", "fatal"):
            told = f"sepconnect privhelper: {result} {op}: {reason}\n"
            with contextlib.suppress(OSError):
                os.write(self.stderr_fd, told.encode("ascii", "backslashreplace"))

    def _to_journal(self, entry: dict[str, object]) -> None:
        assert self.journal is not None
        op, result, reason = str(entry["op"]), str(entry["result"]), str(entry["reason"])
        fields = {
            "MESSAGE": f"sepconnect privhelper: {op} {result}" + (f": {reason}" if reason else ""),
            "MESSAGE_ID": MESSAGE_ID,
            "PRIORITY": str(PRIORITY.get(result, 6)),
            "SYSLOG_IDENTIFIER": "sepconnect-privhelper",
            "SEPCONNECT_OP": op,
            "SEPCONNECT_RESULT": result,
            "SEPCONNECT_REASON": reason,
            "SEPCONNECT_PEER_PID": str(entry["peer_pid"]),
            "SEPCONNECT_PEER_UID": str(entry["peer_uid"]),
            "SEPCONNECT_ARGS": json.dumps(entry["args"], ensure_ascii=True, separators=(",", ":")),
        }
        with contextlib.suppress(OSError):  # full (EAGAIN), gone, or too large: the file has it
            self.journal.send(journal_datagram(fields))
