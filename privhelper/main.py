"""The privileged helper's start stage: argv, privileges, sandbox; then exec the serving stage.

Started by the launcher (root) as::

    python3 -I -m sepconnect.privhelper --fd N --peer-uid UID [--uid UID --gid GID]
            [--interface NAME] [--audit-log PATH] [--state-dir DIR]
            [--no-routes] [--dns-backend auto|resolved|resolvconf|file|none]
            [--fail-closed] [--script PATH [--script-arg=ARG]...] [--log-level N]

fd N is the helper's end of a SOCK_SEQPACKET socketpair whose other end
belongs to the supervisor (running as UID). Started as root, the helper becomes
``--uid``/``--gid`` (its own account, never 0, never the supervisor's) keeping
CAP_NET_ADMIN alone; started by systemd as that account with CAP_NET_ADMIN ambient, it
keeps CAP_NET_ADMIN alone.

The helper runs in two stages, one process (DESIGN.md §1, docs/security.md "The trusted
base, counted"). This one does what runs once: it checks argv, opens the audit log,
creates the state directory and reads the state of crashed sessions, and, only where root's
options (or a crashed session's state) need them, starts the runners (runners.py, loaded
only then: the root runner for ``--script`` and ``--dns-backend file|resolvconf``, the
nft runner for ``--fail-closed``), drops to its uid with CAP_NET_ADMIN alone
(no_new_privs), applies Landlock (no writes outside its state directory, no execution
but of the interpreter) and compiles the seccomp filter (seccomp.py). Then it executes
the serving stage (serve.py) with CAP_NET_ADMIN kept ambient across the exec, handing
over its fds and, in a memfd, the filter and the validated settings; the serving stage
loads the filter before it reads a request. Its filter kills execve and fork: only the
start stage's one exec ever happens.

Exit status: 0 clean, 1 internal error, 2 bad argv (the serving stage's own afterwards).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from sepconnect.ipc.helper_args import DNS_BACKENDS, check_ifname
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper import seccomp as _seccomp
from sepconnect.privhelper.tun import DEFAULT_TEMPLATE, TUN_DEVICE
from sepconnect.process import capabilities, landlock, lockdown, prctl, privatedir, programs
from sepconnect.process.auditfile import open_log
from sepconnect.process.journal_socket import open_journal
from sepconnect.process.privdrop import become

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import BackendName
    from sepconnect.process.runner import RunnerClient

EXIT_FATAL: Final = 1
EXIT_USAGE: Final = 2

SERVING_PROGRAM: Final = ("sepconnect-privhelper-serve", "sepconnect.privhelper.serve")


# ---------------------------------------------------------------------------
# Privileges


KEEP: Final = frozenset({capabilities.CAP_NET_ADMIN})
PR_CAP_AMBIENT_RAISE: Final = 2


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with CAP_NET_ADMIN alone (effective, permitted, bounding),
    no_new_privs, not dumpable. Started by systemd as that uid already
    (AmbientCapabilities=), only the ambient and inheritable sets are left to clear."""
    if os.getuid() == 0:
        become(uid, gid, (gid,), keep=KEEP)
    else:
        lockdown.drop_bounding_set(keep=KEEP)
        capabilities.keep_only_capabilities(KEEP)
        lockdown.no_new_privs_and_undumpable()


def ambient_net_admin() -> None:
    """Make CAP_NET_ADMIN (and nothing else) ambient: a program we execute, not being
    root, keeps it. ``capabilities.keep_only_capabilities(KEEP)`` takes it back."""
    capabilities.keep_only_capabilities(KEEP, inheritable=True)
    prctl.prctl(capabilities.PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, capabilities.CAP_NET_ADMIN)


def confine(state_dir: str | None) -> None:
    """Landlock: no file written, created, removed or executed anywhere but in our state
    directory, /dev/net/tun opened for writing, and the interpreter executed (the serving
    stage; its seccomp filter then kills execve). Reading stays as DAC allows."""
    abi = landlock.abi()
    if abi < 1:
        raise OSError("Landlock is not available (kernel 5.13+ with lsm=landlock)")
    sys.dont_write_bytecode = True  # no __pycache__ writes (they would be refused)
    handled = landlock.fs_rights(abi) & ~landlock.FS_READ
    interpreter = os.path.realpath(sys.executable)
    paths = [
        (TUN_DEVICE, landlock.FS_WRITE_FILE | landlock.FS_IOCTL_DEV),
        (os.path.realpath(programs.program(*SERVING_PROGRAM)[0]), landlock.FS_EXECUTE),
        (interpreter, landlock.FS_EXECUTE),  # the serving program's, as ours
        (_program_loader(interpreter), landlock.FS_EXECUTE),  # the kernel opens it too
    ]
    if state_dir is not None:
        write = landlock.FS_WRITE_FILE | landlock.FS_MAKE_REG | landlock.FS_REMOVE_FILE
        paths.append((state_dir, write | landlock.FS_TRUNCATE))
    landlock.restrict(abi, handled, paths)


