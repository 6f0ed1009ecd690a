"""The routes of the host's that may win over the tunnel's: the ``conflict`` record.

The helper installs each route through the tun with metric :data:`METRIC`. For an equal
prefix the lower metric wins, so a route of the host's with the prefix of one of ours and
a metric not above ours (a hand-made metric-0 route, say) may carry that traffic
instead. The helper leaves such a route alone (it is not ours) and installs ours next to
it. Once the helper has applied a configuration, the supervisor reads table main of its
network namespace (the helper's) with a netlink dump, which needs no privilege, and
writes a ``conflict`` record to its session log for each such route competing with one
of ours that this configuration added. The record is information only: nothing acts on
it, and ``--fail-closed`` is the control for traffic that must not leave the tunnel.
Ours are the routes through the tun with our protocol number; a vpnc-script's carry
none, and with ``--no-routes`` there are none, so neither is reported on.

:func:`parse_dump` and :func:`competing` are pure (tests/unit/test_supervisor_routes.py);
:func:`read_table` is the I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct
import sys
from collections.abc import Iterable
from typing import Final

from sepconnect.ipc.fields import IpNetwork
from sepconnect.ipc.netconfig import METRIC, RT_TABLE_MAIN, RTPROT_SEPCONNECT

# <linux/netlink.h>, <linux/rtnetlink.h>
_ERROR, _DONE, _NEWROUTE, _GETROUTE = 2, 3, 24, 26
_DUMP: Final = 0x301  # NLM_F_REQUEST | NLM_F_DUMP
_RTA_DST, _RTA_OIF, _RTA_PRIORITY, _RTA_TABLE = 1, 4, 6, 15
_HEADER: Final = struct.Struct("=IHHII")  # struct nlmsghdr
_RTMSG: Final = struct.Struct("=BBBBBBBBI")  # struct rtmsg
_ATTR: Final = struct.Struct("=HH")  # struct rtattr
_RECV_BUFFER: Final = 1 << 17
_TIMEOUT: Final = 2.0  # the kernel answers at once; this only bounds a surprise


@dataclasses.dataclass(frozen=True, slots=True)
class TableRoute:
    """A route of table main: its prefix, metric, device and route protocol."""

    dst: IpNetwork
    metric: int
    oif: int
    proto: int


def ours(table: Iterable[TableRoute], ifindex: int) -> frozenset[IpNetwork]:
    """The prefixes of the routes the helper installed through the tun ``ifindex``."""
    return frozenset(r.dst for r in table if r.oif == ifindex and r.proto == RTPROT_SEPCONNECT)


def competing(added: Iterable[IpNetwork], ifindex: int, table: Iterable[TableRoute]) -> list[str]:
    """Why each route of the host's with the prefix of one of ``added`` (our routes
    through the tun ``ifindex``) and a metric not above ours may win."""
    why = f"a route with a lower or equal metric than ours ({METRIC}) exists and may win"
    prefixes = frozenset(added)
    theirs = [r for r in table if r.proto != RTPROT_SEPCONNECT and r.oif != ifindex]
    return [
        f"{r.dst}: {why}: {r.dst} metric {r.metric} oif {r.oif}"
        for r in theirs
        if r.dst in prefixes and r.metric <= METRIC
    ]


def parse_dump(data: bytes) -> tuple[list[TableRoute], bool]:
    """The routes of table main in one datagram of a route dump, and whether the dump
    ended with it. ValueError on a malformed message, OSError on the kernel's error."""
    routes: list[TableRoute] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        end = offset + length
        if length < _HEADER.size + 4 or end > len(data):
            raise ValueError(f"netlink: message length {length}")
        if kind == _DONE:
            return routes, True
        if kind == _ERROR:  # struct nlmsgerr: the negative errno first
            (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            raise OSError(-code, f"route dump: error {-code}")
        if kind == _NEWROUTE:
            route = _route(data[offset + _HEADER.size : end])
            if route is not None:
                routes.append(route)
        offset = (end + 3) & ~3
    return routes, False


def _route(body: bytes) -> TableRoute | None:
    """One RTM_NEWROUTE's route, if it is in table main."""
    if len(body) < _RTMSG.size:
        raise ValueError(f"netlink: route message of {len(body)} bytes")
    family, dst_len, _src_len, _tos, table, proto, _scope, _type, _flags = _RTMSG.unpack_from(body)
    attrs: dict[int, bytes] = {}
    offset = _RTMSG.size
    while offset + _ATTR.size <= len(body):
        length, kind = _ATTR.unpack_from(body, offset)
        if length < _ATTR.size or offset + length > len(body):
            raise ValueError(f"netlink: route attribute length {length}")
        attrs[kind] = body[offset + _ATTR.size : offset + length]
        offset = (offset + length + 3) & ~3
    if _number(attrs, _RTA_TABLE, table) != RT_TABLE_MAIN or family not in _SIZES:
        return None
    raw = attrs.get(_RTA_DST, bytes(_SIZES[family]))  # none: the default route
    if len(raw) != _SIZES[family] or dst_len > 8 * len(raw):
        raise ValueError(f"netlink: route destination of {len(raw)} bytes, /{dst_len}")
    dst = ipaddress.ip_network((ipaddress.ip_address(raw), dst_len), strict=False)
    return TableRoute(dst, _number(attrs, _RTA_PRIORITY, 0), _number(attrs, _RTA_OIF, 0), proto)


_SIZES: Final = {socket.AF_INET: 4, socket.AF_INET6: 16}


def _number(attrs: dict[int, bytes], kind: int, default: int) -> int:
    raw = attrs.get(kind)
    if raw is None:
        return default
    if len(raw) != 4:
        raise ValueError(f"netlink: route attribute {kind} of {len(raw)} bytes")
    return int.from_bytes(raw, sys.byteorder)


def read_table(versions: Iterable[int]) -> list[TableRoute]:
    """Table main's routes of these IP versions (OSError, ValueError on failure)."""
    routes: list[TableRoute] = []
    flags = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_NETLINK, flags, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(_TIMEOUT)
        for seq, version in enumerate(sorted(set(versions)), 1):
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            request = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0)
            header = _HEADER.pack(_HEADER.size + len(request), _GETROUTE, _DUMP, seq, 0)
            sock.sendto(header + request, (0, 0))
            done = False
            while not done:
                data, (port, _groups) = sock.recvfrom(_RECV_BUFFER, socket.MSG_TRUNC)
                if port != 0 or len(data) > _RECV_BUFFER:  # not the kernel's, or truncated
                    raise ValueError(f"netlink: datagram of {len(data)} bytes from port {port}")
                found, done = parse_dump(data)
                routes += found
    return routes
