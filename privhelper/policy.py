"""What the privileged helper allows: the request table and the value rules.

Two layers decide whether a request is carried out (STYLE.md §6.3):

1. The *request table* :data:`POLICY`, in the manner of OpenSSH's monitor:
   phase → request type → (handler, phase after it is carried out, phase after
   it is refused). A request the current phase does not list (an unknown type,
   one out of order, a once-only request again) is a *protocol violation*
   (:class:`ProtocolViolation`): the helper removes what it installed and
   exits. It never skips a message and carries on.

2. The *value rules* (:func:`check_net_config` and friends): syntactically
   valid requests whose values are out of policy (a loopback route, a gateway
   inside the tunnel's own subnet, …) raise :class:`Refusal` with a one-line,
   human-readable reason. The helper replies ``Refused``, changes nothing and
   keeps running.

Everything here is pure: the handlers reach the system only through the
:class:`Host` they are given, so the table is unit-tested without root.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeVar

from sepconnect.ipc import helper_messages as msgs
from sepconnect.ipc.limits import IPV6_MIN_MTU, canonical_domain
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.schema import Message

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")


class ProtocolViolation(Exception):
    """The peer broke the protocol; the helper cleans up and exits non-zero."""


class Refusal(Exception):
    """A request is out of policy or the kernel refused it; nothing was changed.

    ``str(exc)`` is the one-line reason sent back in ``Refused``.
    """


# ---------------------------------------------------------------------------
# Value rules


# Address ranges that never belong on, or behind, a VPN tunnel. An address in
# one of them, or a prefix overlapping one (the full tunnel's /1 halves excepted), is refused.
_FORBIDDEN: Final[tuple[tuple[Network, str], ...]] = tuple(
    (ipaddress.ip_network(net), label)
    for net, label in (
        ("0.0.0.0/8", "unspecified ('this network', 0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved or broadcast (240.0.0.0/4)"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)

DEFAULT_ROUTES: Final[MappingProxyType[Network, tuple[Network, ...]]] = MappingProxyType(
    {whole: tuple(whole.subnets()) for whole in map(ipaddress.ip_network, ("0.0.0.0/0", "::/0"))}
)
"""The only /0 prefixes allowed, in ``routes`` only, and the two halves each is
installed as: more specific than any default route, so the host's own default
route is never touched and comes back untouched when the halves go."""


_HALVES: Final = frozenset(half for pair in DEFAULT_ROUTES.values() for half in pair)


def _check_range(value: Address | Network, what: str) -> None:
    """Refuse an address in a forbidden range, or a prefix that overlaps one. Overlap,
    not containment: 169.254.0.0/15 holds the cloud metadata address too. The /1 halves
    of a full tunnel are the one exception (they overlap everything)."""
    prefix = ipaddress.ip_network(value)  # an address as its /32 or /128
    for net, label in _FORBIDDEN:
        if prefix not in _HALVES and prefix.version == net.version and prefix.overlaps(net):
            inside = prefix.network_address in net and prefix.broadcast_address in net
            found = label if inside else f"a prefix overlapping {label} {net}"
            raise Refusal(f"{what}: {found} is not allowed")


MIN_ADDRESS_PREFIX: Final = {4: 8, 6: 32}
"""A tun address's subnet is at most a /8 (IPv4) or a /32 (IPv6): the kernel installs
that subnet's route itself, and a /1 there would carry half the address space."""


def check_interface(iface: Interface) -> None:
    """A tun address with its prefix length (``198.18.0.2/24``, ``2001:2::2/64``)."""
    what = f"ipv{iface.version} address {iface}"
    shortest = MIN_ADDRESS_PREFIX[iface.version]
    if iface.network.prefixlen < shortest:
        raise Refusal(f"{what}: a prefix shorter than /{shortest} is not allowed")
    _check_range(iface.ip, what)
    # The kernel routes the address's subnet through the tun by itself: that route
    # passes the route rules too.
    _check_range(iface.network, f"{what}: its subnet {iface.network}")
    ends = (iface.network.network_address, iface.network.broadcast_address)
    if iface.version == 4 and iface.network.prefixlen <= 30 and iface.ip in ends:
        raise Refusal(f"{what}: the subnet's network or broadcast address is not allowed")


def check_unicast(addr: Address, what: str) -> Address:
    """The VPN server's address or a DNS server: unicast, not in a forbidden range."""
    _check_range(addr, f"{what} {addr}")
    return addr


