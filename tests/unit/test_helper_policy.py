"""The privileged helper without root: value rules, plans, the request table, the loop."""

from __future__ import annotations

import ast
import dataclasses
import errno
import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Any

import pytest
from netconfigs import network_config

from sepconnect.ipc.helper_args import check_ifname
from sepconnect.ipc.helper_messages import (
    CreateTun,
    Done,
    Hello,
    NetApplied,
    NetConfig,
    Refused,
    Teardown,
    TunCreated,
)
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.wire import Message, WireError, socketpair
from sepconnect.privhelper import audit as audit_mod
from sepconnect.privhelper import main as helper_main
from sepconnect.privhelper import serve as helper_serve
from sepconnect.privhelper.channel import Channel as HelperChannel
from sepconnect.privhelper.firewall import KillSwitch
from sepconnect.privhelper.network import (
    Change,
    KernelError,
    Link,
    Netlink,
    Op,
    Plan,
    Route,
    Router,
    SetLink,
    State,
    after,
    bypass_needed,
    diff,
    inverse,
    target,
    teardown_plan,
)
from sepconnect.privhelper.policy import (
    POLICY,
    Address,
    Monitor,
    Network,
    Phase,
    ProtocolViolation,
    Refusal,
    check_net_config,
)
from sepconnect.process.auditfile import open_log
from sepconnect.supervisor.helper_client import REPLIES, REQUESTS

net = ipaddress.ip_network
ip = ipaddress.ip_address
iface = ipaddress.ip_interface

BASE_FIELDS: dict[str, object] = {
    "mtu": 1400,
    "ipv4": "198.18.10.2/24",
    "ipv6": "2001:2:0:10::2/64",
    "routes": ("198.19.0.0/17", "2001:2:0:20::/64"),
    "exclude": (),
    "gateway": "198.19.200.7",
}
BASE = network_config(**BASE_FIELDS)


def nc(**changes: object) -> NetworkConfig:
    """BASE with ``changes`` given as text, through the codec as the helper receives it."""
    return network_config(**{**BASE_FIELDS, **changes})


def unchecked(**changes: object) -> NetworkConfig:
    """BASE with ``changes`` parsed in-process, past the codec's limits (defence in depth)."""
    parse = {
        "ipv4": ipaddress.IPv4Interface,
        "ipv6": ipaddress.IPv6Interface,
        "gateway": ip,
        "routes": lambda v: tuple(map(net, v)),
        "exclude": lambda v: tuple(map(net, v)),
    }
    values = {k: v if v is None or k not in parse else parse[k](v) for k, v in changes.items()}
    return dataclasses.replace(BASE, **values)  # type: ignore[arg-type]


def req(seq: int = 1, **changes: object) -> NetConfig:
    """The helper's NetConfig request carrying nc(**changes)."""
    return NetConfig(seq=seq, net=nc(**changes))


# -- value rules -----------------------------------------------------------------------

REFUSED_CASES = [
    # tun addresses
    (dict(ipv4="127.0.0.2/8"), r"^ipv4 address 127\.0\.0\.2/8: loopback is not allowed$"),
    (dict(ipv4="224.0.0.5/24"), "multicast is not allowed"),
    (dict(ipv4="169.254.1.2/16"), "link-local is not allowed"),
    (dict(ipv4="0.0.0.0/8"), "unspecified"),
    (dict(ipv4="0.0.0.1/32"), "unspecified"),
    (dict(ipv4="255.255.255.255/32"), "broadcast"),
    (dict(ipv4="240.0.0.1/24"), "reserved"),
    (dict(ipv4="198.18.10.2/0"), "shorter than /8"),
    (dict(ipv4="10.8.0.2/1"), "shorter than /8"),  # the kernel's /1 route (issue 13, F4)
    (dict(ipv4="169.255.0.2/15"), "its subnet 169.254.0.0/15: a prefix overlapping link-local"),
    (dict(ipv4="198.18.10.2/4"), "shorter than /8"),
    (dict(ipv6="2001:2::1/16"), "shorter than /32"),
    (dict(ipv4="198.18.10.0/24"), "network or broadcast address"),
    (dict(ipv4="198.18.10.255/24"), "network or broadcast address"),
    (dict(ipv6="::1/128"), "loopback"),
    (dict(ipv6="::/64"), "unspecified"),
    (dict(ipv6="fe80::1/64"), "link-local"),
    (dict(ipv6="ff02::1/64"), "multicast"),
    (dict(ipv6="::ffff:198.18.0.1/128"), "IPv4-mapped"),
    (dict(ipv6="2001:2::1/0"), "shorter than /32"),
    (dict(ipv4=None, ipv6=None, routes=()), "no address"),
    # MTU
    (dict(mtu=1279), "mtu 1279: IPv6 needs at least 1280"),
    (dict(mtu=576), "IPv6 needs at least 1280"),
    # gateway
    (dict(gateway="127.0.0.1"), r"^gateway 127\.0\.0\.1: loopback is not allowed$"),
    (dict(gateway="::1"), "loopback"),
    (dict(gateway="0.0.0.0"), "unspecified"),
    (dict(gateway="::"), "unspecified"),
    (dict(gateway="224.0.0.1"), "multicast"),
    (dict(gateway="ff02::1"), "multicast"),
    (dict(gateway="169.254.0.1"), "link-local"),
    (dict(gateway="fe80::1"), "link-local"),
    (dict(gateway="255.255.255.255"), "broadcast"),
    (dict(gateway="198.18.10.77"), "inside the tunnel's own subnet 198.18.10.0/24"),
    (dict(gateway="2001:2:0:10::99"), "inside the tunnel's own subnet 2001:2:0:10::/64"),
    (dict(ipv4="198.18.10.2/32", gateway="198.18.10.2"), "inside the tunnel's own subnet"),
    # routes
    (dict(routes=("127.0.0.0/8",)), r"^route 127\.0\.0\.0/8: loopback is not allowed$"),
    (dict(routes=("127.1.0.0/16",)), "loopback is not allowed"),
    (dict(routes=("224.0.0.0/4",)), "multicast"),
    (dict(routes=("239.1.0.0/16",)), "multicast"),
    (dict(routes=("169.254.0.0/16",)), "link-local"),
    (dict(routes=("0.0.0.0/8",)), "unspecified"),
    (dict(routes=("240.0.0.0/4",)), "reserved"),
    (dict(routes=("ff00::/8",)), "multicast"),
    (dict(routes=("fe80::/10",)), "link-local"),
    (dict(routes=("::1/128",)), "loopback"),
    # overlapping a forbidden range is enough (issue 13, F4)
    (dict(routes=("169.254.0.0/15",)), "overlapping link-local 169.254.0.0/16"),
    (dict(routes=("224.0.0.0/3",)), "overlapping multicast"),
    (dict(routes=("fe80::/9",)), "overlapping link-local fe80::/10"),
    (dict(routes=("0.0.0.0/2",)), "overlapping unspecified"),
    (dict(exclude=("192.0.0.0/2",)), "overlapping multicast"),
    (dict(ipv6=None, routes=("2001:2:0:20::/64",)), "the tunnel has no IPv6 address"),
    (dict(ipv6=None, routes=("::/0",)), "the tunnel has no IPv6 address"),
    (dict(ipv4=None, routes=("198.19.0.0/17",)), "the tunnel has no IPv4 address"),
    (dict(routes=("198.19.200.7/32",)), "would send the tunnel's own packets"),
    # excludes
    (dict(exclude=("0.0.0.0/0",)), r"^exclude 0\.0\.0\.0/0: a /0 prefix is not allowed$"),
    (dict(exclude=("::/0",)), "/0 prefix is not allowed"),
    (dict(exclude=("127.0.0.0/8",)), "loopback"),
    (dict(exclude=("198.19.0.0/17",)), "exclude 198.19.0.0/17: also listed as a route"),
    (dict(routes=("0.0.0.0/0",), exclude=("128.0.0.0/1",)), "also listed as a route"),
]


