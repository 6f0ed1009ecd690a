"""What a process has changed on the system, on disk, so that a later one can undo a crash.

Used by the helper (``<state dir>/helper-<pid>.json``: its bypass routes and its
nftables table) and by the root runner (``<state dir>-root/rootrunner-<pid>.json``: the
vpnc-script's disconnect environment and the resolver change). Each process keeps one
small JSON file (mode 0600, in a 0700 directory its own uid owns, written atomically
after every change) describing what would outlive it if it were killed; a clean exit
removes the file.

At start, before serving, a process reads the others' files (:func:`stale`). A file
whose process is still running (same pid *and* start time), or that was written in
another network namespace, is left alone. Every other one describes a crashed session,
which the reader undoes, one audit record per step, before removing the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Final

MAX_STATE: Final = 256 * 1024
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def process_start_time(pid: int) -> str | None:
    """The start time of a live process (None: no such process, or a dead one not yet
    reaped: a zombie has done all it will ever do)."""
    try:
        with open(f"/proc/{pid}/stat") as f:  # not pathlib: ~0.3 MB of RSS for one read
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def netns_id() -> int:
    """The inode of our network namespace: stale state from another one is not ours."""
    return os.stat("/proc/self/ns/net").st_ino


class StateFile:
    """This process's file (another pid's, in tests); :meth:`write` after each change,
    :meth:`remove` at a clean exit."""

    def __init__(self, directory: str, prefix: str, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.path = os.path.join(directory, f"{prefix}-{self.pid}.json")
        self.data: dict[str, Any] = {}

    def write(self, **changes: Any) -> None:
        """Merge ``changes`` in and replace the file atomically (mode 0600, no symlink)."""
        self.data.update(changes)
        self.data.update(pid=self.pid, start_time=process_start_time(self.pid), netns=netns_id())
        tmp = self.path + ".tmp"
        fd = os.open(tmp, _CREATE, 0o600)
        try:
            os.write(fd, json.dumps(self.data, sort_keys=True).encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
