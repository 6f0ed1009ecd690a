"""DTLS handshake messages: wire helpers, one dataclass per message with its
``pull_*_untrusted`` / ``push_*`` pair, fragments and their reassembly. Sans-I/O.

Only the messages of the two AnyConnect handshakes exist here (PROTOCOL.md §4):
ClientHello, HelloVerifyRequest, ServerHello, ServerKeyExchange (PSK identity hint),
ServerHelloDone, ClientKeyExchange (PSK identity) and Finished. A certificate,
certificate request or any other message is an unexpected message for the state
machine (dtls_connection.py).

Handshake message header (RFC 6347 §4.2.2), 12 bytes::

    off 0     msg_type
    off 1..3  length of the whole message body
    off 4..5  message_seq
    off 6..8  fragment_offset
    off 9..11 fragment_length (bytes of body in this fragment)

Limits: a message body is at most :data:`MAX_MESSAGE` bytes, and the assembler keeps
fragments of at most :data:`MAX_PENDING` future messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

__all__ = [
    "MAX_MESSAGE",
    "MAX_PENDING",
    "AlertDescription",
    "Buffer",
    "ClientHello",
    "ClientKeyExchange",
    "DecodeError",
    "DtlsError",
    "Extension",
    "Finished",
    "Fragment",
    "HandshakeType",
    "HelloVerifyRequest",
    "MessageAssembler",
    "MessageTooLarge",
    "ServerHello",
    "ServerKeyExchange",
    "encode_handshake",
    "fragments_untrusted",
    "pull_client_hello_untrusted",
    "pull_client_key_exchange_untrusted",
    "pull_finished_untrusted",
    "pull_hello_verify_request_untrusted",
    "pull_server_hello_untrusted",
    "pull_server_key_exchange_untrusted",
    "push_client_hello",
    "push_client_key_exchange",
    "push_finished",
    "push_hello_verify_request",
    "push_server_hello",
    "push_server_key_exchange",
]

MAX_MESSAGE: Final = 16384
MAX_PENDING: Final = 8
HS_HEADER_LEN: Final = 12


class HandshakeType(IntEnum):
    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class AlertDescription(IntEnum):
    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    HANDSHAKE_FAILURE = 40
    ILLEGAL_PARAMETER = 47
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    UNSUPPORTED_EXTENSION = 110
    UNKNOWN_PSK_IDENTITY = 115


def alert_name(code: int) -> str:
    try:
        return AlertDescription(code).name.lower()
    except ValueError:
        return f"alert {code}"


class DtlsError(Exception):
    """Base of every DTLS failure; *alert* is what we tell the peer (None: nothing)."""

    alert: AlertDescription | None = AlertDescription.INTERNAL_ERROR


class DecodeError(DtlsError):
    """A handshake message or field was malformed."""

    alert = AlertDescription.DECODE_ERROR


class MessageTooLarge(DtlsError):
    """A handshake message announced more than MAX_MESSAGE bytes."""

    alert = AlertDescription.DECODE_ERROR


# ---------------------------------------------------------------------------
# Wire helpers


class Buffer:
    """Reader over untrusted bytes; every pull raises DecodeError when short."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def eof(self) -> bool:
        return self._pos == len(self._data)

    def pull_bytes(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError("handshake message truncated")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def pull_uint(self, size: int) -> int:
        return int.from_bytes(self.pull_bytes(size), "big")

    def pull_opaque(self, len_size: int, *, lo: int = 0, hi: int | None = None) -> bytes:
        length = self.pull_uint(len_size)
        if length < lo or (hi is not None and length > hi):
            raise DecodeError(f"field length {length} out of range")
        return self.pull_bytes(length)

    def finish(self) -> None:
        if not self.eof():
            raise DecodeError("trailing bytes after handshake message")


def _opaque(len_size: int, data: bytes) -> bytes:
    return len(data).to_bytes(len_size, "big") + data


Extension = tuple[int, bytes]


def _push_extensions(extensions: tuple[Extension, ...] | None) -> bytes:
    if extensions is None:
        return b""
    return _opaque(2, b"".join(t.to_bytes(2, "big") + _opaque(2, d) for t, d in extensions))


def _pull_extensions(buf: Buffer) -> tuple[Extension, ...] | None:
    if buf.eof():
        return None
    inner = Buffer(buf.pull_opaque(2))
    out: list[Extension] = []
    seen: set[int] = set()
    while not inner.eof():
        ext_type = inner.pull_uint(2)
        if ext_type in seen:
            raise DecodeError(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        out.append((ext_type, inner.pull_opaque(2)))
    return tuple(out)


# ---------------------------------------------------------------------------
# Messages (bodies, without the 12-byte DTLS header)


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes = b"\x00"
    extensions: tuple[Extension, ...] | None = None


def push_client_hello(msg: ClientHello) -> bytes:
    return (
        msg.version.to_bytes(2, "big")
        + msg.random
        + _opaque(1, msg.session_id)
        + _opaque(1, msg.cookie)
        + _opaque(2, b"".join(s.to_bytes(2, "big") for s in msg.cipher_suites))
        + _opaque(1, msg.compression_methods)
        + _push_extensions(msg.extensions)
    )


def pull_client_hello_untrusted(body: bytes) -> ClientHello:
    buf = Buffer(body)
    version = buf.pull_uint(2)
    random = buf.pull_bytes(32)
    session_id = buf.pull_opaque(1, hi=32)
    cookie = buf.pull_opaque(1)
    suites_raw = buf.pull_opaque(2, lo=2)
    if len(suites_raw) % 2:
        raise DecodeError("odd cipher suite list")
    suites = tuple(
        int.from_bytes(suites_raw[i : i + 2], "big") for i in range(0, len(suites_raw), 2)
    )
    compression = buf.pull_opaque(1, lo=1)
    extensions = _pull_extensions(buf)
    buf.finish()
    return ClientHello(version, random, session_id, cookie, suites, compression, extensions)


@dataclass(frozen=True, slots=True)
class HelloVerifyRequest:
    version: int
    cookie: bytes


def push_hello_verify_request(msg: HelloVerifyRequest) -> bytes:
    return msg.version.to_bytes(2, "big") + _opaque(1, msg.cookie)


def pull_hello_verify_request_untrusted(body: bytes) -> HelloVerifyRequest:
    buf = Buffer(body)
    version = buf.pull_uint(2)
    cookie = buf.pull_opaque(1)
    buf.finish()
    return HelloVerifyRequest(version, cookie)


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int = 0
    extensions: tuple[Extension, ...] | None = None


def push_server_hello(msg: ServerHello) -> bytes:
    return (
        msg.version.to_bytes(2, "big")
        + msg.random
        + _opaque(1, msg.session_id)
        + msg.cipher_suite.to_bytes(2, "big")
        + bytes((msg.compression_method,))
        + _push_extensions(msg.extensions)
    )


def pull_server_hello_untrusted(body: bytes) -> ServerHello:
    buf = Buffer(body)
    version = buf.pull_uint(2)
    random = buf.pull_bytes(32)
    session_id = buf.pull_opaque(1, hi=32)
    suite = buf.pull_uint(2)
    compression = buf.pull_uint(1)
    extensions = _pull_extensions(buf)
    buf.finish()
    return ServerHello(version, random, session_id, suite, compression, extensions)


@dataclass(frozen=True, slots=True)
class ServerKeyExchange:
    """Plain PSK: only the identity hint (RFC 4279 §2)."""

    identity_hint: bytes


def push_server_key_exchange(msg: ServerKeyExchange) -> bytes:
    return _opaque(2, msg.identity_hint)


def pull_server_key_exchange_untrusted(body: bytes) -> ServerKeyExchange:
    buf = Buffer(body)
    hint = buf.pull_opaque(2)
    buf.finish()
    return ServerKeyExchange(hint)


@dataclass(frozen=True, slots=True)
class ClientKeyExchange:
    """Plain PSK: only the identity (RFC 4279 §2)."""

    identity: bytes


def push_client_key_exchange(msg: ClientKeyExchange) -> bytes:
    return _opaque(2, msg.identity)


def pull_client_key_exchange_untrusted(body: bytes) -> ClientKeyExchange:
    buf = Buffer(body)
    identity = buf.pull_opaque(2, hi=128)
    buf.finish()
    return ClientKeyExchange(identity)


@dataclass(frozen=True, slots=True)
class Finished:
    verify_data: bytes


def push_finished(msg: Finished) -> bytes:
    return msg.verify_data


def pull_finished_untrusted(body: bytes) -> Finished:
    if len(body) != 12:
        raise DecodeError("Finished must carry 12 bytes")
    return Finished(body)


# ---------------------------------------------------------------------------
# Fragments


def encode_handshake(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """One unfragmented handshake message with its 12-byte header."""
    n = len(body).to_bytes(3, "big")
    return bytes((msg_type,)) + n + message_seq.to_bytes(2, "big") + b"\x00\x00\x00" + n + body


@dataclass(frozen=True, slots=True)
class Fragment:
    msg_type: int
    length: int
    message_seq: int
    offset: int
    data: bytes


def fragments_untrusted(record_body: bytes) -> list[Fragment]:
    """The handshake fragments in one record body (raises DecodeError)."""
    out: list[Fragment] = []
    buf = Buffer(record_body)
    while not buf.eof():
        msg_type = buf.pull_uint(1)
        length = buf.pull_uint(3)
        seq = buf.pull_uint(2)
        offset = buf.pull_uint(3)
        frag_len = buf.pull_uint(3)
        if length > MAX_MESSAGE:
            raise MessageTooLarge(f"handshake message of {length} bytes")
        if offset + frag_len > length:
            raise DecodeError("handshake fragment beyond the message end")
        out.append(Fragment(msg_type, length, seq, offset, buf.pull_bytes(frag_len)))
    return out


@dataclass(slots=True)
class _Partial:
    msg_type: int
    length: int
    data: bytearray
    have: list[tuple[int, int]] = field(default_factory=list)

    def add(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data
        self.have.append((offset, offset + len(data)))

    def complete(self) -> bool:
        covered = 0
        for start, end in sorted(self.have):
            if start > covered:
                return False
            covered = max(covered, end)
        return covered >= self.length


class MessageAssembler:
    """Reassembles fragments into whole messages and releases them in message_seq order.

    :meth:`add` returns the messages that became deliverable. Fragments of messages
    already delivered are counted in :attr:`retransmissions_seen` (the peer is
    retransmitting: our last flight may have been lost).
    """

    __slots__ = ("_pending", "next_seq", "retransmissions_seen")

    def __init__(self) -> None:
        self.next_seq = 0
        self._pending: dict[int, _Partial] = {}
        self.retransmissions_seen = 0

    def add(self, frag: Fragment) -> list[tuple[int, int, bytes]]:
        """Returns (msg_type, message_seq, body) of each message now deliverable."""
        if frag.message_seq < self.next_seq:
            self.retransmissions_seen += 1
            return []
        if frag.message_seq >= self.next_seq + MAX_PENDING:
            return []  # too far ahead: drop, the peer retransmits
        part = self._pending.get(frag.message_seq)
        if part is None:
            part = _Partial(frag.msg_type, frag.length, bytearray(frag.length))
            self._pending[frag.message_seq] = part
        elif part.msg_type != frag.msg_type or part.length != frag.length:
            raise DecodeError("inconsistent handshake fragments")
        part.add(frag.offset, frag.data)
        out: list[tuple[int, int, bytes]] = []
        while (ready := self._pending.get(self.next_seq)) is not None and ready.complete():
            del self._pending[self.next_seq]
            out.append((ready.msg_type, self.next_seq, bytes(ready.data)))
            self.next_seq += 1
        return out

    def skip_to(self, seq: int) -> None:
        """Expect *seq* next (after a HelloVerifyRequest, or a DTLS 0.9 CCS)."""
        self.next_seq = max(self.next_seq, seq)
        for stale in [s for s in self._pending if s < self.next_seq]:
            del self._pending[stale]
