"""The tunnel's network state, for one session: desired state → plan → netlink.

In the manner of tailscale's ``Router.Set``: each NetConfig is the *whole* desired
state. :func:`target` turns it into a :class:`State` (the exact addresses and routes we
want installed), :func:`diff` compares that with what we installed before and yields a
*plan*: the few operations that make up the difference, and nothing else. An identical
NetConfig gives an empty plan and touches nothing. :class:`Router` keeps what the helper
installed (in memory; only the helper changes it) and carries plans out through
:class:`Netlink`; if an operation fails midway, those already done are undone in reverse
order and the request is refused with the kernel's error.

What the helper ever installs:

* the tun's MTU, its "up" state, one IPv4 and/or one IPv6 address (IPv6 with IFA_F_NODAD
  so it is usable at once);
* routes through the tun (``oif`` = our ifindex);
* *bypass* routes on other devices, and only these: a host route to the VPN gateway
  (fixed at Hello), and the ``exclude`` prefixes, each via the path ``route get``
  reported *before* any of our routes covered it, and only while some route through the
  tun covers it (otherwise it would change nothing but the host's table).

Every route has our own route protocol number :data:`RTPROT_SEPCONNECT` (``ip route``
shows ``proto 157``), metric :data:`METRIC`, table main, and is deleted by exactly those
attributes at teardown: a route of anyone else's is never removed, and after a crash the
next helper tells our stale bypass routes (named in the state file) from everybody's
(recovery.py). A more specific prefix always wins, so the host's default route never
competes with the full tunnel's /1 halves; for an *equal* prefix the lower metric wins:
ours (50) beats DHCP's (100 and up) but not a hand-made metric-0 route: the helper
leaves such a route alone (the supervisor's ``conflict`` record names it:
supervisor/routes.py). A route
identical to one of ours makes the kernel refuse ours ("File exists"): refused, rolled
back. The original paths are looked up once per prefix and kept for the session.

:class:`Netlink` is the rtnetlink client: pyroute2's message classes over one blocking
socket, only its socket layer left out. ``import pyroute2`` runs the package's
``__init__``, which imports every subsystem (NDB with asyncio and sqlite3, IPDB,
conntrack, ...): ~24 MB of RSS and ~110 ms of start-up. The message classes import none
of that, so the package is registered without running its ``__init__``
(:func:`_pyroute2`). The requests are the ones pyroute2's ``IPRoute`` sends for the same
calls (same flags and attributes), errors are pyroute2's :class:`NetlinkError` with the
kernel's errno, and only the kernel (port 0) is listened to: a message from another
sender, a reply to another request, a truncated datagram or a malformed message raises
NetlinkError (EPROTO) instead of being interpreted.

:class:`Helper` is :class:`policy.Host`: the tun and its routes. The optional parts
(the resolver, the kill switch, the vpnc-script, which then configures the tunnel instead
of the router) are options_helper.OptionsHelper's, which privhelper/serve.py loads only
when root's options ask for one. What the helper installed outside its tun goes to its
state file (process/statefile.py), for the next start to undo after a crash
(recovery.py).
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import importlib.util
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from sepconnect.ipc.netconfig import METRIC, RT_TABLE_MAIN, RTPROT_SEPCONNECT, NetworkConfig
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper.policy import Address, Interface, Network, Refusal
from sepconnect.privhelper.tun import Tun, open_tun
from sepconnect.process import statefile

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import BackendName


def _pyroute2(*names: str) -> list[ModuleType]:
    """pyroute2's netlink modules, without its __init__ (a test process that imported the
    whole package keeps it)."""
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("pyroute2 is not installed")
        # The package with its search path, its __init__ not executed: these submodules
        # import only pyroute2.common and pyroute2.netlink.
        sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    return [importlib.import_module(f"pyroute2.netlink{name}") for name in names]


_nl, _exceptions, _rt, _ifa = _pyroute2("", ".exceptions", ".rtnl.rtmsg", ".rtnl.ifaddrmsg")
NetlinkError: Any = _exceptions.NetlinkError
"""pyroute2's error: ``.code`` is the kernel's errno."""


class ifinfmsg(_nl.nlmsg):  # type: ignore[misc,name-defined]  # noqa: N801
    """struct ifinfomsg with the two attributes the helper sends (pyroute2's own imports
    its link-kind plugins and pyroute2.config: ~1 MB). Replies are read for the index."""

    __slots__ = ()
    prefix = "IFLA_"
    fields = (("family", "B"), ("__align", "x"), ("ifi_type", "H"), ("index", "i"),
              ("flags", "I"), ("change", "I"))  # fmt: skip
    nla_map = ((3, "IFLA_IFNAME", "asciiz"), (4, "IFLA_MTU", "uint32"))


STATE_PREFIX: Final = "helper"
# <linux/netlink.h>, <linux/rtnetlink.h>
_ERROR, _DONE, _ACK, _DUMP = 2, 3, 0x5, 0x301  # NLM_F_ACK and NLM_F_DUMP with NLM_F_REQUEST
_ADD: Final = _ACK | 0x600  # NLM_F_CREATE | NLM_F_EXCL
_NEWLINK, _GETLINK, _NEWADDR, _DELADDR = 16, 18, 20, 21
_NEWROUTE, _DELROUTE, _GETROUTE = 24, 25, 26
_UNICAST, _SCOPE_LINK, _NODAD = 1, 253, 0x02
_HEADER: Final = struct.Struct("=IHHII")  # struct nlmsghdr
_RECV_BUFFER: Final = 1 << 17  # above any one datagram of a dump; truncated is an error
_GONE: Final = frozenset({errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.EADDRNOTAVAIL})


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One route we install: ``dst`` via ``oif`` (and ``gateway``, if any). A bypass
    route is the path ``route get`` reported for its prefix before the tunnel."""

    dst: Network
    oif: int
    gateway: Address | None = None

    def __str__(self) -> str:
        via = "" if self.gateway is None else f" via {self.gateway}"
        return f"{self.dst}{via} oif {self.oif}"


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """The tun's MTU and whether it is up."""

    mtu: int
    up: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """What is installed (or wanted), as far as the helper is concerned."""

    link: Link
    addresses: frozenset[Interface] = frozenset()
    routes: frozenset[Route] = frozenset()


