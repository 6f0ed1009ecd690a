"""The worker's DataPath in memory: packets both ways over DTLS and over CSTP, and the
choice between them (TLS before the DTLS handshake, oversized packets, fallback to TLS
on a path error and the return to DTLS), with a fake tun, fake UDP sockets and a TLS
stream without TLS, all on socketpairs; the DTLS server is tests/unit/dtls_peer.py.
Also what a server that floods or never reads can do to the worker's memory (issue
13, F13): every queue stays under its limit, and reading stops while it is full.

The data path runs in a thread, as in the worker (its event loop, its clock); this
thread plays the network, the server and the supervisor.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
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
from sepconnect.worker import accel, datapath, dtls_link
from sepconnect.worker.connect import Server, Tunnel
from sepconnect.worker.datapath import DataPath, Outcome
from sepconnect.worker.io.udp import UdpError
from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto.cstp import (
    HEADER_LEN,
    MAX_PAYLOAD,
    CstpDecoder,
    PacketType,
    encode_data,
    encode_frame,
)
from sepconnect.worker.proto.dtls_params import DtlsParams, Mode
from sepconnect.worker.proto.dtls_setup import DtlsPlan, NoDtls


@pytest.fixture(autouse=True, params=["compiled", "python"])
def data_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test on both implementations (worker/accel.py): the compiled accelerator,
    and the Python path as a worker built without it runs (DTLS records through
    GcmProtection and the Python burst receive)."""
    if request.param == "python":
        for name in ("Gcm", "coalesce", "split_frame", "split_mmsg"):
            monkeypatch.setattr(accel, name, None)
        monkeypatch.setattr(accel, "IMPLEMENTATION", "python")


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
        try:
            for p in packets:
                self.sock.send(p)
        except BlockingIOError:
            return  # the queue is full: the rest are dropped, as TunIO drops them


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
    """TlsStream's data-path calls without TLS: CSTP in plaintext on a stream socket.
    Like TlsStream, it takes records only while less than OUT_LIMIT waits for the
    socket; it notes the most that ever waited (its own and the data path's)."""

    cipher = "TLSv1.3 (fake)"
    OUT_LIMIT = 64 * 1024

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._out = bytearray()
        self.most_frames_waiting = 0  # in the data path's backlog
        self.most_bytes_waiting = 0  # in the backlog and here
        sock.setblocking(False)

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    may_have_output = has_output

    @property
    def reading_blocked(self) -> bool:
        return len(self._out) >= 2 * self.OUT_LIMIT

    def pending(self) -> int:
        return 0

    def recv_nowait(self) -> bytes | None:
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None

    def recv_buffered(self) -> bytes | None:
        return None  # nothing is held between the socket and the reader

    def send_records_nowait(self, records: list[bytes]) -> int:
        # *records* is the data path's whole backlog
        self.most_frames_waiting = max(self.most_frames_waiting, len(records))
        waiting = len(self._out) + sum(map(len, records))
        self.most_bytes_waiting = max(self.most_bytes_waiting, waiting)
        taken = 0
        for record in records:
            if len(self._out) >= self.OUT_LIMIT:
                break
            self._out += record
            taken += 1
        return taken

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
        for sock in (self.tls_peer, tls_end):  # the server's and our socket fill sooner
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        self.sup_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.supervisor = Channel(self.sup_sock, FROM_WORKER, send_codec=TO_WORKER)
        self.worker_channel = Channel(
            worker_sock, TO_WORKER, FD_TO_WORKER, send_codec=FROM_WORKER, send_fd_ops=()
        )
        self.tun_received: list[bytes] = []  # packets the data path wrote to the tun
        self.cstp_received: list[bytes] = []  # DATA packets that came over CSTP
        self.cstp_frames: list[PacketType] = []  # every CSTP frame type, in order
        self.dpd_answers: list[bytes] = []  # payloads of the DPD-RESP frames over CSTP
        self.read_tls = True  # False: the server reads nothing from the TLS socket
        self.tls_out = bytearray()  # what the server sends over TLS as the socket takes it
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
            if self.tls_out:
                with contextlib.suppress(BlockingIOError):
                    del self.tls_out[: self.tls_peer.send(self.tls_out, socket.MSG_DONTWAIT)]
            socks = [self.tun_peer, self.sup_sock]
            if not self._tls_eof and self.read_tls:
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
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:  # closed with bytes it never read
                        data = b""
                    self._from_tls(data)
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
            elif ptype is PacketType.DPD_RESP:
                self.dpd_answers.append(payload)

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
        self.read_tls = True
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


# -- a server that floods, or never reads (issue 13, F13) ---------------------------------

STUCK = 0.5  # seconds without progress: the other side stopped reading


def flood(send: Callable[[], bool], most: int) -> int:
    """Call *send* (True: it got one message out) until it makes no progress for STUCK
    seconds or *most* messages are out; returns how many are."""
    sent = 0
    stuck_since = time.monotonic()
    while sent < most and time.monotonic() - stuck_since < STUCK:
        if send():
            sent += 1
            stuck_since = time.monotonic()
        else:
            time.sleep(0.005)
    return sent