def check_prefix(net: Network, what: str) -> Network:
    """A route or exclude prefix (the codec refused host bits already; a /0 route is
    split in halves before it gets here)."""
    if net.prefixlen == 0:
        raise Refusal(f"{what} {net}: a /0 prefix is not allowed")
    _check_range(net, f"{what} {net}")
    return net


def check_domain(text: str, what: str) -> str:
    """A search or split-DNS domain (:func:`canonical_domain`), or a refusal."""
    try:
        return canonical_domain(text)
    except ValueError as exc:
        raise Refusal(f"{what} {exc}") from None


def _unique(values: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(values))


def _sorted(nets: Iterable[Network]) -> tuple[Network, ...]:
    """Deduplicated, IPv4 first, by address then prefix length."""
    return tuple(sorted(set(nets), key=lambda n: (n.version, n)))


def check_net_config(net: NetworkConfig) -> NetworkConfig:
    """Apply every value rule; raise :class:`Refusal` on the first one broken.

    The result is the same configuration in a normal form: each /0 route split in
    halves, routes and excludes deduplicated and sorted (so equal requests give
    equal values), DNS servers and domains in their order (a preference) without
    duplicates, domains lower-case without a trailing dot. How many of each there
    may be is the codec's check (NetworkConfig's ``Length``), made in this process
    before the request reaches the table.
    """
    gateway = check_unicast(net.gateway, "gateway")
    for iface in net.addresses:
        check_interface(iface)
        if gateway in iface.network:
            raise Refusal(f"gateway {gateway}: inside the tunnel's own subnet {iface.network}")
    families = {iface.version for iface in net.addresses}
    if not families:
        raise Refusal("no address: a tunnel needs an IPv4 or an IPv6 address")
    if 6 in families and net.mtu < IPV6_MIN_MTU:
        raise Refusal(f"mtu {net.mtu}: IPv6 needs at least {IPV6_MIN_MTU}")
    routes: list[Network] = []
    for route in net.routes:
        if route == ipaddress.ip_network(gateway):
            raise Refusal(f"route {route}: would send the tunnel's own packets into it")
        routes += [check_prefix(part, "route") for part in DEFAULT_ROUTES.get(route, (route,))]
    exclude = [check_prefix(prefix, "exclude") for prefix in net.exclude]
    clash = set(routes) & set(exclude)
    if clash:
        raise Refusal(f"exclude {min(clash, key=str)}: also listed as a route")
    dns = _unique(check_unicast(addr, "dns") for addr in net.dns)
    for value, what in [*((r, "route") for r in net.routes), *((a, "dns") for a in dns)]:
        if value.version not in families:
            raise Refusal(f"{what} {value}: the tunnel has no IPv{value.version} address")
    domains = _unique(check_domain(text, "domain") for text in net.domains)
    split_dns = _unique(check_domain(text, "split-dns domain") for text in net.split_dns)
    if (domains or split_dns) and not dns:
        raise Refusal("domains without DNS servers: nobody would answer for them")
    return dataclasses.replace(
        net,
        routes=_sorted(routes),
        exclude=_sorted(exclude),
        dns=dns,
        domains=domains,
        split_dns=split_dns,
        dns_default=net.dns_default and bool(dns),
    )


# ---------------------------------------------------------------------------
# The request table


class Phase(enum.Enum):
    NEW = "new"  # nothing received yet: only Hello
    READY = "ready"  # peer said hello: CreateTun (or Teardown)
    TUN_UP = "tun_up"  # the tun exists: NetConfig, ScriptEvent, Teardown
    NO_TUN = "no_tun"  # CreateTun was refused: only Teardown
    REFUSED = "refused"  # Hello or Teardown was refused: nothing more is permitted
    CLOSED = "closed"  # torn down: the helper exits


Reply = tuple[Message, int | None]
"""A reply and the fd it carries (the helper closes that fd once it is sent)."""


class Host(Protocol):
    """The system operations the handlers may use (network.Helper; a fake in tests)."""

    gateway: Address | None
    """The VPN server's address from Hello, fixed for the session; None before."""

    def create_tun(self, mtu: int, *, vnet_hdr: bool) -> tuple[str, int, int]:
        """Create the tun; return its name, its ifindex and a dup of its fd to send."""

    def net_config(self, wanted: NetworkConfig) -> dict[Network, str]:
        """Make the tunnel's network state equal to ``wanted``; raise Refusal on failure.
        Return the excludes left out (no path outside the tunnel) and why."""

    def script_event(self, reason: str) -> None:
        """Run the vpnc-script for ``reason`` if there is one; Refusal if a ``reconnect``
        run fails."""

    def teardown(self) -> None:
        """Remove everything installed and close the tun."""


