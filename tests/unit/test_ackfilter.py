"""ACK filtering (worker/proto/ackfilter.py): which pure ACKs of a burst may be left out.

Packets are built here with textbook RFC 1071 checksums; the filter is checked
against a model written from the rule itself (a plain ACK goes only when a later
valid plain ACK of its connection acknowledges strictly more).
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.worker.proto.ackfilter import MAX_PLAIN_ACK, filter_acks, plain_ack

A4, B4 = ipaddress.IPv4Address("198.18.2.10").packed, ipaddress.IPv4Address("198.18.100.5").packed
A6 = ipaddress.IPv6Address("2001:2:0:2::10").packed
B6 = ipaddress.IPv6Address("2001:2:0:100::5").packed
ACK, PSH, FIN, SYN, RST, ECE, CWR = 0x10, 0x08, 0x01, 0x02, 0x04, 0x40, 0x80
TIMESTAMPS = bytes.fromhex("0101080a0001e24000abcdef")
SACK = bytes.fromhex("0101050a00001000000020000101080a0001e24000abcdef")  # SACK + NOP NOP TS


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(
    ack: int,
    *,
    version: int = 4,
    sport: int = 5201,
    dport: int = 40000,
    flags: int = ACK,
    options: bytes = TIMESTAMPS,
    payload: bytes = b"",
    window: int = 502,
    corrupt: bool = False,
) -> bytes:
    """A TCP packet from the server's side with valid checksums (unless ``corrupt``)."""
    src, dst = (A4, B4) if version == 4 else (A6, B6)
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, ack, doff << 4, flags, window, 0, 0)
    tcp += options + payload
    if version == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
    check = rfc1071(pseudo + tcp) ^ (0x0100 if corrupt else 0)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    if version == 4:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, src, dst)
        return h[:10] + struct.pack("!H", rfc1071(h)) + h[12:] + tcp
    return struct.pack("!IHBB", 0x60000000, len(tcp), 6, 64) + src + dst + tcp


def test_plain_acks_are_recognised_in_both_families() -> None:
    for version in (4, 6):
        for options in (b"", TIMESTAMPS):
            p = packet(123456, version=version, options=options)
            assert len(p) <= MAX_PLAIN_ACK
            found = plain_ack(p)
            assert found is not None
            _key, ack, valid = found
            assert ack == 123456
            assert valid


def test_anything_but_a_plain_ack_is_not_one() -> None:
    others = [
        packet(1, payload=b"x" * 4),  # data
        packet(1, flags=ACK | PSH),
        packet(1, flags=ACK | FIN),
        packet(1, flags=ACK | RST),
        packet(1, flags=SYN | ACK),
        packet(1, flags=ACK | ECE),
        packet(1, flags=ACK | CWR),
        packet(1, options=SACK),  # too long anyway
        packet(1, options=bytes.fromhex("0101050a00001000000020000101")[:12]),  # SACK, 32 bytes
        packet(1, version=6, options=bytes.fromhex("0101040201010101")[:12] + bytes(4)),
    ]
    for p in others:
        assert plain_ack(p) is None, p.hex()
    udp = bytearray(packet(1))
    udp[9] = 17
    assert plain_ack(bytes(udp)) is None
    fragment = bytearray(packet(1))
    fragment[6] |= 0x20  # more fragments
    assert plain_ack(bytes(fragment)) is None
    assert plain_ack(b"") is None
    assert plain_ack(bytes(40)) is None


def test_a_corrupt_ack_is_recognised_but_not_valid() -> None:
    found = plain_ack(packet(5, corrupt=True))
    assert found is not None
    assert found[2] is False
    bad_ip = bytearray(packet(5))
    bad_ip[8] -= 1  # TTL: the IPv4 header checksum no longer holds
    found = plain_ack(bytes(bad_ip))
    assert found is not None
    assert found[2] is False


def test_superseded_acks_go_and_the_last_stays() -> None:
    burst = [packet(1000), packet(2448), packet(3896), packet(5344)]
    assert filter_acks(burst) == [burst[-1]]


def test_other_packets_keep_their_place() -> None:
    data = packet(0, sport=22, dport=50000, flags=ACK | PSH, payload=b"hello")
    other_flow = packet(100, sport=5202)
    burst = [packet(1000), data, other_flow, packet(2000), packet(50, sport=5202)]
    # other_flow (ack 100) is not superseded: its connection's later ACK says 50.
    assert filter_acks(burst) == [data, other_flow, burst[3], burst[4]]


def test_repeated_acks_are_kept_unless_something_later_goes_further() -> None:
    dup = [packet(1000), packet(1000), packet(1000)]
    assert filter_acks(dup) == dup  # the very list: nothing dropped
    assert filter_acks([*dup, packet(1001)]) == [packet(1001)]


