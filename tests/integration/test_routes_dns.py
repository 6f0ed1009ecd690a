"""Routes, DNS backends, fail-closed and crash recovery with the real helper (issue #7).

Each test builds a throwaway network namespace ``sc-<hex>-rd`` with a veth uplink
(up0 198.18.1.2/24, 2001:2:0:1::2/64, default routes via .1/::1) and a *holder*
process that lives in that namespace and in a private mount namespace of its own:
a tmpfs on /run (so the helper's state directory, /run/dbus and /run/vpnc are
private) and a file of the test bind-mounted on /etc/resolv.conf. Helpers (and, for
the resolved test, a D-Bus system bus and systemd-resolved unpacked from Debian's
package by scripts/bootstrap.sh) run inside it with ``nsenter``. The host's
network, /run and /etc/resolv.conf are never touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netconfigs import network_config

from sepconnect.ipc.wire import socketpair
from sepconnect.process.accounts import HELPER_FALLBACK_UID as HELPER_UID
from sepconnect.supervisor.helper_client import HelperClient, HelperRefused

pytestmark = [pytest.mark.root, pytest.mark.netns]

VENV = os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv")
RESOLVED = Path(os.environ.get("SEPCONNECT_TEST_RESOLVED", "/opt/sepconnect-test/systemd-resolved"))
UPLINK_GW, UPLINK_GW6 = "198.18.1.1", "2001:2:0:1::1"
VPN_GW = "198.19.200.7"
ORIGINAL_RESOLV = b"# the host's own\nnameserver 198.18.1.53\nsearch home.arpa\noptions edns0\n"
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=/run/dbus/system_bus_socket</listen>
<auth>EXTERNAL</auth><policy context="default"><allow user="*"/><allow own="*"/>
<allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
"""
SPLIT: dict[str, Any] = {
    "mtu": 1400,
    "ipv4": "198.18.10.2/24",
    "ipv6": "2001:2:0:10::2/64",
    "routes": ["198.18.32.0/20", "2001:2:0:20::/64"],
    "exclude": [],
    "gateway": VPN_GW,
    "dns": ["198.18.32.53", "2001:2:0:20::53"],
    "domains": ["corp.example"],
    "split_dns": ["intra.example"],
    "dns_default": False,
}
FULL: dict[str, Any] = {
    **SPLIT,
    "routes": ["0.0.0.0/0", "::/0"],
    "exclude": ["198.18.77.0/24"],
    "split_dns": [],
    "dns_default": True,
}


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


REPO = Path(__file__).resolve().parents[2]
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow", "login.defs")


def install_step(tmp: Path) -> Path:
    """The install step (scripts/install-system.sh) into a copy of this host's account
    files, after the account Debian's systemd-resolved package creates; returns the
    prefix (its etc/ is bind-mounted in the box, the host's /etc is never written)."""
    prefix = tmp / "prefix"
    (prefix / "etc").mkdir(parents=True)
    for name in ACCOUNT_FILES:
        shutil.copy2(Path("/etc", name), prefix / "etc" / name)
    run("useradd", "--prefix", str(prefix), "--system", "--user-group", "--no-create-home",
        "--home-dir", "/run/systemd", "--shell", "/usr/sbin/nologin",
        "systemd-resolve")  # fmt: skip
    venv = os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv")
    run(str(REPO / "scripts" / "install-system.sh"), "--prefix", str(prefix), "--venv", venv)
    return prefix