class ServerSends:
    """The server writing *messages* to its TLS socket without ever blocking: one
    message at a time, its rest kept in ``pending`` while the socket is full."""

    def __init__(self, sock: socket.socket, messages: Iterator[bytes]) -> None:
        self.sock = sock
        self.messages = messages
        self.pending = bytearray()
        self.started = 0

    def __call__(self) -> bool:
        if not self.pending:
            self.pending += next(self.messages)
            self.started += 1
        try:
            del self.pending[: self.sock.send(self.pending, socket.MSG_DONTWAIT)]
        except BlockingIOError:
            return False
        return not self.pending


def test_dpd_requests_from_a_server_that_never_reads_stop_the_tls_reads() -> None:
    # Each DPD-REQ (up to 16 KiB) is answered with its payload: a server that never
    # reads must not get the worker to hold all it sends (issue 13, F13: 125 MiB).
    net = Net(None)
    net.read_tls = False
    frame_size = HEADER_LEN + MAX_PAYLOAD
    requests = [n.to_bytes(4, "big") * (MAX_PAYLOAD // 4) for n in range(2000)]  # 32 MiB
    send = ServerSends(net.tls_peer, (encode_frame(PacketType.DPD_REQ, p) for p in requests))

    with net.running():
        sent = flood(send, len(requests))
        stream = net.path.stream
        assert isinstance(stream, FakeStream)
        # Reading stopped: the server's socket stays full, and the worker holds no more
        # than a full backlog, plus the answers to one burst read before it filled (up
        # to _SERVER_BURST and one 64 KiB read, after a frame's worth left undecoded).
        assert sent < len(requests), f"the worker kept reading: {sent} DPD requests"
        one_burst = (datapath._SERVER_BURST + 65536 + frame_size) // frame_size
        assert stream.most_frames_waiting <= datapath._BACKLOG_LIMIT + one_burst
        assert stream.most_bytes_waiting <= (
            (datapath._BACKLOG_LIMIT + one_burst + 1) * frame_size + stream.OUT_LIMIT
        )
        assert net.path.tls_paused
        # The server reads again: every request is answered, with its payload.
        net.tls_out += send.pending
        net.read_tls = True
        net.pump(lambda: len(net.dpd_answers) == send.started, timeout=20)
        assert net.dpd_answers == requests[: send.started]
        assert not net.path.tls_paused
        net.to_tun(packet(1))
        net.pump(lambda: net.cstp_received == [packet(1)])
        net.server_sends_tls(packet(2))
        net.pump(lambda: net.tun_received == [packet(2)])


def test_a_tun_flood_with_tls_blocked_stops_the_tun_reads() -> None:
    net = Net(None)
    net.read_tls = False
    turns = 0
    path_turn = net.path._turn

    def counted_turn() -> Stop | None:
        nonlocal turns
        turns += 1
        return path_turn()

    net.path._turn = counted_turn  # type: ignore[method-assign]
    sent: list[bytes] = []

    def send_packet() -> bool:
        p = packet(len(sent) % 256, 1400) + len(sent).to_bytes(4, "big")
        try:
            net.tun_peer.send(p, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        sent.append(p)
        return True

    with net.running():
        flood(send_packet, 100_000)
        stream = net.path.stream
        assert isinstance(stream, FakeStream)
        # The tun is full (its queue holds what the kernel keeps), the backlog holds at
        # most one burst from the tun, and the worker waits without spinning.
        assert len(sent) < 100_000, "the worker kept reading the tun"
        assert stream.most_frames_waiting <= datapath._TUN_BURST
        before = turns
        time.sleep(STUCK)
        assert turns - before <= 2, f"{turns - before} wakeups while waiting: a busy loop"
        assert net.path.tun_paused
        # TLS takes again: everything the tun held goes out, in order.
        net.read_tls = True
        net.pump(lambda: len(net.cstp_received) == len(sent), timeout=20)
        assert net.cstp_received == sent
        # ... and the tun is read again: a packet written now goes out too. (The worker's
        # thread lifts the pause at the end of the turn that emptied the backlog, which
        # may be after this thread saw the last packet arrive.)
        assert send_packet()
        net.pump(lambda: net.cstp_received == sent and not net.path.tun_paused)


def test_with_dtls_up_and_tls_blocked_the_tun_still_feeds_dtls() -> None:
    # Packets too large for DTLS go over CSTP; while it is full they are dropped (a
    # full link), and the tun goes on being read for DTLS.
    net = Net(dtls_plan())
    with net.running():
        net.pump(lambda: net.channel() == "dtls")
        net.read_tls = False
        small: list[bytes] = []
        big_out = 0

        def send_pair() -> bool:
            nonlocal big_out
            n = len(small)
            try:
                net.tun_peer.send(packet(n % 256, MAX_PACKET + 200), socket.MSG_DONTWAIT)
                big_out += 1
                net.tun_peer.send(packet(n % 256, 100), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            small.append(packet(n % 256, 100))
            net.pump(lambda: len(net.dtls_packets) == len(small), timeout=5)
            return True

        flood(send_pair, 1500)
        stream = net.path.stream
        assert isinstance(stream, FakeStream)
        assert len(small) == 1500  # DTLS carried every small one while TLS was full
        assert stream.most_frames_waiting <= datapath._TUN_BURST
        assert not net.path.tun_paused
        assert not net.path.tls_paused
        net.read_tls = True
        net.pump(lambda: not net.path.backlog and not stream.has_output)
        assert 0 < len(net.cstp_received) < big_out  # some dropped, as by a full link


class FloodingStream(FakeStream):
    """A server that sends faster than the worker reads: every read finds DATA."""

    def __init__(self, sock: socket.socket, frames: int) -> None:
        super().__init__(sock)
        self.left = frames
        self.chunk = b"".join(encode_data(packet(n, 1400)) for n in range(40))
        self.handed_out = 0

    def recv_nowait(self) -> bytes | None:
        if self.left <= 0:
            return None
        self.left -= 40
        self.handed_out += len(self.chunk)
        return self.chunk


def test_a_flooding_server_does_not_keep_the_worker_from_its_other_work() -> None:
    net = Net(None)
    stream = FloodingStream(net.path.stream.sock, 40 * 100_000)  # 570 MB
    net.path.stream = stream  # type: ignore[assignment]
    read_per_turn: list[int] = []
    path_turn = net.path._turn

    def measured_turn() -> Stop | None:
        before = stream.handed_out
        try:
            return path_turn()
        finally:
            read_per_turn.append(stream.handed_out - before)

    net.path._turn = measured_turn  # type: ignore[method-assign]
    net.tls_peer.send(b"x")  # readable, for ever: the flood never pauses
    with net.running():
        net.pump(lambda: len(read_per_turn) > 3)
        net.supervisor.send(Stop(logoff=False))
        net.pump(lambda: net.outcome is not None, timeout=10)
    # the budget, and the burst (one 64 KiB read beyond _SERVER_BURST) that crossed it
    assert max(read_per_turn) <= datapath._SERVER_READ + datapath._SERVER_BURST + 65536


class AnsweringStream(FakeStream):
    """TLS whose library answers what it reads (OpenSSL: an alert per HelloRequest),
    here a KEEPALIVE for each one received."""

    def recv_nowait(self) -> bytes | None:
        data = super().recv_nowait()
        if data:
            self._out += data
        return data


def test_answers_the_tls_library_gives_stop_the_reads_when_they_pile_up() -> None:
    net = Net(None)
    stream = AnsweringStream(net.path.stream.sock)
    net.path.stream = stream  # type: ignore[assignment]
    net.read_tls = False
    keepalives = encode_frame(PacketType.KEEPALIVE) * 1024
    send = ServerSends(net.tls_peer, itertools.repeat(keepalives))

    with net.running():
        sent = flood(send, 4096)  # 32 MiB
        assert sent < 4096, "the worker kept reading"
        assert net.path.tls_paused
        # twice the limit, and the answers to one wakeup's reading
        assert len(stream._out) <= 2 * stream.OUT_LIMIT + datapath._SERVER_READ + 65536


class FloodingUdp:
    """The link's UDP socket with the server's DPD requests waiting, many at once."""

    def __init__(self, udp: FakeUdp, datagrams: list[bytes]) -> None:
        self.udp = udp
        self.waiting = datagrams
        self.drained = False
        self.answers = 0
        self.read = 0  # datagrams handed out

    def fileno(self) -> int:
        return self.udp.fileno()

    def send_batch(self, datagrams: list[bytes]) -> int:
        self.answers += len(datagrams)
        return len(datagrams)

    def recv_batch(self, limit: int = 64) -> list[bytes]:
        batch, self.waiting = self.waiting[:limit], self.waiting[limit:]
        self.drained = not self.waiting
        self.read += len(batch)
        return batch

    def close(self) -> None:
        self.udp.close()


def test_a_udp_flood_is_read_a_bounded_amount_at_a_time() -> None:
    net = Net(dtls_plan())
    with net.running():
        net.pump(lambda: net.channel() == "dtls")
        link = net.path.dtls
        assert link is not None
        assert isinstance(link.udp, FakeUdp)
        requests = [net.server.app_datagram(b"\x03") for _ in range(3000)]
        flooding = FloodingUdp(link.udp, requests)
        read_per_call: list[int] = []
        link_receive = link.receive

        def measured_receive(now: float, *, first: bool = False) -> list[bytes]:
            before = flooding.read
            try:
                return link_receive(now, first=first)
            finally:
                read_per_call.append(flooding.read - before)

        link.receive = measured_receive  # type: ignore[method-assign]
        link.udp = flooding
        net.udp_peers[-1].send(b"wake up")  # readable until the data path reads it
        net.pump(lambda: flooding.answers == len(requests))
        assert max(read_per_call) <= dtls_link._RECEIVE_LIMIT + 64
