"""CSTP channel state: DPD, keepalive and control packets, sans-I/O.

API in the aioquic style (STYLE.md §1.4): the driver feeds TLS plaintext with
:meth:`CstpSession.receive_data_untrusted`, queues tun packets with
:meth:`CstpSession.send_packets`, writes whatever :meth:`CstpSession.frames_to_send`
returns (one CSTP frame per element; write each as its own TLS record), arms a
timer for :meth:`CstpSession.get_timer` and calls
:meth:`CstpSession.handle_timer` when it fires, then drains
:meth:`CstpSession.next_event`. Time is always passed in as ``now`` (seconds,
any monotonic clock); the session never reads a clock.

**Received IP packets are returned, not queued as events**:
``receive_data_untrusted`` returns the list of DATA payloads decoded from the
bytes it was given, in order, so the driver can write a whole burst to the
tun device without one event object per packet. Events are only the rare
control outcomes: :class:`DpdTimeout`, :class:`ServerDisconnected` and
:class:`ServerTerminated`. After any of them (or after :meth:`disconnect`)
the session is closed: input is ignored, packets are dropped and there is no
timer.

Timers (PROTOCOL.md §5.3, openconnect ``keepalive_action``):

- DPD: a DPD-REQ goes out at ``last_rx + dpd``; while it is unanswered
  (no packet of any kind received since) it is repeated every ``dpd / 2``;
  at ``last_rx + 2 * dpd`` the peer is declared dead (:class:`DpdTimeout`).
- keepalive: a KEEPALIVE goes out at ``last_tx + keepalive`` (any frame we
  queue, including DPD frames, counts as transmission), unless the driver says frames
  still wait to be sent (as openconnect: they are traffic enough, or the link is full
  and one more would only wait with them).
- Any frame received counts as proof of life. A server DPD-REQ is answered
  with a DPD-RESP echoing its payload (as ocserv does).

Counters (:attr:`CstpSession.rx_packets` etc.) count DATA packets and their
payload bytes only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from sepconnect.worker.proto.cstp import (
    DISCONNECT_USER_LOGOFF,
    CstpDecoder,
    PacketType,
    encode_data_burst,
    encode_disconnect,
    encode_frame,
)

__all__ = [
    "CstpSession",
    "DpdTimeout",
    "Event",
    "ServerDisconnected",
    "ServerTerminated",
]

_DATA: Final = PacketType.DATA
_DPD_REQ: Final = PacketType.DPD_REQ
_DPD_RESP: Final = PacketType.DPD_RESP
_KEEPALIVE_FRAME: Final = encode_frame(PacketType.KEEPALIVE)
_DPD_REQ_FRAME: Final = encode_frame(PacketType.DPD_REQ)
_LOGOFF_TEXT: Final = "Client disconnect"
_MAX_REASON: Final = 200

# Disconnect reason bytes (draft-mavrogiannopoulos-openconnect, ocserv vpn.h).
_REASONS: Final = {
    0xB0: "user logged off",
    0x70: "local error",
    0x91: "reconnect requested",
    0xD1: "session paused",
}


@dataclass(frozen=True, slots=True)
class DpdTimeout:
    """No packet from the server for 2 x DPD seconds: the CSTP link is dead."""


@dataclass(frozen=True, slots=True)
class ServerDisconnected:
    """The server sent DISCONNECT. *reason* is printable text for the user;
    *code* the reason byte (None if the packet had no payload)."""

    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class ServerTerminated:
    """The server sent TERMINATE (the session was ended on the server)."""


Event = DpdTimeout | ServerDisconnected | ServerTerminated


def _describe_disconnect(payload: bytes) -> ServerDisconnected:
    if not payload:
        return ServerDisconnected("Server disconnected the session")
    code = payload[0]
    raw = payload[1 : 1 + _MAX_REASON].decode("ascii", "replace")
    text = "".join(c for c in raw if c.isprintable()).strip()
    if not text:
        text = _REASONS.get(code, f"reason code {code:#04x}")
    return ServerDisconnected(f"Server disconnected the session: {text}", code)


class CstpSession:
    """State of one CSTP connection after a successful CONNECT."""

    __slots__ = (
        "_closed",
        "_decoder",
        "_dpd",
        "_events",
        "_keepalive",
        "_last_dpd",
        "_out",
        "last_rx",
        "last_tx",
        "rx_bytes",
        "rx_packets",
        "tx_bytes",
        "tx_packets",
    )

    def __init__(self, *, dpd: int | None, keepalive: int | None, now: float) -> None:
        self._decoder = CstpDecoder()
        self._dpd: float | None = float(dpd) if dpd is not None and dpd > 0 else None
        self._keepalive: float | None = (
            float(keepalive) if keepalive is not None and keepalive > 0 else None
        )
        self.last_rx: float = now
        """When we last received any frame."""
        self.last_tx: float = now
        """When we last queued any frame."""
        self._last_dpd: float | None = None
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._closed = False
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0

    @property
    def closed(self) -> bool:
        return self._closed

    # -- input -----------------------------------------------------------

    def receive_data_untrusted(self, data: bytes, now: float) -> list[bytes]:
        """Feed TLS plaintext from the server; returns the DATA payloads in it.

        Answers DPD-REQ, notes DISCONNECT/TERMINATE as events (and closes).
        Raises CstpError on a malformed stream (the driver should then drop
        the connection and reconnect).
        """
        if self._closed:
            return []
        frames = self._decoder.feed_pairs_untrusted(data)
        if not frames:
            return []
        self.last_rx = now
        packets: list[bytes] = []
        nbytes = 0
        for ptype, payload in frames:
            if ptype is _DATA:
                packets.append(payload)
                nbytes += len(payload)
            elif ptype is _DPD_REQ:
                self._out.append(encode_frame(_DPD_RESP, payload))
                self.last_tx = now
            elif ptype is PacketType.DISCONNECT:
                self._events.append(_describe_disconnect(payload))
                self._closed = True
                break
            elif ptype is PacketType.TERMINATE:
                self._events.append(ServerTerminated())
                self._closed = True
                break
            # DPD_RESP and KEEPALIVE: proof of life only.
        self.rx_packets += len(packets)
        self.rx_bytes += nbytes
        return packets

    # -- output ----------------------------------------------------------

    def send_packets(self, packets: list[bytes], now: float) -> None:
        """Queue IP packets as DATA frames, one each (dropped if the session is closed).

        Raises ValueError if a packet exceeds cstp.MAX_PAYLOAD.
        """
        if self._closed:
            return
        self._out += encode_data_burst(packets)  # in C with the compiled accelerator
        self.last_tx = now
        self.tx_packets += len(packets)
        self.tx_bytes += sum(map(len, packets))

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def frames_to_send(self) -> list[bytes]:
        """Encoded frames queued since the last call, oldest first."""
        out = self._out
        self._out = []
        return out

    def disconnect(self, *, logoff: bool) -> None:
        """Close the session. With *logoff*, queue DISCONNECT 0xb0 (the server
        then invalidates the cookie); without, queue nothing (the session and
        cookie stay valid for a later reconnect)."""
        if self._closed:
            return
        if logoff:
            self._out.append(encode_disconnect(DISCONNECT_USER_LOGOFF, _LOGOFF_TEXT))
        self._closed = True

    # -- timers ----------------------------------------------------------

    def _dpd_due(self, dpd: float) -> float:
        last_dpd = self._last_dpd
        if last_dpd is not None and last_dpd > self.last_rx:
            return last_dpd + dpd / 2  # one outstanding: repeat after half a period
        return self.last_rx + dpd

    def get_timer(self) -> float | None:
        """When handle_timer should next run, or None for never."""
        if self._closed:
            return None
        deadline: float | None = None
        dpd = self._dpd
        if dpd is not None:
            deadline = min(self.last_rx + 2 * dpd, self._dpd_due(dpd))
        keepalive = self._keepalive
        if keepalive is not None:
            ka = self.last_tx + keepalive
            deadline = ka if deadline is None else min(deadline, ka)
        return deadline

    def handle_timer(self, now: float, *, output_waiting: bool = False) -> None:
        """Run due DPD / keepalive actions (safe to call early or repeatedly).
        *output_waiting*: frames handed out earlier have not been sent yet."""
        if self._closed:
            return
        dpd = self._dpd
        if dpd is not None:
            if now >= self.last_rx + 2 * dpd:
                self._events.append(DpdTimeout())
                self._closed = True
                return
            if now >= self._dpd_due(dpd):
                self._out.append(_DPD_REQ_FRAME)
                self._last_dpd = now
                self.last_tx = now
        keepalive = self._keepalive
        if keepalive is not None and now >= self.last_tx + keepalive:
            if not output_waiting:
                self._out.append(_KEEPALIVE_FRAME)
            self.last_tx = now

    # -- events ----------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next pending event, or None."""
        if self._events:
            return self._events.popleft()
        return None