# The two operations a plan is made of; each has an inverse, for rollback.


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """Add (or delete) an address of the tun, or a route."""

    add: bool
    item: Interface | Route

    def __str__(self) -> str:
        kind = "route" if isinstance(self.item, Route) else "address"
        return f"{'add' if self.add else 'delete'} {kind} {self.item}"


@dataclasses.dataclass(frozen=True, slots=True)
class SetLink:
    """Set the tun's MTU and up state to ``link`` (from ``previous``)."""

    link: Link
    previous: Link

    def __str__(self) -> str:
        return f"set link mtu {self.link.mtu} {'up' if self.link.up else 'down'}"


Op = Change | SetLink
Plan = tuple[Op, ...]


def inverse(op: Op) -> Op:
    if isinstance(op, SetLink):
        return SetLink(op.previous, op.link)
    return Change(not op.add, op.item)


def after(state: State, op: Op) -> State:
    """The state once ``op`` has been done."""
    if isinstance(op, SetLink):
        return dataclasses.replace(state, link=op.link)
    if isinstance(op.item, Route):
        routes = state.routes | {op.item} if op.add else state.routes - {op.item}
        return dataclasses.replace(state, routes=routes)
    addresses = state.addresses | {op.item} if op.add else state.addresses - {op.item}
    return dataclasses.replace(state, addresses=addresses)


def bypass_needed(wanted: NetworkConfig) -> tuple[Network, ...]:
    """The prefixes that need a bypass route: the gateway and each exclude that some
    route through the tun covers."""
    candidates = (ipaddress.ip_network(wanted.gateway), *wanted.exclude)
    return tuple(dict.fromkeys(n for n in candidates if _covered(n, wanted.routes)))


def _covered(net: Network, routes: Iterable[Network]) -> bool:
    first, last = net.network_address, net.broadcast_address
    return any(net.version == r.version and first in r and last in r for r in routes)


def target(wanted: NetworkConfig, ifindex: int, paths: Mapping[Network, Route]) -> State:
    """The exact state for ``wanted``; ``paths`` holds the bypass route of every prefix
    of bypass_needed."""
    routes = {Route(net, ifindex) for net in wanted.routes}
    routes |= {paths[net] for net in bypass_needed(wanted)}
    return State(Link(wanted.mtu, True), frozenset(wanted.addresses), frozenset(routes))


