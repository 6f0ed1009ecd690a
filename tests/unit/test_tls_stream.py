"""worker/io/tls.py's TlsStream over a socketpair against an in-process OpenSSL server:
what it queues for the socket, and reading only what OpenSSL already holds."""

from __future__ import annotations

import contextlib
import datetime
import select
import socket
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from sepconnect.worker.io import tls
from sepconnect.worker.io.tls import TlsStream


@pytest.fixture
def pair() -> Iterator[tuple[TlsStream, SSL.Connection, socket.socket]]:
    """Our TlsStream, the server's OpenSSL connection, and the server's socket."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.use_certificate(cert)
    server_ctx.use_privatekey(key)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.set_mode(tls._SSL_MODES)
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(20):  # the handshake, BIO to BIO
        for a, b in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                a.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    stream = TlsStream(ours, client)
    yield stream, server, theirs
    ours.close()
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
    assert stream.recv_nowait() == b"one"  # the socket's three records are in OpenSSL now
    theirs.sendall(_records(server, b"four"))
    assert stream.recv_buffered() == b"two"
    assert stream.recv_buffered() == b"three"
    assert stream.recv_buffered() is None
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
