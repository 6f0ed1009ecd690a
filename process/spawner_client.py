"""The supervisor's side of the worker spawner: workers with Popen's interface.

The worker runs under a uid of its own, which the supervisor (unprivileged, no
capabilities) can neither start nor signal; the spawner (spawner/) does both for it.
:class:`WorkerProcess` has what the supervisor's shell uses of ``subprocess.Popen``
(``pid``, ``poll``, ``terminate``, ``kill``, ``wait`` with a timeout, ``returncode``),
carried over the spawner's channel by :class:`SpawnerClient`.

Kept out of supervisor/ so that the launcher can have the first worker started before
it imports the supervisor (docs/performance.md, "Connect time"): a spawn is sent at once
(or the spawner starts the first worker from its command line) and the reply is read
only when the worker's pid is first wanted.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections import deque
from typing import Final, Literal

from sepconnect.ipc.spawner_messages import (
    FROM_SPAWNER,
    SIGNALS,
    TO_SPAWNER,
    Exited,
    Refused,
    Signal,
    Signalled,
    Spawn,
    Spawned,
)
from sepconnect.ipc.wire import PROTO_VERSION, Channel, Message, PeerClosed, WireError, socketpair

REPLY_TIMEOUT: Final = 10.0
"""Seconds to wait for a reply the supervisor needs now (a new worker's pid); the spawner
answers in milliseconds."""


class SpawnerGone(Exception):
    """The spawner's channel closed or broke, it runs under a forbidden uid, or it
    refused to start a worker: no worker can be started any more."""


class WorkerProcess:
    """One worker, as ``subprocess.Popen`` shows a child (the parts the supervisor uses)."""

    def __init__(self, client: SpawnerClient) -> None:
        self._client = client
        self._pid: int | None = None
        self._refused: str | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        """The worker's pid; waits for the spawner's reply to our spawn if it has not come
        yet. Raises :class:`SpawnerGone` if the worker could not be started."""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while self._pid is None and self._refused is None:
            if not self._client.read(deadline - time.monotonic()):
                self._client.lose("no answer to a spawn request")
        if self._pid is None:
            raise SpawnerGone(self._refused or "the worker was not started")
        return self._pid

    def poll(self) -> int | None:
        self._client.pump()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            if self._client.gone is not None:  # lose() settles every worker it knew
                raise SpawnerGone(self._client.gone)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self._pid}", timeout or 0.0)
            self._client.read(left)
        return self.returncode

    def terminate(self) -> None:
        self._client.signal(self, "SIGTERM")

    def kill(self) -> None:
        self._client.signal(self, "SIGKILL")


class SpawnerClient:
    """Our end of the spawner's channel: requests out, their replies matched in order,
    and each worker's exit recorded on its :class:`WorkerProcess`."""

    def __init__(
        self, sock: socket.socket, *, forbidden_uids: frozenset[int] | None = None
    ) -> None:
        """``forbidden_uids``: uids the spawner must not run under (default: root's and
        ours, checked on every message it sends)."""
        self.forbidden_uids = (
            frozenset({0, os.getuid()}) if forbidden_uids is None else forbidden_uids
        )
        self.channel = Channel(
            sock, FROM_SPAWNER, send_codec=TO_SPAWNER, send_fd_ops=frozenset({Spawn.op})
        )
        # The spawner checks every request's sender (SCM_CREDENTIALS); the kernel attaches
        # them only if one end has SO_PASSCRED when a message is sent, and the spawner may
        # not have set it yet when our first spawn goes out. We check its uid too.
        self.channel.pass_credentials()
        self._pending: deque[WorkerProcess | None] = deque()  # a spawn's, or None: a signal's
        self._live: dict[int, WorkerProcess] = {}
        self.gone: str | None = None
        """Why the spawner can no longer be used; None while it can."""

    def fileno(self) -> int:
        return self.channel.fileno()

    def close(self) -> None:
        """End the spawner's service: it kills what is left of its workers and exits."""
        self.lose("closed by the supervisor")
        self.channel.sock.close()

    def spawn(self, *, allow_weak_sandbox: bool) -> tuple[WorkerProcess, socket.socket]:
        """Start a worker; returns it and our end of its SEQPACKET channel. The pid comes
        with the spawner's reply, read when first asked for."""
        if self.gone is not None:
            raise SpawnerGone(self.gone)
        ours, theirs = socketpair()
        proc = WorkerProcess(self)
        try:
            request = Spawn(proto=PROTO_VERSION, allow_weak_sandbox=allow_weak_sandbox)
            self.channel.send(request, theirs.fileno())
        except (OSError, WireError) as exc:
            ours.close()
            self.lose(f"cannot send a spawn request: {exc}")
            raise SpawnerGone(self.gone or "") from None
        finally:
            theirs.close()  # the spawner has its copy, and the worker will
        self._pending.append(proc)
        return proc, ours

    def started_at_exec(self, ours: socket.socket) -> tuple[WorkerProcess, socket.socket]:
        """The worker the spawner starts from its command line (``--first-worker``, the
        other end of ``ours``), before anything we send: its reply comes first."""
        proc = WorkerProcess(self)
        self._pending.appendleft(proc)
        return proc, ours

    def signal(self, proc: WorkerProcess, name: Literal["SIGTERM", "SIGKILL"]) -> None:
        """Ask for ``name`` to be sent to ``proc``; nothing if it has exited (as Popen)."""
        assert name in SIGNALS
        if self.gone is not None or proc.returncode is not None or proc._pid is None:
            return
        try:
            self.channel.send(Signal(pid=proc._pid, signal=name))
        except (OSError, WireError) as exc:
            self.lose(f"cannot send a signal request: {exc}")
            return
        self._pending.append(None)

    def pump(self) -> None:
        """Take in every message that has already arrived, without waiting."""
        while self.gone is None and self.read(0):
            pass

    def read(self, timeout: float | None) -> bool:
        """Take in one message, waiting up to ``timeout`` seconds (None: for ever) for it;
        False if none came (or the spawner is gone)."""
        if self.gone is not None:
            return False
        poller = select.poll()
        poller.register(self.channel.fileno(), select.POLLIN)
        if not poller.poll(None if timeout is None else max(0, round(timeout * 1000))):
            return False
        try:
            msg, _ = self.channel.recv()
        except PeerClosed:
            self.lose("its channel closed")
            return False
        except (WireError, OSError) as exc:
            self.lose(f"its channel broke: {exc}")
            return False
        sender = self.channel.last_sender
        if sender is None or sender[1] in self.forbidden_uids:
            who = "no credentials" if sender is None else f"uid {sender[1]}"
            self.lose(f"it runs with {who}; the workers must have a uid of their own")
            return False
        self._take(msg)
        return True

    def _take(self, msg: Message) -> None:
        if isinstance(msg, Exited):
            proc = self._live.pop(msg.pid, None)
            if proc is not None:
                proc.returncode = msg.status
            return
        if not self._pending:
            self.lose(f"{msg.op} answers no request")
            return
        head = self._pending.popleft()
        if isinstance(msg, Spawned) and head is not None:
            head._pid = msg.pid
            self._live[msg.pid] = head
        elif isinstance(msg, Refused) and head is not None:
            head._refused = msg.reason
            self.lose(f"it refused to start a worker ({msg.reason})")
        elif isinstance(msg, Signalled | Refused) and head is None:
            pass  # refused: that worker has exited, and its Exited is on its way
        else:
            self.lose(f"{msg.op} does not answer the request it follows")

    def lose(self, reason: str) -> None:
        """The spawner is no longer used: each worker it ran is taken as killed (the kernel
        kills a spawner's workers when it exits: PR_SET_PDEATHSIG). Our end stays open
        until :meth:`close` (the supervisor's selector still has its fd)."""
        if self.gone is not None:
            return
        self.gone = f"the worker spawner: {reason}"
        for proc in self._live.values():
            proc.returncode = -SIGNALS["SIGKILL"]
        for pending in self._pending:
            if pending is not None:
                pending._refused = self.gone
                pending.returncode = -SIGNALS["SIGKILL"]
        self._live.clear()
        self._pending.clear()