# Not even a value: the codec refuses these before any rule runs (ipc/wire.py).
MALFORMED_CASES = [
    dict(ipv4="198.18.10.2/33"),
    dict(ipv4="2001:2::1/64"),
    dict(ipv6="2001:2::1/129"),
    dict(ipv6="198.18.10.2/24"),
    dict(gateway="1.2.3"),
    dict(routes=("198.18.0.1/16",)),
    dict(routes=("2001:2::1/48",)),
    dict(routes=("198.18.0.0/33",)),
    dict(exclude=("198.19.1.1/24",)),
]


@pytest.mark.parametrize("changes", MALFORMED_CASES, ids=str)
def test_malformed_values_never_reach_the_rules(changes: dict[str, object]) -> None:
    with pytest.raises(WireError):
        nc(**changes)


@pytest.mark.parametrize(("changes", "reason"), REFUSED_CASES, ids=[r for _, r in REFUSED_CASES])
def test_out_of_policy_values_are_refused(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(Refusal, match=reason):
        check_net_config(unchecked(**changes))


def test_the_base_config_is_accepted() -> None:
    wanted = check_net_config(BASE)
    assert wanted == BASE
    assert wanted.addresses == (iface("198.18.10.2/24"), iface("2001:2:0:10::2/64"))


def test_default_routes_become_halves_and_routes_are_normalised() -> None:
    wanted = check_net_config(
        nc(
            routes=("::/0", "198.19.0.0/16", "0.0.0.0/0", "198.19.0.0/16", "0.0.0.0/1"),
            exclude=("198.19.5.0/24", "2001:2:0:30::/64", "198.19.5.0/24"),
        )
    )
    assert wanted.routes == tuple(
        map(net, ["0.0.0.0/1", "128.0.0.0/1", "198.19.0.0/16", "::/1", "8000::/1"])
    )
    assert wanted.exclude == (net("198.19.5.0/24"), net("2001:2:0:30::/64"))


@pytest.mark.parametrize(
    "changes",
    [
        {"ipv6": None, "mtu": 576, "routes": ("198.19.0.0/17",)},  # IPv4 only: 576 is fine
        {"ipv4": None, "routes": ("::/0",)},  # IPv6 only
        {"ipv4": "198.18.10.2/32"},  # a host address, as ocserv gives it
        {"ipv4": "198.18.10.0/31"},  # /31: both ends are usable
        {"routes": ("0.0.0.0/1", "128.0.0.0/1")},  # halves given directly
        {"gateway": "2001:2:ff::1"},  # an IPv6 gateway with IPv4 routes
        {"routes": (), "exclude": ()},  # addresses only
    ],
)
def test_reasonable_values_are_accepted(changes: dict[str, object]) -> None:
    check_net_config(nc(**changes))


@pytest.mark.parametrize("name", ["sepc0", "vpn_0", "a.b-c", "x" * 15, "tun%d"[:3]])
def test_valid_interface_names(name: str) -> None:
    assert check_ifname(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "x" * 16, "sepc%d", "a b", "eth0/1", "tun\n", "é", "a:b"]
)
def test_invalid_interface_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid interface name"):
        check_ifname(name)


