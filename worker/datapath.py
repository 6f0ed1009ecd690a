"""The worker's event loop: tun ⇄ DTLS (UDP) or CSTP (TLS), timers, and the supervisor
channel.

Each layer below has one job and one batch call per direction (a single packet is a
batch of one): the tun (worker/io/tun.py), the DTLS link (worker/dtls_link.py, which
alone drives the DtlsChannel and its UDP socket), and CSTP: the sans-I/O CstpSession
over the TlsStream (worker/io/tls.py). This loop reads what is ready, hands it on,
and sleeps until the next fd event or the earliest timer. Single-threaded and
nonblocking. Every tun packet goes through :meth:`DataPath._to_server`: the DTLS link
sends what DTLS carries now (DtlsChannel.seal_packets decides) and CSTP the rest;
packets from the server are accepted on both channels at all times. Every queue here
has a limit, and while CSTP output cannot leave, what would add to it is not read
(:meth:`DataPath._pace`; docs/security.md, "Bounded memory in the worker").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sepconnect.ipc.session_limits import printable
from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.ipc.worker_messages import QueryStatus, Stop, WorkerStatus
from sepconnect.worker import accel
from sepconnect.worker.connect import SessionFailure, Tunnel
from sepconnect.worker.dtls_link import DtlsLink, Udp
from sepconnect.worker.io.poller import Poller
from sepconnect.worker.io.tls import TlsError
from sepconnect.worker.io.tun import TunIO
from sepconnect.worker.io.udp import UdpLink
from sepconnect.worker.proto import errors
from sepconnect.worker.proto.dtls_setup import DtlsPlan, NoDtls
from sepconnect.worker.proto.session import (
    CstpSession,
    DpdTimeout,
    ServerDisconnected,
    ServerTerminated,
)

_TUN_BURST = 64  # packets read from the tun per wakeup before servicing the TLS side
_SERVER_BURST = 96 * 1024  # CSTP bytes decoded before their packets go to the tun
_SERVER_READ = 1024 * 1024  # TLS plaintext read per wakeup; the rest waits in the socket
# CSTP frames waiting for room in the TLS stream (DataPath.backlog). The tun feeds CSTP
# only while none wait, so our own packets queue at most one tun burst; only answers
# the server asks for (DPD, up to 16 KiB each) can fill it. While it is full the TLS
# socket is not read, so nothing the server sends can queue more.
_BACKLOG_LIMIT = 2 * _TUN_BURST


def _log(text: str) -> None:
    print(f"sepconnect worker: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the data path ended when it was asked to stop."""

    logoff: bool
    tx_bytes: int
    rx_bytes: int


class Tun(Protocol):
    """The tun device as the data path uses it (worker/io/tun.py; a fake in the tests)."""

    def read_packets(self, budget: int) -> list[bytes]: ...
    def write_packets(self, packets: list[bytes]) -> None: ...


