"""The DTLS client handshakes and record layer: replayed against bytes captured from
OpenSSL, and in memory against tests/unit/dtls_peer.py with a fake clock (loss,
reordering, duplication, replays, forgeries, every failure class)."""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from dtls_peer import FakeServer, ServerConfig, encode_fragment
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto.dtls_connection import (
    ConnectionClosed,
    DtlsConnection,
    DtlsParams,
    FinishedMismatch,
    HandshakeComplete,
    HandshakeTimeout,
    IllegalParameter,
    Mode,
    NotResumed,
    PeerAlert,
    SequenceExhausted,
    State,
    UnexpectedMessage,
)
from sepconnect.worker.proto.dtls_handshake import (
    MAX_MESSAGE,
    MAX_PENDING,
    AlertDescription,
    HandshakeType,
    fragments_untrusted,
)
from sepconnect.worker.proto.dtls_records import ContentType, encode_record, records_untrusted

VECTORS = Path(__file__).parent / "vectors"
CS = dc.CipherSuite
SID = b"\x33" * 32


def psk_params(**kw: object) -> DtlsParams:
    args: dict[str, object] = {
        "mode": Mode.PSK,
        "session_id": SID,
        "suites": dc.PSK_SUITES,
        "psk": b"\x11" * 32,
    }
    args.update(kw)
    return DtlsParams(**args)  # type: ignore[arg-type]


def resume_params(suite: dc.CipherSuite, version: int = dc.DTLS1_2, **kw: object) -> DtlsParams:
    args: dict[str, object] = {
        "mode": Mode.RESUME,
        "session_id": SID,
        "suites": (suite,),
        "version": version,
        "master_secret": b"\x22" * 48,
    }
    args.update(kw)
    return DtlsParams(**args)  # type: ignore[arg-type]


Filter = Callable[[int, bytes], list[bytes]]


def passthrough(_i: int, d: bytes) -> list[bytes]:
    return [d]


class Pair:
    """Client and fake server joined by a lossy in-memory link and a fake clock."""

    def __init__(
        self,
        params: DtlsParams,
        server: ServerConfig,
        *,
        to_server: Filter = passthrough,
        to_client: Filter = passthrough,
    ) -> None:
        self.now = 1000.0
        self.client = DtlsConnection(params, random=os.urandom)
        self.server = FakeServer(server)
        self.to_server = to_server
        self.to_client = to_client
        self.counter = itertools.count()
        self.events: list[object] = []
        self.app: list[bytes] = []

    def pump(self, rounds: int = 50) -> None:
        """Deliver everything; when idle, jump the clock to the client's timer."""
        if self.client.state is State.START:
            self.client.connect(self.now)
        for _ in range(rounds):
            moved = False
            for d in self.client.datagrams_to_send():
                for x in self.to_server(next(self.counter), d):
                    self.server.receive(x)
            for d in self.server.datagrams():
                for x in self.to_client(next(self.counter), d):
                    moved = True
                    self.app += self.client.receive_datagrams_untrusted([x], self.now)
            while (e := self.client.next_event()) is not None:
                self.events.append(e)
            if moved:
                continue
            timer = self.client.get_timer()
            if timer is None:
                return
            self.now = max(self.now, timer)
            self.client.handle_timer(self.now)
            while (e := self.client.next_event()) is not None:
                self.events.append(e)

    def send_app(self, payload: bytes) -> None:
        """Application data from the client, through the link to the server."""
        for d in self.client.seal_data([payload]):
            for x in self.to_server(next(self.counter), d):
                self.server.receive(x)

    @property
    def closed_event(self) -> ConnectionClosed:
        closed = [e for e in self.events if isinstance(e, ConnectionClosed)]
        assert closed, self.events
        return closed[0]


# --------------------------------------------------------------------------- OpenSSL capture