# -- plans -----------------------------------------------------------------------------


def AddAddress(item: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> Change:  # noqa: N802
    return Change(True, item)


def DelAddress(item: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> Change:  # noqa: N802
    return Change(False, item)


def AddRoute(item: Route) -> Change:  # noqa: N802
    return Change(True, item)


def DelRoute(item: Route) -> Change:  # noqa: N802
    return Change(False, item)


TUN = 7
UPLINK = 3
UPLINK_GW = ip("198.18.1.1")


GW_ROUTE = Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW)
GW_PATH = (GW_ROUTE.dst, GW_ROUTE)


def wanted(**changes: object) -> NetworkConfig:
    return check_net_config(nc(**changes))


def test_bypass_needed_only_where_a_tun_route_covers() -> None:
    assert bypass_needed(wanted()) == ()  # 198.19.0.0/17 does not hold 198.19.200.7
    assert bypass_needed(wanted(routes=("198.19.0.0/16",))) == (net("198.19.200.7/32"),)
    assert bypass_needed(
        wanted(routes=("0.0.0.0/0",), exclude=("198.18.50.0/24", "2001:2:0:30::/64"))
    ) == (net("198.19.200.7/32"), net("198.18.50.0/24"))  # no IPv6 route covers the second
    assert bypass_needed(wanted(routes=("::/0",), gateway="2001:2:ff::1")) == (
        net("2001:2:ff::1/128"),
    )


def test_target_state() -> None:
    w = wanted(routes=("0.0.0.0/0",), exclude=("198.18.50.0/24",))
    paths = {
        net("198.19.200.7/32"): GW_ROUTE,
        net("198.18.50.0/24"): Route(net("198.18.50.0/24"), UPLINK),  # on-link
    }
    assert target(w, TUN, paths) == State(
        link=Link(1400, up=True),
        addresses=frozenset({iface("198.18.10.2/24"), iface("2001:2:0:10::2/64")}),
        routes=frozenset(
            {
                Route(net("0.0.0.0/1"), TUN),
                Route(net("128.0.0.0/1"), TUN),
                Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW),
                Route(net("198.18.50.0/24"), UPLINK),
            }
        ),
    )


def test_first_plan_order_bypass_before_tun_routes() -> None:
    w = wanted(routes=("0.0.0.0/0",))
    want = target(w, TUN, dict([GW_PATH]))
    assert diff(State(Link(1400)), want, TUN) == (
        SetLink(Link(1400, up=True), Link(1400)),
        AddAddress(iface("198.18.10.2/24")),
        AddAddress(iface("2001:2:0:10::2/64")),
        AddRoute(Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW)),
        AddRoute(Route(net("0.0.0.0/1"), TUN)),
        AddRoute(Route(net("128.0.0.0/1"), TUN)),
    )


def test_identical_state_gives_an_empty_plan() -> None:
    want = target(wanted(), TUN, {})
    assert diff(want, want, TUN) == ()


def test_changed_state_gives_only_the_difference() -> None:
    have = target(wanted(), TUN, {})
    want = target(
        wanted(mtu=1380, ipv6="2001:2:0:10::2/80", routes=("198.19.0.0/17", "198.18.64.0/18")),
        TUN,
        {},
    )
    assert diff(have, want, TUN) == (
        SetLink(Link(1380, up=True), Link(1400, up=True)),
        DelAddress(iface("2001:2:0:10::2/64")),
        AddAddress(iface("2001:2:0:10::2/80")),
        AddRoute(Route(net("198.18.64.0/18"), TUN)),
        DelRoute(Route(net("2001:2:0:20::/64"), TUN)),
    )


def test_ipv4_address_change_reinstalls_the_ipv4_tun_routes() -> None:
    """The kernel flushes a device's IPv4 routes with its last IPv4 address."""
    have = target(wanted(routes=("198.19.0.0/16", "2001:2:0:20::/64")), TUN, dict([GW_PATH]))
    want = target(
        wanted(ipv4="198.18.11.2/24", routes=("198.19.0.0/16", "2001:2:0:20::/64")),
        TUN,
        dict([GW_PATH]),
    )
    assert diff(have, want, TUN) == (
        DelRoute(Route(net("198.19.0.0/16"), TUN)),
        DelAddress(iface("198.18.10.2/24")),
        AddAddress(iface("198.18.11.2/24")),
        AddRoute(Route(net("198.19.0.0/16"), TUN)),
    )  # the IPv6 route and the gateway's bypass route are left alone
    no_v4 = target(wanted(ipv4=None, routes=("2001:2:0:20::/64",)), TUN, {})
    assert diff(have, no_v4, TUN) == (
        DelRoute(Route(net("198.19.0.0/16"), TUN)),
        DelAddress(iface("198.18.10.2/24")),
        DelRoute(Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW)),
    )


def test_teardown_plan_removes_exactly_what_was_installed() -> None:
    have = target(wanted(routes=("0.0.0.0/0",)), TUN, dict([GW_PATH]))
    assert teardown_plan(have, TUN) == (
        DelRoute(Route(net("0.0.0.0/1"), TUN)),
        DelRoute(Route(net("128.0.0.0/1"), TUN)),
        DelRoute(Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW)),
        DelAddress(iface("198.18.10.2/24")),
        DelAddress(iface("2001:2:0:10::2/64")),
    )
    assert teardown_plan(State(Link(1400, up=True)), TUN) == ()


