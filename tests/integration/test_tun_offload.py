"""Tun offloads against the real kernel and ocserv: the helper creates the tun with a
virtio-net header, the worker coalesces the server's TCP segments into super-packets,
and every packet on either side still carries valid checksums (the kernels' own
checksum-error counters stay at zero)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_connect import Client
from test_resilience import _status

from lab import Lab, OcservOptions

pytestmark = [pytest.mark.root, pytest.mark.netns]

IFF_VNET_HDR = 0x4000


@pytest.fixture(scope="module")
def offload_lab() -> Iterator[Lab]:
    lab = Lab(OcservOptions(dtls=True, dpd=10))
    lab.start()
    try:
        yield lab
    finally:
        lab.close()


def _stats(lab: Lab, ifname: str) -> dict[str, Any]:
    link = lab.ip_json(lab.client_ns, "-s", "link", "show", "dev", ifname)[0]
    return dict(link["stats64"])


@pytest.fixture
def start(offload_lab: Lab) -> Iterator[Callable[..., Client]]:
    """Clients of this test, stopped at its end however it ends: the lab outlives the
    test, and a session left running would hold the tunnel's routes for the next one."""
    clients: list[Client] = []

    def make(*args: str) -> Client:
        clients.append(Client(offload_lab, *args))
        return clients[-1]

    yield make
    for client in clients:
        if client.proc.poll() is None:
            client.stop()


def _iperf(lab: Lab, target: str, *extra: str) -> int:
    report, _ = lab.iperf(*extra, target=target)
    received = int(report["end"]["sum_received"]["bytes"])
    assert received > 1_000_000, report["end"]
    return received


def _tun_flags(lab: Lab, ifname: str) -> int:
    out = lab.run_in(lab.client_ns, "cat", f"/sys/class/net/{ifname}/tun_flags").stdout
    return int(out.decode().strip(), 16)


@pytest.mark.parametrize("channel", ["dtls", "tls"])
@pytest.mark.parametrize("family", [4, 6])
def test_download_is_coalesced_and_checksums_stay_valid(
    offload_lab: Lab, start: Callable[..., Client], channel: str, family: int
) -> None:
    lab = offload_lab
    client = start(*(["--no-dtls"] if channel == "tls" else []))
    tun = client.wait_connected()
    lab.wait_for("the data channel", lambda: _status(client)["channel"] == channel or None, 15)
    assert _tun_flags(lab, tun["ifname"]) & IFF_VNET_HDR
    target = lab.target_ip if family == 4 else lab.target_ip6
    errors_before = (_snmp_errors(lab, lab.client_ns), _snmp_errors(lab, lab.target_ns))
    before = _stats(lab, tun["ifname"])
    received = _iperf(lab, target, "-R")
    after = _stats(lab, tun["ifname"])
    frames = after["rx"]["packets"] - before["rx"]["packets"]
    rx_bytes = after["rx"]["bytes"] - before["rx"]["bytes"]
    # Coalesced: far fewer frames than MTU-sized packets would be.
    assert rx_bytes >= received
    assert rx_bytes / frames > 2 * tun["mtu"], (rx_bytes, frames)
    assert after["rx"]["errors"] == before["rx"]["errors"]
    _iperf(lab, target)  # and the upload, whose packets the server's kernel checks
    errors_after = (_snmp_errors(lab, lab.client_ns), _snmp_errors(lab, lab.target_ns))
    assert errors_after == errors_before  # no checksum errors on either end
    assert client.stop() == 0, client.stderr
    assert "coalesced" not in client.stderr, client.stderr
    assert "Traceback" not in client.stderr
    created = [r for r in client.audit() if r["op"] == "create_tun"]
    assert created[0]["args"]["vnet_hdr"] is True, created


def test_no_tun_offload_gives_one_packet_per_frame(
    offload_lab: Lab, start: Callable[..., Client]
) -> None:
    lab = offload_lab
    client = start("--no-tun-offload")
    tun = client.wait_connected()
    assert not _tun_flags(lab, tun["ifname"]) & IFF_VNET_HDR
    before = _stats(lab, tun["ifname"])
    _iperf(lab, lab.target_ip, "-R")
    after = _stats(lab, tun["ifname"])
    frames = after["rx"]["packets"] - before["rx"]["packets"]
    rx_bytes = after["rx"]["bytes"] - before["rx"]["bytes"]
    assert rx_bytes / frames <= tun["mtu"]
    assert client.stop() == 0, client.stderr
    created = [r for r in client.audit() if r["op"] == "create_tun"]
    assert created[0]["args"]["vnet_hdr"] is False, created


def _snmp_errors(lab: Lab, ns: str) -> int:
    """Checksum and header errors counted by IP, TCP and UDP in namespace ``ns``."""
    text = lab.run_in(ns, "cat", "/proc/net/snmp").stdout.decode()
    lines = text.splitlines()
    total = 0
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        for name, value in zip(names.split()[1:], values.split()[1:], strict=True):
            if re.fullmatch(r"InCsumErrors|InHdrErrors", name):
                total += int(value)
    return total
