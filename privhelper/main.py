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
creates the state directory and reads the state of crashed sessions, starts the runners
(process/runner.py) only where root's options (or a crashed session's state) need them
— the root runner (rootrunner/: ``--script``, ``--dns-backend file|resolvconf``) and the
nft runner (nft.py: ``--fail-closed``) —, drops to its uid with CAP_NET_ADMIN alone
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

from sepconnect.ipc.limits import DNS_BACKENDS, check_ifname
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper import seccomp as _seccomp
from sepconnect.privhelper.network import STATE_PREFIX
from sepconnect.privhelper.tun import DEFAULT_TEMPLATE, TUN_DEVICE
from sepconnect.process import landlock, privileges, programs, statedir
from sepconnect.process.auditfile import open_log
from sepconnect.process.journal_socket import open_journal

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import BackendName
    from sepconnect.process.runner import RunnerClient

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
EXIT_USAGE: Final = 2

SERVING_PROGRAM: Final = ("sepconnect-privhelper-serve", "sepconnect.privhelper.serve")


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


def _check_channel(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            raise ValueError(f"fd {fd} is not an AF_UNIX SOCK_SEQPACKET socket")
    finally:
        sock.detach()


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
            statedir.ensure_dir(args.state_dir, uid, gid)
            stale = list(statedir.stale(args.state_dir, STATE_PREFIX))
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
    landlocked = "no writes but the state directory"
    try:
        confine(args.state_dir)
    except OSError as exc:
        if not args.allow_weak_sandbox:
            audit.record("start", "fatal", f"cannot confine the helper: {exc}")
            return EXIT_FATAL
        landlocked = f"none (--allow-weak-sandbox): {exc}"[:200]
    seccomp = "allow-list"
    bpf = b""
    try:
        bpf = _compile_filter()
    except OSError as exc:
        if not args.allow_weak_sandbox:
            reason = f"cannot build the seccomp filter: {exc} (see --allow-weak-sandbox)"
            audit.record("start", "fatal", reason)
            return EXIT_FATAL
        seccomp = f"none (--allow-weak-sandbox): {exc}"[:200]
    settings = {
        "fd": args.fd,
        "peer_uid": args.peer_uid,
        "log_fd": log_fd,
        "journal_fd": None if journal is None else journal.fileno(),
        "root": _runner(root),
        "nft": _runner(nft_runner),
        "options": {  # network.Options
            "ifname": args.interface or DEFAULT_TEMPLATE,
            "named": args.interface is not None,
            "no_routes": args.no_routes,
            "fail_closed": args.fail_closed,
            "allow_exclude": [str(p) for p in args.allow_exclude],
            "dns_backend": backend,
            "script": args.script,
            "log_level": args.log_level,
            "state_dir": args.state_dir,
        },
        "allow_weak_sandbox": args.allow_weak_sandbox,
        "stale": stale,
        "start": {
            "uid": uid,
            "peer_uid": args.peer_uid,
            "interface": args.interface or DEFAULT_TEMPLATE,
            "landlock": landlocked,
            "seccomp": seccomp,
            "routes": "none" if args.no_routes or args.script else "helper",
            "dns_backend": backend,
            "fail_closed": int(args.fail_closed),
            "allow_exclude": [str(p) for p in args.allow_exclude],
            "script": args.script,
            "script_args": list(args.script_arg),
            "root_runner": None if root is None else root.pid,
            "nft_runner": None if nft_runner is None else nft_runner.pid,
        },
    }
    try:
        _exec_serving_stage(settings, bpf)
    except OSError as exc:
        audit.record("start", "fatal", f"cannot execute the serving stage: {exc}")
    return EXIT_FATAL


def _runner(client: RunnerClient | None) -> list[int] | None:
    return None if client is None else [client.channel.fileno(), client.pid]


def _compile_filter() -> bytes:
    """The serving stage's seccomp filter as BPF (loaded there, after the exec)."""
    fd = os.memfd_create("sepconnect-helper-filter", os.MFD_CLOEXEC)
    try:
        with _seccomp.build() as compiled:
            compiled.export_bpf(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        return _read_all(fd)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _exec_serving_stage(settings: dict[str, Any], bpf: bytes) -> None:
    """Execute serve.py in this process with CAP_NET_ADMIN ambient (we are not root:
    only an ambient capability survives the exec); ``settings`` (JSON) and the filter go
    in one memfd: a line of JSON, then the BPF."""
    memfd = os.memfd_create("sepconnect-helper-settings", 0)
    os.write(memfd, json.dumps(settings).encode() + b"\n" + bpf)
    os.lseek(memfd, 0, os.SEEK_SET)
    for fd in (settings["fd"], settings["log_fd"], settings["journal_fd"]):
        if fd is not None:
            os.set_inheritable(fd, True)
    for runner in (settings["root"], settings["nft"]):
        if runner is not None:
            os.set_inheritable(runner[0], True)
    privileges.keep_only_capabilities(KEEP, inheritable=True)
    privileges.raise_ambient(privileges.CAP_NET_ADMIN)
    argv = [*programs.program(*SERVING_PROGRAM), "--settings-fd", str(memfd)]
    os.execve(argv[0], argv, dict(os.environ))  # noqa: S606 - our own stage, no shell
