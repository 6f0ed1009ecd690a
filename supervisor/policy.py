"""What the supervisor does when a worker fails: the recovery policy, as pure code.

Kept apart from the event loop so every rule can be tested without processes:
which failures are worth another attempt, with the session cookie or a fresh
login, after how long, and when to give up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sepconnect.ipc.worker_messages import FailureKind

RETRY_DELAYS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Seconds before successive reconnect attempts: the first is immediate (a lost
TCP connection or a killed worker should cost nothing), then exponential, capped
at 30 s. openconnect waits 10 s, +10 s per attempt, up to 100 s."""

CRASH_DELAYS = (0.0, 0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds before restarting a worker that died without saying why (a crash or a
kill). Consecutive crashes before reaching CONNECTED slow down; one success resets."""


class Action(enum.Enum):
    RESUME = "resume"  # new worker, CONNECT with the session cookie
    LOG_IN = "log_in"  # new worker, full login with the kept credentials
    GIVE_UP = "give_up"  # end the session with the failure's exit code


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class RecoveryPolicy:
    can_log_in: bool  # credentials were given non-interactively and are kept
    always_on: bool  # re-authenticate even after the server ended the session
    reconnect_timeout: float  # seconds of trying before giving up

    def after_failure(
        self, kind: FailureKind | None, *, attempt: int, outage: float, established: bool
    ) -> Decision:
        """What to do after a worker failed with ``kind`` (None: it died without a word).

        ``attempt`` counts consecutive failed attempts so far (0 = the session was
        up until now); ``outage`` is how long traffic has been down; ``established``
        says whether the session ever came up (before that, nothing is retried:
        the user sees the first error at once, as with openconnect).
        """
        if not established:
            return Decision(Action.GIVE_UP, 0.0, "the session never came up")
        if outage > self.reconnect_timeout:
            return Decision(Action.GIVE_UP, 0.0, f"no session after {self.reconnect_timeout:.0f} s")
        if kind == "tun_lost":
            # Deleted from outside: every worker handed the same fd would fail at once.
            return Decision(Action.GIVE_UP, 0.0, "the tun device is gone")
        if kind is None:
            delay = CRASH_DELAYS[min(attempt, len(CRASH_DELAYS) - 1)]
            return Decision(Action.RESUME, delay, "the worker died")
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        if kind in ("connection_lost", "unreachable", "error"):
            return Decision(Action.RESUME, delay, "connection lost")
        if kind == "cookie_rejected":
            if self.can_log_in:
                return Decision(Action.LOG_IN, delay, "the session cookie was rejected")
            return Decision(
                Action.GIVE_UP, 0.0, "the session cookie was rejected and no password is kept"
            )
        if kind == "terminated":
            if self.always_on and self.can_log_in:
                return Decision(Action.LOG_IN, delay, "the server ended the session")
            return Decision(Action.GIVE_UP, 0.0, "the server ended the session")
        return Decision(Action.GIVE_UP, 0.0, kind)
