"""The worker process (`python -I -m sepconnect.worker --fd N`; started through
worker/boot.py).

The worker is started by the supervisor, already unprivileged. It speaks only
to the supervisor (never to the helper) over the SEQPACKET socket it inherits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import signal
import socket
import sys
from typing import Literal

from sepconnect.ipc.limits import MAX_BANNER
from sepconnect.ipc.routing import UnusableConfig, routing_policy
from sepconnect.ipc.session_limits import printable
from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.ipc.worker_messages import (
    FD_TO_WORKER,
    FROM_WORKER,
    TO_WORKER,
    Failed,
    FormChoice,
    LoggedIn,
    LoginAnswers,
    LoginField,
    LoginForm,
    Lost,
    QueryStatus,
    Reconnect,
    Start,
    Stop,
    Stopped,
    TunHandoff,
    TunnelUp,
    WorkerStatus,
)
from sepconnect.process import privileges
from sepconnect.process.title import set_title
from sepconnect.worker import sandbox
from sepconnect.worker.connect import Ask, SessionFailure, Tunnel, authenticate, open_tunnel
from sepconnect.worker.proto.auth import FormPrompt


def _log(text: str) -> None:
    print(f"sepconnect worker: {text}", file=sys.stderr, flush=True)


def _tunnel_up(tunnel: Tunnel) -> TunnelUp:
    """The server's configuration under the routing policy (the supervisor applies it again)."""
    cfg = tunnel.config
    offered = dataclasses.replace(cfg.net, mtu=tunnel.mtu, banner=tunnel.banner)
    try:
        net, notes = routing_policy(offered)
    except UnusableConfig as exc:
        raise SessionFailure("protocol", f"unusable configuration: {exc}") from None
    for note in notes:
        _log(note)
    return TunnelUp(
        server=tunnel.server.name,
        net=net,
        rekey_time=cfg.rekey_time,
        rekey_method=_rekey_method(cfg.rekey_method),
        cookie=tunnel.cookie,
    )


def _login_form(prompt: FormPrompt) -> LoginForm:
    """The server's form as the supervisor takes it, checked against the schema here: a
    form that does not fit (too large, a name used twice) is the server's fault."""

    def text(value: str | None, limit: int) -> str | None:
        return printable(value, limit) or None if value else None

    try:
        form = LoginForm(
            form_id=prompt.form_id,
            banner=text(prompt.banner, MAX_BANNER),
            message=text(prompt.message, 1024),
            error=text(prompt.error, 1024),
            fields=tuple(
                LoginField(
                    kind=f.kind,  # type: ignore[arg-type]  # FormPrompt has no hidden field
                    name=f.name,
                    label=f.label,
                    choices=tuple(
                        FormChoice(value=o.value, label=o.label, selected=o.selected)
                        for o in f.options
                    ),
                )
                for f in prompt.fields
            ),
        )
        FROM_WORKER.decode_untrusted(FROM_WORKER.encode(form))
    except (ValueError, WireError) as exc:
        raise SessionFailure("protocol", f"the server's login form is unusable: {exc}") from None
    return form


def _asker(channel: Channel) -> Ask:
    """Login forms go to the supervisor, which answers each field (it holds the
    passwords, the one-time-code secret and the terminal; this process holds none)."""

    def ask(prompt: FormPrompt) -> tuple[dict[str, str], str | None]:
        channel.send(_login_form(prompt))
        reply, _ = channel.recv()
        if not isinstance(reply, LoginAnswers):
            raise WireError(f"expected login answers, got {reply.op}")
        return {answer.name: answer.value for answer in reply.answers}, reply.group

    return ask


def _rekey_method(method: str | None) -> Literal["ssl", "new-tunnel", "none"] | None:
    if method in ("ssl", "new-tunnel", "none"):
        return method  # type: ignore[return-value]
    return None


ALLOW_WEAK = [False]  # from --allow-weak-sandbox; set once in main()


