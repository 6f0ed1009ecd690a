"""`sepconnect` command line: the launcher.

`sepconnect connect` as root starts in the root stage (launcher/rootstage.py), which
parses nothing: it runs this command line first in a *planner* that already is the
service account (:func:`plan`: every check, the files through fds root opened, the
plan), then starts the helper and the spawner, drops to the service account for good
and runs it again (:func:`after_root_stage`): the launcher then *is* the supervisor,
the process the user started and the one to signal. Nothing that parses network data
or the command line ever runs as root. The session after the drop is session.py, the
control commands remote.py.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import ipaddress
import json
import os
import re
import socket
import stat
import subprocess
import sys
import traceback
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from sepconnect import __version__, client_cert, credentials, files, openconnect_compat
from sepconnect.ipc.helper_args import DNS_BACKENDS, check_ifname
from sepconnect.ipc.session_limits import CIPHER_LIST, MAX_CAFILE
from sepconnect.process import privileges
from sepconnect.process.accounts import (
    HELPER_ACCOUNT,
    HELPER_FALLBACK_UID,
    SERVICE_ACCOUNT,
    SERVICE_FALLBACK,
    AccountError,
    service_account,
)
from sepconnect.process.exitcodes import ExitCode
from sepconnect.process.helpformat import HelpFormatter
from sepconnect.process.title import set_title
from sepconnect.remote import DEFAULT_CONTROL
from sepconnect.remote import add_options as remote_options
from sepconnect.session_accounts import SpawnerSetupError, helper_account

if TYPE_CHECKING:
    from sepconnect.background import TunnelUpHooks

DEFAULT_AUDIT_LOG = "/var/log/sepconnect/audit.jsonl"
DEFAULT_SESSION_LOG = "/var/log/sepconnect/session.jsonl"
DEFAULT_STATE_DIR = "/run/sepconnect-helper"  # root-only; /run/sepconnect is the service account's


class Unreachable(Exception):
    """The VPN server's name does not resolve (exit UNREACHABLE)."""


def resolve_server(url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The VPN server's address, once, as root before anything else runs (as openconnect,
    the first answer). The helper is told it and refuses any other gateway; the worker
    connects to exactly this address and never resolves the name itself."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or 443
    except ValueError:
        raise UsageError(f"bad port in server URL {url!r}") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Unreachable(f"cannot resolve {host}: {exc.strerror or exc}") from None
    if not infos:
        raise Unreachable(f"cannot resolve {host}")
    return ipaddress.ip_address(str(infos[0][4][0]).partition("%")[0])


class Started(NamedTuple):
    """What the root stage (launcher/rootstage.py) did, for the launcher after the drop."""

    plan: dict[str, Any]
    files: dict[tuple[str, str], int]
    helper: subprocess.Popen[bytes] | None
    helper_channel: socket.socket | None
    spawner: tuple[subprocess.Popen[bytes], socket.socket, socket.socket] | None
    relay: Any  # output.OutputRelay (--timestamp, --syslog)
    background: Any  # background.Background (-b)


