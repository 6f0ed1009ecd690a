"""The worker spawner's decisions, sans-I/O: requests and process events in, actions out.

Like the supervisor's session machine it never forks, signals, reads a socket or a
clock; spawner/main.py is its I/O shell. What it decides:

- who may ask: every request must come from the supervisor's uid (the sender's
  credentials, SCM_CREDENTIALS, per message); anything else is refused with a reason
  and ends the spawner, which then kills its workers;
- what may be asked: start a worker (at most :data:`MAX_WORKERS` at once), and send
  SIGTERM or SIGKILL to one of *its own* children that has not been reaped (never any
  other pid: a pid it has reaped may already be someone else's);
- what it reports: each request's one reply, in order, and each worker's exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sepconnect.ipc.spawner_messages import (
    SIGNALS,
    Exited,
    Refused,
    Signal,
    Signalled,
    Spawn,
    Spawned,
)
from sepconnect.ipc.wire import Message
from sepconnect.spawner.exitcodes import EXIT_OK, EXIT_REFUSED

CLOSE_GRACE: Final = 5.0
"""Seconds the workers get to exit by themselves once the supervisor has closed our
channel (it died: each worker sees its own channel close too, and logs off the server),
before they are killed. The supervisor's own grace for a dismissed worker is the same."""

MAX_WORKERS: Final = 16
"""Workers alive at once. A session has one carrying the tun, at most one connecting
and a few leaving (each is killed 5 s after it is dismissed); more is a supervisor
gone wrong."""


Sender = tuple[int, int, int] | None
"""(pid, uid, gid) of a message's sender, from SCM_CREDENTIALS; None if not attached."""


@dataclass(frozen=True, slots=True)
class StartWorker:
    """Fork and execute a worker on channel ``fd``; answer :meth:`SpawnerCore.started` or
    :meth:`SpawnerCore.start_failed`. The fd is the shell's to close afterwards."""

    fd: int
    allow_weak_sandbox: bool


@dataclass(frozen=True, slots=True)
class SendSignal:
    pid: int
    signum: int


@dataclass(frozen=True, slots=True)
class Reply:
    message: Message


@dataclass(frozen=True, slots=True)
class CloseFd:
    fd: int


@dataclass(frozen=True, slots=True)
class Finish:
    """Give the workers ``grace`` seconds to exit, kill those left (SIGKILL), reap them
    and exit with ``code``; log ``reason`` if there is one."""

    code: int
    reason: str
    grace: float = 0.0


Action = StartWorker | SendSignal | Reply | CloseFd | Finish


class SpawnerCore:
    """The spawner of one supervisor, whose uid is ``peer_uid``."""

    def __init__(self, peer_uid: int) -> None:
        self.peer_uid = peer_uid
        self.children: set[int] = set()
        """Our workers that have not been reaped: the only pids we signal."""

    def request(self, msg: Message, fd: int | None, sender: Sender) -> list[Action]:
        """A decoded message from the channel, with the fd it carried (a Spawn's)."""
        if sender is None or sender[0] <= 0 or sender[1] != self.peer_uid:
            who = "no credentials" if sender is None else f"uid {sender[1]}"
            reason = f"refused: the sender has {who}, not the supervisor's uid {self.peer_uid}"
            closing: list[Action] = [] if fd is None else [CloseFd(fd)]
            return [*closing, Reply(Refused(reason=reason)), Finish(EXIT_REFUSED, reason)]
        if isinstance(msg, Spawn) and fd is not None:
            if len(self.children) >= MAX_WORKERS:
                reason = f"refused: {len(self.children)} workers are running already"
                return [CloseFd(fd), Reply(Refused(reason=reason))]
            return [StartWorker(fd, msg.allow_weak_sandbox)]
        if isinstance(msg, Signal):
            if msg.pid not in self.children:
                reason = f"refused: pid {msg.pid} is not a running worker of this spawner"
                return [Reply(Refused(reason=reason))]
            return [SendSignal(msg.pid, SIGNALS[msg.signal]), Reply(Signalled(pid=msg.pid))]
        # The codec lets nothing else through (and a Spawn always carries its fd).
        reason = f"unexpected {msg.op}"
        return [*([] if fd is None else [CloseFd(fd)]), Finish(EXIT_REFUSED, reason)]

    def started(self, pid: int) -> list[Action]:
        self.children.add(pid)
        return [Reply(Spawned(pid=pid))]

    def start_failed(self, reason: str) -> list[Action]:
        return [Reply(Refused(reason=f"cannot start a worker: {reason}"[:200]))]

    def exited(self, pid: int, status: int) -> list[Action]:
        """Worker ``pid`` was reaped with ``status`` (Popen's convention)."""
        if pid not in self.children:
            return []
        self.children.discard(pid)
        return [Reply(Exited(pid=pid, status=max(-64, min(255, status))))]

    def broken(self, reason: str) -> list[Action]:
        """The channel broke the protocol (undecodable, oversized, a stray fd)."""
        return [Finish(EXIT_REFUSED, f"protocol violation: {reason}")]

    def closed(self) -> list[Action]:
        """The supervisor closed its end: the session is over. Normally it has reaped
        every worker first; if it died, they log off and exit (or are killed)."""
        return [Finish(EXIT_OK, "", CLOSE_GRACE)]
