"""The data path's two implementations (DESIGN.md §4): the compiled accelerator
(worker/_accel.c) against the pure-Python reference, which it must match byte for byte.

- The TSO split (worker/proto/offload.py ``split_frame``): known vectors for both,
  checksums checked against a textbook RFC 1071 loop and segments against the
  re-segmenter of test_offload.py; then a differential fuzz of frames as the kernel
  hands them to us, mutated: the same packets or the same refusal from both.
- DTLS AES-GCM records (worker/proto/dtls_crypto.py ``GcmProtection`` and
  ``CompiledGcmProtection``): the same records sealed, and on the receive side the
  same plaintext or the same rejection for any body, valid or mutated.
- CSTP DATA frames (worker/proto/cstp.py ``encode_data_frames``, and runs of them read
  by ``CstpDecoder``): the same frames, and the same error for any malformed stream.
- TLS records in bursts (worker/io/tls.py ``TlsStream`` with and without the
  accelerator's ``TlsRecords``): the same records written, and on the receive side the
  same plaintext and the same ending for any cut of the stream, valid or mutated.

The test environment is built with a compiler (scripts/bootstrap.sh), so the
accelerator must be there: a build that silently fell back to Python fails here.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from test_fuzz_untrusted import cstp_streams
from test_offload import (
    ACK,
    CWR,
    FIN,
    PSH,
    TS_OPTION,
    ip_header,
    pseudo,
    rfc1071,
    tcp_header,
    tcp_packet,
    valid,
    vnet,
)
from test_offload import split_frame as textbook_split
from tls_pair import tls_pair

from sepconnect.worker import _accel, accel
from sepconnect.worker.io import mmsg
from sepconnect.worker.io.tls import TlsError, TlsStream
from sepconnect.worker.proto import cstp
from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto.dtls_records import ReplayWindow, encode_record
from sepconnect.worker.proto.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    split_frame,
)
from sepconnect.worker.proto.offload import coalesce as offload_coalesce

FUZZ = settings(
    max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None
)


def compiled_split(frame: bytes) -> list[bytes]:
    assert accel.split_frame is not None
    return accel.split_frame(frame)


SPLITS: list[Callable[[bytes], list[bytes]]] = [split_frame, compiled_split]
both = pytest.mark.parametrize("split", SPLITS, ids=["python", "compiled"])


def test_the_accelerator_is_built_here() -> None:
    assert accel.IMPLEMENTATION == "compiled"
    assert accel.Gcm is not None
    assert accel.split_frame is not None


# -- TSO split ---------------------------------------------------------------------


def super_frame(version: int, payload: bytes, mss: int, flags: int = ACK | PSH,
                seq: int = 1000, ident: int = 0x1234) -> bytes:  # fmt: skip
    """What the kernel hands us with TSO on: one header, a partial checksum."""
    tcp = tcp_header(seq, flags) + payload
    l4 = 20 if version == 4 else 40
    partial = ~rfc1071(pseudo(version, len(tcp))) & 0xFFFF
    tcp = tcp[:16] + struct.pack("!H", partial) + tcp[18:]
    ip = ip_header(version, len(tcp), ident)
    gso = (GSO_TCPV4 if version == 4 else GSO_TCPV6) | (0x80 if flags & CWR else 0)
    return vnet(NEEDS_CSUM, gso, l4 + 32, mss, l4, 16) + ip + tcp


@both
def test_checksum_of_a_known_ipv4_header(split: Callable[[bytes], list[bytes]]) -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert rfc1071(header) == 0xB861  # the classic worked example
    frame = vnet() + header[:10] + b"\xb8\x61" + header[12:]
    assert split(frame) == [frame[VNET_HDR_LEN:]]


@both
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("length", [1, 1367, 1368, 1369, 4000, 65000 - 52 - 40])
def test_split_gives_valid_segments_that_add_up(
    split: Callable[[bytes], list[bytes]], version: int, length: int
) -> None:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(length))
    mss = 1368
    frame = super_frame(version, payload, mss, flags=ACK | PSH | FIN | CWR)
    segments = split(frame)
    assert len(segments) == -(-length // mss)
    l4 = 20 if version == 4 else 40
    joined = b""
    for i, seg in enumerate(segments):
        assert valid(seg), f"segment {i} has a bad checksum"
        th = seg[l4:]
        assert struct.unpack_from("!I", th, 4)[0] == 1000 + i * mss
        last = i == len(segments) - 1
        assert bool(th[13] & (PSH | FIN)) == last
        assert bool(th[13] & CWR) == (i == 0)
        assert th[20:32] == TS_OPTION
        if version == 4:
            assert struct.unpack_from("!H", seg, 2)[0] == len(seg)
            assert struct.unpack_from("!H", seg, 4)[0] == 0x1234 + i
        else:
            assert struct.unpack_from("!H", seg, 4)[0] == len(seg) - 40
        joined += th[32:]
    assert joined == payload
    # The kernel's own segmentation, as test_offload.py's re-segmenter does it (which
    # keeps CWR and FIN as they are, and takes a frame without the partial checksum).
    plain = tcp_packet_of(frame)
    expected = textbook_split(vnet(0, frame[1] & 0x7F, 0, mss) + plain)
    for mine, theirs in zip(segments, expected, strict=True):
        assert clear_flags(mine, l4) == clear_flags(theirs, l4)


def tcp_packet_of(frame: bytes) -> bytes:
    """The super-packet of *frame* with a complete TCP checksum."""
    packet = bytearray(frame[VNET_HDR_LEN:])
    l4 = 20 if packet[0] >> 4 == 4 else 40
    packet[l4 + 16 : l4 + 18] = b"\0\0"
    tcp = bytes(packet[l4:])
    packet[l4 + 16 : l4 + 18] = struct.pack("!H", rfc1071(pseudo(packet[0] >> 4, len(tcp)) + tcp))
    return bytes(packet)


def clear_flags(segment: bytes, l4: int) -> bytes:
    """The segment without CWR/FIN and its TCP checksum (the only fields where the
    re-segmenter is simpler than the kernel)."""
    out = bytearray(segment)
    out[l4 + 13] &= ~(CWR | FIN) & 0xFF
    out[l4 + 16 : l4 + 18] = b"\0\0"
    return bytes(out)


@both
def test_split_wraps_sequence_and_ip_id(split: Callable[[bytes], list[bytes]]) -> None:
    segs = split(super_frame(4, bytes(3000), 1000, seq=0xFFFFFF00, ident=0xFFFF))
    assert [struct.unpack_from("!I", s, 24)[0] for s in segs] == [0xFFFFFF00, 0x2E8, 0x6D0]
    assert [struct.unpack_from("!H", s, 4)[0] for s in segs] == [0xFFFF, 0, 1]
    assert all(valid(s) for s in segs)


@both
@pytest.mark.parametrize(("proto", "offset"), [(17, 6), (6, 16)])
def test_partial_checksum_is_completed(
    split: Callable[[bytes], list[bytes]], proto: int, offset: int
) -> None:
    body = bytes(range(200)) + b"\x01"  # odd length
    if proto == 17:
        l4 = struct.pack("!HHHH", 5353, 53, 8 + len(body), 0) + body
    else:
        l4 = tcp_header(5, ACK) + body
    partial = ~rfc1071(pseudo(4, len(l4), proto)) & 0xFFFF
    l4 = l4[:offset] + struct.pack("!H", partial) + l4[offset + 2 :]
    packet = ip_header(4, len(l4), proto=proto) + l4
    (out,) = split(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 20, offset) + packet)
    assert valid(out)
    assert out[:20 + offset] == packet[:20 + offset]  # fmt: skip


@both
def test_udp_checksum_of_zero_is_sent_as_ffff(split: Callable[[bytes], list[bytes]]) -> None:
    # A body that makes the sum come out at 0xFFFF, i.e. a checksum of 0.
    header = struct.pack("!HHHH", 1, 2, 10, 0)
    need = rfc1071(pseudo(4, 10, 17) + header + b"\0\0")
    l4 = header + struct.pack("!H", need)
    assert rfc1071(pseudo(4, 10, 17) + l4) == 0
    partial = ~rfc1071(pseudo(4, 10, 17)) & 0xFFFF
    l4 = l4[:6] + struct.pack("!H", partial) + l4[8:]
    (out,) = split(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6) + ip_header(4, 10, proto=17) + l4)
    assert out[26:28] == b"\xff\xff"


@both
@pytest.mark.parametrize(
    "frame",
    [
        b"\x00" * 5,  # shorter than the header
        vnet(0, 3) + ip_header(4, 40) + bytes(40),  # GSO_UDP: never enabled
        vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 200) + ip_header(4, 30) + bytes(30),
        vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 10, 6) + ip_header(4, 30) + bytes(30),
        vnet(NEEDS_CSUM, GSO_TCPV4, 52, 1000) + ip_header(4, 20, proto=17) + bytes(20),
        vnet(NEEDS_CSUM, GSO_TCPV6, 72, 1000) + ip_header(4, 40) + tcp_header(1, ACK),
        vnet(NEEDS_CSUM, GSO_TCPV4, 52, 0) + ip_header(4, 40) + tcp_header(1, ACK) + b"x",
        vnet(NEEDS_CSUM, GSO_TCPV4, 52, 100) + ip_header(4, 32) + tcp_header(1, ACK),
    ],
)
def test_frames_the_kernel_never_makes_are_refused(
    split: Callable[[bytes], list[bytes]], frame: bytes
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (OffloadError is a ValueError)
        split(frame)


def outcome(split: Callable[[bytes], list[bytes]], frame: bytes) -> list[bytes] | str:
    try:
        return split(frame)
    except ValueError:
        return "refused"


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Frames as the kernel hands them to us (super-packets, partial checksums, plain
    packets, IPv4 with options), then mutated: fields, flips, truncation, junk."""
    version = draw(st.sampled_from([4, 6]))
    payload = draw(st.binary(max_size=3000))
    mss = draw(st.integers(1, 1500))
    flags = draw(st.sampled_from([ACK, ACK | PSH, ACK | PSH | FIN | CWR, ACK | CWR]))
    seq = draw(st.integers(0, 2**32 - 1))
    ident = draw(st.integers(0, 0xFFFF))
    frame = bytearray(super_frame(version, payload, mss, flags, seq, ident))
    if version == 4 and draw(st.booleans()):  # IPv4 options (IHL 6): 4 more header bytes
        frame[VNET_HDR_LEN] = 0x46
        frame[VNET_HDR_LEN + 20 : VNET_HDR_LEN + 20] = b"\x01\x01\x01\x00"
    if draw(st.booleans()):  # a plain packet or a partial checksum alone
        frame[1] = GSO_NONE
        frame[0] = draw(st.sampled_from([0, NEEDS_CSUM]))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(frame) - 1))
        frame[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(0, len(frame)))]
    return bytes(frame) + draw(st.binary(max_size=3))


