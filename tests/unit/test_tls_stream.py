"""worker/io/tls.py's TlsStream over a socketpair against an in-process OpenSSL server:
what it queues for the socket, and reading only what OpenSSL already holds; each test
on both paths, pyOpenSSL's call per record and the compiled accelerator's burst."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest
from OpenSSL import SSL
from tls_pair import tls_pair

from sepconnect.worker.io import tls
from sepconnect.worker.io.tls import TlsStream


@pytest.fixture(params=["python", "compiled"])
def pair(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[TlsStream, SSL.Connection, socket.socket]]:
    """Our TlsStream, the server's OpenSSL connection, and the server's socket."""
    stream, server, theirs = tls_pair()
    if request.param == "python":
        stream._records = None
    else:
        assert stream._records is not None
    yield stream, server, theirs
    stream.sock.close()
    theirs.close()


def _records(server: SSL.Connection, *payloads: bytes) -> bytes:
    for payload in payloads:
        server.send(payload)
    return server.bio_read(1 << 20)


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_recv_buffered_reads_what_openssl_holds_and_never_the_socket(
    pair: tuple[TlsStream, SSL.Connection, socket.socket],
) -> None:
    stream, server, theirs = pair
    theirs.sendall(_records(server, b"one", b"two", b"three"))
    got = stream.recv_nowait()  # the socket's three records are in OpenSSL now
    assert got is not None
    assert got.startswith(b"one")  # pyOpenSSL: one record per read
    theirs.sendall(_records(server, b"four"))
    while (more := stream.recv_buffered()) is not None:
        got += more
    assert got == b"onetwothree"
    assert _readable(stream.sock)  # the rest is in the socket, where the poller sees it
    assert stream.recv_nowait() == b"four"
    assert stream.recv_nowait() is None


def test_records_alone_never_block_reading(
    pair: tuple[TlsStream, SSL.Connection, socket.socket],
) -> None:
    # The server reads nothing: records are refused at _OUT_LIMIT, short of the mark
    # where reading stops (that takes OpenSSL's own answers to what the server sends).
    stream, _, _ = pair
    record = bytes(16384)
    taken = 0
    while stream.send_records_nowait([record]) == 1:
        taken += 1
        stream.flush_nowait()
    assert taken > 0
    assert tls._OUT_LIMIT <= len(stream._out) < 2 * tls._OUT_LIMIT
    assert not stream.reading_blocked
    assert stream.send_records_nowait([record]) == 0
    stream._out += bytes(tls._OUT_LIMIT)  # as an alert for each of many HelloRequests
    assert stream.reading_blocked
