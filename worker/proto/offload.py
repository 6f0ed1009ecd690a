"""Tun offloads, sans-I/O: the virtio-net header, TSO splitting, receive coalescing.

With ``IFF_VNET_HDR`` every packet read from or written to the tun starts with a
10-byte ``struct virtio_net_hdr`` (<linux/virtio_net.h>, native byte order: the
tun's legacy default)::

    u8 flags        VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum is still to be done
    u8 gso_type     NONE, TCPV4, TCPV6 (| ECN): one "super-packet" of many segments
    u16 hdr_len     IP + TCP header length of a super-packet
    u16 gso_size    payload bytes per segment (the MSS)
    u16 csum_start  where the checksummed part begins (the transport header)
    u16 csum_offset where the checksum field sits, from csum_start

Reads (:func:`split_frame`): with TUNSETOFFLOAD (CSUM | TSO4 | TSO6) the kernel's TCP
hands us up to 64 KiB in one read instead of ~45, and leaves checksums to us. We cut
super-packets into segments exactly as the kernel's own TCP segmentation would
(sequence numbers, IPv4 IDs, FIN/PSH only on the last segment, CWR only on the first)
and give every packet complete, valid checksums: the server and everything behind it
see ordinary packets. This module is the reference; the worker turns TSO on only with
the compiled accelerator (worker/accel.py), whose ``split_frame`` gives the same bytes
(tests/unit/test_accel.py): in Python the split costs more than the reads it saves
(docs/performance.md). Without TSO, a frame that still asks for a checksum or a split
is completed here all the same.

Writes (:class:`Coalescer`): consecutive in-order TCP segments of one flow from a
burst become one super-packet (like the kernel's GRO), so the tun takes one write
and the local stack one traversal for up to 64 KiB. A segment joins only when its
headers match the run's in every field the kernel's own TCP segmentation would
reproduce (so nothing is lost when the kernel splits it again for forwarding), and
the super-packet's TCP checksum is valid exactly when every segment's was (the
kernel checks it); anything else passes through unchanged.

Checksums use the Internet checksum's arithmetic: the ones'-complement sum of
16-bit words equals the data read as one big-endian integer, modulo 0xFFFF (since
0x10000 ≡ 1). ``int.from_bytes`` and one modulo run in C.
"""

from __future__ import annotations

import functools
import struct
from typing import Final, NamedTuple

from sepconnect.process.tun_ioctls import VNET_HDR_LEN

__all__ = [
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "NEEDS_CSUM",
    "PLAIN_HEADER",
    "VNET_HDR_LEN",
    "Coalescer",
    "OffloadError",
    "coalesce",
    "split_frame",
]

GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_TCPV6: Final = 4
NEEDS_CSUM: Final = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
_GSO_ECN: Final = 0x80

_VNET = struct.Struct("=BBHHHH")
PLAIN_HEADER: Final = bytes(VNET_HDR_LEN)
"""The header of a packet as it is: no offload; the kernel checks the packet."""

_TCP: Final = 6
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
_MAX_SUPER: Final = 65535  # an IPv4 total length; also the tun's write limit
_MAX_SEGMENTS: Final = 64
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _checksum(total: int) -> int:
    """The checksum field for a sum (mod 0xFFFF) over everything but the field."""
    return 0xFFFF - (total % 0xFFFF or 0xFFFF)


class OffloadError(ValueError):
    """A frame from the tun that cannot be turned into valid packets (dropped)."""


def _sum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum's sum of ``data``, mod 0xFFFF (0 stands for 0xFFFF)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # an odd tail is padded with a zero byte
    return value % 0xFFFF


# -- upload: the kernel's super-packets → ordinary packets with valid checksums --------


def split_frame(frame: bytes) -> list[bytes]:
    """One read from a vnet-header tun → IP packets ready for the server.

    Raises OffloadError for a frame that the kernel would never produce (short,
    inconsistent offsets, a GSO type we never enabled).
    """
    if len(frame) < VNET_HDR_LEN:
        raise OffloadError("frame shorter than its virtio-net header")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(frame)
    packet = frame[VNET_HDR_LEN:]
    gso = gso_type & ~_GSO_ECN
    if gso == GSO_NONE:
        if flags & NEEDS_CSUM:
            return [_complete_checksum(packet, csum_start, csum_offset)]
        return [packet]
    if gso not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError("GSO type that was never enabled")
    return _segment(packet, gso == GSO_TCPV4, gso_size)