@FUZZ
@given(frame=frames())
def test_both_splits_agree_on_any_frame(frame: bytes) -> None:
    assert outcome(split_frame, frame) == outcome(compiled_split, frame)


def test_both_splits_agree_on_random_bytes() -> None:
    rng = __import__("random").Random(15)
    for _ in range(3000):
        frame = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
        assert outcome(split_frame, frame) == outcome(compiled_split, frame)


# -- DTLS AES-GCM records ------------------------------------------------------------


def gcm_pair(key: bytes, salt: bytes) -> tuple[dc.GcmProtection, dc.CompiledGcmProtection]:
    return dc.GcmProtection(key, salt), dc.CompiledGcmProtection(key, salt)


@FUZZ
@given(
    key=st.sampled_from([16, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    salt=st.binary(min_size=4, max_size=4),
    first=st.integers(0, 2**64 - 64),
    ctype=st.integers(0, 255),
    version=st.sampled_from([dc.DTLS1_2, dc.DTLS1_0, dc.DTLS_BAD_VER]),
    plaintexts=st.lists(st.binary(max_size=1500), max_size=8),
    prefix=st.sampled_from([b"", b"\x00"]) | st.binary(max_size=20),
)
def test_both_gcms_seal_the_same_records(
    key: bytes,
    salt: bytes,
    first: int,
    ctype: int,
    version: int,
    plaintexts: list[bytes],
    prefix: bytes,
) -> None:
    python, compiled = gcm_pair(key, salt)
    # the prefix (the data channel's CSTP type byte) is sealed with each plaintext
    assert python.seal_records(first, ctype, version, plaintexts, prefix) == python.seal_records(
        first, ctype, version, [prefix + p for p in plaintexts]
    )
    assert compiled.seal_records(first, ctype, version, plaintexts, prefix) == (
        python.seal_records(first, ctype, version, plaintexts, prefix)
    )
    records = python.seal_records(first, ctype, version, plaintexts)
    assert compiled.seal_records(first, ctype, version, plaintexts) == records
    for i, (record, plaintext) in enumerate(zip(records, plaintexts, strict=True)):
        body = record[13:]
        assert compiled.seal(first + i, ctype, version, plaintext) == body
        assert python.open_untrusted(first + i, ctype, version, body) == plaintext
        assert compiled.open_untrusted(first + i, ctype, version, body) == plaintext


def open_outcome(prot: dc.RecordProtection, seq: int, ctype: int, version: int,
                 body: bytes) -> bytes | str:  # fmt: skip
    try:
        return prot.open_untrusted(seq, ctype, version, body)
    except dc.BadRecordMac:
        return "rejected"


@FUZZ
@given(
    plaintext=st.binary(max_size=1500),
    seq=st.integers(0, 2**64 - 1),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 255)), max_size=3),
    cut=st.integers(0, 1600) | st.none(),
    other_seq=st.booleans(),
    other_ctype=st.booleans(),
)
def test_both_gcms_open_or_reject_alike(
    plaintext: bytes,
    seq: int,
    flips: list[tuple[int, int]],
    cut: int | None,
    other_seq: bool,
    other_ctype: bool,
) -> None:
    python, compiled = gcm_pair(b"\x07" * 16, b"salt")
    body = bytearray(python.seal(seq, 23, dc.DTLS1_2, plaintext))
    for at, xor in flips:
        if at < len(body):
            body[at] ^= xor
    if cut is not None:
        del body[cut:]
    seq = seq ^ 1 if other_seq else seq
    ctype = 22 if other_ctype else 23
    expected = open_outcome(python, seq, ctype, dc.DTLS1_2, bytes(body))
    assert open_outcome(compiled, seq, ctype, dc.DTLS1_2, bytes(body)) == expected
    if not flips and cut is None and not other_seq and not other_ctype:
        assert expected == plaintext


