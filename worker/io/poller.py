"""The worker's epoll: a few fds, each with a role name; no per-event objects.

`selectors` wraps every ready fd in a SelectorKey and a tuple and runs a Python method
per call. This costs little in a flood. On a lone packet, though, each wake-up is paid
cold: every call on its path costs several times its warm price
(docs/performance.md, "Added RTT"). Here a wake-up is one `epoll.poll` and a dict
lookup per ready fd.
"""

from __future__ import annotations

import math
import select

__all__ = ["Poller"]

_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT


class Poller:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._roles: dict[int, str] = {}

    def register(self, fd: int, role: str, *, write: bool = False) -> None:
        self._epoll.register(fd, _READ | (_WRITE if write else 0))
        self._roles[fd] = role

    def modify(self, fd: int, *, read: bool = True, write: bool = False) -> None:
        """Watch *fd* for what is asked; neither still reports errors and hangups."""
        self._epoll.modify(fd, (_READ if read else 0) | (_WRITE if write else 0))

    def unregister(self, fd: int) -> None:
        self._epoll.unregister(fd)
        del self._roles[fd]

    def poll(self, timeout: float | None) -> list[str]:
        """Roles of the fds that are ready (readable, writable, or in error), waiting up
        to ``timeout`` seconds (None: until one is)."""
        if timeout is None:
            wait = -1.0
        elif timeout <= 0:
            wait = 0.0
        else:
            # Round up to epoll's millisecond, as selectors does: rounding down would
            # wake a little early for a timer and spin until it is due.
            wait = math.ceil(timeout * 1e3) * 1e-3
        roles = self._roles
        try:
            return [roles[fd] for fd, _ in self._epoll.poll(wait, len(roles) or 1)]
        except InterruptedError:
            return []

    def close(self) -> None:
        self._epoll.close()