def test_sack_and_ecn_acks_are_never_dropped_nor_supersede() -> None:
    sack = packet(1000, options=bytes.fromhex("01010508") + struct.pack("!II", 2000, 3000))
    ece = packet(1500, flags=ACK | ECE)
    burst = [sack, ece, packet(4000)]
    assert filter_acks(burst) == burst
    burst = [packet(900), sack, ece]
    assert filter_acks(burst) == burst


def test_an_invalid_ack_supersedes_nothing() -> None:
    early = packet(1000)
    burst = [early, packet(2000, corrupt=True)]
    assert filter_acks(burst) == burst
    # ...and a valid later one still covers both.
    assert filter_acks([*burst, packet(3000)]) == [packet(3000)]


def test_directions_and_families_are_separate_connections() -> None:
    reverse = packet(9000, sport=40000, dport=5201)
    v6 = packet(9000, version=6)
    burst = [packet(1000), reverse, v6, packet(500)]
    assert filter_acks(burst) == burst
    burst6 = [packet(1, version=6), packet(2, version=6)]
    assert filter_acks(burst6) == [burst6[1]]


def test_acknowledgement_numbers_wrap() -> None:
    before_wrap, after_wrap = packet(0xFFFFFF00), packet(0x00000100)
    assert filter_acks([before_wrap, after_wrap]) == [after_wrap]
    # Half the sequence space away is "behind", not ahead: both stay.
    far = packet(0x7FFFFF00 + 0x100 + 1)
    assert filter_acks([after_wrap, packet(0x80000102)]) == [after_wrap, packet(0x80000102)]
    assert filter_acks([after_wrap, far]) == [far]


def test_a_window_update_with_the_same_ack_is_kept() -> None:
    burst = [packet(1000, window=0), packet(1000, window=500)]
    assert filter_acks(burst) == burst


# -- against a model of the rule ------------------------------------------------------

_FLOWS = [(5201, 40000, 4), (5201, 40002, 4), (5201, 40000, 6)]
Burst = list[tuple[bytes, tuple[int, int, int] | None, int, bool]]


@st.composite
def bursts(draw: st.DrawFn) -> Burst:
    """Packets with what the model knows of each: flow (None: not a plain ACK), ack
    number, and whether its checksums are valid."""
    out: Burst = []
    for _ in range(draw(st.integers(0, 14))):
        sport, dport, version = draw(st.sampled_from(_FLOWS))
        ack = draw(st.sampled_from([0, 1, 2, 3, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]))
        kind = draw(st.sampled_from(["ack", "ack", "ack", "corrupt", "data", "fin", "ece"]))
        if kind == "ack" or kind == "corrupt":
            p = packet(ack, version=version, sport=sport, dport=dport, corrupt=kind == "corrupt")
            out.append((p, (sport, dport, version), ack, kind == "ack"))
        else:
            flags = {"data": ACK | PSH, "fin": ACK | FIN, "ece": ACK | ECE}[kind]
            payload = b"data" if kind == "data" else b""
            p = packet(ack, version=version, sport=sport, dport=dport, flags=flags,
                       payload=payload)  # fmt: skip
            out.append((p, None, ack, True))
    return out


def _ahead(later: int, ack: int) -> bool:
    return 0 < (later - ack) % 2**32 < 2**31


@settings(max_examples=400, deadline=None)
@given(bursts())
def test_filter_keeps_order_and_drops_only_covered_acks(burst: Burst) -> None:
    got = filter_acks([b[0] for b in burst])
    kept = {id(p) for p in got}
    remaining = iter(got)
    assert all(any(p is q for q in remaining) for p, *_ in burst if id(p) in kept)
    assert len(got) == len(kept)  # each packet once, in the burst's order
    for i, (p, flow, ack, _valid) in enumerate(burst):
        later_kept = [b for b in burst[i + 1 :] if b[1] == flow and id(b[0]) in kept]
        if id(p) not in kept:
            # Only plain ACKs go, and only under a valid later one that reaches further
            # (the nearest such survivor is what covered it).
            assert flow is not None
            assert later_kept
            assert later_kept[0][3]
            assert _ahead(later_kept[0][2], ack)
        elif flow is not None and later_kept:
            # Nothing left that could have gone: its nearest surviving successor is
            # invalid or does not reach further.
            nxt = later_kept[0]
            assert not (nxt[3] and _ahead(nxt[2], ack))
    for flow in {b[1] for b in burst if b[1] is not None}:
        assert id([b for b in burst if b[1] == flow][-1][0]) in kept  # the last stays