def _program_loader(path: str) -> str:
    """The dynamic loader an ELF program names (PT_INTERP; 64-bit little-endian)."""
    with open(path, "rb") as f:
        elf = f.read(1 << 16)
    if elf[:6] != b"\x7fELF\x02\x01":
        raise OSError(f"{path}: not a 64-bit little-endian ELF program")
    (table,), (size, count) = struct.unpack_from("<Q", elf, 32), struct.unpack_from("<HH", elf, 54)
    for header in range(table, table + size * count, size):
        if struct.unpack_from("<I", elf, header)[0] == 3:  # PT_INTERP
            (offset,), (length,) = (struct.unpack_from("<Q", elf, header + n) for n in (8, 32))
            return os.path.realpath(elf[offset : offset + length].rstrip(b"\0").decode())
    raise OSError(f"{path}: no program interpreter")


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
    """Root wrote this argv (the launcher's root stage, or systemd's unit), but it is still
    checked; errors exit with status 2. The comments are the options' help."""
    parser = argparse.ArgumentParser(
        prog="sepconnect.privhelper",
        allow_abbrev=False,
        # A fixed width: argparse imports shutil (and bz2, lzma) to measure the terminal.
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=100),
    )
    parser.add_argument("--fd", type=_fd, required=True)  # our end of the SEQPACKET pair
    parser.add_argument("--peer-uid", type=_uid, required=True)  # the supervisor's uid
    parser.add_argument("--uid", type=_uid)  # our own uid and gid (started as root)
    parser.add_argument("--gid", type=_uid)
    parser.add_argument("--interface", type=check_ifname)  # the tun's name
    parser.add_argument("--audit-log", type=_path)  # the JSON-lines audit file
    parser.add_argument("--state-dir", type=_path)  # crash recovery's state
    parser.add_argument("--no-routes", action="store_true")  # addresses and MTU only
    parser.add_argument("--dns-backend", choices=DNS_BACKENDS, default="none")
    parser.add_argument("--fail-closed", action="store_true")  # nftables: tun or gateway only
    # With --fail-closed: a prefix a server may exclude beyond private space.
    parser.add_argument("--allow-exclude", type=ipaddress.ip_network, action="append", default=[])
    parser.add_argument("--script", type=_path)  # a vpnc-script, run as root
    # An argument for the vpnc-script (repeatable, in order; given as --script-arg=ARG,
    # for it may start with "-").
    parser.add_argument("--script-arg", action="append", default=[])
    parser.add_argument("--log-level", type=int, choices=range(5), default=0)
    # Run even where Landlock or the seccomp filter cannot be set up.
    parser.add_argument("--allow-weak-sandbox", action="store_true")
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
            os.open(os.devnull, os.O_RDWR)  # the lowest free fd: this one


def _check_channel(fd: int) -> None:
    sock = socket.socket(fileno=fd)  # OSError if it is no socket
    kind = (sock.family, sock.type)
    sock.detach()
    if kind != (socket.AF_UNIX, socket.SOCK_SEQPACKET):
        raise ValueError(f"fd {fd} is not an AF_UNIX SOCK_SEQPACKET socket")


