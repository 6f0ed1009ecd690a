"""The tunnel's network state: desired state → plan (pure) → netlink (thin executor).

In the manner of tailscale's ``Router.Set``: each NetConfig is the *whole*
desired state. :func:`target` turns it into a :class:`State` (the exact
addresses and routes we want installed), :func:`diff` compares that with the
state we installed before and yields a *plan*: the few netlink operations that
make up the difference, and nothing else. An identical NetConfig gives an
empty plan and touches nothing.

:class:`Router` keeps what the helper installed (in memory; only the helper
changes it) and applies plans through :class:`Netlink`, a thin wrapper of
the helper's rtnetlink client (rtnl.py, pyroute2's message classes). If an
operation fails midway, the operations already done are undone in reverse order and the request is
refused with the kernel's error.

What the helper ever installs:

* the tun's MTU, its "up" state, one IPv4 and/or one IPv6 address (IPv6 with
  IFA_F_NODAD so it is usable at once);
* routes through the tun (``oif`` = our ifindex);
* *bypass* routes on other devices, and only these: a host route to the VPN
  gateway, and the ``exclude`` prefixes, each via the path ``route get``
  reported *before* any of our routes covered it. A bypass route is added
  only while some route through the tun covers it; otherwise it would change
  nothing but the host's table.

Every route has our own route protocol number :data:`RTPROT_SEPCONNECT`
(``ip route`` shows ``proto 157``), ``metric`` :data:`METRIC`, table main, and
is deleted by exactly those attributes at teardown, so a route of anyone
else's is never removed — and after a crash, the next helper can tell our
stale bypass routes from everybody's ``proto static`` ones (state.py).

Conflicts with existing routes (docs/routing-dns.md): a more specific prefix
always wins, so the host's own default route never competes with the tunnel's
/1 halves or split routes. For an *equal* prefix the lower metric wins: ours
(50) beats DHCP's (100 and up) but not a hand-made metric-0 route; the helper
writes a ``conflict`` audit record naming such a route and leaves it alone.
A route identical to one of ours (same prefix, metric and table) makes the
kernel refuse ours with "File exists": the request is refused and rolled back.

Limits: the original paths are looked up once per prefix and remembered for
the session. If the host's uplink changes during the session they go stale,
and a prefix first needed while our routes already cover it (say, a new
gateway while 0.0.0.0/0 goes through the tunnel) is refused, because the only
path the kernel can report then is our own tun.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.privhelper.policy import Address, Interface, Network, Refusal
from sepconnect.privhelper.rtnl import RT_TABLE_MAIN, IPRoute, NetlinkError

METRIC: Final = 50
"""Priority of every route we add (NetworkManager's default for VPN routes): it
beats DHCP defaults (100+) for equal prefixes and stays clear of metric 0."""

RTPROT_SEPCONNECT: Final = 157
"""Our route protocol number (unassigned in iproute2's rt_protos), on every route we add."""
RTN_UNICAST: Final = 1
RT_SCOPE_LINK: Final = 253
RT_SCOPE_UNIVERSE: Final = 0
IFA_F_NODAD: Final = 0x02


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One route we install: ``dst`` via ``oif`` (and ``gateway``, if any)."""

    dst: Network
    oif: int
    gateway: Address | None = None

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway is not None else ""
        return f"{self.dst}{via} oif {self.oif}"


@dataclasses.dataclass(frozen=True, slots=True)
class Path:
    """Where the host sent a destination before the tunnel: ``route get``'s answer."""

    oif: int
    gateway: Address | None


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """What is installed (or wanted) on the system, as far as the helper is concerned."""

    mtu: int | None = None
    up: bool = False
    addresses: frozenset[Interface] = frozenset()
    routes: frozenset[Route] = frozenset()


# The operations a plan is made of. Each knows its inverse, for rollback.


@dataclasses.dataclass(frozen=True, slots=True)
class SetMtu:
    mtu: int
    previous: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class SetUp:
    up: bool


@dataclasses.dataclass(frozen=True, slots=True)
class AddAddress:
    address: Interface


@dataclasses.dataclass(frozen=True, slots=True)
class DelAddress:
    address: Interface


@dataclasses.dataclass(frozen=True, slots=True)
class AddRoute:
    route: Route


@dataclasses.dataclass(frozen=True, slots=True)
class DelRoute:
    route: Route


Op = SetMtu | SetUp | AddAddress | DelAddress | AddRoute | DelRoute
Plan = tuple[Op, ...]


def inverse(op: Op) -> Op | None:
    """The operation undoing ``op`` (None: nothing to undo)."""
    match op:
        case SetMtu(mtu, previous):
            return None if previous is None else SetMtu(previous, mtu)
        case SetUp(up):
            return SetUp(not up)
        case AddAddress(a):
            return DelAddress(a)
        case DelAddress(a):
            return AddAddress(a)
        case AddRoute(r):
            return DelRoute(r)
        case DelRoute(r):
            return AddRoute(r)


def after(state: State, op: Op) -> State:
    """The state once ``op`` has been done."""
    match op:
        case SetMtu(mtu, _):
            return dataclasses.replace(state, mtu=mtu)
        case SetUp(up):
            return dataclasses.replace(state, up=up)
        case AddAddress(a):
            return dataclasses.replace(state, addresses=state.addresses | {a})
        case DelAddress(a):
            return dataclasses.replace(state, addresses=state.addresses - {a})
        case AddRoute(r):
            return dataclasses.replace(state, routes=state.routes | {r})
        case DelRoute(r):
            return dataclasses.replace(state, routes=state.routes - {r})


def _host(addr: Address) -> Network:
    return ipaddress.ip_network(addr)


def _covered(net: Network, routes: Iterable[Network]) -> bool:
    return any(
        net.version == r.version and net.network_address in r and net.broadcast_address in r
        for r in routes
    )


def bypass_needed(wanted: NetworkConfig) -> tuple[Network, ...]:
    """The prefixes that need a bypass route: the gateway and each exclude that
    some route through the tun covers."""
    candidates = (_host(wanted.gateway), *wanted.exclude)
    return tuple(dict.fromkeys(n for n in candidates if _covered(n, wanted.routes)))


def target(wanted: NetworkConfig, ifindex: int, paths: Mapping[Network, Path]) -> State:
    """The exact state to install for ``wanted``; ``paths`` must hold every
    prefix of :func:`bypass_needed`."""
    routes = {Route(net, ifindex) for net in wanted.routes}
    for net in bypass_needed(wanted):
        path = paths[net]
        routes.add(Route(net, path.oif, path.gateway))
    return State(
        mtu=wanted.mtu, up=True, addresses=frozenset(wanted.addresses), routes=frozenset(routes)
    )


def is_tun_route(route: Route, ifindex: int) -> bool:
    return route.oif == ifindex and route.gateway is None


def _order(routes: Iterable[Route]) -> list[Route]:
    return sorted(
        routes,
        key=lambda r: (r.dst.version, int(r.dst.network_address), r.dst.prefixlen, r.oif),
    )


def diff(have: State, want: State, ifindex: int) -> Plan:
    """The operations turning ``have`` into ``want``; empty when they are equal.

    Order: the link first; stale addresses go before new ones are added (an
    IPv6 address can change its prefix length only that way); bypass routes
    are in place before the tun routes that cover them; stale routes go last,
    so a route being replaced is made before it is broken.

    One exception to "only the difference": when the IPv4 address changes, our
    IPv4 routes through the tun are deleted before it and added back after,
    because the kernel flushes a device's IPv4 routes when its last IPv4
    address goes, and the plan must say what really happens.
    """
    plan: list[Op] = []
    if want.mtu is not None and want.mtu != have.mtu:
        plan.append(SetMtu(want.mtu, have.mtu))
    if want.up and not have.up:
        plan.append(SetUp(True))
    have_routes = have.routes
    old_v4 = {a for a in have.addresses if a.version == 4}
    if old_v4 and old_v4 != {a for a in want.addresses if a.version == 4}:
        flushed = {r for r in have.routes if r.dst.version == 4 and is_tun_route(r, ifindex)}
        plan += [DelRoute(r) for r in _order(flushed)]
        have_routes = have.routes - flushed
    plan += [DelAddress(a) for a in sorted(have.addresses - want.addresses, key=str)]
    plan += [AddAddress(a) for a in sorted(want.addresses - have.addresses, key=str)]
    new = _order(want.routes - have_routes)
    stale = _order(have_routes - want.routes)
    plan += [AddRoute(r) for r in new if not is_tun_route(r, ifindex)]
    plan += [AddRoute(r) for r in new if is_tun_route(r, ifindex)]
    plan += [DelRoute(r) for r in stale if is_tun_route(r, ifindex)]
    plan += [DelRoute(r) for r in stale if not is_tun_route(r, ifindex)]
    return tuple(plan)


def teardown_plan(have: State, ifindex: int) -> Plan:
    """Remove everything we installed: tun routes, bypass routes, addresses."""
    routes = _order(have.routes)
    return (
        *(DelRoute(r) for r in routes if is_tun_route(r, ifindex)),
        *(DelRoute(r) for r in routes if not is_tun_route(r, ifindex)),
        *(DelAddress(a) for a in sorted(have.addresses, key=str)),
    )


def describe(op: Op) -> str:
    match op:
        case SetMtu(mtu, _):
            return f"set mtu {mtu}"
        case SetUp(up):
            return "set link up" if up else "set link down"
        case AddAddress(a):
            return f"add address {a}"
        case DelAddress(a):
            return f"delete address {a}"
        case AddRoute(r):
            return f"add route {r}"
        case DelRoute(r):
            return f"delete route {r}"


# ---------------------------------------------------------------------------
# Executing plans


class KernelError(Refusal):
    """The kernel refused an operation; ``code`` is its errno."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class KernelLookupError(Refusal):
    """The host has no usable path to an address (``ip route get`` failed or found none)."""


class Kernel(Protocol):
    """The netlink operations a plan needs (:class:`Netlink`; a fake in unit tests)."""

    def route_get(self, dst: Address, *, avoid: int) -> Path:
        """The host's path to ``dst`` outside the device ``avoid`` (our tun);
        KernelLookupError if it has no usable one."""

    def apply(self, op: Op, ifindex: int) -> None:
        """Do one operation on the system; Refusal (with the kernel's error) on failure."""


class Netlink:
    """:class:`Kernel` over rtnl.IPRoute (pyroute2's messages, one blocking socket)."""

    def __init__(self, ipr: IPRoute) -> None:
        self.ipr = ipr

    def index_of(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if len(found) != 1:
            raise Refusal(f"interface {ifname}: not found after creation")
        return int(found[0])

    def route_get(self, dst: Address, *, avoid: int) -> Path:
        try:
            (msg,) = self.ipr.route("get", dst=str(dst))
        except NetlinkError as exc:
            raise KernelLookupError(f"route lookup of {dst}: {os.strerror(exc.code)}") from None
        kind = int(msg["type"])
        oif = int(msg.get("RTA_OIF") or 0)
        if kind != RTN_UNICAST or oif <= 0 or msg.get("RTA_VIA") is not None:
            raise KernelLookupError(f"route lookup of {dst}: no usable unicast path (type {kind})")
        if oif == avoid:
            # Our own routes cover it already (a prefix first looked up once the tunnel
            # was up): the path the host would take without them, from table main.
            return self._main_table_path(dst, avoid)
        gateway = msg.get("RTA_GATEWAY")
        return Path(oif, None if gateway is None else ipaddress.ip_address(str(gateway)))

    def _main_table_path(self, dst: Address, avoid: int) -> Path:
        """Longest prefix, then lowest metric, among table main's unicast routes that
        are not ours and do not leave through ``avoid``."""
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        try:
            msgs = self.ipr.route("dump", family=family, table=RT_TABLE_MAIN)
        except NetlinkError as exc:
            raise KernelLookupError(f"route lookup of {dst}: {os.strerror(exc.code)}") from None
        best: tuple[int, int, Path] | None = None
        for msg in msgs:
            oif = int(msg.get("RTA_OIF") or 0)
            if (
                int(msg["type"]) != RTN_UNICAST
                or int(msg["proto"]) == RTPROT_SEPCONNECT
                or oif in (0, avoid)
                or msg.get("RTA_VIA") is not None
            ):
                continue
            prefixlen = int(msg["dst_len"])
            covering = ipaddress.ip_network((dst, prefixlen), strict=False)
            if prefixlen and str(msg.get("RTA_DST")) != str(covering.network_address):
                continue  # not a prefix of dst (a default route, prefixlen 0, always is)
            gateway = msg.get("RTA_GATEWAY")
            path = Path(oif, None if gateway is None else ipaddress.ip_address(str(gateway)))
            rank = (prefixlen, -int(msg.get("RTA_PRIORITY") or 0))
            if best is None or rank > best[:2]:
                best = (*rank, path)
        if best is None:
            raise KernelLookupError(f"route lookup of {dst}: no route outside the tunnel")
        return best[2]

    def apply(self, op: Op, ifindex: int) -> None:
        try:
            self._apply(op, ifindex)
        except NetlinkError as exc:
            raise KernelError(f"{describe(op)}: {os.strerror(exc.code)}", exc.code) from None

    def _apply(self, op: Op, ifindex: int) -> None:
        match op:
            case SetMtu(mtu, _):
                self.ipr.link("set", index=ifindex, mtu=mtu)
            case SetUp(up):
                self.ipr.link("set", index=ifindex, state="up" if up else "down")
            case AddAddress(a) | DelAddress(a):
                self.ipr.addr(
                    "add" if isinstance(op, AddAddress) else "del",
                    index=ifindex,
                    family=socket.AF_INET if a.version == 4 else socket.AF_INET6,
                    address=str(a.ip),
                    prefixlen=a.network.prefixlen,
                    flags=IFA_F_NODAD if a.version == 6 else 0,
                )
            case AddRoute(r) | DelRoute(r):
                self.ipr.route("add" if isinstance(op, AddRoute) else "del", **route_spec(r))


def route_spec(route: Route) -> dict[str, int | str]:
    """The exact netlink attributes of one of our routes (for both add and delete)."""
    spec: dict[str, int | str] = {
        "family": socket.AF_INET if route.dst.version == 4 else socket.AF_INET6,
        "dst": str(route.dst.network_address),
        "dst_len": route.dst.prefixlen,
        "oif": route.oif,
        "table": RT_TABLE_MAIN,
        "proto": RTPROT_SEPCONNECT,
        "priority": METRIC,
        "type": RTN_UNICAST,
    }
    if route.gateway is not None:
        spec["gateway"] = str(route.gateway)
        spec["scope"] = RT_SCOPE_UNIVERSE
    else:
        spec["scope"] = RT_SCOPE_LINK if route.dst.version == 4 else RT_SCOPE_UNIVERSE
    return spec


_GONE = frozenset({errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.EADDRNOTAVAIL})


def route_record(route: Route) -> dict[str, str | int | None]:
    """A bypass route for the state file (JSON-ready)."""
    return {
        "dst": str(route.dst),
        "oif": route.oif,
        "gateway": None if route.gateway is None else str(route.gateway),
    }


def competing(ipr: IPRoute, route: Route) -> list[str]:
    """Other routes in table main with the same prefix and a metric not above ours."""
    found: list[str] = []
    family = socket.AF_INET if route.dst.version == 4 else socket.AF_INET6
    try:
        msgs = ipr.route("dump", family=family, table=RT_TABLE_MAIN)
    except NetlinkError:
        return found
    for msg in msgs:
        if int(msg["dst_len"]) != route.dst.prefixlen or int(msg["proto"]) == RTPROT_SEPCONNECT:
            continue
        dst = msg.get("RTA_DST")
        if dst is None or ipaddress.ip_address(str(dst)) != route.dst.network_address:
            continue
        metric = int(msg.get("RTA_PRIORITY") or 0)
        if metric <= METRIC and int(msg.get("RTA_OIF") or 0) != route.oif:
            found.append(f"{route.dst} metric {metric} oif {msg.get('RTA_OIF')}")
    return found


class Router:
    """The tunnel's network state: what we installed, and the original paths."""

    def __init__(self, kernel: Kernel, ifindex: int, mtu: int) -> None:
        self.kernel = kernel
        self.ifindex = ifindex
        self.state = State(mtu=mtu)
        self.paths: dict[Network, Path] = {}
        """Each bypass prefix's original path, looked up before we first covered it."""

    def routable(self, wanted: NetworkConfig) -> tuple[NetworkConfig, dict[Network, str]]:
        """``wanted`` without the excludes the host has no path for outside the tunnel
        (they stay in the tunnel, as with openconnect's vpnc-script), and why each was
        left out. Every bypass prefix's original path is looked up once, before a tun
        route first covers it; a left-out exclude is looked up again next time, so a
        path that appears later is picked up by the next configuration.

        Raises Refusal if the VPN server itself has no path outside the tunnel.
        """
        gateway = _host(wanted.gateway)
        left_out: dict[Network, str] = {}
        for net in bypass_needed(wanted):
            if net in self.paths:
                continue
            try:
                path = self.kernel.route_get(net.network_address, avoid=self.ifindex)
            except KernelLookupError as exc:
                if net == gateway:
                    raise Refusal(
                        f"the VPN server {wanted.gateway} cannot be reached outside the "
                        f"tunnel ({exc}): the host needs a route to it"
                    ) from None
                left_out[net] = str(exc)
                continue
            if path.oif == self.ifindex:
                what = "gateway" if net == gateway else "exclude"
                raise Refusal(f"{what} {net}: its path already goes through the tunnel")
            self.paths[net] = path
        if not left_out:
            return wanted, left_out
        kept = tuple(net for net in wanted.exclude if net not in left_out)
        return dataclasses.replace(wanted, exclude=kept), left_out

    def configure(self, wanted: NetworkConfig) -> Plan:
        """Make the system match ``wanted`` (after :meth:`routable`); return the plan
        carried out.

        Raises Refusal (with nothing changed, as far as rollback could manage).
        """
        wanted, _ = self.routable(wanted)
        plan = diff(self.state, target(wanted, self.ifindex, self.paths), self.ifindex)
        self._run(plan)
        return plan

    def _run(self, plan: Plan) -> None:
        done: list[Op] = []
        for op in plan:
            try:
                self.kernel.apply(op, self.ifindex)
            except Refusal as exc:
                undone = self._undo(done)
                note = "nothing was changed" if undone else "ROLLBACK INCOMPLETE"
                raise Refusal(f"{exc} ({note})") from None
            done.append(op)
            self.state = after(self.state, op)

    def _undo(self, done: list[Op]) -> bool:
        complete = True
        for op in reversed(done):
            undo = inverse(op)
            if undo is None:
                continue
            try:
                self.kernel.apply(undo, self.ifindex)
            except Refusal:
                complete = False
                continue
            self.state = after(self.state, undo)
        return complete

    def clear(self) -> list[str]:
        """Remove everything we installed, carrying on past errors; return them.

        Something already gone (the kernel removed it with a device) counts as removed.
        """
        errors: list[str] = []
        for op in teardown_plan(self.state, self.ifindex):
            try:
                self.kernel.apply(op, self.ifindex)
            except Refusal as exc:
                if not (isinstance(exc, KernelError) and exc.code in _GONE):
                    errors.append(str(exc))
                    continue
            self.state = after(self.state, op)
        return errors
