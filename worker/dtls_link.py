"""The DTLS side of the data path: the UDP socket around the sans-I/O DtlsChannel.

DataPath (worker/datapath.py) owns the selector loop and talks to this object only:
:meth:`DtlsLink.send` takes tun packets, sends what DTLS carries now and returns the
rest for CSTP; :meth:`DtlsLink.receive` turns what the socket has into tun packets;
:meth:`get_timer` / :meth:`handle_timer`, and :meth:`service` when :meth:`has_work`
(channel events, queued handshake or DPD datagrams). Channel changes (DTLS up,
fallback to TLS) set :attr:`changed`; the data path then reports a WorkerStatus to
the supervisor unasked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from sepconnect.worker.connect import Tunnel
from sepconnect.worker.io.poller import Poller
from sepconnect.worker.io.udp import UdpError
from sepconnect.worker.proto.dtls_channel import (
    AttemptFailed,
    ChannelConfig,
    ChannelState,
    DtlsChannel,
    DtlsDown,
    DtlsUp,
    NewSocket,
)
from sepconnect.worker.proto.dtls_connection import DtlsConnection
from sepconnect.worker.proto.dtls_setup import DtlsPlan

__all__ = ["DtlsLink", "Udp"]

# Datagrams read per receive(): the rest wait in the socket (the kernel drops beyond its
# buffer), so that a flood from the server neither piles up here (the packets, and the
# answers to DPD requests) nor keeps the data path from its other fds and timers.
_RECEIVE_LIMIT = 512


class Udp(Protocol):
    """The UDP socket as the link uses it (worker/io/udp.py; a fake in the tests)."""

    drained: bool

    def fileno(self) -> int: ...
    def send_batch(self, datagrams: list[bytes]) -> int: ...
    def recv_batch(self, limit: int = 64) -> list[bytes]: ...
    def close(self) -> None: ...


class DtlsLink:
    def __init__(
        self,
        tunnel: Tunnel,
        plan: DtlsPlan,
        selector: Poller,
        now: float,
        open_udp: Callable[[str, int], Udp],
    ) -> None:
        cfg = tunnel.config
        assert cfg.dtls_port is not None
        self.address = tunnel.server.address
        self.port = cfg.dtls_port
        self.selector = selector
        self._open_udp = open_udp
        self.udp: Udp | None = None
        self._channel = DtlsChannel(
            lambda: DtlsConnection(plan.params, random=os.urandom),
            ChannelConfig(
                dpd=cfg.dtls_dpd,
                keepalive=cfg.dtls_keepalive,
                rekey=cfg.dtls_rekey_time if cfg.dtls_rekey_method not in (None, "none") else None,
                max_packet=plan.max_packet,
            ),
            now,
        )
        # The channel's, bound once: the data path asks both on every wakeup.
        self.get_timer: Callable[[], float | None] = self._channel.get_timer
        self.has_work: Callable[[], bool] = self._channel.has_work
        self.down_reason = ""
        self.changed = False  # the data channel changed since the data path last looked
        self.drained = True  # the last receive() found the socket empty

    # -- socket ---------------------------------------------------------------------

    def _new_socket(self) -> None:
        self._close_socket()
        try:
            self.udp = self._open_udp(self.address, self.port)
        except OSError:
            self.udp = None  # e.g. no route: the channel's handshake simply times out
            return
        self.selector.register(self.udp.fileno(), "udp")

    def _close_socket(self) -> None:
        if self.udp is not None:
            self.selector.unregister(self.udp.fileno())
            self.udp.close()
            self.udp = None

    # -- data path hooks ------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._channel.usable

    def send(self, packets: list[bytes], now: float) -> list[bytes]:
        """Seal a burst of tun packets and send it at once; returns the packets that
        must go over CSTP (:meth:`DtlsChannel.seal_packets` decides). A lone packet is
        a burst of one: one send(), no queue on its path."""
        datagrams, over_cstp = self._channel.seal_packets(packets, now)
        if datagrams:
            self._send(datagrams, now)
        return over_cstp

    def receive(self, now: float, *, first: bool = False) -> list[bytes]:
        """Datagrams ready on the socket → IP packets for the tun. With ``first``, only
        one read (with GRO, one train of datagrams): the caller delivers those before
        it reads on, so that an interactive packet does not wait for the read that
        finds the socket empty. :attr:`drained` says whether that read happened. At most
        about :data:`_RECEIVE_LIMIT` datagrams per call."""
        packets: list[bytes] = []
        udp = self.udp
        self.drained = True
        if udp is None:
            return packets
        received = 0
        try:
            while batch := udp.recv_batch(1 if first else 64):
                packets.extend(self._channel.receive_datagrams_untrusted(batch, now))
                if udp.drained:
                    break  # saves one recvmsg (EAGAIN) per wakeup
                if first:
                    self.drained = False
                    break
                received += len(batch)
                if received >= _RECEIVE_LIMIT:
                    self.drained = False  # the rest waits for the next wakeup
                    break
        except UdpError as exc:
            self._channel.socket_error(now, str(exc))
        return packets

    def handle_timer(self, now: float) -> None:
        timer = self._channel.get_timer()
        if timer is not None and timer <= now:
            self._channel.handle_timer(now)

    def service(self, now: float) -> list[str]:
        """Handle the channel's events (a new socket before what is queued next), send
        what it queued, then handle what sending caused; returns log lines for failed
        attempts. Changes of the data channel set :attr:`changed` instead."""
        lines = self._events()
        if self._channel.has_output:
            self._flush(now)
            lines += self._events()
        return lines

    def _events(self) -> list[str]:
        lines: list[str] = []
        while (event := self._channel.next_event()) is not None:
            if isinstance(event, NewSocket):
                self._new_socket()
            elif isinstance(event, DtlsUp):
                self.changed = True  # the supervisor logs the change from our WorkerStatus
            elif isinstance(event, DtlsDown):
                self.changed = True
                self.down_reason = event.reason
            elif isinstance(event, AttemptFailed):
                lines.append(f"{event.reason}; data stays on TLS, next try in {event.retry_in:g} s")
        return lines

    def _flush(self, now: float) -> None:
        """Send what the channel queued (handshake, DPD, keepalive)."""
        datagrams = self._channel.datagrams_to_send()
        if datagrams:
            self._send(datagrams, now)

    def _send(self, datagrams: list[bytes], now: float) -> None:
        # What the socket has no room for is dropped, as a router would.
        udp = self.udp
        if udp is not None:
            try:
                udp.send_batch(datagrams)
            except UdpError as exc:
                self._channel.socket_error(now, str(exc))

    @property
    def description(self) -> str:
        """e.g. ``DTLS1.2 PSK-AES128-GCM-SHA256``, or "" before the first handshake."""
        return self._channel.description

    def traffic(self) -> tuple[int, int, int, int]:
        """Data carried over DTLS: tx bytes, rx bytes, tx packets, rx packets."""
        c = self._channel
        return c.tx_bytes, c.rx_bytes, c.tx_packets, c.rx_packets

    def state(self) -> str:
        state = self._channel.state
        if state is ChannelState.UP:
            return "up"
        if state is ChannelState.LOST:
            return f"lost ({self.down_reason})"
        if state is ChannelState.CONNECTING:
            return "handshaking"
        if state is ChannelState.WAITING:
            return "waiting to retry" if self._channel.attempts else "starting"
        return "closed"

    def close(self, now: float) -> None:
        self._channel.close()
        self._flush(now)
        self._close_socket()