def _fail(message: str) -> int:
    os.write(2, f"sepconnect.privhelper: {message}\n".encode(errors="replace"))
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _close_inherited(args.fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the supervisor to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        _check_channel(args.fd)
    except (OSError, ValueError) as exc:
        return _fail(f"--fd {args.fd}: {exc}")
    uid, gid = (args.uid, args.gid) if os.getuid() == 0 else (os.getuid(), os.getgid())
    if uid is None or gid is None or uid in (0, args.peer_uid):
        return _fail("--uid/--gid (started as root): our own account, not root, not --peer-uid")
    try:
        log_fd = None if args.audit_log is None else open_log(args.audit_log)
    except OSError as exc:
        return _fail(f"--audit-log: {exc}")
    journal = open_journal()
    audit = _audit.Audit(log_fd, journal=journal)
    if args.state_dir is not None:
        try:
            privatedir.ensure_dir(args.state_dir, uid, gid)
        except OSError as exc:
            return _fail(f"--state-dir: {exc}")
    # What only root's options or a crashed session need (runners.py), loaded only then.
    stale: list[tuple[str, dict[str, Any]]] = []
    backend: BackendName = "none"
    root = nft = None
    needs_nft = False
    root_dir = None if args.state_dir is None else f"{args.state_dir}-root"
    crashed = any(privatedir.has_files(path) for path in (args.state_dir, root_dir) if path)
    if crashed or args.script or args.script_arg or args.dns_backend != "none" or args.fail_closed:
        from sepconnect.privhelper import runners

        try:
            stale, backend, root, needs_nft = runners.before_the_drop(args, root_dir, log_fd, uid)
        except (OSError, ValueError) as exc:
            return _fail(str(exc))
    try:
        drop_privileges(uid, gid)
        if needs_nft:
            nft = runners.nft_runner()
    except OSError as exc:
        audit.record("start", "fatal", f"cannot drop privileges: {exc}")
        return EXIT_FATAL
    landlocked = "no writes but the state directory"
    try:
        confine(args.state_dir)
    except OSError as exc:
        if not args.allow_weak_sandbox:
            audit.record("start", "fatal", f"cannot confine the helper: {exc}")
            return EXIT_FATAL
        landlocked = f"none (--allow-weak-sandbox): {exc}"[:200]
    seccomp = "allow-list (compiled; the serving stage loads it)"
    bpf = b""
    try:
        bpf = _seccomp.build()
    except OSError as exc:
        if not args.allow_weak_sandbox:
            reason = f"cannot build the seccomp filter: {exc} (see --allow-weak-sandbox)"
            audit.record("start", "fatal", reason)
            return EXIT_FATAL
        seccomp = f"none (--allow-weak-sandbox): {exc}"[:200]
    ifname = args.interface or DEFAULT_TEMPLATE
    allow_exclude = [str(prefix) for prefix in args.allow_exclude]
    settings = {
        "fd": args.fd,
        "peer_uid": args.peer_uid,
        "log_fd": log_fd,
        "journal_fd": None if journal is None else journal.fileno(),
        "root": _runner(root),
        "nft": _runner(nft),
        "options": {  # network.Options
            "ifname": ifname,
            "named": args.interface is not None,
            "no_routes": args.no_routes,
            "fail_closed": args.fail_closed,
            "allow_exclude": allow_exclude,
            "dns_backend": backend,
            "script": args.script,
            "log_level": args.log_level,
            "state_dir": args.state_dir,
        },
        "allow_weak_sandbox": args.allow_weak_sandbox,
        "stale": stale,
    }
    start: _audit.Args = {
        "uid": uid,
        "peer_uid": args.peer_uid,
        "interface": ifname,
        "landlock": landlocked,
        "seccomp": seccomp,
        "routes": "none" if args.no_routes or args.script else "helper",
        "dns_backend": backend,
        "fail_closed": int(args.fail_closed),
        "allow_exclude": allow_exclude,
        "script": args.script,
        "script_args": list(args.script_arg),
        "root_runner": None if root is None else root.pid,
        "nft_runner": None if nft is None else nft.pid,
    }
    # The start stage is done: what it set up, written before the exec (the serving stage
    # records only a filter it cannot load).
    audit.record("start", "info", args=start)
    try:
        _exec_serving_stage(settings, bpf)
    except OSError as exc:
        audit.record("start", "fatal", f"cannot execute the serving stage: {exc}")
    return EXIT_FATAL


def _runner(client: RunnerClient | None) -> list[int] | None:
    return None if client is None else [client.channel.fileno(), client.pid]


def _exec_serving_stage(settings: dict[str, Any], bpf: bytes) -> None:
    """Execute serve.py in this process with CAP_NET_ADMIN ambient (we are not root:
    only an ambient capability survives the exec); ``settings`` (JSON) and the filter go
    in one memfd: a line of JSON, then the BPF."""
    memfd = os.memfd_create("sepconnect-helper-settings", 0)
    os.write(memfd, json.dumps(settings).encode() + b"\n" + bpf)
    os.lseek(memfd, 0, os.SEEK_SET)
    runners = [runner[0] for runner in (settings["root"], settings["nft"]) if runner]
    for fd in (settings["fd"], settings["log_fd"], settings["journal_fd"], *runners):
        if fd is not None:
            os.set_inheritable(fd, True)
    ambient_net_admin()
    argv = [*programs.program(*SERVING_PROGRAM), "--settings-fd", str(memfd)]
    os.execve(argv[0], argv, dict(os.environ))  # noqa: S606 - our own stage, no shell
