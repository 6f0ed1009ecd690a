"""ACK filtering (RFC 3449 §5.2.2), sans-I/O: within one burst of packets from the
server, a pure TCP ACK that a later ACK of the same connection supersedes is dropped.

Why: on an upload the server's TCP acknowledges every second segment, so the tun
takes about one pure ACK for every two packets we send, each a write and a pass
through the local TCP stack. The ACKs of one burst reach the tun within
microseconds of each other, so the earlier ones carry no timing the last does not;
an ACK is cumulative, so the last carries their information too. The measured share
of ACKs a later one superseded in the same burst was 70% over DTLS and 87% over TLS
(docs/performance.md). Linux grows its congestion window by the segments an ACK
newly acknowledges, not by the number of ACKs, so it takes such stretch ACKs as it
takes those of a receiver that uses GRO.

Only *plain* ACKs are dropped or let supersede: no payload, the ACK flag alone (no
SYN, FIN, RST, URG, PSH, ECE or CWR), and no TCP option but timestamps. So ACKs with
SACK blocks (Linux's duplicate ACKs) and ECN echoes, which carry loss and congestion
signals, always go through, as does everything not TCP. An ACK is dropped only when
a later one in the burst acknowledges strictly more, so the survivor covers it; a
repeated acknowledgement number with nothing beyond it is kept. A superseding ACK
must carry valid checksums, so that an earlier ACK is never dropped on behalf of one
the kernel will discard.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_PLAIN_ACK", "filter_acks", "plain_ack"]

MAX_PLAIN_ACK: Final = 72  # IPv6 header (40) + TCP header with timestamps (32)
_TCP: Final = 6
_ACK_ONLY: Final = 0x10
_TIMESTAMPS: Final = b"\x01\x01\x08\x0a"  # NOP, NOP, kind 8 length 10 (RFC 7323 layout)


def plain_ack(packet: bytes) -> tuple[bytes, int, bool] | None:
    """(connection key, acknowledgement number, checksums valid) of a plain ACK;
    None for any other packet. The key holds addresses and ports, in this direction."""
    n = len(packet)
    if n > MAX_PLAIN_ACK:
        return None
    if n in (40, 52) and packet[0] == 0x45:
        # TCP, not a fragment (DF alone may be set), the length field true to the packet.
        if packet[9] != _TCP or packet[6] & 0x3F or packet[7] or packet[2] << 8 | packet[3] != n:
            return None
        l4 = 20
        start = 12  # addresses, then the TCP header: the checksummed words
    elif n in (60, 72) and packet[0] >> 4 == 6:
        if packet[6] != _TCP or packet[4] << 8 | packet[5] != n - 40:
            return None  # extension headers: not looked into
        l4 = 40
        start = 8
    else:
        return None
    tcp_len = n - l4
    # Data offset equal to the header length (no payload), reserved bits clear.
    if packet[l4 + 12] != tcp_len << 2 or packet[l4 + 13] != _ACK_ONLY:
        return None
    if tcp_len == 32 and packet[l4 + 20 : l4 + 24] != _TIMESTAMPS:
        return None
    # Pseudo-header (addresses, protocol, length) and segment sum to 0xFFFF, i.e. 0
    # mod 0xFFFF: the big-endian integer of 16-bit words is their sum mod 0xFFFF.
    valid = (int.from_bytes(packet[start:], "big") + _TCP + tcp_len) % 0xFFFF == 0
    if l4 == 20:
        valid = valid and int.from_bytes(packet[:20], "big") % 0xFFFF == 0
    return packet[start : l4 + 4], int.from_bytes(packet[l4 + 8 : l4 + 12], "big"), valid


def filter_acks(packets: list[bytes]) -> list[bytes]:
    """``packets`` without the plain ACKs that a later plain ACK of the same
    connection, with valid checksums, acknowledges beyond. Order is kept; the list
    itself is returned when nothing is dropped."""
    latest: dict[bytes, int] = {}  # key → ack number of the next plain ACK, walking back
    kept: list[bytes] = []
    dropped = False
    for packet in reversed(packets):
        if len(packet) <= MAX_PLAIN_ACK:
            found = plain_ack(packet)
            if found is not None:
                key, ack, valid = found
                later = latest.get(key)
                # Serial-number arithmetic (RFC 1982): "later" is ahead of "ack".
                if later is not None and 0 < (later - ack) & 0xFFFFFFFF < 0x80000000:
                    dropped = True
                    continue
                if valid:
                    latest[key] = ack
                else:
                    latest.pop(key, None)  # supersedes nothing, and hides nothing behind
        kept.append(packet)
    if not dropped:
        return packets
    kept.reverse()
    return kept
