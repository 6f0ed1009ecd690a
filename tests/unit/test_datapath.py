"""The worker's DataPath in memory: packets both ways over DTLS and over CSTP, and the
choice between them (TLS before the DTLS handshake, oversized packets, fallback to TLS
on a path error and the return to DTLS), with a fake tun, fake UDP sockets and a TLS
stream without TLS, all on socketpairs; the DTLS server is tests/unit/dtls_peer.py.

The data path runs in a thread, as in the worker (its event loop, its clock); this
thread plays the network, the server and the supervisor.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from dtls_peer import FakeServer, ServerConfig

from sepconnect.ipc.wire import Channel
from sepconnect.ipc.worker_messages import (
    FD_TO_WORKER,
    FROM_WORKER,
    TO_WORKER,
    Stop,
    WorkerStatus,
)
from sepconnect.worker.connect import Server, Tunnel
from sepconnect.worker.datapath import DataPath, Outcome
from sepconnect.worker.io.udp import UdpError
from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto.cstp import CstpDecoder, PacketType, encode_data
from sepconnect.worker.proto.dtls_params import DtlsParams, Mode
from sepconnect.worker.proto.dtls_setup import DtlsPlan, NoDtls

MAX_PACKET = 1000  # larger packets go over CSTP even while DTLS is up
PARAMS = DtlsParams(mode=Mode.PSK, session_id=b"\x33" * 32, suites=dc.PSK_SUITES, psk=b"\x11" * 32)


def packet(n: int, size: int = 60) -> bytes:
    return bytes([0x45, n]) + bytes([n]) * (size - 2)


class FakeTun:
    """The tun as TunIO without a vnet header: one packet per datagram."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    def read_packets(self, budget: int) -> list[bytes]:
        packets: list[bytes] = []
        for _ in range(budget):
            try:
                packets.append(self.sock.recv(65535))
            except BlockingIOError:
                break
        return packets

    def write_packets(self, packets: list[bytes]) -> None:
        for p in packets:
            self.sock.send(p)


class FakeUdp:
    """A connected UDP socket; *net* may hold an ICMP error for the next call."""

    def __init__(self, sock: socket.socket, net: Net) -> None:
        self.sock = sock
        self.net = net
        self.drained = False
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _icmp(self) -> None:
        code, self.net.icmp_error = self.net.icmp_error, 0
        if code:
            raise UdpError(code)

    def send_batch(self, datagrams: list[bytes]) -> int:
        self._icmp()
        self.net.udp_sends.append(len(datagrams))
        for d in datagrams:
            self.sock.send(d)
        return len(datagrams)

    def recv_batch(self, limit: int = 64) -> list[bytes]:
        self._icmp()
        self.drained = False
        out: list[bytes] = []
        for _ in range(limit):
            try:
                out.append(self.sock.recv(65535))
            except BlockingIOError:
                self.drained = True
                break
        return out

    def close(self) -> None:
        self.sock.close()


class FakeStream:
    """TlsStream's data-path calls without TLS: CSTP in plaintext on a stream socket."""

    cipher = "TLSv1.3 (fake)"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._out = bytearray()
        sock.setblocking(False)

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    may_have_output = has_output

    def pending(self) -> int:
        return 0

    def recv_nowait(self) -> bytes | None:
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None

    def send_records_nowait(self, records: list[bytes]) -> int:
        self._out += b"".join(records)
        return len(records)

    def flush_nowait(self) -> bool:
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return False
            del self._out[:sent]
        return True

    def close(self) -> None:
        self.sock.close()


