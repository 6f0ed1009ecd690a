"""The control commands: ``sepconnect status|rekey|reconnect|disconnect``.

They talk to a running session's control socket (supervisor/control.py): ``--socket
PATH``, or a unit's session by its NAME. ``sepconnect connect`` loads only the options and
paths defined here (the control client is imported by :func:`control`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from sepconnect.ipc.session_limits import NOT_PRINTABLE
from sepconnect.process.exitcodes import ExitCode

RUNTIME_DIR = "/run/sepconnect"
"""Where the units keep each session's control socket: RUNTIME_DIR/NAME/control.sock."""
DEFAULT_CONTROL = f"{RUNTIME_DIR}/control.sock"
# A systemd instance name as the units use it in a path (%i): no "/", not "." or "..".
_SESSION_NAME = re.compile(r"(?!\.\.?$)[A-Za-z0-9:_.@-]{1,128}")

_TIMES = ("connected_since", "last_rekey")  # seconds since the epoch in the JSON
_UNSHOWN = re.compile(f"{NOT_PRINTABLE.pattern[:-1]}\n]")


def _shown(value: object) -> str:
    """``value`` as one line for a terminal: what a terminal would act on (control and
    bidi characters, the newline) escaped, whatever the session answered."""
    return _UNSHOWN.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value))


def _format_status(status: dict[str, object]) -> str:
    import datetime

    lines = []
    for key, value in status.items():
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            value = "; ".join(f"{v.get('prefix')} ({v.get('reason')})" for v in value) or "-"
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value) or "-"
        elif key in _TIMES and isinstance(value, int | float):
            when = datetime.datetime.fromtimestamp(value, datetime.UTC)
            value = when.isoformat(timespec="seconds")
        shown = "-" if value is None else _shown(value)
        lines.append(f"{_shown(key.replace('_', ' ')):>16}: {shown}")
    return "\n".join(lines)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help=f"the session of the unit sepconnect@NAME or sepconnect-session@NAME: its "
        f"socket {RUNTIME_DIR}/NAME/control.sock",
    )
    parser.add_argument(
        "--socket", metavar="PATH", help=f"the control socket (default: {DEFAULT_CONTROL})"
    )


def socket_path(args: argparse.Namespace) -> str:
    """The control socket: --socket PATH, or the session NAME's, or the default."""
    if args.name is None:
        return DEFAULT_CONTROL if args.socket is None else str(args.socket)
    if args.socket is not None:
        raise ValueError("give a session NAME or --socket PATH, not both")
    if not _SESSION_NAME.fullmatch(args.name):
        raise ValueError(f"{args.name!r} is not a session name (a systemd instance name)")
    return os.path.join(RUNTIME_DIR, args.name, "control.sock")


def control(args: argparse.Namespace) -> ExitCode:
    import json

    from sepconnect.supervisor.control import ControlError, request

    try:
        path = socket_path(args)
    except ValueError as exc:
        print(f"sepconnect: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        answer = request(path, args.command)
    except ControlError as exc:
        print(f"sepconnect: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    if not answer.get("ok"):
        print(f"sepconnect: {_shown(answer.get('error', 'refused'))}", file=sys.stderr)
        return ExitCode.ERROR
    if args.command == "status":
        status = answer.get("status", {})
        print(json.dumps(status, indent=2, sort_keys=True) if args.json else _format_status(status))
    return ExitCode.OK
