"""CSTP framing: the 8-byte packet header used inside the TLS stream.

Wire format (PROTOCOL.md §3; ocserv ``src/vpn.h``, openconnect ``cstp.c``)::

    off 0..3  b"STF\\x01"   magic
    off 4..5  payload length, big-endian, header excluded
    off 6     packet type (PacketType)
    off 7     0x00          (anything else is an unknown packet)
    off 8..   payload

Both peers send one CSTP packet per TLS record, but TLS gives us a byte
stream, so :class:`CstpDecoder` reassembles frames from arbitrary pieces.

Limits: a payload may be at most :data:`MAX_PAYLOAD` bytes, so the decoder
never buffers more than ``HEADER_LEN + MAX_PAYLOAD - 1`` bytes of an
incomplete frame. Anything malformed raises :class:`CstpError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sepconnect.worker import accel
from sepconnect.worker.proto.errors import ProtocolError

__all__ = [
    "DISCONNECT_USER_LOGOFF",
    "HEADER_LEN",
    "MAGIC",
    "MAX_PAYLOAD",
    "CstpDecoder",
    "CstpError",
    "Frame",
    "PacketType",
    "encode_data",
    "encode_data_burst",
    "encode_data_frames",
    "encode_disconnect",
    "encode_frame",
]


class PacketType(enum.IntEnum):
    """CSTP packet types (byte 6 of the header)."""

    DATA = 0x00  # one raw IPv4/IPv6 packet
    DPD_REQ = 0x03  # dead-peer-detection request; the peer echoes it as DPD_RESP
    DPD_RESP = 0x04
    DISCONNECT = 0x05  # 1 reason byte + optional text
    KEEPALIVE = 0x07  # no payload, discarded by the receiver
    COMPRESSED = 0x08  # only with a negotiated Content-Encoding; we never negotiate one
    TERMINATE = 0x09  # server kicks the client


MAGIC: Final = b"STF\x01"
HEADER_LEN: Final = 8

#: Largest payload we send or accept. openconnect sizes its CSTP receive
#: buffer as max(16384, MTU) and ocserv never sends a packet larger than its
#: link MTU; our tunnel MTU is capped at 9000 (tunnel.py), so every legitimate
#: frame fits with room to spare, while a hostile length field (up to 65535)
#: is refused before we buffer it.
MAX_PAYLOAD: Final = 16384

#: DISCONNECT reason byte for "user logged off": ocserv invalidates the cookie.
DISCONNECT_USER_LOGOFF: Final = 0xB0

# Header layout as one Struct: magic (4s), length (H), type (B), zero byte (B).
_HEADER: Final = struct.Struct("!4sHBB")
_HEADER_PACK: Final = _HEADER.pack  # bound once: encode_data is per packet

_TYPES: Final[dict[int, PacketType]] = {t.value: t for t in PacketType}

# DISCONNECT text: ASCII, bounded (openconnect sends short reasons such as
# "Aborted by caller").
_MAX_DISCONNECT_TEXT: Final = 255


class CstpError(ProtocolError):
    """The CSTP byte stream from the server is malformed."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded CSTP packet."""

    type: PacketType
    payload: bytes


