"""The DTLS channel policy with a fake clock: coming up, fast failover to CSTP on
silence or ICMP, probing and the return, DPD, keepalive, retries and rekey."""

from __future__ import annotations

import os

import pytest
from dtls_peer import FakeServer, ServerConfig

from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto.dtls_channel import (
    AttemptFailed,
    ChannelConfig,
    ChannelState,
    DtlsChannel,
    DtlsDown,
    DtlsUp,
    NewSocket,
)
from sepconnect.worker.proto.dtls_connection import DtlsConnection, DtlsParams, Mode

PARAMS = DtlsParams(mode=Mode.PSK, session_id=b"\x33" * 32, suites=dc.PSK_SUITES, psk=b"\x11" * 32)


class Net:
    """A channel, a server that answers DPD, and a path that can be cut."""

    def __init__(self, config: ChannelConfig | None = None, server: ServerConfig | None = None):
        self.now = 100.0
        self.server_config = server or ServerConfig("psk")
        self.server = FakeServer(self.server_config)
        self.channel = DtlsChannel(
            lambda: DtlsConnection(PARAMS, random=os.urandom), config or ChannelConfig(), self.now
        )
        self.up = True  # path state
        self.events: list[object] = []
        self.to_server: list[bytes] = []  # datagrams that reached the server
        self.dropped = 0  # datagrams sent while the path was cut
        self.received: list[bytes] = []  # packets the channel handed up

    def send(self, *packets: bytes) -> list[bytes]:
        """Tun packets through the channel, sent at once as the link does; returns
        those the channel hands back for CSTP."""
        datagrams, over_cstp = self.channel.seal_packets(list(packets), self.now)
        self._deliver(datagrams)
        return over_cstp

    def _deliver(self, datagrams: list[bytes]) -> None:
        for d in datagrams:
            if self.up:
                self.to_server.append(d)
                self.server.receive(d)
            else:
                self.dropped += 1

    def step(self) -> None:
        """Deliver what is queued (both ways) until quiet."""
        for _ in range(100):
            self._events()  # as the driver: a NewSocket comes before what follows it
            self._deliver(self.channel.datagrams_to_send())
            answers = self.server.datagrams()
            moved = self.up and bool(answers)
            if moved:
                self.received += self.channel.receive_datagrams_untrusted(answers, self.now)
            self._events()
            if not moved:
                return

    def _events(self) -> None:
        while (e := self.channel.next_event()) is not None:
            self.events.append(e)
            if isinstance(e, NewSocket):  # a new socket: the server starts a new session
                self.server = FakeServer(self.server_config)

    def advance(self, until: float) -> None:
        """Run timers up to *until*, delivering traffic as it is produced."""
        self.step()
        while True:
            timer = self.channel.get_timer()
            if timer is None or timer > until:
                self.now = until
                return
            self.now = max(self.now, timer)
            self.channel.handle_timer(self.now)
            self.step()

    def connect(self) -> None:
        self.advance(self.now + 1)
        assert self.channel.usable, self.events

    def of(self, kind: type) -> list[object]:
        return [e for e in self.events if isinstance(e, kind)]


def test_comes_up_on_a_fresh_socket() -> None:
    net = Net()
    net.connect()
    assert isinstance(net.events[0], NewSocket)
    (up,) = net.of(DtlsUp)
    assert up == DtlsUp("DTLS1.2", "PSK-AES128-GCM-SHA256", restored=False)
    assert net.channel.description == "DTLS1.2 PSK-AES128-GCM-SHA256"
    assert net.channel.data_overhead == 1 + 13 + 24


def test_data_both_ways_and_dpd_request_answered() -> None:
    net = Net()
    net.connect()
    assert net.send(b"\x45ip-packet") == []
    net.server.send_app(b"\x00\x45reply")
    net.server.send_app(b"\x03")  # server DPD-REQ
    net.server.send_app(b"\x07")  # keepalive: nothing to hand up
    net.step()
    assert net.server.received[0] == b"\x00\x45ip-packet"
    assert b"\x04" in net.server.received  # our DPD-RESP
    assert net.received == [b"\x45reply"]
    assert (net.channel.tx_packets, net.channel.rx_packets) == (1, 1)


