"""CSTP framing: byte vectors, reassembly, malformed input, fuzzing.

Header layout: PROTOCOL.md §3 (ocserv src/vpn.h AC_PKT_*, openconnect cstp.c).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.worker.proto.cstp import (
    HEADER_LEN,
    MAX_PAYLOAD,
    CstpDecoder,
    CstpError,
    Frame,
    PacketType,
    encode_data,
    encode_disconnect,
    encode_frame,
)
from sepconnect.worker.proto.errors import ProtocolError

# A 20-byte IPv4 header (198.18.0.1 -> 198.18.0.2, protocol 0xfd), as a payload.
IP_PACKET = bytes.fromhex("450000140000400040fd0000c6120001c6120002")

# Hand-assembled vectors: magic "STF\x01", big-endian length, type, zero byte.
VECTORS = [
    (PacketType.DATA, IP_PACKET, b"STF\x01\x00\x14\x00\x00" + IP_PACKET),
    (PacketType.DPD_REQ, b"", b"STF\x01\x00\x00\x03\x00"),
    (PacketType.DPD_RESP, b"", b"STF\x01\x00\x00\x04\x00"),
    (PacketType.KEEPALIVE, b"", b"STF\x01\x00\x00\x07\x00"),
    (PacketType.TERMINATE, b"", b"STF\x01\x00\x00\x09\x00"),
    (PacketType.DISCONNECT, b"\xb0", b"STF\x01\x00\x01\x05\x00\xb0"),
]


def test_packet_type_values() -> None:
    # ocserv vpn.h: AC_PKT_DATA 0, DPD_OUT 3, DPD_RESP 4, DISCONN 5, KEEPALIVE 7,
    # COMPRESSED 8, TERM_SERVER 9.
    assert {t.name: t.value for t in PacketType} == {
        "DATA": 0,
        "DPD_REQ": 3,
        "DPD_RESP": 4,
        "DISCONNECT": 5,
        "KEEPALIVE": 7,
        "COMPRESSED": 8,
        "TERMINATE": 9,
    }
    assert HEADER_LEN == 8
    assert MAX_PAYLOAD >= 16384  # openconnect's minimum receive buffer


@pytest.mark.parametrize(("ptype", "payload", "wire"), VECTORS)
def test_encode_vectors(ptype: PacketType, payload: bytes, wire: bytes) -> None:
    assert encode_frame(ptype, payload) == wire


@pytest.mark.parametrize(("ptype", "payload", "wire"), VECTORS)
def test_decode_vectors(ptype: PacketType, payload: bytes, wire: bytes) -> None:
    frames = CstpDecoder().feed_untrusted(wire)
    assert frames == [Frame(ptype, payload)]
    assert type(frames[0].payload) is bytes


def test_encode_data_matches_generic_encoder() -> None:
    assert encode_data(IP_PACKET) == b"STF\x01\x00\x14\x00\x00" + IP_PACKET
    big = bytes(range(256)) * 5
    assert encode_data(big) == encode_frame(PacketType.DATA, big)
    assert encode_data(b"") == b"STF\x01\x00\x00\x00\x00"


def test_encode_rejects_oversize() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_data(b"\x00" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(PacketType.DPD_REQ, b"\x00" * (MAX_PAYLOAD + 1))
    assert len(encode_data(b"\x00" * MAX_PAYLOAD)) == HEADER_LEN + MAX_PAYLOAD


def test_encode_disconnect() -> None:
    # openconnect cstp_bye: type 5, payload = 0xb0 + ASCII reason.
    assert encode_disconnect() == b"STF\x01\x00\x12\x05\x00\xb0Client disconnect"
    assert encode_disconnect(0x91, "") == b"STF\x01\x00\x01\x05\x00\x91"
    with pytest.raises(ValueError, match="byte"):
        encode_disconnect(256)
    with pytest.raises(UnicodeEncodeError):
        encode_disconnect(0xB0, "d\u00e9connect\u00e9")


STREAM = b"".join(w for _, _, w in VECTORS) + encode_data(b"\x60" + b"\x00" * 1399)
EXPECTED = [Frame(t, p) for t, p, _ in VECTORS] + [Frame(PacketType.DATA, b"\x60" + b"\x00" * 1399)]


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        dec = CstpDecoder()
        frames = dec.feed_untrusted(STREAM[:cut]) + dec.feed_untrusted(STREAM[cut:])
        assert frames == EXPECTED, cut
        assert dec.buffered == 0


def test_byte_at_a_time() -> None:
    dec = CstpDecoder()
    frames: list[Frame] = []
    for i in range(len(STREAM)):
        frames += dec.feed_untrusted(STREAM[i : i + 1])
        assert dec.buffered < HEADER_LEN + MAX_PAYLOAD
    assert frames == EXPECTED


def test_holds_only_the_incomplete_tail() -> None:
    dec = CstpDecoder()
    wire = encode_data(IP_PACKET)
    assert dec.feed_untrusted(wire + wire[:5]) == [Frame(PacketType.DATA, IP_PACKET)]
    assert dec.buffered == 5
    assert dec.feed_untrusted(wire[5:]) == [Frame(PacketType.DATA, IP_PACKET)]
    assert dec.buffered == 0
    assert dec.feed_untrusted(b"") == []


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"STF\x02\x00\x00\x00\x00", "magic"),
        (b"XTF\x01\x00\x00\x00\x00", "magic"),
        (b"GET / HTTP/1.1\r\n", "magic"),
        (b"STF\x01\x00\x00\x00\x01", "byte 7"),
        (b"STF\x01\x00\x00\x07\xff", "byte 7"),
        (b"STF\x01\x40\x01\x00\x00", "exceeds"),
        (b"STF\x01\xff\xff\x00\x00", "exceeds"),
        (b"STF\x01\x00\x00\x01\x00", "Unknown CSTP packet type 0x01"),
        (b"STF\x01\x00\x00\x06\x00", "Unknown"),
        (b"STF\x01\x00\x00\xff\x00", "Unknown"),
        (b"STF\x01\x00\x02\x08\x00\x00\x00", "ompress"),
    ],
)
def test_malformed_headers(wire: bytes, message: str) -> None:
    dec = CstpDecoder()
    with pytest.raises(CstpError, match=message):
        dec.feed_untrusted(wire)
    # The error is sticky: the stream is unusable afterwards.
    with pytest.raises(CstpError):
        dec.feed_untrusted(encode_data(IP_PACKET))


def test_oversize_length_rejected_before_payload_arrives() -> None:
    dec = CstpDecoder()
    with pytest.raises(CstpError, match="exceeds"):
        dec.feed_untrusted(b"STF\x01\x40\x01\x00\x00")  # 16385, no payload yet
    assert dec.buffered == 0


def test_bad_frame_after_good_ones_in_same_read() -> None:
    dec = CstpDecoder()
    with pytest.raises(CstpError):
        dec.feed_untrusted(encode_data(IP_PACKET) + b"STF\x01\x00\x00\x0a\x00")


def test_cstp_error_is_protocol_error() -> None:
    assert issubclass(CstpError, ProtocolError)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(
        st.tuples(
            st.sampled_from([t for t in PacketType if t is not PacketType.COMPRESSED]),
            st.binary(max_size=2000),
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=6),
)
def test_roundtrip_any_split(frames: list[tuple[PacketType, bytes]], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(t, p) for t, p in frames)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    dec = CstpDecoder()
    out: list[Frame] = []
    for a, b in zip(points, points[1:], strict=False):
        out += dec.feed_untrusted(wire[a:b])
    assert out == [Frame(t, p) for t, p in frames]
    assert dec.buffered == 0


@settings(max_examples=500, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=8), prefix=st.booleans())
def test_fuzz_decoder_only_raises_cstp_error(chunks: list[bytes], prefix: bool) -> None:
    dec = CstpDecoder()
    if prefix:
        chunks = [b"STF\x01", *chunks]
    try:
        for chunk in chunks:
            for frame in dec.feed_untrusted(chunk):
                assert isinstance(frame.type, PacketType)
                assert frame.type is not PacketType.COMPRESSED
                assert len(frame.payload) <= MAX_PAYLOAD
            assert dec.buffered < HEADER_LEN + MAX_PAYLOAD
    except CstpError:
        pass
