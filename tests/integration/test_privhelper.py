"""The real privileged helper, run as root inside throwaway network namespaces.

Each test builds a namespace ``sc-<hex>-ph`` with a veth "uplink" (both ends
inside it: up0 198.18.1.2/24 and 2001:2:0:1::2/64, default routes via
198.18.1.1 and 2001:2:0:1::1), starts the helper there with
``ip netns exec NS python -I …`` and drives it through
:class:`HelperClient` over a real socketpair. Nothing touches the host
namespace; the namespace is deleted afterwards.

The helper runs as ``python -I -m sepconnect.privhelper`` when the installed
copy of the package matches this tree; otherwise (an editable checkout that
has not been reinstalled) it runs this tree's code, still under ``-I``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import queue
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netconfigs import largest_script_config, network_config

from sepconnect.ipc.runner_messages import MAX_SCRIPT_ENV
from sepconnect.ipc.wire import PeerClosed, WireError, socketpair
from sepconnect.process.accounts import HELPER_FALLBACK_UID as HELPER_UID
from sepconnect.supervisor.helper_client import HelperClient, HelperRefused

pytestmark = [pytest.mark.root, pytest.mark.netns]

UPLINK_GW = "198.18.1.1"
UPLINK_GW6 = "2001:2:0:1::1"
VPN_GW = "198.19.200.7"  # reached via the uplink's default route
SPLIT = {
    "mtu": 1400,
    "ipv4": "198.18.10.2/24",
    "ipv6": "2001:2:0:10::2/64",
    "routes": ["198.18.32.0/20", "198.19.0.0/17", "2001:2:0:20::/64"],
    "exclude": ["198.19.64.0/24", "198.18.200.0/24", "2001:2:0:20:1::/80"],
    "gateway": VPN_GW,
}
FULL = {**SPLIT, "routes": ["0.0.0.0/0", "::/0"], "exclude": []}


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=20)


def ip_json(ns: str, *argv: str) -> Any:
    return json.loads(run("ip", "-n", ns, "-j", *argv).stdout or "[]")


@pytest.fixture(scope="session")
def helper_cmd() -> list[str]:
    """The installed helper, as the launcher runs it (run-tests installs the tree first)."""
    return [sys.executable, "-I", "-m", "sepconnect.privhelper"]


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"sc-{secrets.token_hex(3)}-ph"
    run("ip", "netns", "add", name)
    try:
        for argv in (
            ["link", "set", "lo", "up"],
            ["link", "add", "up0", "type", "veth", "peer", "name", "up1"],
            ["link", "set", "up0", "up"],
            ["link", "set", "up1", "up"],
            ["addr", "add", "198.18.1.2/24", "dev", "up0"],
            ["-6", "addr", "add", "2001:2:0:1::2/64", "dev", "up0", "nodad"],
            ["route", "add", "default", "via", UPLINK_GW],
            ["-6", "route", "add", "default", "via", UPLINK_GW6],
        ):
            run("ip", "-n", name, *argv)
        yield name
    finally:
        run("ip", "netns", "delete", name, check=False)


class Helper:
    """One helper process in ``ns`` and the supervisor's side of its socketpair."""

    def __init__(
        self,
        ns: str,
        cmd: list[str],
        tmp: Path,
        peer_uid: int = 0,
        interface: str | None = None,
        extra_fds: tuple[int, ...] = (),
        script: Path | None = None,
    ) -> None:
        self.ns = ns
        self.audit_path = tmp / "audit.log"
        self.sock, theirs = socketpair()
        argv = [*cmd, "--fd", str(theirs.fileno()), "--peer-uid", str(peer_uid)]
        argv += ["--uid", str(HELPER_UID), "--gid", str(HELPER_UID)]
        argv += ["--audit-log", str(self.audit_path)]
        if interface is not None:
            argv += ["--interface", interface]
        self.state_parent: Path | None = None
        if script is not None:
            # The root runner keeps the script's state next to the helper's: a directory
            # the helper's account can reach (pytest's tmp_path has a root-only parent).
            self.state_parent = Path(tempfile.mkdtemp(prefix="sc-helper-state-"))
            self.state_parent.chmod(0o755)
            argv += ["--script", str(script), "--state-dir", str(self.state_parent / "state")]
        self.stderr_path = tmp / "helper.stderr"
        with open(self.stderr_path, "wb") as stderr:
            # `ip netns exec` execs the command itself: proc.pid is the helper's pid.
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                pass_fds=(theirs.fileno(), *extra_fds),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        theirs.close()
        self.client = HelperClient(self.sock)
        self.tun_fd: int | None = None
        self.ifname = ""

    def start_tun(self, mtu: int = 1400) -> str:
        self.client.hello(ipaddress.ip_address(VPN_GW))
        self.ifname, _, self.tun_fd = self.client.create_tun(mtu)
        return self.ifname

    def wait(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)

    def close_tun_fd(self) -> None:
        if self.tun_fd is not None:
            os.close(self.tun_fd)
            self.tun_fd = None

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by pid: only the process this test started
            self.proc.wait(10)
        self.close_tun_fd()
        self.sock.close()
        if self.state_parent is not None:
            shutil.rmtree(self.state_parent)
        stderr = self.stderr_path.read_text(errors="replace")
        assert "Traceback" not in stderr, stderr
        assert "Warning" not in stderr, stderr


