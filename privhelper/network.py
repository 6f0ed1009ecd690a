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
ours (50) beats DHCP's (100 and up) but not a hand-made metric-0 route, and the helper
writes a ``conflict`` audit record naming such a route and leaves it alone. A route
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

:class:`Helper` is :class:`policy.Host`: the tun, its routes, and the optional parts,
imported only when root's options ask for them: the resolver backend (dns.py), the
fail-closed table (firewall.py, through the nft runner), the vpnc-script (script.py,
run by the root runner). With ``--script PATH`` the script configures the tunnel, as
under openconnect: ``pre-init`` before the tun, ``connect`` for the first NetConfig (and
again after a ``disconnect`` when a later one differs), ``attempt-reconnect`` and
``reconnect`` (ScriptEvent), ``disconnect`` at teardown. Scripts never fail open: a
configuration whose environment the runner would not take is refused before any script
runs, and a ``connect`` or ``reconnect`` that cannot start or exits non-zero is refused
(``connect`` after running ``disconnect``), which ends the session. What the helper
installed outside its tun goes to its state file (process/statefile.py), for the next
start to undo after a crash (recovery.py).
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
from typing import TYPE_CHECKING, Any, Final, Protocol

from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper import policy
from sepconnect.privhelper.policy import Address, Interface, Network, Refusal
from sepconnect.privhelper.tun import Tun, open_tun
from sepconnect.process import statefile

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import Backend, BackendName
    from sepconnect.privhelper.script import Script
    from sepconnect.process.runner import RunnerClient


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


METRIC: Final = 50
"""Every route's priority (NetworkManager's for VPN routes): it beats DHCP's defaults
(100+) for equal prefixes and stays clear of metric 0."""
RTPROT_SEPCONNECT: Final = 157
"""Our route protocol number (unassigned in iproute2's rt_protos), on every route we add."""
RT_TABLE_MAIN: Final = 254
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
    """One route we install: ``dst`` via ``oif`` (and ``gateway``, if any)."""

    dst: Network
    oif: int
    gateway: Address | None = None

    def __str__(self) -> str:
        via = "" if self.gateway is None else f" via {self.gateway}"
        return f"{self.dst}{via} oif {self.oif}"


@dataclasses.dataclass(frozen=True, slots=True)
class Path:
    """Where the host sent a destination before the tunnel: ``route get``'s answer."""

    oif: int
    gateway: Address | None


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """What is installed (or wanted), as far as the helper is concerned."""

    mtu: int | None = None
    up: bool = False
    addresses: frozenset[Interface] = frozenset()
    routes: frozenset[Route] = frozenset()


# The operations a plan is made of; each knows its inverse, for rollback.


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """Add (or delete) an address of the tun, or a route."""

    add: bool
    item: Interface | Route

    def __str__(self) -> str:
        kind = "route" if isinstance(self.item, Route) else "address"
        return f"{'add' if self.add else 'delete'} {kind} {self.item}"


@dataclasses.dataclass(frozen=True, slots=True)
class SetMtu:
    mtu: int
    previous: int | None

    def __str__(self) -> str:
        return f"set mtu {self.mtu}"


@dataclasses.dataclass(frozen=True, slots=True)
class SetUp:
    up: bool

    def __str__(self) -> str:
        return f"set link {'up' if self.up else 'down'}"


Op = Change | SetMtu | SetUp
Plan = tuple[Op, ...]


def inverse(op: Op) -> Op | None:
    """The operation undoing ``op`` (None: nothing to undo)."""
    if isinstance(op, Change):
        return Change(not op.add, op.item)
    if isinstance(op, SetUp):
        return SetUp(not op.up)
    return None if op.previous is None else SetMtu(op.previous, op.mtu)


def after(state: State, op: Op) -> State:
    """The state once ``op`` has been done."""
    if isinstance(op, SetMtu):
        return dataclasses.replace(state, mtu=op.mtu)
    if isinstance(op, SetUp):
        return dataclasses.replace(state, up=op.up)
    field = "routes" if isinstance(op.item, Route) else "addresses"
    items = getattr(state, field)
    return dataclasses.replace(state, **{field: items | {op.item} if op.add else items - {op.item}})


def _covered(net: Network, routes: Iterable[Network]) -> bool:
    first, last = net.network_address, net.broadcast_address
    return any(net.version == r.version and first in r and last in r for r in routes)


