"""What the supervisor and the worker say to each other: secrets stay out of reprs."""

from __future__ import annotations

from messages import start_message


def test_start_repr_shows_no_secret() -> None:
    start = start_message(
        "https://vpn.example/",
        username="alice",
        passwords=("hunter2", "123456"),
        cookie="webvpn-secret-cookie",
    )
    shown = repr(start)
    assert "alice" in shown  # the repr is still useful
    for secret in ("hunter2", "123456", "webvpn-secret-cookie"):
        assert secret not in shown
