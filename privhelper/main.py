"""The privileged helper's entry point: argv, privileges, the request loop.

Started by the launcher (root) as::

    python3 -I -m sepconnect.privhelper --fd N --peer-uid UID [--uid UID --gid GID]
            [--interface NAME] [--audit-log PATH] [--state-dir DIR]
            [--no-routes] [--dns-backend auto|resolved|resolvconf|file|none]
            [--fail-closed] [--script PATH [--script-arg=ARG]...] [--log-level N]

fd N is the helper's end of a SOCK_SEQPACKET socketpair whose other end
belongs to the supervisor (running as UID). Started as root, the helper becomes
``--uid``/``--gid`` (its own account, never 0, never the supervisor's) keeping
CAP_NET_ADMIN alone; started by systemd as that account with CAP_NET_ADMIN ambient, it
keeps CAP_NET_ADMIN alone. Then Landlock (no writes outside its state directory) and
seccomp. It answers the requests :data:`policy.POLICY` permits, one at a
time, and on any way out (Teardown, the supervisor going away, SIGTERM, a
protocol violation) removes exactly what it installed before exiting.

Single-threaded; no shell, no exec; signal handlers only set a flag.
Exit status: 0 clean, 1 protocol violation or internal error, 2 bad argv.

What needs a program runs in a runner (process/runner.py) that :func:`main` starts
only when root's options (or a crashed session's state) need it, before the seccomp
filter: the root runner (rootrunner/: ``--script``, ``--dns-backend file|resolvconf``)
and the nft runner (nft.py: ``--fail-closed``). The helper itself never forks or
execs; its filter keeps execve/fork on NEVER. Before the filter, main creates the
state directory and reads the state of crashed sessions; it undoes them
(recovery.py, loaded only then) once the netlink socket is open.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import resource
import select
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from sepconnect.ipc.helper_messages import FD_REPLIES, REPLIES, REQUESTS, Refused
from sepconnect.ipc.limits import DNS_BACKENDS, check_ifname
from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper import seccomp as _seccomp
from sepconnect.privhelper.host import STATE_PREFIX, Helper, Options
from sepconnect.privhelper.netconf import Netlink
from sepconnect.privhelper.policy import (
    Host,
    Monitor,
    Phase,
    ProtocolViolation,
)
from sepconnect.privhelper.rtnl import IPRoute
from sepconnect.privhelper.tun import DEFAULT_TEMPLATE, TUN_DEVICE
from sepconnect.process import landlock, privileges, statefile
from sepconnect.process import title as _proctitle

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import BackendName

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
EXIT_USAGE: Final = 2

PROCESS_TITLE: Final = "sepconnect: privhelper"
SELFTEST_ENV: Final = "SEPCONNECT_TEST_HELPER_SELFTEST"


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


KEEP: Final = frozenset({privileges.CAP_NET_ADMIN})


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with CAP_NET_ADMIN alone (effective, permitted, bounding),
    no_new_privs, not dumpable. The bounding set goes first, while CAP_SETPCAP is still
    effective. Started by systemd as that uid already (AmbientCapabilities=), only
    the ambient and inheritable sets are left to clear."""
    privileges.prctl(privileges.PR_SET_NO_NEW_PRIVS, 1)
    privileges.drop_bounding_set(keep=KEEP)
    if os.getuid() == 0:
        privileges.drop_to(uid, gid, keep=KEEP)
    else:
        privileges.keep_only_capabilities(KEEP)
    privileges.prctl(privileges.PR_SET_DUMPABLE, 0)


def confine(state_dir: str | None) -> None:
    """Landlock: no file written, created, removed or executed anywhere but in our state
    directory, and /dev/net/tun opened for writing (reading stays as DAC allows)."""
    abi = landlock.abi()
    if abi < 1:
        raise OSError("Landlock is not available (kernel 5.13+ with lsm=landlock)")
    sys.dont_write_bytecode = True  # no __pycache__ writes (they would be refused)
    handled = landlock.fs_rights(abi) & ~landlock.FS_READ
    paths = [(TUN_DEVICE, landlock.FS_WRITE_FILE | landlock.FS_IOCTL_DEV)]
    if state_dir is not None:
        write = landlock.FS_WRITE_FILE | landlock.FS_MAKE_REG | landlock.FS_REMOVE_FILE
        paths.append((state_dir, write | landlock.FS_TRUNCATE))
    landlock.restrict(abi, handled, paths)


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
    parser = argparse.ArgumentParser(
        prog="sepconnect.privhelper",
        allow_abbrev=False,
        # A fixed width: argparse imports shutil (and bz2, lzma) to measure the terminal.
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=100),
    )
    parser.add_argument("--fd", type=_fd, required=True, help="our end of the SEQPACKET pair")
    parser.add_argument("--peer-uid", type=_uid, required=True, help="the supervisor's uid")
    parser.add_argument("--uid", type=_uid, help="our own uid (started as root)")
    parser.add_argument("--gid", type=_uid, help="our own gid (started as root)")
    parser.add_argument("--interface", type=check_ifname, default=None, help="tun name")
    parser.add_argument("--audit-log", type=_path, default=None, help="JSON-lines audit file")
    parser.add_argument("--state-dir", type=_path, default=None, help="crash-recovery state")
    parser.add_argument("--no-routes", action="store_true", help="addresses and MTU only")
    parser.add_argument("--dns-backend", choices=DNS_BACKENDS, default="none")
    parser.add_argument("--fail-closed", action="store_true", help="nftables: tun or gateway only")
    parser.add_argument(
        "--allow-exclude",
        type=ipaddress.ip_network,
        action="append",
        default=[],
        help="with --fail-closed: a prefix a server may exclude beyond private space",
    )
    parser.add_argument("--script", type=_path, default=None, help="vpnc-script, run as root")
    parser.add_argument(
        "--script-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for the vpnc-script (repeatable, in order; give it as --script-arg=ARG)",
    )
    parser.add_argument("--log-level", type=int, choices=range(5), default=0)
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


