"""sd_notify(3) without libsystemd: readiness, status and the watchdog under systemd.

With Type=notify the supervisor (the unit's main process) says READY=1 once the
tunnel is up, keeps STATUS= current, and pings WATCHDOG=1 at half the interval
systemd asks for. Outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable

from sepconnect.ipc.session_limits import printable


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]  # abstract namespace
        elif address.startswith("/"):
            self.address = address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self.sock: socket.socket | None = None
        self.on_ready: Callable[[], None] | None = None
        """Called once, at the first READY=1 (the launcher's -b, --pid-file, --syslog)."""
        if self.address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, **fields: str) -> None:
        if fields.get("ready") == "1" and self.on_ready is not None:
            on_ready, self.on_ready = self.on_ready, None
            on_ready()
        if self.sock is None or self.address is None:
            return
        # One line per field, whatever a value holds: a newline in it could add a field
        # of its own choosing (MAINPID=, WATCHDOG_USEC=) to the datagram.
        text = "\n".join(
            f"{key.upper()}={printable(value, 200).replace(chr(10), ' ')}"
            for key, value in fields.items()
        )
        with contextlib.suppress(OSError):  # systemd going away must not end the session
            self.sock.sendto(text.encode(), self.address)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
