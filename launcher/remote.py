"""The control commands: ``sepconnect status|rekey|reconnect|disconnect``.

They talk to a running session's control socket (supervisor/control.py); none of this
is loaded by ``sepconnect connect``.
"""

from __future__ import annotations

import argparse
import re
import sys

from sepconnect.ipc.limits import NOT_PRINTABLE
from sepconnect.process.exitcodes import ExitCode

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


def control(args: argparse.Namespace) -> ExitCode:
    import json

    from sepconnect.supervisor.control import ControlError, request

    try:
        answer = request(args.socket, args.command)
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