class UsageError(Exception):
    """Bad command line or local setup; exits with ExitCode.USAGE."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepconnect",
        description="Privilege-separated AnyConnect/OpenConnect VPN client.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sepconnect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser(
        "connect",
        formatter_class=HelpFormatter,
        help="connect to a VPN server (run as root; drops privileges)",
        description=(
            "Authenticate to an AnyConnect-compatible server, bring up a tun device with the "
            "pushed addresses and routes, and carry traffic until SIGINT/SIGTERM (log off) or "
            "SIGHUP (disconnect, keeping the server session). Must be started as root: a small "
            "privileged helper keeps CAP_NET_ADMIN; everything else runs as --setuid USER."
        ),
    )
    c.add_argument(
        "url",
        metavar="SERVER",
        help="the server: https://HOST[:PORT][/PATH], or HOST[:PORT][/PATH] (https assumed)",
    )
    c.add_argument(
        "--config",
        metavar="FILE",
        help="read options from FILE first, in openconnect's syntax: one long option name "
        "a line without the dashes (name, name=value or name value; server=URL for the "
        "server), # comments; owned by root, writable by no one else, no secrets "
        "(docs/usage.md)",
    )
    c.add_argument("-u", "--user", metavar="NAME", help="username to log in with")
    c.add_argument(
        "--passwd-on-stdin",
        action="store_true",
        help="read the password from standard input; further lines answer further password "
        "prompts (e.g. a one-time code), in order",
    )
    c.add_argument(
        "--authgroup",
        metavar="GROUP",
        help="choose this login group (as openconnect; -g is --usergroup)",
    )
    openconnect_compat.add_options(c)
    c.add_argument(
        "--form-entry",
        metavar="FORM:FIELD=VALUE",
        action="append",
        default=[],
        help="answer the field FIELD of the server's login form FORM with VALUE (repeatable; "
        "as openconnect; VALUE is visible in ps until the session starts: give passwords "
        "on stdin or in --credentials-file)",
    )
    c.add_argument(
        "--non-inter",
        action="store_true",
        help="never ask on the terminal: a login field without an answer ends the login",
    )
    c.add_argument(
        "--token-mode",
        choices=("totp", "hotp"),
        help="answer the server's one-time-code prompt with a code computed from "
        "--token-secret (a fresh one for every login)",
    )
    c.add_argument(
        "--token-secret",
        metavar="SECRET|@FILE",
        help="the token's secret in openconnect's syntax (base32:…, 0x<hex>, optionally "
        "sha256: or sha512: first, and ,COUNTER for hotp), or @FILE to read it from FILE "
        "(as --credentials-file; hotp writes each new counter back to it)",
    )
    c.add_argument(
        "--authenticate",
        action="store_true",
        help="log in, print COOKIE, HOST, CONNECT_URL, FINGERPRINT and RESOLVE as shell "
        "assignments (as openconnect --authenticate) and exit; no tunnel, no helper; "
        "root is not needed",
    )
    c.add_argument(
        "--resolve",
        metavar="HOST:IP",
        help="connect to IP instead of looking up HOST, the server URL's host (as openconnect; "
        "--authenticate prints it as RESOLVE)",
    )
    c.add_argument(
        "--cookie-on-stdin",
        action="store_true",
        help="connect with the session cookie on standard input instead of logging in "
        "(webvpn=…, as openconnect --authenticate prints COOKIE)",
    )
    c.add_argument(
        "--servercert",
        metavar="PIN",
        action="append",
        help="accept only the server certificate with this fingerprint, as openconnect: "
        "pin-sha256:<base64>, sha256:<hex> or sha1:<hex> of its public key, or <hex> (SHA-1 of "
        "the certificate); a prefix of 4 or more characters matches too (with a warning); "
        "replaces chain and hostname verification (repeatable: any of the pins)",
    )
    c.add_argument(
        "--cafile",
        metavar="FILE",
        help="also trust the CA certificates in this PEM file, besides the system store",
    )
    c.add_argument(
        "--no-system-trust",
        action="store_true",
        help="do not trust the system store's CAs: only --cafile's",
    )
    client_cert.add_options(c)
    c.add_argument(
        "-i", "--interface", metavar="IFNAME", help="name of the tun device (default: sepc0, …)"
    )
    c.add_argument(
        "-U",
        "--setuid",
        metavar="USER",
        help=f"account to run as after dropping root (default: {SERVICE_ACCOUNT} if it exists, "
        f"else {SERVICE_FALLBACK})",
    )
    c.add_argument(
        "--helper-user",
        metavar="USER",
        help=f"the privileged helper's own account (default: {HELPER_ACCOUNT} if it exists, "
        f"else uid {HELPER_FALLBACK_UID}, which no account may have); never root, never the "
        "--setuid account",
    )
    c.add_argument("--base-mtu", type=int, metavar="BYTES", help="MTU of the path to the server")
    c.add_argument("--mtu", type=int, metavar="BYTES", help="request this tunnel MTU")
    c.add_argument("--disable-ipv6", action="store_true", help="do not ask for IPv6 in the tunnel")
    c.add_argument(
        "--no-dtls", action="store_true", help="carry data over TLS only; never use UDP (DTLS)"
    )
    c.add_argument(
        "--no-tun-offload",
        action="store_true",
        help="one tun write per packet: no coalesced writes "
        "(for kernels or setups where tun offloads misbehave)",
    )
    c.add_argument(
        "--dtls-ciphers",
        metavar="LIST",
        help="send this X-DTLS-CipherSuite list (colon separated, as openconnect) instead of "
        "the default PSK-NEGOTIATE and legacy DTLS 1.2 names; the DTLS 0.9 names AES128-SHA "
        "and AES256-SHA are offered only when listed here",
    )
    c.add_argument(
        "--dtls12-ciphers", metavar="LIST", help="send this X-DTLS12-CipherSuite list instead"
    )
    c.add_argument(
        "--audit-log",
        metavar="FILE",
        default=DEFAULT_AUDIT_LOG,
        help=f"where the privileged helper appends its audit records "
        f"(default: {DEFAULT_AUDIT_LOG}); only the helper writes it",
    )
    c.add_argument(
        "--session-log",
        metavar="FILE",
        default=DEFAULT_SESSION_LOG,
        help=f"where the supervisor appends its own events (connect, disconnect, login "
        f"failures, worker crashes; default: {DEFAULT_SESSION_LOG})",
    )
    c.add_argument(
        "--no-routes",
        action="store_true",
        help="set the tunnel's addresses and MTU but no routes (for deployments that route "
        "themselves)",
    )
    c.add_argument(
        "--dns-backend",
        choices=DNS_BACKENDS,
        default="auto",
        help="how to apply the server's DNS servers and domains: systemd-resolved over D-Bus, "
        "resolvconf, rewriting /etc/resolv.conf, or not at all (default: auto, in that order)",
    )
    c.add_argument(
        "--fail-closed",
        action="store_true",
        help="while connected, nftables rules let traffic leave only through the tunnel or to "
        "the VPN server",
    )
    c.add_argument(
        "--allow-exclude",
        metavar="PREFIX",
        action="append",
        default=[],
        help="with --fail-closed: a prefix the server may exclude from the tunnel beyond private "
        "and link-local space (repeatable; other excludes end the session)",
    )
    c.add_argument(
        "-s",
        "--script",
        metavar="COMMAND",
        help="vpnc-script to run as root for pre-init, connect, attempt-reconnect, reconnect "
        "and disconnect, instead of setting addresses, routes and DNS ourselves: a program "
        "(absolute path, or a name looked up in /usr/local/sbin:…:/bin) owned by root and "
        "writable by nobody else, perhaps with arguments, e.g. 'vpn-slice 10.0.0.0/8'; split "
        "into words as a shell would, but no shell runs it (no pipes, variables, globs)",
    )
    c.add_argument(
        "--state-dir",
        metavar="DIR",
        default=DEFAULT_STATE_DIR,
        help=f"where the helper records what it installed, to undo it after a crash "
        f"(default: {DEFAULT_STATE_DIR})",
    )
    c.add_argument(
        "--helper-socket",
        metavar="PATH",
        help="do not start a helper: use the one listening at PATH (sepconnect-helper.socket); "
        "start as the service account, not root",
    )
    c.add_argument(
        "--spawner-socket",
        metavar="PATH",
        help="with --helper-socket: have the worker spawner listening at PATH "
        "(sepconnect-spawner.socket) run the workers under their own account",
    )
    c.add_argument(
        "--credentials-file",
        metavar="FILE",
        help="read the password (and further answers, one per line) from FILE instead of "
        "stdin; it must be a root-owned regular file of mode 0600 or stricter",
    )
    c.add_argument(
        "--reconnect-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="keep trying to restore a lost session for this long (default: 300)",
    )
    c.add_argument(
        "--always-on",
        action="store_true",
        help="for kiosks: log in again when the server ends the session (needs a password, "
        "form entry or token given non-interactively)",
    )
    c.add_argument(
        "--control-socket",
        metavar="PATH",
        default=DEFAULT_CONTROL,
        help=f"where to answer `sepconnect status|rekey|reconnect|disconnect` "
        f"(default: {DEFAULT_CONTROL})",
    )
    c.add_argument(
        "--control-group",
        metavar="GROUP",
        help="members of GROUP may use the control socket (default: root only)",
    )
    c.add_argument(
        "--allow-weak-sandbox",
        action="store_true",
        help="connect even where the kernel lacks a sandbox feature (Landlock, seccomp "
        "filters); by default the worker and the helper refuse to run without them",
    )
    c.add_argument("-v", "--verbose", action="count", default=0, help="more output (repeatable)")
    for name, text in (
        ("status", "show the state of the running session"),
        ("rekey", "build a new tunnel with the session cookie, then drop the old one"),
        ("reconnect", "drop the connection to the server and resume the session at once"),
        ("disconnect", "log off and end the session (as SIGTERM)"),
    ):
        s = sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        remote_options(s)
        if name == "status":
            s.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _read_cafile(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with os.fdopen(files.open_file("cafile", path), "rb") as f:
            data = f.read(MAX_CAFILE + 1)
    except OSError as exc:
        raise UsageError(f"--cafile {path}: {exc.strerror}") from None
    if len(data) > MAX_CAFILE:
        raise UsageError(f"--cafile {path}: larger than {MAX_CAFILE} bytes")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise UsageError(f"--cafile {path}: no PEM certificate in it")
    return data


def _resolve_address(
    args: argparse.Namespace,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """--resolve HOST:IP (as openconnect: HOST up to the first colon, or in brackets) for
    the URL's host."""
    if args.resolve is None:
        return None
    value = args.resolve
    if value.startswith("["):  # an IPv6 literal host, as --authenticate prints RESOLVE for one
        host, _, address = value[1:].partition("]:")
    else:
        host, _, address = value.partition(":")
    try:
        ip = ipaddress.ip_address(address.removeprefix("[").removesuffix("]"))
        url_host = urlsplit(args.url).hostname or ""
    except ValueError:
        raise UsageError(f"--resolve {args.resolve!r}: expected HOST:IP") from None
    if host.lower() != url_host:
        raise UsageError(f"--resolve {args.resolve!r}: HOST must be the URL's host, {url_host}")
    return ip


