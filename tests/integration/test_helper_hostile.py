"""Hostile requests against the real privileged helper (issue #5).

Each case is sent by a "supervisor" (this test) to the real helper in a throwaway
network namespace, after the helper has created its tun and configured it, so that
there is state to protect. Every case has a defined outcome and an audit record:

- ``refused``: the helper answers Refused with a reason, changes nothing (the whole
  namespace — links, addresses, routes in every table — is byte-for-byte the same in
  ``ip -j``), and keeps serving;
- ``fatal``: a protocol violation: the helper removes everything it installed and
  exits 1 — the namespace is back to what it was before the helper started.

Never a traceback, never an action outside the tun.
"""

from __future__ import annotations

import array
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helper_wire import client_request
from netconfigs import network_config

from sepconnect.ipc.wire import MAX_MSG, Channel, socketpair
from sepconnect.process.accounts import HELPER_FALLBACK_UID as HELPER_UID
from sepconnect.supervisor.helper_client import REPLIES, REQUESTS, HelperClient, HelperRefused

pytestmark = [pytest.mark.root, pytest.mark.netns]

HELPER = [sys.executable, "-I", "-m", "sepconnect.privhelper"]
GOOD: dict[str, Any] = {
    "mtu": 1400,
    "ipv4": "198.18.10.2/24",
    "ipv6": "2001:2:0:10::2/64",
    "routes": ["198.18.32.0/20", "2001:2:0:20::/64"],
    "exclude": [],
    "gateway": "198.19.200.7",
}


def ip_json(ns: str, *argv: str) -> Any:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", *argv], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return json.loads(out or "[]")


