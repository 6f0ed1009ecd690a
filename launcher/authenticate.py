"""``sepconnect connect --authenticate`` and ``--cookieonly``: log in and print the
result; nothing else.

No helper is started and no tun is made: only a worker, as for a session, whose login
supervisor/authenticate.py answers. Started as root, the launcher reads the login's
files and drops to the service account first (nothing that parses the server's data
runs as root); started as anyone else, it runs as that account: no privilege is needed.
The server's address is resolved here (or taken from ``--resolve``), as for a session:
the worker connects to it and RESOLVE prints it.

``--authenticate`` prints openconnect's shell assignments (COOKIE, HOST, CONNECT_URL,
FINGERPRINT, RESOLVE); ``--cookieonly`` the session cookie alone, one line, as
openconnect: ``sepconnect connect -C COOKIE`` (or ``--cookie-on-stdin``) then makes the
tunnel with it, until the server's cookie timeout.
"""

from __future__ import annotations

import argparse
import os
import sys

from sepconnect import cli, credentials
from sepconnect.process import privileges, programs
from sepconnect.process.accounts import AccountError, service_account
from sepconnect.process.exitcodes import ExitCode
from sepconnect.process.title import set_title


def authenticate_only(args: argparse.Namespace) -> ExitCode:
    if os.geteuid() == 0:
        try:
            account: tuple[str, int, int] | None = service_account(args.setuid)
        except AccountError as exc:
            raise cli.UsageError(str(exc)) from None
    elif args.setuid is not None:
        raise cli.UsageError("--setuid: only root can change to another account")
    else:
        account = None
    server_address = cli.server_address_of(args)
    cafile_pem = cli._read_cafile(args.cafile)
    client_files = cli._read_client_cert(args, cafile_pem)
    login = cli._read_login(args)
    if args.timestamp:  # before the worker: its messages too
        from sepconnect.output import OutputRelay

        uid, gid = (os.getuid(), os.getgid()) if account is None else account[1:]
        OutputRelay(timestamp=True, syslog=False, uid=uid, gid=gid)
    if account is not None:
        cli._check_runnable([("the supervisor's", *account)])  # its worker runs as it too
        _, uid, gid = account
        privileges.drop_bounding_set()
        privileges.drop_to(uid, gid, extra_groups=())
    privileges.no_new_privs_and_undumpable()
    worker = programs.start_worker(allow_weak_sandbox=args.allow_weak_sandbox)
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
