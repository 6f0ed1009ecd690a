"""``sepconnect connect --authenticate`` and ``--cookieonly``: log in and print the
result; nothing else.

No helper is started and no tun is made: only a worker, as for a session, whose login
supervisor/authenticate.py answers. Started as root, the launcher's root stage opens the
login's files and drops to the service account first (launcher/rootstage.py: nothing
that parses the server's data runs as root); started as anyone else, it runs as that
account: no privilege is needed.
The server's address is resolved here (or taken from ``--resolve``), as for a session:
the worker connects to it and RESOLVE prints it.

``--authenticate`` prints openconnect's shell assignments (COOKIE, HOST, CONNECT_URL,
FINGERPRINT, RESOLVE); ``--cookieonly`` the session cookie alone, one line, as
openconnect: ``sepconnect connect -C COOKIE`` (or ``--cookie-on-stdin``) then makes the
tunnel with it, until the server's cookie timeout.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

from sepconnect import cli, credentials
from sepconnect.process import privileges, programs
from sepconnect.process.exitcodes import ExitCode
from sepconnect.process.title import set_title

if TYPE_CHECKING:
    from sepconnect.cli import Started


def authenticate_only(args: argparse.Namespace, started: Started | None) -> ExitCode:
    """After the root stage (*started*: it checked that the service account can run the
    programs, started the --timestamp relay and dropped to that account), or started
    unprivileged."""
    if started is None and args.setuid is not None:
        raise cli.UsageError("--setuid: only root can change to another account")
    server_address = (
        cli.server_address_of(args)
        if started is None
        else ipaddress.ip_address(started.plan["server_address"])
    )
    cafile_pem = cli._read_cafile(args.cafile)
    client_files = cli._read_client_cert(args, cafile_pem)
    login = cli._read_login(args)
    if args.timestamp and started is None:  # before the worker: its messages too
        from sepconnect.output import OutputRelay

        OutputRelay(timestamp=True, syslog=False, uid=os.getuid(), gid=os.getgid())
    privileges.no_new_privs_and_undumpable()
    worker = start_worker(allow_weak_sandbox=args.allow_weak_sandbox)
    set_title("sepconnect: authenticate")
    from sepconnect.session import start_message
    from sepconnect.supervisor.authenticate import authenticate, shell_variables

    try:
        start = start_message(args, server_address, cafile_pem, client_files, authenticate=True)
        answers, codes, terminal = credentials.answer_sources(args, login)
    except BaseException:
        worker[1].close()  # it exits when it finds its channel closed
        worker[0].wait()
        raise
    code, result = authenticate(start, worker, answers, codes, terminal)
    if result is not None:
        printed = f"{result.cookie}\n" if args.cookieonly else shell_variables(args.url, result)
        sys.stdout.write(printed)
        sys.stdout.flush()
    return code


def start_worker(*, allow_weak_sandbox: bool) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a worker program under our own uid; returns it and our end of its channel.

    Only for ``--authenticate``, which starts no helper and makes no tun: its one worker
    runs under the account the launcher dropped to (a session's workers run under their
    own account, started by the spawner: spawner/children.py).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        argv = [
            *programs.program("sepconnect-worker", "sepconnect.worker"),
            "--fd",
            str(theirs.fileno()),
        ]
        if allow_weak_sandbox:
            argv.append("--allow-weak-sandbox")
        proc = subprocess.Popen(
            argv,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            process_group=0,
            close_fds=True,
            env=programs.child_environment(),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, ours