def on_hello(host: Host, req: msgs.Hello) -> Reply:
    # The schema already pinned proto == PROTO_VERSION and role == "supervisor".
    host.gateway = check_unicast(req.gateway, "gateway")
    return msgs.Done(seq=req.seq), None


def on_create_tun(host: Host, req: msgs.CreateTun) -> Reply:
    ifname, ifindex, fd = host.create_tun(req.mtu, vnet_hdr=req.vnet_hdr)
    return msgs.TunCreated(seq=req.seq, ifname=ifname, ifindex=ifindex), fd


def on_net_config(host: Host, req: msgs.NetConfig) -> Reply:
    # The VPN server's address is the one Hello gave: what is routed around the tunnel is
    # not the worker's or the server's choice. (The table permits NetConfig only after
    # Hello; were the gateway still None, the comparison would refuse.)
    if req.net.gateway != host.gateway:
        raise Refusal(f"gateway {req.net.gateway}: not the VPN server's address {host.gateway}")
    left_out = host.net_config(check_net_config(req.net))
    notes = tuple(msgs.LeftOut(prefix=p, reason=r[:200]) for p, r in left_out.items())
    return msgs.NetApplied(seq=req.seq, left_out=notes), None


def on_script_event(host: Host, req: msgs.ScriptEvent) -> Reply:
    host.script_event(req.reason)
    return msgs.Done(seq=req.seq), None


def on_teardown(host: Host, req: msgs.Teardown) -> Reply:
    host.teardown()
    return msgs.Done(seq=req.seq), None


Row = tuple[Callable[[Host, Any], Reply], Phase, Phase]
"""The handler (it takes the message type its row names), the phase after it is
carried out, and the phase after it is refused."""

_TEARDOWN: Final[Row] = (on_teardown, Phase.CLOSED, Phase.REFUSED)

POLICY: Final[MappingProxyType[Phase, dict[type[Message], Row]]] = MappingProxyType(
    {
        Phase.NEW: {msgs.Hello: (on_hello, Phase.READY, Phase.REFUSED)},
        Phase.READY: {
            msgs.CreateTun: (on_create_tun, Phase.TUN_UP, Phase.NO_TUN),
            msgs.Teardown: _TEARDOWN,
        },
        Phase.TUN_UP: {
            msgs.NetConfig: (on_net_config, Phase.TUN_UP, Phase.TUN_UP),
            msgs.ScriptEvent: (on_script_event, Phase.TUN_UP, Phase.TUN_UP),
            msgs.Teardown: _TEARDOWN,
        },
        Phase.NO_TUN: {msgs.Teardown: _TEARDOWN},
        Phase.REFUSED: {},
        Phase.CLOSED: {},
    }
)
"""Every request the helper executes, by the phase in which it is permitted.
Anything else is a protocol violation.

A once-only request is used up when it is *handled*, whatever the outcome
(OpenSSH's MON_ONCE): both of its next phases leave it out. A refused CreateTun
is not retried, and the peer can only Teardown (NO_TUN); a refused Hello (or
Teardown) leaves nothing permitted (REFUSED), and the helper cleans up when the
peer hangs up. Teardown is also permitted in READY so that a session that
never got a tun can end cleanly.
"""


class Monitor:
    """The dispatcher: checks each request against :data:`POLICY` and tracks the phase."""

    def __init__(self) -> None:
        self.phase = Phase.NEW

    def handle(self, host: Host, msg: Message) -> Reply:
        """Run the request's handler if :data:`POLICY` permits it now (else raise
        :class:`ProtocolViolation`); out-of-policy values become a ``Refused`` reply."""
        row = POLICY[self.phase].get(type(msg))
        if row is None:
            raise ProtocolViolation(f"{msg.op} is not permitted in phase {self.phase.value}")
        handler, carried_out, refused = row
        try:
            reply = handler(host, msg)
        except Refusal as exc:
            self.phase = refused
            return msgs.Refused(seq=getattr(msg, "seq", 0), reason=_one_line(str(exc))), None
        self.phase = carried_out
        return reply


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split()) or "refused"
    return line if len(line) <= limit else line[: limit - 1] + "…"
