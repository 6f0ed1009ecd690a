"""``sepconnect connect --authenticate``: one worker logs in, nothing else runs.

The first phase of openconnect's two-phase login: no helper, no tun, no CONNECT. The
worker logs in as for a session (the forms answered here, by supervisor/answers.py),
reports the cookie, the server's address and its certificate's pin, and exits without
logging off, so that the cookie stays valid for ``--cookie-on-stdin`` (ours, or
openconnect's) to connect with.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.ipc.worker_messages import (
    FD_TO_WORKER,
    FROM_WORKER,
    TO_WORKER,
    Failed,
    LoggedIn,
    LoginForm,
    Start,
)
from sepconnect.process.exitcodes import FAILURE_KINDS, ExitCode
from sepconnect.supervisor.answers import AnswerSources, Login, TokenCodes, Unanswerable
from sepconnect.supervisor.terminal import Terminal

_STOP_GRACE = 5.0


def _log(text: str) -> None:
    print(f"sepconnect: {text}", file=sys.stderr, flush=True)


def authenticate(
    start: Start,
    worker: tuple[subprocess.Popen[bytes], socket.socket],
    answers: AnswerSources,
    codes: TokenCodes | None,
    terminal: Terminal | None,
) -> tuple[ExitCode, LoggedIn | None]:
    """Run the login in *worker* (started by the launcher); the exit code, and the result
    on success. A ^C raises KeyboardInterrupt (no handler is installed here)."""
    proc, sock = worker
    channel = Channel(sock, FROM_WORKER, send_codec=TO_WORKER, send_fd_ops=FD_TO_WORKER)
    login = Login(answers, codes)
    try:
        channel.send(start)
        while True:
            msg, _ = channel.recv()
            if isinstance(msg, LoginForm):
                ask = None if terminal is None else terminal.ask
                try:
                    reply = login.answer(msg, time.time(), ask)
                except Unanswerable as exc:
                    _log(str(exc))
                    return FAILURE_KINDS[exc.kind], None
                channel.send(reply)
            elif isinstance(msg, LoggedIn):
                return ExitCode.OK, msg
            elif isinstance(msg, Failed):
                _log(msg.message)
                return FAILURE_KINDS.get(msg.kind, ExitCode.ERROR), None
            else:
                _log(f"unexpected {msg.op} from the worker")
                return ExitCode.ERROR, None
    except PeerClosed:
        _log(f"the worker exited unexpectedly (status {proc.wait()})")
        return ExitCode.ERROR, None
    except WireError as exc:
        _log(f"the worker broke the IPC protocol ({exc})")
        return ExitCode.ERROR, None
    finally:
        channel.sock.close()
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_STOP_GRACE)  # it exits once it has reported
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _quoted(value: str) -> str:
    """One shell word: single quotes, a quote inside written as '\\'' (openconnect 9.01
    prints '%s' as is; the same bytes for every value without a quote)."""
    return "'" + value.replace("'", "'\\''") + "'"


def shell_variables(url: str, result: LoggedIn) -> str:
    """What ``openconnect --authenticate`` prints (9.01, main.c), for ``eval``:

    COOKIE (``webvpn=<cookie>``: openconnect sends it as the Cookie header), HOST (the
    address logged in at, IPv6 in brackets), CONNECT_URL (``https://`` host, port when
    not 443, ``/``: the path is the login's only), FINGERPRINT (the certificate's
    ``pin-sha256:``), RESOLVE (``host:address``, for ``--resolve``; an IPv6 host in
    brackets, as openconnect 9.01 prints it).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 443
    address = str(result.address)
    bracketed = f"[{address}]" if result.address.version == 6 else address
    netloc = f"[{host}]" if ":" in host else host
    connect_url = f"https://{netloc}{'' if port == 443 else f':{port}'}/"
    lines = [
        ("COOKIE", f"webvpn={result.cookie}"),
        ("HOST", bracketed),
        ("CONNECT_URL", connect_url),
        ("FINGERPRINT", result.server_pin),
        ("RESOLVE", f"{netloc}:{address}"),
    ]
    return "".join(f"{name}={_quoted(value)}\n" for name, value in lines)
