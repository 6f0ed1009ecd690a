"""DTLS record framing and the anti-replay window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sepconnect.worker.proto.dtls_records import (
    HEADER,
    MAX_RECORD_BODY,
    ReplayWindow,
    encode_record,
    records_untrusted,
)


def test_header_layout_rfc6347() -> None:
    wire = encode_record(23, 0xFEFD, 1, 0x0102_0304_0506, b"xyz")
    assert wire == bytes.fromhex("17 fefd 0001 010203040506 0003") + b"xyz"
    (rec,) = records_untrusted(wire)
    assert (rec.ctype, rec.version, rec.epoch, rec.seq, rec.body) == (
        23,
        0xFEFD,
        1,
        0x0102_0304_0506,
        b"xyz",
    )
    assert rec.seq64 == 1 << 48 | 0x0102_0304_0506


def test_several_records_per_datagram_and_truncation() -> None:
    a = encode_record(22, 0xFEFF, 0, 0, b"a" * 10)
    b = encode_record(20, 0xFEFD, 0, 1, b"\x01")
    c = encode_record(22, 0xFEFD, 1, 0, b"c" * 30)
    assert [r.body for r in records_untrusted(a + b + c)] == [b"a" * 10, b"\x01", b"c" * 30]
    # a truncated last record ends the split; what came before is kept
    assert len(records_untrusted(a + b + c[:-1])) == 2
    assert records_untrusted(a[: HEADER.size - 1]) == []


def test_oversized_length_field_is_not_buffered() -> None:
    wire = HEADER.pack(23, 0xFEFD, 1, 0, 0, MAX_RECORD_BODY + 1) + b"\0" * (MAX_RECORD_BODY + 1)
    assert records_untrusted(wire) == []


@given(st.binary(max_size=200))
def test_records_untrusted_never_raises(data: bytes) -> None:
    for rec in records_untrusted(data):
        assert len(rec.body) <= len(data)


# (sequence number, accepted?) in order; a record is "accepted" when fresh, and then
# marked. Written for a 64-record window: duplicates, reordering inside the window,
# and records older than the window are the cases.
WINDOW_CASES = [
    (1, True), (3, True), (2, True), (3, False), (1, False),
    (0x1234, True), (0x1230, True), (0x1235, True), (0x1230, False),
    (0x1235 - 63, True), (0x1235 - 64, False), (0x1235 - 65, False),
    (0x10000, True), (0xFFC1, True), (0xFFC0, False), (0x10000, False),
    (0x7FFFFFFFFFFF, True), (0x7FFFFFFFFFFE, True), (0x7FFFFFFFFFC0, True), (0x7FFFFFFFFFBF, False),
    (0xFFFFFFFFFFFF, True), (0, False),
]  # fmt: skip


def test_replay_window_cases() -> None:
    window = ReplayWindow()
    for seq, fresh in WINDOW_CASES:
        assert window.is_fresh(seq) is fresh, hex(seq)
        if fresh:
            window.accept(seq)


@given(st.lists(st.integers(0, 300), max_size=200))
def test_replay_window_never_accepts_twice(seqs: list[int]) -> None:
    window = ReplayWindow()
    accepted: set[int] = set()
    for seq in seqs:
        if window.is_fresh(seq):
            assert seq not in accepted
            accepted.add(seq)
            window.accept(seq)