def test_the_compiled_gcm_refuses_keys_it_cannot_use() -> None:
    assert accel.Gcm is not None
    with pytest.raises(ValueError, match="16- or 32-byte key"):
        accel.Gcm(bytes(24), bytes(4))
    with pytest.raises(ValueError, match="4-byte salt"):
        accel.Gcm(bytes(16), bytes(12))


def test_make_protection_uses_the_compiled_gcm_for_aes_gcm_suites() -> None:
    for suite, info in dc.SUITES.items():
        keys = dc.key_block(info, info.prf_hash, bytes(48), bytes(32), bytes(32))
        prot = dc.make_protection(info, keys, client_write=True, random=os.urandom)
        assert isinstance(prot, dc.CompiledGcmProtection) == (info.aead is dc.Aead.AES_GCM), suite


@pytest.mark.parametrize("top", [-1, 0, 63, 64, 100, 2**48 - 2])
def test_both_replay_windows_agree_at_the_edges(top: int) -> None:
    sealer = dc.GcmProtection(b"\x07" * 16, b"salt")

    def record(seq: int) -> bytes:
        body = sealer.seal(1 << 48 | seq, 23, dc.DTLS1_2, seq.to_bytes(8, "big"))
        return encode_record(23, dc.DTLS1_2, 1, seq, body)

    base = max(top, 0)
    seqs = [base - 64, base - 63, base - 62, base - 1, base, base + 1, base + 1, base - 63,
            base + 64, base + 1, base + 2, base + 65, base + 200, base + 137, base + 136,
            base + 200]  # fmt: skip
    datagrams = [record(s) for s in seqs if 0 <= s < 2**48]
    results = []
    key, salt = b"\x07" * 16, b"salt"
    for prot in (dc.GcmProtection(key, salt), dc.CompiledGcmProtection(key, salt)):
        window = ReplayWindow()
        window.restore(top, (1 << 64) - 1 - (1 << 63) if top >= 0 else 0)  # all but top - 63 seen
        out: list[bytes] = []
        step = prot.open_datagrams_untrusted(datagrams, 0, 1, window, out)
        results.append((step, out, window.position()))
    assert results[0] == results[1]
    assert results[0][0][0] == len(datagrams)


