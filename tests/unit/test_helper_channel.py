"""The helper's own codec (privhelper/channel.py) against the one the supervisor speaks
(ipc/wire.py): the same bytes both ways, and the same refusals of hostile input."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from typing import Any

import msgpack
import pytest
from netconfigs import network_config

from sepconnect.ipc.helper_messages import (
    CreateTun,
    Done,
    Hello,
    LeftOut,
    NetApplied,
    NetConfig,
    Refused,
    ScriptEvent,
    Teardown,
    TunCreated,
)
from sepconnect.ipc.limits import MAX_MSG
from sepconnect.ipc.wire import Channel as WireChannel
from sepconnect.ipc.wire import WireError, socketpair
from sepconnect.privhelper import channel
from sepconnect.supervisor.helper_client import REPLIES, REQUESTS

FULL = network_config(
    gateway="198.19.200.7",
    mtu=1400,
    ipv4="198.18.10.2/24",
    ipv6="2001:2:0:10::2/64",
    routes=["198.18.32.0/20", "2001:2:0:20::/64"],
    exclude=["198.18.200.0/24"],
    dns=["198.18.10.53", "2001:2::53"],
    domains=["example.test"],
    split_dns=["corp.example.test"],
    dns_default=True,
    banner="Welcome\nto the lab",
    idle_timeout=1800,
)
REQUESTS_SEEN = [
    Hello(seq=0, proto=1, role="supervisor", gateway=ipaddress.ip_address("2001:2::7")),
    CreateTun(seq=1, mtu=1400, vnet_hdr=True),
    NetConfig(seq=2, net=FULL),
    NetConfig(seq=3, net=network_config(ipv6=None, routes=["0.0.0.0/0"])),
    ScriptEvent(seq=4, reason="attempt-reconnect"),
    Teardown(seq=2**31 - 1),
]
REPLIES_SENT = [
    Done(seq=1),
    TunCreated(seq=2, ifname="sepc0", ifindex=7),
    NetApplied(seq=3, left_out=()),
    NetApplied(
        seq=4,
        left_out=(LeftOut(prefix=ipaddress.ip_network("198.18.200.0/24"), reason="no route"),),
    ),
    Refused(seq=5, reason="route 127.0.0.0/8: loopback is not allowed"),
]


@pytest.mark.parametrize("msg", REQUESTS_SEEN, ids=lambda m: m.op)
def test_every_request_the_supervisor_sends_decodes_to_the_same_message(msg: Any) -> None:
    assert channel.decode(REQUESTS.encode(msg)) == msg


@pytest.mark.parametrize("msg", REPLIES_SENT, ids=lambda m: m.op)
def test_every_reply_has_the_supervisors_bytes(msg: Any) -> None:
    data = channel.encode(msg)
    assert data == REPLIES.encode(msg)
    assert REPLIES.decode_untrusted(data) == msg


def test_a_reply_byte_for_byte() -> None:
    assert channel.encode(Done(seq=7)) == b"\x82\xa3seq\x07\xa2op\xa4done"
    assert channel.encode(Refused(seq=1, reason="x")) == (
        b"\x83\xa3seq\x01\xa6reason\xa1x\xa2op\xa7refused"
    )


def test_requests_are_not_replies() -> None:
    with pytest.raises(TypeError):
        channel.encode(Teardown(seq=1))


def _net(**changes: Any) -> dict[str, Any]:
    wire: dict[str, Any] = msgpack.unpackb(REQUESTS.encode(NetConfig(seq=1, net=FULL)))
    wire["net"] = {**wire["net"], **changes}
    return wire


HOSTILE: dict[str, bytes] = {
    "oversized": b"\x80" + b"\0" * MAX_MSG,
    "truncated": REQUESTS.encode(NetConfig(seq=1, net=FULL))[:-7],
    "not_msgpack": b"\xc1\xc1 not msgpack",
    "not_a_map": msgpack.packb([1, 2, 3]),
    "ext_type": msgpack.packb(msgpack.ExtType(1, b"x")),
    "unknown_op": msgpack.packb({"op": "del_route", "seq": 1}),
    "op_as_list": msgpack.packb({"op": ["hello"], "seq": 1}),
    "no_op": msgpack.packb({"seq": 1}),
    "reply_as_request": msgpack.packb({"op": "done", "seq": 1}),
    "extra_field": msgpack.packb({"op": "teardown", "seq": 1, "dev": "up0"}),
    "missing_field": msgpack.packb({"op": "create_tun", "seq": 1, "mtu": 1400}),
    "seq_as_bool": msgpack.packb({"op": "teardown", "seq": True}),
    "seq_negative": msgpack.packb({"op": "teardown", "seq": -1}),
    "seq_too_big": msgpack.packb({"op": "teardown", "seq": 2**31}),
    "vnet_hdr_as_int": msgpack.packb({"op": "create_tun", "seq": 1, "mtu": 1400, "vnet_hdr": 1}),
    "mtu_as_string": msgpack.packb({"op": "create_tun", "seq": 1, "mtu": "1400", "vnet_hdr": 0}),
    "mtu_too_small": msgpack.packb({"op": "create_tun", "seq": 1, "mtu": 100, "vnet_hdr": False}),
    "bad_role": msgpack.packb(
        {"op": "hello", "seq": 1, "proto": 1, "role": "worker", "gateway": "198.19.200.7"}
    ),  # fmt: skip
    "bad_proto": msgpack.packb(
        {"op": "hello", "seq": 1, "proto": 2, "role": "supervisor", "gateway": "198.19.200.7"}
    ),  # fmt: skip
    "bad_reason": msgpack.packb({"op": "script_event", "seq": 1, "reason": "connect"}),
    "net_not_a_map": msgpack.packb({"op": "net_config", "seq": 1, "net": [1]}),
    "net_extra_field": msgpack.packb(_net(dev="up0")),
    "net_missing_field": msgpack.packb(
        {**_net(), "net": {k: v for k, v in _net()["net"].items() if k != "exclude"}}
    ),
    "routes_not_a_list": msgpack.packb(_net(routes="198.18.0.0/16")),
    # The counts are the codec's alone (NetworkConfig's Length): the helper's rules see
    # no more than MAX_ROUTES routes and excludes, MAX_DNS servers, MAX_DOMAINS domains.
    "too_many_routes": msgpack.packb(_net(routes=[f"198.18.{i}.0/24" for i in range(257)])),
    "too_many_excludes": msgpack.packb(_net(exclude=[f"198.19.{i}.0/24" for i in range(257)])),
    "too_many_domains": msgpack.packb(_net(domains=["a.example"] * 33)),
    "too_many_split_dns": msgpack.packb(_net(split_dns=["a.example"] * 33)),
    "route_host_bits": msgpack.packb(_net(routes=["198.18.0.1/16"])),
    "route_with_shell": msgpack.packb(_net(routes=["198.18.0.0/16;rm -rf /"])),
    "address_zone_id": msgpack.packb(_net(dns=["fe80::1%eth0"])),
    "address_v4_as_v6": msgpack.packb(_net(ipv6="198.18.10.2/24")),
    "address_as_int": msgpack.packb(_net(gateway=3323186183)),
    "address_too_long": msgpack.packb(_net(gateway="1" * 65)),
    "gateway_none": msgpack.packb(_net(gateway=None)),
    "banner_escape": msgpack.packb(_net(banner="\x1b]52;c;x\x07")),
    "domain_upper": msgpack.packb(_net(domains=["Example.TEST"])),
    "too_many_dns": msgpack.packb(_net(dns=["198.18.10.53"] * 9)),
    "idle_timeout_zero": msgpack.packb(_net(idle_timeout=0)),
    "bytes_key": msgpack.packb({b"op": "teardown", "seq": 1}, use_bin_type=True),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_requests_are_refused_by_both_codecs(data: bytes) -> None:
    with pytest.raises(WireError):
        REQUESTS.decode_untrusted(data)
    with pytest.raises(channel.ChannelError):
        channel.decode(data)


def test_both_codecs_agree_on_mutated_requests() -> None:
    """Every request with bytes changed at random: both refuse it or both read the same."""
    rng = random.Random(13)
    originals = [REQUESTS.encode(msg) for msg in REQUESTS_SEEN]
    for _ in range(3000):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            expected: Any = REQUESTS.decode_untrusted(bytes(data))
        except WireError:
            expected = WireError
        try:
            got: Any = channel.decode(bytes(data))
        except channel.ChannelError:
            got = WireError
        assert got == expected, bytes(data)


def test_the_channel_carries_credentials_and_the_tun_fd_only_with_tun_created() -> None:
    ours, theirs = socketpair()
    supervisor = WireChannel(ours, REPLIES, {"tun_created"}, send_codec=REQUESTS)
    helper = channel.Channel(theirs)
    try:
        supervisor.send(Teardown(seq=3))
        assert helper.recv() == Teardown(seq=3)
        assert helper.last_sender == (os.getpid(), os.getuid(), os.getgid())
        r, w = os.pipe()
        helper.send(TunCreated(seq=3, ifname="sepc0", ifindex=7), r)
        reply, fd = supervisor.recv()
        assert reply == TunCreated(seq=3, ifname="sepc0", ifindex=7)
        assert fd is not None
        os.write(w, b"x")
        assert os.read(fd, 1) == b"x"  # the same pipe
        for f in (r, w, fd):
            os.close(f)
        with pytest.raises(channel.ChannelError, match="fd presence"):
            helper.send(Done(seq=4), 0)
        # A request with an fd: the fd is closed, the message refused.
        ours.sendmsg(
            [REQUESTS.encode(Teardown(seq=5))],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, os.pipe()[0].to_bytes(4, "little"))],
        )
        with pytest.raises(channel.ChannelError, match="carries an fd"):
            helper.recv()
        ours.shutdown(socket.SHUT_WR)
        with pytest.raises(channel.Closed):
            helper.recv()
    finally:
        ours.close()
        theirs.close()
