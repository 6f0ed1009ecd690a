"""Tun offloads (worker/proto/offload.py): TSO splitting and receive coalescing.

Every test runs twice: with the Python :class:`Coalescer` (the reference) and with the
compiled accelerator's ``coalesce`` (worker/_accel.c) in its place.

Checksums are checked against a plain RFC 1071 loop, not against the module's own
arithmetic; the split of a coalesced burst must give back the original packets
byte for byte.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.worker import accel
from sepconnect.worker.proto.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    PLAIN_HEADER,
    VNET_HDR_LEN,
    Coalescer,
)

SRC4, DST4 = ipaddress.IPv4Address("198.18.0.2"), ipaddress.IPv4Address("198.19.7.1")
SRC6, DST6 = ipaddress.IPv6Address("2001:db8::2"), ipaddress.IPv6Address("2001:db8:7::1")
ACK, PSH, FIN, CWR, SYN = 0x10, 0x08, 0x01, 0x80, 0x02
TS_OPTION = bytes.fromhex("0101080a0001e24000abcdef")  # NOP NOP timestamps


class CompiledCoalescer:
    """The accelerator's ``coalesce`` behind the Coalescer's interface."""

    def __init__(self) -> None:
        self._packets: list[bytes] = []

    def add(self, packet: bytes) -> None:
        self._packets.append(packet)

    def frames(self) -> list[bytes]:
        assert accel.coalesce is not None
        packets, self._packets = self._packets, []
        return accel.coalesce(packets)


@pytest.fixture(autouse=True, params=["python", "compiled"])
def coalescer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "compiled":
        monkeypatch.setitem(globals(), "Coalescer", CompiledCoalescer)


def rfc1071(data: bytes) -> int:
    """The checksum field value, computed the textbook way."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vnet(flags: int = 0, gso: int = GSO_NONE, hdr_len: int = 0, size: int = 0,
         start: int = 0, offset: int = 0) -> bytes:  # fmt: skip
    return struct.pack("=BBHHHH", flags, gso, hdr_len, size, start, offset)


def tcp_header(seq: int, flags: int, options: bytes = TS_OPTION, check: int = 0) -> bytes:
    doff = (20 + len(options)) // 4
    return (
        struct.pack("!HHIIBBHHH", 40000, 5201, seq, 7777, doff << 4, flags, 502, check, 0) + options
    )


def pseudo(version: int, tcp_len: int, proto: int = 6) -> bytes:
    if version == 4:
        return SRC4.packed + DST4.packed + struct.pack("!BBH", 0, proto, tcp_len)
    return SRC6.packed + DST6.packed + struct.pack("!IxxxB", tcp_len, proto)


def ip_header(version: int, payload_len: int, ident: int = 0x1234, proto: int = 6) -> bytes:
    if version == 4:
        h = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0x4000, 64, proto, 0,
            SRC4.packed, DST4.packed,
        )  # fmt: skip
        return h[:10] + struct.pack("!H", rfc1071(h)) + h[12:]
    return struct.pack("!IHBB", 0x60000000, payload_len, proto, 64) + SRC6.packed + DST6.packed


