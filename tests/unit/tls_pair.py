"""A TlsStream whose server is an in-process OpenSSL connection, handshaken BIO to BIO,
across a socketpair: for the TLS stream's unit tests and the data path's instruction
counts (bench/datapath_instructions.py)."""

from __future__ import annotations

import contextlib
import datetime
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from sepconnect.worker.io import tls
from sepconnect.worker.io.tls import TlsStream


def _self_signed() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sepconnect-test")])
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
    return cert, key


def tls_pair(socket_buffer: int | None = None) -> tuple[TlsStream, SSL.Connection, socket.socket]:
    """Our TlsStream (non-blocking), the server's OpenSSL connection (memory BIOs: the
    caller moves its bytes), and the server's end of the socketpair."""
    cert, key = _self_signed()
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
    for s in (ours, theirs):
        if socket_buffer is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, socket_buffer)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, socket_buffer)
    ours.setblocking(False)
    return TlsStream(ours, client), server, theirs