def _has_files(directory: str) -> bool:
    try:
        return any(name.endswith(".json") for name in os.listdir(directory))
    except OSError:
        return False


def _fail(message: str) -> int:
    os.write(2, f"sepconnect.privhelper: {message}\n".encode(errors="replace"))
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _close_inherited(args.fd)
    _proctitle.set_title(PROCESS_TITLE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the supervisor to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        channel = _channel(args.fd)
    except (OSError, ValueError) as exc:
        return _fail(f"--fd {args.fd}: {exc}")
    uid, gid = (args.uid, args.gid) if os.getuid() == 0 else (os.getuid(), os.getgid())
    if uid is None or gid is None or uid in (0, args.peer_uid):
        return _fail("--uid/--gid (started as root): our own account, not root, not --peer-uid")
    try:
        log_fd = None if args.audit_log is None else _audit.open_log(args.audit_log)
    except OSError as exc:
        return _fail(f"--audit-log: {exc}")
    audit = _audit.Audit(log_fd, journal=_audit.open_journal())
    if args.script_arg:  # -s with arguments (imported only then: the trusted base)
        from sepconnect.ipc.script_env import check_script_args

        if args.script is None:
            return _fail("--script-arg without --script")
        try:
            check_script_args(args.script_arg)
        except ValueError as exc:
            return _fail(f"--script-arg: {exc}")
    stale: list[tuple[str, dict[str, Any]]] = []
    if args.state_dir is not None:
        try:
            statefile.ensure_dir(args.state_dir, uid, gid)
            stale = list(statefile.stale(args.state_dir, STATE_PREFIX))
        except OSError as exc:
            return _fail(f"--state-dir: {exc}")
    # A vpnc-script does the DNS itself, as under openconnect.
    backend: BackendName = "none"
    if args.script is None and args.dns_backend != "none":
        from sepconnect.privhelper.dns import choose

        backend = choose(args.dns_backend)
    # The runners (runners.py), only where root's options or a crashed session need them.
    root = nft_runner = None
    root_dir = None if args.state_dir is None else f"{args.state_dir}-root"
    needs_root = args.script is not None or backend in ("file", "resolvconf")
    needs_nft = args.fail_closed or any(d.get("firewall") for _, d in stale)
    stale_root = root_dir is not None and os.getuid() == 0 and _has_files(root_dir)
    try:
        if needs_root or needs_nft or stale_root:
            from sepconnect.privhelper import runners

            root = runners.root_runner(args, root_dir, needs_root, stale_root, backend, log_fd, uid)
    except OSError as exc:
        return _fail(str(exc))
    try:
        drop_privileges(uid, gid)
        if needs_nft:
            nft_runner = runners.nft_runner(KEEP)
    except OSError as exc:
        audit.record("start", "fatal", f"cannot drop privileges: {exc}")
        return EXIT_FATAL
    weak = None
    try:
        confine(args.state_dir)
    except OSError as exc:
        if not args.allow_weak_sandbox:
            audit.record("start", "fatal", f"cannot confine the helper: {exc}")
            return EXIT_FATAL
        weak = f"none (--allow-weak-sandbox): {exc}"[:200]
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
    start_args: _audit.Args = {
        "uid": uid,
        "peer_uid": args.peer_uid,
        "interface": args.interface or DEFAULT_TEMPLATE,
        "seccomp": "allow-list",
        "landlock": weak or "no writes but the state directory",
        "routes": "none" if args.no_routes or args.script else "helper",
        "dns_backend": backend,
        "fail_closed": int(args.fail_closed),
        "allow_exclude": [str(p) for p in args.allow_exclude],
        "script": args.script,
        "script_args": list(args.script_arg),
        "root_runner": None if root is None else root.proc.pid,
        "nft_runner": None if nft_runner is None else nft_runner.proc.pid,
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
        if SELFTEST_ENV in os.environ:  # test-only (tests/integration/test_helper_hostile.py)
            from sepconnect.privhelper import selftest

            selftest.run(os.environ[SELFTEST_ENV], args.state_dir)
        netlink = Netlink(ipr)
        if stale:
            from sepconnect.privhelper.recovery import recover

            recover(stale, netlink, nft_runner, audit)
        options = Options(
            ifname=args.interface or DEFAULT_TEMPLATE,
            named=args.interface is not None,
            no_routes=args.no_routes,
            fail_closed=args.fail_closed,
            allow_exclude=tuple(args.allow_exclude),
            dns_backend=backend,
            script=args.script,
            log_level=args.log_level,
            state_dir=args.state_dir,
        )
        helper = Helper(netlink, options, audit, root, nft_runner)
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