def _check_args(args: argparse.Namespace) -> None:
    try:
        args.url, warnings = openconnect_compat.server_url(args.url, args.usergroup)
        args.servercert, pin_warnings = openconnect_compat.server_pins(args.servercert or ())
        openconnect_compat.check_user_agent(args.useragent)
        openconnect_compat.check_version_string(args.version_string)
        openconnect_compat.check_local_hostname(args.local_hostname)
        args.cookie = openconnect_compat.session_cookie(args.cookie)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for warning in warnings + pin_warnings:
        print(f"sepconnect: warning: {warning}", file=sys.stderr)
    _resolve_address(args)
    if args.interface is not None:
        try:
            check_ifname(args.interface)
        except ValueError:
            raise UsageError(
                f"--interface {args.interface!r}: 1-15 characters of A-Z a-z 0-9 _ . -"
            ) from None
    if args.base_mtu is not None and not 1280 <= args.base_mtu <= 9000:
        raise UsageError("--base-mtu must be between 1280 and 9000")
    if args.mtu is not None and not 576 <= args.mtu <= 9000:
        raise UsageError("--mtu must be between 576 and 9000")
    for flag, value in (
        ("--dtls-ciphers", args.dtls_ciphers),
        ("--dtls12-ciphers", args.dtls12_ciphers),
    ):
        if value is not None and not re.fullmatch(CIPHER_LIST, value):
            raise UsageError(f"{flag}: colon-separated cipher names (A-Z a-z 0-9 _ . -)")
    if args.spawner_socket is not None and args.helper_socket is None:
        raise UsageError("--spawner-socket goes with --helper-socket (the split units)")
    if args.helper_socket is not None and args.spawner_socket is None:
        raise UsageError(
            "--helper-socket needs --spawner-socket: started as the service account, we "
            "cannot run the workers under an account of their own (the spawner's unit does)"
        )
    if args.authenticate and args.cookieonly:
        raise UsageError("--authenticate and --cookieonly: give one (both log in and print)")
    login_only = "--authenticate" if args.authenticate else "--cookieonly"
    if (args.authenticate or args.cookieonly) and (args.background or args.pid_file is not None):
        raise UsageError(f"{login_only} makes no tunnel: not with -b/--background or --pid-file")
    if (args.authenticate or args.cookieonly) and args.cookie is not None:
        raise UsageError(f"{login_only} logs in to get a cookie: not with -C/--cookie")
    if args.allow_exclude and not args.fail_closed:
        raise UsageError("--allow-exclude goes with --fail-closed")
    for prefix in args.allow_exclude:
        try:
            ipaddress.ip_network(prefix)
        except ValueError:
            raise UsageError(
                f"--allow-exclude {prefix!r}: not a prefix such as 192.0.2.0/24"
            ) from None
    if not 0 <= args.reconnect_timeout <= 86400:
        raise UsageError("--reconnect-timeout must be between 0 and 86400 seconds")
    if args.no_system_trust and args.cafile is None and not args.servercert:
        raise UsageError("--no-system-trust needs --cafile (or --servercert): nothing is trusted")