def _in_order(routes: Iterable[Route], ifindex: int, *, bypass_first: bool) -> list[Route]:
    """The one ordering rule of routes: bypass routes before the tun routes that cover
    them when adding, after them when deleting; by address within each."""
    return sorted(routes, key=lambda r: ((r.oif == ifindex) == bypass_first, r.dst.version, r.dst))


def diff(have: State, want: State, ifindex: int) -> Plan:
    """The operations turning ``have`` into ``want``; empty when they are equal.

    Order: the link first; stale addresses go before new ones (an IPv6 address changes
    its prefix length only that way); bypass routes are in place before the tun routes
    that cover them; stale routes go last, so a route being replaced is made before it
    is broken. One exception to "only the difference": when the IPv4 address changes,
    our IPv4 tun routes are deleted before it and added back after, because the kernel
    flushes a device's IPv4 routes with its last IPv4 address.
    """
    plan: list[Op] = [] if want.link == have.link else [SetLink(want.link, have.link)]
    routes = have.routes
    old_v4 = {a for a in have.addresses if a.version == 4}
    if old_v4 and old_v4 != {a for a in want.addresses if a.version == 4}:
        flushed = {r for r in have.routes if r.oif == ifindex and r.dst.version == 4}
        plan += [Change(False, r) for r in _in_order(flushed, ifindex, bypass_first=False)]
        routes -= flushed
    plan += [Change(False, a) for a in sorted(have.addresses - want.addresses, key=str)]
    plan += [Change(True, a) for a in sorted(want.addresses - have.addresses, key=str)]
    plan += [Change(True, r) for r in _in_order(want.routes - routes, ifindex, bypass_first=True)]
    stale = _in_order(routes - want.routes, ifindex, bypass_first=False)
    return (*plan, *(Change(False, r) for r in stale))


def teardown_plan(have: State, ifindex: int) -> Plan:
    """Remove everything we installed: tun routes, bypass routes, addresses."""
    routes = _in_order(have.routes, ifindex, bypass_first=False)
    return tuple(Change(False, x) for x in (*routes, *sorted(have.addresses, key=str)))