class DataPath:
    """*tun* and *open_udp* replace the tun on *tun_fd* and the UDP sockets (tests)."""

    def __init__(
        self,
        tunnel: Tunnel,
        tun_fd: int,
        channel: Channel,
        *,
        tun: Tun | None = None,
        open_udp: Callable[[str, int], Udp] = UdpLink,
    ) -> None:
        self.unproven = True  # no packet has moved both ways yet (_report_traffic)
        self.tunnel = tunnel
        self.stream = tunnel.stream
        self.tun_fd = tun_fd
        self.tun: Tun = TunIO(tun_fd) if tun is None else tun
        self.channel = channel
        cfg = tunnel.config
        self.session = CstpSession(dpd=cfg.dpd, keepalive=cfg.keepalive, now=time.monotonic())
        self.backlog: list[bytes] = []  # CSTP frames waiting for room in the TLS socket
        self.want_write = False  # the TLS socket is watched for writability
        self.tls_paused = False  # the TLS socket is not read: its output is full
        self.tun_paused = False  # the tun is not read: CSTP carries its packets and is full
        self.selector = Poller()
        plan = tunnel.dtls
        self.dtls = (
            DtlsLink(tunnel, plan, self.selector, time.monotonic(), open_udp)
            if isinstance(plan, DtlsPlan)
            else None
        )
        self.dtls_off_reason = (
            plan.reason if isinstance(plan, NoDtls) else "disabled" if plan is None else ""
        )

    def run(self) -> Outcome:
        """Move packets until the supervisor says stop; raises SessionFailure otherwise."""
        sel = self.selector
        sel.register(self.stream.sock.fileno(), "tls")
        sel.register(self.tun_fd, "tun")
        sel.register(self.channel.fileno(), "ipc")
        if isinstance(self.tunnel.dtls, NoDtls) and self.tunnel.dtls.offered:
            _log(f"no DTLS: {self.tunnel.dtls.reason}; data goes over TLS")
        try:
            if self.tunnel.leftover:
                self._from_server(self.tunnel.leftover)
            while True:
                stop = self._turn()
                if stop is not None:
                    return self._stop(stop)
        except TlsError as exc:
            raise SessionFailure(
                "connection_lost", f"connection to the server lost: {exc}"
            ) from None
        except errors.ProtocolError as exc:
            raise SessionFailure("protocol", str(exc)) from None
        finally:
            if self.dtls is not None:
                self.dtls.close(time.monotonic())
            sel.close()

    def _turn(self) -> Stop | None:
        # One wakeup. The common one is a single packet (an interactive flow): every
        # call made here counts towards the tunnel's added latency, so housekeeping
        # (timers, events, queued output) is looked at only when there is some.
        session, dtls, stream = self.session, self.dtls, self.stream
        timer = session.get_timer()
        if dtls is not None:
            dtls_timer = dtls.get_timer()
            if dtls_timer is not None and (timer is None or dtls_timer < timer):
                timer = dtls_timer
        timeout = None if timer is None else max(0.0, timer - time.monotonic())
        tls_read = False
        for data in self.selector.poll(timeout):
            if data == "udp":
                if dtls is not None:
                    # Latency first: deliver what one read brought, then drain.
                    self.tun.write_packets(dtls.receive(time.monotonic(), first=True))
                    if not dtls.drained:
                        self.tun.write_packets(dtls.receive(time.monotonic()))
            elif data == "tun":
                self._read_tun()
            elif data == "tls":
                # A write-readiness wakeup ends in _flush below; while reading is
                # paused, that is the only kind.
                if not self.tls_paused:
                    self._read_server()
                    tls_read = True
            elif data == "ipc":
                stop = self._from_supervisor()
                if stop is not None:
                    return stop
        if tls_read and stream.pending():
            self._read_server()
        now = time.monotonic()
        if timer is not None and timer <= now:
            session_timer = session.get_timer()
            if session_timer is not None and session_timer <= now:
                session.handle_timer(now, output_waiting=bool(self.backlog))
                self._drain_events()
            if dtls is not None:
                dtls.handle_timer(now)
        if dtls is not None and dtls.has_work():
            self._service_dtls(dtls, now)
        if session.has_output or self.backlog or self.want_write or stream.may_have_output:
            self._flush()
        if self.unproven:
            self._report_traffic()
        return None

    def _report_traffic(self) -> None:
        """Once, unasked: packets have moved both ways. The supervisor's crash-loop guard
        counts a worker that fails before this (or HEALTHY_AFTER) as one that died right
        after it got the tun (supervisor/policy.py)."""
        tx, rx = self.session.tx_packets, self.session.rx_packets
        if self.dtls is not None:
            _, _, dtls_tx, dtls_rx = self.dtls.traffic()
            tx, rx = tx + dtls_tx, rx + dtls_rx
        if tx and rx:
            self.unproven = False
            self.channel.send(self.status())

    def _service_dtls(self, dtls: DtlsLink, now: float) -> None:
        for line in dtls.service(now):
            _log(line)
        if dtls.changed:
            dtls.changed = False
            self._pace(self.want_write)  # the tun may now feed DTLS, or CSTP again
            self.channel.send(self.status())  # unasked: the data channel changed

    def _from_supervisor(self) -> Stop | None:
        try:
            msg, _ = self.channel.recv()
        except PeerClosed:
            # The supervisor is gone: nobody can act on what we would report.
            return Stop(logoff=True)
        if isinstance(msg, Stop):
            return msg
        if isinstance(msg, QueryStatus):
            self.channel.send(self.status())
            return None
        raise WireError(f"unexpected {msg.op} from the supervisor")

    def status(self) -> WorkerStatus:
        s = self.session
        link = self.dtls
        if link is None:
            return WorkerStatus(
                channel="tls",
                tls_cipher=printable(self.stream.cipher, 100),
                dtls_cipher=None,
                dtls_state=printable(self.dtls_off_reason, 200) or "disabled",
                data_path=accel.IMPLEMENTATION,
                tx_bytes=s.tx_bytes,
                rx_bytes=s.rx_bytes,
                tx_packets=s.tx_packets,
                rx_packets=s.rx_packets,
            )
        tx_bytes, rx_bytes, tx_packets, rx_packets = link.traffic()
        return WorkerStatus(
            channel="dtls" if link.usable else "tls",
            tls_cipher=printable(self.stream.cipher, 100),
            dtls_cipher=printable(link.description, 100) or None,
            dtls_state=printable(link.state(), 200),
            data_path=accel.IMPLEMENTATION,
            tx_bytes=s.tx_bytes + tx_bytes,
            rx_bytes=s.rx_bytes + rx_bytes,
            tx_packets=s.tx_packets + tx_packets,
            rx_packets=s.rx_packets + rx_packets,
        )

    def _read_server(self) -> None:
        # OpenSSL hands over one record (one CSTP packet) per read: gather what is
        # ready, so that the tun gets the packets as a burst it can coalesce. A burst
        # may ask for answers (DPD), queued before reading on. Once they fill the
        # backlog, or _SERVER_READ is read, the socket is left alone and only what
        # OpenSSL holds is read: what is left is then in the socket, where the poller
        # sees it (the supervisor, the tun and the timers get their turn meanwhile).
        chunks: list[bytes] = []
        size = total = 0
        stream = self.stream
        recv = stream.recv_nowait
        while True:
            data = recv()
            if data is None:
                break
            if not data:
                if chunks:
                    self._from_server(b"".join(chunks))
                raise SessionFailure("connection_lost", "the server closed the connection")
            chunks.append(data)
            size += len(data)
            if size >= _SERVER_BURST:
                self._from_server(b"".join(chunks))
                chunks = []
                total += size
                size = 0
                if self.session.has_output:
                    self._flush()
                if total >= _SERVER_READ or self.tls_paused:
                    recv = stream.recv_buffered
        if chunks:
            self._from_server(b"".join(chunks))

    def _from_server(self, data: bytes) -> None:
        self.tun.write_packets(self.session.receive_data_untrusted(data, time.monotonic()))
        self._drain_events()

    def _drain_events(self) -> None:
        while (event := self.session.next_event()) is not None:
            if isinstance(event, DpdTimeout):
                raise SessionFailure("connection_lost", "the server stopped answering (DPD)")
            if isinstance(event, ServerDisconnected):
                raise SessionFailure("terminated", f"the server ended the session: {event.reason}")
            if isinstance(event, ServerTerminated):
                raise SessionFailure("terminated", "the server terminated the session")

    def _read_tun(self) -> None:
        dtls = self.dtls
        if self.backlog and (dtls is None or not dtls.usable):
            return  # TLS is full: leave packets in the tun queue (backpressure)
        now = time.monotonic()
        # Latency first: the first packet leaves before we look for more, so that the
        # read which finds the tun empty is not on an interactive packet's path.
        first = self.tun.read_packets(1)
        if first:
            self._to_server(first, now)
            rest = self.tun.read_packets(_TUN_BURST - 1)
            if rest:
                self._to_server(rest, now)

    def _to_server(self, packets: list[bytes], now: float) -> None:
        # DTLS sends what it carries now (a lone packet at once); the rest goes over CSTP.
        dtls = self.dtls
        if dtls is not None:
            packets = dtls.send(packets, now)
            if not packets:
                return
            if self.backlog and dtls.usable:
                return  # too large for DTLS, and TLS is full: dropped, as a full link drops
        self.session.send_packets(packets, now)
        self._flush()

    def _flush(self) -> None:
        backlog = self.backlog
        frames = self.session.frames_to_send()
        if frames:
            backlog += frames
        if backlog:
            del backlog[: self.stream.send_records_nowait(backlog)]
        # one send() for the burst's records (worker/io/tls.py)
        want_write = not self.stream.flush_nowait() or bool(backlog)
        if want_write or self.want_write:
            self._pace(want_write)

    def _pace(self, want_write: bool) -> None:
        """Backpressure while CSTP output waits: watch the TLS socket for room; stop
        reading it while the backlog is full or OpenSSL's own answers pile up, and stop
        reading the tun while its packets go over CSTP and any frame waits (the kernel
        drops at the tun queue, as with any full link)."""
        backlog, stream = self.backlog, self.stream
        tls_paused = len(backlog) >= _BACKLOG_LIMIT or stream.reading_blocked
        if want_write != self.want_write or tls_paused != self.tls_paused:
            self.selector.modify(stream.sock.fileno(), read=not tls_paused, write=want_write)
            self.want_write = want_write
            self.tls_paused = tls_paused
        dtls = self.dtls
        tun_paused = bool(backlog) and (dtls is None or not dtls.usable)
        if tun_paused != self.tun_paused:
            self.selector.modify(self.tun_fd, read=not tun_paused)
            self.tun_paused = tun_paused

    def _stop(self, stop: Stop) -> Outcome:
        self.session.disconnect(logoff=stop.logoff)
        self._flush()
        deadline = time.monotonic() + 2.0
        while (self.backlog or self.stream.has_output) and time.monotonic() < deadline:
            self.selector.poll(0.05)
            self._flush()
        self.stream.close()
        status = self.status()
        return Outcome(logoff=stop.logoff, tx_bytes=status.tx_bytes, rx_bytes=status.rx_bytes)
