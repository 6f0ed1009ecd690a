"""The routing and DNS policy (ipc/netconfig.py), which the worker and the supervisor apply."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address as ip
from ipaddress import ip_network

import pytest
from netconfigs import network_config, texts

from sepconnect.ipc.limits import MAX_DNS, MAX_DOMAINS, MAX_ROUTES
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.routing import UnusableConfig, routing_policy
from sepconnect.ipc.wire import WireError

BASE = network_config()


def policy(net: NetworkConfig) -> NetworkConfig:
    return routing_policy(net)[0]


def test_split_includes_are_routed_as_pushed() -> None:
    net, notes = routing_policy(BASE)
    assert texts(net.routes) == ("198.18.2.0/24", "2001:2:0:2::/64")
    assert str(net.ipv4) == "198.18.100.2/24"
    assert str(net.ipv6) == "2001:2:0:100::2/64"
    assert str(net.gateway) == "198.18.1.1"
    assert notes == ()


def test_a_family_without_includes_is_routed_whole() -> None:
    net = policy(network_config(routes=["198.18.2.0/24"]))
    assert texts(net.routes) == ("198.18.2.0/24", "::/0")
    assert texts(policy(network_config(routes=[])).routes) == ("0.0.0.0/0", "::/0")


def test_includes_of_a_family_without_address_are_left_out_with_a_note() -> None:
    net, notes = routing_policy(network_config(ipv6=None))
    assert texts(net.routes) == ("198.18.2.0/24",)
    assert any("2001:2:0:2::/64" in n for n in notes)


def test_ipv6_is_left_out_below_1280() -> None:
    net, notes = routing_policy(network_config(mtu=1200))
    assert net.ipv6 is None
    assert "2001:2:0:2::/64" not in texts(net.routes)
    assert any("1280" in n for n in notes)


def test_excludes_keep_their_family_and_never_the_whole_space() -> None:
    excludes = ["198.18.3.0/24", "0.0.0.0/0", "2001:2:0:3::/64"]
    net, notes = routing_policy(network_config(exclude=excludes))
    assert texts(net.exclude) == ("198.18.3.0/24", "2001:2:0:3::/64")
    assert notes


def test_duplicates_are_removed() -> None:
    net = policy(network_config(routes=["198.18.2.0/24", "198.18.2.0/24"]))
    assert texts(net.routes) == ("198.18.2.0/24", "::/0")


def test_dns_servers_of_the_tunnels_families_at_most_max_dns() -> None:
    servers = [f"198.18.2.{i}" for i in range(1, MAX_DNS + 3)]
    offered = dataclasses.replace(
        network_config(ipv6=None), dns=(*map(ip, servers), ip("2001:2::53"))
    )
    net, notes = routing_policy(offered)
    assert texts(net.dns) == tuple(servers[:MAX_DNS])
    assert any("2001:2::53" in n for n in notes)
    assert any(f"first {MAX_DNS}" in n for n in notes)


def test_domains_are_canonical_and_invalid_ones_left_out() -> None:
    many = [f"d{i}.example" for i in range(MAX_DOMAINS + 2)]
    # As the worker builds it from the server's headers (not through the codec)
    offered = dataclasses.replace(
        network_config(dns=["198.18.2.53"]),
        domains=("Corp.Example.", "bad_name.example", *many),
    )
    net, notes = routing_policy(offered)
    assert net.domains[0] == "corp.example"
    assert "bad_name.example" not in net.domains
    assert len(net.domains) == MAX_DOMAINS
    assert any("bad_name" in n for n in notes)


def test_domains_need_dns_servers() -> None:
    net = policy(network_config(domains=["corp.example"], split_dns=["lab.example"]))
    assert net.domains == net.split_dns == ()
    assert not net.dns_default


@pytest.mark.parametrize(
    ("tunnel_all_dns", "split_dns", "expected"),
    [(False, [], True), (False, ["lab.example"], False), (True, ["lab.example"], True)],
)
def test_dns_default_unless_split_dns_without_tunnel_all_dns(
    tunnel_all_dns: bool, split_dns: list[str], expected: bool
) -> None:
    net = network_config(dns=["198.18.2.53"], split_dns=split_dns, dns_default=tunnel_all_dns)
    assert policy(net).dns_default is expected


def test_banner_is_printable_only() -> None:
    offered = dataclasses.replace(BASE, banner="hi\u202ethere\x1b[2J\nline")
    assert policy(offered).banner == "hithere[2J\nline"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"routes": []},
        {"ipv6": None, "exclude": ["198.18.3.0/24", "0.0.0.0/0"]},
        {"mtu": 1200, "dns": ["198.18.2.53", "2001:2::53"], "split_dns": ["a.example"]},
        {"dns": ["198.18.2.53"] * 3, "domains": ["a.example", "a.example", "b.example"]},
    ],
)
def test_the_policy_is_idempotent(changes: dict[str, object]) -> None:
    """The supervisor applies it again to what the worker applied it to: no change."""
    once = policy(network_config(**changes))
    assert routing_policy(once) == (once, ())


def test_no_address_is_unusable() -> None:
    with pytest.raises(UnusableConfig):
        routing_policy(network_config(ipv4=None, ipv6=None))


@pytest.mark.parametrize(
    "changes",
    [
        {"ipv4": "2001:2::1/64"},
        {"ipv6": "198.18.100.2/24"},
        {"ipv4": "not-an-address/24"},
        {"gateway": "vpn.example"},
        {"routes": ["198.18.2.0/33"]},
        {"routes": ["198.18.2.7/24"]},  # host bits: a prefix is sent in its normal form
        {"dns": ["fe80::1%eth0"]},
        {"domains": ["bad_name.example"]},
        {"banner": "\x1b[2J"},
    ],
)
def test_malformed_values_never_decode(changes: dict[str, object]) -> None:
    with pytest.raises(WireError):
        network_config(**changes)


def test_more_routes_than_the_helper_takes_is_a_clear_error() -> None:
    """256 IPv4 includes plus an IPv6 address (whose ::/0 makes 257 routes): refused here,
    with a reason, instead of a message the helper's decoder rejects."""
    includes = tuple(ip_network(f"198.19.{i}.0/24") for i in range(MAX_ROUTES))
    with pytest.raises(UnusableConfig, match=f"more than {MAX_ROUTES} routes"):
        routing_policy(dataclasses.replace(BASE, routes=includes))