@pytest.mark.parametrize("name", ["aes128gcm", "chacha20"])
def test_replays_a_handshake_captured_against_openssl(name: str) -> None:
    """Same random, same ClientHellos; OpenSSL's real answers (HelloVerifyRequest,
    ServerHello+ServerHelloDone with EMS, CCS+Finished, data) must be accepted and our
    flights must be byte-identical to what OpenSSL accepted."""
    v = json.loads((VECTORS / f"openssl-3.0-dtls12-psk-{name}.json").read_text())
    randoms = iter([bytes.fromhex(v["client_random"])])
    conn = DtlsConnection(
        DtlsParams(
            mode=Mode.PSK,
            session_id=bytes.fromhex(v["session_id"]),
            suites=(CS[v["suite"]],),
            psk=bytes.fromhex(v["psk"]),
        ),
        random=lambda n: next(randoms),
    )
    conn.connect(0.0)
    sent = [d.hex() for d in conn.datagrams_to_send()]
    app: list[bytes] = []
    for datagram in v["server_datagrams"]:
        app += conn.receive_datagrams_untrusted([bytes.fromhex(datagram)], 0.1)
        sent += [d.hex() for d in conn.datagrams_to_send()]
        if conn.established and len(sent) < len(v["client_datagrams"]):
            sent += [d.hex() for d in conn.seal_data([b"hello from sepconnect\n"])]
    assert conn.established
    assert conn.ems is v["extended_master_secret"]
    assert conn._master.hex() == v["master_secret_from_keylog"]
    assert sent == v["client_datagrams"]
    assert app == [v["server_app_data"].encode()]


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("suite", dc.PSK_SUITES)
@pytest.mark.parametrize("ems", [True, False])
@pytest.mark.parametrize("hello_verify", [False, True])
def test_psk_handshake_and_data_both_ways(suite: CS, ems: bool, hello_verify: bool) -> None:
    pair = Pair(
        psk_params(), ServerConfig("psk", suites=(suite,), ems=ems, hello_verify=hello_verify)
    )
    pair.pump()
    (done,) = [e for e in pair.events if isinstance(e, HandshakeComplete)]
    assert done.suite.suite == suite
    assert done.extended_master_secret is ems
    assert pair.server.established
    pair.send_app(b"\x00ping")
    pair.server.send_app(b"\x00pong")
    pair.pump()
    assert pair.server.received == [b"\x00ping"]
    assert pair.app == [b"\x00pong"]


def test_psk_identity_hint_is_accepted() -> None:
    hint = (HandshakeType.SERVER_KEY_EXCHANGE, b"\x00\x04hint")
    pair = Pair(psk_params(), ServerConfig("psk", extra_messages=[hint]))
    pair.pump()
    assert pair.client.established


@pytest.mark.parametrize(
    ("suite", "version"),
    [
        (CS.RSA_AES_128_GCM_SHA256, dc.DTLS1_2),
        (CS.RSA_AES_256_GCM_SHA384, dc.DTLS1_2),
        (CS.ECDHE_RSA_AES_128_GCM_SHA256, dc.DTLS1_2),
        (CS.ECDHE_RSA_AES_256_GCM_SHA384, dc.DTLS1_2),
        (CS.RSA_AES_128_CBC_SHA, dc.DTLS_BAD_VER),
        (CS.RSA_AES_256_CBC_SHA, dc.DTLS_BAD_VER),
    ],
)
@pytest.mark.parametrize("hello_verify", [False, True])
def test_resumed_session_handshake(suite: CS, version: int, hello_verify: bool) -> None:
    pair = Pair(
        resume_params(suite, version),
        ServerConfig("resume", suites=(suite,), version=version, hello_verify=hello_verify),
    )
    pair.pump()
    assert pair.client.established
    assert pair.server.established
    assert pair.client.version == version
    pair.send_app(b"\x00up")
    pair.server.send_app(b"\x00down")
    pair.pump()
    assert pair.server.received == [b"\x00up"]
    assert pair.app == [b"\x00down"]


