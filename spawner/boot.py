"""The spawner program's first module (``sepconnect-spawner``).

Before anything else: not dumpable (exec made us dumpable again, and a process of the
workers' uid could otherwise attach to us), the check of our own credentials, and the
first worker, when the launcher hands us its channel: the worker's start-up is the
longest item of the connect time, so it starts before the codec's imports (~40 ms) that
the rest of the spawner needs.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

from sepconnect.process import privileges
from sepconnect.process.title import set_title
from sepconnect.spawner import children
from sepconnect.spawner.exitcodes import EXIT_USAGE


def _log(text: str) -> None:
    print(f"sepconnect spawner: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    privileges.no_new_privs_and_undumpable()
    try:
        args = children.parse_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"{children.USAGE}\nsepconnect-spawner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    set_title("sepconnect: spawner")
    # The supervisor decides when the session ends; it closes our channel then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    refusal = children.start_refusal(args.peer_uid)
    if refusal is not None:
        _log(refusal)
        return EXIT_USAGE
    first: int | str | None = None
    if args.first_worker is not None:
        try:
            first = children.start_worker(args.first_worker, args.allow_weak_sandbox)
        except OSError as exc:  # answered as a refused spawn
            first = exc.strerror or str(exc)
        finally:
            os.close(args.first_worker)  # the worker has its copy
    from sepconnect.spawner.main import serve

    return serve(args.fd, args.peer_uid, first)
