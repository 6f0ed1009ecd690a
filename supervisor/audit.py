"""The supervisor's security events: its session log (docs/security.md, "Audit trail").

The launcher opens the session log (append-only, ``--session-log``) while it is still
root and hands the fd to :func:`configure`; the supervisor, unprivileged from then
on, appends one JSON line per event and sends it to the journal where journald runs.
The helper's audit log is a different file, which the supervisor cannot open: an
O_APPEND fd does not stop ftruncate, so a supervisor holding one could erase or forge
the helper's records. These events are only as trustworthy as the supervisor.

Events: ``connect``, ``disconnect``, ``auth_failure``, ``worker_crash``,
``unusable_config``, ``login_banner``, ``control_refused`` (and whatever later code records with
:func:`event`). A record never carries a secret: callers pass the arguments
explicitly, and :func:`event` refuses the argument names that could hold one (a cookie,
a password, a key).
"""

from __future__ import annotations

import socket
from typing import Final

from sepconnect.process.auditfile import open_log as open_log  # re-exported: opened while root
from sepconnect.process.journal import Result, write_record
from sepconnect.process.journal_socket import JOURNAL_SOCKET, open_journal
from sepconnect.process.records import SESSION_MESSAGE_ID, process_entry

Scalar = str | int | float | bool | None

SECRET_NAMES: Final = frozenset({"cookie", "password", "passwords", "secret", "key", "token"})


class _Sink:
    fd: int | None = None
    journal: socket.socket | None = None


def configure(fd: int | None, journal_path: str | None = JOURNAL_SOCKET) -> None:
    """Where events go from now on: the session log fd (ours to keep) and the journal."""
    _Sink.fd = fd
    if _Sink.journal is not None:
        _Sink.journal.close()
    _Sink.journal = None if journal_path is None else open_journal(journal_path)


def event(op: str, result: Result, reason: str = "", **args: Scalar) -> dict[str, object]:
    """Record one security event; returns the record (also for tests)."""
    leaked = SECRET_NAMES & {name.lower() for name in args}
    if leaked:
        raise ValueError(f"audit event {op}: refusing secret-bearing argument(s) {sorted(leaked)}")
    record = process_entry("supervisor", op, result, reason, args)
    write_record(record, _Sink.fd, _Sink.journal, "sepconnect-supervisor", SESSION_MESSAGE_ID)
    return record