def snapshot(ns: str) -> dict[str, Any]:
    """Everything a helper could change: links, addresses, routes of every table."""
    links = ip_json(ns, "link")
    for link in links:  # counters move with any traffic; they are not configuration
        link.pop("stats64", None)
    addrs = ip_json(ns, "addr")
    for link in addrs:
        for a in link.get("addr_info", []):
            a.pop("valid_life_time", None)  # counts down
            a.pop("preferred_life_time", None)
    return {
        "link": links,
        "addr": addrs,
        "route": ip_json(ns, "route", "show", "table", "all"),
        "route6": ip_json(ns, "-6", "route", "show", "table", "all"),
        "rule": ip_json(ns, "rule"),
        "rule6": ip_json(ns, "-6", "rule"),
    }


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    name = f"sc-{secrets.token_hex(3)}-hx"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        sysctl = ["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0"]
        sysctl.append("net.ipv6.conf.default.accept_dad=0")  # no tentative addresses
        subprocess.run(["ip", "netns", "exec", name, *sysctl], check=True, timeout=10)
        for argv in (
            ["link", "set", "lo", "up"],
            ["link", "add", "up0", "type", "veth", "peer", "name", "up1"],
            ["link", "set", "up0", "up"],
            ["link", "set", "up1", "up"],
            ["addr", "add", "198.18.1.2/24", "dev", "up0"],
            ["-6", "addr", "add", "2001:2:0:1::2/64", "dev", "up0", "nodad"],
            ["route", "add", "default", "via", "198.18.1.1"],
            ["-6", "route", "add", "default", "via", "2001:2:0:1::1"],
        ):
            subprocess.run(["ip", "-n", name, *argv], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


class Helper:
    def __init__(self, ns: str, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.audit = tmp / f"audit-{time.monotonic_ns()}.jsonl"
        self.stderr = tmp / f"stderr-{time.monotonic_ns()}"
        self.sock, theirs = socketpair()
        argv = [*HELPER, "--fd", str(theirs.fileno()), "--peer-uid", "0"]
        argv += ["--uid", str(HELPER_UID), "--gid", str(HELPER_UID), *args]
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv, "--audit-log", str(self.audit)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=None if env is None else {**os.environ, **env},
            )
        theirs.close()
        self.client = HelperClient(self.sock)
        self.tun_fd: int | None = None

    def setup(self) -> None:
        self.client.hello(ipaddress.ip_address(GOOD["gateway"]))
        _, _, self.tun_fd = self.client.create_tun(1400)
        self.client.net_config(network_config(**GOOD))

    def send_raw(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([data], anc)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.tun_fd is not None:
            os.close(self.tun_fd)
            self.tun_fd = None
        self.sock.close()


@pytest.fixture
def helper(ns: str, tmp_path: Path) -> Iterator[Helper]:
    h = Helper(ns, tmp_path)
    yield h
    h.close()
    text = h.stderr.read_text(errors="replace")
    assert "Traceback" not in text, text


def packed(op: str, **fields: Any) -> bytes:
    data: bytes = msgpack.packb({"op": op, **fields}, use_bin_type=True)
    return data


def _good_wire() -> dict[str, Any]:
    """GOOD as the client puts it on the wire (whatever fields the schema has now)."""
    return client_request("net_config", network_config(**GOOD), seq=99)


def net_config(**changes: Any) -> bytes:
    """GOOD's request on the wire, with ``changes`` to its network configuration."""
    good = _good_wire()
    return packed(**{**good, "net": {**good["net"], **changes}})


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[Helper], None]
    outcome: str  # "refused" or "fatal"
    reason: str  # a substring of the audit record's reason


def _raw(data: bytes) -> Callable[[Helper], None]:
    return lambda h: h.send_raw(data)


def _with_fd(h: Helper) -> None:
    r, w = os.pipe()
    try:
        h.send_raw(net_config(), (w,))
    finally:
        os.close(w)
    # The helper closed the fd it was not expecting: the pipe reaches EOF once it exits.
    h.proc.wait(10)
    assert os.read(r, 1) == b""
    os.close(r)


def _refused(**changes: Any) -> Callable[[Helper], None]:
    def send(h: Helper) -> None:
        with pytest.raises(HelperRefused):
            h.client.net_config(network_config(**{**GOOD, **changes}))

    return send


CASES = [
    # -- framing and encoding: fatal
    Case("oversized", _raw(b"\x80" + b"\0" * (MAX_MSG + 1)), "fatal", "truncated or oversized"),
    Case("truncated", _raw(net_config()[:-7]), "fatal", "undecodable"),
    Case("undecodable", _raw(b"\xc1\xc1 not msgpack"), "fatal", "undecodable"),
    Case("not_a_map", _raw(msgpack.packb([1, 2, 3])), "fatal", "not a map"),
    Case("ext_type", _raw(msgpack.packb(msgpack.ExtType(1, b"x"))), "fatal", "undecodable"),
    Case("unknown_type", _raw(packed("del_route", seq=1, dst="0.0.0.0/0")), "fatal", "unknown op"),
    Case("path_as_op", _raw(packed("../../bin/sh", seq=1)), "fatal", "unknown op"),
    Case(
        "extra_field_dev", _raw(packed(**{**_good_wire(), "dev": "up0"})), "fatal", "unknown field"
    ),
    Case("extra_net_field", _raw(net_config(dev="up0")), "fatal", "unknown field"),
    Case("fd_where_none", _with_fd, "fatal", "carries an fd"),
    # -- schema: names with shell or path characters, out-of-range numbers: fatal
    Case("shell_in_route", _raw(net_config(routes=["198.18.0.0/16;rm -rf /"])), "fatal", "valid"),
    Case("path_as_address", _raw(net_config(ipv4="../../etc/passwd")), "fatal", "not a valid"),
    Case("newline_in_gw", _raw(net_config(gateway="198.19.0.1\nx")), "fatal", "not a valid"),
    Case("route_host_bits", _raw(net_config(routes=["198.18.0.1/16"])), "fatal", "not a valid"),
    Case("address_v4_as_v6", _raw(net_config(ipv6="198.18.10.2/24")), "fatal", "not a valid"),
    Case("mtu_too_small", _raw(net_config(mtu=100)), "fatal", "outside"),
    Case("mtu_too_big", _raw(net_config(mtu=65536)), "fatal", "outside"),
    Case("mtu_as_string", _raw(net_config(mtu="1400")), "fatal", "expected int"),
    Case(
        "bool_as_int",
        _raw(packed("create_tun", seq=True, mtu=1400, vnet_hdr=False)),
        "fatal",
        "expected int",
    ),
    Case(
        "int_as_bool",
        _raw(packed("create_tun", seq=5, mtu=1400, vnet_hdr=1)),
        "fatal",
        "expected bool",
    ),
    # -- the request table: out of phase, repeated once-only: fatal
    Case(
        "hello_again",
        _raw(packed(**client_request("hello", ipaddress.ip_address("198.19.200.7"), seq=5))),
        "fatal",
        "phase",
    ),
    Case(
        "create_tun_again",
        _raw(packed("create_tun", seq=5, mtu=1400, vnet_hdr=True)),
        "fatal",
        "phase",
    ),
    # -- values out of policy: refused, nothing changes, the helper goes on
    Case("delete_default_v4", _refused(exclude=["0.0.0.0/0"]), "refused", "/0 prefix"),
    Case("delete_default_v6", _refused(exclude=["::/0"]), "refused", "/0 prefix"),
    Case("route_loopback", _refused(routes=["127.0.0.0/8"]), "refused", "loopback"),
    Case("route_multicast", _refused(routes=["224.0.0.0/4"]), "refused", "multicast"),
    Case("route_linklocal6", _refused(routes=["fe80::/10"]), "refused", "link-local"),
    Case("route_gateway_itself", _refused(routes=["198.19.200.7/32"]), "refused", "own packets"),
    # F4: overlapping a forbidden range is enough, and the route the kernel adds for an
    # address's subnet is checked like any other
    Case("route_over_metadata", _refused(routes=["169.254.0.0/15"]), "refused", "overlapping"),
    Case("route_over_multicast", _refused(routes=["224.0.0.0/3"]), "refused", "overlapping"),
    Case("route_over_linklocal6", _refused(routes=["fe80::/9"]), "refused", "overlapping"),
    Case("address_half_internet", _refused(ipv4="10.8.0.2/1"), "refused", "shorter than /8"),
    Case("address_subnet_linklocal", _refused(ipv4="169.255.0.2/15"), "refused", "link-local"),
    # F2: the gateway is the one hello named; a bypass for any other address is refused
    Case("gateway_other", _refused(gateway="10.20.30.40"), "refused", "not the VPN server's"),
    Case("gateway_in_tunnel", _refused(gateway="198.18.10.9"), "refused", "not the VPN server's"),
    Case("gateway_loopback", _refused(gateway="127.0.0.1"), "refused", "not the VPN server's"),
    Case("address_loopback", _refused(ipv4="127.0.0.2/8"), "refused", "loopback"),
    Case("address_broadcast", _refused(ipv4="198.18.10.255/24"), "refused", "broadcast"),
    Case("mtu_below_ipv6_min", _refused(mtu=1279), "refused", "at least 1280"),
    Case(
        "too_many_routes",
        _raw(net_config(routes=[f"198.18.{i}.0/24" for i in range(257)])),
        "fatal",
        "undecodable",  # the decoder's array limit, before any allocation of 257 items
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_request(ns: str, helper: Helper, case: Case) -> None:
    baseline = snapshot(ns)
    helper.setup()
    configured = snapshot(ns)
    assert configured != baseline
    case.send(helper)
    if case.outcome == "refused":
        assert snapshot(ns) == configured  # nothing changed, anywhere
        helper.client.net_config(network_config(**GOOD))  # still serving
        assert helper.proc.poll() is None
        record = [r for r in helper.records() if r["result"] == "refused"][-1]
    else:
        assert helper.proc.wait(10) == 1
        # Everything the helper installed is gone; nothing else was touched.
        if helper.tun_fd is not None:
            os.close(helper.tun_fd)  # our copy: the device goes with the last fd
            helper.tun_fd = None
        deadline = time.monotonic() + 5
        while snapshot(ns) != baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        assert snapshot(ns) == baseline
        record = [r for r in helper.records() if r["result"] == "fatal"][-1]
        assert [r["op"] for r in helper.records()][-2:] == ["cleanup", "exit"]
    assert case.reason.lower() in record["reason"].lower(), record


def test_an_address_of_another_link_does_not_touch_that_link(ns: str, helper: Helper) -> None:
    """The uplink's own address, asked for on the tun: whatever the helper decides,
    the uplink keeps its address and its routes."""
    helper.setup()
    uplink_before = ip_json(ns, "addr", "show", "dev", "up0")
    routes_before = [r for r in ip_json(ns, "route", "show", "table", "all") if r["dev"] == "up0"]
    with contextlib.suppress(HelperRefused):
        helper.client.net_config(network_config(**{**GOOD, "ipv4": "198.18.1.2/24"}))
    assert ip_json(ns, "addr", "show", "dev", "up0") == uplink_before
    routes_after = [r for r in ip_json(ns, "route", "show", "table", "all") if r["dev"] == "up0"]
    assert routes_after == routes_before


def test_ten_thousand_requests_in_a_burst(ns: str, helper: Helper) -> None:
    """10,000 requests as fast as the socket takes them: each gets its one reply, in
    order; identical configurations change nothing; the helper stays responsive."""
    helper.setup()
    configured = snapshot(ns)
    channel = Channel(helper.sock, REPLIES, send_codec=REQUESTS)
    count = 10_000
    wire = _good_wire()
    datagrams = [packed(**{**wire, "seq": 1000 + i}) for i in range(count)]
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            for datagram in datagrams:
                helper.sock.sendmsg([datagram])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=sender)
    started = time.monotonic()
    thread.start()
    seqs = []
    for _ in range(count):
        reply, _ = channel.recv()
        assert reply.op == "net_applied", reply
        seqs.append(reply.seq)  # type: ignore[attr-defined]
    thread.join(30)
    elapsed = time.monotonic() - started
    assert not errors
    assert seqs == [1000 + i for i in range(count)]
    assert snapshot(ns) == configured
    assert helper.proc.poll() is None
    helper.client.net_config(network_config(**GOOD))
    ok = [r for r in helper.records() if r["op"] == "net_config" and r["result"] == "ok"]
    assert len(ok) == count + 2
    assert elapsed < 120, elapsed


# --------------------------------------------------------------------------- issue 13, F6


SELFTEST_PREFIX = "sepconnect helper selftest: "


def test_the_real_helper_cannot_write_outside_its_state_dir(ns: str, tmp_path: Path) -> None:
    """From inside the real helper, sandbox complete (its own uid, CAP_NET_ADMIN alone,
    Landlock, seccomp): a root-owned vpnc-script, a root-owned directory like /etc, a
    directory anybody may write like /tmp, /etc/resolv.conf, /etc/shadow, setuid(0). Only
    its state directory takes a new file. As root with CAP_NET_ADMIN (before F6), every
    write here succeeded."""
    os.chmod(tmp_path, 0o755)
    script = tmp_path / "vpnc-script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o1777)
    # The state directory where the helper's account can reach it (pytest's tmp_path has
    # a root-only parent); a private directory of its own inside, made by the helper.
    reachable = Path(tempfile.mkdtemp(prefix="sc-selftest-"))
    reachable.chmod(0o755)
    state = reachable / "state"
    spec = {"root_file": str(script), "root_dir": str(etc), "open_dir": str(open_dir)}
    helper = Helper(
        ns, tmp_path, "--state-dir", str(state),
        env={"SEPCONNECT_TEST_HELPER_SELFTEST": json.dumps(spec)},
    )  # fmt: skip
    try:
        helper.client.hello(ipaddress.ip_address(GOOD["gateway"]))  # answered after the self-test
        helper.client.teardown()
        assert helper.proc.wait(10) == 0
    finally:
        helper.close()
        mode, owner = stat.S_IMODE(state.stat().st_mode), state.stat().st_uid
        shutil.rmtree(reachable)
    lines = [ln for ln in helper.stderr.read_text().splitlines() if ln.startswith(SELFTEST_PREFIX)]
    assert len(lines) == 1, helper.stderr.read_text()
    assert json.loads(lines[0][len(SELFTEST_PREFIX) :]) == {
        "write_root_file": "EACCES",  # the vpnc-script the root runner would execute
        "create_in_root_dir": "EACCES",
        "create_in_open_dir": "EACCES",  # Landlock: its uid may, the helper may not
        "write_etc_resolv_conf": "EACCES",
        "read_etc_shadow": "EACCES",
        "setuid_root": "EPERM",
        "create_in_state_dir": "allowed",
    }
    assert script.read_text() == "#!/bin/sh\n"
    assert list(etc.iterdir()) == list(open_dir.iterdir()) == []
    assert (mode, owner) == (0o700, HELPER_UID)  # written by the helper's uid only


def test_the_serving_helper_is_killed_when_it_executes(ns: str, tmp_path: Path) -> None:
    """The start stage executes the serving stage, once; from inside the serving stage
    (seccomp loaded), executing a program kills the helper with SIGSYS. Without the
    filter, Landlock would have refused it with EACCES and the helper would carry on."""
    os.chmod(tmp_path, 0o755)
    spec = {
        "root_file": str(tmp_path / "absent"),
        "root_dir": str(tmp_path),
        "open_dir": str(tmp_path),
        "then_execute": "/bin/true",
    }
    helper = Helper(ns, tmp_path, env={"SEPCONNECT_TEST_HELPER_SELFTEST": json.dumps(spec)})
    try:
        assert helper.proc.wait(10) == -signal.SIGSYS, helper.stderr.read_text()
    finally:
        helper.close()
    outcomes = [ln for ln in helper.stderr.read_text().splitlines() if '"execute"' in ln]
    assert outcomes == []  # the call never returned
    assert [r["op"] for r in helper.records()][:1] == ["start"]  # it got that far