@pytest.fixture
def start(ns: str, helper_cmd: list[str], tmp_path: Path) -> Iterator[Any]:
    helpers: list[Helper] = []

    def make(**kwargs: Any) -> Helper:
        helper = Helper(ns, helper_cmd, tmp_path, **kwargs)
        helpers.append(helper)
        return helper

    yield make
    for helper in helpers:
        helper.close()


def static_routes(ns: str) -> set[tuple[str, str, str | None, int]]:
    """Every route of ours (`proto 157`, sepconnect's own protocol number) in the
    namespace, and any `proto static` one: (dst, dev, gateway, metric)."""
    routes = []
    for proto in ("157", "static"):
        routes += ip_json(ns, "route", "show", "proto", proto)
        routes += ip_json(ns, "-6", "route", "show", "proto", proto)
    return {(r["dst"], r["dev"], r.get("gateway"), r.get("metric", 0)) for r in routes}


def snapshot(ns: str) -> dict[str, Any]:
    return {
        "link": ip_json(ns, "link"),
        "addr": ip_json(ns, "addr"),
        "route": ip_json(ns, "route", "show", "table", "all"),
        "route6": ip_json(ns, "-6", "route", "show", "table", "all"),
    }


def link_exists(ns: str, ifname: str) -> bool:
    return run("ip", "-n", ns, "link", "show", "dev", ifname, check=False).returncode == 0


def assert_cleaned_up(ns: str, helper: Helper, default_before: Any) -> None:
    assert static_routes(ns) == set()
    assert ip_json(ns, "route", "show", "default") == default_before
    helper.close_tun_fd()  # ours was the last fd besides the helper's
    assert wait_link_gone(ns, helper.ifname)


