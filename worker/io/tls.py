"""TLS to the VPN server: OpenSSL through pyOpenSSL over a nonblocking socket.

pyOpenSSL is used (not the ssl module) because DTLS PSK-NEGOTIATE needs the TLS
exporter of this connection (DESIGN.md §3). OpenSSL runs the handshake with
verification off; the server is then checked here, before one byte of
application data is sent: either its key is pinned (``--servercert``, one of
several pins), or its chain and name are verified with cryptography's RFC 5280
verifier against the system store and ``--cafile`` (only ``--cafile`` with
``--no-system-trust``). There is no way to accept a certificate silently.

A client certificate (``-c``) is given to OpenSSL from memory (worker/client_cert.py);
OpenSSL sends it when the server asks for one in the handshake.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import time
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import DNSName, IPAddress, verification
from OpenSSL import SSL

from sepconnect.worker.client_cert import ClientCredential
from sepconnect.worker.proto.pin import (
    MalformedCertificate,
    matches_untrusted,
    spki_pin_untrusted,
)
from sepconnect.worker.proto.pin import ServerPin as ServerPin  # re-exported

SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"  # and worker/sandbox.py lets it be read

# SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER: a write
# that hit WANT_WRITE is retried later with the same bytes, possibly moved.
_SSL_MODES = 0x1 | 0x2


class TlsError(Exception):
    """The TLS connection could not be made or broke."""


class Unreachable(TlsError):
    """Name resolution, TCP connect or the TLS handshake failed."""


class CertificateInvalid(TlsError):
    """The server certificate failed the pin or chain/hostname verification."""


class ConnectionClosed(TlsError):
    """The server closed the connection."""


class AccessDenied(TlsError):
    """The server ended the connection with a TLS ``access_denied`` alert.

    ocserv refuses that way: after ``401 Authentication failed``, after ``401 Cookie is
    not acceptable`` (an unknown cookie, or a session the server will not open, e.g.
    over ``max-same-clients``), and for a worker it bans. A refusal, not a network
    failure; the driver decides which (worker/connect.py).
    """


_ACCESS_DENIED = "tlsv1 alert access denied"  # OpenSSL's reason text, TLS 1.2 and 1.3


def describe_pin(cert: x509.Certificate) -> str:
    """The certificate's ``pin-sha256:`` pin, over its own SubjectPublicKeyInfo bytes
    (worker/proto/pin.py; the key re-encoded by cryptography may differ, e.g. RSA-PSS).

    ``public_bytes`` gives the certificate's DER as received: cryptography parses
    strict DER only, so writing the parsed certificate back yields the same bytes.
    """
    try:
        return str(spki_pin_untrusted(cert.public_bytes(Encoding.DER)))
    except MalformedCertificate as exc:
        raise CertificateInvalid(f"server certificate is malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class TrustConfig:
    pins: tuple[ServerPin, ...]  # any one of them accepts the server; then no CA check
    ca_pem: bytes | None  # --cafile: trusted besides the system store
    system_store: bool = True  # False: --no-system-trust


def _anchors(trust: TrustConfig) -> list[x509.Certificate]:
    anchors: list[x509.Certificate] = []
    try:
        if trust.system_store:
            with open(SYSTEM_CA_FILE, "rb") as f, warnings.catch_warnings():
                # Debian's store has a CA with a serial number of 0, which cryptography
                # warns about on every load: nothing the user can act on, and noise on
                # the standard error of --authenticate.
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                anchors += x509.load_pem_x509_certificates(f.read())
        if trust.ca_pem is not None:
            anchors += x509.load_pem_x509_certificates(trust.ca_pem)
    except (OSError, ValueError) as exc:
        raise CertificateInvalid(f"cannot load trusted CA certificates: {exc}") from None
    if not anchors:
        raise CertificateInvalid("no trusted CA certificates (--no-system-trust and no --cafile)")
    return anchors


def _verify(host: str, chain: list[x509.Certificate], trust: TrustConfig) -> None:
    if not chain:
        raise CertificateInvalid("the server sent no certificate")
    leaf = chain[0]
    if trust.pins:
        try:
            der = leaf.public_bytes(Encoding.DER)
            matches = any(matches_untrusted(pin, der) for pin in trust.pins)
        except MalformedCertificate as exc:
            raise CertificateInvalid(f"server certificate is malformed: {exc}") from None
        if not matches:
            raise CertificateInvalid(
                f"server certificate does not match --servercert (server has {describe_pin(leaf)})"
            )
        return
    anchors = _anchors(trust)
    subject: verification.Subject
    try:
        subject = IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = DNSName(host)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(anchors))
        .build_server_verifier(subject)
    )
    try:
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        raise CertificateInvalid(
            f"server certificate verification failed: {exc} (use --cafile, or pin it with "
            f"--servercert {describe_pin(leaf)})"
        ) from None


def _wait(sock: socket.socket, *, read: bool, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TlsError("timed out")
    if read:
        ready = select.select([sock], [], [], remaining)[0]
    else:
        ready = select.select([], [sock], [], remaining)[1]
    if not ready:
        raise TlsError("timed out")


_RECV_CHUNK = 256 * 1024  # ciphertext read from the socket per recv()
# Ciphertext queued for the socket before records are refused (send_records_nowait).
# OpenSSL's own answers to what it reads (an alert for each HelloRequest, a KeyUpdate)
# cannot be refused; at twice this much, reading waits (:attr:`TlsStream.reading_blocked`).
_OUT_LIMIT = 256 * 1024
# One record's ciphertext (16 KiB of plaintext and the cipher's overhead) with room to
# spare: pyOpenSSL's bio_read allocates the whole size asked for on every call.
_RECORD_TAKE = 20 * 1024
# Plaintext taken out of OpenSSL per read with the compiled accelerator: every record
# it can open from what it holds, up to this much (pyOpenSSL: one record per call).
_READ_BURST = 64 * 1024
_SSL_ERROR_WANT_READ = 2  # SSL_get_error's values (<openssl/ssl.h>)
_SSL_ERROR_WANT_WRITE = 3
# What a record adds to its plaintext, at most (header, explicit IV or nonce, MAC or tag,
# CBC padding, TLS 1.3's inner type).
_RECORD_OVERHEAD = 256


class TlsStream:
    """One verified TLS connection; blocking-style calls take a deadline, the
    ``*_nowait`` calls are for the event loop.

    OpenSSL works on memory BIOs and this class moves the ciphertext (issue #6):
    ocserv sends one TLS record per packet, and OpenSSL on a socket reads each
    record with two read() calls (header, body) and writes each with one send().
    Here one recv() takes in up to 256 KiB of records and a burst of records goes
    out in one send() (:meth:`flush_nowait`), with the same records on the wire.
    """

    def __init__(self, sock: socket.socket, conn: SSL.Connection) -> None:
        self.sock = sock
        self.conn = conn
        self._out = bytearray()  # ciphertext not yet accepted by the socket
        self._eof = False
        # OpenSSL may hold ciphertext we have not taken. Asking an empty BIO costs an
        # exception (~3 µs in pyOpenSSL), so the data path asks only after a call
        # that can have produced some.
        self._dirty = True
        # With the compiled accelerator, a burst of records is written or read in one C
        # call on this connection (worker/accel.py); None: pyOpenSSL's call per record.
        # Imported here: the worker has mapped it before its sandbox closed (main.py).
        from sepconnect.worker import accel

        self._records = accel.tls_records(conn)
        self.server_pin = ""
        """The verified certificate's ``pin-sha256:`` pin (--authenticate's FINGERPRINT)."""

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        address: str,
        trust: TrustConfig,
        *,
        client: ClientCredential | None = None,
        timeout: float = 15.0,
    ) -> TlsStream:
        deadline = time.monotonic() + timeout
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise Unreachable(
                f"cannot connect to {address} port {port}: {exc.strerror or exc}"
            ) from None
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        ctx.set_mode(_SSL_MODES)
        ctx.set_verify(SSL.VERIFY_NONE)  # checked by _verify before any data is sent
        if client is not None:
            _use_client_certificate(ctx, client)
        conn = SSL.Connection(ctx, None)  # memory BIOs: we move the bytes
        try:
            ipaddress.ip_address(host)
        except ValueError:
            conn.set_tlsext_host_name(host.encode("idna"))
        conn.set_connect_state()
        stream = cls(sock, conn)
        try:
            stream._handshake(deadline)
            chain = conn.get_peer_cert_chain(as_cryptography=True) or []
            _verify(host, chain, trust)
            stream.server_pin = describe_pin(chain[0])
        except BaseException:
            stream.close()
            raise
        return stream

    # -- ciphertext between OpenSSL and the socket ------------------------------------

    def _take_output(self) -> None:
        if not self._dirty:
            return
        while True:
            try:
                self._out += self.conn.bio_read(_RECV_CHUNK)
            except SSL.WantReadError:
                self._dirty = False
                return

    def flush_nowait(self) -> bool:
        """Send queued ciphertext; True when nothing is left queued."""
        self._take_output()
        out = self._out
        while out:
            try:
                sent = self.sock.send(out)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise TlsError(f"send failed: {exc.strerror or exc}") from None
            del out[:sent]
        return True

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    @property
    def reading_blocked(self) -> bool:
        """Twice :data:`_OUT_LIMIT` of ciphertext is queued: records alone stop short of
        that, so OpenSSL is answering what the server sends faster than the server
        reads. Do not read until the socket has taken some."""
        return len(self._out) >= 2 * _OUT_LIMIT

    @property
    def may_have_output(self) -> bool:
        """Ciphertext is queued, or OpenSSL may have produced some since it was taken."""
        return self._dirty or bool(self._out)

    def _flush(self, deadline: float) -> None:
        while not self.flush_nowait():
            _wait(self.sock, read=False, deadline=deadline)

    def _fill_nowait(self) -> bool:
        """Feed what the socket has to OpenSSL; False if it had nothing (EAGAIN)."""
        if self._eof:
            return False
        try:
            data = self.sock.recv(_RECV_CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise TlsError(f"receive failed: {exc.strerror or exc}") from None
        if data:
            self.conn.bio_write(data)
        else:
            self._eof = True
            self.conn.bio_shutdown()
        return True

    # -- the calls -----------------------------------------------------------------

    def _handshake(self, deadline: float) -> None:
        while True:
            try:
                self.conn.do_handshake()
                self._dirty = True
                self._flush(deadline)
                return
            except SSL.WantReadError:
                self._dirty = True
                try:
                    self._flush(deadline)
                    while not self._fill_nowait():
                        if self._eof:
                            raise TlsError("the server closed the connection")
                        _wait(self.sock, read=True, deadline=deadline)
                except TlsError as exc:
                    raise Unreachable(f"TLS handshake failed: {exc}") from None
            except (SSL.Error, OSError, TlsError) as exc:
                raise Unreachable(f"TLS handshake failed: {_describe(exc)}") from None

    def send_all(self, data: bytes, *, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        try:
            while view:
                sent = self.conn.send(view[:16384])
                view = view[sent:]
        except (SSL.Error, OSError) as exc:
            raise TlsError(f"send failed: {_describe(exc)}") from None
        self._dirty = True
        self._flush(deadline)

    def recv_some(self, *, timeout: float = 30.0) -> bytes:
        """At least one byte, or b"" when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.recv_nowait()
            if data is None:
                _wait(self.sock, read=True, deadline=deadline)
                continue
            return data

    def recv_nowait(self) -> bytes | None:
        """Decrypted bytes, b"" on EOF, or None if nothing can be read now."""
        self._dirty = True  # reading can make OpenSSL answer (alerts, key updates)
        records = self._records
        while True:
            if records is not None:
                data, code = records.read(_READ_BURST)
                if data:
                    return data
                if code == _SSL_ERROR_WANT_READ:
                    if not self._fill_nowait():
                        return None
                    continue
                if code == _SSL_ERROR_WANT_WRITE:
                    return None
                # Anything else: pyOpenSSL's own read below says what it means.
            try:
                return self.conn.recv(65536)
            except SSL.WantReadError:
                if not self._fill_nowait():
                    return None
            except SSL.WantWriteError:
                return None
            except (SSL.Error, OSError) as exc:
                return _end_of_stream(exc)

    def recv_buffered(self) -> bytes | None:
        """As :meth:`recv_nowait`, from what OpenSSL has already taken in: the socket is
        not read. Once this returns None, whatever is left to read is in the socket,
        where the poller sees it."""
        self._dirty = True
        records = self._records
        if records is not None:
            data, code = records.read(_READ_BURST)
            if data:
                return data
            if code in (_SSL_ERROR_WANT_READ, _SSL_ERROR_WANT_WRITE):
                return None
        try:
            return self.conn.recv(65536)
        except (SSL.WantReadError, SSL.WantWriteError):
            return None
        except (SSL.Error, OSError) as exc:
            return _end_of_stream(exc)

    def pending(self) -> int:
        return self.conn.pending()

    def send_records_nowait(self, records: list[bytes]) -> int:
        """Queue each of *records* as one TLS record (sent by :meth:`flush_nowait`);
        returns how many were taken: the rest wait until the socket has taken what is
        queued (retry them later with the same bytes)."""
        conn, out = self.conn, self._out
        compiled = self._records
        if compiled is not None:
            taken, code = compiled.write_records(records, out, _OUT_LIMIT)
            if taken == len(records) or code in (0, _SSL_ERROR_WANT_READ, _SSL_ERROR_WANT_WRITE):
                return taken
            try:  # OpenSSL refused the record: pyOpenSSL's own write says why
                conn.send(records[taken])
            except (SSL.WantWriteError, SSL.WantReadError):
                return taken
            except (SSL.Error, OSError) as exc:
                raise TlsError(f"send failed: {_describe(exc)}") from None
            self._dirty = True
            return taken + 1
        taken = 0
        # Ciphertext in the BIO, at most: taken out by one read per _RECORD_TAKE rather
        # than per record (each bio_read allocates the size asked for).
        waiting = 0
        for record in records:
            if len(out) + waiting >= _OUT_LIMIT:
                break
            size = len(record) + _RECORD_OVERHEAD
            if waiting and waiting + size > _RECORD_TAKE:
                self._take_records()
                waiting = 0
            try:
                conn.send(record)
            except (SSL.WantWriteError, SSL.WantReadError):
                break
            except (SSL.Error, OSError) as exc:
                raise TlsError(f"send failed: {_describe(exc)}") from None
            taken += 1
            waiting += size
        if waiting:
            self._take_records()
        return taken

    def _take_records(self) -> None:
        """What the records just sent put in the BIO: one read, as it is less than
        :data:`_RECORD_TAKE` (if OpenSSL added more, :meth:`flush_nowait` takes it)."""
        try:
            chunk = self.conn.bio_read(_RECORD_TAKE)
        except SSL.WantReadError:
            return
        self._out += chunk
        if len(chunk) == _RECORD_TAKE:
            self._dirty = True

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        return self.conn.export_keying_material(label, length, None)

    @property
    def cipher(self) -> str:
        return f"{self.conn.get_protocol_version_name()} {self.conn.get_cipher_name()}"

    def close(self) -> None:
        with contextlib.suppress(SSL.Error, OSError, TlsError):  # the server may be gone
            self.conn.shutdown()
            self._dirty = True
            self.flush_nowait()
        self.sock.close()


def _end_of_stream(exc: SSL.Error | OSError) -> bytes:
    """b"" if *exc* from a read means the stream ended; raises TlsError otherwise."""
    if isinstance(exc, SSL.ZeroReturnError):
        return b""
    if isinstance(exc, SSL.SysCallError):
        if exc.args and exc.args[0] == -1:  # unexpected EOF
            return b""
        raise TlsError(f"receive failed: {_describe(exc)}") from None
    reason = _describe(exc)
    if reason == _ACCESS_DENIED:
        raise AccessDenied(f"receive failed: {reason}") from None
    raise TlsError(f"receive failed: {reason}") from None


def _use_client_certificate(ctx: SSL.Context, client: ClientCredential) -> None:
    """The certificate, its chain and its key, from memory: OpenSSL sends them if the
    server asks for a certificate (CertificateRequest)."""
    try:
        ctx.use_certificate(client.leaf)
        for cert in client.chain:
            ctx.add_extra_chain_cert(cert)
        ctx.use_privatekey(client.key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise TlsError(f"the client certificate cannot be used: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        return str(exc.args[0][0][-1])
    if isinstance(exc, SSL.SysCallError) and len(exc.args) == 2:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__