def bypass_needed(wanted: NetworkConfig) -> tuple[Network, ...]:
    """The prefixes that need a bypass route: the gateway and each exclude that some
    route through the tun covers."""
    candidates = (ipaddress.ip_network(wanted.gateway), *wanted.exclude)
    return tuple(dict.fromkeys(n for n in candidates if _covered(n, wanted.routes)))


def target(wanted: NetworkConfig, ifindex: int, paths: Mapping[Network, Path]) -> State:
    """The exact state for ``wanted``; ``paths`` holds every prefix of bypass_needed."""
    routes = {Route(net, ifindex) for net in wanted.routes}
    routes |= {Route(net, paths[net].oif, paths[net].gateway) for net in bypass_needed(wanted)}
    return State(wanted.mtu, True, frozenset(wanted.addresses), frozenset(routes))


def _tun_routes(routes: Iterable[Route], ifindex: int, tun: bool = True) -> list[Route]:
    """Routes through the tun (or, ``tun=False``, the bypass routes), in a stable order."""
    chosen = (r for r in routes if (r.oif == ifindex and r.gateway is None) == tun)
    return sorted(chosen, key=lambda r: (r.dst.version, r.dst.network_address, r.dst.prefixlen))


def diff(have: State, want: State, ifindex: int) -> Plan:
    """The operations turning ``have`` into ``want``; empty when they are equal.

    Order: the link first; stale addresses go before new ones (an IPv6 address changes
    its prefix length only that way); bypass routes are in place before the tun routes
    that cover them; stale routes go last, so a route being replaced is made before it
    is broken. One exception to "only the difference": when the IPv4 address changes,
    our IPv4 tun routes are deleted before it and added back after, because the kernel
    flushes a device's IPv4 routes with its last IPv4 address.
    """
    plan: list[Op] = []
    if want.mtu is not None and want.mtu != have.mtu:
        plan.append(SetMtu(want.mtu, have.mtu))
    if want.up and not have.up:
        plan.append(SetUp(True))
    routes = have.routes
    old_v4 = {a for a in have.addresses if a.version == 4}
    if old_v4 and old_v4 != {a for a in want.addresses if a.version == 4}:
        flushed = [r for r in _tun_routes(have.routes, ifindex) if r.dst.version == 4]
        plan += [Change(False, r) for r in flushed]
        routes = have.routes - set(flushed)
    plan += [Change(False, a) for a in sorted(have.addresses - want.addresses, key=str)]
    plan += [Change(True, a) for a in sorted(want.addresses - have.addresses, key=str)]
    new, stale = want.routes - routes, routes - want.routes
    plan += [Change(True, r) for r in _tun_routes(new, ifindex, tun=False)]
    plan += [Change(True, r) for r in _tun_routes(new, ifindex)]
    plan += [Change(False, r) for r in _tun_routes(stale, ifindex)]
    return (*plan, *(Change(False, r) for r in _tun_routes(stale, ifindex, tun=False)))


def teardown_plan(have: State, ifindex: int) -> Plan:
    """Remove everything we installed: tun routes, bypass routes, addresses."""
    routes = _tun_routes(have.routes, ifindex) + _tun_routes(have.routes, ifindex, tun=False)
    return tuple(Change(False, x) for x in (*routes, *sorted(have.addresses, key=str)))


class KernelError(Refusal):
    """The kernel refused an operation; ``code`` is its errno."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class KernelLookupError(Refusal):
    """The host has no usable path to an address (``ip route get`` failed or found none)."""


class Kernel(Protocol):
    """What the router needs of the system (:class:`Netlink`; a fake in unit tests)."""

    def route_get(self, dst: Address, *, avoid: int) -> Path:
        """The host's path to ``dst`` outside ``avoid`` (our tun), or KernelLookupError."""

    def apply(self, op: Op, ifindex: int) -> None:
        """Do one operation; KernelError (the kernel's errno) on failure."""