@pytest.mark.parametrize(
    "op",
    [
        SetLink(Link(1380), Link(1400)),
        SetLink(Link(1400, up=True), Link(1400)),
        AddAddress(iface("198.18.10.2/24")),
        DelAddress(iface("198.18.10.2/24")),
        AddRoute(Route(net("198.19.0.0/17"), TUN)),
        DelRoute(Route(net("198.19.0.0/17"), TUN)),
    ],
)
def test_inverse_undoes(op: Op) -> None:
    start = State(Link(1400))
    if isinstance(op, Change) and not op.add:
        start = after(start, Change(True, op.item))
    assert after(after(start, op), inverse(op)) == start


# -- the router over a fake kernel -------------------------------------------------------


class FakeKernel(Netlink):
    def __init__(self, paths: dict[Address, tuple[int, Address | None]] | None = None) -> None:
        self.paths = paths or {}  # where route get sends each address: (oif, gateway)
        self.ops: list[Op] = []
        self.lookups: list[Address] = []
        self.fail: dict[Op, int] = {}

    def route_get(self, net: Network, *, avoid: int) -> Route:
        assert avoid == TUN
        dst = net.network_address
        self.lookups.append(dst)
        if dst not in self.paths:
            raise KernelError(f"route lookup of {dst}: Network is unreachable", errno.ENETUNREACH)
        return Route(net, *self.paths[dst])

    def apply(self, op: Op, ifindex: int) -> None:
        assert ifindex == TUN
        code = self.fail.get(op)
        if code is not None:
            raise KernelError(f"{op}: {os.strerror(code)}", code)
        self.ops.append(op)


GW = ip("198.19.200.7")


def configure(router: Router, w: NetworkConfig) -> Plan:
    """As the helper does: the routable part of ``w``, then configured."""
    routable, _ = router.routable(w)
    return router.configure(routable)


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel({GW: (UPLINK, UPLINK_GW), ip("198.18.50.0"): (UPLINK, None)})


def test_identical_net_config_touches_nothing(kernel: FakeKernel) -> None:
    router = Router(kernel, TUN, 1400)
    w = wanted(routes=("0.0.0.0/0",), exclude=("198.18.50.0/24",))
    first = configure(router, w)
    assert len(first) == 7  # link up, 2 addresses, 2 bypass routes, 2 halves
    assert kernel.ops == list(first)
    assert configure(router, w) == ()
    assert kernel.ops == list(first)  # nothing more was sent to the kernel
    assert kernel.lookups == [GW, ip("198.18.50.0")]  # each original path looked up once


def test_bypass_path_through_our_tun_is_refused(kernel: FakeKernel) -> None:
    kernel.paths[GW] = (TUN, None)
    router = Router(kernel, TUN, 1400)
    with pytest.raises(Refusal, match="198.19.200.7/32: its path already goes through the tunnel"):
        configure(router, wanted(routes=("0.0.0.0/0",)))
    assert kernel.ops == []
    assert router.state == State(Link(1400))


def test_an_exclude_without_a_path_is_left_out_and_looked_up_again(kernel: FakeKernel) -> None:
    router = Router(kernel, TUN, 1400)
    w = wanted(routes=("0.0.0.0/0",), exclude=("198.18.50.0/24", "198.18.60.0/24"))
    routable, left_out = router.routable(w)
    assert routable.exclude == (net("198.18.50.0/24"),)
    assert left_out == {
        net("198.18.60.0/24"): "route lookup of 198.18.60.0: Network is unreachable"
    }
    configure(router, w)
    bypasses = {r.dst for r in router.state.routes if r.oif == UPLINK}
    assert bypasses == {net("198.19.200.7/32"), net("198.18.50.0/24")}  # the rest stays in
    # A path appears: the next configuration picks the exclude up.
    kernel.paths[ip("198.18.60.0")] = (UPLINK, None)
    assert router.routable(w) == (w, {})
    configure(router, w)
    assert net("198.18.60.0/24") in {r.dst for r in router.state.routes if r.oif == UPLINK}


def test_no_path_to_the_server_is_refused(kernel: FakeKernel) -> None:
    del kernel.paths[GW]
    router = Router(kernel, TUN, 1400)
    with pytest.raises(Refusal, match="VPN server 198.19.200.7 cannot be reached outside"):
        configure(router, wanted(routes=("0.0.0.0/0",)))
    assert kernel.ops == []


def test_failure_mid_plan_rolls_back(kernel: FakeKernel) -> None:
    router = Router(kernel, TUN, 1400)
    configure(router, wanted())
    before = router.state
    kernel.ops.clear()
    kernel.fail[AddRoute(Route(net("198.19.0.0/16"), TUN))] = errno.EEXIST
    with pytest.raises(Refusal, match=r"File exists \(nothing was changed\)$"):
        configure(router, wanted(mtu=1380, routes=("198.19.0.0/16", "198.18.64.0/18")))
    assert router.state == before
    bypass = AddRoute(Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW))
    assert kernel.ops == [
        SetLink(Link(1380, up=True), Link(1400, up=True)),
        bypass,
        AddRoute(Route(net("198.18.64.0/18"), TUN)),
        # adding 198.19.0.0/16 fails here; then undone in reverse:
        DelRoute(Route(net("198.18.64.0/18"), TUN)),
        DelRoute(Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW)),
        SetLink(Link(1400, up=True), Link(1380, up=True)),
    ]


