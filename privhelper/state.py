"""What a helper has installed, on disk, so that the next start can undo a crash.

Each helper keeps one small JSON file, ``<state dir>/helper-<pid>.json``
(default state dir ``/run/sepconnect-helper``, mode 0700, files 0600, written
atomically after every change), describing what would outlive it if it were
killed: its bypass routes (on other devices; the tun's own routes and
addresses disappear with the tun), the resolver change (the saved original of
/etc/resolv.conf, or the resolvconf record), the nftables table, and the
environment of a vpnc-script that ran ``connect``. A clean exit removes the
file.

At start, before serving, the helper reads the others' files. A file whose
helper is still running (same pid *and* start time), or that was written in
another network namespace, is left alone. Every other one describes a crashed
session: its routes are deleted by their exact attributes (our private route
protocol, :data:`netconf.RTPROT_SEPCONNECT`, and metric, so nobody else's route
can match), resolv.conf is restored if it still holds what that helper wrote,
the resolvconf record and the nftables table are deleted, and the vpnc-script
(if this helper has one) runs ``disconnect`` with the crashed session's
environment. Each step is one audit record (``recover``); then the file goes.
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
    try:
        with open(f"/proc/{pid}/stat") as f:  # not pathlib: ~0.3 MB of RSS for one read
            text = f.read()
    except OSError:
        return None
    return text.rpartition(")")[2].split()[19]


def netns_id() -> int:
    """The inode of our network namespace: stale state from another one is not ours."""
    return os.stat("/proc/self/ns/net").st_ino


def ensure_dir(path: str) -> None:
    """Create the state directory 0700, or check an existing one is root's and private."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OSError(f"{path}: not a private directory of ours (mode {st.st_mode:o})")


@dataclasses.dataclass
class StateFile:
    """This helper's file; :meth:`write` after each change, :meth:`remove` at a clean exit."""

    directory: str
    pid: int = dataclasses.field(default_factory=os.getpid)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"helper-{self.pid}.json")

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


def stale(directory: str, own_pid: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, data) of each crashed helper's state file in our network namespace."""
    own_pid = os.getpid() if own_pid is None else own_pid
    here = netns_id()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith("helper-") and name.endswith(".json")):
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
            continue  # that helper is alive: its session is not ours to touch
        yield path, data