def _complete_checksum(packet: bytes, start: int, offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet: the field holds the pseudo-header's sum;
    sum from ``start`` to the end and store the complement there."""
    at = start + offset
    if at + 2 > len(packet) or start < 20:
        raise OffloadError("checksum outside the packet")
    check = _checksum(_sum(memoryview(packet)[start:]))
    if check == 0 and offset == 6:  # UDP: 0 means "no checksum", send 0xFFFF instead
        check = 0xFFFF
    out = bytearray(packet)
    _U16.pack_into(out, at, check)
    return bytes(out)


def _segment(packet: bytes, ipv4: bool, mss: int) -> list[bytes]:
    """Cut a TCP super-packet into segments of ``mss`` payload bytes (tcp_gso_segment)."""
    if ipv4:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            raise OffloadError("TCPv4 GSO frame without an IPv4 header")
        l4 = (packet[0] & 0x0F) * 4
        if l4 < 20 or packet[9] != _TCP:
            raise OffloadError("TCPv4 GSO frame that is not TCP")
        addresses = packet[12:20]
    else:
        if len(packet) < 40 or packet[0] >> 4 != 6 or packet[6] != _TCP:
            raise OffloadError("TCPv6 GSO frame that is not plain IPv6 + TCP")
        l4 = 40
        addresses = packet[8:40]
    if len(packet) < l4 + 20:
        raise OffloadError("GSO frame shorter than its TCP header")
    header_len = l4 + (packet[l4 + 12] >> 4) * 4
    payload_len = len(packet) - header_len
    if header_len < l4 + 20 or payload_len <= 0 or mss <= 0:
        raise OffloadError("GSO frame with a bad TCP header, no payload or no MSS")
    if payload_len <= mss:
        mss = payload_len  # one segment after all: only the checksums are left to do
    count = -(-payload_len // mss)
    header = bytearray(packet[:header_len])
    ip_id = _U16.unpack_from(header, 4)[0] if ipv4 else 0
    seq = _U32.unpack_from(header, l4 + 4)[0]
    flags = header[l4 + 13]
    address_sum = int.from_bytes(addresses, "big") + _TCP
    tcp_header_len = header_len - l4
    view = memoryview(packet)
    out: list[bytes] = []
    for i in range(count):
        start = header_len + i * mss
        payload = view[start : start + mss]
        size = len(payload)
        if ipv4:
            _U16.pack_into(header, 2, header_len + size)
            _U16.pack_into(header, 4, (ip_id + i) & 0xFFFF)
            header[10:12] = b"\0\0"
            _U16.pack_into(header, 10, _checksum(_sum(memoryview(header)[:l4])))
        else:
            _U16.pack_into(header, 4, tcp_header_len + size)
        _U32.pack_into(header, l4 + 4, (seq + i * mss) & 0xFFFFFFFF)
        f = flags
        if i:
            f &= ~_CWR
        if i != count - 1:
            f &= ~(_FIN | _PSH)
        header[l4 + 13] = f
        header[l4 + 16 : l4 + 18] = b"\0\0"
        total = (
            address_sum
            + tcp_header_len
            + size
            + int.from_bytes(memoryview(header)[l4:], "big")
            + _sum(payload)
        )
        _U16.pack_into(header, l4 + 16, _checksum(total))
        out.append(bytes(header) + payload)
    return out


# -- download: in-order TCP segments → one super-packet per flow and burst -------------


class _Run:
    """Segments of one flow waiting to be written as one super-packet."""

    __slots__ = (
        "first", "l4", "header_len", "mss", "parts", "size", "next_seq", "push", "closed",
        "payload_sum", "next_id", "template", "masked",
    )  # fmt: skip

    def __init__(self, packet: bytes, l4: int, header_len: int, payload_sum: int) -> None:
        self.first = packet
        self.l4 = l4  # 20: IPv4 (without options), 40: IPv6
        self.header_len = header_len
        self.mss = len(packet) - header_len
        self.parts = [packet[header_len:]]
        self.size = len(packet)
        self.next_seq = (_U32.unpack_from(packet, l4 + 4)[0] + self.mss) & 0xFFFFFFFF
        self.push = bool(packet[l4 + 13] & _PSH)
        # Nothing may follow a PSH segment; an odd MSS would put the next payload at
        # an odd offset, where its sum no longer adds up (see Coalescer).
        self.closed = self.push or bool(self.mss & 1)
        self.payload_sum = payload_sum
        self.next_id = (_U16.unpack_from(packet, 4)[0] + 1) & 0xFFFF if l4 == 20 else 0
        self.template = _template(l4, header_len)
        self.masked = int.from_bytes(packet[:header_len], "big") & self.template.mask

    def try_join(self, packet: bytes) -> bool:
        """Append ``packet`` if it continues the run; False (nothing changed) if not.

        The common case of a bulk transfer, so it works on the headers as one
        integer: equal to the first segment's under a mask that hides the fields
        which differ from segment to segment (lengths, IPv4 ID and checksum,
        sequence number, PSH, TCP checksum), and those fields checked one by one.
        Equal headers make the first segment's checks (:func:`_mergeable`) hold for
        this one too.
        """
        header_len = self.header_len
        n = len(packet)
        size = n - header_len
        if (
            self.closed
            or size <= 0
            or size > self.mss
            or self.size + size > _MAX_SUPER
            or len(self.parts) >= _MAX_SEGMENTS
        ):
            return False
        t = self.template
        x = int.from_bytes(packet[:header_len], "big")
        if x & t.mask != self.masked or (x >> t.seq_shift) & 0xFFFFFFFF != self.next_seq:
            return False
        if self.l4 == 20:
            ip_header = x >> t.ip_header_shift
            if (
                (ip_header >> 128) & 0xFFFF != n  # total length
                or (ip_header >> 112) & 0xFFFF != self.next_id
                or ip_header % 0xFFFF  # the IPv4 header checksum
            ):
                return False
            self.next_id = (self.next_id + 1) & 0xFFFF
        elif (x >> t.length_shift) & 0xFFFF != n - 40:
            return False
        # What the payload sums to if the segment's checksum is right (see Coalescer).
        known = (x & t.summed_mask) + _TCP + n - self.l4
        self.payload_sum += 0xFFFF - known % 0xFFFF
        self.parts.append(packet[header_len:])
        self.size += size
        self.next_seq = (self.next_seq + size) & 0xFFFFFFFF
        if (x >> t.push_shift) & 1:
            self.push = self.closed = True
        elif size < self.mss:
            self.closed = True
        return True

    def pieces(self) -> tuple[bytes, ...]:
        """The frame as pieces for one writev (no 64 KiB copy to join them)."""
        first, l4, header_len = self.first, self.l4, self.header_len
        if len(self.parts) == 1:
            return (PLAIN_HEADER, first)  # written as it came: the kernel verifies it
        header = bytearray(first[:header_len])
        if self.push:
            header[l4 + 13] |= _PSH  # the last segment's PSH (the first had none)
        tcp_len = self.size - l4
        if l4 == 20:
            _U16.pack_into(header, 2, self.size)
            header[10:12] = b"\0\0"
            _U16.pack_into(header, 10, _checksum(int.from_bytes(header[:20], "big")))
            addresses = first[12:20]
            gso = GSO_TCPV4
        else:
            _U16.pack_into(header, 4, tcp_len)
            addresses = first[8:40]
            gso = GSO_TCPV6
        header[l4 + 16 : l4 + 18] = b"\0\0"
        total = (
            int.from_bytes(addresses, "big")
            + _TCP
            + tcp_len
            + int.from_bytes(memoryview(header)[l4:], "big")
            + self.payload_sum
        )
        _U16.pack_into(header, l4 + 16, _checksum(total))
        # No NEEDS_CSUM: the checksum is complete, and the kernel verifies it.
        vnet = _VNET.pack(0, gso, header_len, self.mss, 0, 0)
        return (vnet, bytes(header), *self.parts)


class Coalescer:
    """Merge a burst of IP packets from the server into tun frames (vnet header first).

    Call :meth:`add` for each packet of a burst, then :meth:`frames`. Packets of
    different flows may be reordered against each other; within a flow the order
    is kept.

    The super-packet carries a complete TCP checksum, flagged as unverified, so the
    kernel checks it as it checks any packet. We do not sum payloads to build it: a
    segment's own checksum already says what its payload sums to (the sum of
    pseudo-header, header and payload is 0xFFFF), so the payload's sum follows from
    the 32 header bytes. A segment corrupted on the way makes the super-packet's
    checksum wrong, and the kernel drops the super-packet: the sender resends, as it
    would for the one bad segment. The IPv4 header checksum of every segment is
    checked here, since the super-packet gets a new header.
    """

    def __init__(self) -> None:
        self._runs: dict[bytes | None, _Run] = {}
        self._out: list[tuple[bytes, ...]] = []

    def add(self, packet: bytes) -> None:
        runs = self._runs
        if runs and packet:  # an empty packet (an empty CSTP DATA frame) passes through
            first = packet[0]
            key = packet[12:24] if first == 0x45 else packet[8:44] if first >> 4 == 6 else None
            run = runs.get(key)
            if run is not None and run.try_join(packet):
                return
        found = _mergeable(packet)
        if found is None:
            if self._runs:
                # A segment of a flow we hold a run of (a FIN, a pure ACK, a short
                # one): the run goes first, so that the flow keeps its order.
                run = self._runs.pop(_flow_key(packet), None)
                if run is not None:
                    self._out.append(run.pieces())
            self._out.append((PLAIN_HEADER, packet))
            return
        key, l4, header_len, payload_sum = found
        run = self._runs.get(key)
        if run is not None:
            self._out.append(run.pieces())  # try_join said no: the run ends here
        self._runs[key] = _Run(packet, l4, header_len, payload_sum)

    def frames(self) -> list[bytes]:
        """The frames for the burst so far; the coalescer is empty afterwards."""
        return [b"".join(pieces) for pieces in self.frame_pieces()]

    def frame_pieces(self) -> list[tuple[bytes, ...]]:
        """:meth:`frames`, each as the pieces of one writev."""
        out = self._out
        out.extend(run.pieces() for run in self._runs.values())
        self._runs = {}
        self._out = []
        return out


def coalesce(packets: list[bytes]) -> list[bytes]:
    """A burst from the server as whole tun frames (:class:`Coalescer`'s, joined): the
    reference for the compiled accelerator's ``coalesce`` (worker/accel.py)."""
    coalescer = Coalescer()
    for packet in packets:
        coalescer.add(packet)
    return coalescer.frames()


class _Template(NamedTuple):
    """Masks and bit offsets of the header fields, for one header length."""

    mask: int  # 1 where every segment of a run has the same bits
    seq_shift: int
    push_shift: int
    length_shift: int  # IPv6 payload length
    ip_header_shift: int  # IPv4: x >> this is the 20-byte IP header
    summed_mask: int  # addresses and TCP header (see _mergeable)


@functools.lru_cache(maxsize=32)
def _template(l4: int, header_len: int) -> _Template:
    def shift(offset: int, size: int) -> int:  # of a field at byte offset, in bits
        return (header_len - offset - size) * 8

    varying = [(l4 + 4, 4), (l4 + 16, 2)]  # sequence number, TCP checksum
    varying += [(2, 2), (4, 2), (10, 2)] if l4 == 20 else [(4, 2)]  # lengths, ID, checksum
    mask = (1 << header_len * 8) - 1
    for offset, size in varying:
        mask &= ~(((1 << size * 8) - 1) << shift(offset, size))
    mask &= ~(_PSH << shift(l4 + 13, 1))
    summed_from = 12 if l4 == 20 else 8
    return _Template(
        mask=mask,
        seq_shift=shift(l4 + 4, 4),
        push_shift=shift(l4 + 13, 1) + 3,  # PSH is 0x08 of the flags byte
        length_shift=shift(4, 2),
        ip_header_shift=shift(0, 20),
        summed_mask=(1 << (header_len - summed_from) * 8) - 1,
    )


def _flow_key(packet: bytes) -> bytes | None:
    """Addresses and ports of a TCP packet (the key of its run), else None."""
    if len(packet) < 24:
        return None  # too short for addresses and ports (IPv4; IPv6 needs 44)
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 24 and packet[9] == _TCP:
        l4 = (packet[0] & 0x0F) * 4
        return packet[12:20] + packet[l4 : l4 + 4]
    if version == 6 and len(packet) >= 44 and packet[6] == _TCP:
        return packet[8:44]
    return None


def _mergeable(packet: bytes) -> tuple[bytes, int, int, int] | None:
    """(flow key, TCP offset, header length, payload sum) of a TCP data segment that
    may join a run; None for anything else (passed through untouched)."""
    n = len(packet)
    if n < 60:
        return None  # too short to carry headers and payload worth merging
    if packet[0] == 0x45:
        # No IP options, TCP, not a fragment, the length field true to the packet,
        # a good header checksum (the super-packet gets a new header).
        if packet[9] != _TCP or packet[6] & 0x3F or packet[7] or packet[2] << 8 | packet[3] != n:
            return None
        if int.from_bytes(packet[:20], "big") % 0xFFFF:
            return None
        l4 = 20
        start = 12  # the addresses, then the TCP header
    elif packet[0] >> 4 == 6:
        if packet[6] != _TCP or packet[4] << 8 | packet[5] != n - 40:
            return None  # extension headers: passed through
        l4 = 40
        start = 8
    else:
        return None
    header_len = l4 + (packet[l4 + 12] >> 4) * 4
    if header_len < l4 + 20 or header_len >= n:
        return None  # no payload: pure ACKs pass through
    if packet[l4 + 13] & ~(_PSH | 0x10):  # only ACK (+PSH) segments: no SYN/FIN/RST/URG/ECN
        return None
    # What the payload sums to if the segment's checksum is right (see Coalescer):
    # addresses and TCP header are adjacent, and shifting by whole 16-bit words does
    # not change a sum mod 0xFFFF, so one integer covers both.
    known = int.from_bytes(packet[start:header_len], "big") + _TCP + n - l4
    return packet[start : l4 + 4], l4, header_len, 0xFFFF - known % 0xFFFF
