"""The helper's root *script runner*: the only part of sepconnect that executes programs.

The helper itself never execs (its seccomp filter may forbid execve). When root's
argv asks for something that needs a program — ``--script`` (a vpnc-script),
``--fail-closed`` (``nft``), ``--dns-backend resolvconf`` (``resolvconf``), or
the clean-up of a crashed session that used one of them — the helper starts this
process at start-up, *before* it drops its capabilities and before any seccomp
filter is loaded::

    python3 -I -m sepconnect.privhelper.runner --fd N [--script PATH [--script-arg=ARG]...]
            [--nft PATH] [--resolvconf PATH]

It keeps full root (a vpnc-script expects it, as under openconnect) and takes
requests from the helper only: one SOCK_SEQPACKET socket, messages checked by
the same schema machinery as every other channel, each sender checked with
SCM_CREDENTIALS (uid 0, the parent's pid). It runs only the programs named in
its own argv, with an argv it builds itself and an environment made of
variables whose names and values it checks again (:func:`check_env`), and
answers with the exit status. stdin is /dev/null; output goes to the helper's
stderr (the user's terminal). A program gets :data:`TIMEOUT` seconds, then its
process group is killed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import Sequence
from typing import Annotated, ClassVar, Final, Literal

from sepconnect.ipc.limits import IFNAME, MAX_SCRIPT_ARGS, SCRIPT_ARG
from sepconnect.ipc.wire import (
    Channel,
    Codec,
    Length,
    Match,
    Message,
    PeerClosed,
    Range,
    WireError,
)
from sepconnect.process.helpformat import HelpFormatter
from sepconnect.process.title import set_title

TIMEOUT: Final = 60.0
PROCESS_TITLE: Final = "sepconnect: script-runner"
REASONS: Final = ("pre-init", "connect", "disconnect", "reconnect", "attempt-reconnect")
SAFE_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Reason = Literal["pre-init", "connect", "disconnect", "reconnect", "attempt-reconnect"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunScript(Message):
    """Run the vpnc-script; ``env`` is ``NAME=value`` items separated by NUL bytes."""

    op: ClassVar[str] = "run_script"
    reason: Reason
    env: Annotated[bytes, Length(0, 60_000)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunNft(Message):
    """Load this ruleset with ``nft -f -`` (one atomic transaction)."""

    op: ClassVar[str] = "run_nft"
    ruleset: Annotated[str, Length(1, 60_000), Match(r'[A-Za-z0-9_ .:/{},;"\n\t-]+')]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunResolvconf(Message):
    """``resolvconf -a RECORD`` (with ``content`` on stdin) or ``resolvconf -d RECORD``."""

    op: ClassVar[str] = "run_resolvconf"
    action: Literal["add", "delete"]
    record: Annotated[str, Length(3, 64), Match(r"[A-Za-z0-9_-]+\.sepconnect")]
    content: Annotated[str, Length(0, 8000), Match(r"[a-z0-9 .:\n-]*")]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ran(Message):
    """The program ran; ``status`` is its exit status (negative: killed by that signal)."""

    op: ClassVar[str] = "ran"
    status: Annotated[int, Range(-64, 255)]
    note: Annotated[str, Length(0, 200)]


REQUESTS: Final = Codec(RunScript, RunNft, RunResolvconf)
REPLIES: Final = Codec(Ran)

# The variables a vpnc-script may get (PROTOCOL.md §6), each with the values it may have.
_ADDR = r"[0-9A-Fa-f:.]{2,39}"
_ENV_RULES: Final[tuple[tuple[re.Pattern[str], re.Pattern[str]], ...]] = tuple(
    (re.compile(name), re.compile(value))
    for name, value in (
        (r"reason", "|".join(REASONS)),
        (r"VPNGATEWAY", _ADDR),
        (r"TUNDEV", IFNAME),
        (r"VPNPID|LOG_LEVEL|IDLE_TIMEOUT|INTERNAL_IP4_MTU", r"[0-9]{1,10}"),
        (r"INTERNAL_IP4_(ADDRESS|NETMASK|NETADDR)", r"[0-9.]{7,15}"),
        (r"INTERNAL_IP4_NETMASKLEN", r"[0-9]{1,2}"),
        (r"INTERNAL_IP[46]_DNS", rf"{_ADDR}( {_ADDR}){{0,7}}"),
        (r"INTERNAL_IP6_ADDRESS", _ADDR),
        (r"INTERNAL_IP6_NETMASK", rf"{_ADDR}/[0-9]{{1,3}}"),
        (r"CISCO_DEF_DOMAIN", r"[a-z0-9.-]+( [a-z0-9.-]+)*"),
        (r"CISCO_SPLIT_DNS", r"[a-z0-9.-]+(,[a-z0-9.-]+)*"),
        (r"CISCO_BANNER", "[^\x00-\x09\x0b-\x1f\x7f-\x9f]{1,2000}"),
        (r"CISCO_(IPV6_)?SPLIT_(INC|EXC)", r"[0-9]{1,3}"),
        (r"CISCO_(IPV6_)?SPLIT_(INC|EXC)_[0-9]{1,3}_(ADDR|MASK)", _ADDR),
        (r"CISCO_(IPV6_)?SPLIT_(INC|EXC)_[0-9]{1,3}_MASKLEN", r"[0-9]{1,3}"),
        (r"CISCO_CSTP_OPTIONS", r"(X-CSTP-[A-Za-z0-9-]{1,40}=[A-Za-z0-9 .:/,-]{0,4000}\n){0,600}"),
    )
)


def check_env(blob: bytes) -> dict[str, str]:
    """The environment for a script: every item must match one rule exactly."""
    env: dict[str, str] = {}
    if not blob:
        return env
    for item in blob.split(b"\0"):
        try:
            text = item.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("an environment item is not UTF-8") from None
        name, eq, value = text.partition("=")
        if not eq or name in env:
            raise ValueError(f"bad or repeated environment item {name[:40]!r}")
        for name_rx, value_rx in _ENV_RULES:
            if name_rx.fullmatch(name):
                if value_rx.fullmatch(value) is None:
                    raise ValueError(f"{name}: value not allowed")
                break
        else:
            raise ValueError(f"{name[:40]!r}: not a vpnc-script variable")
        env[name] = value
    if "reason" not in env:
        raise ValueError("no reason")
    return env


def check_script(path: str) -> str:
    """The vpnc-script root named: absolute, and it and every directory above it
    owned by root and writable by nobody else (no symlink in the last part). The
    helper checks this at start, and the runner again before each run."""
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"{path!r}: not an absolute path")
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"{path}: a symbolic link; give the real path")
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o100:
        raise ValueError(f"{path}: not an executable regular file")
    parts = os.path.dirname(os.path.realpath(path))
    checked = [path]
    while True:
        checked.append(parts)
        if parts == "/":
            break
        parts = os.path.dirname(parts)
    for item in checked:
        st = os.stat(item)
        if st.st_uid != 0:
            raise ValueError(f"{path}: {item} is not owned by root")
        sticky_root_dir = item != path and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky_root_dir:
            raise ValueError(f"{path}: {item} is writable by group or others")
    return path


def check_script_args(args: Sequence[str]) -> tuple[str, ...]:
    """The arguments root gave the vpnc-script after its path (``-s 'vpn-slice 10.0.0.0/8'``):
    at most MAX_SCRIPT_ARGS, each one printable line (limits.SCRIPT_ARG). The launcher,
    the helper and the runner each check them."""
    if len(args) > MAX_SCRIPT_ARGS:
        raise ValueError(f"more than {MAX_SCRIPT_ARGS} arguments")
    for arg in args:
        if re.fullmatch(SCRIPT_ARG, arg) is None:
            raise ValueError(f"argument {arg[:40]!r}: not one printable line of at most 1024")
    return tuple(args)


@dataclasses.dataclass(frozen=True, slots=True)
class Programs:
    script: tuple[str, ...] | None = None
    """The vpnc-script's argv: its path (check_script), then its arguments (check_script_args)."""
    nft: str | None = None
    resolvconf: str | None = None


