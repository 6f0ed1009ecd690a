"""Handshake fragment reassembly (RFC 6347 §4.2.3) on its own: any fragmentation of a
flight (out of order, overlapping, duplicated, retransmitted) gives the messages back
byte-identical and in order, and what a hostile peer sends costs bounded work and
memory (issue 13, F5). The flood through the whole connection is in
test_dtls_connection.py."""

from __future__ import annotations

import itertools
import random

import pytest
from dtls_peer import encode_fragment
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.worker.proto import dtls_handshake as hs
from sepconnect.worker.proto.dtls_handshake import (
    MAX_FLIGHT_BYTES,
    MAX_FRAGMENTS,
    MAX_MESSAGE,
    MAX_PENDING,
    DecodeError,
    Fragment,
    MessageAssembler,
    MessageTooLarge,
    fragments_untrusted,
)

SERVER_HELLO = hs.HandshakeType.SERVER_HELLO


def frag(seq: int, body: bytes, start: int, end: int, msg_type: int = SERVER_HELLO) -> Fragment:
    return Fragment(msg_type, len(body), seq, start, body[start:end])


def pieces_of(body: bytes, rng: random.Random) -> list[tuple[int, int]]:
    """A random fragmentation of *body* with overlaps, duplicates and empty pieces:
    (start, end) ranges whose union is the whole body."""
    n = len(body)
    if not n:
        return [(0, 0), (0, 0)]
    cuts = sorted({0, n, *rng.sample(range(n + 1), min(n + 1, rng.randint(0, 6)))})
    out = [(a, b) for a, b in itertools.pairwise(cuts) if a < b]
    for _ in range(rng.randint(0, 4)):  # overlapping pieces
        a = rng.randrange(n)
        out.append((a, rng.randint(a + 1, n)))
    out += rng.choices(out, k=rng.randint(0, 3))  # duplicates (retransmissions)
    out += [(a, a) for a in rng.sample(range(n), min(n, 2))]  # empty pieces
    rng.shuffle(out)
    return out


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=MAX_PENDING),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_fragmentation_of_a_flight_reassembles_byte_identically(
    bodies: list[bytes], seed: int
) -> None:
    rng = random.Random(seed)
    frags = [
        frag(seq, body, a, b) for seq, body in enumerate(bodies) for a, b in pieces_of(body, rng)
    ]
    rng.shuffle(frags)  # messages interleaved too
    asm = MessageAssembler()
    out: list[tuple[int, int, bytes]] = []
    for f in frags:
        out += asm.add(f)
    assert out == [(SERVER_HELLO, seq, body) for seq, body in enumerate(bodies)]
    assert asm.dropped == 0
    # the same flight again (the peer retransmitted it): counted, nothing delivered twice
    seen = asm.retransmissions_seen
    for f in frags:
        assert asm.add(f) == []
    assert asm.retransmissions_seen == seen + len(frags)


def test_fragments_through_the_record_parser() -> None:
    body = bytes(range(200))
    record = b"".join(
        encode_fragment(SERVER_HELLO, 200, 0, a, body[a:b])
        for a, b in [(150, 200), (0, 0), (0, 100), (50, 160), (0, 100)]
    )
    frags = fragments_untrusted(record)
    assert [(f.offset, len(f.data)) for f in frags] == [(150, 50), (0, 100), (50, 110), (0, 100)]
    asm = MessageAssembler()
    out = [m for f in frags for m in asm.add(f)]
    assert out == [(SERVER_HELLO, 0, body)]


