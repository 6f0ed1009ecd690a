"""The helper's audit trail: one JSON line per request and per security event.

Each record holds the time (ISO-8601, UTC), the helper's pid, the sender's
pid/uid/gid as the kernel reported them (SCM_CREDENTIALS), the request type,
its validated arguments (the message's fields), the result (``ok``,
``refused``, ``fatal`` or ``info``) and a reason. Records are appended to the
audit log, opened once before the helper drops its capabilities. Each goes out
in a single write(2), so O_APPEND keeps lines whole. Refusals and fatal events
are also told on stderr in one human-readable line: the user's terminal
should say why, without the routine records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import stat
from typing import Literal

from sepconnect.privhelper.wire import Message

Result = Literal["ok", "refused", "fatal", "info"]
Scalar = str | int | None
Args = dict[str, Scalar | list[Scalar]]


def open_log(path: str) -> int:
    """Open (or create, mode 0600) the audit log for appending; refuse anything but a file."""
    fd = os.open(
        path,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY,
        0o600,
    )
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return fd


def message_args(msg: Message) -> Args:
    """A message's fields as JSON-ready values (tuples become lists)."""
    args: Args = {}
    for field in dataclasses.fields(msg):  # type: ignore[arg-type]  # every Message is a dataclass
        value = getattr(msg, field.name)
        args[field.name] = list(value) if isinstance(value, tuple) else value
    return args


class Audit:
    """Writes records to ``log_fd`` (if any); refusals and fatal events also to ``stderr_fd``."""

    def __init__(self, log_fd: int | None, stderr_fd: int | None = 2) -> None:
        self.log_fd = log_fd
        self.stderr_fd = stderr_fd
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
        entry = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "helper_pid": os.getpid(),
            "peer_pid": pid,
            "peer_uid": uid,
            "peer_gid": gid,
            "op": op,
            "args": args if args is not None else {},
            "result": result,
            "reason": reason,
        }
        line = (json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
        if self.log_fd is not None:
            with contextlib.suppress(OSError):  # a full disk must not stop the cleanup
                os.write(self.log_fd, line)
        if self.stderr_fd is not None and result in ("refused", "fatal"):
            told = f"sepconnect privhelper: {result} {op}: {reason}\n"
            with contextlib.suppress(OSError):
                os.write(self.stderr_fd, told.encode("ascii", "backslashreplace"))
