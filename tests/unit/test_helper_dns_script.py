"""Pure parts of issue #7 without root: DNS values, resolver texts, the vpnc-script
environment (including hostile values), the fail-closed ruleset, the state file and
the supervisor's DNS policy."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from netconfigs import largest_script_config, network_config

from sepconnect.ipc.helper_messages import NetConfig
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.routing import routing_policy
from sepconnect.ipc.runner_messages import MAX_SCRIPT_ENV, Ran, RunScript, SetDns
from sepconnect.ipc.runner_messages import ROOT_REQUESTS as RUNNER_REQUESTS
from sepconnect.ipc.script_env import check_env
from sepconnect.ipc.wire import WireError
from sepconnect.privhelper import dns, firewall, script
from sepconnect.privhelper.audit import Audit
from sepconnect.privhelper.network import Options, Router
from sepconnect.privhelper.options_helper import OptionsHelper
from sepconnect.privhelper.policy import Refusal, check_domain, check_net_config
from sepconnect.privhelper.tun import Tun
from sepconnect.process import statedir
from sepconnect.process import statefile as state
from sepconnect.process.runner import RunnerClient
from sepconnect.rootrunner import dns as root_dns
from sepconnect.rootrunner.script import check_script
from sepconnect.supervisor.helper_client import REQUESTS

HOSTILE = [
    "corp.example\nnameserver 6.6.6.6",
    "$(touch /tmp/pwned).example",
    "`id`.example",
    "a b.example",
    "a;b.example",
    "x" * 64 + ".example",
    ("abc." * 64)[:254],
    "under_score.example",
    "-lead.example",
    "trail-.example",
    "",
    ".",
    "example.123",
]

# Domains as a server might send them: the helper canonicalises (the codec would refuse these).
NC = dataclasses.replace(
    network_config(
        routes=["198.18.2.0/24", "::/0"],
        exclude=["198.18.3.0/24"],
        dns=["198.18.2.53", "2001:2:0:2::53", "198.18.2.53"],
        split_dns=["intra.example"],
        banner="Welcome $(touch /tmp/pwned)\n`id`; rm -rf /",
        idle_timeout=1200,
    ),
    domains=("Corp.Example.", "lab.test"),
)


def nc(**changes: object) -> NetworkConfig:
    """NC with ``changes``; addresses and prefixes given as text are parsed."""
    parsed: dict[str, object] = {}
    for name, value in changes.items():
        if name in ("dns",) and isinstance(value, tuple):
            value = tuple(ipaddress.ip_address(v) for v in value)
        elif name in ("routes", "exclude") and isinstance(value, tuple):
            value = tuple(ipaddress.ip_network(v) for v in value)
        parsed[name] = value
    return dataclasses.replace(NC, **parsed)  # type: ignore[arg-type]


def test_domains_are_strict_host_names() -> None:
    assert check_domain("Corp.Example.", "domain") == "corp.example"
    assert check_domain("a-b.c0.example", "domain") == "a-b.c0.example"
    for text in HOSTILE:
        with pytest.raises(Refusal, match="not a valid domain name"):
            check_domain(text, "domain")


def test_net_config_dns_values() -> None:
    wanted = check_net_config(NC)
    assert [str(a) for a in wanted.dns] == ["198.18.2.53", "2001:2:0:2::53"]
    assert wanted.domains == ("corp.example", "lab.test")
    assert wanted.split_dns == ("intra.example",)
    assert wanted.dns_default is False
    bad = [
        ({"dns": ("127.0.0.1",)}, "dns 127.0.0.1: loopback"),
        ({"ipv6": None, "routes": ("198.18.2.0/24",)}, "dns 2001:2:0:2::53: the tunnel has no"),
        ({"dns": (), "domains": ("a.example",)}, "domains without DNS servers"),
        ({"split_dns": ("bad_name.example",)}, "split-dns domain 'bad_name.example'"),
    ]
    for changes, reason in bad:
        with pytest.raises(Refusal, match=reason.replace("(", r"\(")):
            check_net_config(nc(**changes))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("domains", ("corp.example\nnameserver 6.6.6.6",)),
        ("domains", ("$(reboot).example",)),
        ("split_dns", ("a b",)),
        ("banner", "clear\x1b[2J"),
        ("banner", "x" * 2001),
        ("dns", ("198.18.2.53; rm",)),
    ],
)
def test_hostile_values_do_not_even_decode(field: str, value: object) -> None:
    net = dataclasses.replace(NC, **{field: value})  # type: ignore[arg-type]
    data = REQUESTS.encode(NetConfig(seq=1, net=net))
    with pytest.raises(WireError):
        REQUESTS.decode_untrusted(data)


def env_of(wanted: NetworkConfig, reason: str = "connect") -> dict[str, str]:
    items = script.script_env(reason, ifname="sepc0", vpnpid=4242, log_level=1, wanted=wanted)
    blob = script.encode_env(items)
    checked = check_env(blob)  # what the runner accepts is exactly what was built
    assert checked == dict(items)
    return checked


def test_script_env_split_tunnel() -> None:
    env = env_of(check_net_config(NC))
    assert env["reason"] == "connect"
    assert env["TUNDEV"] == "sepc0"
    assert env["VPNGATEWAY"] == "198.18.1.1"
    assert env["VPNPID"] == "4242"
    assert env["INTERNAL_IP4_ADDRESS"] == "198.18.100.2"
    assert env["INTERNAL_IP4_NETMASK"] == "255.255.255.0"
    assert env["INTERNAL_IP4_NETMASKLEN"] == "24"
    assert env["INTERNAL_IP4_NETADDR"] == "198.18.100.0"
    assert env["INTERNAL_IP4_MTU"] == "1400"
    assert env["INTERNAL_IP6_ADDRESS"] == "2001:2:0:100::2"
    assert env["INTERNAL_IP6_NETMASK"] == "2001:2:0:100::2/64"
    assert env["INTERNAL_IP4_DNS"] == "198.18.2.53 2001:2:0:2::53"
    assert env["CISCO_DEF_DOMAIN"] == "corp.example lab.test"
    assert env["CISCO_SPLIT_DNS"] == "intra.example"
    assert env["IDLE_TIMEOUT"] == "1200"
    # IPv4 is split: one include; IPv6 is routed whole: no IPv6 include list.
    assert env["CISCO_SPLIT_INC"] == "1"
    assert env["CISCO_SPLIT_INC_0_ADDR"] == "198.18.2.0"
    assert env["CISCO_SPLIT_INC_0_MASK"] == "255.255.255.0"
    assert env["CISCO_SPLIT_INC_0_MASKLEN"] == "24"
    assert "CISCO_IPV6_SPLIT_INC" not in env
    assert env["CISCO_SPLIT_EXC"] == "1"
    assert env["CISCO_SPLIT_EXC_0_ADDR"] == "198.18.3.0"
    # The banner goes through literally: data, never code.
    assert env["CISCO_BANNER"] == "Welcome $(touch /tmp/pwned)\n`id`; rm -rf /"
    assert "X-CSTP-Split-Include=198.18.2.0/24\n" in env["CISCO_CSTP_OPTIONS"]
    assert "X-CSTP-Default-Domain=corp.example lab.test\n" in env["CISCO_CSTP_OPTIONS"]


def test_script_env_full_tunnel_and_pre_init() -> None:
    wanted = check_net_config(nc(routes=("0.0.0.0/0", "::/0")))
    env = env_of(wanted, "disconnect")
    assert "CISCO_SPLIT_INC" not in env
    assert "CISCO_IPV6_SPLIT_INC" not in env
    items = script.script_env("pre-init", ifname=None, vpnpid=7, log_level=0, wanted=None)
    assert dict(items) == {"reason": "pre-init", "VPNPID": "7", "LOG_LEVEL": "0"}
    assert check_env(script.encode_env(items)) == dict(items)


def test_script_env_with_many_routes_fits_the_runner() -> None:
    routes = tuple(f"198.19.{i}.0/24" for i in range(200))
    wanted = check_net_config(nc(routes=tuple(routes)))
    env = env_of(wanted)
    assert env["CISCO_SPLIT_INC"] == "200"
    assert len(script.encode_env(list(env.items()))) < MAX_SCRIPT_ENV


def test_policy_refuses_a_configuration_whose_script_environment_would_not_fit() -> None:
    """At the limit exactly: accepted, and the runner takes every run's environment;
    one byte more (a banner character): refused, with the size in the reason."""
    who = {"ifname": "sepc12", "vpnpid": 4194304, "log_level": 4}
    largest = check_net_config(largest_script_config(**who))  # type: ignore[arg-type]
    script.check_script_env(largest, **who)  # type: ignore[arg-type]
    for reason in script.SESSION_REASONS:
        items = script.script_env(reason, wanted=largest, **who)  # type: ignore[arg-type]
        blob = script.encode_env(items)
        assert len(blob) <= MAX_SCRIPT_ENV
        assert check_env(blob) == dict(items)
        request = RunScript(reason=reason, env=blob)  # type: ignore[arg-type]
        assert RUNNER_REQUESTS.decode_untrusted(RUNNER_REQUESTS.encode(request)) == request
    assert largest.banner is not None
    one_more = dataclasses.replace(largest, banner=largest.banner + "x")
    reason = (
        f"the vpnc-script environment for this configuration ({MAX_SCRIPT_ENV + 1} bytes) "
        f"exceeds the runner's limit of {MAX_SCRIPT_ENV}"
    )
    with pytest.raises(Refusal, match=re.escape(reason)):
        script.check_script_env(one_more, **who)  # type: ignore[arg-type]
    # Without --script nothing limits it: the policy itself still accepts it.
    assert check_net_config(one_more) == one_more


def test_the_longest_domains_reach_a_script() -> None:
    """32 search and 32 split-DNS domains of 253 characters: the runner's rules take the
    search list as one CISCO_CSTP_OPTIONS line (over 8000 characters)."""
    domains = tuple(f"d{i:02d}{'a' * 60}.{'b' * 63}.{'c' * 63}.{'e' * 61}" for i in range(32))
    assert {len(d) for d in domains} == {253}
    wanted = check_net_config(nc(domains=domains, split_dns=domains))
    script.check_script_env(wanted, ifname="sepc0", vpnpid=1, log_level=0)
    assert env_of(wanted)["CISCO_DEF_DOMAIN"] == " ".join(wanted.domains)


@pytest.mark.parametrize(
    "item",
    [
        b"reason=connect\0CISCO_DEF_DOMAIN=a.example\nnameserver 6.6.6.6",
        b"reason=connect\0TUNDEV=$(id)",
        b"reason=connect\0LD_PRELOAD=/tmp/x.so",
        b"reason=connect\0PATH=/tmp",
        b"reason=connect\0VPNGATEWAY=1.2.3.4 ; id",
        b"reason=connect\0CISCO_BANNER=" + b"x" * 2001,
        b"reason=connect\0CISCO_BANNER=a\x1bb",
        b"reason=connect\0reason=disconnect",
        b"reason=bogus",
        b"TUNDEV=sepc0",
        b"reason=connect\0CISCO_SPLIT_INC_0_ADDR=1.2.3.4\n",
        b"reason=connect\0\xff=1",
    ],
)
def test_runner_refuses_hostile_environments(item: bytes) -> None:
    with pytest.raises(ValueError):
        check_env(item)


def set_dns(d: dns.Dns, ifname: str = "sepc0") -> SetDns:
    """What the helper sends the root runner for ``d``."""
    return SetDns(ifname=ifname, servers=d.servers, domains=d.domains, split=d.split)


def test_resolver_texts() -> None:
    d = dns.Dns.of(check_net_config(NC))
    assert root_dns.resolvconf_text(set_dns(d)) == (
        "nameserver 198.18.2.53\nnameserver 2001:2:0:2::53\n"
        "search corp.example lab.test intra.example\n"
    )
    original = (
        b"# host\nnameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch home.arpa\noptions edns0\n"
    )
    text = root_dns.resolv_conf_text(original, set_dns(d)).decode()
    assert text.splitlines()[1:] == [
        "nameserver 198.18.2.53",
        "nameserver 2001:2:0:2::53",
        "nameserver 192.0.2.1",
        "search corp.example lab.test intra.example home.arpa",
        "options edns0",
    ]
    calls = dns.resolved_calls(5, d)
    assert calls[0] == (
        "SetLinkDNS",
        "ia(iay)",
        (5, [(2, bytes([198, 18, 2, 53])), (10, d.servers[1].packed)]),
    )
    assert calls[1] == (
        "SetLinkDomains",
        "ia(sb)",
        (5, [("corp.example", False), ("lab.test", False), ("intra.example", True)]),
    )
    assert calls[2] == ("SetLinkDefaultRoute", "ib", (5, False))
    full = dataclasses.replace(d, split=(), default=True)
    assert (".", True) in dns.resolved_calls(5, full)[1][2][1]
    assert dns.resolved_calls(5, full)[2][2] == (5, True)


def test_backend_choice(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.1\n")
    kw: dict[str, Any] = {"resolv_conf": str(conf), "polkit": lambda: True}
    assert dns.choose("auto", resolved=lambda: True, resolvconf=lambda: "/x", **kw) == "resolved"
    assert dns.choose("auto", resolved=lambda: False, resolvconf=lambda: "/x", **kw) == "resolvconf"
    # resolved runs, but the helper's account may not use it (no polkit rule): the next one
    no_rule = {**kw, "polkit": lambda: False}
    assert dns.choose("auto", resolved=lambda: True, resolvconf=lambda: None, **no_rule) == "file"
    assert dns.choose("auto", resolved=lambda: False, resolvconf=lambda: None, **kw) == "file"
    link = tmp_path / "link"
    link.symlink_to(conf)
    assert (
        dns.choose("auto", resolved=lambda: False, resolvconf=lambda: None, resolv_conf=str(link))
        == "none"
    )
    assert dns.choose("none", resolved=lambda: True) == "none"


def test_resolv_conf_file_backend_restores_byte_for_byte(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    original = b"# odd bytes \xff\xfe kept\nnameserver 192.0.2.1\n\n\toptions  rotate\n"
    conf.write_bytes(original)
    backend = root_dns.ResolvConfFile(str(tmp_path / "saved"), str(conf))
    d = set_dns(dns.Dns.of(check_net_config(NC)))
    backend.apply(d)
    assert b"nameserver 198.18.2.53" in conf.read_bytes()
    record = backend.record()
    assert (tmp_path / "saved").read_bytes() == original
    # A crash now: the next helper restores from the record alone.
    note = root_dns.restore_resolv_conf(record["path"], record["written"], record["saved"])
    assert note.startswith("restored")
    assert conf.read_bytes() == original
    assert not (tmp_path / "saved").exists()
    # Someone else rewrote it meanwhile: left alone, the original kept.
    backend = root_dns.ResolvConfFile(str(tmp_path / "saved"), str(conf))
    backend.apply(d)
    conf.write_bytes(b"nameserver 192.0.2.99\n")
    errors = backend.revert()
    assert len(errors) == 1
    assert "left alone" in errors[0]
    assert conf.read_bytes() == b"nameserver 192.0.2.99\n"
    assert (tmp_path / "saved").read_bytes() == original


def test_fail_closed_ruleset() -> None:
    wanted = check_net_config(nc(routes=("0.0.0.0/0", "::/0")))
    text = firewall.ruleset("sepconnect_77", "sepc0", wanted)
    assert text.startswith("table inet sepconnect_77\ndelete table inet sepconnect_77\n")
    assert "policy drop;" in text
    assert 'oifname "sepc0" accept' in text
    assert "ip daddr { 198.18.1.1, 198.18.3.0/24 } accept" in text
    assert text.rstrip().endswith("}")
    assert firewall.delete_ruleset("sepconnect_77").endswith("delete table inet sepconnect_77\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make root-owned files")
def test_script_path_checks(tmp_path: Path) -> None:
    good = tmp_path / "script"
    good.write_text("#!/bin/sh\n")
    good.chmod(0o755)
    os.chmod(tmp_path, 0o755)
    assert check_script(str(good)) == str(good)
    good.chmod(0o757)
    with pytest.raises(ValueError, match="writable by group or others"):
        check_script(str(good))
    good.chmod(0o644)
    with pytest.raises(ValueError, match="not an executable"):
        check_script(str(good))
    good.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(ValueError, match="symbolic link"):
        check_script(str(link))
    with pytest.raises(ValueError, match="absolute"):
        check_script("script")
    os.chown(good, 65534, -1)
    with pytest.raises(ValueError, match="not owned by root"):
        check_script(str(good))
    os.chown(good, 0, -1)
    os.chmod(tmp_path, 0o777)
    with pytest.raises(ValueError, match="writable by group or others"):
        check_script(str(good))
    os.chmod(tmp_path, 0o755)


def test_state_files_of_dead_helpers_are_stale(tmp_path: Path) -> None:
    mine = state.StateFile(str(tmp_path), "helper")
    mine.write(bypass=[{"dst": "198.18.1.1/32", "oif": 2, "gateway": None}])
    assert list(statedir.stale(str(tmp_path), "helper")) == []  # our own
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = state.StateFile(str(tmp_path), "helper", pid=int(proc.stdout))
    dead.data["start_time"] = "1"
    dead.write()
    (found,) = statedir.stale(str(tmp_path), "helper")
    assert list(statedir.stale(str(tmp_path), "rootrunner")) == []  # another process's files
    assert found[0] == dead.path
    other_ns = state.StateFile(str(tmp_path), "helper", pid=int(proc.stdout) + 100000)
    other_ns.write()
    raw = Path(other_ns.path).read_text().replace(f'"netns": {state.netns_id()}', '"netns": 1')
    Path(other_ns.path).write_text(raw)
    assert [p for p, _ in statedir.stale(str(tmp_path), "helper")] == [dead.path]
    assert os.stat(mine.path).st_mode & 0o777 == 0o600


def test_supervisor_dns_policy() -> None:
    offered = dataclasses.replace(
        network_config(
            ipv6=None,
            routes=["198.18.2.0/24"],
            dns=["198.18.2.53", "2001:2:0:2::53"],
            split_dns=["intra.example"],
        ),
        banner="hello\x07 \x1b[31mworld\n$(id)",
        domains=("corp.example", "under_score.example"),
    )
    net, notes = routing_policy(offered)
    assert [str(a) for a in net.dns] == ["198.18.2.53"]  # no IPv6 on the tunnel
    assert net.domains == ("corp.example",)
    assert net.split_dns == ("intra.example",)
    assert net.dns_default is False  # split domains and no Tunnel-All-DNS
    assert net.banner == "hello [31mworld\n$(id)"
    assert any("under_score.example" in n for n in notes)
    assert any("2001:2:0:2::53 left out" in n for n in notes)
    assert routing_policy(dataclasses.replace(offered, dns_default=True))[0].dns_default
    assert routing_policy(dataclasses.replace(offered, split_dns=()))[0].dns_default
    none = routing_policy(dataclasses.replace(offered, dns=()))[0]
    assert (none.dns, none.domains, none.dns_default) == ((), (), False)
    # What the supervisor builds, the helper accepts, and it crosses the wire unchanged.
    assert REQUESTS.decode_untrusted(REQUESTS.encode(NetConfig(seq=1, net=net))).net == net  # type: ignore[attr-defined]
    check_net_config(net)


_EXEC_UNDER_ARG_MAX = """
import resource, sys
from sepconnect.process.runner import run_program
from sepconnect.rootrunner.main import run_script
# A stack limit of 512 KiB: execve then allows its floor of 128 KiB (ARG_MAX) of
# argument and environment strings and pointers, the least any system gives.
resource.setrlimit(resource.RLIMIT_STACK, (512 * 1024, resource.RLIM_INFINITY))
blob = sys.stdin.buffer.read()
ran, _ = run_script(("/usr/bin/true",), "attempt-reconnect", blob)
over = run_program(["/usr/bin/true"], {"A": "a" * 66000, "B": "b" * 66000}, None)
print(ran.status, ran.note, "|", over.status, over.note)
"""


def test_execve_takes_the_largest_script_environment_at_the_least_arg_max() -> None:
    """The root runner executes a real program with the largest environment the policy lets
    through, under the smallest argument space execve(2) gives (while two strings of
    66 000 bytes, under MAX_ARG_STRLEN each, are too much together: the limit is real)."""
    who = {"ifname": "sepc12", "vpnpid": 4194304, "log_level": 4}
    largest = check_net_config(largest_script_config(**who))  # type: ignore[arg-type]
    blob = script.encode_env(script.script_env("attempt-reconnect", wanted=largest, **who))  # type: ignore[arg-type]
    assert len(blob) == MAX_SCRIPT_ENV
    out = subprocess.run(
        [sys.executable, "-I", "-c", _EXEC_UNDER_ARG_MAX],
        input=blob,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    assert out == "0  | 127 cannot execute /usr/bin/true: Argument list too long\n", out


@pytest.mark.skipif(os.geteuid() != 0, reason="the root runner runs as root")
def test_a_request_the_runner_would_refuse_is_not_sent(tmp_path: Path) -> None:
    """The real root runner: an environment one byte over the limit is answered
    "not run" by the helper's side, and the runner is still there for the next run (it
    would exit on a message its schema refuses, and no disconnect could run after)."""
    client = RunnerClient(
        "sepconnect-rootrunner", "sepconnect.rootrunner",
        ["--state-dir", str(tmp_path / "root"), "--script", "/usr/bin/true"],
        RUNNER_REQUESTS, os.getuid(),
    )  # fmt: skip
    try:
        over = b"reason=connect\0CISCO_BANNER=" + b"x" * (MAX_SCRIPT_ENV - 28 + 1)
        assert len(over) == MAX_SCRIPT_ENV + 1
        ran = client.call(RunScript(reason="connect", env=over))
        assert ran.status == 126, ran
        schema = f"run_script.env: length {len(over)} outside [0, {MAX_SCRIPT_ENV}]"
        assert ran.note == f"not run: {schema}"
        ran = client.call(RunScript(reason="connect", env=b"reason=connect"))
        assert (ran.status, ran.note) == (0, "")
    finally:
        client.close()
    assert client.proc.returncode == 0


class FakeRunner:
    """The runner's answers: exit status 1 for the reasons in ``failing``."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.runs: list[str] = []

    def call(self, msg: RunScript) -> Ran:
        self.runs.append(msg.reason)
        if msg.reason in self.failing:
            return Ran(status=1, note="/x exited with 1")
        return Ran(status=0, note="")

    def close(self) -> None:
        pass