def account(prefix: Path, name: str) -> tuple[int, int]:
    for line in (prefix / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise KeyError(name)


class Box:
    """A netns + private mount namespace, held open by one process.

    With ``resolved``, it also has a D-Bus system bus of its own, polkitd and
    systemd-resolved (as its own account, the action owner its polkit actions name), and
    this host's accounts plus those of the install step; its polkit rule only with
    ``polkit_rule``."""

    def __init__(self, tmp: Path, resolved: bool = False, polkit_rule: bool = True) -> None:
        self.tmp = tmp
        self.helper_uid = self.helper_gid = HELPER_UID  # no account: the fixed uid
        self.ns = f"sc-{secrets.token_hex(3)}-rd"
        self.resolv = tmp / "resolv.conf"
        self.resolv.write_bytes(ORIGINAL_RESOLV)
        run("ip", "netns", "add", self.ns)
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
            run("ip", "-n", self.ns, *argv)
        setup = [
            "set -e",
            "mount -t tmpfs -o mode=755 tmpfs /run",
            f"mount --bind {self.resolv} /etc/resolv.conf",
        ]
        if resolved:
            (tmp / "bus.conf").write_text(BUS_CONF)
            self.prefix = install_step(tmp)
            self.helper_uid, self.helper_gid = account(self.prefix, "sepconnect-helper")
            resolve_uid, resolve_gid = account(self.prefix, "systemd-resolve")
            rules = self.prefix / "etc" / "polkit-1" / "rules.d"
            if not polkit_rule:
                (rules / "50-sepconnect-helper.rules").unlink()
            actions = tmp / "actions"  # resolved's actions and systemd's (manage-units)
            actions.mkdir()
            for policy in (
                RESOLVED / "usr/share/polkit-1/actions/org.freedesktop.resolve1.policy",
                Path("/usr/share/polkit-1/actions/org.freedesktop.systemd1.policy"),
            ):
                shutil.copy2(policy, actions / policy.name)
            setup += [
                f"mount --bind {self.prefix}/etc/passwd /etc/passwd",
                f"mount --bind {self.prefix}/etc/group /etc/group",
                f"mount --bind {rules} /etc/polkit-1/rules.d",
                f"mount --bind {actions} /usr/share/polkit-1/actions",
                "mkdir -p /run/dbus /run/systemd/resolve",
                f"chown {resolve_uid}:{resolve_gid} /run/systemd/resolve",
                f"dbus-daemon --config-file={tmp / 'bus.conf'} --fork",
                f"/usr/lib/polkit-1/polkitd --no-debug >{tmp / 'polkitd.log'} 2>&1 &",
                f"setpriv --reuid={resolve_uid} --regid={resolve_gid} --clear-groups "
                "--inh-caps=+net_bind_service,+net_raw,+setpcap "
                "--ambient-caps=+net_bind_service,+net_raw,+setpcap "
                f"{RESOLVED}/lib/systemd/systemd-resolved >{tmp / 'resolved.log'} 2>&1 &",
            ]
        setup += ["echo ready", "exec sleep 600"]
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private",
             "sh", "-c", "\n".join(setup)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert self.holder.stdout is not None
            assert self.holder.stdout.readline().strip() == "ready"
            services = ("org.freedesktop.resolve1", "org.freedesktop.PolicyKit1")
            for name in services if resolved else ():
                self.wait_for(lambda n=name: "true" in self.sh(
                    "busctl call org.freedesktop.DBus /org/freedesktop/DBus "
                    f"org.freedesktop.DBus NameHasOwner s {n} || true"
                ))  # fmt: skip
        except BaseException:
            self.close()
            raise

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--"]

    def sh(self, script: str) -> str:
        return run(*self.enter(), "sh", "-c", script).stdout

    def ip(self, *argv: str) -> Any:
        return json.loads(run("ip", "-n", self.ns, "-j", *argv).stdout or "[]")

    def routes(self, *extra: str) -> set[tuple[str, str, str | None, int, str]]:
        out = set()
        for family in ("-4", "-6"):
            for r in self.ip(family, "route", "show", *extra):
                if r.get("protocol") in ("kernel", "ra") or r["dst"].startswith("fe80"):
                    continue
                out.add(
                    (
                        r["dst"],
                        r["dev"],
                        r.get("gateway"),
                        r.get("metric", 0),
                        r.get("protocol", "boot"),
                    )
                )
        return out

    @staticmethod
    def wait_for(probe: Any, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError("timed out")
            time.sleep(0.05)

    def close(self) -> None:
        pids = run("ip", "netns", "pids", self.ns, check=False).stdout.split()
        for pid in pids:  # everything in this throwaway namespace is ours
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        self.holder.wait(10)
        if self.holder.stdout:
            self.holder.stdout.close()
        run("ip", "netns", "delete", self.ns, check=False)


class Helper:
    def __init__(self, box: Box, *args: str) -> None:
        self.box = box
        self.audit_path = box.tmp / f"audit-{time.monotonic_ns()}.jsonl"
        self.stderr_path = box.tmp / f"helper-{time.monotonic_ns()}.stderr"
        self.sock, theirs = socketpair()
        argv = [*box.enter(), sys.executable, "-I", "-m", "sepconnect.privhelper",
                "--fd", str(theirs.fileno()), "--peer-uid", "0",
                "--uid", str(box.helper_uid), "--gid", str(box.helper_gid),
                "--audit-log", str(self.audit_path), "--state-dir", "/run/sepconnect-helper",
                *args]  # fmt: skip
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        theirs.close()
        self.client = HelperClient(self.sock)
        self.ifname = ""
        self.ifindex = 0
        self.tun_fd: int | None = None

    def up(self, config: dict[str, Any]) -> str:
        self.client.hello(ipaddress.ip_address(config["gateway"]))
        self.ifname, self.ifindex, self.tun_fd = self.client.create_tun(config["mtu"])
        self.client.net_config(network_config(**config))
        return self.ifname

    def records(self, op: str | None = None) -> list[dict[str, Any]]:
        lines = self.audit_path.read_text().splitlines()
        return [r for r in map(json.loads, lines) if op is None or r["op"] == op]

    def stop(self) -> int:
        self.client.teardown()
        return self.close()

    def kill(self) -> None:
        self.proc.kill()  # by pid: the helper this test started
        self.proc.wait(10)
        self.close()

    def close(self) -> int:
        status = self.proc.wait(30)
        if self.tun_fd is not None:
            os.close(self.tun_fd)
            self.tun_fd = None
        self.sock.close()
        err = self.stderr_path.read_text(errors="replace")
        assert "Traceback" not in err, err
        return status


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    os.chmod(tmp_path, 0o755)
    b = Box(tmp_path)
    yield b
    b.close()
    assert b.resolv.read_bytes() == ORIGINAL_RESOLV  # whatever the test did


def ours(box: Box) -> set[tuple[str, str, str | None, int]]:
    return {(d, dev, gw, m) for d, dev, gw, m, p in box.routes() if p == "157"}


# --------------------------------------------------------------------------- routes


def test_ipv6_only_tunnel_split_and_full(box: Box) -> None:
    helper = Helper(box)
    v6only = {**SPLIT, "ipv4": None, "routes": ["2001:2:0:20::/64"], "dns": [], "domains": [],
              "split_dns": [], "gateway": "2001:2:0:99::7"}  # fmt: skip
    ifname = helper.up(v6only)
    assert ours(box) == {("2001:2:0:20::/64", ifname, None, 50)}
    link = box.ip("addr", "show", "dev", ifname)[0]
    assert [a["family"] for a in link["addr_info"] if a["scope"] == "global"] == ["inet6"]
    # Full tunnel, IPv6 only: the halves, and the IPv6 gateway pinned to its old path.
    full6 = {**v6only, "routes": ["::/0"]}
    helper.client.net_config(network_config(**full6))
    assert ours(box) == {
        ("::/1", ifname, None, 50),
        ("8000::/1", ifname, None, 50),
        ("2001:2:0:99::7", "up0", UPLINK_GW6, 50),
    }
    assert helper.stop() == 0
    assert ours(box) == set()


def test_no_routes_sets_addresses_only(box: Box) -> None:
    before = box.routes()
    helper = Helper(box, "--no-routes")
    ifname = helper.up({**FULL, "dns": [], "domains": []})
    link = box.ip("addr", "show", "dev", ifname)[0]
    assert {a["local"] for a in link["addr_info"] if a["scope"] == "global"} == {
        "198.18.10.2",
        "2001:2:0:10::2",
    }
    assert ours(box) == set()
    assert {r for r in box.routes() if r[1] != ifname} == before
    assert helper.stop() == 0


def test_a_competing_route_is_left_alone_and_the_supervisors_reader_finds_it(box: Box) -> None:
    """The helper installs ours next to the host's metric-10 route and never removes
    that one. The supervisor's ``conflict`` record (supervisor/routes.py, the lab's
    connect in test_connect.py) comes from its netlink dump of this very table, read
    here from inside the namespace with the helper's routes in place."""
    run("ip", "-n", box.ns, "route", "add", "198.18.32.0/20", "via", UPLINK_GW, "metric", "10")
    helper = Helper(box)
    ifname = helper.up({**SPLIT, "dns": [], "domains": [], "split_dns": []})
    assert ("198.18.32.0/20", ifname, None, 50) in ours(box)
    assert helper.records("conflict") == []  # the helper's trail: requests and results
    read = (
        "from sepconnect.supervisor.routes import competing, ours, read_table\n"
        "table = read_table([4, 6])\n"
        f"print('\\n'.join(competing(ours(table, {helper.ifindex}), {helper.ifindex}, table)))\n"
    )
    uid = str(HELPER_UID)  # an unprivileged uid: the dump needs no privilege
    drop = ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups")
    found = run(*box.enter(), *drop, sys.executable, "-c", read).stdout.splitlines()
    (uplink,) = box.ip("link", "show", "up0")
    assert found == [
        "198.18.32.0/20: a route with a lower or equal metric than ours (50) exists and may "
        f"win: 198.18.32.0/20 metric 10 oif {uplink['ifindex']}"
    ]
    assert helper.stop() == 0
    assert ("198.18.32.0/20", "up0", UPLINK_GW, 10, "boot") in box.routes()


# --------------------------------------------------------------------------- DNS: file


def test_resolv_conf_backend_and_crash_recovery(box: Box) -> None:
    helper = Helper(box, "--dns-backend", "file")
    ifname = helper.up(FULL)
    # resolv.conf is root's: the opt-in root runner rewrites it, never the helper.
    (start,) = helper.records("start")
    assert status(start["args"]["root_runner"])["Uid"].split() == ["0"] * 4
    assert status(helper.proc.pid)["Uid"].split() == [str(HELPER_UID)] * 4
    text = box.resolv.read_text()
    assert text.splitlines()[1:] == [
        "nameserver 198.18.32.53",
        "nameserver 2001:2:0:20::53",
        "nameserver 198.18.1.53",
        "search corp.example home.arpa",
        "options edns0",
    ]
    assert ("198.18.77.0/24", "up0", UPLINK_GW, 50) in ours(box)  # the exclude's bypass
    assert helper.stop() == 0
    assert box.resolv.read_bytes() == ORIGINAL_RESOLV  # byte for byte
    # A crash of the helper: its bypass routes stay behind; the root runner, which
    # rewrote resolv.conf, sees its channel close and puts the original back at once.
    crashed = Helper(box, "--dns-backend", "file")
    ifname = crashed.up(FULL)
    assert box.resolv.read_bytes() != ORIGINAL_RESOLV
    crashed.kill()
    box.wait_for(lambda: box.resolv.read_bytes() == ORIGINAL_RESOLV)
    box.wait_for(lambda: run("ip", "-n", box.ns, "link", "show", ifname, check=False).returncode)
    assert {r[0] for r in ours(box)} == {VPN_GW, "198.18.77.0/24"}
    # Root runner and helper killed alike (the root runner first): both leave their
    # state files, and the next start undoes routes and resolv.conf and says so.
    crashed = Helper(box, "--dns-backend", "file")
    ifname = crashed.up(FULL)
    root_runner = crashed.records("start")[0]["args"]["root_runner"]
    os.kill(root_runner, signal.SIGKILL)  # the root runner this test's helper started
    crashed.kill()
    box.wait_for(lambda: run("ip", "-n", box.ns, "link", "show", ifname, check=False).returncode)
    assert {r[0] for r in ours(box)} == {VPN_GW, "198.18.77.0/24"}
    assert box.resolv.read_bytes() != ORIGINAL_RESOLV
    fresh = Helper(box)  # no DNS option of its own: the root runner comes to recover only
    fresh.client.hello(ipaddress.ip_address(VPN_GW))
    assert ours(box) == set()
    assert box.resolv.read_bytes() == ORIGINAL_RESOLV
    reasons = [r["reason"] for r in fresh.records("recover")]
    assert any(r.startswith("deleted stale route 198.19.200.7/32") for r in reasons), reasons
    assert any("198.18.77.0/24" in r for r in reasons), reasons
    assert any(r.startswith("restored /etc/resolv.conf") for r in reasons), reasons
    assert f"helper-{crashed.proc.pid}.json" not in box.sh("ls /run/sepconnect-helper")
    assert fresh.stop() == 0
    assert box.sh("ls -A /run/sepconnect-helper /run/sepconnect-helper-root").split() == [
        "/run/sepconnect-helper:",
        "/run/sepconnect-helper-root:",
    ]


# --------------------------------------------------------------------------- DNS: resolved


@pytest.mark.skipif(
    not (RESOLVED / "lib/systemd/systemd-resolved").exists(),
    reason="systemd-resolved not unpacked (scripts/bootstrap.sh does it)",
)
def test_systemd_resolved_backend(tmp_path: Path) -> None:
    """The helper, as its own account with CAP_NET_ADMIN alone, sets the tun's DNS in
    systemd-resolved: polkitd authorizes it by the install step's rule (resolved trusts
    uid 0 or polkit only, never a capability)."""
    os.chmod(tmp_path, 0o755)
    box = Box(tmp_path, resolved=True)
    try:
        resolvectl = f"{RESOLVED}/usr/bin/resolvectl"
        helper = Helper(box)  # --dns-backend defaults to none in the helper: ask for auto
        helper.client.hello(ipaddress.ip_address(VPN_GW))
        helper.client.teardown()
        helper.close()
        helper = Helper(box, "--dns-backend", "auto")
        ifname = helper.up(SPLIT)
        (start,) = helper.records("start")
        assert start["args"]["dns_backend"] == "resolved"
        assert start["args"]["uid"] == box.helper_uid != 0
        assert start["args"]["root_runner"] is None
        status = box.sh(f"{resolvectl} status {ifname}")
        assert "198.18.32.53" in status, status
        assert "2001:2:0:20::53" in status, status
        assert "corp.example" in status, status
        assert "~intra.example" in status, status
        assert "-DefaultRoute" in status, status
        # Full-tunnel DNS: the link takes every name.
        helper.client.net_config(network_config(**FULL))
        status = box.sh(f"{resolvectl} status {ifname}")
        assert "+DefaultRoute" in status, status
        assert "~." in status, status
        assert "~intra.example" not in status
        # What polkit grants the real helper process: resolved's link DNS actions, and
        # not what would get it a privileged process from systemd (issue 13, F6).
        for action, granted in (
            ("org.freedesktop.resolve1.set-dns-servers", True),
            ("org.freedesktop.resolve1.revert", True),
            ("org.freedesktop.resolve1.set-llmnr", False),
            ("org.freedesktop.systemd1.manage-units", False),
        ):
            check = run(*box.enter(), "pkcheck", "--action-id", action,
                        "--process", str(helper.proc.pid), check=False)  # fmt: skip
            assert (check.returncode == 0) is granted, (action, check.stdout, check.stderr)
        assert helper.stop() == 0
        # The link is gone, and resolved forgot it.
        assert ifname not in box.sh(f"{resolvectl} status")
        assert box.resolv.read_bytes() == ORIGINAL_RESOLV
    finally:
        box.close()


@pytest.mark.skipif(
    not (RESOLVED / "lib/systemd/systemd-resolved").exists(),
    reason="systemd-resolved not unpacked (scripts/bootstrap.sh does it)",
)
def test_without_the_polkit_rule_resolved_refuses_the_helper(tmp_path: Path) -> None:
    """No rule: CAP_NET_ADMIN is not enough for resolved, and `auto` does not pick it."""
    os.chmod(tmp_path, 0o755)
    box = Box(tmp_path, resolved=True, polkit_rule=False)
    try:
        helper = Helper(box, "--dns-backend", "resolved")
        with pytest.raises(HelperRefused, match="SetLinkDNS: .*polkit rule"):
            helper.up(SPLIT)
        assert helper.stop() == 0
        auto = Helper(box, "--dns-backend", "auto")
        auto.client.hello(ipaddress.ip_address(VPN_GW))
        assert auto.records("start")[0]["args"]["dns_backend"] == "file"  # the root runner's
        assert auto.stop() == 0
    finally:
        box.close()


# --------------------------------------------------------------------------- fail-closed


def nft_tables(box: Box) -> list[str]:
    out = json.loads(box.sh("nft -j list tables"))
    return [t["table"]["name"] for t in out["nftables"] if "table" in t]


def test_fail_closed_keeps_public_excludes_out_unless_allowed(box: Box) -> None:
    """Issue 13, F3: public excludes would open holes in the kill switch (four /2 ones,
    pass-all; each of those also overlaps a forbidden range, refused by the value rules:
    these public /8s overlap none)."""
    public = ["11.0.0.0/8", "12.0.0.0/8"]
    helper = Helper(box, "--fail-closed")
    helper.up({**FULL, "dns": [], "domains": [], "exclude": ["198.18.77.0/24"]})
    table = f"sepconnect_{helper.proc.pid}"
    before = box.sh(f"nft list table inet {table}")
    with pytest.raises(HelperRefused, match="only private space .* --allow-exclude 11.0.0.0/8"):
        helper.client.net_config(network_config(**{**FULL, "dns": [], "domains": [],
                                                     "exclude": public}))  # fmt: skip
    assert box.sh(f"nft list table inet {table}") == before  # the kill switch is unchanged
    # Private space may be excluded (root's --allow-exclude is unit-tested: the lab
    # addresses nothing outside 198.18.0.0/15).
    helper.client.net_config(network_config(**{**FULL, "dns": [], "domains": [],
                                                 "exclude": ["198.18.78.0/24"]}))  # fmt: skip
    assert "198.18.78.0/24" in box.sh(f"nft list table inet {table}")
    assert helper.stop() == 0


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_fail_closed_and_worker_restarts(box: Box) -> None:
    ping = ["ping", "-n", "-c", "1", "-W", "1"]
    helper = Helper(box, "--fail-closed")
    ifname = helper.up({**FULL, "dns": [], "domains": []})
    table = f"sepconnect_{helper.proc.pid}"
    assert nft_tables(box) == [table]
    # nftables needs CAP_NET_ADMIN alone: its runner is the helper's uid with that one
    # capability (ambient, so that nft has it), never root.
    (start,) = helper.records("start")
    assert start["args"]["root_runner"] is None
    runner = status(start["args"]["nft_runner"])
    assert runner["Name"] == "sepconnect: nft"  # comm: the title's first 15 bytes
    assert runner["Uid"].split() == [str(HELPER_UID)] * 4
    for caps in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(runner[caps], 16) == 1 << 12, (caps, runner[caps])
    assert runner["NoNewPrivs"] == "1"
    rules = box.sh(f"nft list table inet {table}")
    assert f'oifname "{ifname}" accept' in rules
    assert "198.19.200.7" in rules

    # What really leaves through the uplink is counted after the output hook.
    box.sh(
        "nft add table inet sctest && nft add chain inet sctest post "
        "'{ type filter hook postrouting priority 100; }' && nft add rule inet sctest post "
        "oifname up0 ip daddr '{ 198.19.7.7, 198.18.40.9 }' counter"
    )

    def leaked() -> int:
        rules = json.loads(box.sh("nft -j list chain inet sctest post"))["nftables"]
        return sum(
            e["counter"]["packets"]
            for r in rules
            if "rule" in r
            for e in r["rule"]["expr"]
            if "counter" in e
        )

    # Nobody reads the tun (as while a worker is being replaced): a packet for the
    # tunnel waits in the tun's queue and goes nowhere else.
    run(*box.enter(), *ping, "198.19.7.7", check=False)
    assert helper.tun_fd is not None
    os.set_blocking(helper.tun_fd, False)
    queued = []
    with contextlib.suppress(BlockingIOError):
        while True:
            queued.append(os.read(helper.tun_fd, 65536))
    assert any(p[0] >> 4 == 4 and p[16:20] == bytes([198, 19, 7, 7]) for p in queued), queued
    # Traffic around the tunnel (a more specific route via the uplink) is refused at
    # once by the table, and nothing leaves.
    run("ip", "-n", box.ns, "route", "add", "198.18.40.0/24", "via", UPLINK_GW, "metric", "1")
    result = run(*box.enter(), *ping, "198.18.40.9", check=False)
    assert result.returncode != 0
    assert "prohibited" in result.stdout + result.stderr or "not permitted" in result.stderr
    assert leaked() == 0
    box.sh("nft delete table inet sctest")
    # The gateway itself stays reachable (ARP/ND only here: no peer answers).
    assert helper.stop() == 0
    assert nft_tables(box) == []


def test_fail_closed_table_outlives_a_crash_until_the_next_start(box: Box) -> None:
    crashed = Helper(box, "--fail-closed")
    crashed.up({**FULL, "dns": [], "domains": []})
    table = f"sepconnect_{crashed.proc.pid}"
    crashed.kill()
    assert nft_tables(box) == [table]  # fail closed, even now
    fresh = Helper(box)
    fresh.client.hello(ipaddress.ip_address(VPN_GW))
    assert nft_tables(box) == []
    assert any(
        f"deleted fail-closed table {table}" in r["reason"] for r in fresh.records("recover")
    )
    assert fresh.stop() == 0


def test_end_to_end_dns_in_the_lab_client_only(lab_factory: Any) -> None:
    """`sepconnect connect --dns-backend file` in the lab: the client namespace's own
    resolv.conf (ip netns exec's /etc/netns bind mount) changes; the host's never."""
    from lab import NETNS_ETC, OcservOptions

    host_before = Path("/etc/resolv.conf").read_bytes()
    lab = lab_factory(OcservOptions(dns=("198.18.2.53",), extra=("default-domain = corp.example",)))
    client_conf = Path(NETNS_ETC, lab.client_ns, "resolv.conf")
    original = client_conf.read_bytes()
    audit = Path(lab.workdir, "audit.jsonl")
    proc = lab.popen_in(
        lab.client_ns, f"{VENV}/bin/sepconnect", "connect", "--passwd-on-stdin", "--user", "test",
        "--audit-log", str(audit), "--servercert", lab.server_cert_pin, "--dns-backend", "file",
        "--session-log", str(Path(lab.workdir, "session.jsonl")),
        "--control-socket", str(Path(lab.workdir, "ctl", "control.sock")),
        "--state-dir", str(Path(lab.workdir, "state")), lab.url,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"test123\n")
    proc.stdin.close()
    proc.stdin = None
    lab.wait_for(
        "resolv.conf to be rewritten",
        lambda: b"nameserver 198.18.2.53" in client_conf.read_bytes() or None,
        20,
    )
    assert b"search corp.example" in client_conf.read_bytes()
    assert Path("/etc/resolv.conf").read_bytes() == host_before
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert client_conf.read_bytes() == original
    assert Path("/etc/resolv.conf").read_bytes() == host_before