def _control_group(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UsageError(f"--control-group {name}: no such group") from None


def _prepare_control_dir(path: str, uid: int, *, create: bool = True) -> None:
    """The supervisor, no longer root, creates its socket in a directory of its own.

    The directory is created for the service account if it does not exist (by the root
    stage, launcher/rootstage.py, in a directory only root may write); an existing one
    must already belong to that account. An existing directory owned by anyone else is
    never taken over (``--control-socket /etc/x`` must not give /etc away). Not
    *create*: the planner's check of an existing one (none is fine: root makes it).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
                # Traversable, so control-group members can reach the socket (0660/0600).
                os.chmod(directory, 0o755)  # noqa: S103
        st = os.lstat(directory)
    except OSError as exc:
        if not create and isinstance(exc, FileNotFoundError):
            return  # the root stage makes it
        raise UsageError(f"--control-socket {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise UsageError(
            f"--control-socket {path}: {directory} must be a directory owned by the service "
            "account (it is created if it does not exist)"
        )


def _network_argv(args: argparse.Namespace) -> list[str]:
    """The helper's arguments but its channel and accounts (the root stage adds those):
    its audit log, tun name, routes, DNS, fail-closed and the vpnc-script."""
    argv = ["--audit-log", args.audit_log]
    if args.interface:
        argv += ["--interface", args.interface]
    argv += ["--state-dir", args.state_dir, "--dns-backend", args.dns_backend]
    argv += ["--log-level", str(min(args.verbose, 4))]
    if args.no_routes:
        argv.append("--no-routes")
    if args.fail_closed:
        argv.append("--fail-closed")
    for prefix in args.allow_exclude:
        argv += ["--allow-exclude", prefix]
    if args.script is not None:
        from sepconnect.ipc.script_env import check_script_args
        from sepconnect.process.runner import SAFE_PATH
        from sepconnect.rootrunner.script import check_script

        try:
            command = openconnect_compat.script_command(args.script, SAFE_PATH)
            check_script(command[0])
            check_script_args(command[1:])
        except (OSError, ValueError) as exc:
            raise UsageError(f"-s/--script: {exc}") from None
        # "=": an argument may start with "-" (argparse would take it for an option)
        argv += ["--script", command[0], *(f"--script-arg={arg}" for arg in command[1:])]
    return argv


def _open_session_log(path: str) -> int:
    """The supervisor's own event log, opened by root (the audit module itself is
    imported once the first worker runs). Not the helper's audit log: an O_APPEND fd
    does not stop ftruncate, so the supervisor gets no fd of that file."""
    try:
        return files.open_file("session-log", path)
    except OSError as exc:
        raise UsageError(f"--session-log {path}: {exc.strerror or exc}") from None


def _read_login(args: argparse.Namespace) -> credentials.LoginInput:
    try:
        return credentials.read_login(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _read_client_cert(
    args: argparse.Namespace, cafile_pem: bytes | None
) -> client_cert.ClientCertFiles:
    try:  # as root, and the key's password before --passwd-on-stdin's lines
        return client_cert.read_client_cert(args, len(cafile_pem or b""))
    except client_cert.OptionError as exc:
        raise UsageError(str(exc)) from None


def server_address_of(args: argparse.Namespace) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The one address the session talks to: --resolve's for the URL's host, else the
    name looked up once (:func:`resolve_server`)."""
    given = _resolve_address(args)
    return resolve_server(args.url) if given is None else given