def test_dtls09_change_cipher_spec_carries_a_message_sequence() -> None:
    pair = Pair(
        resume_params(CS.RSA_AES_128_CBC_SHA, dc.DTLS_BAD_VER),
        ServerConfig("resume", suites=(CS.RSA_AES_128_CBC_SHA,), version=dc.DTLS_BAD_VER),
    )
    pair.client.connect(pair.now)
    (hello,) = pair.client.datagrams_to_send()
    assert hello[1:3] == b"\x01\x00"  # record version 0x0100
    pair.server.receive(hello)
    for d in pair.server.datagrams():
        pair.client.receive_datagrams_untrusted([d], pair.now)
    (final,) = pair.client.datagrams_to_send()
    ccs, fin = records_untrusted(final)
    # ClientHello took message_seq 0; the CCS takes 1 (OpenSSL's DTLS1_BAD_VER), Finished 2
    assert (ccs.ctype, ccs.body, ccs.epoch) == (20, b"\x01\x00\x01", 0)
    assert (fin.ctype, fin.epoch, fin.seq) == (22, 1, 0)


# --------------------------------------------------------------------------- loss etc.


def drop(indices: set[int]) -> Filter:
    return lambda i, d: [] if i in indices else [d]


@pytest.mark.parametrize("lost", [{0}, {1}, {2}, {3}, {0, 2}, {1, 3, 4}])
def test_psk_handshake_survives_loss(lost: set[int]) -> None:
    pair = Pair(psk_params(), ServerConfig("psk", hello_verify=True), to_server=drop(lost))
    start = pair.now
    pair.pump()
    assert pair.client.established, pair.events
    assert pair.now - start < 5.0


@pytest.mark.parametrize("lost", [{0}, {1}, {2}, {1, 2}])
def test_psk_handshake_survives_server_side_loss(lost: set[int]) -> None:
    pair = Pair(psk_params(), ServerConfig("psk"), to_client=drop(lost))
    pair.pump()
    assert pair.client.established, pair.events


def test_resume_final_flight_lost_is_sent_again_when_the_server_repeats() -> None:
    suite = CS.RSA_AES_128_GCM_SHA256
    pair = Pair(resume_params(suite), ServerConfig("resume", suites=(suite,)), to_server=drop({2}))
    pair.pump()
    assert pair.client.established
    assert not pair.server.established
    pair.server.send_flight()  # the server's retransmission timer fires
    pair.now += 1
    pair.pump()
    assert pair.server.established


def test_duplicated_and_reordered_server_datagrams() -> None:
    def dup_reverse(_i: int, d: bytes) -> list[bytes]:
        recs = records_untrusted(d)
        if len(recs) < 2:
            return [d, d]
        # split a multi-record datagram into one per record, reversed, each twice
        parts = [encode_record(r.ctype, r.version, r.epoch, r.seq, r.body) for r in recs]
        return [p for p in reversed(parts) for _ in range(2)]

    pair = Pair(psk_params(), ServerConfig("psk", hello_verify=True), to_client=dup_reverse)
    pair.pump()
    assert pair.client.established, pair.events