def _enter_sandbox(start: Start, channel: Channel) -> None:
    """Sandbox ourselves for good, before any name lookup or byte from the network.

    ``--allow-weak-sandbox`` comes on our command line from the supervisor. The
    environment (a fixed, minimal one) is read only for the test-only self-test
    switch (tests/integration/test_sandbox.py).
    """
    allow_weak = ALLOW_WEAK[0]
    try:
        status = sandbox.apply(server_port=sandbox.server_port(start.url), allow_weak=allow_weak)
    except (sandbox.SandboxUnavailable, OSError) as exc:
        raise SessionFailure("error", f"worker sandbox: {exc}") from None
    for missing in status.missing:
        _log(f"warning: --allow-weak-sandbox: running without {missing}")
    if start.verbose:
        _log(status.describe())
    probe = os.environ.get(sandbox.SELFTEST_ENV)
    report, _, unix_path = (probe or "").partition(":")
    if report == sandbox.REPORT:
        server = (sandbox.server_host(start.url), sandbox.server_port(start.url))
        results = sandbox.report_probes(channel.fileno(), server, unix_path or None)
        print(sandbox.selftest_line(results), file=sys.stderr, flush=True)
    elif probe and not probe.startswith(AFTER_TUN):
        _log(sandbox.fatal_probe(probe))


AFTER_TUN = "after-tun:"
"""Test-only, as a value of sandbox.SELFTEST_ENV: ``after-tun:<fatal probe>`` runs the
probe right after the tun arrives, so that every worker dies there (SIGSYS), as with a
data-path syscall missing from the allow-list: the supervisor's crash-loop guard
(tests/integration/test_resilience.py)."""


def _await_decision(
    channel: Channel, failure: SessionFailure, last: WorkerStatus
) -> Reconnect | None:
    """Report the lost connection and wait for the supervisor's decision (its session
    machine holds the whole recovery policy): a Reconnect, keeping this process and its
    tun fd, or a Stop (None). Status queries are answered with the last counters."""
    channel.send(Lost(message=printable(failure.message, 500) or failure.kind))
    while True:
        msg, _ = channel.recv()
        if isinstance(msg, Reconnect):
            return msg
        if isinstance(msg, Stop):
            return None
        if isinstance(msg, QueryStatus):
            channel.send(last)
            continue
        raise WireError(f"unexpected {msg.op} after the connection was lost")


def _log_off(tunnel: Tunnel) -> None:
    """Best effort: DISCONNECT (user logoff) on the tunnel's connection, so that the
    server drops the session and its cookie now, not at its cookie timeout."""
    from sepconnect.worker.io.tls import TlsError
    from sepconnect.worker.proto.session import CstpSession

    session = CstpSession(dpd=None, keepalive=None, now=0.0)
    session.disconnect(logoff=True)
    with contextlib.suppress(TlsError):
        for frame in session.frames_to_send():
            tunnel.stream.send_all(frame, timeout=2.0)
    tunnel.stream.close()


