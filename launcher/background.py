"""``-b/--background`` and ``--pid-file``: return once the tunnel is up, as openconnect.

openconnect forks when the tunnel is up: the parent exits 0 and the child carries on.
Here the supervisor's children (the helper, the workers) must stay its own, so the
launcher's root stage (launcher/rootstage.py) forks *before* it starts any of them, and
the process the user started waits, as root:

- the child goes on as every session's launcher does (helper, privilege drop,
  supervisor); at the supervisor's first READY (the tunnel is up, routes and DNS set)
  it leaves the terminal's session (setsid), writes its PID to ``--pid-file`` and tells
  the waiting parent, which exits 0 (printing "continuing in background; pid N");
- if the session ends before that, the parent exits with the child's exit code and
  removes the PID file it created: a failed login is reported as without ``-b``.

The PID file is opened by root, before anything starts (so a bad path is
a usage error, as with openconnect), written when the tunnel is up (with or without
``-b``), and emptied when the session ends: the supervisor is no longer root then and
may not remove it, and an empty file names no process that a later ``kill $(cat
FILE)`` could hit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import stat
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sepconnect.output import OutputRelay

__all__ = ["Background", "PidFile", "TunnelUpHooks", "start_hooks"]


class PidFile:
    """``--pid-file``: opened by root (launcher/files.py), written by the supervisor,
    emptied at its end. *fd*: already opened and checked (the root stage's -b parent)."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        if fd is not None:
            self.fd = fd
            return
        from sepconnect import files

        try:
            self.fd = files.open_file("pid-file", path)
        except OSError as exc:
            raise ValueError(f"--pid-file {path}: {exc.strerror}") from None
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            raise ValueError(f"--pid-file {path}: not a regular file")
        os.ftruncate(self.fd, 0)

    def write(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def empty(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)

    def remove(self) -> None:
        """In the waiting parent (still root), when the session never came up."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class Background:
    """The fork and the wait; :meth:`tunnel_up` in the child, once."""

    def __init__(self, pid_file: PidFile | None, *, quiet: bool) -> None:
        self.pid_file = pid_file
        ready_r, self._ready = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            os.close(ready_r)
            return
        os.close(self._ready)
        os._exit(_wait_for(child, ready_r, pid_file, quiet))

    def tunnel_up(self) -> None:
        """Leave the terminal's session and release the parent (the first READY)."""
        with contextlib.suppress(OSError):
            os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # nothing will be asked any more; the shell has the terminal
        os.close(null)
        with contextlib.suppress(OSError):
            os.write(self._ready, b"1")
            os.close(self._ready)


def _wait_for(child: int, ready: int, pid_file: PidFile | None, quiet: bool) -> int:
    """In the parent: 0 once the child says the tunnel is up, else its exit code."""
    # ^C and a hang-up reach the child as well (it is in our process group until it
    # is up) and end the session there; a SIGTERM sent to us alone is passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: os.kill(child, signal.SIGTERM))
    while True:
        try:
            up = os.read(ready, 1)
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
    if up:
        if not quiet:
            print(f"sepconnect: continuing in background; pid {child}", file=sys.stderr)
        return 0
    _, status = os.waitpid(child, 0)
    if pid_file is not None:
        pid_file.remove()
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


@dataclasses.dataclass(frozen=True, slots=True)
class TunnelUpHooks:
    """What the root phase set up for the supervisor's first READY (launcher/session.py)."""

    pid_file: PidFile | None = None
    relay: OutputRelay | None = None
    background: Background | None = None

    def tunnel_up(self) -> None:
        """The PID file, syslog from now on, and -b's parent released (last: once it
        exits, the PID file is to be read)."""
        if self.relay is not None:
            self.relay.tunnel_up()
        if self.pid_file is not None:
            self.pid_file.write()
        if self.background is not None:
            self.background.tunnel_up()

    def session_ended(self) -> None:
        if self.pid_file is not None:
            self.pid_file.empty()


def start_hooks(
    plan: dict[str, Any], files: dict[tuple[str, str], int]
) -> tuple[OutputRelay | None, Background | None]:
    """In the root stage (launcher/rootstage.py), only with --timestamp, --syslog or -b,
    before the spawner and the helper start: the output relay (their standard error),
    then -b's fork (they are the children of the process that goes on; the parent
    waits, as root, to remove the PID file if the session never comes up)."""
    _, uid, gid = plan["service"]
    relay = None
    if plan["relay"] is not None:
        from sepconnect.output import OutputRelay

        relay = OutputRelay(timestamp=plan["relay"][0], syslog=plan["relay"][1], uid=uid, gid=gid)
    if not plan["background"]:
        return relay, None
    path = plan["pid_file"]
    pid_file = None if path is None else PidFile(path, files["pid-file", path])
    return relay, Background(pid_file, quiet=plan["quiet"])
