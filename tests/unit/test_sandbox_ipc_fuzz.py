"""Property-based tests of the helper's IPC edge (issue #5): the decoder and the value
validators together, and the request table under random sequences of requests.

Whatever arrives, the outcome is one of: a WireError (fatal), a ProtocolViolation
(fatal), a Refused reply (nothing done), or a request the policy allows — and what the
policy allows never reaches outside the tunnel: no /0, nothing in a forbidden range, the
gateway never inside the tunnel. (The raw-bytes fuzzing of the decoder alone is in
test_wire.py.)
"""

from __future__ import annotations

import ipaddress
from typing import Any

import msgpack
from helper_wire import client_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netconfigs import network_config

from sepconnect.ipc.helper_messages import NetConfig, Refused
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.wire import WireError
from sepconnect.privhelper import policy
from sepconnect.privhelper.policy import POLICY, Monitor, Phase, ProtocolViolation, Refusal
from sepconnect.supervisor.helper_client import REQUESTS

GOOD: dict[str, Any] = {
    "mtu": 1400,
    "ipv4": "198.18.10.2/24",
    "ipv6": "2001:2:0:10::2/64",
    "routes": ["198.18.32.0/20"],
    "exclude": [],
    "gateway": "198.19.200.7",
}


def _wire(method: str, **kwargs: Any) -> dict[str, Any]:
    return client_request(method, **kwargs)


_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(str)
_addr = st.one_of(_v4, _v6, st.sampled_from(["0.0.0.0", "::", "198.18.10.9", "198.19.200.7"]))
_prefix = st.one_of(
    st.builds(lambda a, n: f"{a}/{n}", _v4, st.integers(0, 32)),
    st.builds(lambda a, n: f"{a}/{n}", _v6, st.integers(0, 128)),
    st.sampled_from(["0.0.0.0/0", "::/0", "127.0.0.0/8", "224.0.0.0/4", "fe80::/10"]),
    st.text(alphabet="0123456789abcdef:./", max_size=20),
)
_iface4 = st.builds(lambda a, n: f"{a}/{n}", _v4, st.integers(0, 32))
_iface6 = st.builds(lambda a, n: f"{a}/{n}", _v6, st.integers(0, 128))


def _forbidden(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(
        net.subnet_of(bad)  # type: ignore[arg-type]
        for bad, _ in policy._FORBIDDEN
        if bad.version == net.version
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    ipv4=st.one_of(st.none(), _iface4),
    ipv6=st.one_of(st.none(), _iface6),
    routes=st.lists(_prefix, max_size=6),
    exclude=st.lists(_prefix, max_size=4),
    gateway=_addr,
    mtu=st.integers(0, 70000),
)
def test_net_config_is_refused_or_stays_inside_the_tunnel(
    ipv4: str | None,
    ipv6: str | None,
    routes: list[str],
    exclude: list[str],
    gateway: str,
    mtu: int,
) -> None:
    raw = _wire("net_config", net=network_config(**GOOD))
    raw["net"].update(
        ipv4=ipv4, ipv6=ipv6, routes=routes, exclude=exclude, gateway=gateway, mtu=mtu
    )
    try:
        msg = REQUESTS.decode_untrusted(msgpack.packb(raw))
    except WireError:
        return  # fatal for the helper: nothing is done
    assert isinstance(msg, NetConfig)
    try:
        wanted = policy.check_net_config(msg.net)
    except Refusal as exc:
        reason = str(exc)
        assert reason  # noqa: PT017  # a reason, one line
        return
    assert isinstance(wanted, NetworkConfig)
    assert 576 <= wanted.mtu <= 9000
    assert wanted.addresses
    for net in (*wanted.routes, *wanted.exclude):
        assert net.prefixlen > 0, net  # the host's default route is never replaced
        assert not _forbidden(net), net
    assert not set(wanted.routes) & set(wanted.exclude)
    for iface in wanted.addresses:
        assert wanted.gateway not in iface.network
        assert not _forbidden(ipaddress.ip_network(iface.ip))
    for net in wanted.routes:
        assert any(a.version == net.version for a in wanted.addresses)


class FakeHost:
    """Records what the policy makes the helper do."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gateway: Any = None

    def create_tun(self, mtu: int, *, vnet_hdr: bool) -> tuple[str, int, int]:
        self.calls.append("create_tun")
        return "sepc0", 7, 99

    def net_config(self, wanted: NetworkConfig) -> dict[Any, str]:
        self.calls.append("net_config")
        return {}

    def script_event(self, reason: str) -> None:
        self.calls.append("script_event")

    def teardown(self) -> None:
        self.calls.append("teardown")


_REQUESTS = {
    "hello": lambda: _wire("hello", gateway=network_config(**GOOD).gateway),
    "create_tun": lambda: _wire("create_tun", mtu=1400),
    "net_config": lambda: _wire("net_config", net=network_config(**GOOD)),
    "bad_net_config": lambda: _wire(
        "net_config", net=network_config(**{**GOOD, "routes": ["127.0.0.0/8"]})
    ),
    "teardown": lambda: _wire("teardown"),
}


@settings(max_examples=300)
@given(st.lists(st.sampled_from(sorted(_REQUESTS)), max_size=12))
def test_any_sequence_of_requests_follows_the_table(sequence: list[str]) -> None:
    monitor, host = Monitor(), FakeHost()
    for name in sequence:
        msg = REQUESTS.decode_untrusted(msgpack.packb(_REQUESTS[name]()))
        phase = monitor.phase
        done = len(host.calls)
        try:
            reply, _ = monitor.handle(host, msg)
        except ProtocolViolation:
            # What the helper treats as fatal: out of phase, or a once-only request again.
            assert host.calls[done:] == []
            break
        if isinstance(reply, Refused):
            # Nothing changes, or a once-only request is used up; the session goes on.
            assert monitor.phase is phase or type(msg) not in POLICY[monitor.phase]
            assert monitor.phase is not Phase.CLOSED
        if phase is Phase.NEW:
            assert name == "hello"
        if monitor.phase is Phase.CLOSED:
            break
    assert host.calls.count("create_tun") <= 1
    assert host.calls.count("teardown") <= 1
    if "create_tun" in host.calls:
        first = host.calls.index("create_tun")
        assert "net_config" not in host.calls[:first]
    if "teardown" in host.calls:
        assert host.calls[-1] == "teardown"
