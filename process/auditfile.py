"""Opening an audit log, shared by the helper and the supervisor.

A module of its own, with nothing but ``os`` and ``stat``, so that the launcher can
open the supervisor's log while it is still root, and import the audit machinery
(supervisor/audit.py, privhelper/audit.py: JSON, dates, the journal) only after it
has started the first worker, whose start-up is the longest item of the connect time.
"""

from __future__ import annotations

import os
import stat

__all__ = ["open_log"]


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