# -- coalescing (tun writes) -----------------------------------------------------------


def refreshed(packet: bytes, version: int) -> bytes:
    """Both checksums recomputed from the packet's own addresses (after an edit)."""
    p = bytearray(packet)
    if version == 4:
        p[10:12] = b"\0\0"
        p[10:12] = struct.pack("!H", rfc1071(bytes(p[:20])))
        l4, addresses, tail = 20, bytes(p[12:20]), b"\0\x06"
    else:
        l4, addresses, tail = 40, bytes(p[8:40]), b"\0\0\0\x06"
    p[l4 + 16 : l4 + 18] = b"\0\0"
    length = len(p) - l4
    pseudo_header = addresses + (b"\0\x06" + struct.pack("!H", length) if version == 4
                                 else struct.pack("!I", length) + tail)  # fmt: skip
    p[l4 + 16 : l4 + 18] = struct.pack("!H", rfc1071(pseudo_header + bytes(p[l4:])))
    return bytes(p)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("fix", [True, False], ids=["checksums-fixed", "as-edited"])
def test_both_coalescers_agree_whatever_header_byte_differs(version: int, fix: bool) -> None:
    segments = [
        tcp_packet(version, 1000 + 1368 * i, bytes([i]) * 1368, ident=7 + i) for i in range(4)
    ]
    header_len = (20 if version == 4 else 40) + 32
    assert accel.coalesce is not None
    for at in range(header_len):
        for xor in (0x01, 0x08, 0x80):
            burst = list(segments)
            edited = bytearray(burst[2])
            edited[at] ^= xor
            burst[2] = refreshed(bytes(edited), version) if fix else bytes(edited)
            assert accel.coalesce(burst) == offload_coalesce(burst), (at, xor)


