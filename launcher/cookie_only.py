"""``--cookieonly``: log in, print the session cookie, and exit (as openconnect).

No helper, no tun, no supervisor: the launcher (no longer root: the caller dropped
privileges first) starts one sandboxed worker, which logs in exactly as a session's
first worker does, answers :class:`Authenticated` instead of making the CONNECT
request, and exits. The cookie goes to standard output, one line; messages go to
standard error. ``sepconnect connect -C COOKIE`` (or the cookie on standard input)
then makes the tunnel with it, until the server's cookie timeout.
"""

from __future__ import annotations

import sys

from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.ipc.worker_messages import (
    FD_TO_WORKER,
    FROM_WORKER,
    TO_WORKER,
    Authenticated,
    Failed,
    Start,
)
from sepconnect.process import programs
from sepconnect.process.exitcodes import FAILURE_KINDS, ExitCode

__all__ = ["log_in_and_print_cookie"]


def log_in_and_print_cookie(start: Start, *, allow_weak_sandbox: bool) -> ExitCode:
    """Run one worker with ``start`` (``authenticate_only``); print its cookie."""
    proc, sock = programs.start_worker(allow_weak_sandbox=allow_weak_sandbox)
    channel = Channel(sock, FROM_WORKER, send_codec=TO_WORKER, send_fd_ops=FD_TO_WORKER)
    try:
        channel.send(start)
        reply, _ = channel.recv()
    except PeerClosed:
        reply = None
    except (OSError, WireError) as exc:
        print(f"sepconnect: the worker broke the IPC protocol ({exc})", file=sys.stderr)
        reply = None
    finally:
        sock.close()
        status = proc.wait()
    if isinstance(reply, Authenticated):
        print(reply.cookie, flush=True)
        return ExitCode.OK
    if isinstance(reply, Failed):
        print(f"sepconnect: {reply.message}", file=sys.stderr)
        return FAILURE_KINDS.get(reply.kind, ExitCode.ERROR)
    if reply is None:
        print(f"sepconnect: the worker exited unexpectedly (status {status})", file=sys.stderr)
    else:
        print(f"sepconnect: unexpected {reply.op} from the worker", file=sys.stderr)
    return ExitCode.ERROR
