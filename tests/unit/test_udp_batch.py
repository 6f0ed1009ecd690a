"""worker/io/udp.py batching over loopback: UDP GSO sends still put exactly one DTLS
record per datagram on the wire, in order, whatever the mix of sizes; UDP GRO reads
split a coalesced train back into the datagrams that were sent."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

import pytest

from sepconnect.worker.io.mmsg import SLOTS
from sepconnect.worker.io.udp import UdpError, UdpLink


def _pair() -> tuple[socket.socket, UdpLink]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    link = UdpLink("127.0.0.1", server.getsockname()[1])
    server.connect(link.sock.getsockname())
    return server, link


def _drain(sock: socket.socket, count: int) -> list[bytes]:
    sock.settimeout(2)
    return [sock.recv(65535) for _ in range(count)]


def test_gso_send_keeps_datagram_boundaries() -> None:
    server, link = _pair()
    try:
        sizes = [1400] * 70 + [900] + [1400] * 3 + [100, 100, 1500, 37] + [1200] * 5 + [1199]
        datagrams = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        assert link.send_batch(datagrams) == len(datagrams)
        assert _drain(server, len(datagrams)) == datagrams
        assert link.send_batch([b"lone"]) == 1  # a burst of one: one send()
        assert _drain(server, 1) == [b"lone"]
    finally:
        server.close()
        link.close()


@pytest.mark.parametrize("limit", [64, 1])  # recvmmsg, and the single recvmsg of a first read
def test_gro_receive_splits_trains(limit: int) -> None:
    server, link = _pair()
    try:
        datagrams = [os.urandom(1300) for _ in range(40)] + [os.urandom(500)]
        # one GSO send from the "server": arrives as one train where GRO is on
        server.sendmsg([b"".join(datagrams)], [(17, 103, struct.pack("=H", 1300))])
        singles = [os.urandom(n) for n in (10, 2000, 10)]
        for d in singles:
            server.send(d)
        got: list[bytes] = []
        deadline = time.monotonic() + 2
        while len(got) < len(datagrams) + len(singles) and time.monotonic() < deadline:
            got.extend(link.recv_batch(limit))
        assert got == datagrams + singles
    finally:
        server.close()
        link.close()


def test_without_gso_or_gro() -> None:
    server, link = _pair()
    try:
        link.gso = link.gro = False
        datagrams = [b"a" * 1000] * 10 + [b"b" * 10]
        assert link.send_batch(datagrams) == len(datagrams)
        assert _drain(server, len(datagrams)) == datagrams
        server.send(b"xyz")
        deadline = time.monotonic() + 2
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            got = link.recv_batch()
        assert got == [b"xyz"]
    finally:
        server.close()
        link.close()


def test_recvmmsg_takes_many_datagrams_per_call_in_order() -> None:
    server, link = _pair()
    try:
        datagrams = [bytes([i]) * (50 + i * 7) for i in range(100)]
        for d in datagrams:
            server.send(d)
        batch = link._batch
        assert batch is not None
        first, code = batch.receive()
        assert len(first) == SLOTS
        assert code == 0  # a full call: there may be more behind it
        got = first + link.recv_batch(200)
        assert got == datagrams
        assert link.drained  # the last call came back short: no EAGAIN call needed
    finally:
        server.close()
        link.close()


def test_latency_first_read_takes_one_datagram() -> None:
    server, link = _pair()
    try:
        for d in (b"one", b"two", b"three"):
            server.send(d)
        deadline = time.monotonic() + 2
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            got = link.recv_batch(1)
        assert got == [b"one"]
        assert link.recv_batch() == [b"two", b"three"]
    finally:
        server.close()
        link.close()


def test_recvmmsg_reports_a_path_error() -> None:
    server, link = _pair()
    port = server.getsockname()[1]
    server.close()  # nobody listens there now: ICMP port unreachable comes back
    try:
        link.sock.send(b"anyone?")
        deadline = time.monotonic() + 2
        code = 0
        while not code and time.monotonic() < deadline:
            try:
                link.recv_batch()
            except UdpError as exc:
                code = exc.code
            time.sleep(0.01)
        assert code == errno.ECONNREFUSED, f"port {port}"
    finally:
        link.close()