def test_an_empty_message_is_one_empty_fragment() -> None:
    done = hs.HandshakeType.SERVER_HELLO_DONE
    (f,) = fragments_untrusted(encode_fragment(done, 0, 0, 0, b""))
    assert MessageAssembler().add(f) == [(done, 0, b"")]


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (encode_fragment(2, 10, 0, 0, b"x" * 10)[:-1], DecodeError),  # body cut short
        (encode_fragment(2, 10, 0, 0, b"x" * 10)[:11], DecodeError),  # header cut short
        (encode_fragment(2, 10, 0, 5, b"x" * 6), DecodeError),  # beyond the message end
        (encode_fragment(2, MAX_MESSAGE + 1, 0, 0, b""), MessageTooLarge),
    ],
)
def test_malformed_fragments(record: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        fragments_untrusted(record)


def test_duplicates_and_empty_fragments_are_not_kept() -> None:
    """10,000 copies of one piece and 10,000 empty fragments take no fragment slots:
    the rest of the message still completes it."""
    body = bytes(range(100))
    asm = MessageAssembler()
    for _ in range(10_000):
        assert asm.add(frag(0, body, 0, 40)) == []
        assert asm.add(frag(0, body, 17, 17)) == []
    assert asm.add(frag(0, body, 40, 100)) == [(SERVER_HELLO, 0, body)]
    assert asm.dropped == 0


def test_too_many_fragments_drop_the_partial_message() -> None:
    """One-byte pieces with gaps: the fragment after MAX_FRAGMENTS drops what the
    message had; it reassembles from the retransmission."""
    body = bytes(range(256)) * 2
    asm = MessageAssembler()
    for i in range(MAX_FRAGMENTS):
        assert asm.add(frag(0, body, 2 * i, 2 * i + 1)) == []
    assert asm.dropped == 0
    assert asm.add(frag(0, body, 2 * MAX_FRAGMENTS, 2 * MAX_FRAGMENTS + 1)) == []
    assert asm.dropped == 1
    assert asm.add(frag(0, body, 0, len(body))) == [(SERVER_HELLO, 0, body)]


def test_the_flight_budget_gives_way_farthest_ahead_first() -> None:
    big = bytes(MAX_MESSAGE)
    asm = MessageAssembler()
    assert MAX_FLIGHT_BYTES < 3 * MAX_MESSAGE
    asm.add(frag(1, big, 0, 10))
    asm.add(frag(2, big, 0, 10))
    assert asm.dropped == 0
    # the next expected message needs room: message 2, the farthest ahead, gives way
    assert asm.add(frag(0, big, 0, MAX_MESSAGE)) == [(SERVER_HELLO, 0, big)]
    assert asm.dropped == 1
    assert asm.add(frag(1, big, 10, MAX_MESSAGE)) == [(SERVER_HELLO, 1, big)]
    # a message farther ahead than all held ones finds no room and is dropped
    asm.add(frag(3, big, 0, 10))
    asm.add(frag(4, big, 0, 10))
    assert asm.add(frag(5, big, 0, 10)) == []
    assert asm.dropped == 2
    assert asm.add(frag(2, big, 0, MAX_MESSAGE)) == [(SERVER_HELLO, 2, big)]


def test_too_far_ahead_is_dropped() -> None:
    asm = MessageAssembler()
    assert asm.add(frag(MAX_PENDING, b"x", 0, 1)) == []
    assert asm.dropped == 1
    assert asm.add(frag(MAX_PENDING - 1, b"x", 0, 1)) == []
    assert asm.dropped == 1


def test_a_fragment_that_disagrees_starts_the_message_over() -> None:
    """A forged fragment (another type or length) cannot block the real message, in
    either order."""
    real = bytes(range(40))
    asm = MessageAssembler()
    asm.add(frag(0, bytes(MAX_MESSAGE), 0, 1))  # forged first
    assert asm.add(frag(0, real, 0, 20)) == []
    assert asm.dropped == 1
    assert asm.add(frag(0, real, 20, 40)) == [(SERVER_HELLO, 0, real)]
    asm.add(frag(1, real, 0, 20))
    asm.add(frag(1, real, 0, 20, msg_type=hs.HandshakeType.FINISHED))  # forged between
    assert asm.add(frag(1, real, 20, 40)) == []
    assert asm.add(frag(1, real, 0, 20)) == [(SERVER_HELLO, 1, real)]  # retransmitted