def refragment(seed: int) -> Filter:
    """Cut every plaintext handshake message of the server into pieces: out of order,
    overlapping, duplicated, with empty ones, each piece its own datagram (RFC 6347
    §4.2.3). Other records follow in their order (encrypted ones cannot be cut)."""
    rng = random.Random(seed)

    def cut(_i: int, d: bytes) -> list[bytes]:
        pieces: list[bytes] = []
        rest: list[bytes] = []
        for r in records_untrusted(d):
            if r.epoch or r.ctype != ContentType.HANDSHAKE:
                rest.append(encode_record(r.ctype, r.version, r.epoch, r.seq, r.body))
                continue
            for f in fragments_untrusted(r.body):
                n = len(f.data)
                cuts = sorted({0, n, *rng.sample(range(n + 1), min(n + 1, 4))})
                ranges = [(a, b) for a, b in itertools.pairwise(cuts) if a < b] or [(0, 0)]
                if n:
                    a = rng.randrange(n)
                    ranges += [(a, rng.randint(a + 1, n)), (a, a), rng.choice(ranges)]
                rng.shuffle(ranges)
                for a, b in ranges:
                    piece = encode_fragment(f.msg_type, n, f.message_seq, a, f.data[a:b])
                    pieces.append(encode_record(r.ctype, r.version, 0, r.seq, piece))
        return pieces + rest

    return cut


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("params", "server"),
    [
        (psk_params(), ServerConfig("psk", hello_verify=True)),
        (
            resume_params(CS.RSA_AES_128_GCM_SHA256),
            ServerConfig("resume", suites=(CS.RSA_AES_128_GCM_SHA256,)),
        ),
        (
            resume_params(CS.RSA_AES_128_CBC_SHA, dc.DTLS_BAD_VER),
            ServerConfig("resume", suites=(CS.RSA_AES_128_CBC_SHA,), version=dc.DTLS_BAD_VER),
        ),
    ],
    ids=["psk", "resume", "dtls0.9"],
)
def test_fragmented_server_flights_reassemble(
    seed: int, params: DtlsParams, server: ServerConfig
) -> None:
    """Both sides' Finished cover the messages as reassembled: byte-identical or no
    handshake."""
    pair = Pair(params, server, to_client=refragment(seed))
    pair.pump()
    assert pair.client.established, pair.events
    assert pair.server.established


# The hostile flight of issue 13 (F5): 48,000 fragments in 400 datagrams of 1,453 bytes
# (0.58 MB), aimed at the message the client waits for. Each shape is the whole flight.
_FLOOD = 48_000
_PER_DATAGRAM = 120


def _flood_fragment(shape: str, i: int) -> bytes:
    sh = HandshakeType.SERVER_HELLO
    if shape == "empty":  # zero-length fragments: 12 bytes each
        return encode_fragment(sh, 100, 0, 0, b"")
    if shape == "duplicate":  # the same byte again and again
        return encode_fragment(sh, 100, 0, 0, b"x")
    if shape == "gaps":  # one-byte pieces with gaps: as many ranges as it can get
        return encode_fragment(sh, MAX_MESSAGE, 0, 2 * i % MAX_MESSAGE, b"x")
    # "ahead": every pending message slot, each as large as allowed
    return encode_fragment(sh, MAX_MESSAGE, i % MAX_PENDING, 2 * i % MAX_MESSAGE, b"x")


def _flood(shape: str) -> list[bytes]:
    return [
        encode_record(
            22,
            dc.DTLS1_2,
            0,
            start,
            b"".join(_flood_fragment(shape, i) for i in range(start, start + _PER_DATAGRAM)),
        )
        for start in range(0, _FLOOD, _PER_DATAGRAM)
    ]


def _receive_flood(conn: DtlsConnection, flood: list[bytes], now: float, bound: float) -> float:
    """CPU seconds to take the flood; stops early once past *bound* (so that a
    quadratic reassembly fails in a second, not in minutes)."""
    start = time.process_time()
    for datagram in flood:
        conn.receive_datagrams_untrusted([datagram], now)
        if time.process_time() - start > bound:
            break
    return time.process_time() - start


