"""The launcher after it dropped root: the session, run by the supervisor.

No root ever loads it: the launcher's root stage (launcher/rootstage.py) starts the
helper and the spawner and drops to the service account, then cli.connect calls
:func:`run`, which starts the first worker and hands over to the supervisor. Also the split mode's
own start (``--helper-socket``: started as the service account, never root).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import grp
import os
import pwd
import re
import socket
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING

from sepconnect.cli import DEFAULT_AUDIT_LOG, DEFAULT_SESSION_LOG, DEFAULT_STATE_DIR, UsageError
from sepconnect.ipc.session_limits import LOCAL_HOSTNAME
from sepconnect.process.exitcodes import ExitCode
from sepconnect.process.spawner_client import SpawnerClient, SpawnerGone, WorkerProcess
from sepconnect.process.title import set_title

if TYPE_CHECKING:
    import ipaddress

    from sepconnect.background import TunnelUpHooks
    from sepconnect.client_cert import ClientCertFiles
    from sepconnect.credentials import LoginInput
    from sepconnect.ipc.worker_messages import Start


@dataclasses.dataclass(frozen=True, slots=True)
class Spawner:
    """The worker spawner as the root stage left it (launcher/rootstage.py): the
    process it started (None: the split units' socket), our end of its channel, and
    our end of the first worker's channel if it started one at once."""

    proc: subprocess.Popen[bytes] | None
    sock: socket.socket
    first_channel: socket.socket | None


def run(
    args: argparse.Namespace,
    ours: socket.socket,
    helper: subprocess.Popen[bytes] | None,
    spawner_setup: Spawner,
    account: tuple[str, int, int],
    helper_user: tuple[str, int, int],
    control_gid: int | None,
    audit_fd: int | None,
    start_message: Callable[[], Start],
    login: LoginInput,
    hooks: TunnelUpHooks | None,
) -> ExitCode:
    """The session as the supervisor; its exit code."""
    name, uid, gid = account
    # The first worker starts before the supervisor's own modules load (~60 ms): the
    # worker's start-up (Python, imports: ~0.15 s) is the longest item of the connect
    # time, and it reads its `start` only once its imports are done. The spawner we
    # started starts it at once; one of the split units' is asked now (as the
    # supervisor's uid, which it checks).
    spawner = SpawnerClient(spawner_setup.sock)
    first_worker: tuple[WorkerProcess, socket.socket] | None = None
    if spawner_setup.first_channel is not None:
        first_worker = spawner.started_at_exec(spawner_setup.first_channel)
    else:
        with contextlib.suppress(SpawnerGone):  # the supervisor's first spawn fails too
            first_worker = spawner.spawn(allow_weak_sandbox=args.allow_weak_sandbox)
    set_title("sepconnect: supervisor")
    if audit_fd is not None:
        from sepconnect.supervisor import audit as session_audit

        session_audit.configure(audit_fd)
    from sepconnect.credentials import answer_sources
    from sepconnect.supervisor.helper_client import HelperClient
    from sepconnect.supervisor.main import QUIET, VERBOSITY, Options, Supervisor, log

    if args.verbose:
        log(f"running as {name} (uid {uid}, gid {gid} {grp.getgrgid(gid).gr_name})")
        if helper is not None:
            log(f"the privileged helper runs as {helper_user[0]} (uid {helper_user[1]})")
    try:
        start = start_message()
        answers, codes, terminal = answer_sources(args, login)
        options = Options(
            always_on=args.always_on,
            reconnect_timeout=args.reconnect_timeout,
            service_uid=uid,
            control_path=args.control_socket,
            control_gid=control_gid,
            allow_weak_sandbox=args.allow_weak_sandbox,
            tun_offload=not args.no_tun_offload,
            answers=answers,
            codes=codes,
            terminal=terminal,
            cookie=login.cookie,
        )
        VERBOSITY[0] = args.verbose
        QUIET[0] = args.quiet
        supervisor = Supervisor(HelperClient(ours), spawner, start, options, first_worker)
        if hooks is not None:  # -b, --pid-file, --syslog
            supervisor.notifier.on_ready = hooks.tunnel_up
        first_worker = None  # the supervisor's now: it reaps it
        code = supervisor.run()
    finally:
        if hooks is not None:
            hooks.session_ended()
        if first_worker is not None:  # we failed before the supervisor took it
            first_worker[1].close()  # the spawner kills it when we close its channel
        spawner.close()  # the spawner exits, killing any worker still there
        ours.close()
        if spawner_setup.proc is not None:
            try:
                spawner_setup.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log("the worker spawner did not exit")
        if helper is not None:
            try:
                helper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log("the privileged helper did not exit; it will clean up when it notices")
    return code


def split_mode_account(args: argparse.Namespace, as_root: bool) -> tuple[str, int, int]:
    """--helper-socket: we already are the service account; the helper runs apart."""
    if as_root:
        raise UsageError(
            "--helper-socket: start as the service account, not root (the helper that "
            "listens there already has the privilege)"
        )
    if args.setuid is not None:
        raise UsageError("--helper-socket: --setuid has no meaning; start as that account")
    privileged = [
        option
        for option, given in (
            ("--script", args.script is not None),
            ("--fail-closed", args.fail_closed),
            ("--no-routes", args.no_routes),
            ("--interface", args.interface is not None),
            ("--helper-user", args.helper_user is not None),
            ("--dns-backend", args.dns_backend != "auto"),
            ("--audit-log", args.audit_log != DEFAULT_AUDIT_LOG),
            ("--state-dir", args.state_dir != DEFAULT_STATE_DIR),
        )
        if given
    ]
    if privileged:
        raise UsageError(
            f"--helper-socket: {', '.join(privileged)} belong(s) to the helper's own "
            "configuration (its unit's command line), not to the unprivileged session"
        )
    if args.session_log != DEFAULT_SESSION_LOG:
        raise UsageError(
            "--helper-socket: --session-log is not used: the unprivileged session's events "
            "go to the journal"
        )
    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return name, uid, gid


def connect_socket(path: str, option: str) -> socket.socket:
    """The split units: the helper's or the spawner's socket (sepconnect-helper.socket,
    sepconnect-spawner.socket), given by *option*."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None
    return sock


def start_message(
    args: argparse.Namespace,
    server_address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    cafile_pem: bytes | None,
    client_files: ClientCertFiles,
    *,
    authenticate: bool = False,
) -> Start:
    """The worker's Start: built after the drop (launcher/cli.py), from what root read."""
    from sepconnect.ipc.worker_messages import Start

    return Start(
        proto=1,
        url=args.url,
        server_address=server_address,
        servercerts=tuple(args.servercert or ()),
        cafile_pem=cafile_pem,
        system_trust=not args.no_system_trust,
        client_cert=client_files.cert,
        client_key=client_files.key,
        key_password=client_files.password,
        base_mtu=args.base_mtu,
        mtu=args.mtu,
        disable_ipv6=args.disable_ipv6,
        no_dtls=args.no_dtls,
        dtls_ciphers=args.dtls_ciphers,
        dtls12_ciphers=args.dtls12_ciphers,
        hostname=args.local_hostname or _default_hostname(),
        verbose=min(args.verbose, 4),
        authenticate=authenticate,
        user_agent=args.useragent,
        version_string=args.version_string,
        platform=args.os,
    )


def _default_hostname() -> str:
    """X-CSTP-Hostname without --local-hostname: our host name's first label, when it is
    one the server takes (session_limits.LOCAL_HOSTNAME), else "localhost" (openconnect's
    default)."""
    label = socket.gethostname().split(".")[0][:63]
    return label if re.fullmatch(LOCAL_HOSTNAME, label) else "localhost"
