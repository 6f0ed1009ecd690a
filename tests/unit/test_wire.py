"""The typed SEQPACKET/msgpack wire layer and the helper client's reply checks (no root)."""

from __future__ import annotations

import array
import contextlib
import dataclasses
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import ClassVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netconfigs import DEFAULTS, network_config

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
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.wire import (
    MAX_MSG,
    Channel,
    Codec,
    Message,
    PeerClosed,
    WireError,
    socketpair,
)
from sepconnect.supervisor.helper_client import (
    FD_REPLIES,
    REPLIES,
    REQUESTS,
    HelperClient,
    HelperRefused,
)

REQUEST_EXAMPLES: list[Message] = [
    Hello(seq=0, proto=1, role="supervisor", gateway=ipaddress.ip_address("2001:2::1")),
    CreateTun(seq=1, mtu=1400),
    NetConfig(
        seq=2,
        net=network_config(
            mtu=1400,
            ipv4="198.18.10.2/24",
            ipv6="2001:2:0:10::2/64",
            routes=("0.0.0.0/0", "::/0", "198.19.0.0/16"),
            exclude=("198.19.5.0/24",),
            gateway="198.18.1.50",
        ),
    ),
    NetConfig(
        seq=2**31 - 1,
        net=network_config(
            mtu=576, ipv4="198.18.10.2/32", ipv6=None, routes=(), exclude=(), gateway="2001:2::1"
        ),
    ),
    ScriptEvent(seq=3, reason="attempt-reconnect"),
    Teardown(seq=3),
]
REPLY_EXAMPLES: list[Message] = [
    Done(seq=0),
    NetApplied(seq=2, left_out=()),
    NetApplied(
        seq=2,
        left_out=(
            LeftOut(
                prefix=ipaddress.ip_network("198.19.99.0/24"),
                reason="route lookup of 198.19.99.0: Network is unreachable",
            ),
        ),
    ),
    TunCreated(seq=1, ifname="sepc0", ifindex=7),
    Refused(seq=2, reason="route 127.0.0.0/8: loopback is not allowed"),
]


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socketpair()
    yield a, b
    a.close()
    b.close()


def helper_end(sock: socket.socket) -> Channel:
    return Channel(sock, REQUESTS, send_codec=REPLIES, send_fd_ops=FD_REPLIES)


def supervisor_end(sock: socket.socket) -> Channel:
    return Channel(sock, REPLIES, FD_REPLIES, send_codec=REQUESTS, send_fd_ops=())