def test_too_large_packets_go_over_cstp() -> None:
    net = Net(ChannelConfig(max_packet=1000))
    net.connect()
    assert net.send(b"x" * 1001) == [b"x" * 1001]
    assert net.send(b"x" * 1000) == []


def test_a_burst_goes_over_dtls_except_what_is_too_large() -> None:
    net = Net(ChannelConfig(max_packet=1000))
    assert net.send(b"\x45early") == [b"\x45early"]  # not up yet
    net.connect()
    burst = [b"\x45a", b"y" * 1001, b"\x45b" * 300, b"\x45c"]
    assert net.send(*burst) == [b"y" * 1001]
    assert net.server.received[-3:] == [b"\x00\x45a", b"\x00" + b"\x45b" * 300, b"\x00\x45c"]
    assert net.channel.tx_packets == 3
    assert net.channel.tx_bytes == 2 + 600 + 2


def test_a_single_packet_is_sealed_for_sending_at_once() -> None:
    net = Net(ChannelConfig(max_packet=1000))
    assert net.channel.seal_packets([b"\x45early"], net.now) == ([], [b"\x45early"])
    net.connect()
    assert net.channel.seal_packets([b"y" * 1001], net.now) == ([], [b"y" * 1001])
    (datagram,), over_cstp = net.channel.seal_packets([b"\x45one"], net.now)
    assert over_cstp == []
    assert not net.channel.has_output  # nothing queued: the caller sends it
    net.server.receive(datagram)
    assert net.server.received[-1] == b"\x00\x45one"
    assert (net.channel.tx_packets, net.channel.tx_bytes) == (1, 4)
    # It counts as traffic that wants an answer, as a burst does: DPD stays armed.
    timer = net.channel.get_timer()
    assert timer is not None
    assert timer <= net.now + 30


def test_running_out_of_sequence_numbers_moves_data_to_cstp() -> None:
    net = Net()
    net.connect()
    assert net.channel.conn is not None
    net.channel.conn._write_seq[1] = 2**48 - 1  # one record left in this session
    assert net.send(b"\x45a", b"\x45b", b"\x45c") == [b"\x45b", b"\x45c"]
    assert net.server.received[-1] == b"\x00\x45a"
    assert (net.channel.tx_packets, net.channel.tx_bytes) == (1, 2)
    assert not net.channel.usable
    net.step()
    (down,) = net.of(DtlsDown)
    assert "exhausted" in down.reason
    net.advance(net.now + 5)
    assert net.channel.usable  # a new session


def test_running_out_of_sequence_numbers_on_a_dpd_answer_moves_data_to_cstp() -> None:
    net = Net()
    net.connect()
    assert net.channel.conn is not None
    net.channel.conn._write_seq[1] = 2**48  # none left
    net.server.send_app(b"\x03")  # DPD-REQ: the answer finds no sequence number
    net.step()
    assert not net.channel.usable
    assert net.send(b"\x45x") == [b"\x45x"]


@pytest.mark.parametrize("traffic_period", [0.01, 0.1, 0.5])
def test_blackhole_fails_over_within_the_bound_and_returns(traffic_period: float) -> None:
    cfg = ChannelConfig()
    net = Net(cfg)
    net.connect()
    net.up = False
    first_loss = net.now
    # the user keeps sending; nothing comes back
    while net.channel.usable and net.now < first_loss + 10:
        net.send(b"\x45data")
        net.advance(net.now + traffic_period)
    assert not net.channel.usable
    failover = net.now - first_loss
    assert failover <= cfg.lost_after + traffic_period
    assert failover <= 3.0
    (down,) = net.of(DtlsDown)
    assert "UDP lost" in down.reason
    assert net.channel.state is ChannelState.LOST
    net.advance(net.now + 5)
    net.up = True
    back = net.now
    net.advance(net.now + cfg.down_probe_interval + 0.01)
    assert net.channel.usable
    assert net.now - back <= 5.0
    assert net.of(DtlsUp)[-1] == DtlsUp("DTLS1.2", "PSK-AES128-GCM-SHA256", restored=True)