def test_incomplete_rollback_is_reported_and_tracked(kernel: FakeKernel) -> None:
    router = Router(kernel, TUN, 1400)
    stuck = Route(net("198.18.64.0/18"), TUN)
    kernel.fail[AddRoute(Route(net("198.19.0.0/16"), TUN))] = errno.EEXIST
    kernel.fail[DelRoute(stuck)] = errno.EBUSY
    with pytest.raises(Refusal, match="ROLLBACK INCOMPLETE"):
        configure(router, wanted(routes=("198.19.0.0/16", "198.18.64.0/18")))
    assert stuck in router.state.routes  # still installed, so teardown will try again
    del kernel.fail[DelRoute(stuck)]
    assert router.clear() == []
    assert router.state.routes == frozenset()


def test_clear_counts_already_gone_as_removed_and_reports_the_rest(kernel: FakeKernel) -> None:
    router = Router(kernel, TUN, 1400)
    configure(router, wanted(routes=("0.0.0.0/0",)))
    kernel.fail[DelRoute(Route(net("0.0.0.0/1"), TUN))] = errno.ESRCH
    kernel.fail[DelRoute(Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW))] = errno.EPERM
    errors = router.clear()
    assert len(errors) == 1
    assert "Operation not permitted" in errors[0]
    assert router.state.routes == {Route(net("198.19.200.7/32"), UPLINK, UPLINK_GW)}
    assert router.state.addresses == frozenset()


# -- the request table -------------------------------------------------------------------


class FakeHost:
    def __init__(self, real_fd: bool = False) -> None:
        self.calls: list[str] = []
        self.refuse_tun = False
        self.real_fd = real_fd
        self.gateway: Any = None

    def create_tun(self, mtu: int, *, vnet_hdr: bool) -> tuple[str, int, int]:
        self.calls.append(f"create_tun {mtu}" + (" vnet_hdr" if vnet_hdr else ""))
        if self.refuse_tun:
            raise Refusal("create tun sepc%d: Device or resource busy")
        return "sepc0", TUN, os.open(os.devnull, os.O_RDONLY) if self.real_fd else -1

    def net_config(self, wanted: NetworkConfig) -> dict[Any, str]:
        self.calls.append("net_config")
        return {}

    def teardown(self) -> None:
        self.calls.append("teardown")


HELLO = Hello(seq=1, proto=1, role="supervisor", gateway=ipaddress.ip_address("198.19.200.7"))
CREATE = CreateTun(seq=2, mtu=1400)
TEARDOWN = Teardown(seq=9)


def test_policy_covers_exactly_the_requests() -> None:
    assert {cls.op for rows in POLICY.values() for cls in rows} == {
        "hello",
        "create_tun",
        "net_config",
        "script_event",
        "teardown",
    }
    assert REQUESTS.decode_untrusted(REQUESTS.encode(HELLO)) == HELLO  # same classes


def test_the_normal_session() -> None:
    host, monitor = FakeHost(), Monitor()
    assert monitor.handle(host, HELLO) == (Done(seq=1), None)
    assert monitor.phase is Phase.READY
    assert monitor.handle(host, CREATE) == (TunCreated(seq=2, ifname="sepc0", ifindex=TUN), -1)
    assert monitor.phase is Phase.TUN_UP
    for seq in (3, 4, 5):
        assert monitor.handle(host, req(seq=seq)) == (NetApplied(seq=seq, left_out=()), None)
    assert monitor.handle(host, TEARDOWN) == (Done(seq=9), None)
    assert monitor.phase is Phase.CLOSED
    assert host.calls == ["create_tun 1400", "net_config", "net_config", "net_config", "teardown"]


def test_the_gateway_is_the_one_hello_named() -> None:
    """F2: a NetConfig naming another gateway (any address a worker or server would
    pull out of the tunnel) is refused; nothing reaches the host."""
    host, monitor = FakeHost(), Monitor()
    monitor.handle(host, HELLO)
    monitor.handle(host, CREATE)
    reply, _ = monitor.handle(host, req(seq=3, gateway="10.20.30.40"))
    assert reply == Refused(
        seq=3, reason="gateway 10.20.30.40: not the VPN server's address 198.19.200.7"
    )
    assert host.calls == ["create_tun 1400"]


@pytest.mark.parametrize("gateway", ["127.0.0.1", "224.0.0.1", "0.0.0.0", "::1"])
def test_hello_with_an_unusable_gateway_is_refused(gateway: str) -> None:
    host, monitor = FakeHost(), Monitor()
    hello = dataclasses.replace(HELLO, gateway=ipaddress.ip_address(gateway))
    reply, _ = monitor.handle(host, hello)
    assert isinstance(reply, Refused)
    assert reply.reason.startswith(f"gateway {gateway}:")
    assert monitor.phase is Phase.REFUSED  # and hello is used up: the session cannot start
    with pytest.raises(ProtocolViolation, match="hello is not permitted in phase refused"):
        monitor.handle(host, HELLO)