@pytest.mark.parametrize("shape", ["empty", "duplicate", "gaps", "ahead"])
def test_a_flood_of_fragments_costs_little_and_the_handshake_completes(shape: str) -> None:
    """Issue 13, F5: before the fix the "empty" flood took 23-220 s of CPU (depending
    on how it was spread over messages) and grew memory with every fragment."""
    flood = _flood(shape)
    assert 0.55e6 < sum(map(len, flood)) < 0.65e6
    pair = Pair(psk_params(), ServerConfig("psk"))
    pair.client.connect(pair.now)
    cpu = _receive_flood(pair.client, flood, pair.now, bound=1.0)
    print(f"{shape}: {_FLOOD} fragments in {cpu * 1000:.0f} ms of CPU")
    assert cpu < 1.0  # measured: 15-60 ms
    assert pair.client.state is State.WAIT_SERVER_HELLO
    # the memory it holds on to (the datagrams themselves are the caller's)
    other = Pair(psk_params(), ServerConfig("psk"))
    other.client.connect(other.now)
    tracemalloc.start()
    try:
        _receive_flood(other.client, flood, other.now, bound=10.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"{shape}: peak {peak / 1024:.0f} KiB")
    assert peak < 256 * 1024  # the flight budget (32 KiB) and one record's fragments
    pair.pump()  # the real server's flight still gets through
    assert pair.client.established, pair.events


def test_replayed_and_forged_data_records_are_dropped() -> None:
    pair = Pair(psk_params(), ServerConfig("psk"))
    pair.pump()
    first = pair.server.app_datagram(b"\x00one")
    second = pair.server.app_datagram(b"\x00two")
    now = pair.now
    assert pair.client.receive_datagrams_untrusted([second], now) == [b"\x00two"]
    assert pair.client.receive_datagrams_untrusted([first], now) == [b"\x00one"]  # reordered: fine
    assert pair.client.receive_datagrams_untrusted([first], now) == []  # replay
    forged = bytearray(pair.server.app_datagram(b"\x00three"))
    forged[-1] ^= 0x40
    assert pair.client.receive_datagrams_untrusted([bytes(forged)], now) == []
    assert pair.client.replays_dropped == 1
    assert pair.client.bad_records == 1
    assert pair.client.receive_datagrams_untrusted(
        [pair.server.app_datagram(b"\x00four")], now
    ) == [b"\x00four"]
    assert pair.client.established


def test_running_out_of_sequence_numbers_ends_the_connection_without_an_alert() -> None:
    pair = Pair(psk_params(), ServerConfig("psk"))
    pair.pump()
    pair.client._write_seq[1] = 2**48 - 2
    datagrams = pair.client.seal_data([b"\x00a", b"\x00b", b"\x00c"])
    assert len(datagrams) == 2  # what still had a sequence number
    for d in datagrams:
        pair.server.receive(d)
    assert pair.server.received == [b"\x00a", b"\x00b"]
    assert pair.client.closed
    assert pair.client.datagrams_to_send() == []  # no number is left for an alert
    closed = pair.client.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, SequenceExhausted)


def test_plaintext_alert_after_the_handshake_is_ignored() -> None:
    pair = Pair(psk_params(), ServerConfig("psk"))
    pair.pump()
    fake = encode_record(21, dc.DTLS1_2, 0, 99, bytes((2, AlertDescription.HANDSHAKE_FAILURE)))
    pair.client.receive_datagrams_untrusted([fake], pair.now)
    assert pair.client.established


# --------------------------------------------------------------------------- failures


def test_suite_not_offered_is_illegal_parameter() -> None:
    pair = Pair(
        psk_params(suites=(CS.PSK_AES_128_GCM_SHA256,)),
        ServerConfig("psk", choose_suite=int(CS.PSK_AES_256_GCM_SHA384)),
    )
    pair.pump()
    assert isinstance(pair.closed_event.error, IllegalParameter)
    assert pair.server.alerts == [bytes((2, AlertDescription.ILLEGAL_PARAMETER))]


def test_unknown_suite_chosen_is_illegal_parameter() -> None:
    pair = Pair(psk_params(), ServerConfig("psk", choose_suite=0x008C))  # PSK-AES128-CBC-SHA
    pair.pump()
    assert isinstance(pair.closed_event.error, IllegalParameter)


def test_wrong_psk_means_no_answer() -> None:
    """A server with another PSK cannot authenticate our Finished record and drops it
    silently (as DTLS does with bad records): the attempt times out."""
    pair = Pair(psk_params(), ServerConfig("psk", psk=b"\x99" * 32))
    pair.pump()
    assert isinstance(pair.closed_event.error, HandshakeTimeout)
    assert not pair.server.established


