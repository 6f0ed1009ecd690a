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

Reassembly (RFC 6347 §4.2.3) runs before anything is authenticated, so anyone who can
put a datagram on the path feeds it. It costs O(log n) per fragment and bounded memory:
empty fragments of non-empty messages and fragments adding no new bytes (duplicates,
retransmissions) are dropped without being kept; what a message has received is a list
of merged byte ranges. Limits, each a constant below with the reason for its number:
a message body is at most :data:`MAX_MESSAGE` bytes, a message may take
:data:`MAX_FRAGMENTS` fragments that add bytes, the partial messages of one flight
hold at most :data:`MAX_FLIGHT_BYTES` together, and fragments of at most
:data:`MAX_PENDING` future messages are kept. Going over a limit is a silent drop,
counted in :attr:`MessageAssembler.dropped`, never an error (and so is a fragment that
disagrees with the message's earlier ones on its type or length: reassembly starts over
from the newer one): the bytes are
unauthenticated, and RFC 6347 says to discard invalid records silently (§4.1.2.7: an
error there lets forged datagrams end the association) and lets a receiver discard
fragments it will not buffer (§4.2.2: the peer retransmits its flight). A message
dropped that way is asked for again by our own retransmission timer.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

__all__ = [
    "MAX_FLIGHT_BYTES",
    "MAX_FRAGMENTS",
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

#: Largest handshake message body we buffer (bytes). Every message either handshake
#: accepts is far smaller (a ServerHello with its extensions is under 128 bytes, a
#: HelloVerifyRequest under 260 with the largest cookie, Finished 12); 2^14, the most
#: one TLS record carries, leaves room for a large PSK identity hint.
MAX_MESSAGE: Final = 16384
#: Fragments that add new bytes one message may take before its partial copy is
#: dropped. A peer fragments to its path MTU: at the smallest IPv4 datagram every
#: host takes (576 bytes) a fragment carries about 500 bytes, so a MAX_MESSAGE body
#: needs 33 fragments; twice that covers a retransmission fragmented differently.
MAX_FRAGMENTS: Final = 64
#: Bytes all partial messages may hold together (one flight). A whole server flight
#: of either handshake is under 1 KiB; two MAX_MESSAGE bodies let the next message
#: use the full limit while one forged future message holds as much. The partial
#: message farthest ahead gives way first (the peer retransmits it).
MAX_FLIGHT_BYTES: Final = 2 * MAX_MESSAGE
#: Future messages (beyond the next expected) whose fragments are kept.
MAX_PENDING: Final = 8
HS_HEADER_LEN: Final = 12
#: The 12-byte header as type+length (I), message_seq (H), offset+fragment_length's
#: high byte (I), fragment_length's low 16 bits (H).
_HS_HEADER: Final = struct.Struct(">IHIH")


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


class Fragment(NamedTuple):
    """One handshake fragment (a tuple: made once per fragment of untrusted input)."""

    msg_type: int
    length: int
    message_seq: int
    offset: int
    data: bytes


def fragments_untrusted(record_body: bytes) -> list[Fragment]:
    """The handshake fragments in one record body (raises DecodeError).

    Empty fragments of non-empty messages carry nothing and are left out here (a
    ServerHelloDone, whose body is empty, comes as one empty fragment and stays).
    """
    out: list[Fragment] = []
    pos = 0
    end = len(record_body)
    unpack = _HS_HEADER.unpack_from
    while pos < end:
        if end - pos < HS_HEADER_LEN:
            raise DecodeError("handshake message truncated")
        type_length, seq, offset_hi, frag_lo = unpack(record_body, pos)
        length = type_length & 0xFFFFFF
        offset = offset_hi >> 8
        frag_len = (offset_hi & 0xFF) << 16 | frag_lo
        pos += HS_HEADER_LEN
        if length > MAX_MESSAGE:
            raise MessageTooLarge(f"handshake message of {length} bytes")
        if offset + frag_len > length:
            raise DecodeError("handshake fragment beyond the message end")
        if pos + frag_len > end:
            raise DecodeError("handshake message truncated")
        if frag_len or not length:
            data = record_body[pos : pos + frag_len]
            out.append(Fragment(type_length >> 24, length, seq, offset, data))
        pos += frag_len
    return out


class _Partial:
    """One message being reassembled: its body so far and the byte ranges received,
    as disjoint, non-touching [start, end) ranges in order (``starts``/``ends``)."""

    __slots__ = ("data", "ends", "fragments", "length", "msg_type", "starts")

    def __init__(self, msg_type: int, length: int) -> None:
        self.msg_type = msg_type
        self.length = length
        self.data = bytearray(length)
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.fragments = 0

    def add(self, offset: int, data: bytes) -> bool:
        """Take a fragment; False if it is one more than :data:`MAX_FRAGMENTS` (then
        nothing changed). A fragment that adds no bytes changes nothing."""
        end = offset + len(data)
        if end == offset:
            return True  # empty: nothing to keep (an empty message is complete as it is)
        starts, ends = self.starts, self.ends
        lo = bisect.bisect_left(ends, offset)  # ranges before lo end before offset
        hi = bisect.bisect_right(starts, end)  # ranges from hi on start after end
        if hi - lo == 1 and starts[lo] <= offset and end <= ends[lo]:
            return True  # nothing new: a duplicate or a retransmitted piece
        if self.fragments == MAX_FRAGMENTS:
            return False
        self.fragments += 1
        self.data[offset:end] = data
        if lo < hi:
            offset = min(offset, starts[lo])
            end = max(end, ends[hi - 1])
        starts[lo:hi] = (offset,)
        ends[lo:hi] = (end,)
        return True

    def complete(self) -> bool:
        ends = self.ends
        return not self.length or (len(ends) == 1 and ends[0] == self.length and not self.starts[0])


class MessageAssembler:
    """Reassembles fragments into whole messages and releases them in message_seq order.

    :meth:`add` returns the messages that became deliverable. Fragments of messages
    already delivered are counted in :attr:`retransmissions_seen` (the peer is
    retransmitting: our last flight may have been lost); fragments dropped at a limit
    (see the module's docstring) in :attr:`dropped`.
    """

    __slots__ = ("_pending", "dropped", "next_seq", "retransmissions_seen")

    def __init__(self) -> None:
        self.next_seq = 0
        self._pending: dict[int, _Partial] = {}
        self.retransmissions_seen = 0
        self.dropped = 0

    def add(self, frag: Fragment) -> list[tuple[int, int, bytes]]:
        """Returns (msg_type, message_seq, body) of each message now deliverable."""
        seq = frag.message_seq
        if seq < self.next_seq:
            self.retransmissions_seen += 1
            return []
        if seq >= self.next_seq + MAX_PENDING:
            self.dropped += 1
            return []  # too far ahead: drop, the peer retransmits
        part = self._pending.get(seq)
        if part is not None and (part.msg_type != frag.msg_type or part.length != frag.length):
            # One of the two is forged (the peer's own fragments always agree): start
            # over from this one, so that a forged fragment cannot block the real one.
            del self._pending[seq]
            self.dropped += 1
            part = None
        if part is None:
            if not self._make_room(seq, frag.length):
                self.dropped += 1
                return []
            part = self._pending[seq] = _Partial(frag.msg_type, frag.length)
        if not part.add(frag.offset, frag.data):
            del self._pending[seq]  # too many fragments: start over when it comes again
            self.dropped += 1
            return []
        if seq != self.next_seq:
            return []  # messages go out in order: only the next one can release any
        out: list[tuple[int, int, bytes]] = []
        while (ready := self._pending.get(self.next_seq)) is not None and ready.complete():
            del self._pending[self.next_seq]
            out.append((ready.msg_type, self.next_seq, bytes(ready.data)))
            self.next_seq += 1
        return out

    def _make_room(self, seq: int, length: int) -> bool:
        """Keep the flight within MAX_FLIGHT_BYTES for a new *length*-byte message
        *seq*, dropping partial messages farther ahead than it; False if it cannot."""
        held = sum(p.length for p in self._pending.values())
        while held + length > MAX_FLIGHT_BYTES:
            last = max(self._pending, default=-1)
            if last < seq:
                return False
            held -= self._pending.pop(last).length
            self.dropped += 1
        return True

    def skip_to(self, seq: int) -> None:
        """Expect *seq* next (after a HelloVerifyRequest, or a DTLS 0.9 CCS)."""
        self.next_seq = max(self.next_seq, seq)
        for stale in [s for s in self._pending if s < self.next_seq]:
            del self._pending[stale]
