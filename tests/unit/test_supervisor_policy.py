"""The supervisor's recovery policy: what a failure leads to, and when."""

from __future__ import annotations

import pytest

from sepconnect.process.exitcodes import ExitCode
from sepconnect.supervisor.policy import (
    CRASH_DELAYS,
    CRASH_LOOP_DELAYS,
    RETRY_DELAYS,
    Action,
    RecoveryPolicy,
)

KIOSK = RecoveryPolicy(can_log_in=True, always_on=True, reconnect_timeout=300)
DESKTOP = RecoveryPolicy(can_log_in=True, always_on=False, reconnect_timeout=300)
COOKIE_ONLY = RecoveryPolicy(can_log_in=False, always_on=False, reconnect_timeout=300)


def test_nothing_is_retried_before_the_session_ever_came_up() -> None:
    for kind in (None, "connection_lost", "unreachable", "cookie_rejected", "terminated"):
        decision = KIOSK.after_failure(kind, attempt=0, outage=0, established=False)  # type: ignore[arg-type]
        assert decision.action == Action.GIVE_UP


def test_a_crashed_worker_is_replaced_at_once_then_with_growing_delays() -> None:
    delays = [
        DESKTOP.after_failure(None, attempt=n, outage=1, established=True).delay for n in range(12)
    ]
    assert delays[0] == 0.0
    assert delays == sorted(delays)
    assert delays[-1] == CRASH_DELAYS[-1]
    assert all(
        DESKTOP.after_failure(None, attempt=n, outage=1, established=True).action == Action.RESUME
        for n in range(12)
    )


def test_a_lost_connection_resumes_with_the_cookie_and_backs_off() -> None:
    first = DESKTOP.after_failure("connection_lost", attempt=0, outage=0, established=True)
    assert (first.action, first.delay) == (Action.RESUME, 0.0)
    later = DESKTOP.after_failure("unreachable", attempt=20, outage=100, established=True)
    assert (later.action, later.delay) == (Action.RESUME, RETRY_DELAYS[-1])


def test_the_reconnect_budget_ends_the_session() -> None:
    decision = DESKTOP.after_failure("connection_lost", attempt=5, outage=301, established=True)
    assert decision.action == Action.GIVE_UP


@pytest.mark.parametrize(
    ("policy", "action"),
    [(KIOSK, Action.LOG_IN), (DESKTOP, Action.LOG_IN), (COOKIE_ONLY, Action.GIVE_UP)],
)
def test_a_rejected_cookie_means_logging_in_again_if_a_password_is_kept(
    policy: RecoveryPolicy, action: Action
) -> None:
    assert (
        policy.after_failure("cookie_rejected", attempt=0, outage=0, established=True).action
        == action
    )


@pytest.mark.parametrize(
    ("policy", "action"),
    [(KIOSK, Action.LOG_IN), (DESKTOP, Action.GIVE_UP), (COOKIE_ONLY, Action.GIVE_UP)],
)
def test_a_server_termination_ends_the_session_unless_always_on(
    policy: RecoveryPolicy, action: Action
) -> None:
    assert (
        policy.after_failure("terminated", attempt=0, outage=0, established=True).action == action
    )


@pytest.mark.parametrize(
    "kind", ["auth_failed", "cert_invalid", "protocol", "unknown_group", "need_input", "tun_lost"]
)
def test_failures_another_attempt_cannot_fix_end_the_session(kind: str) -> None:
    decision = KIOSK.after_failure(kind, attempt=0, outage=0, established=True)  # type: ignore[arg-type]
    assert decision.action == Action.GIVE_UP


def test_a_lost_connection_is_resumed_in_place_when_the_worker_lives() -> None:
    decision = DESKTOP.after_failure(
        "connection_lost", attempt=0, outage=0, established=True, in_place=True
    )
    assert (decision.action, decision.delay) == (Action.RESUME_IN_PLACE, 0.0)
    # anything else, or anything later, is for a new worker
    for kind, attempt, early in (("terminated", 0, 0), ("connection_lost", 1, 0),
                                 ("connection_lost", 0, 2)):  # fmt: skip
        later = KIOSK.after_failure(kind, attempt=attempt, outage=0, established=True,
                                    early=early, in_place=True)  # fmt: skip
        assert later.action in (Action.RESUME, Action.LOG_IN)


def test_workers_failing_right_after_the_tun_back_off_then_give_up() -> None:
    delays = [
        DESKTOP.after_failure(None, attempt=0, outage=0, established=True, early=n).delay
        for n in range(1, len(CRASH_LOOP_DELAYS) + 1)
    ]
    assert delays == list(CRASH_LOOP_DELAYS)
    end = DESKTOP.after_failure(
        None, attempt=0, outage=0, established=True, early=len(CRASH_LOOP_DELAYS) + 1
    )
    assert (end.action, end.code) == (Action.GIVE_UP, ExitCode.CRASH_LOOP)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (None, ExitCode.SERVER_DISCONNECTED),
        ("connection_lost", ExitCode.SERVER_DISCONNECTED),
        ("terminated", ExitCode.SERVER_DISCONNECTED),
        ("cookie_rejected", ExitCode.COOKIE_REJECTED),
        ("tun_lost", ExitCode.ERROR),
        ("auth_failed", ExitCode.AUTH_FAILED),
    ],
)
def test_giving_up_says_which_exit_code(kind: str | None, code: ExitCode) -> None:
    decision = COOKIE_ONLY.after_failure(kind, attempt=0, outage=301, established=True)  # type: ignore[arg-type]
    assert (decision.action, decision.code) == (Action.GIVE_UP, code)
