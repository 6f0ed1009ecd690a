"""The supervisor's routing policy and its re-validation of what the worker reports."""

from __future__ import annotations

import dataclasses

import pytest

from sepconnect.ipc.worker_messages import TunnelUp
from sepconnect.supervisor.netconfig import BadTunnelConfig, desired_net

BASE = TunnelUp(
    server="vpn.example",
    gateway="198.18.1.1",
    mtu=1400,
    ipv4="198.18.100.2/24",
    ipv6="2001:2:0:100::2/64",
    split_include=("198.18.2.0/24", "2001:2:0:2::/64"),
    split_exclude=(),
    dns=("198.18.2.53",),
    banner=None,
)


def up(**changes: object) -> TunnelUp:
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


def test_split_includes_are_routed_as_pushed() -> None:
    net = desired_net(BASE)
    assert net.routes == ("198.18.2.0/24", "2001:2:0:2::/64")
    assert net.ipv4 == "198.18.100.2/24"
    assert net.ipv6 == "2001:2:0:100::2/64"
    assert net.gateway == "198.18.1.1"
    assert net.notes == ()


def test_a_family_without_includes_is_routed_whole() -> None:
    net = desired_net(up(split_include=("198.18.2.0/24",)))
    assert net.routes == ("198.18.2.0/24", "::/0")
    assert desired_net(up(split_include=())).routes == ("0.0.0.0/0", "::/0")


def test_includes_of_a_family_without_address_are_dropped_with_a_note() -> None:
    net = desired_net(up(ipv6=None))
    assert net.routes == ("198.18.2.0/24",)
    assert any("2001:2:0:2::/64" in n for n in net.notes)


def test_ipv6_is_dropped_below_1280() -> None:
    net = desired_net(up(mtu=1200))
    assert net.ipv6 is None
    assert "2001:2:0:2::/64" not in net.routes


def test_excludes_keep_their_family_and_never_the_whole_space() -> None:
    net = desired_net(up(split_exclude=("198.18.3.0/24", "0.0.0.0/0", "2001:2:0:3::/64")))
    assert net.exclude == ("198.18.3.0/24", "2001:2:0:3::/64")
    assert net.notes


def test_host_bits_are_normalised_and_duplicates_removed() -> None:
    net = desired_net(up(split_include=("198.18.2.7/24", "198.18.2.0/24")))
    assert net.routes == ("198.18.2.0/24", "::/0")


@pytest.mark.parametrize(
    "changes",
    [
        {"ipv4": None, "ipv6": None},
        {"ipv4": "2001:2::1/64"},
        {"ipv6": "198.18.100.2/24"},
        {"ipv4": "not-an-address/24"},
        {"gateway": "vpn.example"},
        {"split_include": ("198.18.2.0/33",)},
    ],
)
def test_unusable_reports_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(BadTunnelConfig):
        desired_net(up(**changes))