@pytest.mark.parametrize("mode", ["psk", "resume"])
def test_wrong_verify_data_is_finished_mismatch(mode: str) -> None:
    if mode == "psk":
        pair = Pair(psk_params(), ServerConfig("psk", bad_finished=True))
    else:
        suite = CS.RSA_AES_128_GCM_SHA256
        pair = Pair(
            resume_params(suite), ServerConfig("resume", suites=(suite,), bad_finished=True)
        )
    pair.pump()
    assert isinstance(pair.closed_event.error, FinishedMismatch)
    assert pair.server.alerts == [bytes((2, AlertDescription.DECRYPT_ERROR))]


def test_wrong_master_secret_in_resume_mode_means_no_answer() -> None:
    suite = CS.RSA_AES_128_GCM_SHA256
    pair = Pair(
        resume_params(suite), ServerConfig("resume", suites=(suite,), master_secret=b"x" * 48)
    )
    pair.pump()
    assert isinstance(pair.closed_event.error, HandshakeTimeout)


def test_full_handshake_instead_of_resumption_is_refused() -> None:
    suite = CS.RSA_AES_128_GCM_SHA256
    pair = Pair(
        resume_params(suite), ServerConfig("resume", suites=(suite,), echo_session_id=False)
    )
    pair.pump()
    assert isinstance(pair.closed_event.error, NotResumed)


def test_certificate_is_an_unexpected_message() -> None:
    cert = (HandshakeType.CERTIFICATE, b"\x00\x00\x00")
    pair = Pair(psk_params(), ServerConfig("psk", extra_messages=[cert]))
    pair.pump()
    assert isinstance(pair.closed_event.error, UnexpectedMessage)


def test_no_answer_is_a_handshake_timeout_with_backoff() -> None:
    sent_at: list[float] = []
    pair: Pair

    def blackhole(_i: int, _d: bytes) -> list[bytes]:
        sent_at.append(pair.now)
        return []

    pair = Pair(psk_params(), ServerConfig("psk"), to_server=blackhole)
    start = pair.now
    pair.pump()
    assert isinstance(pair.closed_event.error, HandshakeTimeout)
    assert pair.now - start == pytest.approx(5.0)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert gaps[:3] == pytest.approx([0.4, 0.8, 1.6])
    assert max(gaps) <= 2.0


def plaintext_alert(description: int, level: int = 2, version: int = dc.DTLS1_2) -> bytes:
    return encode_record(21, version, 0, 0, bytes((level, description)))


@pytest.mark.parametrize(
    ("params", "server"),
    [
        (psk_params(), ServerConfig("psk", hello_verify=True)),
        (
            resume_params(CS.RSA_AES_128_CBC_SHA, dc.DTLS_BAD_VER),
            ServerConfig("resume", suites=(CS.RSA_AES_128_CBC_SHA,), version=dc.DTLS_BAD_VER),
        ),
    ],
    ids=["psk", "dtls0.9"],
)
def test_a_plaintext_alert_does_not_end_the_handshake(
    params: DtlsParams, server: ServerConfig
) -> None:
    """Issue 13, F16: a forged alert in epoch 0, before and in the middle of the
    handshake, is not the end of it (RFC 6347 §4.1.2.7)."""
    forged = [
        plaintext_alert(AlertDescription.HANDSHAKE_FAILURE, version=params.version),
        plaintext_alert(AlertDescription.CLOSE_NOTIFY, level=1, version=params.version),
    ]

    def alert_first(_i: int, d: bytes) -> list[bytes]:
        return [*forged, d]

    pair = Pair(params, server, to_client=alert_first)
    pair.client.connect(pair.now)
    for d in forged:
        pair.client.receive_datagrams_untrusted([d], pair.now)
    pair.pump()
    assert pair.client.established, pair.events
    assert not any(isinstance(e, ConnectionClosed) for e in pair.events)


