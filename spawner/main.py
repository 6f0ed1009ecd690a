"""The worker spawner's I/O shell around spawner/core.py (the program starts in
spawner/boot.py).

It runs under the workers' uid, never root: started by the launcher while it is still
root (fork, the drop to the workers' uid and gid with no supplementary group and an
empty capability bounding set, no_new_privs, then exec: launcher/rootstage.py), or
by systemd as the workers' account (sepconnect-spawner@.service, socket-activated, one
instance per session). It serves its one channel to the supervisor (SOCK_SEQPACKET, the
sender of every message checked), forks each worker itself (spawner/children.py) and
watches it through a pidfd, so that a signal can only reach one of its own children
that has not been reaped. It exits when the supervisor closes its channel, after
killing its workers; a worker whose spawner dies is killed by the kernel
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time

from sepconnect.ipc.spawner_messages import FD_TO_SPAWNER, FROM_SPAWNER, TO_SPAWNER
from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.spawner import children
from sepconnect.spawner.core import (
    Action,
    CloseFd,
    Finish,
    Reply,
    SendSignal,
    SpawnerCore,
    StartWorker,
)
from sepconnect.spawner.exitcodes import EXIT_USAGE


def _log(text: str) -> None:
    print(f"sepconnect spawner: {text}", file=sys.stderr, flush=True)


class Shell:
    """The channel, the workers' pidfds, and the core's actions carried out."""

    def __init__(self, channel: Channel, core: SpawnerCore) -> None:
        self.channel = channel
        self.core = core
        self.pidfds: dict[int, int] = {}  # pid → pidfd, for each worker not yet reaped
        self.poller = select.poll()
        self.poller.register(channel.fileno(), select.POLLIN)

    def run(self) -> int:
        while True:
            for fd, _ in self.poller.poll():
                if fd == self.channel.fileno():
                    actions = self._receive()
                else:
                    actions = self._reap(next(p for p, f in self.pidfds.items() if f == fd))
                code = self.execute(actions)
                if code is not None:
                    return code

    def _receive(self) -> list[Action]:
        try:
            msg, fd = self.channel.recv()
        except PeerClosed:
            return self.core.closed()
        except WireError as exc:
            return self.core.broken(str(exc))
        except OSError:  # ECONNRESET and the like: the supervisor is gone
            return self.core.closed()
        return self.core.request(msg, fd, self.channel.last_sender)

    def _reap(self, pid: int) -> list[Action]:
        pidfd = self.pidfds.pop(pid)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, wait_status = os.waitpid(pid, 0)  # readable pidfd: it has exited
        return self.core.exited(pid, os.waitstatus_to_exitcode(wait_status))

    def started(self, pid: int) -> list[Action]:
        pidfd = os.pidfd_open(pid)  # not reaped yet: it is this child
        self.pidfds[pid] = pidfd
        self.poller.register(pidfd, select.POLLIN)
        return self.core.started(pid)

    def execute(self, actions: list[Action]) -> int | None:
        for action in actions:
            if isinstance(action, StartWorker):
                try:
                    pid = children.start_worker(action.fd, action.allow_weak_sandbox)
                except OSError as exc:
                    more = self.core.start_failed(exc.strerror or str(exc))
                else:
                    more = self.started(pid)
                finally:
                    os.close(action.fd)  # the worker has its copy
                self.execute(more)
            elif isinstance(action, SendSignal):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self.pidfds[action.pid], action.signum)
            elif isinstance(action, Reply):
                with contextlib.suppress(OSError):  # gone: its close is seen next
                    self.channel.send(action.message)
            elif isinstance(action, CloseFd):
                os.close(action.fd)
            elif isinstance(action, Finish):
                if action.reason:
                    _log(action.reason)
                self.kill_all(action.grace)
                return action.code
        return None

    def kill_all(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` seconds for the workers to exit; kill the rest; reap all."""
        deadline = time.monotonic() + grace
        while self.pidfds and (left := deadline - time.monotonic()) > 0:
            waiting = select.poll()
            for pidfd in self.pidfds.values():
                waiting.register(pidfd, select.POLLIN)
            for fd, _ in waiting.poll(max(1, round(left * 1000))):
                pid = next(p for p, f in self.pidfds.items() if f == fd)
                self.poller.unregister(fd)
                os.close(self.pidfds.pop(pid))
                os.waitpid(pid, 0)
        for pid, pidfd in list(self.pidfds.items()):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(pidfd)
        self.pidfds.clear()


def serve(fd: int, peer_uid: int, first_worker: int | str | None) -> int:
    """Serve the supervisor on channel ``fd`` until it closes it; the exit status.

    ``first_worker``: the pid of the worker spawner/boot.py started from our command
    line, or why it could not (either is the answer to the spawn the supervisor counts
    on), or None."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        _log(f"--fd {fd}: {exc.strerror or exc}")
        return EXIT_USAGE
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        _log(f"--fd {fd}: not an AF_UNIX SOCK_SEQPACKET socket")
        return EXIT_USAGE
    channel = Channel(
        sock, TO_SPAWNER, FD_TO_SPAWNER, send_codec=FROM_SPAWNER, send_fd_ops=frozenset()
    )
    channel.pass_credentials()
    core = SpawnerCore(peer_uid)
    shell = Shell(channel, core)
    try:
        if isinstance(first_worker, int):
            shell.execute(shell.started(first_worker))
        elif isinstance(first_worker, str):
            shell.execute(core.start_failed(first_worker))
        return shell.run()
    finally:
        shell.kill_all()
        sock.close()
