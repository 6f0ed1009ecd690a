"""The supervisor's ``conflict`` records (supervisor/routes.py): a fake routing table
for the decision, byte vectors of a netlink route dump for the parser."""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

import pytest

from sepconnect.supervisor.routes import TableRoute, competing, ours, parse_dump

TUN, UPLINK = 7, 2
BOOT, OURS = 3, 157  # route protocols: the kernel's "boot", sepconnect's
WHY = "a route with a lower or equal metric than ours (50) exists and may win"


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_only_a_host_route_with_our_prefix_and_a_metric_not_above_ours_is_reported() -> None:
    table = [
        TableRoute(net("198.18.32.0/20"), 50, TUN, OURS),  # ours, through the tun
        TableRoute(net("198.18.32.0/20"), 10, UPLINK, BOOT),  # may win: reported
        TableRoute(net("198.18.32.0/20"), 50, UPLINK, BOOT),  # equal metric: reported
        TableRoute(net("198.18.32.0/20"), 100, UPLINK, BOOT),  # loses to ours
        TableRoute(net("198.18.32.0/20"), 0, UPLINK, OURS),  # our bypass route
        TableRoute(net("198.18.32.0/19"), 0, UPLINK, BOOT),  # another prefix
        TableRoute(net("2001:2:0:40::/64"), 0, UPLINK, BOOT),  # not one of ours
    ]
    assert ours(table, TUN) == {net("198.18.32.0/20")}
    assert competing(ours(table, TUN), TUN, table) == [
        f"198.18.32.0/20: {WHY}: 198.18.32.0/20 metric 10 oif {UPLINK}",
        f"198.18.32.0/20: {WHY}: 198.18.32.0/20 metric 50 oif {UPLINK}",
    ]
    # Only what a configuration added is reported: the same routes again, nothing.
    assert competing(ours(table, TUN) - ours(table, TUN), TUN, table) == []


def test_routes_a_script_installed_are_not_ours() -> None:
    """A vpnc-script's routes carry no protocol of ours: nothing is reported on them (as
    the helper never did in script mode); --no-routes installs none."""
    table = [
        TableRoute(net("198.18.32.0/20"), 0, TUN, BOOT),
        TableRoute(net("198.18.32.0/20"), 10, UPLINK, BOOT),
    ]
    assert ours(table, TUN) == frozenset()


def _attr(kind: int, value: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(value), kind) + value
    return data + bytes(-len(data) % 4)


def _route(
    dst: str | None, dst_len: int, *, table: int = 254, proto: int = BOOT, family: int = 2
) -> bytes:
    attrs = b"" if dst is None else _attr(1, ipaddress.ip_address(dst).packed)
    attrs += _attr(4, UPLINK.to_bytes(4, sys.byteorder))  # RTA_OIF
    attrs += _attr(6, (10).to_bytes(4, sys.byteorder))  # RTA_PRIORITY
    attrs += _attr(15, table.to_bytes(4, sys.byteorder))  # RTA_TABLE
    body = struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, min(table, 255), proto, 0, 1, 0)
    return _message(24, body + attrs)


def _message(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body


DONE = _message(3, struct.pack("=i", 0))
RTMSG = struct.pack("=BBBBBBBBI", 2, 20, 0, 0, 254, BOOT, 0, 1, 0)  # 198.18.32.0/20 ...


def test_a_dump_is_read_route_by_route_and_only_table_main() -> None:
    data = _route("198.18.32.0", 20) + _route(None, 0) + _route("198.18.1.2", 32, table=255)
    routes, done = parse_dump(data + _route("2001:2:0:40::", 64, family=socket.AF_INET6))
    assert not done
    assert routes == [
        TableRoute(net("198.18.32.0/20"), 10, UPLINK, BOOT),
        TableRoute(net("0.0.0.0/0"), 10, UPLINK, BOOT),  # the default route: no RTA_DST
        TableRoute(net("2001:2:0:40::/64"), 10, UPLINK, BOOT),
    ]
    assert parse_dump(_route("198.18.32.0", 20, proto=OURS) + DONE) == (
        [TableRoute(net("198.18.32.0/20"), 10, UPLINK, OURS)],
        True,
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_route("198.18.32.0", 20)[:-4], id="truncated message"),
        pytest.param(struct.pack("=IHHII", 8, 24, 2, 1, 0) + bytes(8), id="length below header"),
        pytest.param(
            _message(
                24, struct.pack("=BBBBBBBBI", 2, 20, 0, 0, 254, 3, 0, 1, 0) + _attr(1, b"\xc6")
            )
            + DONE,
            id="destination of one byte",
        ),
        pytest.param(
            _message(
                24, struct.pack("=BBBBBBBBI", 2, 20, 0, 0, 254, 3, 0, 1, 0) + b"\x40\x00\x01\x00"
            ),
            id="attribute past the message",
        ),
        pytest.param(_message(24, b"\x02\x14"), id="short route message"),
    ],
)
def test_a_malformed_dump_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="^netlink: "):
        parse_dump(data)


def test_the_kernels_error_is_raised() -> None:
    with pytest.raises(OSError, match="error 97"):
        parse_dump(_message(2, struct.pack("=i", -97) + bytes(16)))