class KernelError(Refusal):
    """The kernel refused an operation or a route lookup; ``code`` is its errno."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class Netlink:
    """The rtnetlink client over one NETLINK_ROUTE socket, opened before the seccomp
    filter (``socket``/``bind``); afterwards only ``sendto``/``recvfrom`` on it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def index_of(self, ifname: str) -> int:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", ifname)]
        try:
            (found,) = self._request(msg, _GETLINK, _ACK)
        except (NetlinkError, ValueError):
            raise Refusal(f"interface {ifname}: not found after creation") from None
        return int(found["index"])

    def route_get(self, net: Network, *, avoid: int) -> Route:
        """The bypass route for ``net``: the host's path to it outside ``avoid`` (our
        tun). KernelError if it has none."""
        dst = net.network_address
        msg = _rt.rtmsg()
        msg["family"], msg["dst_len"] = _family(dst.version), dst.max_prefixlen
        msg["table"], msg["attrs"] = RT_TABLE_MAIN, [("RTA_DST", str(dst))]
        what = f"route lookup of {dst}"
        try:
            (reply,) = self._request(msg, _GETROUTE, _ACK)
            # Our routes cover it already (a prefix first looked up once the tunnel was
            # up): the path without them, from table main: longest prefix, lowest metric.
            candidates = self.dump(dst.version) if _oif(reply) == avoid else [reply]
        except NetlinkError as exc:
            raise KernelError(f"{what}: {os.strerror(exc.code)}", exc.code) from None
        if not _unicast(reply):
            kind = int(reply["type"])
            raise KernelError(f"{what}: no usable unicast path (type {kind})", errno.ENETUNREACH)
        paths = [r for r in candidates if _unicast(r) and _oif(r) != avoid and _holds(r, dst)]
        if not paths:
            raise KernelError(f"{what}: no route outside the tunnel", errno.ENETUNREACH)
        best = max(paths, key=lambda r: (int(r["dst_len"]), -int(r.get("RTA_PRIORITY") or 0)))
        gateway = best.get("RTA_GATEWAY")
        gateway = None if gateway is None else ipaddress.ip_address(str(gateway))
        return Route(net, _oif(best), gateway)

    def dump(self, version: int) -> list[Any]:
        """Table main's routes of one family that are not ours (NetlinkError on failure)."""
        msg = _rt.rtmsg()
        msg["family"], msg["table"] = _family(version), RT_TABLE_MAIN
        routes = self._request(msg, _GETROUTE, _DUMP)
        # The kernel filters dumps by table only with strict checking: filter here.
        main = [r for r in routes if int(r.get("RTA_TABLE") or r["table"]) == RT_TABLE_MAIN]
        return [r for r in main if int(r["proto"]) != RTPROT_SEPCONNECT]

    def apply(self, op: Op, ifindex: int) -> None:
        """Do one operation; routes carry their own device (``ifindex``: the tun's)."""
        add = isinstance(op, Change) and op.add
        if isinstance(op, SetLink):
            msg, kind = ifinfmsg(), _NEWLINK
            msg["index"], msg["flags"], msg["change"] = ifindex, int(op.link.up), 1  # IFF_UP
            msg["attrs"] = [("IFLA_MTU", op.link.mtu)]
        elif isinstance(op.item, Route):
            msg, kind = _route_message(op.item), _NEWROUTE if add else _DELROUTE
        else:
            msg, kind = _ifa.ifaddrmsg(), _NEWADDR if add else _DELADDR
            msg["family"], msg["index"] = _family(op.item.version), ifindex
            msg["prefixlen"] = op.item.network.prefixlen
            address, v4 = str(op.item.ip), op.item.version == 4
            # As iproute2: IFA_LOCAL is this end's address (IFA_ADDRESS the peer's, for IPv4).
            attrs = [("IFA_ADDRESS", address), ("IFA_FLAGS", 0 if v4 else _NODAD)]
            msg["attrs"] = attrs + [("IFA_LOCAL", address)] * v4
        try:
            self._request(msg, kind, _ADD if add else _ACK)
        except NetlinkError as exc:
            raise KernelError(f"{op}: {os.strerror(exc.code)}", exc.code) from None

    def _request(self, msg: Any, msg_type: int, flags: int) -> list[Any]:
        """Send one request; the decoded replies (of the request's class) until its ACK
        or the dump's end."""
        self.seq = self.seq % 0xFFFFFFFF + 1
        header = msg["header"]
        header["type"], header["flags"], header["sequence_number"] = msg_type, flags, self.seq
        msg.encode()
        self.sock.sendto(msg.data, (0, 0))
        replies: list[Any] = []
        while True:
            data, (port, _groups) = self.sock.recvfrom(_RECV_BUFFER, socket.MSG_TRUNC)
            if port != 0 or len(data) > _RECV_BUFFER:  # not from the kernel, or truncated
                raise _protocol_error(f"datagram of {len(data)} bytes from port {port}")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                end = offset + length
                if length < _HEADER.size + 4 * (kind == _ERROR) or end > len(data):
                    raise _protocol_error(f"message length {length}")
                if seq != self.seq:
                    raise _protocol_error(f"reply to request {seq}, expected {self.seq}")
                if kind == _ERROR:  # struct nlmsgerr: the errno, then the request
                    (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if code:
                        raise NetlinkError(-code)
                    return replies  # the ACK
                if kind == _DONE:
                    return replies
                reply = type(msg)(data[offset:end])
                try:
                    reply.decode()
                except Exception as exc:  # pyroute2's decoders raise many types on bad input
                    raise _protocol_error(f"undecodable reply: {exc!r}") from None
                replies.append(reply)
                offset = (end + 3) & ~3


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _oif(route: Any) -> int:
    return int(route.get("RTA_OIF") or 0)


def _unicast(route: Any) -> bool:
    """A unicast route through a device (not a multipath one, RTA_VIA: not ours to copy)."""
    return int(route["type"]) == _UNICAST and _oif(route) > 0 and route.get("RTA_VIA") is None


def _holds(route: Any, dst: Address) -> bool:
    """Does a route of the kernel's cover ``dst`` (a default route, length 0, does)?"""
    length = int(route["dst_len"])
    covering = ipaddress.ip_network((dst, length), strict=False)
    return not length or str(route.get("RTA_DST")) == str(covering.network_address)


def _route_message(route: Route) -> Any:
    """One of our routes, with the exact attributes it is added and deleted by."""
    msg = _rt.rtmsg()
    msg["family"], msg["table"] = _family(route.dst.version), RT_TABLE_MAIN
    msg["dst_len"], msg["proto"], msg["type"] = route.dst.prefixlen, RTPROT_SEPCONNECT, _UNICAST
    on_link = route.gateway is None and route.dst.version == 4
    msg["scope"] = _SCOPE_LINK if on_link else 0  # RT_SCOPE_UNIVERSE
    gateway = [] if route.gateway is None else [("RTA_GATEWAY", str(route.gateway))]
    msg["attrs"] = [("RTA_DST", str(route.dst.network_address)), ("RTA_OIF", route.oif), *gateway,
                    ("RTA_TABLE", RT_TABLE_MAIN), ("RTA_PRIORITY", METRIC)]  # fmt: skip
    return msg


def _protocol_error(reason: str) -> Exception:
    error: Exception = NetlinkError(errno.EPROTO, f"netlink: {reason}")
    return error


class Router:
    """The tunnel's network state: what we installed, and the original paths."""

    def __init__(self, kernel: Netlink, ifindex: int, mtu: int) -> None:
        self.kernel, self.ifindex = kernel, ifindex
        self.state = State(Link(mtu))
        self.paths: dict[Network, Route] = {}
        """Each bypass prefix's route, from its path before we first covered it."""

    def routable(self, wanted: NetworkConfig) -> tuple[NetworkConfig, dict[Network, str]]:
        """``wanted`` without the excludes the host has no path for outside the tunnel
        (they stay in the tunnel, as with openconnect's vpnc-script), and why each was
        left out. Each bypass prefix's original path is looked up once, before a tun
        route first covers it; a left-out exclude is looked up again next time.

        Raises Refusal if the VPN server itself has no path outside the tunnel.
        """
        gateway = ipaddress.ip_network(wanted.gateway)
        left_out: dict[Network, str] = {}
        for net in bypass_needed(wanted):
            if net in self.paths:
                continue
            try:
                route = self.kernel.route_get(net, avoid=self.ifindex)
            except KernelError as exc:
                if net == gateway:
                    server = f"the VPN server {wanted.gateway} cannot be reached outside the tunnel"
                    raise Refusal(f"{server} ({exc}): the host needs a route to it") from None
                left_out[net] = str(exc)
                continue
            if route.oif == self.ifindex:
                what = "gateway" if net == gateway else "exclude"
                raise Refusal(f"{what} {net}: its path already goes through the tunnel")
            self.paths[net] = route
        kept = tuple(net for net in wanted.exclude if net not in left_out)
        return dataclasses.replace(wanted, exclude=kept), left_out

    def configure(self, wanted: NetworkConfig) -> Plan:
        """Make the system match ``wanted``, a configuration :meth:`routable` returned
        (its bypass prefixes' paths are known); return the plan carried out. Raises
        Refusal (with nothing changed, as far as rollback could manage)."""
        plan = diff(self.state, target(wanted, self.ifindex, self.paths), self.ifindex)
        for done, op in enumerate(plan):
            try:
                self.kernel.apply(op, self.ifindex)
            except KernelError as exc:
                failed = self._run(map(inverse, reversed(plan[:done])), gone=())
                note = "ROLLBACK INCOMPLETE" if failed else "nothing was changed"
                raise Refusal(f"{exc} ({note})") from None
            self.state = after(self.state, op)
        return plan

    def clear(self) -> list[str]:
        """Remove everything we installed, carrying on past errors; return them. Something
        already gone (the kernel removed it with a device) counts as removed."""
        return self._run(teardown_plan(self.state, self.ifindex), gone=_GONE)

    def _run(self, ops: Iterable[Op], gone: Iterable[int]) -> list[str]:
        errors: list[str] = []
        for op in ops:
            try:
                self.kernel.apply(op, self.ifindex)
            except KernelError as exc:
                if exc.code not in gone:
                    errors.append(str(exc))
                    continue
            self.state = after(self.state, op)
        return errors


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """Root's choices from the helper's argv."""

    ifname: str  # a name or a template with %d
    named: bool = False  # --interface was given (a vpnc-script's pre-init sees TUNDEV)
    no_routes: bool = False
    fail_closed: bool = False
    allow_exclude: tuple[Network, ...] = ()  # what --fail-closed lets a server exclude
    dns_backend: BackendName = "none"
    script: str | None = None
    log_level: int = 0
    state_dir: str | None = None


class Helper:
    """:class:`policy.Host`: the tun and its network state, for one session. The optional
    parts root's options ask for are options_helper.OptionsHelper's."""

    def __init__(self, netlink: Netlink, options: Options, audit: _audit.Audit) -> None:
        self.netlink, self.options, self.audit = netlink, options, audit
        self.tun: Tun | None = None
        self.router: Router | None = None
        self.gateway: Address | None = None
        self.undo_errors: list[str] = []
        """What could not be undone; the cleanup keeps the state file for the next start."""
        directory = options.state_dir
        self.state = None if directory is None else statefile.StateFile(directory, STATE_PREFIX)

    def create_tun(self, mtu: int, *, vnet_hdr: bool) -> tuple[str, int, int]:
        try:
            tun = open_tun(self.options.ifname, vnet_hdr=vnet_hdr)
        except OSError as exc:
            raise Refusal(f"create tun {self.options.ifname}: {exc.strerror or exc}") from None
        try:
            ifindex = self.netlink.index_of(tun.name)
            self.netlink.apply(SetLink(Link(mtu), Link(mtu)), ifindex)
            fd = os.dup(tun.fd)
        except (Refusal, OSError):
            os.close(tun.fd)  # the device goes with it: nothing was changed
            raise
        self.tun, self.router = tun, Router(self.netlink, ifindex, mtu)
        self.save(ifname=tun.name)
        return tun.name, ifindex, fd

    def net_config(self, wanted: NetworkConfig) -> dict[Network, str]:
        router, _ = self.configured()
        wanted, left_out = self.routable(router, wanted)
        self.install(router, wanted)
        return left_out

    def configured(self) -> tuple[Router, Tun]:
        """The router and the tun, which CreateTun made."""
        if self.router is None or self.tun is None:  # the phase table makes this unreachable
            raise Refusal("no tun")
        return self.router, self.tun

    def routable(
        self, router: Router, wanted: NetworkConfig
    ) -> tuple[NetworkConfig, dict[Network, str]]:
        """``wanted`` without the excludes the host cannot route outside the tunnel (they
        stay in it; the kill switch then treats them as not excluded), and why."""
        if self.options.no_routes:
            return wanted, {}
        wanted, left_out = router.routable(wanted)
        for prefix, reason in left_out.items():
            self.audit.record("exclude_left_out", "info", f"{prefix}: {reason}")
        return wanted, left_out

    def install(self, router: Router, wanted: NetworkConfig) -> None:
        """Configure the tun and its routes as ``wanted`` (a routable configuration)."""
        no_routes = self.options.no_routes  # the addresses and MTU only
        routed = dataclasses.replace(wanted, routes=(), exclude=()) if no_routes else wanted
        router.configure(routed)
        bypass = sorted((r for r in router.state.routes if r.oif != router.ifindex), key=str)
        self.save(bypass=[_record(r) for r in bypass])

    def script_event(self, reason: str) -> None:
        """Only a vpnc-script acts on it (OptionsHelper)."""

    def undo(self) -> list[str]:
        """Remove what we installed outside the tun; what could not be undone."""
        errors = [] if self.router is None else self.router.clear()
        self.router = None
        return errors

    def cleanup(self) -> None:
        """Remove what we installed, then close the tun (the device disappears). Idempotent;
        the state file stays if anything could not be undone, now or before."""
        errors = self.undo()
        self.undo_errors += errors
        if self.tun is not None or errors:
            failures = "; ".join(self.undo_errors)[:1000]
            self.audit.record("cleanup", "fatal" if failures else "info", failures)
        if self.tun is not None:
            os.close(self.tun.fd)
            self.tun = None
        if self.state is not None and not self.undo_errors:
            self.state.remove()

    def teardown(self) -> None:
        self.cleanup()

    def save(self, **changes: Any) -> None:
        """Record what we installed outside the tun in our state file (recovery.py)."""
        if self.state is not None:
            try:
                self.state.write(**changes)
            except OSError as exc:
                self.audit.record("state", "info", f"cannot write {self.state.path}: {exc}")


def _record(route: Route) -> dict[str, str | int | None]:
    """A bypass route for the state file (recovery.route_from_record reads it back)."""
    gateway = None if route.gateway is None else str(route.gateway)
    return {"dst": str(route.dst), "oif": route.oif, "gateway": gateway}