def test_a_failing_connect_or_reconnect_is_refused_and_undone(tmp_path: Path) -> None:
    runner = FakeRunner()
    helper = OptionsHelper(
        None,  # type: ignore[arg-type]  # script mode never reaches netlink here
        Options(ifname="sepc0", script="/x", state_dir=str(tmp_path)),
        Audit(None, stderr_fd=None),
        root=runner,  # type: ignore[arg-type]
    )
    helper.tun = Tun(fd=os.open(os.devnull, os.O_RDONLY), name="sepc0")
    helper.router = Router(None, 1, 1400)  # type: ignore[arg-type]
    wanted = check_net_config(NC)
    assert helper.script is not None
    runner.failing = {"connect"}
    failed = "vpnc-script connect failed: /x exited with 1; disconnect run"
    for _ in range(2):  # the same configuration again runs connect again
        with pytest.raises(Refusal, match=f"^{re.escape(failed)}$"):
            helper.net_config(wanted)
        assert helper.script.wanted is None
    assert runner.runs == ["connect", "disconnect"] * 2
    runner.failing = {"connect", "disconnect"}
    with pytest.raises(Refusal, match="; disconnect failed too$"):
        helper.net_config(wanted)
    assert helper.undo_errors == ["vpnc-script disconnect: /x exited with 1"]  # for the cleanup
    helper.undo_errors = []
    runner.failing = {"attempt-reconnect", "reconnect"}
    runner.runs = []
    assert helper.net_config(wanted) == {}
    helper.script_event("attempt-reconnect")  # configures nothing: a failure is ignored
    with pytest.raises(Refusal, match="^vpnc-script reconnect failed: /x exited with 1$"):
        helper.script_event("reconnect")
    assert helper.script.wanted == wanted  # still configured: the teardown undoes it
    runner.failing = {"disconnect"}
    helper.teardown()
    helper.cleanup()  # the helper's main loop cleans up once more on its way out
    assert runner.runs == ["connect", "attempt-reconnect", "reconnect", "disconnect"]
    assert helper.tun is None
    # What could not be undone is kept: the cleanup leaves the helper's state file for the
    # next start (the root runner keeps the script's own: rootrunner/main.py).
    assert helper.undo_errors == ["vpnc-script disconnect: /x exited with 1"]