class Netlink:
    """:class:`Kernel` over one NETLINK_ROUTE socket, opened before the seccomp filter
    (``socket``/``bind``); afterwards only ``sendto``/``recvfrom`` on it."""

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
            found = self._request(msg, _GETLINK, _ACK, ifinfmsg)
        except NetlinkError:
            found = []
        if len(found) != 1:
            raise Refusal(f"interface {ifname}: not found after creation")
        return int(found[0]["index"])

    def route_get(self, dst: Address, *, avoid: int) -> Path:
        msg = _rt.rtmsg()
        msg["family"], msg["dst_len"] = _family(dst.version), dst.max_prefixlen
        msg["table"], msg["attrs"] = RT_TABLE_MAIN, [("RTA_DST", str(dst))]
        try:
            (reply,) = self._request(msg, _GETROUTE, _ACK, _rt.rtmsg)
            oif = int(reply.get("RTA_OIF") or 0)
            # Our routes cover it already (a prefix first looked up once the tunnel was
            # up): the path without them, from table main: longest prefix, lowest metric.
            routes = self.dump(dst.version) if oif == avoid else []
        except NetlinkError as exc:
            raise KernelLookupError(f"route lookup of {dst}: {os.strerror(exc.code)}") from None
        kind = int(reply["type"])
        if kind != _UNICAST or oif <= 0 or reply.get("RTA_VIA") is not None:
            raise KernelLookupError(f"route lookup of {dst}: no usable unicast path (type {kind})")
        if oif != avoid:
            return _path(oif, reply)
        best: tuple[int, int, Path] | None = None
        for route in routes:
            oif, length = int(route.get("RTA_OIF") or 0), int(route["dst_len"])
            via = route.get("RTA_VIA")
            if oif in (0, avoid) or int(route["type"]) != _UNICAST or via is not None:
                continue
            covering = ipaddress.ip_network((dst, length), strict=False)
            if length and str(route.get("RTA_DST")) != str(covering.network_address):
                continue  # not a prefix of dst (a default route, length 0, always is)
            rank = (length, -int(route.get("RTA_PRIORITY") or 0))
            if best is None or rank > best[:2]:
                best = (*rank, _path(oif, route))
        if best is None:
            raise KernelLookupError(f"route lookup of {dst}: no route outside the tunnel")
        return best[2]

    def dump(self, version: int) -> list[Any]:
        """Table main's routes of one family that are not ours (NetlinkError on failure)."""
        msg = _rt.rtmsg()
        msg["family"], msg["table"] = _family(version), RT_TABLE_MAIN
        routes = self._request(msg, _GETROUTE, _DUMP, _rt.rtmsg)
        # The kernel filters dumps by table only with strict checking: filter here.
        main = [r for r in routes if int(r.get("RTA_TABLE") or r["table"]) == RT_TABLE_MAIN]
        return [r for r in main if int(r["proto"]) != RTPROT_SEPCONNECT]

    def competing(self, route: Route) -> list[str]:
        """Other routes with the same prefix and a metric not above ours."""
        found: list[str] = []
        for other in self.dump(route.dst.version):
            metric, oif = int(other.get("RTA_PRIORITY") or 0), int(other.get("RTA_OIF") or 0)
            prefix = (str(other.get("RTA_DST")), int(other["dst_len"]))
            same = prefix == (str(route.dst.network_address), route.dst.prefixlen)
            if same and metric <= METRIC and oif != route.oif:
                found.append(f"{route.dst} metric {metric} oif {oif}")
        return found

    def apply(self, op: Op, ifindex: int) -> None:
        """Do one operation; routes carry their own device (``ifindex``: the tun's)."""
        item = op.item if isinstance(op, Change) else None
        if isinstance(item, Route):
            msg, kind, cls = _route_message(item), (_DELROUTE, _NEWROUTE), _rt.rtmsg
        elif item is not None:
            msg, kind, cls = _ifa.ifaddrmsg(), (_DELADDR, _NEWADDR), _ifa.ifaddrmsg
            msg["family"], msg["index"] = _family(item.version), ifindex
            msg["prefixlen"] = item.network.prefixlen
            address, v4 = str(item.ip), item.version == 4
            # As iproute2: IFA_LOCAL is this end's address (IFA_ADDRESS the peer's, for IPv4).
            attrs = [("IFA_ADDRESS", address), ("IFA_FLAGS", 0 if v4 else _NODAD)]
            msg["attrs"] = attrs + [("IFA_LOCAL", address)] * v4
        else:
            msg, kind, cls = ifinfmsg(), (_NEWLINK, _NEWLINK), ifinfmsg
            msg["index"] = ifindex
            if isinstance(op, SetMtu):
                msg["attrs"] = [("IFLA_MTU", op.mtu)]
            elif isinstance(op, SetUp):
                msg["flags"], msg["change"] = int(op.up), 1  # IFF_UP
        add = not isinstance(op, Change) or op.add
        try:
            self._request(msg, kind[add], _ADD if add and item is not None else _ACK, cls)
        except NetlinkError as exc:
            raise KernelError(f"{op}: {os.strerror(exc.code)}", exc.code) from None

    def _request(self, msg: Any, msg_type: int, flags: int, reply_class: Any) -> list[Any]:
        """Send one request; the decoded replies until its ACK or the dump's end."""
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
                reply = reply_class(data[offset:end])
                try:
                    reply.decode()
                except Exception as exc:  # pyroute2's decoders raise many types on bad input
                    raise _protocol_error(f"undecodable reply: {exc!r}") from None
                replies.append(reply)
                offset = (end + 3) & ~3


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _path(oif: int, route: Any) -> Path:
    gateway = route.get("RTA_GATEWAY")
    return Path(oif, None if gateway is None else ipaddress.ip_address(str(gateway)))


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

    def __init__(self, kernel: Kernel, ifindex: int, mtu: int) -> None:
        self.kernel = kernel
        self.ifindex = ifindex
        self.state = State(mtu=mtu)
        self.paths: dict[Network, Path] = {}
        """Each bypass prefix's original path, looked up before we first covered it."""

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
                path = self.kernel.route_get(net.network_address, avoid=self.ifindex)
            except KernelLookupError as exc:
                if net == gateway:
                    server = f"the VPN server {wanted.gateway} cannot be reached outside the tunnel"
                    raise Refusal(f"{server} ({exc}): the host needs a route to it") from None
                left_out[net] = str(exc)
                continue
            if path.oif == self.ifindex:
                what = "gateway" if net == gateway else "exclude"
                raise Refusal(f"{what} {net}: its path already goes through the tunnel")
            self.paths[net] = path
        kept = tuple(net for net in wanted.exclude if net not in left_out)
        return dataclasses.replace(wanted, exclude=kept) if left_out else wanted, left_out

    def configure(self, wanted: NetworkConfig) -> Plan:
        """Make the system match ``wanted``; return the plan carried out. Raises Refusal
        (with nothing changed, as far as rollback could manage)."""
        wanted, _ = self.routable(wanted)
        plan = diff(self.state, target(wanted, self.ifindex, self.paths), self.ifindex)
        done: list[Op] = []
        for op in plan:
            try:
                self.kernel.apply(op, self.ifindex)
            except Refusal as exc:
                failed = self._run(filter(None, map(inverse, reversed(done))), gone=())
                note = "ROLLBACK INCOMPLETE" if failed else "nothing was changed"
                raise Refusal(f"{exc} ({note})") from None
            done.append(op)
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
    """:class:`policy.Host`: the tun and its network state, for one session."""

    def __init__(
        self,
        netlink: Netlink,
        options: Options,
        audit: _audit.Audit,
        root: RunnerClient | None = None,
        nft: RunnerClient | None = None,
    ) -> None:
        self.netlink, self.options, self.audit = netlink, options, audit
        self.root = root  # the root runner: --script, DNS file/resolvconf
        self.nft = nft  # the nft runner: --fail-closed
        self.tun: Tun | None = None
        self.router: Router | None = None
        self.dns: Backend | None = None
        self.table: str | None = None
        self.gateway: Address | None = None
        self.script: Script | None = None
        if options.script is not None:
            from sepconnect.privhelper.script import Script

            self.script = Script(root, audit, options.log_level)
        self.undo_errors: list[str] = []
        """What could not be undone; the cleanup keeps the state file for the next start."""
        directory = options.state_dir
        self.state = None if directory is None else statefile.StateFile(directory, STATE_PREFIX)

    def create_tun(self, mtu: int, *, vnet_hdr: bool) -> tuple[str, int, int]:
        if self.script is not None:
            self.script.pre_init(self.options.ifname if self.options.named else None)
        try:
            tun = open_tun(self.options.ifname, vnet_hdr=vnet_hdr)
        except OSError as exc:
            raise Refusal(f"create tun {self.options.ifname}: {exc.strerror or exc}") from None
        try:
            ifindex = self.netlink.index_of(tun.name)
            self.netlink.apply(SetMtu(mtu, None), ifindex)
            fd = os.dup(tun.fd)
        except (Refusal, OSError):
            os.close(tun.fd)  # the device goes with it: nothing was changed
            raise
        self.tun = tun
        self.router = Router(self.netlink, ifindex, mtu)
        if self.options.dns_backend != "none":
            from sepconnect.privhelper import dns

            self.dns = dns.backend(self.options.dns_backend, tun.name, ifindex, self.root)
        self._save(ifname=tun.name)
        return tun.name, ifindex, fd

    def net_config(self, wanted: NetworkConfig) -> dict[Network, str]:
        if self.router is None or self.tun is None:  # the phase table makes this unreachable
            raise Refusal("no tun")
        if self.options.fail_closed:
            policy.check_kill_switch_excludes(wanted, self.options.allow_exclude)
        if self.script is not None:
            self.script.check(wanted, self.tun.name)
        left_out: dict[Network, str] = {}
        if self.script is None and not self.options.no_routes:
            # An exclude the host cannot route outside the tunnel stays in it; the
            # kill switch then treats it as not excluded.
            wanted, left_out = self.router.routable(wanted)
            for prefix, reason in left_out.items():
                self.audit.record("exclude_left_out", "info", f"{prefix}: {reason}")
        if self.options.fail_closed:
            from sepconnect.privhelper import firewall

            first = self.table is None
            self.table = firewall.apply(self.nft, self.tun.name, wanted, self.audit)
            if first:
                self._save(firewall=self.table)
        if self.script is not None:
            self.script.connect(wanted, self.tun.name, self.undo_errors)
            return left_out
        no_routes = self.options.no_routes
        routed = dataclasses.replace(wanted, routes=(), exclude=()) if no_routes else wanted
        before = self.router.state.routes
        self.router.configure(routed)
        for route in _tun_routes(self.router.state.routes - before, self.router.ifindex):
            for other in self._competing(route):
                why = f"a route with a lower or equal metric than ours ({METRIC}) exists"
                self.audit.record("conflict", "info", f"{route.dst}: {why} and may win: {other}")
        bypass = _tun_routes(self.router.state.routes, self.router.ifindex, tun=False)
        self._save(bypass=[_record(r) for r in sorted(bypass, key=str)])
        if self.dns is not None:
            from sepconnect.privhelper.dns import Dns

            self.dns.apply(Dns.of(wanted))
        return left_out

    def script_event(self, reason: str) -> None:
        if self.script is not None and self.tun is not None:
            self.script.event(reason, self.tun.name)

    def cleanup(self) -> None:
        """Remove what we installed, then close the tun (the device disappears). Idempotent;
        the state file stays if anything could not be undone, now or before."""
        if self.script is not None and self.tun is not None:  # before the tun goes
            self.script.disconnect(self.tun.name, self.undo_errors)
        errors: list[str] = []
        if self.dns is not None:
            errors += self.dns.revert()
        if self.router is not None:
            errors += self.router.clear()
            self.router = None
        if self.table is not None and self.nft is not None:
            from sepconnect.privhelper import firewall

            errors += firewall.delete(self.nft, self.table)
            self.table = None
        self.undo_errors += errors
        if self.tun is not None or errors:
            failures = "; ".join(self.undo_errors)[:1000]
            self.audit.record("cleanup", "fatal" if failures else "info", failures)
        if self.tun is not None:
            os.close(self.tun.fd)
            self.tun = None
        if self.state is not None and not self.undo_errors:
            self.state.remove()
        for runner in (self.root, self.nft):
            if runner is not None:
                runner.close()  # the root runner undoes what it still holds, then exits
        self.root = self.nft = None

    teardown = cleanup

    def _competing(self, route: Route) -> list[str]:
        try:
            return self.netlink.competing(route)
        except NetlinkError:
            return []

    def _save(self, **changes: Any) -> None:
        if self.state is not None:
            try:
                self.state.write(**changes)
            except OSError as exc:
                self.audit.record("state", "info", f"cannot write {self.state.path}: {exc}")


def _record(route: Route) -> dict[str, str | int | None]:
    """A bypass route for the state file (recovery.route_from_record reads it back)."""
    gateway = None if route.gateway is None else str(route.gateway)
    return {"dst": str(route.dst), "oif": route.oif, "gateway": gateway}
