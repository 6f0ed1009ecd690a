"""CSTP session state with a fake clock: DPD, keepalive, control packets.

Timer rules: PROTOCOL.md §5.3 (openconnect mainloop.c keepalive_action).
A tiny fake gateway built from the same framing code plays the server.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.worker.proto.cstp import (
    CstpDecoder,
    CstpError,
    Frame,
    PacketType,
    encode_data,
    encode_frame,
)
from sepconnect.worker.proto.session import (
    CstpSession,
    DpdTimeout,
    ServerDisconnected,
    ServerTerminated,
)

PKT = bytes.fromhex("450000140000400040fd0000c6120001c6120002")
DPD_REQ = encode_frame(PacketType.DPD_REQ)
DPD_RESP = encode_frame(PacketType.DPD_RESP)
KEEPALIVE = encode_frame(PacketType.KEEPALIVE)


def sent_types(session: CstpSession) -> list[PacketType]:
    dec = CstpDecoder()
    out: list[PacketType] = []
    for frame in session.frames_to_send():
        decoded = dec.feed_untrusted(frame)
        assert len(decoded) == 1  # one whole frame per element
        out.append(decoded[0].type)
    return out


def test_data_both_ways_and_counters() -> None:
    s = CstpSession(dpd=None, keepalive=None, now=0.0)
    s.send_packets([PKT, PKT[:10]], 1.0)
    assert s.frames_to_send() == [encode_data(PKT), encode_data(PKT[:10])]
    assert s.frames_to_send() == []
    assert (s.tx_packets, s.tx_bytes) == (2, 30)
    wire = encode_data(PKT) + KEEPALIVE + encode_data(b"\x60" * 40)
    assert s.receive_data_untrusted(wire[:5], 2.0) == []
    assert s.receive_data_untrusted(wire[5:], 2.0) == [PKT, b"\x60" * 40]
    assert (s.rx_packets, s.rx_bytes) == (2, 60)
    assert s.next_event() is None
    assert s.get_timer() is None


def test_dpd_request_timing() -> None:
    s = CstpSession(dpd=30, keepalive=None, now=100.0)
    assert s.get_timer() == 130.0
    s.handle_timer(129.9)
    assert s.frames_to_send() == []
    s.handle_timer(130.0)
    assert s.frames_to_send() == [DPD_REQ]
    # outstanding: repeated every dpd/2, dead at last_rx + 2*dpd
    assert s.get_timer() == 145.0
    s.handle_timer(140.0)
    assert s.frames_to_send() == []
    s.handle_timer(145.0)
    assert s.frames_to_send() == [DPD_REQ]
    assert s.get_timer() == 160.0
    s.handle_timer(160.0)
    assert s.frames_to_send() == []
    assert s.next_event() == DpdTimeout()
    assert s.next_event() is None
    assert s.closed
    assert s.get_timer() is None


def test_dpd_answered_resets() -> None:
    s = CstpSession(dpd=30, keepalive=None, now=0.0)
    s.handle_timer(30.0)
    assert s.frames_to_send() == [DPD_REQ]
    assert s.receive_data_untrusted(DPD_RESP, 31.0) == []
    assert s.get_timer() == 61.0
    s.handle_timer(60.0)
    assert s.frames_to_send() == []
    assert s.next_event() is None


def test_any_packet_is_proof_of_life() -> None:
    s = CstpSession(dpd=30, keepalive=None, now=0.0)
    s.receive_data_untrusted(encode_data(PKT), 25.0)
    assert s.get_timer() == 55.0
    s.handle_timer(50.0)
    assert s.frames_to_send() == []
    # sending does not count as proof of life
    s.send_packets([PKT], 54.0)
    s.frames_to_send()
    s.handle_timer(55.0)
    assert s.frames_to_send() == [DPD_REQ]


def test_dpd_dead_even_if_timer_fires_late() -> None:
    s = CstpSession(dpd=10, keepalive=None, now=0.0)
    s.handle_timer(500.0)
    assert s.next_event() == DpdTimeout()
    assert s.frames_to_send() == []


def test_keepalive() -> None:
    s = CstpSession(dpd=None, keepalive=20, now=0.0)
    assert s.get_timer() == 20.0
    s.send_packets([PKT], 15.0)
    s.frames_to_send()
    assert s.get_timer() == 35.0
    s.handle_timer(20.0)
    assert s.frames_to_send() == []
    s.handle_timer(35.0)
    assert s.frames_to_send() == [KEEPALIVE]
    assert s.get_timer() == 55.0
    # received traffic does not postpone a keepalive (it is client -> server)
    s.receive_data_untrusted(encode_data(PKT), 50.0)
    assert s.get_timer() == 55.0


def test_no_keepalive_while_output_waits() -> None:
    # The data path's backlog is not empty (the server reads nothing): a keepalive
    # would only wait with it, one more per period.
    s = CstpSession(dpd=None, keepalive=20, now=0.0)
    s.handle_timer(20.0, output_waiting=True)
    assert s.frames_to_send() == []
    assert s.get_timer() == 40.0
    s.handle_timer(40.0)
    assert s.frames_to_send() == [KEEPALIVE]


def test_dpd_and_keepalive_together() -> None:
    s = CstpSession(dpd=30, keepalive=40, now=0.0)
    assert s.get_timer() == 30.0
    s.handle_timer(30.0)
    assert sent_types(s) == [PacketType.DPD_REQ]
    # the DPD counts as transmission for the keepalive
    assert s.get_timer() == 45.0
    s.receive_data_untrusted(DPD_RESP, 31.0)
    assert s.get_timer() == 61.0
    s.handle_timer(61.0)
    assert sent_types(s) == [PacketType.DPD_REQ]
    s.receive_data_untrusted(DPD_RESP, 62.0)
    assert s.get_timer() == 92.0
    s.handle_timer(92.0)
    assert sent_types(s) == [PacketType.DPD_REQ]


def test_nonpositive_timers_disabled() -> None:
    s = CstpSession(dpd=0, keepalive=-1, now=0.0)
    assert s.get_timer() is None
    s.handle_timer(1e9)
    assert s.frames_to_send() == []
    assert s.next_event() is None


def test_server_dpd_request_echoed() -> None:
    s = CstpSession(dpd=None, keepalive=30, now=0.0)
    probe = b"\x5a" * 100
    assert s.receive_data_untrusted(encode_frame(PacketType.DPD_REQ, probe), 5.0) == []
    assert s.frames_to_send() == [encode_frame(PacketType.DPD_RESP, probe)]
    assert s.last_tx == 5.0
    assert (s.rx_packets, s.tx_packets) == (0, 0)


def test_server_disconnect_event() -> None:
    s = CstpSession(dpd=30, keepalive=30, now=0.0)
    wire = (
        encode_data(PKT)
        + encode_frame(PacketType.DISCONNECT, b"\xb0Server shutdown")
        + encode_data(PKT)
    )
    assert s.receive_data_untrusted(wire, 1.0) == [PKT]
    ev = s.next_event()
    assert isinstance(ev, ServerDisconnected)
    assert ev.code == 0xB0
    assert "Server shutdown" in ev.reason
    assert s.closed
    assert s.get_timer() is None
    assert s.receive_data_untrusted(encode_data(PKT), 2.0) == []
    s.send_packets([PKT], 2.0)
    assert s.frames_to_send() == []


@pytest.mark.parametrize(
    ("payload", "code", "text"),
    [
        (b"", None, "Server disconnected the session"),
        (b"\x91", 0x91, "reconnect"),
        (b"\xb0\x1b[31mred\x07", 0xB0, "[31mred"),
        (b"\x42", 0x42, "0x42"),
    ],
)
def test_disconnect_reasons(payload: bytes, code: int | None, text: str) -> None:
    s = CstpSession(dpd=None, keepalive=None, now=0.0)
    s.receive_data_untrusted(encode_frame(PacketType.DISCONNECT, payload), 0.0)
    ev = s.next_event()
    assert isinstance(ev, ServerDisconnected)
    assert ev.code == code
    assert text in ev.reason
    assert ev.reason.isprintable()


def test_server_terminate_event() -> None:
    s = CstpSession(dpd=30, keepalive=None, now=0.0)
    s.receive_data_untrusted(encode_frame(PacketType.TERMINATE), 1.0)
    assert s.next_event() == ServerTerminated()
    assert s.closed


def test_logoff_disconnect() -> None:
    s = CstpSession(dpd=30, keepalive=30, now=0.0)
    s.send_packets([PKT], 1.0)
    s.disconnect(logoff=True)
    frames = s.frames_to_send()
    assert frames[0] == encode_data(PKT)
    assert frames[1] == b"STF\x01\x00\x12\x05\x00\xb0Client disconnect"
    assert s.closed
    assert s.get_timer() is None
    s.disconnect(logoff=True)
    assert s.frames_to_send() == []


def test_detach_sends_nothing() -> None:
    s = CstpSession(dpd=30, keepalive=30, now=0.0)
    s.disconnect(logoff=False)
    assert s.frames_to_send() == []
    assert s.closed


def test_malformed_stream_raises() -> None:
    s = CstpSession(dpd=30, keepalive=None, now=0.0)
    with pytest.raises(CstpError):
        s.receive_data_untrusted(b"HTTP/1.1 200 OK\r\n", 1.0)


class FakeGateway:
    """Server side built from the same framing: echoes DPD, answers pings."""

    def __init__(self) -> None:
        self.decoder = CstpDecoder()
        self.received: list[Frame] = []

    def receive(self, frames: list[bytes]) -> bytes:
        out = b""
        for frame in self.decoder.feed_untrusted(b"".join(frames)):
            self.received.append(frame)
            if frame.type is PacketType.DPD_REQ:
                out += encode_frame(PacketType.DPD_RESP, frame.payload)
            elif frame.type is PacketType.DATA:
                out += encode_data(frame.payload[::-1])
        return out


def test_long_idle_session_with_gateway_stays_up() -> None:
    # keepalive shorter than DPD, else every DPD-REQ would also serve as keepalive
    s = CstpSession(dpd=30, keepalive=20, now=0.0)
    gw = FakeGateway()
    now = 0.0
    for _ in range(200):
        timer = s.get_timer()
        assert timer is not None
        assert timer > now
        now = timer
        s.handle_timer(now)
        reply = gw.receive(s.frames_to_send())
        s.receive_data_untrusted(reply, now + 0.05)
        assert s.next_event() is None
    kinds = {f.type for f in gw.received}
    assert kinds == {PacketType.DPD_REQ, PacketType.KEEPALIVE}
    assert now > 2000


def test_gateway_goes_silent() -> None:
    s = CstpSession(dpd=30, keepalive=None, now=0.0)
    sent = 0
    while (timer := s.get_timer()) is not None:
        s.handle_timer(timer)
        sent += len(s.frames_to_send())
    assert s.next_event() == DpdTimeout()
    assert sent == 2  # at 30 and 45; dead at 60


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("rx"), st.binary(max_size=40)),
            st.tuples(st.just("tx"), st.binary(max_size=40)),
            st.tuples(st.just("timer"), st.just(b"")),
        ),
        max_size=30,
    ),
    dpd=st.sampled_from([None, 5, 30]),
    keepalive=st.sampled_from([None, 7, 60]),
)
def test_fuzz_session_only_cstp_error(
    steps: list[tuple[str, bytes]], dpd: int | None, keepalive: int | None
) -> None:
    s = CstpSession(dpd=dpd, keepalive=keepalive, now=0.0)
    now = 0.0
    try:
        for kind, data in steps:
            now += 3.0
            if kind == "rx":
                s.receive_data_untrusted(b"STF\x01" + data, now)
            elif kind == "tx":
                s.send_packets([data], now)
            else:
                timer = s.get_timer()
                if timer is not None:
                    assert timer >= 0
                    s.handle_timer(max(now, timer))
            for frame in s.frames_to_send():
                assert CstpDecoder().feed_untrusted(frame)
    except CstpError:
        pass


# -- sans-I/O rule (STYLE.md §1.5 rule 1) ------------------------------------------

FORBIDDEN = {
    "socket",
    "ssl",
    "OpenSSL",
    "asyncio",
    "time",
    "os",
    "random",
    "select",
    "logging",
    "selectors",
}
PROTO = Path(__file__).resolve().parents[2] / "worker" / "proto"


@pytest.mark.parametrize("module", sorted(p.name for p in PROTO.glob("*.py")))
def test_proto_modules_do_no_io(module: str) -> None:
    tree = ast.parse((PROTO / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, module
    assert "from __future__ import annotations" in (PROTO / module).read_text()
