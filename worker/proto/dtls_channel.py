"""The DTLS data channel: which channel carries data, DPD, keepalive, fast failover
to CSTP and the return to DTLS. Sans-I/O (time as ``now``, no sockets).

It owns a :class:`DtlsConnection` at a time and decides what to do with it. States::

    CONNECTING --handshake done--> UP --silence/ICMP--> LOST --answer--> UP
        |                           |                     |
        +--failed--> WAITING <------+--session ended------+--no answer for long
                        |
                        +--retry timer--> CONNECTING (on a fresh UDP socket)

:meth:`DtlsChannel.seal_packets` is where data is put on DTLS or CSTP: a tun packet
goes over DTLS only in UP (:attr:`DtlsChannel.usable`) and when it fits one record;
every other one is handed back for the driver to send over CSTP. Incoming data is
accepted in every state.

Loss detection (DESIGN.md §5, docs/dtls.md): the time of the first packet sent
since the last authenticated record received is remembered ("unanswered since").
Once that is ``suspect_after`` old, DPD-REQ probes go out every ``probe_interval``;
once it is ``lost_after`` old with still nothing received, the channel is LOST and
data moves to CSTP. Traffic that the server answers (anything received, including
DPD-RESP to the probes) clears the clock, so one-way traffic costs a probe now and
then, never a false failover. When idle, the server's DPD interval (X-DTLS-DPD)
starts the same probe cycle. An ICMP error on the socket (connection refused) is
loss at once. In LOST the channel keeps probing the same session every
``down_probe_interval`` and returns to UP on the first authenticated answer; after
``down_probe_for`` it gives the session up and starts new handshakes every
``retry_interval`` (each on a new UDP socket: ocserv hands a DTLS session to its
worker by the ClientHello's session id when it arrives from a new address/port).

Events: :class:`NewSocket` (open a fresh UDP socket before sending what is queued
next), :class:`DtlsUp`, :class:`DtlsDown`, :class:`AttemptFailed`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from sepconnect.worker.proto.dtls_connection import (
    ConnectionClosed,
    DtlsConnection,
    HandshakeComplete,
    HandshakeTimeout,
)
from sepconnect.worker.proto.dtls_crypto import version_name

__all__ = [
    "AttemptFailed",
    "ChannelConfig",
    "ChannelState",
    "DtlsChannel",
    "DtlsDown",
    "DtlsUp",
    "NewSocket",
]

# 1-byte packet types on DTLS (the CSTP type byte; PROTOCOL.md §4)
PKT_DATA: Final = 0x00
PKT_DPD_REQ: Final = 0x03
PKT_DPD_RESP: Final = 0x04
PKT_KEEPALIVE: Final = 0x07
_DATA: Final = bytes((PKT_DATA,))
_DPD_REQ: Final = bytes((PKT_DPD_REQ,))
_DPD_RESP: Final = bytes((PKT_DPD_RESP,))
_KEEPALIVE: Final = bytes((PKT_KEEPALIVE,))


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Timers in seconds. *dpd*/*keepalive*/*rekey* come from X-DTLS-*; None = off."""

    dpd: float | None = None
    keepalive: float | None = None
    rekey: float | None = None
    max_packet: int = 1500  # larger packets go over CSTP
    suspect_after: float = 0.75
    lost_after: float = 1.5
    probe_interval: float = 0.25
    down_probe_interval: float = 1.0
    down_probe_for: float = 30.0
    retry_interval: float = 4.0
    retry_max: float = 60.0


class ChannelState(Enum):
    CONNECTING = "connecting"
    UP = "up"
    LOST = "lost"
    WAITING = "waiting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class NewSocket:
    """Replace the UDP socket before sending the datagrams queued from now on."""


@dataclass(frozen=True, slots=True)
class DtlsUp:
    """Data moves to DTLS. *restored*: after a loss, on the same session."""

    version: str
    cipher: str
    restored: bool


@dataclass(frozen=True, slots=True)
class DtlsDown:
    """Data moves to CSTP; *reason* is one line for the log."""

    reason: str


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """A handshake attempt failed; the channel retries after *retry_in* seconds."""

    reason: str
    retry_in: float


Event = NewSocket | DtlsUp | DtlsDown | AttemptFailed