@pytest.mark.parametrize(
    ("before", "request_", "why"),
    [
        ([], req(), "net_config is not permitted in phase new"),
        ([], CREATE, "create_tun is not permitted in phase new"),
        ([], TEARDOWN, "teardown is not permitted in phase new"),
        ([HELLO], HELLO, "hello is not permitted in phase ready"),
        ([HELLO], req(), "net_config is not permitted in phase ready"),
        ([HELLO, CREATE], CREATE, "create_tun is not permitted in phase tun_up"),
        ([HELLO, CREATE], HELLO, "hello is not permitted in phase tun_up"),
        ([HELLO, CREATE, TEARDOWN], req(), "not permitted in phase closed"),
        ([HELLO, CREATE, TEARDOWN], TEARDOWN, "not permitted in phase closed"),
        ([HELLO], Done(seq=1), "done is not permitted in phase ready"),
    ],
)
def test_protocol_violations(before: list[Message], request_: Message, why: str) -> None:
    host, monitor = FakeHost(), Monitor()
    for msg in before:
        monitor.handle(host, msg)
    calls = list(host.calls)
    with pytest.raises(ProtocolViolation, match=why):
        monitor.handle(host, request_)
    assert host.calls == calls  # the handler never ran


@pytest.mark.parametrize("request_type", [Hello, CreateTun, Teardown])
def test_once_only_requests_are_used_up_whatever_the_outcome(request_type: type) -> None:
    """Neither the phase after a once-only request is carried out nor the one after it is
    refused permits it again, and no refusal ends the session (CLOSED)."""
    for rows in POLICY.values():
        if request_type in rows:
            _, carried_out, refused = rows[request_type]
            assert request_type not in POLICY[carried_out]
            assert request_type not in POLICY[refused]
            assert refused is not Phase.CLOSED


def test_out_of_policy_net_config_is_refused_and_the_session_goes_on() -> None:
    host, monitor = FakeHost(), Monitor()
    monitor.handle(host, HELLO)
    monitor.handle(host, CREATE)
    reply, fd = monitor.handle(host, req(seq=5, routes=("127.0.0.0/8",)))
    assert reply == Refused(seq=5, reason="route 127.0.0.0/8: loopback is not allowed")
    assert fd is None
    assert host.calls == ["create_tun 1400"]  # the host was never asked
    assert monitor.phase is Phase.TUN_UP
    assert monitor.handle(host, req(seq=6)) == (NetApplied(seq=6, left_out=()), None)


def test_refused_create_tun_is_used_up_but_teardown_still_works() -> None:
    host, monitor = FakeHost(), Monitor()
    host.refuse_tun = True
    monitor.handle(host, HELLO)
    reply, fd = monitor.handle(host, CREATE)
    assert isinstance(reply, Refused)
    assert "busy" in reply.reason
    assert monitor.phase is Phase.NO_TUN
    with pytest.raises(ProtocolViolation, match="create_tun is not permitted in phase no_tun"):
        monitor.handle(host, CREATE)
    assert monitor.handle(host, TEARDOWN) == (Done(seq=9), None)


def test_refusal_reasons_are_one_short_line() -> None:
    class Chatty(FakeHost):
        def net_config(self, wanted: NetworkConfig) -> dict[Any, str]:
            raise Refusal("first line\nsecond line " + "x" * 500)

    monitor, host = Monitor(), Chatty()
    monitor.handle(host, HELLO)
    monitor.handle(host, CREATE)
    reply, _ = monitor.handle(host, req())
    assert isinstance(reply, Refused)
    assert "\n" not in reply.reason
    assert len(reply.reason) <= 200
    assert reply.reason.startswith("first line second line x")
    REPLIES.encode(reply)  # still fits the schema


# -- the request loop (serve.serve) over a socketpair -------------------------------------


@dataclasses.dataclass
class Loop:
    ours: socket.socket  # the supervisor's end
    channel: HelperChannel  # the helper's end
    wake_r: int
    wake_w: int
    log_r: int
    log_w: int

    def serve(self, peer_uid: int) -> int:
        audit = audit_mod.Audit(self.log_w, stderr_fd=None)
        return helper_serve.serve(
            self.channel, Monitor(), FakeHost(True), audit, peer_uid, self.wake_r
        )

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in os.read(self.log_r, 1 << 20).splitlines()]


@pytest.fixture
def loop() -> Iterator[Loop]:
    ours, theirs = socketpair()
    channel = HelperChannel(theirs)
    loop = Loop(ours, channel, *os.pipe2(os.O_NONBLOCK), *os.pipe2(os.O_NONBLOCK))
    yield loop
    for fd in (loop.wake_r, loop.wake_w, loop.log_r, loop.log_w):
        os.close(fd)
    ours.close()
    theirs.close()


def run_loop(
    loop: Loop, messages: list[bytes], peer_uid: int | None = None
) -> tuple[int, list[Message], list[dict[str, object]]]:
    """Queue ``messages``, close our end, serve; return (status, replies, audit records)."""
    loop.ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    for data in messages:
        loop.ours.send(data)
    loop.ours.shutdown(socket.SHUT_WR)
    status = loop.serve(os.getuid() if peer_uid is None else peer_uid)
    replies = []
    loop.ours.setblocking(False)
    while True:
        try:
            data = loop.ours.recv(65536)
        except BlockingIOError:
            break
        if not data:
            break
        replies.append(REPLIES.decode_untrusted(data))
    return status, replies, loop.records()


def ereq(*msgs: Message) -> list[bytes]:
    return [REQUESTS.encode(m) for m in msgs]