def encode_frame(ptype: PacketType, payload: bytes = b"") -> bytes:
    """Encode one CSTP packet of any type.

    Raises ValueError if *payload* is longer than :data:`MAX_PAYLOAD`.
    """
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError(f"CSTP payload of {n} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(MAGIC, n, int(ptype), 0) + payload


def encode_data(packet: bytes) -> bytes:
    """Encode one IP packet as a CSTP DATA frame (the per-packet hot path).

    Raises ValueError if *packet* is longer than :data:`MAX_PAYLOAD`.
    """
    n = len(packet)
    if n > MAX_PAYLOAD:
        raise ValueError(f"CSTP payload of {n} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER_PACK(MAGIC, n, 0, 0) + packet


def encode_data_frames(packets: list[bytes]) -> list[bytes]:
    """:func:`encode_data` for each of *packets* (the reference for the compiled
    accelerator's ``cstp_data_frames``, which :data:`encode_data_burst` is when it is
    built). Raises ValueError, and encodes none, if any is longer than MAX_PAYLOAD."""
    return [encode_data(packet) for packet in packets]


#: What CstpSession encodes a burst of tun packets with.
encode_data_burst: Final = (
    encode_data_frames if accel.cstp_data_frames is None else accel.cstp_data_frames
)


#: The compiled accelerator's reader of a run of DATA frames (None on the Python path):
#: :meth:`CstpDecoder.feed_pairs_untrusted` hands it every run, and reads whatever it
#: stops at itself, so errors are the Python code's (tests/unit/test_accel.py).
data_pairs = accel.cstp_data_pairs


def encode_disconnect(
    reason: int = DISCONNECT_USER_LOGOFF, text: str = "Client disconnect"
) -> bytes:
    """Encode a DISCONNECT packet: one reason byte followed by ASCII *text*.

    ``0xb0`` (the default) means "user logged off" and makes ocserv
    invalidate the session cookie; ``0x91`` would keep the session.
    """
    if not 0 <= reason <= 0xFF:
        raise ValueError(f"DISCONNECT reason {reason} is not a byte")
    raw = text.encode("ascii")
    if len(raw) > _MAX_DISCONNECT_TEXT:
        raise ValueError("DISCONNECT text too long")
    return encode_frame(PacketType.DISCONNECT, bytes((reason,)) + raw)


class CstpDecoder:
    """Reassembles CSTP frames from a TLS plaintext byte stream.

    Holds at most one incomplete frame (``< HEADER_LEN + MAX_PAYLOAD`` bytes).
    A header is validated as soon as its 8 bytes are present, so a bad magic
    or an oversized length is reported without waiting for the payload.
    After a :class:`CstpError` the stream is unusable; the decoder stays in
    the failed state and raises again on every call.
    """

    __slots__ = ("_buf", "_failed")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failed: CstpError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete frame."""
        return len(self._buf)

    def feed_untrusted(self, data: bytes) -> list[Frame]:
        """Add bytes from the server; return every frame completed by them.

        Raises CstpError on bad magic, a non-zero byte 7, a payload longer
        than MAX_PAYLOAD, an unknown packet type, or a COMPRESSED packet
        (we never negotiate compression).
        """
        return [Frame(kind, payload) for kind, payload in self.feed_pairs_untrusted(data)]

    def feed_pairs_untrusted(self, data: bytes) -> list[tuple[PacketType, bytes]]:
        """Like :meth:`feed_untrusted`, returning ``(type, payload)`` tuples.

        The per-packet receive path (session.py) uses this to avoid building
        one Frame object per packet. Same checks, same errors.
        """
        if self._failed is not None:
            raise self._failed
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        frames: list[tuple[PacketType, bytes]] = []
        off = 0
        end = len(buf)
        unpack = _HEADER.unpack_from
        types = _TYPES
        data_run = data_pairs
        try:
            while end - off >= HEADER_LEN:
                if data_run is not None:  # a run of well-formed DATA frames, in C
                    pairs, off = data_run(buf, off, PacketType.DATA)
                    frames += pairs
                    if end - off < HEADER_LEN:
                        break
                magic, length, ptype, zero = unpack(buf, off)
                if magic != MAGIC:
                    raise CstpError("Bad CSTP packet: wrong magic bytes")
                if zero != 0:
                    raise CstpError(f"Bad CSTP packet: header byte 7 is {zero:#04x}, not 0")
                if length > MAX_PAYLOAD:
                    raise CstpError(
                        f"Bad CSTP packet: payload length {length} exceeds {MAX_PAYLOAD}"
                    )
                kind = types.get(ptype)
                if kind is None:
                    raise CstpError(f"Unknown CSTP packet type {ptype:#04x}")
                if kind is PacketType.COMPRESSED:
                    raise CstpError(
                        "Compressed CSTP packet received, but compression was not negotiated"
                    )
                stop = off + HEADER_LEN + length
                if stop > end:
                    break
                frames.append((kind, bytes(buf[off + HEADER_LEN : stop])))
                off = stop
        except CstpError as exc:
            self._failed = exc
            self._buf = bytearray()
            raise
        if buf is self._buf:
            del self._buf[:off]
        elif off < end:
            self._buf += buf[off:]
        return frames