def _tunnel_up_hooks(
    args: argparse.Namespace, uid: int, gid: int, started: Started | None
) -> TunnelUpHooks | None:
    """-b, --pid-file, --timestamp and --syslog: set up before the spawner, the helper and
    the workers start (by the root stage when it starts them): the relay carries their
    standard error, and -b's fork makes them the children of the process that goes on
    (the user's waits for the tunnel)."""
    if not (args.background or args.pid_file is not None or args.timestamp or args.syslog):
        return None
    from sepconnect.background import Background, PidFile, TunnelUpHooks

    try:  # a bad path is a usage error
        pid_file = None if args.pid_file is None else PidFile(args.pid_file)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if started is not None:
        return TunnelUpHooks(pid_file, started.relay, started.background)
    if files.planning():
        return None
    relay = None
    if args.timestamp or args.syslog:
        from sepconnect.output import OutputRelay

        relay = OutputRelay(timestamp=args.timestamp, syslog=args.syslog, uid=uid, gid=gid)
    in_background = Background(pid_file, quiet=args.quiet) if args.background else None
    return TunnelUpHooks(pid_file, relay, in_background)


def _plan(args: argparse.Namespace, channel: socket.socket) -> ExitCode:
    """The planner (launcher/rootstage.py): every check a connect as root makes before
    anything starts, the files read through the root stage, then the plan."""
    server_address = server_address_of(args)
    if args.helper_socket is not None:
        from sepconnect.session import split_mode_account

        split_mode_account(args, as_root=True)  # raises: not as root
    try:
        service = service_account(args.setuid)
        helper = helper_account(args.helper_user, service[1])
    except AccountError as exc:
        raise UsageError(str(exc)) from None
    worker = ("", 0, 0)
    if not (args.authenticate or args.cookieonly):
        from sepconnect.session_accounts import worker_account

        account = worker_account(service[1], service[2], helper_uid=helper[1])
        worker = (account.name, account.uid, account.gid)
    cafile_pem = _read_cafile(args.cafile)
    _read_client_cert(args, cafile_pem)
    _read_login(args)  # but standard input: that is read after the drop
    _tunnel_up_hooks(args, service[1], service[2], None)  # the PID file
    control_gid = _control_group(args.control_group)
    session = bool(worker[1])
    if session:
        if os.path.realpath(args.session_log) == os.path.realpath(args.audit_log):
            raise UsageError("--session-log must not be the helper's --audit-log")
        os.close(_open_session_log(args.session_log))
        _prepare_control_dir(args.control_socket, service[1], create=False)
    relay = [args.timestamp, args.syslog and session]  # --authenticate: no syslog
    absolute = os.path.abspath
    plan = {
        "service": service,
        "helper": helper if session else (),
        "worker": worker if session else (),
        "control_gid": control_gid if session else None,
        "control_dir": os.path.dirname(absolute(args.control_socket)) if session else None,
        "dirs": [os.path.dirname(absolute(args.audit_log))] if session else [],
        "helper_args": _network_argv(args) if session else [],
        "allow_weak_sandbox": args.allow_weak_sandbox,
        "relay": relay if any(relay) else None,
        "background": args.background,
        "quiet": args.quiet,
        "pid_file": None if args.pid_file is None else absolute(args.pid_file),
        "server_address": str(server_address),
    }
    channel.send(json.dumps({"plan": plan}).encode())
    return ExitCode.OK