# -- UDP receive (recvmmsg's messages) -------------------------------------------------


def test_both_read_recvmmsg_messages_alike() -> None:
    """Slots as the kernel could fill them (sizes, MSG_TRUNC, GRO control messages with
    any segment size, other control messages, junk), read by both: the same datagrams,
    the same truncated count, the same controllen reset."""
    rng = random.Random(15)  # deterministic: a bounded fuzz
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = mmsg.BatchReceiver(sock.fileno())
    assert accel.split_mmsg is not None
    try:
        for _ in range(300):
            count = rng.randrange(0, mmsg.SLOTS + 1)
            for i in range(mmsg.SLOTS):
                m = receiver._msgs[i]
                m.len = rng.choice([0, 1, 13, 1400, 1432, 4000, 65535, 65536, rng.randrange(70000)])
                m.hdr.controllen = rng.choice([0, 4, mmsg.GRO_CMSG_SPACE, socket.CMSG_LEN(4)])
                m.hdr.flags = rng.choice([0, 0, 0, socket.MSG_TRUNC, socket.MSG_CTRUNC])
                control = struct.pack(
                    "@Nii",
                    rng.choice([socket.CMSG_LEN(4), socket.CMSG_LEN(0), 0]),
                    rng.choice([mmsg.SOL_UDP, mmsg.SOL_UDP, 0]),
                    rng.choice([mmsg.UDP_GRO, mmsg.UDP_GRO, 1]),
                ) + struct.pack("=i", rng.choice([0, 1, 7, 1400, 1432, -5, 65535]))
                at = i * mmsg.GRO_CMSG_SPACE
                receiver._control[at : at + len(control)] = control
                start = i * 65536 + rng.randrange(0, 2000)
                receiver._data[start : start + 16] = rng.randbytes(16)
            before = bytes(receiver._view)
            expected = mmsg.split_messages(
                receiver._view, receiver._data_view, receiver._control_view, count
            )
            after_python = bytes(receiver._view)
            receiver._view[:] = before
            got = accel.split_mmsg(
                receiver._view, receiver._data_view, receiver._control_view, count,
                65536, mmsg.GRO_CMSG_SPACE,
            )  # fmt: skip
            assert got == expected
            assert bytes(receiver._view) == after_python
    finally:
        receiver.close()
        sock.close()


