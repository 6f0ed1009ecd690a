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
import dataclasses
import json
import os
import stat
from collections.abc import Iterator
from typing import Any, Final

MAX_STATE: Final = 256 * 1024


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


def ensure_dir(path: str, uid: int, gid: int) -> None:
    """Create the state directory, 0700 and ``uid``'s, or check that an existing one is.

    Called as root, a new directory is made ``uid``'s, and so is an existing *private*
    one of root's (made by root for it); anything else (``--state-dir /etc``, somebody
    else's directory) is refused, never taken over.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    private = stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077
    if private and st.st_uid == 0 != uid and os.geteuid() == 0:
        os.chown(path, uid, gid)
        st = os.lstat(path)
    if not private or st.st_uid != uid:
        raise OSError(f"{path}: not a private directory of uid {uid} (mode {st.st_mode:o})")


@dataclasses.dataclass
class StateFile:
    """This process's file; :meth:`write` after each change, :meth:`remove` at a clean exit."""

    directory: str
    prefix: str
    pid: int = dataclasses.field(default_factory=os.getpid)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"{self.prefix}-{self.pid}.json")

    def write(self, **changes: Any) -> None:
        self.data.update(changes)
        self.data["pid"] = self.pid
        self.data["start_time"] = process_start_time(self.pid)
        self.data["netns"] = netns_id()
        payload = json.dumps(self.data, sort_keys=True).encode()
        tmp = self.path + ".tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def stale(
    directory: str, prefix: str, own_pid: int | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, data) of each crashed process's ``<prefix>-<pid>.json`` in our network
    namespace."""
    own_pid = os.getpid() if own_pid is None else own_pid
    here = netns_id()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith(f"{prefix}-") and name.endswith(".json")):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                data = json.loads(os.read(fd, MAX_STATE))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        pid = data.get("pid")
        if not isinstance(pid, int) or pid == own_pid or data.get("netns") != here:
            continue
        started = process_start_time(pid)
        if started is not None and started == data.get("start_time"):
            continue  # that process is alive: its session is not ours to touch
        yield path, data
