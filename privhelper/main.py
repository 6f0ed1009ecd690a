"""The privileged helper's entry point: argv, privileges, the request loop.

Started by the launcher (root) as::

    python3 -I -m sepconnect.privhelper --fd N --peer-uid UID
            [--interface NAME] [--audit-log PATH]

fd N is the helper's end of a SOCK_SEQPACKET socketpair whose other end
belongs to the supervisor (running as UID). The helper keeps uid 0 but only
CAP_NET_ADMIN, answers the requests :data:`policy.POLICY` permits, one at a
time, and on any way out (Teardown, the supervisor going away, SIGTERM, a
protocol violation) removes exactly what it installed before exiting.

Single-threaded; no shell, no exec; signal handlers only set a flag.
Exit status: 0 clean, 1 protocol violation or internal error, 2 bad argv.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import select
import signal
import socket
from collections.abc import Sequence
from types import FrameType
from typing import Final

import setproctitle
from pyroute2 import IPRoute

from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper import seccomp as _seccomp
from sepconnect.privhelper.netconf import Netlink, Router, SetMtu
from sepconnect.privhelper.policy import (
    Host,
    Monitor,
    Phase,
    ProtocolViolation,
    Refusal,
    Wanted,
    check_ifname,
)
from sepconnect.privhelper.schema import FD_REPLIES, REPLIES, REQUESTS, Refused
from sepconnect.privhelper.tun import DEFAULT_TEMPLATE, Tun, open_tun
from sepconnect.privhelper.wire import Channel, PeerClosed, WireError

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
EXIT_USAGE: Final = 2

PROCESS_TITLE: Final = "sepconnect: privhelper"


# ---------------------------------------------------------------------------
# The system operations behind the policy's handlers


class Helper:
    """:class:`policy.Host`: the tun and its network state, for one session."""

    def __init__(self, netlink: Netlink, ifname: str, audit: _audit.Audit) -> None:
        self.netlink = netlink
        self.ifname = ifname
        self.audit = audit
        self.tun: Tun | None = None
        self.router: Router | None = None

    def create_tun(self, mtu: int) -> tuple[str, int, int]:
        try:
            tun = open_tun(self.ifname)
        except OSError as exc:
            raise Refusal(f"create tun {self.ifname}: {exc.strerror or exc}") from None
        try:
            ifindex = self.netlink.index_of(tun.name)
            self.netlink.apply(SetMtu(mtu, None), ifindex)
            fd = os.dup(tun.fd)
        except (Refusal, OSError):
            os.close(tun.fd)  # the device goes with it: nothing was changed
            raise
        self.tun = tun
        self.router = Router(self.netlink, ifindex, mtu)
        return tun.name, ifindex, fd

    def net_config(self, wanted: Wanted) -> None:
        if self.router is None:  # the phase table makes this unreachable
            raise Refusal("no tun")
        self.router.configure(wanted)

    def teardown(self) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove what we installed, then close the tun (the device disappears). Idempotent."""
        if self.router is not None:
            errors = self.router.clear()
            self.router = None
            self.audit.record(
                "cleanup", "info" if not errors else "fatal", "; ".join(errors)[:1000]
            )
        if self.tun is not None:
            os.close(self.tun.fd)
            self.tun = None


# ---------------------------------------------------------------------------
# The request loop


class _Signals:
    terminate = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _Signals.terminate = True  # nothing else here: the loop does the work


def serve(
    channel: Channel,
    monitor: Monitor,
    helper: Host,
    audit: _audit.Audit,
    peer_uid: int,
    wakeup_fd: int,
) -> int:
    """Answer requests until the session ends; return the exit status (the caller cleans up)."""
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.register(wakeup_fd, select.POLLIN)
    while True:
        if _Signals.terminate:
            audit.sender = None
            audit.record("sigterm", "info", "terminated: ending the session")
            return EXIT_OK
        ready = {fd for fd, _ in poller.poll()}
        if wakeup_fd in ready:
            _drain(wakeup_fd)  # a signal arrived; its handler has set the flag
        elif channel.fileno() in ready:
            status = _step(channel, monitor, helper, audit, peer_uid)
            if status is not None:
                return status


def _step(
    channel: Channel, monitor: Monitor, helper: Host, audit: _audit.Audit, peer_uid: int
) -> int | None:
    audit.sender = None
    try:
        msg, _ = channel.recv()
    except PeerClosed:
        audit.record("peer_closed", "info", "supervisor went away")
        return EXIT_OK
    except WireError as exc:
        audit.sender = channel.last_sender
        audit.record("(undecodable)", "fatal", f"protocol violation: {exc}")
        return EXIT_FATAL
    except OSError as exc:  # ECONNRESET and the like: the peer is gone
        audit.record("peer_closed", "info", f"supervisor went away ({exc.strerror})")
        return EXIT_OK
    sender = audit.sender = channel.last_sender
    args = _audit.message_args(msg)
    if sender is None or sender[0] <= 0 or sender[1] != peer_uid:
        who = "no credentials" if sender is None else f"uid {sender[1]}"
        audit.record(msg.op, "fatal", f"sender has {who}, expected uid {peer_uid}", args)
        return EXIT_FATAL
    try:
        reply, fd = monitor.handle(helper, msg)
    except ProtocolViolation as exc:
        audit.record(msg.op, "fatal", f"protocol violation: {exc}", args)
        return EXIT_FATAL
    except Exception as exc:  # a bug of ours: fail closed
        audit.record(msg.op, "fatal", f"internal error: {type(exc).__name__}: {exc}", args)
        return EXIT_FATAL
    if isinstance(reply, Refused):
        audit.record(msg.op, "refused", reply.reason, args)
    else:
        audit.record(msg.op, "ok", "", args)
    try:
        channel.send(reply, fd)
    except OSError as exc:
        audit.record("peer_closed", "info", f"supervisor went away ({exc.strerror})")
        return EXIT_OK
    finally:
        if fd is not None:
            os.close(fd)
    return EXIT_OK if monitor.phase is Phase.CLOSED else None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 64):
            pass
    except BlockingIOError:
        pass