def test_a_plaintext_alert_is_the_reason_when_the_deadline_passes() -> None:
    """A server that really refuses sends its alert and nothing else: the attempt ends
    at its normal deadline, naming the alert rather than a timeout."""
    pair = Pair(psk_params(), ServerConfig("psk"), to_client=lambda _i, _d: [])
    pair.client.connect(pair.now)
    start = pair.now
    pair.client.receive_datagrams_untrusted(
        [plaintext_alert(AlertDescription.HANDSHAKE_FAILURE)], pair.now
    )
    assert not pair.client.closed
    pair.pump()
    err = pair.closed_event.error
    assert isinstance(err, PeerAlert)
    assert not err.authenticated
    assert "handshake_failure" in str(err)
    assert pair.now - start == pytest.approx(pair.client.params.handshake_timeout)


def test_an_authenticated_alert_ends_the_connection_at_once() -> None:
    pair = Pair(psk_params(), ServerConfig("psk"))
    pair.pump()
    pair.server.send_alert(AlertDescription.INTERNAL_ERROR, epoch=1)
    pair.pump()
    err = pair.closed_event.error
    assert isinstance(err, PeerAlert)
    assert err.authenticated
    assert str(err) == "server sent internal_error"


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="PSK"):
        DtlsParams(mode=Mode.PSK, session_id=SID, suites=dc.PSK_SUITES)
    with pytest.raises(ValueError, match="0.9"):
        resume_params(CS.RSA_AES_128_GCM_SHA256, dc.DTLS_BAD_VER)
    with pytest.raises(ValueError, match="session id"):
        psk_params(session_id=b"")


@settings(max_examples=300)
@given(
    state=st.sampled_from(["start", "hello", "established"]),
    data=st.binary(max_size=300),
)
def test_garbage_never_raises(state: str, data: bytes) -> None:
    pair = Pair(psk_params(), ServerConfig("psk"))
    if state != "start":
        pair.client.connect(pair.now)
    if state == "established":
        pair.pump()
    pair.client.receive_datagrams_untrusted([data], pair.now)
    # wrapped in a record of each type too
    for ctype in (20, 21, 22, 23):
        for epoch in (0, 1):
            pair.client.receive_datagrams_untrusted(
                [encode_record(ctype, dc.DTLS1_2, epoch, 7, data)], pair.now
            )


def test_a_burst_gives_what_one_datagram_at_a_time_gives() -> None:
    """A burst through receive_datagrams_untrusted against the same datagrams as
    bursts of one: reordering, replays (also of identical bytes within the burst), a
    forged record, a truncated one, two records in one datagram, an empty burst."""
    pairs = [Pair(psk_params(), ServerConfig("psk")) for _ in range(2)]
    for p in pairs:
        p.pump()
    bursts: list[list[bytes]] = []
    for p in pairs:
        d = [p.server.app_datagram(b"\x00" + bytes([i]) * (i + 1)) for i in range(6)]
        forged = bytearray(d[4])
        forged[20] ^= 1
        two = d[5] + p.server.app_datagram(b"\x00" + b"\x07" * 8)
        bursts.append([d[1], d[0], d[0], d[2], bytes(forged), d[3][:-1], d[1], two, d[3]])
    one_by_one = pairs[0].client
    expected: list[bytes] = []
    for datagram in bursts[0]:
        expected += one_by_one.receive_datagrams_untrusted([datagram], pairs[0].now)
    burst = pairs[1].client
    got = burst.receive_datagrams_untrusted(bursts[1], pairs[1].now)
    assert burst.receive_datagrams_untrusted([], pairs[1].now) == []
    assert got == expected
    assert got == [b"\x00" + bytes([i]) * (i + 1) for i in (1, 0, 2, 5, 7, 3)]
    for attr in ("replays_dropped", "bad_records", "records_in"):
        assert getattr(burst, attr) == getattr(one_by_one, attr), attr
