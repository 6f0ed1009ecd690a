"""What the supervisor and the worker say to each other: secrets stay out of reprs."""

from __future__ import annotations

from sepconnect.ipc.worker_messages import Start


def test_start_repr_shows_no_secret() -> None:
    start = Start(
        proto=1,
        url="https://vpn.example/",
        username="alice",
        passwords=("hunter2", "123456"),
        group=None,
        servercert=None,
        cafile_pem=None,
        base_mtu=None,
        mtu=None,
        disable_ipv6=False,
        hostname="kiosk",
        verbose=0,
        cookie="webvpn-secret-cookie",
    )
    shown = repr(start)
    assert "alice" in shown  # the repr is still useful
    for secret in ("hunter2", "123456", "webvpn-secret-cookie"):
        assert secret not in shown