# ---------------------------------------------------------------------------
# Privileges

PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
CAP_NET_ADMIN: Final = 12
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int = 0) -> None:
    zero = ctypes.c_ulong(0)
    if _libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}, {arg}): {os.strerror(code)}")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def drop_privileges() -> None:
    """Keep uid 0 but only CAP_NET_ADMIN: no_new_privs, bounding set, then capset(2).

    The bounding set goes first, while CAP_SETPCAP is still effective.
    """
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    for cap in range(_last_cap() + 1):
        if cap != CAP_NET_ADMIN:
            _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    keep = 1 << CAP_NET_ADMIN
    data = (_CapData * 2)(_CapData(keep, keep, 0), _CapData(0, 0, 0))
    if _libc().capset(ctypes.byref(header), data) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"capset: {os.strerror(code)}")


# ---------------------------------------------------------------------------
# Start-up


def _fd(text: str) -> int:
    value = int(text)
    if not 3 <= value <= 2**31 - 1:
        raise ValueError(text)
    return value


def _uid(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 2**32 - 2:
        raise ValueError(text)
    return value


def _path(text: str) -> str:
    if not text or "\0" in text:
        raise ValueError(text)
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Root wrote this argv, but it is still checked; errors exit with status 2."""
    parser = argparse.ArgumentParser(prog="sepconnect.privhelper", allow_abbrev=False)
    parser.add_argument("--fd", type=_fd, required=True, help="our end of the SEQPACKET pair")
    parser.add_argument("--peer-uid", type=_uid, required=True, help="the supervisor's uid")
    parser.add_argument("--interface", type=check_ifname, default=None, help="tun name")
    parser.add_argument("--audit-log", type=_path, default=None, help="JSON-lines audit file")
    parser.add_argument(
        "--allow-weak-sandbox",
        action="store_true",
        help="run even where the seccomp filter cannot be loaded",
    )
    return parser.parse_args(argv)


def _close_inherited(keep: int) -> None:
    """Close every fd but 0, 1, 2 and ``keep``; make sure 0, 1, 2 are open."""
    # The hard limit too: fds above a lowered soft limit stay open.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = min(max(os.sysconf("SC_OPEN_MAX"), hard), 2**31 - 1)
    os.closerange(3, keep)
    os.closerange(keep + 1, limit)
    for std in (0, 1, 2):
        try:
            os.fstat(std)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != std:
                os.dup2(null, std)
                os.close(null)


def _channel(fd: int) -> Channel:
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        raise ValueError(f"fd {fd} is not an AF_UNIX SOCK_SEQPACKET socket")
    sock.set_inheritable(False)
    channel = Channel(sock, REQUESTS, send_codec=REPLIES, send_fd_ops=FD_REPLIES)
    channel.pass_credentials()
    return channel


def _fail(message: str) -> int:
    os.write(2, f"sepconnect.privhelper: {message}\n".encode(errors="replace"))
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _close_inherited(args.fd)
    setproctitle.setproctitle(PROCESS_TITLE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the supervisor to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        channel = _channel(args.fd)
    except (OSError, ValueError) as exc:
        return _fail(f"--fd {args.fd}: {exc}")
    try:
        log_fd = None if args.audit_log is None else _audit.open_log(args.audit_log)
    except OSError as exc:
        return _fail(f"--audit-log: {exc}")
    audit = _audit.Audit(log_fd)
    try:
        drop_privileges()
    except OSError as exc:
        audit.record("start", "fatal", f"cannot drop privileges: {exc}")
        return EXIT_FATAL
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
    start_args: _audit.Args = {
        "peer_uid": args.peer_uid,
        "interface": args.interface or DEFAULT_TEMPLATE,
        "seccomp": "allow-list",
    }
    with IPRoute() as ipr:
        # The netlink socket is open: from here on, only the allow-list.
        try:
            _seccomp.apply()
        except OSError as exc:
            if not args.allow_weak_sandbox:
                reason = f"cannot load the seccomp filter: {exc} (see --allow-weak-sandbox)"
                audit.record("start", "fatal", reason, start_args)
                return EXIT_FATAL
            start_args["seccomp"] = f"none (--allow-weak-sandbox): {exc}"[:200]
        audit.record("start", "info", args=start_args)
        helper = Helper(Netlink(ipr), args.interface or DEFAULT_TEMPLATE, audit)
        status = EXIT_FATAL
        try:
            status = serve(channel, Monitor(), helper, audit, args.peer_uid, wakeup_r)
        finally:
            audit.sender = None
            try:
                helper.cleanup()
            finally:
                channel.sock.close()
                audit.record("exit", "info", f"exit status {status}")
    return status
