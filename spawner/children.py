"""What the spawner does before it speaks msgpack: its command line, the check of its own
credentials, and starting one worker. Light on purpose (os, signal and the process
plumbing only): spawner/boot.py starts the first worker with it before the codec's
imports, which would delay the worker, the longest item of the connect time."""

from __future__ import annotations

import os
import signal

from sepconnect.process import privileges, programs

USAGE = "usage: sepconnect-spawner --fd N --peer-uid UID [--first-worker N [--allow-weak-sandbox]]"
PR_SET_PDEATHSIG = 1
_CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapAmb")
_RESET_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ)
"""Ignored here or by CPython; a worker starts with them at their defaults (as Popen's
restore_signals), since an ignored signal stays ignored across exec."""


class Args:  # neither a dataclass nor a NamedTuple: their imports would delay the worker
    __slots__ = ("allow_weak_sandbox", "fd", "first_worker", "peer_uid")

    def __init__(
        self, fd: int, peer_uid: int, first_worker: int | None, allow_weak_sandbox: bool
    ) -> None:
        self.fd = fd  # the channel to the supervisor
        self.peer_uid = peer_uid  # the supervisor's uid: the only sender served
        self.first_worker = first_worker  # a worker's channel end: start it at once
        self.allow_weak_sandbox = allow_weak_sandbox  # that first worker's option

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Args) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


def parse_argv(argv: list[str]) -> Args:
    """Written by the launcher or the unit file: no argparse (its imports)."""
    values: dict[str, int] = {}
    weak = False
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--allow-weak-sandbox" and not weak:
            weak = True
            continue
        name, _, value = arg.partition("=")
        if name not in ("--fd", "--peer-uid", "--first-worker") or name in values:
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
    if weak and "--first-worker" not in values:
        raise ValueError("--allow-weak-sandbox goes with --first-worker")
    return Args(values["--fd"], values["--peer-uid"], values.get("--first-worker"), weak)


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


def start_worker(fd: int, allow_weak_sandbox: bool) -> int:
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
