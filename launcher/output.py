"""``--timestamp`` and ``--syslog``: every process's messages through one small relay.

A session's messages come from several processes: the supervisor, the privileged
helper, the workers, the root runner and the vpnc-script it runs. With either option
the launcher starts, before any of them, an *output relay*: a process of its own
(forked as root, then at once the service account, nothing else) whose standard input
is a pipe that becomes standard error of the launcher and so of every process started
after it. The relay writes each line it reads:

- to the original standard error, after ``[YYYY-MM-DD HH:MM:SS] `` with
  ``--timestamp`` (openconnect's format, local time);
- with ``--syslog``, once the tunnel is up (the supervisor's first READY, as
  openconnect: "After tunnel is brought up, use syslog for further progress
  messages"), to syslog instead: facility daemon, priority info, as
  ``sepconnect[PID]`` with the supervisor's PID (RFC 3164 over ``/dev/log``, as
  glibc's syslog(3) writes it). Where no syslog daemon listens, lines stay on standard
  error.

The relay exits when the last writer has closed the pipe, i.e. after every process of
the session. It reads only what our own processes write and parses nothing but line
ends; a line longer than :data:`MAX_LINE` is cut into pieces of that size.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from typing import Final

from sepconnect.process import lockdown
from sepconnect.process.title import set_title

__all__ = ["MAX_LINE", "OutputRelay", "format_syslog", "relay"]

MAX_LINE: Final = 4096
SYSLOG_PATH: Final = "/dev/log"
_LOG_DAEMON: Final = 3 << 3  # facility, as <syslog.h>
_LOG_INFO: Final = 6
_UP: Final = b"U"
"""On the control pipe, with the supervisor's PID after it: the tunnel is up (with
--syslog, switch to syslog)."""


def format_syslog(line: str, pid: int, now: float) -> bytes:
    """One RFC 3164 datagram as glibc's syslog(3) sends it:
    ``<PRI>Mmm dd hh:mm:ss sepconnect[PID]: message``."""
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
    return f"<{_LOG_DAEMON | _LOG_INFO}>{stamp} sepconnect[{pid}]: {line}".encode(errors="replace")


class _Syslog:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, datagram: bytes) -> bool:
        """False if no syslog daemon takes it (then the line goes to standard error)."""
        for _ in range(2):  # once more on a fresh socket: syslogd may have restarted
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                try:
                    self.sock.connect(self.path)
                except OSError:
                    self.sock.close()
                    self.sock = None
                    return False
            try:
                self.sock.send(datagram)
                return True
            except OSError:
                self.sock.close()
                self.sock = None
        return False


def relay(
    source: int,
    control: int,
    stderr: int,
    *,
    timestamp: bool,
    syslog: bool,
    syslog_path: str = SYSLOG_PATH,
) -> None:
    """Copy ``source`` to ``stderr`` line by line (stamped), or to syslog once the
    ``control`` pipe says the tunnel is up; return at the end of ``source``."""
    lines = _Lines(stderr, timestamp, _Syslog(syslog_path))
    watched = [source, control]
    pending = b""
    try:
        while True:
            ready, _, _ = select.select(watched, [], [])
            if control in ready:
                signal = os.read(control, 32)
                if not signal:
                    watched.remove(control)
                elif signal.startswith(_UP) and signal[1:].isdigit() and syslog:
                    lines.syslog_pid = int(signal[1:])
            if source not in ready:
                continue
            data = os.read(source, 65536)
            if not data:
                if pending:
                    lines.emit(pending)
                return
            *complete, pending = (pending + data).split(b"\n")
            for line in complete:
                lines.emit(line)
            while len(pending) > MAX_LINE:
                lines.emit(pending[:MAX_LINE])
                pending = pending[MAX_LINE:]
    finally:
        lines.sink.close()


class _Lines:
    def __init__(self, stderr: int, timestamp: bool, sink: _Syslog) -> None:
        self.stderr = stderr
        self.timestamp = timestamp
        self.sink = sink
        self.syslog_pid: int | None = None
        """The supervisor's PID once the tunnel is up with --syslog: lines go to syslog."""

    def emit(self, raw: bytes) -> None:
        while len(raw) > MAX_LINE:
            self.emit(raw[:MAX_LINE])
            raw = raw[MAX_LINE:]
        line = raw.decode(errors="replace")
        if self.syslog_pid is not None and self.sink.send(
            format_syslog(line, self.syslog_pid, time.time())
        ):
            return
        if self.timestamp:
            line = time.strftime("[%Y-%m-%d %H:%M:%S] ") + line
        with contextlib.suppress(OSError):  # a terminal that is gone (-b) takes nothing
            os.write(self.stderr, (line + "\n").encode(errors="replace"))


class OutputRelay:
    """The launcher's end: start the relay and tell it when the tunnel is up."""

    def __init__(self, *, timestamp: bool, syslog: bool, uid: int, gid: int) -> None:
        """Fork the relay (as root, before anything else starts: it then becomes
        ``uid``/``gid`` for good) and make its pipe our standard error."""
        source_r, source_w = os.pipe2(os.O_CLOEXEC)
        control_r, self._control = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the relay
            status = 1
            try:
                os.close(source_w)
                os.close(self._control)
                original = os.dup(2)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):  # it keeps no terminal of its own
                    os.dup2(null, fd)
                set_title("sepconnect: output relay")
                if os.geteuid() == 0:  # forked by the root stage: its own drop
                    from sepconnect.rootstage import become

                    become(uid, gid, (gid,))
                lockdown.no_new_privs_and_undumpable()
                relay(source_r, control_r, original, timestamp=timestamp, syslog=syslog)
                status = 0
            finally:
                os._exit(status)
        os.close(source_r)
        os.close(control_r)
        os.dup2(source_w, 2)  # inheritable: every process started from here on
        os.close(source_w)
        self.pid = pid

    def tunnel_up(self) -> None:
        """Called in the supervisor (this process, or its -b child) at the first READY."""
        with contextlib.suppress(OSError):
            os.write(self._control, _UP + str(os.getpid()).encode())