class DtlsChannel:
    """Policy around DTLS connections; see the module docstring."""

    def __init__(
        self,
        make_connection: Callable[[], DtlsConnection],
        config: ChannelConfig,
        now: float,
    ) -> None:
        self._make = make_connection
        self.config = config
        self.state = ChannelState.WAITING
        self.conn: DtlsConnection | None = None
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._retry_at: float | None = now
        self._failures = 0
        self.ever_up = False
        self.attempts = 0
        self._up_since = now
        self._lost_since = now
        self.last_rx = now
        self.last_tx = now
        self._unanswered_since: float | None = None
        self._last_probe = -1e9
        self.cipher = ""
        self.version = ""
        self.tx_packets = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.rx_bytes = 0
        self.failovers = 0

    # ------------------------------------------------------------------ state

    @property
    def usable(self) -> bool:
        return self.state is ChannelState.UP

    @property
    def description(self) -> str:
        """e.g. ``DTLS1.2 PSK-AES128-GCM-SHA256``, or "" before the first handshake."""
        return f"{self.version} {self.cipher}" if self.cipher else ""

    @property
    def data_overhead(self) -> int:
        """Bytes added to each tun packet on the wire: type byte + record overhead."""
        return 1 + (self.conn.data_overhead if self.conn else 0)

    def _start_attempt(self, now: float) -> None:
        self.conn = self._make()
        self.attempts += 1
        self.state = ChannelState.CONNECTING
        self._retry_at = None
        self._events.append(NewSocket())
        self.conn.connect(now)
        self._pull(self.conn)

    def _pull(self, conn: DtlsConnection) -> None:
        self._out.extend(conn.datagrams_to_send())

    def _go_up(self, now: float, *, restored: bool) -> None:
        self.state = ChannelState.UP
        self.ever_up = True
        self._failures = 0
        self._unanswered_since = None
        self.last_rx = now
        if not restored:
            self._up_since = now
        self._events.append(DtlsUp(self.version, self.cipher, restored))

    def _go_lost(self, now: float, reason: str) -> None:
        self.state = ChannelState.LOST
        self.failovers += 1
        self._lost_since = now
        self._last_probe = -1e9
        self._unanswered_since = None
        self._events.append(DtlsDown(reason))

    def _go_waiting(self, now: float, reason: str, *, immediate: bool = False) -> None:
        was_up = self.state is ChannelState.UP
        # No close_notify: a session is simply replaced (a new ClientHello from a new
        # port), and some servers treat a DTLS alert as the end of the whole tunnel.
        self.conn = None
        self.state = ChannelState.WAITING
        if immediate:
            delay = 0.0
        elif self.ever_up:
            delay = self.config.retry_interval
        else:
            self._failures += 1
            delay = min(
                self.config.retry_interval * 2 ** (self._failures - 1), self.config.retry_max
            )
        self._retry_at = now + delay
        if was_up:
            self._events.append(DtlsDown(reason))
        else:
            self._events.append(AttemptFailed(reason, delay))

    # ------------------------------------------------------------------ input

    def receive_datagrams_untrusted(self, datagrams: list[bytes], now: float) -> list[bytes]:
        """IP packets from a burst of datagrams, in order (any state); runs the
        handshake too."""
        conn = self.conn
        if conn is None:
            return []
        before = conn.records_in
        # Data packets come without their CSTP type byte, from the record layer (no
        # loop over them here); the other payloads as they are.
        packets, others = conn.receive_split_untrusted(datagrams, now, PKT_DATA)
        if conn.records_in != before:  # something authenticated arrived
            self.last_rx = now
            self._unanswered_since = None
            if self.state is ChannelState.LOST:
                self._go_up(now, restored=True)
        for payload in others:
            if payload and payload[0] == PKT_DPD_REQ:
                self._send(_DPD_RESP, now, expect_answer=False)
            # DPD_RESP, KEEPALIVE, DATA without a packet: proof of life only; others
            # ignored (as openconnect)
        if packets:
            self.rx_bytes += len(packets[0]) if len(packets) == 1 else sum(map(len, packets))
            self.rx_packets += len(packets)
        self._events_from(conn, now)
        return packets

    def socket_error(self, now: float, reason: str) -> None:
        """The UDP socket reported an error (e.g. ICMP port unreachable)."""
        if self.state is ChannelState.UP:
            self._go_lost(now, f"UDP lost: {reason}")
        elif self.state is ChannelState.CONNECTING:
            self._go_waiting(now, reason)

    # ------------------------------------------------------------------ output

    def seal_packets(self, packets: list[bytes], now: float) -> tuple[list[bytes], list[bytes]]:
        """(datagrams, over_cstp): the datagrams carrying a burst of IP packets over
        DTLS, for the caller to send now (not queued: a lone packet of an interactive
        flow leaves at once), and the packets the caller must send over CSTP instead:
        all of them unless the channel is up, and those too large for one record."""
        conn = self.conn
        # In UP the connection is established: whatever ends it takes the channel out
        # of UP at once (its events are handled where it can fail).
        if self.state is not ChannelState.UP or conn is None:
            return [], packets
        limit = self.config.max_packet
        # No loop over the packets in Python: the CSTP type byte is sealed with each
        # (seal_data's prefix), and sizes are looked at by map() in C (a lone packet,
        # an interactive flow's, without it: each map() is an object to make).
        nbytes = len(packets[0]) if len(packets) == 1 else sum(map(len, packets))
        if nbytes <= limit or max(map(len, packets)) <= limit:  # the common case: all fit
            payloads, over_cstp = packets, []
        else:
            payloads = [p for p in packets if len(p) <= limit]
            over_cstp = [p for p in packets if len(p) > limit]
            nbytes = sum(map(len, payloads))
        datagrams = conn.seal_data(payloads, _DATA)
        sent = len(datagrams)
        if sent < len(payloads):  # the sequence numbers ran out: the connection failed
            over_cstp += payloads[sent:]
            payloads = payloads[:sent]
            nbytes = sum(map(len, payloads))
            self._events_from(conn, now)  # not UP any more
        if sent:
            self.tx_packets += sent
            self.tx_bytes += nbytes
            self.last_tx = now
            if self._unanswered_since is None:
                self._unanswered_since = now
        return datagrams, over_cstp

    def _send(self, payload: bytes, now: float, *, expect_answer: bool) -> None:
        conn = self.conn
        if conn is None or not conn.established:
            return
        datagrams = conn.seal_data([payload])
        if not datagrams:  # the sequence numbers ran out: the connection failed
            self._events_from(conn, now)
            return
        self._out += datagrams
        self.last_tx = now
        if expect_answer and self._unanswered_since is None:
            self._unanswered_since = now

    def _probe(self, now: float) -> None:
        self._last_probe = now
        self._send(_DPD_REQ, now, expect_answer=True)

    @property
    def has_output(self) -> bool:
        """Datagrams wait to be sent (cheap: the data path asks on every wakeup)."""
        return bool(self._out) or (self.conn is not None and self.conn.has_output)

    def has_work(self) -> bool:
        """Events or datagrams wait (cheap: the data path asks on every wakeup)."""
        return bool(self._events or self._out) or (self.conn is not None and self.conn.has_output)

    def datagrams_to_send(self) -> list[bytes]:
        if self.conn is not None:
            self._pull(self.conn)
        out = self._out
        self._out = []
        return out

    def close(self) -> None:
        """End for good (the session ends over CSTP; nothing is sent on UDP)."""
        self.conn = None
        self._out = []
        self.state = ChannelState.CLOSED
        self._retry_at = None

    # ------------------------------------------------------------------ events

    def _events_from(self, conn: DtlsConnection, now: float) -> None:
        while (event := conn.next_event()) is not None:
            if conn is not self.conn:
                continue
            if isinstance(event, HandshakeComplete):
                self.version = version_name(event.version)
                self.cipher = event.suite.name
                self._go_up(now, restored=False)
            elif isinstance(event, ConnectionClosed) and event.error is not None:
                reason = f"DTLS {event.reason}"
                if self.state is ChannelState.CONNECTING:
                    reason = f"DTLS handshake failed: {event.reason}"
                    if isinstance(event.error, HandshakeTimeout):
                        reason = "DTLS handshake got no answer"
                self._go_waiting(now, reason)

    def next_event(self) -> Event | None:
        if self._events:
            return self._events.popleft()
        return None

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        c = self.config
        state = self.state
        if state is ChannelState.WAITING:
            return self._retry_at
        if state is ChannelState.CONNECTING:
            return self.conn.get_timer() if self.conn else None
        if state is ChannelState.LOST:
            return min(
                self._last_probe + c.down_probe_interval, self._lost_since + c.down_probe_for
            )
        if state is not ChannelState.UP:
            return None
        times: list[float] = []
        if self._unanswered_since is not None:
            t = self._unanswered_since
            times.append(t + c.lost_after)
            times.append(max(t + c.suspect_after, self._last_probe + c.probe_interval))
        elif c.dpd is not None:
            times.append(self.last_rx + c.dpd)
        if c.keepalive is not None:
            times.append(self.last_tx + c.keepalive)
        if c.rekey is not None:
            times.append(self._up_since + c.rekey)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        c = self.config
        state = self.state
        if state is ChannelState.WAITING:
            if self._retry_at is not None and now >= self._retry_at:
                self._start_attempt(now)
            return
        if state is ChannelState.CONNECTING:
            if self.conn is not None:
                self.conn.handle_timer(now)
                self._events_from(self.conn, now)
            return
        if state is ChannelState.LOST:
            if now >= self._lost_since + c.down_probe_for:
                self._go_waiting(now, "no answer over UDP for long; new handshake", immediate=True)
                self._events.pop()  # not a new failure: the loss was reported already
                return
            if now >= self._last_probe + c.down_probe_interval:
                self._probe(now)
            return
        if state is not ChannelState.UP:
            return
        if c.rekey is not None and now >= self._up_since + c.rekey:
            self._go_waiting(now, "DTLS rekey: new handshake", immediate=True)
            return
        unanswered = self._unanswered_since
        if unanswered is not None:
            if now >= unanswered + c.lost_after:
                self._go_lost(now, f"UDP lost: no answer for {now - unanswered:.1f} s")
                return
            if now >= unanswered + c.suspect_after and now >= self._last_probe + c.probe_interval:
                self._probe(now)
        elif c.dpd is not None and now >= self.last_rx + c.dpd:
            self._probe(now)
        if c.keepalive is not None and now >= self.last_tx + c.keepalive:
            self._send(_KEEPALIVE, now, expect_answer=False)
