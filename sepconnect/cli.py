"""`sepconnect` command line: the launcher.

`sepconnect connect` starts as root, spawns the privileged helper, drops to the
service account for good, and then *is* the supervisor: the process the user
started stays the one to signal. Nothing that parses network data ever runs
as root.
"""

from __future__ import annotations

import argparse
import getpass
import grp
import os
import pwd
import re
import socket
import subprocess
import sys

import setproctitle

from sepconnect import __version__, hardening
from sepconnect.exitcodes import ExitCode

DEFAULT_ACCOUNT = "sepconnect"
FALLBACK_ACCOUNT = "nobody"
DEFAULT_AUDIT_LOG = "/var/log/sepconnect/audit.jsonl"
_MAX_CAFILE = 60_000
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_CIPHER_LIST = re.compile(r"[A-Za-z0-9_.\-]{1,64}(?::[A-Za-z0-9_.\-]{1,64}){0,31}")


class UsageError(Exception):
    """Bad command line or local setup; exits with ExitCode.USAGE."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepconnect",
        description="Privilege-separated AnyConnect/OpenConnect VPN client.",
    )
    parser.add_argument("--version", action="version", version=f"sepconnect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser(
        "connect",
        help="connect to a VPN server (run as root; drops privileges)",
        description=(
            "Authenticate to an AnyConnect-compatible server, bring up a tun device with the "
            "pushed addresses and routes, and carry traffic until SIGINT/SIGTERM (log off) or "
            "SIGHUP (disconnect, keeping the server session). Must be started as root: a small "
            "privileged helper keeps CAP_NET_ADMIN; everything else runs as --setuid USER."
        ),
    )
    c.add_argument("url", metavar="URL", help="server, e.g. https://vpn.example.com[:port][/group]")
    c.add_argument("-u", "--user", metavar="NAME", help="username to log in with")
    c.add_argument(
        "--passwd-on-stdin",
        action="store_true",
        help="read the password from standard input; further lines answer further password "
        "prompts (e.g. a one-time code), in order",
    )
    c.add_argument("-g", "--authgroup", metavar="GROUP", help="choose this login group")
    c.add_argument(
        "--servercert",
        metavar="PIN",
        help="accept only the server certificate with this pin: pin-sha256:<base64 of the "
        "SHA-256 of its public key> or sha256:<hex of the SHA-256 of the certificate>; "
        "replaces chain and hostname verification",
    )
    c.add_argument(
        "--cafile",
        metavar="FILE",
        help="verify the server against the CA certificates in this PEM file instead of the "
        "system store",
    )
    c.add_argument(
        "-i", "--interface", metavar="IFNAME", help="name of the tun device (default: sepc0, …)"
    )
    c.add_argument(
        "-U",
        "--setuid",
        metavar="USER",
        help=f"account to run as after dropping root (default: {DEFAULT_ACCOUNT} if it exists, "
        f"else {FALLBACK_ACCOUNT})",
    )
    c.add_argument("--base-mtu", type=int, metavar="BYTES", help="MTU of the path to the server")
    c.add_argument("--mtu", type=int, metavar="BYTES", help="request this tunnel MTU")
    c.add_argument("--disable-ipv6", action="store_true", help="do not ask for IPv6 in the tunnel")
    c.add_argument(
        "--no-dtls", action="store_true", help="carry data over TLS only; never use UDP (DTLS)"
    )
    c.add_argument(
        "--dtls-ciphers",
        metavar="LIST",
        help="send this X-DTLS-CipherSuite list (colon separated, as openconnect) instead of "
        "the default PSK-NEGOTIATE and legacy names",
    )
    c.add_argument(
        "--dtls12-ciphers", metavar="LIST", help="send this X-DTLS12-CipherSuite list instead"
    )
    c.add_argument(
        "--audit-log",
        metavar="FILE",
        default=DEFAULT_AUDIT_LOG,
        help=f"where the privileged helper appends its audit records "
        f"(default: {DEFAULT_AUDIT_LOG})",
    )
    c.add_argument("-v", "--verbose", action="count", default=0, help="more output (repeatable)")
    return parser


def _service_account(name: str | None) -> tuple[str, int, int]:
    candidates = [name] if name else [DEFAULT_ACCOUNT, FALLBACK_ACCOUNT]
    for candidate in candidates:
        try:
            entry = pwd.getpwnam(candidate)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise UsageError(f"--setuid {candidate}: refusing to run the unprivileged side as root")
        return candidate, entry.pw_uid, entry.pw_gid
    raise UsageError(f"no such account: {' or '.join(candidates)}")


def _read_passwords(args: argparse.Namespace) -> tuple[str, ...]:
    if args.passwd_on_stdin:
        data = sys.stdin.read(64 * 1024)
        lines = data.splitlines()
        if len(lines) > 8:
            raise UsageError("--passwd-on-stdin: at most 8 lines")
        return tuple(lines)
    if sys.stdin.isatty():
        return (getpass.getpass("Password: "),)
    return ()


def _read_cafile(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CAFILE + 1)
    except OSError as exc:
        raise UsageError(f"--cafile {path}: {exc.strerror}") from None
    if len(data) > _MAX_CAFILE:
        raise UsageError(f"--cafile {path}: larger than {_MAX_CAFILE} bytes")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise UsageError(f"--cafile {path}: no PEM certificate in it")
    return data


def _check_args(args: argparse.Namespace) -> None:
    if not args.url.startswith("https://"):
        raise UsageError(f"the server URL must start with https://, got {args.url!r}")
    if args.interface is not None and (
        not _IFNAME.fullmatch(args.interface) or args.interface in (".", "..")
    ):
        raise UsageError(f"--interface {args.interface!r}: 1-15 characters of A-Z a-z 0-9 _ . -")
    if args.base_mtu is not None and not 1280 <= args.base_mtu <= 9000:
        raise UsageError("--base-mtu must be between 1280 and 9000")
    if args.mtu is not None and not 576 <= args.mtu <= 9000:
        raise UsageError("--mtu must be between 576 and 9000")
    for flag, value in (
        ("--dtls-ciphers", args.dtls_ciphers),
        ("--dtls12-ciphers", args.dtls12_ciphers),
    ):
        if value is not None and not _CIPHER_LIST.fullmatch(value):
            raise UsageError(f"{flag}: colon-separated cipher names (A-Z a-z 0-9 _ . -)")
    if args.servercert is not None:
        from sepconnect.worker.io.tls import ServerPin

        try:
            ServerPin.parse(args.servercert)
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def _open_audit_dir(path: str) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)


def _spawn_helper(
    fd: int, peer_uid: int, interface: str | None, audit_log: str
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-I",
        "-m",
        "sepconnect.privhelper",
        "--fd",
        str(fd),
        "--peer-uid",
        str(peer_uid),
        "--audit-log",
        audit_log,
    ]
    if interface:
        argv += ["--interface", interface]
    # Its own process group: a ^C at the terminal reaches the supervisor only,
    # which then tears the session down in order.
    return subprocess.Popen(
        argv, pass_fds=(fd,), stdin=subprocess.DEVNULL, process_group=0, close_fds=True
    )


def connect(args: argparse.Namespace) -> ExitCode:
    from sepconnect.privhelper.client import HelperClient
    from sepconnect.privhelper.wire import socketpair
    from sepconnect.supervisor.main import Supervisor, log
    from sepconnect.supervisor.schema import Start

    _check_args(args)
    if os.geteuid() != 0:
        raise UsageError(
            "sepconnect connect must be started as root: its small helper keeps CAP_NET_ADMIN "
            "to set up the tun device, and everything else drops to an unprivileged account"
        )
    account, uid, gid = _service_account(args.setuid)
    cafile_pem = _read_cafile(args.cafile)
    username = args.user
    if username is None and sys.stdin.isatty() and not args.passwd_on_stdin:
        username = input("Username: ")
    passwords = _read_passwords(args)
    _open_audit_dir(args.audit_log)
    start = Start(
        proto=1,
        url=args.url,
        username=username or "",
        passwords=passwords,
        group=args.authgroup,
        servercert=args.servercert,
        cafile_pem=cafile_pem,
        base_mtu=args.base_mtu,
        mtu=args.mtu,
        disable_ipv6=args.disable_ipv6,
        no_dtls=args.no_dtls,
        dtls_ciphers=args.dtls_ciphers,
        dtls12_ciphers=args.dtls12_ciphers,
        hostname=(socket.gethostname().split(".")[0] or "localhost")[:64],
        verbose=min(args.verbose, 4),
    )
    ours, theirs = socketpair()
    helper = _spawn_helper(theirs.fileno(), uid, args.interface, args.audit_log)
    theirs.close()
    # From here on this process is the supervisor and never root again.
    hardening.drop_bounding_set()
    hardening.drop_to(uid, gid)
    hardening.no_new_privs_and_undumpable()
    setproctitle.setproctitle("sepconnect: supervisor")
    if args.verbose:
        log(f"running as {account} (uid {uid}, gid {gid} {grp.getgrgid(gid).gr_name})")
    try:
        code = Supervisor(HelperClient(ours), helper.pid, start).run()
    finally:
        ours.close()
        try:
            helper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log("the privileged helper did not exit; it will clean up when it notices")
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "connect":
            return int(connect(args))
    except UsageError as exc:
        print(f"sepconnect: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        return int(ExitCode.ERROR)
    return int(ExitCode.USAGE)