def test_probes_while_lost_are_paced() -> None:
    net = Net()
    net.connect()
    net.up = False
    net.send(b"\x45x")
    net.advance(net.now + 2)
    assert not net.channel.usable
    before = net.dropped
    net.advance(net.now + 10)
    assert 9 <= net.dropped - before <= 11  # one DPD-REQ a second


def test_one_way_traffic_with_answers_never_fails_over() -> None:
    net = Net()
    net.connect()
    for _ in range(500):  # 50 s of upload, the server sends nothing but DPD answers
        assert net.send(b"\x45upload") == []
        net.advance(net.now + 0.1)
    assert net.channel.usable
    assert not net.of(DtlsDown)
    probes = [r for r in net.server.received if r == b"\x03"]
    assert 10 <= len(probes) <= 70  # about one probe per suspect interval


def test_idle_dpd_detects_a_dead_path() -> None:
    net = Net(ChannelConfig(dpd=30))
    net.connect()
    last_rx = net.channel.last_rx
    net.up = False
    net.advance(net.now + 40)
    (down,) = net.of(DtlsDown)
    assert not net.channel.usable
    # DPD-REQ after 30 s of silence, declared lost lost_after later
    assert net.channel._lost_since == pytest.approx(last_rx + 30 + 1.5)


def test_icmp_error_fails_over_at_once() -> None:
    net = Net()
    net.connect()
    net.channel.socket_error(net.now, "ECONNREFUSED")
    net.step()
    assert not net.channel.usable
    (down,) = net.of(DtlsDown)
    assert "ECONNREFUSED" in down.reason


def test_keepalive_is_sent_and_does_not_cause_failover() -> None:
    net = Net(ChannelConfig(keepalive=20))
    net.connect()
    net.advance(net.now + 65)
    assert net.server.received.count(b"\x07") == 3
    assert net.channel.usable


def test_failed_first_handshakes_back_off() -> None:
    net = Net(ChannelConfig(retry_interval=4, retry_max=60))
    net.up = False
    net.advance(net.now + 200)
    fails = net.of(AttemptFailed)
    assert [f.retry_in for f in fails[:5]] == [4, 8, 16, 32, 60]
    assert all("no answer" in f.reason for f in fails)
    net.up = True
    net.advance(net.now + 61)
    assert net.channel.usable


def test_after_a_long_loss_a_new_session_is_made() -> None:
    cfg = ChannelConfig(down_probe_for=30, retry_interval=4)
    net = Net(cfg)
    net.connect()
    net.up = False
    net.send(b"\x45x")
    net.advance(net.now + 40)
    sockets = len(net.of(NewSocket))
    assert sockets >= 2  # gave the old session up, new handshakes on new sockets
    net.up = True
    back = net.now
    net.advance(net.now + 5)
    assert net.channel.usable
    assert net.now - back <= 5


def test_rekey_makes_a_new_session() -> None:
    net = Net(ChannelConfig(rekey=3600))
    net.connect()
    net.advance(net.now + 3601)
    assert len(net.of(NewSocket)) == 2
    assert net.channel.usable


def test_server_closing_the_session_starts_a_new_one() -> None:
    net = Net()
    net.connect()
    net.server.send_alert(0, epoch=1)  # close_notify
    net.step()
    assert not net.channel.usable
    net.advance(net.now + 5)
    assert net.channel.usable
    assert len(net.of(NewSocket)) == 2


def test_unsupported_server_choice_retries_slowly_and_stays_on_cstp() -> None:
    net = Net(server=ServerConfig("psk", choose_suite=0x008C))
    net.advance(net.now + 30)
    assert not net.channel.usable
    fails = net.of(AttemptFailed)
    assert fails
    assert "cipher suite" in fails[0].reason