# -- TLS records (worker/io/tls.py TlsStream on pyOpenSSL's connection) -----------------


def tls_stream(path: str) -> tuple[TlsStream, SSL.Connection, socket.socket]:
    """A TlsStream on one path ("python": pyOpenSSL's call per record; "compiled": the
    accelerator's TlsRecords) against an in-process OpenSSL server (tls_pair)."""
    stream, server, theirs = tls_pair(socket_buffer=1 << 22)
    theirs.setblocking(False)
    if path == "python":
        stream._records = None
    return stream, server, theirs


def test_the_tls_burst_finds_pyopenssl_internals() -> None:
    # accel.tls_records relies on pyOpenSSL's cffi bindings (not a public API): a
    # release that changes them must fail here, not fall back quietly in production.
    stream, _, theirs = tls_pair()
    try:
        assert isinstance(stream._records, _accel.TlsRecords)
    finally:
        stream.sock.close()
        theirs.close()


def server_records(server: SSL.Connection, theirs: socket.socket) -> list[bytes]:
    """Every record the server can read now, one plaintext per record (OpenSSL hands
    over one record per SSL_read when the buffer is larger)."""
    with contextlib.suppress(BlockingIOError):
        while data := theirs.recv(1 << 20):
            server.bio_write(data)
    records = []
    with contextlib.suppress(SSL.WantReadError):
        while True:
            records.append(server.recv(65536))
    return records


def test_both_tls_paths_write_the_same_records() -> None:
    """Bursts of frames of any size a CSTP frame has: each frame one record, in order,
    the same on both paths (the ciphertext differs: each pair has its own keys)."""
    sizes = [8, 9, 1408, 16384, 1, 100, 16383] + random.Random(15).choices(range(1, 16385), k=300)
    frames = [random.Random(size).randbytes(size) for size in sizes]
    got: dict[str, list[bytes]] = {}
    for path in ("python", "compiled"):
        stream, server, theirs = tls_stream(path)
        received: list[bytes] = []
        for start in range(0, len(frames), 37):  # bursts of 37, one send() each
            burst = frames[start : start + 37]
            while burst:  # what _OUT_LIMIT refused goes once the socket has taken the rest
                del burst[: stream.send_records_nowait(burst)]
                assert stream.flush_nowait()
                received += server_records(server, theirs)
        got[path] = received
        stream.sock.close()
        theirs.close()
    assert got["python"] == got["compiled"] == frames


def read_outcome(
    stream: TlsStream, server: SSL.Connection, theirs: socket.socket, chunks: list[bytes]
) -> tuple[bytes, str]:
    """What the stream reads from ciphertext sent in *chunks*: the plaintext, and how it
    ended ("open", "eof", or the TlsError)."""
    data = b""
    try:
        for chunk in chunks:
            theirs.sendall(chunk)
            while (more := stream.recv_nowait()) is not None:
                if not more:
                    return data, "eof"
                data += more
    except TlsError as exc:
        return data, f"error: {exc}"
    return data, "open"


