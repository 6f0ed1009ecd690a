"""Turn what the worker reports into the helper's declarative NetConfig.

The worker parsed the server's headers but is not trusted: every value is
parsed again here, and the helper checks the result once more under its own
policy. Routing and DNS policy live here, in one place (docs/routing-dns.md):

- routes: each family with an address routes its split-includes through the
  tunnel, or everything (``0.0.0.0/0`` / ``::/0``) when it has none;
- DNS: the servers of the families the tunnel has (at most 8); search domains
  (X-CSTP-Default-Domain) and split-DNS domains that pass the helper's strict
  host-name rule (others are dropped with a note); the tunnel's servers answer
  *every* name (``dns_default``) unless the server gave split-DNS domains and
  did not say X-CSTP-Tunnel-All-DNS: true.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sepconnect.ipc.limits import MAX_DNS, MAX_DOMAINS, canonical_domain
from sepconnect.ipc.worker_messages import TunnelUp

_NOT_PRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
MAX_BANNER = 2000

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
    dns: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    split_dns: tuple[str, ...] = ()
    dns_default: bool = False
    banner: str | None = None
    idle_timeout: int | None = None


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
    dns: list[str] = []
    for text in up.dns:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise BadTunnelConfig(f"bad DNS server {text!r}") from None
        if addr.version not in families:
            notes.append(f"DNS server {addr} ignored: no IPv{addr.version} address on the tunnel")
        elif str(addr) not in dns:
            dns.append(str(addr))
    if len(dns) > MAX_DNS:
        notes.append(f"DNS servers after the first {MAX_DNS} ignored")
        dns = dns[:MAX_DNS]
    domains = _domains(up.domains, "search domain", notes) if dns else ()
    split_dns = _domains(up.split_dns, "split-DNS domain", notes) if dns else ()
    return DesiredNet(
        mtu=up.mtu,
        ipv4=None if ipv4 is None else str(ipv4),
        ipv6=None if ipv6 is None else str(ipv6),
        routes=tuple(dict.fromkeys(routes)),
        exclude=tuple(dict.fromkeys(exclude)),
        gateway=str(gateway),
        notes=tuple(notes),
        dns=tuple(dns),
        domains=domains,
        split_dns=split_dns,
        dns_default=bool(dns) and (up.tunnel_all_dns or not split_dns),
        banner=_banner(up.banner),
        idle_timeout=up.idle_timeout,
    )


def _domains(texts: tuple[str, ...], what: str, notes: list[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for text in texts:
        try:
            name = canonical_domain(text)
        except ValueError as exc:
            notes.append(f"{what} {exc}: ignored")
            continue
        if name not in kept:
            kept.append(name)
    if len(kept) > MAX_DOMAINS:
        notes.append(f"{what}s after the first {MAX_DOMAINS} ignored")
    return tuple(kept[:MAX_DOMAINS])


def _banner(text: str | None) -> str | None:
    """Printable text only (newlines kept), at most MAX_BANNER characters."""
    if not text:
        return None
    cleaned = _NOT_PRINTABLE.sub("", text).strip()
    return cleaned[:MAX_BANNER] or None