class Net:
    """The DataPath under test and everything around it.

    ``hold_udp``: datagrams wait in the sockets (nothing is read or answered).
    ``udp_up``: False drops everything on UDP both ways (a blackhole).
    """

    def __init__(self, dtls: DtlsPlan | NoDtls | None) -> None:
        self.hold_udp = False
        self.udp_up = True
        self.icmp_error = 0
        self.udp_sends: list[int] = []  # datagrams per send_batch call
        self.udp_peers: list[socket.socket] = []  # the far end of each UDP socket
        self._udp_peer: socket.socket | None = None  # the one in use
        self.server = FakeServer(ServerConfig("psk"))
        self.tun_peer, tun_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tls_peer, tls_end = socket.socketpair()
        self.sup_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.supervisor = Channel(self.sup_sock, FROM_WORKER, send_codec=TO_WORKER)
        self.worker_channel = Channel(
            worker_sock, TO_WORKER, FD_TO_WORKER, send_codec=FROM_WORKER, send_fd_ops=()
        )
        self.tun_received: list[bytes] = []  # packets the data path wrote to the tun
        self.cstp_received: list[bytes] = []  # DATA packets that came over CSTP
        self.cstp_frames: list[PacketType] = []  # every CSTP frame type, in order
        self.statuses: list[WorkerStatus] = []
        self._decoder = CstpDecoder()
        self._tls_eof = False
        config = SimpleNamespace(
            dpd=None,
            keepalive=None,
            dtls_port=443,
            dtls_dpd=None,
            dtls_keepalive=None,
            dtls_rekey_time=None,
            dtls_rekey_method=None,
        )
        tunnel = Tunnel(
            server=Server(host="vpn.example", port=443, path="/", address="192.0.2.1"),
            stream=FakeStream(tls_end),  # type: ignore[arg-type]
            config=config,  # type: ignore[arg-type]
            cookie="cookie",
            banner=None,
            leftover=b"",
            dtls=dtls,
        )
        self._tun_end = tun_end
        self.path = DataPath(
            tunnel,
            tun_end.fileno(),
            self.worker_channel,
            tun=FakeTun(tun_end),
            open_udp=self._open_udp,
        )
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- the worker's side ------------------------------------------------------------

    def _open_udp(self, address: str, port: int) -> FakeUdp:
        assert (address, port) == ("192.0.2.1", 443)
        peer, end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        peer.setblocking(False)
        self.udp_peers.append(peer)
        return FakeUdp(end, self)

    def _run(self) -> None:
        try:
            self.outcome = self.path.run()
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    # -- the test's side --------------------------------------------------------------

    @property
    def dtls_packets(self) -> list[bytes]:
        """Data packets the DTLS server received (type byte 0 removed)."""
        return [p[1:] for p in self.server.received if p[:1] == b"\x00"]

    def to_tun(self, *packets: bytes) -> None:
        for p in packets:
            self.tun_peer.send(p)

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        """Move the network's traffic until *until* holds."""
        deadline = time.monotonic() + timeout
        while not until():
            assert self.error is None, self.error
            assert time.monotonic() < deadline, "timed out"
            if self.udp_peers and self.udp_peers[-1] is not self._udp_peer:
                self._udp_peer = self.udp_peers[-1]
                self.server = FakeServer(ServerConfig("psk"))  # a new socket: a new session
            udp_peer = self._udp_peer
            socks = [self.tun_peer, self.sup_sock]
            if not self._tls_eof:
                socks.append(self.tls_peer)
            if udp_peer is not None and not self.hold_udp:
                socks.append(udp_peer)
            for sock in select.select(socks, [], [], 0.02)[0]:
                if sock is self.tun_peer:
                    self.tun_received.append(sock.recv(65535))
                elif sock is self.sup_sock:
                    msg, _ = self.supervisor.recv()
                    assert isinstance(msg, WorkerStatus), msg
                    self.statuses.append(msg)
                elif sock is self.tls_peer:
                    self._from_tls(sock.recv(65536))
                else:
                    self._from_udp(sock)

    def _from_tls(self, data: bytes) -> None:
        if not data:
            self._tls_eof = True
            return
        for ptype, payload in self._decoder.feed_pairs_untrusted(data):
            self.cstp_frames.append(ptype)
            if ptype is PacketType.DATA:
                self.cstp_received.append(payload)

    def _from_udp(self, sock: socket.socket) -> None:
        while True:
            try:
                datagram = sock.recv(65535)
            except BlockingIOError:
                break
            if self.udp_up:
                self.server.receive(datagram)
        for datagram in self.server.datagrams():
            if self.udp_up:
                sock.send(datagram)

    def server_sends_udp(self, *packets: bytes) -> None:
        for p in packets:
            self.server.send_app(b"\x00" + p)
        for datagram in self.server.datagrams():
            self.udp_peers[-1].send(datagram)

    def server_sends_tls(self, *packets: bytes) -> None:
        self.tls_peer.sendall(b"".join(encode_data(p) for p in packets))

    def channel(self) -> str:
        return self.statuses[-1].channel if self.statuses else "none yet"

    def stop(self, *, logoff: bool) -> None:
        self.supervisor.send(Stop(logoff=logoff))
        self.pump(lambda: self.outcome is not None and self._tls_eof)
        self._thread.join(5)

    @contextmanager
    def running(self) -> Iterator[Net]:
        self._thread.start()
        try:
            yield self
        finally:
            if self.outcome is None and self.error is None:
                self.stop(logoff=True)
            for sock in (self.tun_peer, self.tls_peer, self.sup_sock, self._tun_end):
                sock.close()
            for sock in self.udp_peers:
                sock.close()
            self.worker_channel.sock.close()
        assert self.error is None, self.error


def dtls_plan() -> DtlsPlan:
    return DtlsPlan(PARAMS, mtu=MAX_PACKET, max_packet=MAX_PACKET, description="PSK-NEGOTIATE")