def run(channel: Channel) -> int:
    msg, _ = channel.recv()
    if not isinstance(msg, Start):
        raise WireError(f"expected start, got {msg.op}")
    # The data path's compiled accelerator, if built, is mapped now: loading a shared
    # object is not something the sandbox should have to allow (worker/accel.py).
    from sepconnect.worker import accel  # noqa: F401

    _enter_sandbox(msg, channel)
    if msg.authenticate:
        done = authenticate(msg, _asker(channel))
        address = ipaddress.ip_address(done.address)
        channel.send(LoggedIn(cookie=done.cookie, address=address, server_pin=done.server_pin))
        return 0
    tunnel = open_tunnel(msg, _asker(channel))
    channel.send(_tunnel_up(tunnel))
    # The data path's modules (~10-15 ms) load while the supervisor and the helper set
    # up the tun, instead of before the login: they are not needed until the tun comes.
    from sepconnect.worker.datapath import DataPath
    from sepconnect.worker.io.tun import TunGone

    reply, tun_fd = channel.recv()
    if isinstance(reply, Stop):
        tunnel.stream.close()
        return 0
    if not isinstance(reply, TunHandoff) or tun_fd is None:
        raise WireError(f"expected the tun, got {reply.op}")
    probe = os.environ.get(sandbox.SELFTEST_ENV, "")
    if probe.startswith(AFTER_TUN):
        _log(sandbox.fatal_probe(probe.removeprefix(AFTER_TUN)))
    try:
        while True:
            path = DataPath(tunnel, tun_fd, channel)
            try:
                outcome = path.run()
                break
            except SessionFailure as exc:
                if exc.kind != "connection_lost":
                    raise
                lost = exc
            last = path.status()
            tunnel.stream.close()
            order = _await_decision(channel, lost, last)
            if order is None:
                channel.send(Stopped(tx_bytes=last.tx_bytes, rx_bytes=last.rx_bytes))
                return 0
            # One attempt; if it fails, the supervisor hears why and decides again.
            tunnel = open_tunnel(dataclasses.replace(msg, cookie=order.cookie))
            channel.send(_tunnel_up(tunnel))
    except TunGone as exc:
        # The supervisor ends the session on this (every worker would get the same dead
        # fd): log off while the connection is still up, as an orderly stop would.
        _log_off(tunnel)
        raise SessionFailure(
            "tun_lost", f"the tun device {reply.ifname} is gone ({exc}): deleted from outside"
        ) from None
    with contextlib.suppress(OSError):  # the supervisor may already be gone
        channel.send(Stopped(tx_bytes=outcome.tx_bytes, rx_bytes=outcome.rx_bytes))
    return 0


USAGE = "usage: sepconnect-worker --fd N [--allow-weak-sandbox]"


def _parse_argv(argv: list[str]) -> tuple[int, bool]:
    """``--fd N`` (the SEQPACKET socket from the supervisor) and ``--allow-weak-sandbox``
    (run even where the kernel lacks seccomp or Landlock, with a warning).

    The supervisor writes this command line; it is not a user interface, so no argparse
    (with its lazy `shutil` → bz2, lzma: ~1.5 MB of RSS and ~5 ms in this process).
    """
    fd: int | None = None
    weak = False
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--allow-weak-sandbox":
            weak = True
        elif arg.startswith("--fd=") or (arg == "--fd" and rest):
            value = arg[len("--fd=") :] if arg.startswith("--fd=") else rest.pop(0)
            if not value.isdigit():
                raise ValueError(f"--fd: not a number: {value!r}")
            fd = int(value)
        else:
            raise ValueError(f"unexpected argument {arg!r}")
    if fd is None:
        raise ValueError("--fd is required")
    return fd, weak


def main(argv: list[str] | None = None) -> int:
    try:
        fd, ALLOW_WEAK[0] = _parse_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"{USAGE}\nsepconnect-worker: {exc}", file=sys.stderr)
        return 2
    set_title("sepconnect: worker")
    # The supervisor decides when the session ends; a ^C at the terminal is its to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    privileges.no_new_privs_and_undumpable()
    if os.geteuid() == 0:
        _log("refusing to run as root")
        return 1
    sock = socket.socket(fileno=fd)
    channel = Channel(
        sock, TO_WORKER, FD_TO_WORKER, send_codec=FROM_WORKER, send_fd_ops=frozenset()
    )
    try:
        return run(channel)
    except SessionFailure as exc:
        try:
            channel.send(Failed(kind=exc.kind, message=printable(exc.message, 500) or exc.kind))
        except (OSError, WireError):
            _log(exc.message)
        return 1
    except PeerClosed:
        return 1
    except WireError as exc:
        _log(f"IPC protocol error: {exc}")
        return 1