def _session(
    args: argparse.Namespace,
    server_address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    account: tuple[str, int, int],
    helper_user: tuple[str, int, int],
    control_gid: int | None,
    started: Started | None,
) -> ExitCode:
    """A session, from what the root stage started (*started*), or, in the split units
    (--helper-socket, started as the service account), from the units' sockets."""
    from sepconnect.session import Spawner, connect_socket, run, start_message

    _, uid, gid = account
    helper: subprocess.Popen[bytes] | None = None
    if started is not None:
        assert started.spawner is not None
        assert started.helper_channel is not None
        spawner = Spawner(*started.spawner)
        ours, helper = started.helper_channel, started.helper
    try:
        cafile_pem = _read_cafile(args.cafile)
        client_files = _read_client_cert(args, cafile_pem)
        login = _read_login(args)  # after the key's password: both may come on standard input
        hooks = _tunnel_up_hooks(args, uid, gid, started)
        audit_fd = None if started is None else _open_session_log(args.session_log)
        # else: the helper's unit keeps the audit log; our own events go to the journal.
        _prepare_control_dir(args.control_socket, uid)
        if started is None:
            spawner = Spawner(None, connect_socket(args.spawner_socket, "--spawner-socket"), None)
            ours = connect_socket(args.helper_socket, "--helper-socket")
    except BaseException:
        if started is not None:  # each exits when we close its channel
            for sock in (ours, spawner.sock, spawner.first_channel):
                if sock is not None:
                    sock.close()
            for proc in (helper, spawner.proc):
                if proc is not None:
                    proc.wait()
        raise
    privileges.no_new_privs_and_undumpable()
    # The session, from modules no root ever loads: the supervisor (launcher/session.py).
    return run(
        args,
        ours,
        helper,
        spawner,
        account,
        helper_user,
        control_gid,
        audit_fd,
        # built after the drop: the message's schema is none of the root phase's code
        lambda: start_message(args, server_address, cafile_pem, client_files),
        login,
        hooks,
    )


