"""The tunnel's network configuration: one type from the CONNECT answer to the helper's diff.

The worker builds a :class:`NetworkConfig` from the server's headers, the
supervisor receives it inside ``TunnelUp`` and sends it on inside the helper's
``NetConfig``, and the helper diffs what it installed against it. On every hop
the codec (ipc/wire.py) checks it against the same declared fields and hands it
over with its addresses parsed. The routing and DNS policy applied to it is
ipc/routing.py; the helper's own rules are privhelper/policy.py.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Interface, IPv6Interface
from typing import Annotated, ClassVar, Final

from sepconnect.ipc.fields import Banner, Domain, IpAddress, IpNetwork, Mtu
from sepconnect.ipc.limits import MAX_DNS, MAX_DOMAINS, MAX_ROUTES
from sepconnect.ipc.schema import Length, Message, Range

METRIC: Final = 50
"""The priority of every route the helper installs (NetworkManager's for VPN routes): it
beats DHCP's defaults (100+) for equal prefixes and stays clear of metric 0. The
supervisor reads it back for its ``conflict`` records (supervisor/routes.py)."""
RTPROT_SEPCONNECT: Final = 157
"""Our route protocol number (unassigned in iproute2's rt_protos), on every route the
helper adds: how it, its crash recovery and the supervisor tell its routes from others'."""
RT_TABLE_MAIN: Final = 254


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig(Message):
    """The whole desired network state of the tun (declarative, idempotent).

    ``gateway`` is the VPN server's address: whenever a route through the tun
    would cover it, the helper pins a host route to it along the original path.
    ``routes`` go through the tun (``0.0.0.0/0`` and ``::/0``: everything of that
    family); ``exclude`` prefixes keep the path they had before the tunnel.
    ``dns`` servers are reached through the tunnel; ``domains`` are its search
    domains, ``split_dns`` the domains only its servers answer; ``dns_default``:
    they also answer every name no other link claims. ``banner`` and
    ``idle_timeout`` only reach a vpnc-script's environment.
    """

    op: ClassVar[str] = "network_config"
    gateway: IpAddress
    mtu: Mtu
    ipv4: IPv4Interface | None
    ipv6: IPv6Interface | None
    routes: Annotated[tuple[IpNetwork, ...], Length(0, MAX_ROUTES)]
    exclude: Annotated[tuple[IpNetwork, ...], Length(0, MAX_ROUTES)]
    dns: Annotated[tuple[IpAddress, ...], Length(0, MAX_DNS)] = ()
    domains: Annotated[tuple[Domain, ...], Length(0, MAX_DOMAINS)] = ()
    split_dns: Annotated[tuple[Domain, ...], Length(0, MAX_DOMAINS)] = ()
    dns_default: bool = False
    banner: Banner | None = None
    idle_timeout: Annotated[int, Range(1, 2**31 - 1)] | None = None

    @property
    def addresses(self) -> tuple[IPv4Interface | IPv6Interface, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)
