"""worker/io/poller.py: roles of ready fds, write interest on demand, timeouts."""

from __future__ import annotations

import socket
import time

from sepconnect.worker.io.poller import Poller


def test_ready_fds_come_back_by_role() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    poller = Poller()
    try:
        poller.register(a.fileno(), "tun")
        poller.register(c.fileno(), "udp")
        assert poller.poll(0) == []
        b.send(b"x")
        assert poller.poll(1.0) == ["tun"]
        d.send(b"y")
        assert sorted(poller.poll(1.0)) == ["tun", "udp"]
        poller.unregister(a.fileno())
        assert poller.poll(1.0) == ["udp"]
    finally:
        poller.close()
        for s in (a, b, c, d):
            s.close()


def test_write_interest_only_when_asked() -> None:
    a, b = socket.socketpair()
    poller = Poller()
    try:
        poller.register(a.fileno(), "tls")
        assert poller.poll(0) == []  # writable, but nobody asked
        poller.modify(a.fileno(), write=True)
        assert poller.poll(0) == ["tls"]
        poller.modify(a.fileno(), write=False)
        assert poller.poll(0) == []
    finally:
        poller.close()
        a.close()
        b.close()


def test_read_interest_can_be_paused() -> None:
    a, b = socket.socketpair()
    poller = Poller()
    try:
        poller.register(a.fileno(), "tls")
        b.send(b"x")
        assert poller.poll(0) == ["tls"]
        poller.modify(a.fileno(), read=False)
        assert poller.poll(0) == []  # readable, but not watched
        poller.modify(a.fileno(), read=False, write=True)
        assert poller.poll(0) == ["tls"]  # writable
        poller.modify(a.fileno())
        assert poller.poll(0) == ["tls"]  # readable again
    finally:
        poller.close()
        a.close()
        b.close()


def test_timeout_is_not_cut_short() -> None:
    poller = Poller()
    try:
        start = time.monotonic()
        assert poller.poll(0.0105) == []
        assert time.monotonic() - start >= 0.0105  # rounded up, never down
    finally:
        poller.close()