@pytest.mark.parametrize("ending", ["open", "close_notify", "corrupt", "truncated"])
def test_both_tls_paths_read_the_same_stream(ending: str) -> None:
    """Records of any size from the server, cut anywhere by the socket, and the stream's
    end (a close_notify, a corrupted record, a truncated one): the same plaintext and the
    same ending from both paths (a bounded, deterministic fuzz)."""
    rng = random.Random(f"tls-{ending}")
    for _ in range(20):
        payloads = [rng.randbytes(rng.choice([1, 8, 1408, 16384, rng.randrange(1, 16385)]))
                    for _ in range(rng.randrange(1, 60))]  # fmt: skip
        cuts = sorted(rng.sample(range(1, 400_000), 8))
        mutation = rng.randrange(1 << 30)
        outcomes = []
        for path in ("python", "compiled"):
            stream, server, theirs = tls_stream(path)
            for payload in payloads:
                server.send(payload)
            if ending == "close_notify":
                with contextlib.suppress(SSL.WantReadError):
                    server.shutdown()
            cipher = bytearray(server.bio_read(1 << 22))
            if ending == "corrupt":
                cipher[mutation % len(cipher)] ^= 1 + mutation % 255
            elif ending == "truncated":
                del cipher[len(cipher) - 1 - mutation % 40 :]
            bounds = [0, *(c for c in cuts if c < len(cipher)), len(cipher)]
            chunks = [bytes(cipher[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
            outcomes.append(read_outcome(stream, server, theirs, chunks))
            stream.sock.close()
            theirs.close()
        assert outcomes[0] == outcomes[1]
        if ending in ("open", "close_notify"):
            assert outcomes[0] == (b"".join(payloads), "open" if ending == "open" else "eof")


# -- CSTP DATA frames (worker/proto/cstp.py) -------------------------------------------


@FUZZ
@given(packets=st.lists(st.binary(max_size=40) | st.sampled_from([bytes(1400), bytes(16384)])))
def test_both_encode_the_same_cstp_frames(packets: list[bytes]) -> None:
    assert accel.cstp_data_frames is not None
    assert cstp.encode_data_burst is accel.cstp_data_frames
    assert accel.cstp_data_frames(packets) == cstp.encode_data_frames(packets)


def test_both_refuse_a_payload_too_large_for_cstp() -> None:
    assert accel.cstp_data_frames is not None
    packets = [b"ok", bytes(cstp.MAX_PAYLOAD + 1)]
    for encode in (accel.cstp_data_frames, cstp.encode_data_frames):
        with pytest.raises(ValueError, match="exceeds 16384"):
            encode(packets)


def decoded(data: bytes, cuts: list[int]) -> tuple[list[tuple[cstp.PacketType, bytes]], str]:
    """What a CstpDecoder makes of *data* fed in pieces cut at *cuts*: the frames, and
    the error that ended it ("" if none), and what it still holds."""
    decoder = cstp.CstpDecoder()
    frames: list[tuple[cstp.PacketType, bytes]] = []
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    try:
        for a, b in zip(bounds, bounds[1:], strict=False):
            frames += decoder.feed_pairs_untrusted(data[a:b])
    except cstp.CstpError as exc:
        return frames, f"error: {exc}"
    return frames, f"holds {decoder.buffered}"


def data_frame(payload: bytes) -> bytes:
    return cstp.encode_data(payload)


@FUZZ
@given(
    pieces=st.lists(
        st.binary(max_size=40).map(data_frame)
        | st.sampled_from([data_frame(bytes(1400)), data_frame(bytes(16384))])
        | cstp_streams(),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 40_000), max_size=4),
)
def test_both_read_the_same_cstp_frames(pieces: list[bytes], cuts: list[int]) -> None:
    """Runs of DATA frames (read in C) mixed with every other kind and with malformed
    frames (read in Python), cut anywhere: the same frames, the same error."""
    data = b"".join(pieces)
    compiled_run = cstp.data_pairs
    assert compiled_run is not None
    compiled = decoded(data, cuts)
    try:
        cstp.data_pairs = None  # the Python path
        python = decoded(data, cuts)
    finally:
        cstp.data_pairs = compiled_run
    assert python == compiled
