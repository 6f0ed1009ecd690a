"""The routing and DNS policy (docs/routing-dns.md) for a :class:`NetworkConfig`.

:func:`routing_policy` is idempotent: the worker applies it to what the server sent,
and the supervisor, which does not trust the worker, applies it again to what the
worker reports (an honest report comes back unchanged). The helper then checks the
result against its own rules and refuses, never corrects (privhelper/policy.py).

- routes: each family with an address routes its split-includes through the
  tunnel, or everything (``0.0.0.0/0`` / ``::/0``) when it has none; prefixes of a
  family the tunnel has no address of are left out, and so are /0 excludes;
- IPv6 is left out below IPv6's minimum MTU (Linux disables it on such a link);
- DNS: the servers of the families the tunnel has (at most :data:`MAX_DNS`);
  search and split-DNS domains that are valid host names (others are left out
  with a note); the tunnel's servers answer *every* name (``dns_default``) unless
  the server gave split-DNS domains and did not say X-CSTP-Tunnel-All-DNS.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Network, IPv6Network

from sepconnect.ipc.fields import IpAddress, IpNetwork
from sepconnect.ipc.limits import (
    IPV6_MIN_MTU,
    MAX_BANNER,
    MAX_DNS,
    MAX_DOMAINS,
    MAX_ROUTES,
    canonical_domain,
)
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.session_limits import printable

_FULL: dict[int, IpNetwork] = {4: IPv4Network("0.0.0.0/0"), 6: IPv6Network("::/0")}


class UnusableConfig(ValueError):
    """What the server (or the worker) gave makes no usable network configuration."""


def routing_policy(net: NetworkConfig) -> tuple[NetworkConfig, tuple[str, ...]]:
    """Apply the routing and DNS policy; return the result and what was left out, and why."""
    notes: list[str] = []
    ipv6 = net.ipv6
    if ipv6 is not None and net.mtu < IPV6_MIN_MTU:
        notes.append(f"IPv6 left out: MTU {net.mtu} is below IPv6's minimum of {IPV6_MIN_MTU}")
        ipv6 = None
    families = {a.version for a in (net.ipv4, ipv6) if a is not None}
    if not families:
        raise UnusableConfig("the server assigned no usable address")
    routes: list[IpNetwork] = []
    for route in net.routes:
        if route.version in families:
            routes.append(route)
        else:
            notes.append(f"route {route} left out: no IPv{route.version} address on the tunnel")
    for version in sorted(families):
        if not any(r.version == version for r in routes):
            routes.append(_FULL[version])
    exclude: list[IpNetwork] = []
    for prefix in net.exclude:
        if prefix.prefixlen == 0:
            notes.append(f"exclude {prefix} left out: it would take the whole family out")
        elif prefix.version in families:
            exclude.append(prefix)
    dns: list[IpAddress] = []
    for server in net.dns:
        if server.version not in families:
            notes.append(f"DNS server {server} left out: no IPv{server.version} address")
        elif server not in dns:
            dns.append(server)
    if len(dns) > MAX_DNS:
        notes.append(f"DNS servers after the first {MAX_DNS} left out")
        dns = dns[:MAX_DNS]
    domains = _domains(net.domains, "search domain", notes) if dns else ()
    split_dns = _domains(net.split_dns, "split-DNS domain", notes) if dns else ()
    if len(routes) > MAX_ROUTES or len(exclude) > MAX_ROUTES:
        raise UnusableConfig(f"more than {MAX_ROUTES} routes or excluded prefixes")
    banner = printable(net.banner, MAX_BANNER) if net.banner else ""
    result = dataclasses.replace(
        net,
        ipv6=ipv6,
        routes=tuple(dict.fromkeys(routes)),
        exclude=tuple(dict.fromkeys(exclude)),
        dns=tuple(dns),
        domains=domains,
        split_dns=split_dns,
        dns_default=bool(dns) and (net.dns_default or not split_dns),
        banner=banner or None,
    )
    return result, tuple(notes)


def _domains(texts: tuple[str, ...], what: str, notes: list[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for text in texts:
        try:
            name = canonical_domain(text)
        except ValueError as exc:
            notes.append(f"{what} {exc}: left out")
            continue
        if name not in kept:
            kept.append(name)
    if len(kept) > MAX_DOMAINS:
        notes.append(f"{what}s after the first {MAX_DOMAINS} left out")
    return tuple(kept[:MAX_DOMAINS])
