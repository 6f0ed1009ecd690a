"""The audit records of the supervisor and of the root runner (the helper's are
privhelper/audit.py's); process/journal.py writes them."""

from __future__ import annotations

import os
from typing import Final

from sepconnect.process.journal import Result

SESSION_MESSAGE_ID: Final = "7d3e9b1c4a2f4e8d9c6b5a4f3e2d1c0b"
"""MESSAGE_ID of the supervisor's session events in the journal."""


def process_entry(
    source: str, op: str, result: Result, reason: str, args: object
) -> dict[str, object]:
    """The record of the supervisor and of the root runner: who (``source``, pid, uid),
    then what (``op``, ``args``, ``result``, ``reason``, at most 1,000 characters)."""
    return {
        "source": source,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "op": op,
        "args": args,
        "result": result,
        "reason": reason[:1000],
    }