def wait_link_gone(ns: str, ifname: str, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while link_exists(ns, ifname):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class RouteWatch:
    """`ip monitor route` in the namespace; :meth:`mark` returns the events since the last mark.

    A mark is a route the test adds itself and then waits to see, so no sleeps
    are needed to know that every earlier event has been read.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.n = 0
        self.proc = subprocess.Popen(
            ["ip", "-n", ns, "-o", "monitor", "route"], stdout=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        while True:  # until the monitor is surely listening
            if self._mark(timeout=0.5) is not None:
                break

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def _mark(self, timeout: float) -> list[str] | None:
        self.n += 1
        marker = f"198.18.250.{self.n}"
        run("ip", "-n", self.ns, "route", "add", f"{marker}/32", "dev", "up1")
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line.startswith(f"{marker} "):
                return seen
            seen.append(line)

    def mark(self) -> list[str]:
        events = self._mark(timeout=5)
        assert events is not None, "ip monitor stopped reporting"
        return [e for e in events if not e.startswith(("198.18.250.", "Deleted 198.18.250."))]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply(request: bytes) -> bytes:
    """The ICMP echo reply a peer behind the tunnel would send back."""
    ihl = (request[0] & 0x0F) * 4
    header, icmp = bytearray(request[:ihl]), bytearray(request[ihl:])
    header[12:16], header[16:20] = request[16:20], request[12:16]
    header[8] = 64
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    return bytes(header + icmp)


def read_ipv4_icmp(fd: int, dst: str, timeout: float = 5) -> bytes:
    """The first IPv4 ICMP packet to ``dst`` read from the tun (skipping IPv6 chatter)."""
    deadline = time.monotonic() + timeout
    want = socket.inet_aton(dst)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        packet = os.read(fd, 65536)
        if packet[0] >> 4 == 4 and packet[9] == 1 and packet[16:20] == want:
            return packet
    raise AssertionError(f"no ICMP packet to {dst} came out of the tun")


# -- tests -------------------------------------------------------------------------------


def test_helper_keeps_only_net_admin_and_names_the_tun(start: Any) -> None:
    leak_r, leak_w = os.pipe()
    helper = start(interface="sctest0", extra_fds=(leak_w,))
    os.close(leak_w)
    helper.client.hello(ipaddress.ip_address(VPN_GW))
    # The helper closed every inherited fd but its socket and 0-2: the pipe is at EOF.
    assert os.read(leak_r, 1) == b""
    os.close(leak_r)
    lines = Path(f"/proc/{helper.proc.pid}/status").read_text().splitlines()
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    net_admin = f"{1 << 12:016x}"
    assert status["Uid"].split() == [str(HELPER_UID)] * 4  # its own account, never root
    assert status["Gid"].split() == [str(HELPER_UID)] * 4
    assert status["Groups"].split() == [str(HELPER_UID)]
    assert status["CapEff"] == net_admin
    assert status["CapPrm"] == net_admin
    assert status["CapBnd"] == net_admin
    assert status["CapInh"] == "0" * 16
    assert status["CapAmb"] == "0" * 16
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # the serving stage loaded the start stage's filter
    cmdline = Path(f"/proc/{helper.proc.pid}/cmdline").read_bytes()
    assert cmdline.startswith(b"sepconnect: privhelper")
    ifname, ifindex, fd = helper.client.create_tun(1420)
    helper.tun_fd, helper.ifname = fd, ifname
    (link,) = ip_json(helper.ns, "link", "show", "dev", "sctest0")
    assert (ifname, ifindex, link["mtu"]) == ("sctest0", link["ifindex"], 1420)
    # Only the helper and we hold the device; it is not persistent.
    assert "persist on" not in run("ip", "-n", helper.ns, "-d", "link", "show", "sctest0").stdout
    # SIGINT (a ^C at the terminal) is ignored; the supervisor decides.
    helper.proc.send_signal(signal.SIGINT)
    helper.client.net_config(network_config(**SPLIT))
    assert helper.proc.poll() is None


def test_tun_fd_carries_packets_both_ways(start: Any) -> None:
    helper = start()
    ifname = helper.start_tun()
    helper.client.net_config(network_config(**SPLIT))
    ping = subprocess.Popen(
        ["ip", "netns", "exec", helper.ns, "ping", "-n", "-c", "1", "-W", "5", "198.19.0.9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        request = read_ipv4_icmp(helper.tun_fd, "198.19.0.9")
        assert request[12:16] == socket.inet_aton("198.18.10.2")  # from the tun's address
        assert request[20] == 8  # echo request
        os.write(helper.tun_fd, echo_reply(request))
        assert ping.wait(10) == 0, ping.stdout.read() if ping.stdout else ""
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
        if ping.stdout:
            ping.stdout.close()
    assert ifname.startswith("sepc")


def test_split_routes_are_exactly_what_was_asked(start: Any) -> None:
    helper = start()
    ifname = helper.start_tun()
    helper.client.net_config(network_config(**SPLIT))
    assert static_routes(helper.ns) == {
        ("198.18.32.0/20", ifname, None, 50),
        ("198.19.0.0/17", ifname, None, 50),
        ("2001:2:0:20::/64", ifname, None, 50),
        # excludes inside a tunnel route keep the original path …
        ("198.19.64.0/24", "up0", UPLINK_GW, 50),
        ("2001:2:0:20:1::/80", "up0", UPLINK_GW6, 50),
        # … 198.18.200.0/24 is not inside one, and no route covers the gateway: nothing.
    }
    (link,) = ip_json(helper.ns, "addr", "show", "dev", ifname)
    assert link["mtu"] == 1400
    assert "UP" in link["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["scope"] == "global"}
    assert addrs == {("198.18.10.2", 24), ("2001:2:0:10::2", 64)}
    (v6,) = [a for a in link["addr_info"] if a["local"] == "2001:2:0:10::2"]
    assert v6.get("nodad") is True
    assert not v6.get("tentative")


def test_default_route_mode_splits_and_pins_the_gateway(start: Any) -> None:
    helper = start()
    default_before = ip_json(helper.ns, "route", "show", "default")
    default6_before = ip_json(helper.ns, "-6", "route", "show", "default")
    ifname = helper.start_tun()
    helper.client.net_config(network_config(**FULL))
    assert static_routes(helper.ns) == {
        ("0.0.0.0/1", ifname, None, 50),
        ("128.0.0.0/1", ifname, None, 50),
        ("::/1", ifname, None, 50),
        ("8000::/1", ifname, None, 50),
        (VPN_GW, "up0", UPLINK_GW, 50),
    }
    assert ip_json(helper.ns, "route", "show", "default") == default_before
    assert ip_json(helper.ns, "-6", "route", "show", "default") == default6_before
    (to_gw,) = ip_json(helper.ns, "route", "get", VPN_GW)
    assert (to_gw["dev"], to_gw["gateway"]) == ("up0", UPLINK_GW)
    (elsewhere,) = ip_json(helper.ns, "route", "get", "198.19.7.7")
    assert elsewhere["dev"] == ifname
    # A new exclude now: the kernel's path is our tun, so its original path is the one
    # table main has without our routes (the host's default route).
    left_out = helper.client.net_config(network_config(**{**FULL, "exclude": ["198.18.77.0/24"]}))
    assert left_out == ()
    assert ("198.18.77.0/24", "up0", UPLINK_GW, 50) in static_routes(helper.ns)
    # Another gateway (F2): the one from hello is the only one; nothing moves.
    before = static_routes(helper.ns)
    with pytest.raises(HelperRefused, match="not the VPN server's address"):
        helper.client.net_config(network_config(**{**FULL, "gateway": "198.18.1.77"}))
    assert static_routes(helper.ns) == before
    assert (VPN_GW, "up0", UPLINK_GW, 50) in before
    helper.client.teardown()
    assert helper.wait() == 0
    assert_cleaned_up(helper.ns, helper, default_before)
    assert ip_json(helper.ns, "-6", "route", "show", "default") == default6_before


def test_identical_net_config_changes_nothing_and_changes_apply_only_the_diff(
    start: Any,
) -> None:
    helper = start()
    ifname = helper.start_tun()
    helper.client.net_config(network_config(**SPLIT))
    watch = RouteWatch(helper.ns)
    try:
        helper.client.net_config(network_config(**SPLIT))
        assert watch.mark() == []  # not a single route event
        changed = {**SPLIT, "routes": ["198.18.64.0/18", "198.19.0.0/17", "2001:2:0:20::/64"]}
        helper.client.net_config(network_config(**changed))
        events = watch.mark()
    finally:
        watch.close()
    assert sorted(events) == [
        f"198.18.64.0/18 dev {ifname} proto 157 scope link metric 50",
        f"Deleted 198.18.32.0/20 dev {ifname} proto 157 scope link metric 50",
    ]


def test_out_of_policy_and_kernel_refusals_change_nothing(start: Any) -> None:
    helper = start()
    ifname = helper.start_tun()
    helper.client.net_config(network_config(**SPLIT))
    before = snapshot(helper.ns)
    bad = [
        ({"routes": ["127.0.0.0/8"]}, "route 127.0.0.0/8: loopback is not allowed"),
        ({"ipv6": None}, "route 2001:2:0:20::/64: the tunnel has no IPv6 address"),
        ({"gateway": "198.18.10.9"}, f"gateway 198.18.10.9: not the VPN server's address {VPN_GW}"),
        ({"exclude": ["0.0.0.0/0"]}, "exclude 0.0.0.0/0: a /0 prefix is not allowed"),
        ({"mtu": 1279}, "mtu 1279: IPv6 needs at least 1280"),
    ]
    for changes, reason in bad:
        with pytest.raises(HelperRefused) as info:
            helper.client.net_config(network_config(**{**SPLIT, **changes}))
        assert info.value.reason.startswith(reason)
    assert snapshot(helper.ns) == before
    # The kernel refuses the last new route (someone else's has its dst and metric):
    # everything this request did first is rolled back.
    run("ip", "-n", helper.ns, "route", "add", "198.18.128.0/17", "dev", "up1", "metric", "50")
    before = snapshot(helper.ns)
    with pytest.raises(HelperRefused) as info:
        helper.client.net_config(
            network_config(
                **{
                    **SPLIT,
                    "mtu": 1380,
                    "ipv4": "198.18.11.2/24",
                    "routes": [*SPLIT["routes"], "198.18.16.0/20", "198.18.128.0/17"],
                }
            )
        )
    assert info.value.reason.endswith("File exists (nothing was changed)")
    assert "add route 198.18.128.0/17 oif" in info.value.reason
    assert snapshot(helper.ns) == before
    # Still serving, and the refused requests are in the audit log.
    helper.client.net_config(network_config(**SPLIT))
    results = [r["result"] for r in helper.records() if r["op"] == "net_config"]
    assert results == ["ok"] + ["refused"] * 6 + ["ok"]
    assert ifname


def test_a_configuration_too_large_for_the_script_is_refused(start: Any, tmp_path: Path) -> None:
    """--script: the largest configuration whose vpnc-script environment fits is applied;
    one byte more is refused, audited, and no script runs for it."""
    log = tmp_path / "reasons.log"
    script = tmp_path / "script"
    script.write_text(f'#!/bin/sh\necho "$reason" >> {log}\n')
    script.chmod(0o755)
    helper = start(script=script)
    ifname = helper.start_tun()
    largest = largest_script_config(ifname=ifname, vpnpid=os.getpid(), gateway=VPN_GW)
    assert largest.banner is not None
    one_more = dataclasses.replace(largest, banner=largest.banner + "x")
    with pytest.raises(HelperRefused) as info:
        helper.client.net_config(one_more)
    reason = (
        f"the vpnc-script environment for this configuration ({MAX_SCRIPT_ENV + 1} bytes) "
        f"exceeds the runner's limit of {MAX_SCRIPT_ENV}: too many routes, excludes or "
        "domains for --script"
    )
    assert info.value.reason == reason
    assert log.read_text().split() == ["pre-init"]
    helper.client.net_config(largest)
    assert log.read_text().split() == ["pre-init", "connect"]
    helper.client.teardown()
    assert helper.wait() == 0
    assert log.read_text().split() == ["pre-init", "connect", "disconnect"]
    records = [(r["result"], r["reason"]) for r in helper.records() if r["op"] == "net_config"]
    assert records == [("refused", reason), ("ok", "")]


@pytest.mark.parametrize("violation", ["garbage", "wrong_phase"])
def test_protocol_violation_ends_the_helper_with_cleanup(start: Any, violation: str) -> None:
    helper = start()
    default_before = ip_json(helper.ns, "route", "show", "default")
    helper.start_tun()
    helper.client.net_config(network_config(**FULL))
    assert static_routes(helper.ns)
    if violation == "garbage":
        helper.sock.send(b"\xc1 this is not msgpack")
    else:
        with pytest.raises(PeerClosed):
            helper.client.create_tun(1400)  # a second CreateTun
    assert helper.wait() == 1
    assert_cleaned_up(helper.ns, helper, default_before)
    last = [r for r in helper.records() if r["result"] == "fatal"]
    assert len(last) == 1
    assert last[0]["reason"].startswith("protocol violation")
    assert last[0]["peer_uid"] == 0


def test_supervisor_going_away_ends_the_helper_with_cleanup(start: Any) -> None:
    helper = start()
    default_before = ip_json(helper.ns, "route", "show", "default")
    helper.start_tun()
    helper.client.net_config(network_config(**FULL))
    helper.sock.close()
    assert helper.wait() == 0
    assert_cleaned_up(helper.ns, helper, default_before)
    assert any(r["reason"] == "supervisor went away" for r in helper.records())


def test_sigterm_ends_the_helper_with_cleanup(start: Any) -> None:
    helper = start()
    default_before = ip_json(helper.ns, "route", "show", "default")
    helper.start_tun()
    helper.client.net_config(network_config(**FULL))
    helper.proc.send_signal(signal.SIGTERM)
    assert helper.wait() == 0
    assert_cleaned_up(helper.ns, helper, default_before)
    assert [r["op"] for r in helper.records()][-3:] == ["sigterm", "cleanup", "exit"]


def test_audit_log_has_one_line_per_request(start: Any) -> None:
    helper = start()
    helper.start_tun()
    helper.client.net_config(network_config(**SPLIT))
    helper.client.net_config(network_config(**FULL))
    helper.client.teardown()
    assert helper.wait() == 0
    requests = [r for r in helper.records() if r["op"] not in ("start", "cleanup", "exit")]
    assert [(r["op"], r["result"]) for r in requests] == [
        ("hello", "ok"),
        ("create_tun", "ok"),
        ("net_config", "ok"),
        ("net_config", "ok"),
        ("teardown", "ok"),
    ]
    for record in requests:
        assert (record["peer_uid"], record["peer_gid"]) == (0, 0)
        assert record["peer_pid"] == os.getpid()
        assert record["helper_pid"] == helper.proc.pid
    assert requests[3]["args"]["net"]["routes"] == ["0.0.0.0/0", "::/0"]
    assert os.stat(helper.audit_path).st_mode & 0o777 == 0o600


def test_sender_uid_is_checked_with_scm_credentials(start: Any) -> None:
    helper = start(peer_uid=65534)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the supervisor, as it runs: uid 65534, no root
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            client = HelperClient(helper.sock)
            client.hello(ipaddress.ip_address(VPN_GW))
            ifname, _, fd = client.create_tun(1400)
            os.write(w, ifname.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as child_out:
        ifname = child_out.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    assert ifname.startswith("sepc")
    helper.ifname = ifname
    # Root, but not the peer uid: a protocol violation.
    with pytest.raises((PeerClosed, WireError)):
        HelperClient(helper.sock).net_config(network_config(**SPLIT))
    assert helper.wait() == 1
    records = [r for r in helper.records() if r["op"] in ("hello", "create_tun", "net_config")]
    assert [(r["op"], r["peer_uid"], r["result"]) for r in records] == [
        ("hello", 65534, "ok"),
        ("create_tun", 65534, "ok"),
        ("net_config", 0, "fatal"),
    ]
    assert records[-1]["reason"] == "sender has uid 0, expected uid 65534"
    assert wait_link_gone(helper.ns, ifname)  # the child's fd copy went with the child