def test_loop_session_ends_with_teardown(loop: Loop) -> None:
    status, replies, records = run_loop(loop, ereq(HELLO, CREATE, req(seq=3), TEARDOWN))
    assert status == 0
    assert [r.op for r in replies] == ["done", "tun_created", "net_applied", "done"]
    assert [(r["op"], r["result"]) for r in records] == [
        ("hello", "ok"),
        ("create_tun", "ok"),
        ("net_config", "ok"),
        ("teardown", "ok"),
    ]
    for record in records:
        assert record["peer_uid"] == os.getuid()
        assert record["peer_pid"] == os.getpid()
        assert record["helper_pid"] == os.getpid()
    assert records[2]["args"] == {
        "seq": 3,
        "net": {
            "mtu": 1400,
            "ipv4": "198.18.10.2/24",
            "ipv6": "2001:2:0:10::2/64",
            "routes": ["198.19.0.0/17", "2001:2:0:20::/64"],
            "exclude": [],
            "gateway": "198.19.200.7",
            "dns": [],
            "domains": [],
            "split_dns": [],
            "dns_default": False,
            "banner": None,
            "idle_timeout": None,
        },
    }


def test_loop_peer_closed_is_a_clean_exit(loop: Loop) -> None:
    status, replies, records = run_loop(loop, ereq(HELLO))
    assert status == 0
    assert records[-1]["op"] == "peer_closed"
    assert records[-1]["reason"] == "supervisor went away"


def test_loop_refusal_keeps_running(loop: Loop) -> None:
    status, replies, records = run_loop(
        loop, ereq(HELLO, CREATE, req(seq=3, exclude=("0.0.0.0/0",)), req(seq=4))
    )
    assert status == 0
    assert replies[2] == Refused(seq=3, reason="exclude 0.0.0.0/0: a /0 prefix is not allowed")
    assert replies[3] == NetApplied(seq=4, left_out=())
    assert records[2]["result"] == "refused"
    assert records[2]["reason"] == "exclude 0.0.0.0/0: a /0 prefix is not allowed"


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([b"\xc1\xc1"], "protocol violation: message: undecodable"),
        (ereq(HELLO) + [b"\x93\x01\x02\x03"], "protocol violation: message: not a map"),
        (ereq(req()), "protocol violation: net_config is not permitted in phase new"),
        (ereq(HELLO, HELLO), "protocol violation: hello is not permitted in phase ready"),
        (ereq(HELLO, CREATE, CREATE), "create_tun is not permitted in phase tun_up"),
    ],
)
def test_loop_protocol_violation_is_fatal(loop: Loop, messages: list[bytes], reason: str) -> None:
    status, replies, records = run_loop(loop, messages + ereq(TEARDOWN))
    assert status == 1
    assert len(replies) == len(messages) - 1  # the violating request got no reply
    assert records[-1]["result"] == "fatal"
    assert reason in str(records[-1]["reason"])


def test_loop_sender_uid_mismatch_is_fatal(loop: Loop) -> None:
    status, replies, records = run_loop(loop, ereq(HELLO), peer_uid=os.getuid() + 1)
    assert status == 1
    assert replies == []
    assert records == [
        {
            **records[0],
            "op": "hello",
            "result": "fatal",
            "peer_uid": os.getuid(),
            "reason": f"sender has uid {os.getuid()}, expected uid {os.getuid() + 1}",
        }
    ]


def test_loop_message_without_credentials_is_fatal(
    loop: Loop,
) -> None:
    loop.channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
    loop.ours.send(REQUESTS.encode(HELLO))  # neither end asks for credentials now
    loop.channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    # uid 65534 is what the kernel reports when it recorded no credentials
    assert loop.serve(65534) == 1
    (record,) = loop.records()
    assert record["reason"] == "sender has no credentials, expected uid 65534"


def test_loop_sigterm_flag_ends_the_session(loop: Loop) -> None:
    os.write(loop.wake_w, bytes([signal.SIGTERM]))  # what signal.set_wakeup_fd writes
    assert loop.serve(os.getuid()) == 0
    assert [r["op"] for r in loop.records()] == ["sigterm"]


def test_loop_another_signals_byte_does_not_end_the_session(loop: Loop) -> None:
    os.write(loop.wake_w, bytes([signal.SIGINT]))  # ignored, but had it a handler
    status, replies, records = run_loop(loop, ereq(HELLO, TEARDOWN))
    assert status == 0
    assert [r.op for r in replies] == ["done", "done"]
    assert [r["op"] for r in records] == ["hello", "teardown"]


# -- argv, audit log, imports --------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--fd", "5"],
        ["--peer-uid", "1000"],
        ["--fd", "2", "--peer-uid", "1000"],
        ["--fd", "x", "--peer-uid", "1000"],
        ["--fd", "5", "--peer-uid", "-1"],
        ["--fd", "5", "--peer-uid", str(2**32 - 1)],
        ["--fd", "5", "--peer-uid", "1000", "--interface", "../etc"],
        ["--fd", "5", "--peer-uid", "1000", "--interface", "x" * 16],
        ["--fd", "5", "--peer-uid", "1000", "--interface", ".."],
        ["--fd", "5", "--peer-uid", "1000", "--audit-log", ""],
        ["--fd", "5", "--peer-uid", "1000", "--int", "tun0"],
        ["--fd", "5", "--peer-uid", "1000", "extra"],
    ],
)
def test_bad_argv_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        helper_main.parse_args(argv)
    assert info.value.code == 2


def test_good_argv() -> None:
    args = helper_main.parse_args(
        ["--fd", "5", "--peer-uid", "65534", "--interface", "vpn0", "--audit-log", "/x/a.log"]
    )
    assert (args.fd, args.peer_uid, args.interface, args.audit_log) == (
        5,
        65534,
        "vpn0",
        "/x/a.log",
    )