def test_dtls_carries_data_both_ways_and_falls_back_to_tls_and_back() -> None:
    net = Net(dtls_plan())
    net.hold_udp = True  # the DTLS handshake waits: data goes over TLS meanwhile
    with net.running():
        net.to_tun(packet(0))
        net.pump(lambda: net.cstp_received == [packet(0)])
        net.hold_udp = False
        net.pump(lambda: net.channel() == "dtls")

        # Up: a lone packet is sealed and sent at once, in a send of its own; a burst
        # follows it in order; one too large for a DTLS record goes over TLS.
        sends = len(net.udp_sends)
        net.to_tun(packet(1))
        net.pump(lambda: net.dtls_packets == [packet(1)])
        assert net.udp_sends[sends] == 1
        burst = [packet(n, 100 + n) for n in range(2, 12)]
        net.to_tun(*burst)
        net.pump(lambda: len(net.dtls_packets) == 11)
        assert net.dtls_packets == [packet(1), *burst]
        big = packet(12, MAX_PACKET + 1)
        net.to_tun(big)
        net.pump(lambda: net.cstp_received[-1:] == [big])
        assert net.cstp_received == [packet(0), big]

        # Down: accepted on both channels.
        net.server_sends_udp(packet(20))
        net.pump(lambda: net.tun_received == [packet(20)])
        down = [packet(n, 200 + n) for n in range(21, 31)]
        net.server_sends_udp(*down)
        net.pump(lambda: len(net.tun_received) == 11)
        net.server_sends_tls(packet(31), packet(32))
        net.pump(lambda: len(net.tun_received) == 13)
        assert net.tun_received == [packet(20), *down, packet(31), packet(32)]

        # UDP breaks (ICMP port unreachable, then nothing gets through): data moves
        # to TLS at once, and back to DTLS when UDP works again.
        net.udp_up = False
        net.icmp_error = errno.ECONNREFUSED
        net.udp_peers[-1].send(b"wake up")
        net.pump(lambda: net.channel() == "tls")
        assert "ECONNREFUSED" in net.statuses[-1].dtls_state
        net.to_tun(packet(40))
        net.pump(lambda: net.cstp_received[-1:] == [packet(40)])
        net.udp_up = True
        net.pump(lambda: net.channel() == "dtls")
        net.to_tun(packet(41))
        net.pump(lambda: net.dtls_packets[-1:] == [packet(41)])
        assert net.cstp_received == [packet(0), big, packet(40)]
    assert net.outcome is not None
    assert net.outcome.logoff
    sent = [packet(n) for n in (0, 1, 40, 41)] + burst + [big]
    assert net.outcome.tx_bytes == sum(map(len, sent))
    received = [*down, *(packet(n) for n in (20, 31, 32))]
    assert net.outcome.rx_bytes == sum(map(len, received))
    assert net.cstp_frames[-1] is PacketType.DISCONNECT


@pytest.mark.parametrize("dtls", [None, NoDtls("no X-DTLS-Port")], ids=["--no-dtls", "no-dtls"])
def test_without_dtls_data_goes_over_tls(dtls: NoDtls | None) -> None:
    net = Net(dtls)
    with net.running():
        sent = [packet(1), packet(2, MAX_PACKET + 100), *(packet(n) for n in range(3, 10))]
        net.to_tun(*sent)
        net.pump(lambda: len(net.cstp_received) == len(sent))
        assert net.cstp_received == sent
        down = [packet(n, 300) for n in range(10, 20)]
        net.server_sends_tls(*down)
        net.pump(lambda: len(net.tun_received) == len(down))
        assert net.tun_received == down
        assert not net.udp_peers
        net.stop(logoff=False)
    assert net.outcome == Outcome(
        logoff=False, tx_bytes=sum(map(len, sent)), rx_bytes=sum(map(len, down))
    )
    assert PacketType.DISCONNECT not in net.cstp_frames


@pytest.mark.parametrize("dtls", [None, "dtls"], ids=["tls", "dtls"])
def test_the_first_packets_both_ways_are_reported_once_unasked(dtls: str | None) -> None:
    """The supervisor's crash-loop guard counts a worker healthy once its data path has
    moved a packet each way (supervisor/policy.py, HEALTHY_AFTER): it says so once."""
    net = Net(dtls_plan() if dtls else None)
    with net.running():
        if dtls:
            net.pump(lambda: net.channel() == "dtls")
        before = len(net.statuses)
        net.to_tun(packet(1))
        net.pump(lambda: len(net.cstp_received) + len(net.dtls_packets) == 1)
        settled = time.monotonic() + 0.1
        net.pump(lambda: time.monotonic() > settled)
        assert len(net.statuses) == before  # one way only: not yet
        (net.server_sends_udp if dtls else net.server_sends_tls)(packet(2))
        net.pump(lambda: len(net.statuses) == before + 1)
        report = net.statuses[-1]
        assert (report.tx_packets, report.rx_packets) == (1, 1)
        net.to_tun(packet(3))
        (net.server_sends_udp if dtls else net.server_sends_tls)(packet(4))
        net.pump(lambda: len(net.tun_received) == 2)
        settled = time.monotonic() + 0.1
        net.pump(lambda: time.monotonic() > settled)
        assert len(net.statuses) == before + 1  # once
