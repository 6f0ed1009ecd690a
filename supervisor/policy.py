"""What the supervisor does when a worker fails: the recovery policy, as pure code.

Kept apart from the session machine (supervisor/session.py) so every rule can be read
and tested on its own: which failures are worth another attempt, in place or with a
new worker, with the session cookie or a fresh login, after how long, when to give up,
and with which exit code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sepconnect.ipc.worker_messages import FailureKind
from sepconnect.process.exitcodes import FAILURE_KINDS, ExitCode

RETRY_DELAYS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Seconds before successive reconnect attempts: the first is immediate (a lost
TCP connection or a killed worker should cost nothing), then exponential, capped
at 30 s. openconnect waits 10 s, +10 s per attempt, up to 100 s."""

CRASH_DELAYS = (0.0, 0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds before restarting a worker that died without saying why (a crash or a
kill). Consecutive crashes before reaching CONNECTED slow down; one success resets."""

HEALTHY_AFTER = 10.0
"""A worker is *healthy* once, since it got the tun (or last reconnected in place), it
has carried the tun this many seconds, or moved at least one data packet each way (it
says so, once, unasked). A worker that fails before that failed *right after getting the
tun*: the crash-loop guard counts it. A healthy worker that fails is replaced at once,
however often that happens."""

CRASH_LOOP_DELAYS = (0.0, 1.0, 2.0, 4.0, 8.0)
"""Seconds before the next attempt after the 1st, 2nd, … failure in a row of a worker
that was not yet healthy (any cause: a crash, a kill, a lost connection, an error);
one more such failure ends the session with exit 13 (ExitCode.CRASH_LOOP). A dead tun
(``tun_lost``) ends it at once."""

_LOST = ("connection_lost", "unreachable", "error")
"""Failures that another connection with the cookie may cure."""


class Action(enum.Enum):
    RESUME_IN_PLACE = "resume_in_place"  # the same worker reconnects with the cookie
    RESUME = "resume"  # new worker, CONNECT with the session cookie
    LOG_IN = "log_in"  # new worker, full login with the kept credentials
    GIVE_UP = "give_up"  # end the session with ``code``


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float
    reason: str
    code: ExitCode = ExitCode.OK  # the exit code when the action is GIVE_UP


def _give_up(reason: str, code: ExitCode) -> Decision:
    return Decision(Action.GIVE_UP, 0.0, reason, code)


@dataclass(frozen=True, slots=True)
class RecoveryPolicy:
    can_log_in: bool  # credentials were given non-interactively and are kept
    always_on: bool  # re-authenticate even after the server ended the session
    reconnect_timeout: float  # seconds of trying before giving up

    def after_failure(
        self,
        kind: FailureKind | None,
        *,
        attempt: int,
        outage: float,
        established: bool,
        early: int = 0,
        in_place: bool = False,
    ) -> Decision:
        """What to do after a worker failed with ``kind`` (None: it died without a word).

        ``attempt`` counts consecutive failed attempts so far (0 = the session was
        up until now); ``outage`` is how long traffic has been down; ``established``
        says whether the session ever came up (before that, nothing is retried:
        the user sees the first error at once, as with openconnect). ``early`` counts
        the workers in a row that failed before they were healthy (HEALTHY_AFTER),
        this one included. ``in_place``: the worker lost its connection but lives and
        keeps the tun, so it can reconnect itself.
        """
        code = FAILURE_KINDS.get(kind or "error", ExitCode.ERROR)
        if not established:
            return _give_up("the session never came up", code)
        if kind is None or kind in _LOST:
            code = ExitCode.SERVER_DISCONNECTED
        if outage > self.reconnect_timeout:
            return _give_up(f"no session after {self.reconnect_timeout:.0f} s", code)
        if kind == "tun_lost":
            # Deleted from outside: every worker handed the same fd would fail at once.
            return _give_up("the tun device is gone", ExitCode.ERROR)
        if early > len(CRASH_LOOP_DELAYS):
            return _give_up(
                f"the worker failed {early} times in a row right after getting the tun",
                ExitCode.CRASH_LOOP,
            )
        decision = self._retry(kind, attempt, code)
        if decision.action is Action.GIVE_UP:
            return decision
        delay = decision.delay
        if early:
            delay = max(delay, CRASH_LOOP_DELAYS[early - 1])
        action = decision.action
        if in_place and kind == "connection_lost" and delay == 0.0:
            action = Action.RESUME_IN_PLACE
        return Decision(action, delay, decision.reason)

    def _retry(self, kind: FailureKind | None, attempt: int, code: ExitCode) -> Decision:
        if kind is None:
            delay = CRASH_DELAYS[min(attempt, len(CRASH_DELAYS) - 1)]
            return Decision(Action.RESUME, delay, "the worker died")
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        if kind in _LOST:
            return Decision(Action.RESUME, delay, "connection lost")
        if kind == "cookie_rejected":
            if self.can_log_in:
                return Decision(Action.LOG_IN, delay, "the session cookie was rejected")
            return _give_up(
                "the session cookie was rejected and nothing is kept to log in again unattended"
                " (a password, a form entry, a token or a client certificate)",
                code,
            )
        if kind == "terminated":
            if self.always_on and self.can_log_in:
                return Decision(Action.LOG_IN, delay, "the server ended the session")
            return _give_up("the server ended the session", code)
        return _give_up(kind, code)
