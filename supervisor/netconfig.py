"""Turn what the worker reports into the helper's declarative NetConfig.

The worker parsed the server's headers but is not trusted: every value is
parsed again here, and the helper checks the result once more under its own
policy. Routing policy (what "no split-include" means) lives here, in one place.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sepconnect.supervisor.schema import TunnelUp

IPv4 = 4
IPv6 = 6


class BadTunnelConfig(ValueError):
    """The worker's report does not make a usable network configuration."""


@dataclass(frozen=True, slots=True)
class DesiredNet:
    mtu: int
    ipv4: str | None
    ipv6: str | None
    routes: tuple[str, ...]
    exclude: tuple[str, ...]
    gateway: str
    notes: tuple[str, ...]  # what was dropped and why, for the log


def _interface(
    text: str | None, version: int
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    if text is None:
        return None
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise BadTunnelConfig(f"bad tunnel address {text!r}") from None
    if iface.version != version:
        raise BadTunnelConfig(f"tunnel address {text!r} is not IPv{version}")
    return iface


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BadTunnelConfig(f"bad route {text!r}") from None


def desired_net(up: TunnelUp) -> DesiredNet:
    """Split-include routes per family; a family with an address but no include is routed whole."""
    notes: list[str] = []
    ipv4 = _interface(up.ipv4, IPv4)
    ipv6 = _interface(up.ipv6, IPv6)
    if ipv6 is not None and up.mtu < 1280:
        notes.append(f"IPv6 dropped: MTU {up.mtu} is below IPv6's minimum of 1280")
        ipv6 = None
    if ipv4 is None and ipv6 is None:
        raise BadTunnelConfig("the server assigned no usable address")
    try:
        gateway = ipaddress.ip_address(up.gateway)
    except ValueError:
        raise BadTunnelConfig(f"bad gateway address {up.gateway!r}") from None
    families = {v for v, iface in ((IPv4, ipv4), (IPv6, ipv6)) if iface is not None}
    routes: list[str] = []
    for text in up.split_include:
        net = _network(text)
        if net.version in families:
            routes.append(str(net))
        else:
            notes.append(f"route {net} ignored: no IPv{net.version} address on the tunnel")
    for version, default in ((IPv4, "0.0.0.0/0"), (IPv6, "::/0")):
        if version in families and not any(_network(r).version == version for r in routes):
            routes.append(default)
    exclude: list[str] = []
    for text in up.split_exclude:
        net = _network(text)
        if net.prefixlen == 0:
            notes.append(f"exclude {net} ignored: it would take the whole family out of the tunnel")
        elif net.version in families:
            exclude.append(str(net))
    return DesiredNet(
        mtu=up.mtu,
        ipv4=None if ipv4 is None else str(ipv4),
        ipv6=None if ipv6 is None else str(ipv6),
        routes=tuple(dict.fromkeys(routes)),
        exclude=tuple(dict.fromkeys(exclude)),
        gateway=str(gateway),
        notes=tuple(notes),
    )