def send_raw(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    anc = []
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sock.sendmsg([data], anc)


def raw(op: str, **fields: object) -> bytes:
    return msgpack.packb({"op": op, **fields}, use_bin_type=True)


def raw_net(**fields: object) -> bytes:
    """A net_config request whose network configuration is DEFAULTS with ``fields``."""
    return raw("net_config", seq=1, net={**DEFAULTS, **fields})


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("msg", REQUEST_EXAMPLES, ids=lambda m: m.op)
def test_request_round_trip(msg: Message) -> None:
    assert REQUESTS.decode_untrusted(REQUESTS.encode(msg)) == msg


@pytest.mark.parametrize("msg", REPLY_EXAMPLES, ids=lambda m: m.op)
def test_reply_round_trip(msg: Message) -> None:
    assert REPLIES.decode_untrusted(REPLIES.encode(msg)) == msg


def test_every_helper_message_has_an_example() -> None:
    covered = {type(m) for m in REQUEST_EXAMPLES + REPLY_EXAMPLES}
    assert covered == REQUESTS.message_types | REPLIES.message_types


def test_channel_round_trip_both_directions(pair: tuple[socket.socket, socket.socket]) -> None:
    helper, supervisor = helper_end(pair[0]), supervisor_end(pair[1])
    helper.pass_credentials()
    for msg in REQUEST_EXAMPLES:
        supervisor.send(msg)
        assert helper.recv() == (msg, None)
        assert helper.last_sender == (os.getpid(), os.getuid(), os.getgid())
    for msg in (Done(seq=0), Refused(seq=1, reason="no")):
        helper.send(msg)
        assert supervisor.recv() == (msg, None)


def test_tun_created_carries_its_fd(pair: tuple[socket.socket, socket.socket]) -> None:
    helper, supervisor = helper_end(pair[0]), supervisor_end(pair[1])
    r, w = os.pipe()
    try:
        helper.send(TunCreated(seq=4, ifname="sepc0", ifindex=3), fd=w)
        msg, fd = supervisor.recv()
        assert msg == TunCreated(seq=4, ifname="sepc0", ifindex=3)
        assert fd is not None
        assert fd not in (r, w)
        assert not os.get_inheritable(fd)  # MSG_CMSG_CLOEXEC
        os.write(fd, b"through the passed fd")
        assert os.read(r, 100) == b"through the passed fd"
        os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_send_checks_fd_presence_against_the_schema(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    helper, supervisor = helper_end(pair[0]), supervisor_end(pair[1])
    with pytest.raises(WireError, match="fd presence"):
        helper.send(TunCreated(seq=1, ifname="sepc0", ifindex=3))
    with pytest.raises(WireError, match="fd presence"):
        helper.send(Done(seq=1), fd=0)
    with pytest.raises(WireError, match="fd presence"):
        supervisor.send(CreateTun(seq=1, mtu=1400), fd=0)


def test_encode_refuses_messages_of_another_channel() -> None:
    with pytest.raises(TypeError, match="not part of this channel"):
        REQUESTS.encode(Done(seq=1))
    with pytest.raises(TypeError, match="duplicate op"):
        Codec(Done, Done)


# -- hostile input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),
        (msgpack.packb([1, 2, 3]), "not a map"),
        (msgpack.packb({"seq": 1}), "no op"),
        (raw("format_disk", seq=1), "unknown op"),
        (raw("teardown"), "missing field"),
        (raw("teardown", seq=1, force=True), "unknown field"),
        (raw("teardown", seq=-1), "outside"),
        (raw("teardown", seq=True), "expected int"),
        (raw("teardown", seq=1.0), "expected int"),
        (raw("hello", seq=1, proto=2, role="supervisor", gateway="198.18.1.1"), "outside"),
        (raw("hello", seq=1, proto=1, role="worker", gateway="198.18.1.1"), "not one of"),
        (raw("hello", seq=1, proto=1, role="supervisor"), "missing field"),
        (raw("hello", seq=1, proto=1, role="supervisor", gateway="vpn.example"), "not a valid"),
        (raw("create_tun", seq=1, mtu=100, vnet_hdr=False), "outside"),
        (raw("create_tun", seq=1, mtu=b"1400", vnet_hdr=False), "expected int"),
        (raw("create_tun", seq=1, mtu=1400), "missing field"),
        (raw("create_tun", seq=1, mtu=1400, vnet_hdr=1), "expected bool"),
        (msgpack.packb({"op": "teardown", "seq": msgpack.ExtType(1, b"x")}), "undecodable"),
        (msgpack.packb({"op": "teardown", "seq": 1}) + b"\x00", "undecodable"),
        (raw_net(ipv4="1.2.3.4/24\n"), "not a valid"),
        (raw_net(routes=["198.18.0.0/16"] * 300), "undecodable"),
        (raw_net(routes="198.18.0.0/16"), "expected a list"),
        (raw_net(routes=["198.18.0.1/16"]), "not a valid"),  # host bits
        (raw_net(gateway="fe80::1%eth0"), "expected an address"),
        (raw_net(domains=["corp.example\nnameserver 6.6.6.6"]), "does not match"),
        (raw_net(banner="hi\x1b[2J"), "does not match"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)  # fmt: skip
def test_decode_rejects(data: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        REQUESTS.decode_untrusted(data)


def test_oversized_message_is_rejected_before_decoding() -> None:
    with pytest.raises(WireError, match="exceeds"):
        REQUESTS.decode_untrusted(b"\x80" * (MAX_MSG + 1))


def test_oversized_message_is_not_encoded() -> None:
    huge = Codec(Refused)
    with pytest.raises(WireError, match="exceeds"):
        huge.encode(Refused(seq=1, reason="x" * (MAX_MSG + 1)))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_raise_only_wire_error(data: bytes) -> None:
    for codec in (REQUESTS, REPLIES):
        with contextlib.suppress(WireError):
            codec.decode_untrusted(data)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=50)
    | st.binary(max_size=50)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    ["seq", "proto", "role", "mtu", "ipv4", "ipv6", "routes", "exclude", "gateway", "ifname",
     "ifindex", "reason", "op", "x"]
)  # fmt: skip
_ops = st.sampled_from(
    ["hello", "create_tun", "net_config", "teardown", "done", "tun_created", "refused", "x"]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_ops, st.dictionaries(_field_names, _values, max_size=9))
def test_fuzz_random_maps_raise_only_wire_error(op: str, fields: dict[str, object]) -> None:
    data = msgpack.packb({**fields, "op": op}, use_bin_type=True)
    for codec in (REQUESTS, REPLIES):
        try:
            msg = codec.decode_untrusted(data)
        except WireError:
            continue
        assert codec.decode_untrusted(codec.encode(msg)) == msg  # what passes is well-formed


@settings(max_examples=200)
@given(
    st.builds(
        NetConfig,
        seq=st.integers(0, 2**31 - 1),
        net=st.builds(
            NetworkConfig,
            mtu=st.integers(576, 9000),
            ipv4=st.none() | st.ip_addresses(v=4).map(lambda a: ipaddress.IPv4Interface(f"{a}/24")),
            ipv6=st.none()
            | st.ip_addresses(v=6).map(lambda a: ipaddress.IPv6Interface(f"{a.exploded}/64")),
            routes=st.lists(st.ip_addresses(v=4).map(ipaddress.ip_network), max_size=256).map(
                tuple
            ),
            exclude=st.lists(st.ip_addresses(v=6).map(ipaddress.ip_network), max_size=20).map(
                tuple
            ),
            gateway=st.ip_addresses(),
        ),
    )
)
def test_fuzz_valid_net_config_round_trips(msg: NetConfig) -> None:
    assert REQUESTS.decode_untrusted(REQUESTS.encode(msg)) == msg


# -- descriptors, truncation and credentials on a real socketpair ---------------------


def test_fd_on_a_message_without_one_is_closed_and_rejected(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    helper = helper_end(pair[0])
    r, w = os.pipe()
    send_raw(pair[1], REQUESTS.encode(Teardown(seq=1)), [r, w])
    os.close(r)
    os.close(w)
    before = open_fds()
    received = lowest_free_fd()  # where the kernel puts the first passed fd
    with pytest.raises(WireError, match="does not allow"):
        helper.recv()
    with pytest.raises(OSError):
        os.fstat(received)
    assert open_fds() == before


def test_fd_on_an_undecodable_message_is_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    helper = helper_end(pair[0])
    r, w = os.pipe()
    send_raw(pair[1], b"\xc1 not msgpack", [w])
    os.close(w)
    before = open_fds()
    with pytest.raises(WireError):
        helper.recv()
    assert open_fds() == before
    assert os.read(r, 1) == b""  # every copy of the write end is gone
    os.close(r)


def test_tun_created_without_fd_is_rejected(pair: tuple[socket.socket, socket.socket]) -> None:
    supervisor = supervisor_end(pair[1])
    send_raw(pair[0], REPLIES.encode(TunCreated(seq=1, ifname="sepc0", ifindex=3)))
    with pytest.raises(WireError, match="exactly one fd, got 0"):
        supervisor.recv()


def test_tun_created_with_two_fds_closes_both(pair: tuple[socket.socket, socket.socket]) -> None:
    supervisor = supervisor_end(pair[1])
    r, w = os.pipe()
    send_raw(pair[0], REPLIES.encode(TunCreated(seq=1, ifname="sepc0", ifindex=3)), [r, w])
    os.close(r)
    os.close(w)
    before = open_fds()
    with pytest.raises(WireError, match="exactly one fd, got 2"):
        supervisor.recv()
    assert open_fds() == before


def test_datagram_over_64k_is_truncated_and_fatal(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    helper = helper_end(pair[0])
    pair[1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_MSG)
    pair[1].send(b"\x80" * (MAX_MSG + 4096))
    with pytest.raises(WireError, match="truncated or oversized"):
        helper.recv()
    # Exactly MAX_MSG + 1 bytes fits the buffer but is still oversized.
    pair[1].send(b"\x80" * (MAX_MSG + 1))
    with pytest.raises(WireError, match="truncated or oversized"):
        helper.recv()


def test_peer_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    helper = helper_end(pair[0])
    pair[1].close()
    with pytest.raises(PeerClosed):
        helper.recv()


def test_credentials_sent_before_pass_credentials_are_not_a_sender(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Sent while neither end had SO_PASSCRED, a message carries no credentials; the
    kernel then reports pid 0 and the overflow uid 65534 ("nobody"), which must not
    pass for a sender."""
    helper, supervisor = helper_end(pair[0]), supervisor_end(pair[1])
    supervisor.send(Teardown(seq=1))
    helper.pass_credentials()
    helper.recv()
    assert helper.last_sender is None
    supervisor.send(Teardown(seq=2))
    helper.recv()
    assert helper.last_sender == (os.getpid(), os.getuid(), os.getgid())


# -- the helper client's checks --------------------------------------------------------


def serve_one(
    sock: socket.socket, answer: Callable[[Message], tuple[bytes, list[int]]]
) -> threading.Thread:
    """A fake helper answering one request in a thread."""

    def run() -> None:
        msg = REQUESTS.decode_untrusted(sock.recv(MAX_MSG))
        data, fds = answer(msg)
        send_raw(sock, data, fds)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def seq_of(msg: Message) -> int:
    assert isinstance(msg, Hello | CreateTun | NetConfig | Teardown)
    return msg.seq


def test_client_create_tun_returns_the_fd(pair: tuple[socket.socket, socket.socket]) -> None:
    r, w = os.pipe()
    t = serve_one(
        pair[0],
        lambda m: (REPLIES.encode(TunCreated(seq=seq_of(m), ifname="sepc3", ifindex=9)), [w]),
    )
    name, index, fd = HelperClient(pair[1]).create_tun(1400)
    t.join()
    assert (name, index) == ("sepc3", 9)
    os.write(fd, b"x")
    assert os.read(r, 1) == b"x"
    for f in (fd, r, w):
        os.close(f)


def test_client_raises_helper_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    t = serve_one(pair[0], lambda m: (REPLIES.encode(Refused(seq=seq_of(m), reason="nope")), []))
    with pytest.raises(HelperRefused, match="nope") as info:
        HelperClient(pair[1]).net_config(network_config(ipv6=None, routes=()))
    t.join()
    assert info.value.reason == "nope"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (lambda m: REPLIES.encode(Done(seq=seq_of(m) + 1)), "reply seq"),
        (lambda m: REPLIES.encode(Refused(seq=seq_of(m) + 1, reason="x")), "reply seq"),
        (lambda m: REPLIES.encode(Done(seq=seq_of(m))), "expected 'tun_created'"),
        (lambda m: raw("hello", seq=seq_of(m), proto=1, role="supervisor"), "unknown op"),
    ],
)
def test_client_rejects_unexpected_replies(
    pair: tuple[socket.socket, socket.socket],
    answer: Callable[[Message], bytes],
    why: str,
) -> None:
    t = serve_one(pair[0], lambda m: (answer(m), []))
    with pytest.raises(WireError, match=why):
        HelperClient(pair[1]).create_tun(1400)
    t.join()


def test_client_closes_the_fd_of_a_wrong_reply(pair: tuple[socket.socket, socket.socket]) -> None:
    r, w = os.pipe()
    # The client's first request has seq 1; this reply is already waiting for it.
    send_raw(pair[0], REPLIES.encode(TunCreated(seq=6, ifname="sepc0", ifindex=1)), [w])
    os.close(w)
    client = HelperClient(pair[1])
    before = open_fds()
    with pytest.raises(WireError, match="reply seq 6, expected 1"):
        client.create_tun(1400)
    assert open_fds() == before
    assert os.read(r, 1) == b""  # every copy of the write end is gone
    os.close(r)


def test_client_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    with pytest.raises(WireError, match="no reply"):
        HelperClient(pair[1], timeout=0.05).hello(ipaddress.ip_address("198.18.1.1"))


def test_client_sequence_numbers_increase(pair: tuple[socket.socket, socket.socket]) -> None:
    client = HelperClient(pair[1])
    seqs: list[int] = []

    def answer(msg: Message) -> tuple[bytes, list[int]]:
        seqs.append(seq_of(msg))
        return REPLIES.encode(Done(seq=seq_of(msg))), []

    for _ in range(3):
        t = serve_one(pair[0], answer)
        client.hello(ipaddress.ip_address("198.18.1.1"))
        t.join()
    assert seqs == [1, 2, 3]


def test_every_channels_schema_builds() -> None:
    # Codec builds its validators lazily (at a type's first message); this is where a
    # field type outside the schema language fails, for every codec of every channel.
    import importlib

    from sepconnect.ipc.wire import Message

    modules = ("ipc.worker_messages", "ipc.spawner_messages", "ipc.runner_messages")
    codecs = [
        value
        for name in (*modules, "supervisor.helper_client")  # the helper channel's codecs
        for value in vars(importlib.import_module(f"sepconnect.{name}")).values()
        if isinstance(value, Codec)
    ]
    assert len(codecs) >= 8
    for codec in codecs:
        codec.check()

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Odd(Message):
        op: ClassVar[str] = "odd"
        value: complex

    with pytest.raises(TypeError, match="unsupported field type"):
        Codec(Odd).check()