def connect(args: argparse.Namespace, stage: socket.socket | Started | None = None) -> ExitCode:
    """A connect: planned (*stage* the planner's channel to the root stage), after the
    root stage (*stage* what it started), or in the split units (started unprivileged)."""
    if args.cookie is not None:
        set_title("sepconnect connect")  # the cookie leaves /proc/<pid>/cmdline now
    _check_args(args)
    if isinstance(stage, socket.socket):
        return _plan(args, stage)
    if os.geteuid() == 0:  # a programming error: rootstage.main is the way in
        raise UsageError("as root, connect runs through the sepconnect program's root stage")
    if args.authenticate or args.cookieonly:
        from sepconnect.authenticate import authenticate_only

        return authenticate_only(args, stage)
    if stage is not None:
        plan = stage.plan
        return _session(
            args,
            ipaddress.ip_address(plan["server_address"]),
            tuple(plan["service"]),
            tuple(plan["helper"]),
            plan["control_gid"],
            stage,
        )
    if args.helper_socket is None:
        raise UsageError(
            "sepconnect connect must be started as root: its small helper keeps CAP_NET_ADMIN "
            "to set up the tun device, and everything else drops to an unprivileged account "
            "(or connect to an already running helper with --helper-socket)"
        )
    from sepconnect.session import split_mode_account

    account = split_mode_account(args, as_root=False)
    server_address = server_address_of(args)
    return _session(
        args, server_address, account, ("", 0, 0), _control_group(args.control_group), None
    )


def plan(argv: list[str], channel: socket.socket) -> int:
    """The planner's work (launcher/rootstage.py): its exit code; the plan, if any, went
    to the root stage over *channel*."""
    files.ask_root(channel)
    try:
        return main(argv, channel)
    except SystemExit as exc:  # --help, or argparse's usage error
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except Exception:  # a bug: say where (the root stage's child exits without a word)
        traceback.print_exc()
        return int(ExitCode.ERROR)


def after_root_stage(argv: list[str], started: Started) -> int:
    """The launcher after the root stage dropped to the service account: the command
    line again, the files through the fds root opened, and the session."""
    files.take_from(started.files)
    return main(argv, started)


def main(argv: list[str] | None = None, stage: socket.socket | Started | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if any(arg.startswith("--config") for arg in argv):  # its module only when it is used
        from sepconnect import config

        try:
            argv = config.expand(argv, parser)
        except config.ConfigError as exc:
            print(f"sepconnect: {exc}", file=sys.stderr)
            return int(ExitCode.USAGE)
    args = parser.parse_args(argv)
    try:
        if args.command == "connect":
            return int(connect(args, stage))
        if args.command in ("status", "rekey", "reconnect", "disconnect"):
            from sepconnect.remote import control

            return int(control(args))
    except (UsageError, SpawnerSetupError) as exc:
        print(f"sepconnect: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except Unreachable as exc:
        print(f"sepconnect: {exc}", file=sys.stderr)
        return int(ExitCode.UNREACHABLE)
    except KeyboardInterrupt:
        return int(ExitCode.ERROR)
    return int(ExitCode.USAGE)
