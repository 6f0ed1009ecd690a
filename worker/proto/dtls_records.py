"""DTLS record layer framing and the anti-replay window, sans-I/O.

Record header (RFC 6347 §4.1), 13 bytes, as a :class:`struct.Struct`::

    off 0     content type      (20 CCS, 21 alert, 22 handshake, 23 application data)
    off 1..2  version           (0xFEFD DTLS 1.2, 0xFEFF DTLS 1.0, 0x0100 Cisco DTLS 0.9)
    off 3..4  epoch
    off 5..10 sequence number   (48 bits)
    off 11..12 length of the body that follows

One UDP datagram may carry several records. :func:`records_untrusted` splits a
datagram; a truncated or oversized record ends the split (RFC 6347 §4.1.2.7: invalid
records are silently discarded). Nothing here authenticates; that is the caller's
job, and a record's sequence number only enters the replay window after its MAC
was verified (:meth:`ReplayWindow.accept`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "HEADER",
    "HEADER_SEQ64",
    "MAX_RECORD_BODY",
    "ContentType",
    "Record",
    "ReplayWindow",
    "encode_record",
    "records_untrusted",
]

#: type, version, epoch, seq high 16 bits, seq low 32 bits, length
HEADER: Final = struct.Struct(">BHHHIH")
#: the same 13 bytes with epoch and sequence number as one 64-bit field
HEADER_SEQ64: Final = struct.Struct(">BHQH")
#: RFC 6347: 2^14 plaintext + 2048 expansion
MAX_RECORD_BODY: Final = 2**14 + 2048
_SEQ_MAX: Final = 2**48 - 1


class ContentType(IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


@dataclass(frozen=True, slots=True)
class Record:
    ctype: int
    version: int
    epoch: int
    seq: int
    body: bytes

    @property
    def seq64(self) -> int:
        return self.epoch << 48 | self.seq


def encode_record(ctype: int, version: int, epoch: int, seq: int, body: bytes) -> bytes:
    if seq > _SEQ_MAX:
        raise ValueError("DTLS sequence number exhausted")
    return HEADER.pack(ctype, version, epoch, seq >> 32, seq & 0xFFFFFFFF, len(body)) + body


def records_untrusted(datagram: bytes) -> list[Record]:
    """The well-framed records in *datagram*, in order (unauthenticated)."""
    out: list[Record] = []
    pos = 0
    size = HEADER.size
    end = len(datagram)
    while end - pos >= size:
        ctype, version, epoch, seq_hi, seq_lo, length = HEADER.unpack_from(datagram, pos)
        pos += size
        if length > MAX_RECORD_BODY or length > end - pos:
            break
        out.append(
            Record(ctype, version, epoch, seq_hi << 32 | seq_lo, datagram[pos : pos + length])
        )
        pos += length
    return out


class ReplayWindow:
    """The sliding window of RFC 6347 §4.1.2.6 (64 records wide) for one epoch.

    :meth:`is_fresh` before decrypting (cheap rejection of duplicates and old records),
    :meth:`accept` after the record authenticated.
    """

    __slots__ = ("_bits", "_top", "size")

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._top = -1  # highest accepted sequence number
        self._bits = 0  # bit i set: top - i was accepted

    def is_fresh(self, seq: int) -> bool:
        if seq > self._top:
            return True
        offset = self._top - seq
        if offset >= self.size:
            return False
        return not (self._bits >> offset) & 1

    def position(self) -> tuple[int, int]:
        """(highest accepted sequence number or -1, bitmap): for the compiled accelerator,
        which runs the same window over a burst (worker/proto/dtls_crypto.py)."""
        return self._top, self._bits

    def restore(self, top: int, bits: int) -> None:
        self._top, self._bits = top, bits

    def accept(self, seq: int) -> None:
        if seq > self._top:
            shift = seq - self._top
            if shift >= self.size:
                self._bits = 1
            else:
                self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1)
            self._top = seq
        else:
            self._bits |= 1 << (self._top - seq)
