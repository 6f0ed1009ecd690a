"""The worker spawner (``sepconnect-spawner --fd N --peer-uid UID``): the I/O shell around
spawner/core.py.

It runs under the worker's uid, never root: started by the launcher while it is still
root (fork, the drop to the worker's uid and gid with no supplementary group and an
empty capability bounding set, no_new_privs, then exec: launcher/spawner.py), or by
systemd as the worker account (sepconnect-spawner@.service, socket-activated, one
instance per session). It refuses to run as root, with a capability or a supplementary
group, or under the supervisor's uid. It serves its one channel to the supervisor
(SOCK_SEQPACKET, the sender of every message checked), forks each worker itself and
watches it through a pidfd, so that a signal can only reach one of its own children that
has not been reaped. It exits when the supervisor closes its channel, after killing its
workers; a worker whose spawner dies is killed by the kernel (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import socket
import sys

from sepconnect.ipc.spawner_messages import FD_TO_SPAWNER, FROM_SPAWNER, TO_SPAWNER
from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.process import privileges, programs
from sepconnect.process.title import set_title
from sepconnect.spawner.core import (
    EXIT_USAGE,
    Action,
    CloseFd,
    Finish,
    Reply,
    SendSignal,
    SpawnerCore,
    StartWorker,
)

USAGE = "usage: sepconnect-spawner --fd N --peer-uid UID"
PR_SET_PDEATHSIG = 1
_CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapAmb")
_RESET_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ)
"""Ignored here or by CPython; a worker starts with them at their defaults (as Popen's
restore_signals), since an ignored signal stays ignored across exec."""


def _log(text: str) -> None:
    print(f"sepconnect spawner: {text}", file=sys.stderr, flush=True)


def _parse_argv(argv: list[str]) -> tuple[int, int]:
    """``--fd N`` (the channel to the supervisor) and ``--peer-uid UID`` (the supervisor's
    uid). Written by the launcher or the unit file: no argparse (its imports)."""
    values: dict[str, int] = {}
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        name, _, value = arg.partition("=")
        if name not in ("--fd", "--peer-uid") or name in values:
            raise ValueError(f"unexpected argument {arg!r}")
        if not value:
            if not rest:
                raise ValueError(f"{name} needs a value")
            value = rest.pop(0)
        if not value.isdigit() or len(value) > 10:
            raise ValueError(f"{name}: not a number: {value!r}")
        values[name] = int(value)
    for name in ("--fd", "--peer-uid"):
        if name not in values:
            raise ValueError(f"{name} is required")
    return values["--fd"], values["--peer-uid"]


def start_refusal(peer_uid: int) -> str | None:
    """Why this process must not serve as the spawner, or None. Its workers get exactly
    its credentials: never root's, never the supervisor's, no capability, no group."""
    uids, gids = os.getresuid(), os.getresgid()
    if 0 in uids or 0 in gids:
        return f"refusing to run as root (uids {uids}, gids {gids})"
    if peer_uid in uids:
        return (
            f"refusing to run under the supervisor's uid {peer_uid}: the workers must have a "
            "uid of their own (docs/usage.md, Accounts)"
        )
    with open("/proc/self/status", encoding="ascii") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    held = [name for name in _CAPABILITY_SETS if int(fields.get(name, "0").strip(), 16)]
    if held:
        return f"refusing to run with capabilities ({', '.join(held)})"
    others = sorted(set(os.getgroups()) - {gids[0]})
    if others:
        return f"refusing to run with supplementary groups {others}"
    return None


def _start_worker(fd: int, allow_weak_sandbox: bool) -> int:
    """Fork and execute a worker on channel ``fd``; return its pid (the fd is still ours)."""
    argv = [*programs.program("sepconnect-worker", "sepconnect.worker"), "--fd", str(fd)]
    if allow_weak_sandbox:
        argv.append("--allow-weak-sandbox")
    env = programs.child_environment()
    spawner = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # The child: only system calls until exec, and never back into the parent's code.
    try:
        os.setpgid(0, 0)  # its own process group: a ^C at the terminal is not for it
        privileges.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != spawner:  # the spawner died before the line above
            os._exit(1)
        os.set_inheritable(fd, True)
        os.closerange(3, fd)
        os.closerange(fd + 1, 1 << 20)
        for signum in _RESET_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execve(argv[0], argv, env)  # noqa: S606  # our own program, no shell
    finally:
        os._exit(127)


class Shell:
    """The channel, the workers' pidfds, and the core's actions carried out."""

    def __init__(self, channel: Channel, core: SpawnerCore) -> None:
        self.channel = channel
        self.core = core
        self.pidfds: dict[int, int] = {}  # pid → pidfd, for each worker not yet reaped
        self.poller = select.poll()

    def run(self) -> int:
        self.poller.register(self.channel.fileno(), select.POLLIN)
        while True:
            for fd, _ in self.poller.poll():
                if fd == self.channel.fileno():
                    actions = self._receive()
                else:
                    actions = self._reap(next(p for p, f in self.pidfds.items() if f == fd))
                code = self._execute(actions)
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

    def _execute(self, actions: list[Action]) -> int | None:
        for action in actions:
            if isinstance(action, StartWorker):
                try:
                    pid = _start_worker(action.fd, action.allow_weak_sandbox)
                except OSError as exc:
                    more = self.core.start_failed(exc.strerror or str(exc))
                else:
                    pidfd = os.pidfd_open(pid)  # not reaped yet: it is this child
                    self.pidfds[pid] = pidfd
                    self.poller.register(pidfd, select.POLLIN)
                    more = self.core.started(pid)
                finally:
                    os.close(action.fd)  # the worker has its copy
                self._execute(more)
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
                self.kill_all()
                return action.code
        return None

    def kill_all(self) -> None:
        for pid, pidfd in list(self.pidfds.items()):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(pidfd)
        self.pidfds.clear()


def main(argv: list[str] | None = None) -> int:
    try:
        fd, peer_uid = _parse_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"{USAGE}\nsepconnect-spawner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    set_title("sepconnect: spawner")
    # The supervisor decides when the session ends; it closes our channel then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    privileges.no_new_privs_and_undumpable()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    refusal = start_refusal(peer_uid)
    if refusal is not None:
        _log(refusal)
        return EXIT_USAGE
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
    shell = Shell(channel, SpawnerCore(peer_uid))
    try:
        return shell.run()
    finally:
        shell.kill_all()
        sock.close()