def execute(programs: Programs, msg: Message) -> Ran:
    """Run what ``msg`` asks for, if this runner was started for it."""
    match msg:
        case RunScript(reason=reason, env=blob) if programs.script is not None:
            try:
                env = check_env(blob)
                check_script(programs.script[0])
                check_script_args(programs.script[1:])
            except (ValueError, OSError) as exc:
                return Ran(status=126, note=f"not run: {str(exc)[:180]}")
            if env["reason"] != reason:
                return Ran(status=126, note="not run: reason mismatch")
            env["PATH"] = SAFE_PATH
            return _run(list(programs.script), env, None)
        case RunNft(ruleset=ruleset) if programs.nft is not None:
            if "include" in ruleset:
                return Ran(status=126, note="not run: include is not allowed")
            return _run([programs.nft, "-f", "-"], {"PATH": SAFE_PATH}, ruleset)
        case RunResolvconf(action=action, record=record, content=content) if (
            programs.resolvconf is not None
        ):
            flag = "-a" if action == "add" else "-d"
            return _run(
                [programs.resolvconf, flag, record],
                {"PATH": SAFE_PATH},
                content if action == "add" else None,
            )
    return Ran(status=126, note=f"not run: this runner was not started for {msg.op}")


def _run(argv: list[str], env: dict[str, str], stdin: str | None) -> Ran:
    import subprocess  # in the runner process only (see RunnerClient.__init__)

    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),
            stderr=sys.stderr.fileno(),
            cwd="/",
            close_fds=True,
            process_group=0,
        )
    except OSError as exc:
        return Ran(status=127, note=f"cannot execute {argv[0]}: {exc.strerror}"[:200])
    try:
        proc.communicate(None if stdin is None else stdin.encode(), timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return Ran(status=-9, note=f"{argv[0]}: killed after {TIMEOUT:g} s")
    status = max(-64, min(255, proc.returncode))
    return Ran(status=status, note="" if status == 0 else f"{argv[0]} exited with {status}"[:200])


def runner_args(fd: int, programs: Programs) -> list[str]:
    """The runner's command line after the program (:func:`parse_args` reads it)."""
    argv = ["--fd", str(fd)]
    if programs.script is not None:
        # "=": an argument may start with "-" (argparse would take it for an option)
        argv += ["--script", programs.script[0]]
        argv += [f"--script-arg={arg}" for arg in programs.script[1:]]
    for flag, value in (("--nft", programs.nft), ("--resolvconf", programs.resolvconf)):
        if value is not None:
            argv += [flag, value]
    return argv


def parse_args(argv: Sequence[str] | None) -> tuple[int, Programs]:
    """The fd of our channel and the programs we may run (root wrote this argv)."""
    parser = argparse.ArgumentParser(
        prog="sepconnect.privhelper.runner", allow_abbrev=False, formatter_class=HelpFormatter
    )
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--script")
    parser.add_argument("--script-arg", action="append", default=[])
    parser.add_argument("--nft")
    parser.add_argument("--resolvconf")
    args = parser.parse_args(argv)
    if args.script_arg and args.script is None:
        parser.error("--script-arg without --script")
    script = None if args.script is None else (args.script, *args.script_arg)
    return args.fd, Programs(script, args.nft, args.resolvconf)


class RunnerClient:
    """The helper's end: start the runner (as root, before privileges are dropped) and ask it."""

    def __init__(self, programs: Programs) -> None:
        # subprocess (~0.3 MB of RSS for the whole session) only where a runner is
        # needed, which most helpers never start. Imported here, as root and before the
        # seccomp filter; close() then finds it in sys.modules, with no file access.
        import subprocess

        from sepconnect.ipc.wire import socketpair

        self.programs = programs
        ours, theirs = socketpair()
        argv = [sys.executable, "-I", "-m", "sepconnect.privhelper.runner"]
        argv += runner_args(theirs.fileno(), programs)
        try:
            self.proc = subprocess.Popen(
                argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True
            )
        finally:
            theirs.close()
        self.channel = Channel(ours, REPLIES, send_codec=REQUESTS)
        self.channel.pass_credentials()

    def call(self, msg: RunScript | RunNft | RunResolvconf) -> Ran:
        """Send one request and wait for its answer (the runner enforces the timeout)."""
        try:
            self.channel.send(msg)
            reply, _ = self.channel.recv()
        except (OSError, WireError) as exc:
            return Ran(status=127, note=f"the script runner is gone ({exc})"[:200])
        if not isinstance(reply, Ran):  # pragma: no cover - the codec allows nothing else
            return Ran(status=127, note="unexpected reply from the script runner")
        return reply

    def close(self) -> None:
        """Close our end: the runner exits when it reads EOF (after any program it runs).

        The helper's seccomp filter denies wait4(2) (EPERM), so the runner is not
        reaped here; it exits by itself and is reaped by whoever inherits it.
        """
        import subprocess  # imported by __init__ already

        self.channel.sock.close()
        try:
            self.proc.wait(TIMEOUT + 5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.returncode = -1  # not waitable from here; see above


def serve(channel: Channel, programs: Programs, parent: int) -> int:
    while True:
        try:
            msg, _ = channel.recv()
        except PeerClosed:
            return 0
        except (WireError, OSError):
            return 1
        sender = channel.last_sender
        if sender is None or sender[0] != parent or sender[1] != 0:
            return 1  # only the helper that started us may ask
        channel.send(execute(programs, msg))


def main(argv: Sequence[str] | None = None) -> int:
    fd, programs = parse_args(argv)
    set_title(PROCESS_TITLE)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the helper decides when we end
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    channel = Channel(sock, REQUESTS, send_codec=REPLIES)
    channel.pass_credentials()
    return serve(channel, programs, os.getppid())


if __name__ == "__main__":
    raise SystemExit(main())