def tcp_packet(
    version: int, seq: int, payload: bytes, flags: int = ACK, ident: int = 0x1234,
    options: bytes = TS_OPTION,
) -> bytes:  # fmt: skip
    """A complete packet with valid checksums."""
    tcp = tcp_header(seq, flags, options) + payload
    check = rfc1071(pseudo(version, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    return ip_header(version, len(tcp), ident) + tcp


def valid(packet: bytes) -> bool:
    version = packet[0] >> 4
    l4 = (packet[0] & 0xF) * 4 if version == 4 else 40
    if version == 4 and rfc1071(packet[:l4]) != 0:
        return False
    return rfc1071(pseudo(version, len(packet) - l4, packet[9 if version == 4 else 6])
                   + packet[l4:]) == 0  # fmt: skip


def split_frame(frame: bytes) -> list[bytes]:
    """The packets a frame stands for, cut as the kernel's TCP segmentation cuts a
    super-packet (the reference the coalescer is checked against): lengths, IPv4 ID
    +1 per segment, sequence numbers, PSH only on the last segment, fresh checksums."""
    _flags, gso, _hdr_len, mss, _start, _offset = struct.unpack_from("=BBHHHH", frame)
    packet = frame[VNET_HDR_LEN:]
    if gso == GSO_NONE:
        return [packet]
    version = 4 if gso == GSO_TCPV4 else 6
    l4 = 20 if version == 4 else 40
    header_len = l4 + (packet[l4 + 12] >> 4) * 4
    payload = packet[header_len:]
    seq = struct.unpack_from("!I", packet, l4 + 4)[0]
    out = []
    for i in range(0, len(payload), mss):
        chunk = payload[i : i + mss]
        head = bytearray(packet[:header_len])
        if version == 4:
            ident = (struct.unpack_from("!H", packet, 4)[0] + i // mss) & 0xFFFF
            struct.pack_into("!HH", head, 2, header_len + len(chunk), ident)
            head[10:12] = b"\0\0"
            head[10:12] = struct.pack("!H", rfc1071(bytes(head[:20])))
        else:
            struct.pack_into("!H", head, 4, header_len - 40 + len(chunk))
        struct.pack_into("!I", head, l4 + 4, (seq + i) & 0xFFFFFFFF)
        if i + mss < len(payload):
            head[l4 + 13] &= ~PSH & 0xFF
        head[l4 + 16 : l4 + 18] = b"\0\0"
        tcp = bytes(head[l4:]) + chunk
        head[l4 + 16 : l4 + 18] = struct.pack("!H", rfc1071(pseudo(version, len(tcp)) + tcp))
        out.append(bytes(head) + chunk)
    return out


def test_checksum_of_a_known_ipv4_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert rfc1071(header) == 0xB861  # the classic worked example, for the reference


# -- coalescing -------------------------------------------------------------------


def burst(version: int, sizes: list[int], seq: int = 50, ident: int = 100) -> list[bytes]:
    out = []
    for i, size in enumerate(sizes):
        out.append(tcp_packet(version, seq, bytes([i]) * size, ident=ident + i))
        seq += size
    return out


@pytest.mark.parametrize("version", [4, 6])
def test_coalesced_burst_splits_back_into_the_same_packets(version: int) -> None:
    packets = burst(version, [1368] * 10 + [500])
    packets[-1] = tcp_packet(version, 50 + 13680, bytes([10]) * 500, ACK | PSH, ident=110)
    c = Coalescer()
    for p in packets:
        c.add(p)
    (frame,) = c.frames()
    flags, gso, hdr_len, size, start, offset = struct.unpack_from("=BBHHHH", frame)
    l4 = 20 if version == 4 else 40
    # Not NEEDS_CSUM: the checksum is complete and left for the kernel to verify.
    assert (flags, gso, hdr_len, size) == (
        0, GSO_TCPV4 if version == 4 else GSO_TCPV6, l4 + 32, 1368,
    )  # fmt: skip
    body = frame[VNET_HDR_LEN:]
    if version == 4:
        assert struct.unpack_from("!H", body, 2)[0] == len(body)
    assert valid(body)  # IPv4 header and TCP checksums of the whole super-packet
    assert split_frame(frame) == packets


@pytest.mark.parametrize("where", [0, 3, 10])
def test_a_corrupted_segment_makes_the_super_packet_fail_its_checksum(where: int) -> None:
    packets = burst(4, [1368] * 11)
    spoiled = bytearray(packets[where])
    spoiled[100] ^= 0x40  # payload damaged after the sender's checksum
    packets[where] = bytes(spoiled)
    c = Coalescer()
    for p in packets:
        c.add(p)
    (frame,) = c.frames()
    assert not valid(frame[VNET_HDR_LEN:])  # the kernel drops it; the sender resends
    assert c.frames() == []


def test_single_packets_and_non_tcp_pass_through_unchanged() -> None:
    c = Coalescer()
    udp = ip_header(4, 12, proto=17) + bytes(12)
    lone = tcp_packet(4, 1, b"hello")
    ack = tcp_packet(4, 1, b"")
    for p in (udp, lone, ack):
        c.add(p)
    assert sorted(c.frames()) == sorted(PLAIN_HEADER + p for p in (udp, lone, ack))


@pytest.mark.parametrize(
    "spoil",
    [
        "bad_ip_checksum", "odd_mss", "gap", "syn", "other_window", "other_ttl",
        "other_id", "bigger", "other_options",
    ],
)  # fmt: skip
def test_a_segment_that_does_not_fit_starts_a_new_run(spoil: str) -> None:
    a, b, c3 = burst(4, [1000, 1000, 1000])
    b2 = bytearray(b)
    if spoil == "odd_mss":
        a, b, c3 = burst(4, [999, 999, 999])
        b2 = bytearray(b)
    elif spoil == "bad_ip_checksum":
        b2[10] ^= 1
    elif spoil == "gap":
        b2 = bytearray(tcp_packet(4, 50 + 1001, bytes([1]) * 1000, ident=101))
    elif spoil == "syn":
        b2 = bytearray(tcp_packet(4, 1050, bytes([1]) * 1000, ACK | SYN, ident=101))
    elif spoil == "other_window":
        h = bytearray(tcp_packet(4, 1050, bytes([1]) * 1000, ident=101))
        h[34:36] = b"\x01\x00"
        b2 = bytearray(_refresh(bytes(h)))
    elif spoil == "other_ttl":
        h = bytearray(tcp_packet(4, 1050, bytes([1]) * 1000, ident=101))
        h[8] = 3
        b2 = bytearray(_refresh(bytes(h)))
    elif spoil == "other_id":
        b2 = bytearray(tcp_packet(4, 1050, bytes([1]) * 1000, ident=777))
    elif spoil == "bigger":
        b2 = bytearray(tcp_packet(4, 1050, bytes([1]) * 1001, ident=101))
    elif spoil == "other_options":
        b2 = bytearray(tcp_packet(4, 1050, bytes([1]) * 1000, ident=101,
                                  options=TS_OPTION[:-1] + b"\x00"))  # fmt: skip
    co = Coalescer()
    for p in (a, bytes(b2), c3):
        co.add(p)
    frames = co.frames()
    assert len(frames) >= 2
    out = [p for f in frames for p in split_frame(f)]
    assert sorted(out) == sorted([a, bytes(b2), c3])  # nothing lost, nothing changed


def _refresh(packet: bytes) -> bytes:
    """Recompute both checksums after editing a header field."""
    p = bytearray(packet)
    p[10:12] = b"\0\0"
    p[10:12] = struct.pack("!H", rfc1071(bytes(p[:20])))
    p[36:38] = b"\0\0"
    p[36:38] = struct.pack("!H", rfc1071(pseudo(4, len(p) - 20) + bytes(p[20:])))
    return bytes(p)


def test_interleaved_flows_keep_their_own_order_and_runs() -> None:
    f1 = burst(4, [1000] * 4)
    f2 = [tcp_packet(4, 9, bytes(1000), ident=1)]
    f2_other_port = bytearray(f2[0])
    f2_other_port[20:22] = b"\x9c\x41"  # another source port: another flow
    f2b = _refresh(bytes(f2_other_port))
    co = Coalescer()
    for p in (f1[0], f2b, f1[1], f1[2], f2b, f1[3]):
        co.add(p)
    frames = co.frames()
    flows = [split_frame(f) for f in frames]
    assert f1 in flows
    assert sum(len(x) for x in flows) == 6


def test_runs_stop_at_64_kib_and_after_a_short_segment() -> None:
    packets = burst(4, [1400] * 60)
    co = Coalescer()
    for p in packets:
        co.add(p)
    frames = co.frames()
    assert all(len(f) - VNET_HDR_LEN <= 65535 for f in frames)
    assert [p for f in frames for p in split_frame(f)] == packets
    short_then_more = burst(4, [1400, 700, 1400])
    co = Coalescer()
    for p in short_then_more:
        co.add(p)
    frames = co.frames()
    assert len(frames) == 2
    assert sorted(p for f in frames for p in split_frame(f)) == sorted(short_then_more)


@settings(max_examples=150, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    sizes=st.lists(st.integers(1, 1400), min_size=1, max_size=70),
    seq=st.integers(0, 2**32 - 1),
    ident=st.integers(0, 0xFFFF),
)
def test_coalesce_then_split_is_the_identity(
    version: int, sizes: list[int], seq: int, ident: int
) -> None:
    packets = []
    s = seq
    for i, size in enumerate(sizes):
        packets.append(tcp_packet(version, s, bytes([i & 0xFF]) * size, ident=(ident + i) & 0xFFFF))
        s = (s + size) & 0xFFFFFFFF
    co = Coalescer()
    for p in packets:
        co.add(p)
    frames = co.frames()
    assert [p for f in frames for p in split_frame(f)] == packets


@pytest.mark.parametrize("version", [4, 6])
def test_a_segment_that_passes_through_goes_after_its_flows_run(version: int) -> None:
    packets = burst(version, [1000] * 5)
    fin = tcp_packet(version, 50 + 5000, b"", ACK | FIN, ident=105)
    other = burst(version, [1000] * 2, seq=9)
    other = [_other_port(p) for p in other]
    co = Coalescer()
    for p in (*packets, other[0], fin, other[1]):
        co.add(p)
    frames = co.frames()
    ours = [p for f in frames for p in split_frame(f) if p in (*packets, fin)]
    assert ours == [*packets, fin]
    assert len(frames) == 3  # our run, the FIN, the other flow's run


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("odd", [b"", b"\x45", b"\x60" * 10, b"\x45" * 23])
def test_an_empty_or_short_packet_after_a_segment_passes_through(version: int, odd: bytes) -> None:
    """Issue 13, F12: an empty CSTP DATA frame after a TCP segment raised IndexError."""
    first = tcp_packet(version, 50, b"x" * 1000)
    co = Coalescer()
    co.add(first)
    co.add(odd)
    # another flow (not even a packet): may go before the run, unchanged
    assert sorted(co.frames()) == sorted([PLAIN_HEADER + first, PLAIN_HEADER + odd])


def _other_port(packet: bytes) -> bytes:
    """The same packet from another source port (another flow), checksums fixed."""
    version = packet[0] >> 4
    l4 = 20 if version == 4 else 40
    p = bytearray(packet)
    p[l4 : l4 + 2] = b"\x9c\x41"
    p[l4 + 16 : l4 + 18] = b"\0\0"
    p[l4 + 16 : l4 + 18] = struct.pack("!H", rfc1071(pseudo(version, len(p) - l4) + bytes(p[l4:])))
    return bytes(p)