@pytest.mark.parametrize("kind", ["pipe", "stream socket"])
def test_helper_fd_must_be_a_seqpacket_socket(kind: str, tmp_path: FsPath) -> None:
    """Exits 2 before doing anything privileged (so this runs without root)."""
    if kind == "pipe":
        ours, theirs = os.pipe()
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours, theirs = a.detach(), b.detach()
    root = FsPath(__file__).resolve().parents[2]
    boot = (
        f"import runpy, sys; sys.path.insert(0, {str(root)!r}); "
        "runpy.run_module('sepconnect.privhelper', run_name='__main__', alter_sys=True)"
    )
    argv = ["--fd", str(theirs), "--peer-uid", "0", "--audit-log", str(tmp_path / "a.log")]
    result = subprocess.run(
        [sys.executable, "-I", "-c", boot, *argv],
        pass_fds=(theirs,),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    os.close(ours)
    os.close(theirs)
    assert result.returncode == 2, result.stderr
    assert f"--fd {theirs}:" in result.stderr
    assert not (tmp_path / "a.log").exists()


def test_audit_log_is_private_append_only_and_no_symlink(tmp_path: FsPath) -> None:
    path = tmp_path / "audit.log"
    path.write_text("earlier line\n")
    path.chmod(0o600)
    fd = open_log(str(path))
    try:
        audit = audit_mod.Audit(fd, stderr_fd=None)
        audit.sender = (123, 1000, 1000)
        audit.record("net_config", "refused", "route 127.0.0.0/8: loopback is not allowed")
    finally:
        os.close(fd)
    first, line = path.read_text().splitlines()
    assert first == "earlier line"
    record = json.loads(line)
    assert record["peer_pid"] == 123
    assert record["result"] == "refused"
    assert record["time"].endswith("+00:00")
    new = tmp_path / "new.log"
    os.close(open_log(str(new)))
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(OSError, match="symbolic links|Too many levels"):
        open_log(str(tmp_path / "link"))
    with pytest.raises(OSError):
        open_log(str(tmp_path))


HELPER_DIR = FsPath(__file__).resolve().parents[2] / "privhelper"


@pytest.mark.parametrize("module", sorted(p.name for p in HELPER_DIR.glob("*.py")))
def test_helper_has_no_shell_and_no_exec(module: str) -> None:
    """No shell, no exec, no string-built commands (test_import_rules checks the imports).

    process/runner.py, the plumbing of the runners the helper starts before its seccomp
    filter, is the one module that executes programs: see the next test. The start stage
    (main.py) executes one thing, once: its own serving stage; the test-only selftest.py
    tries to, to prove the serving stage cannot."""
    tree = ast.parse((HELPER_DIR / module).read_text())
    imported: set[str] = set()
    called: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                called.add(f"{func.value.id}.{func.attr}")
            elif isinstance(func, ast.Name):
                called.add(func.id)
    assert not imported & {"subprocess", "shlex", "pty", "multiprocessing", "threading"}
    shell = {c for c in called if c.startswith(("os.exec", "os.spawn", "os.posix_spawn"))}
    shell |= called & {"os.system", "os.popen", "os.fork", "eval", "exec", "compile"}
    if module == "main.py":
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        execs = [n for n in calls if ast.unparse(n.func).startswith("os.exec")]
        assert [ast.unparse(n.func) for n in execs] == ["os.execve"]
        assert ast.unparse(execs[0].args[0]) == "argv[0]"  # the serving program's
        shell -= {"os.execve"}
    if module == "selftest.py":  # test-only: the attempt the serving stage's filter kills
        shell -= {"os.execv"}
    assert not shell, shell


RUNNER = HELPER_DIR.parent / "process" / "runner.py"


def test_only_the_runners_execute_and_never_through_a_shell() -> None:
    tree = ast.parse(RUNNER.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "shell":
            raise AssertionError("shell= in process/runner.py")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            assert not name.startswith(("os.exec", "os.spawn", "os.system", "os.popen")), name
    calls = {
        f"{n.func.value.id}.{n.func.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
    }
    assert "subprocess.Popen" in calls
    assert not calls & {"subprocess.run", "subprocess.call", "subprocess.check_output"}


def kill_switch(allowed: tuple[Network, ...]) -> KillSwitch:
    return KillSwitch(None, audit_mod.Audit(None, stderr_fd=None), allowed, lambda **_: None)


def test_kill_switch_excludes_only_private_space_or_what_root_allows() -> None:
    quarters = unchecked(exclude=["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"])
    with pytest.raises(Refusal, match="exclude 0.0.0.0/2: --fail-closed lets a server"):
        kill_switch(()).check(quarters)
    with pytest.raises(Refusal, match="overlapping"):  # and the value rules refuse them too
        check_net_config(quarters)
    lan = unchecked(exclude=["192.168.1.0/24", "198.18.3.0/24", "fd00:1::/64"])
    kill_switch(()).check(lan)
    public = unchecked(exclude=["8.8.8.0/25"])
    with pytest.raises(Refusal, match="--allow-exclude 8.8.8.0/25"):
        kill_switch(()).check(public)
    kill_switch((net("8.8.8.0/24"),)).check(public)
    with pytest.raises(Refusal):  # an allowance covers only what lies inside it
        kill_switch((net("8.8.8.0/24"),)).check(unchecked(exclude=["8.8.8.0/23"]))
