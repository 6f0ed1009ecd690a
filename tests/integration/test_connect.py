"""sepconnect end to end against the real ocserv in the lab: three processes, real
privilege drop, a real tun, real packets (ping, iperf3), clean teardown, and every
failure path with its exit code."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sepconnect.process.accounts import HELPER_FALLBACK_UID

from lab import Lab, OcservOptions, descendants

pytestmark = [pytest.mark.root, pytest.mark.netns]

VENV = os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv")
SEPCONNECT = f"{VENV}/bin/sepconnect"

# Exit codes (process/exitcodes.py); repeated here so a renumbering breaks a test.
AUTH_FAILED, CERT_INVALID, UNREACHABLE, PROTOCOL, UNKNOWN_GROUP, USAGE = 3, 6, 7, 8, 5, 2


class Client:
    """One `sepconnect connect` run in the lab's client namespace."""

    def __init__(
        self,
        lab: Lab,
        *args: str,
        user: str = "test",
        password: str | None = None,
        env: dict[str, str] | None = None,
        passwd_on_stdin: bool = True,
        stdin: str = "",
        terminal: int | None = None,
        prefix: tuple[str, ...] = (),
        server: str | None = None,
    ):
        """The password goes to standard input (--passwd-on-stdin); without it, *stdin*;
        with *terminal* (a pty's fd), standard input, output and error are that."""
        self.lab = lab
        # With --helper-socket the supervisor's own records go to the journal only.
        self.supervisor_audits = not any(a.startswith("--helper-socket") for a in args)
        run_id = time.monotonic_ns()
        self.audit_log = str(Path(lab.workdir, f"audit-{run_id}.jsonl"))
        self.session_log = str(Path(lab.workdir, f"session-{run_id}.jsonl"))
        # Each run its own control socket and helper state, so that concurrent runs (other
        # checkouts' too) never meet.
        self.control = str(Path(lab.workdir, f"ctl-{run_id}", "control.sock"))
        argv = [SEPCONNECT, "connect", "--audit-log", self.audit_log]
        if passwd_on_stdin:
            argv.append("--passwd-on-stdin")
        argv += ["--session-log", self.session_log]
        argv += ["--control-socket", self.control]
        if not any(a.startswith("--helper-socket") for a in args):
            argv += ["--state-dir", str(Path(lab.workdir, f"state-{run_id}"))]
        if user:
            argv += ["--user", user]
        if not any(a.startswith("--servercert") or a.startswith("--cafile") for a in args):
            argv += ["--servercert", lab.server_cert_pin]
        if not any(a.startswith(("--dns-backend", "--helper-socket")) for a in args):
            # The tunnel's own tests leave DNS alone (the default connect of
            # docs/security.md); DNS: test_routes_dns.py, and test_root_runner_* below.
            argv += ["--dns-backend", "none"]
        argv += [*args]
        if server is not None:  # the server as given (a bare host name, a path)
            argv.append(server)
        elif not any(a.startswith("https://") for a in args):
            argv.append(lab.url)
        pipe = subprocess.PIPE if terminal is None else terminal
        self.proc = lab.popen_in(
            lab.client_ns,
            *prefix,  # a program that runs sepconnect (strace: test_code_budget.py)
            *argv,
            stdin=pipe,
            stdout=pipe,
            stderr=pipe,
            env=env,
        )
        self.stderr = ""
        if terminal is not None:
            return
        secret = lab.users.get(user, "") if password is None else password
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{secret}\n".encode() if passwd_on_stdin else stdin.encode())
        self.proc.stdin.close()
        self.proc.stdin = None  # so communicate() does not flush it again

    def wait_connected(self, timeout: float = 15) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                self.finish()
                raise AssertionError(f"sepconnect exited {self.proc.returncode}:\n{self.stderr}")
            tun = self.lab.client_tun()
            if tun is None or "UP" not in tun.get("flags", []):
                return None
            # the routes come with the same NetConfig; wait for them too
            routes = self.lab.ip_json(self.lab.client_ns, "route", "show", "dev", tun["ifname"])
            if not any(r.get("protocol") != "kernel" for r in routes):
                return None
            # The session is up for the supervisor (a worker lost from now on is
            # replaced, not fatal) once it has recorded "connect", after the helper's
            # answer; the helper answers after its routes, state file and DNS.
            if self.supervisor_audits and not self._audited("connect"):
                return None
            # Read the device again: the addresses of the first reading may predate
            # the rest of the NetConfig (addresses, then routes).
            return self.lab.client_tun()

        return self.lab.wait_for("the tunnel to come up", probe, timeout=timeout)

    def finish(self, timeout: float = 20) -> int:
        _, err = self.proc.communicate(timeout=timeout)
        self.stderr = err.decode(errors="replace") if err is not None else ""
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        return self.finish()

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(self.audit_log).read_text().splitlines()]

    def session_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(self.session_log).read_text().splitlines()]

    def _audited(self, op: str) -> bool:
        try:
            return any(r["op"] == op and r["result"] == "ok" for r in self.session_events())
        except (FileNotFoundError, json.JSONDecodeError):  # not yet, or a line being written
            return False


@pytest.fixture
def connected(lab: Lab) -> Iterator[tuple[Lab, Client, dict[str, Any]]]:
    client = Client(lab)
    tun = client.wait_connected()
    yield lab, client, tun
    if client.proc.poll() is None:
        client.stop()


def _routes(lab: Lab, *extra: str) -> list[dict[str, Any]]:
    v4 = lab.ip_json(lab.client_ns, "route", "show", *extra)
    v6 = lab.ip_json(lab.client_ns, "-6", "route", "show", *extra)
    return list(v4) + list(v6)


def _our_routes(lab: Lab, ifname: str) -> set[str]:
    return {
        r["dst"]
        for r in _routes(lab, "dev", ifname)
        if r.get("protocol") != "kernel" and not r["dst"].startswith("fe80")
    }


def _ping(lab: Lab, target: str, count: int = 3) -> subprocess.CompletedProcess[bytes]:
    return lab.run_in(
        lab.client_ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", target, check=False
    )


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


# --------------------------------------------------------------------------- happy path


def test_traffic_flows_only_through_the_tunnel(lab: Lab) -> None:
    # The target has no route back to the client's own link: without the tunnel, no reply.
    assert _ping(lab, lab.target_ip, count=1).returncode != 0
    client = Client(lab)
    tun = client.wait_connected()
    before = lab.ip_json(lab.client_ns, "-s", "link", "show", "dev", tun["ifname"])[0]
    result = _ping(lab, lab.target_ip)
    assert result.returncode == 0, result.stdout.decode()
    after = lab.ip_json(lab.client_ns, "-s", "link", "show", "dev", tun["ifname"])[0]
    assert after["stats64"]["tx"]["packets"] >= before["stats64"]["tx"]["packets"] + 3
    assert after["stats64"]["rx"]["packets"] >= before["stats64"]["rx"]["packets"] + 3
    assert client.stop() == 0, client.stderr
    assert "Traceback" not in client.stderr


def test_addresses_mtu_and_split_routes_exactly_as_pushed(
    connected: tuple[Lab, Client, dict[str, Any]],
) -> None:
    lab, _, tun = connected
    addrs = {(a["local"], a["prefixlen"]) for a in tun["addr_info"] if a["scope"] == "global"}
    v4 = [a for a in addrs if a[0].startswith("198.18.100.")]
    v6 = [a for a in addrs if a[0].startswith("2001:2:0:100:")]
    assert len(v4) == 1, addrs
    assert len(v6) == 1, addrs
    assert 500 < tun["mtu"] <= 1500
    # Exactly the pushed split-includes go through the tunnel, nothing else.
    assert _our_routes(lab, tun["ifname"]) == {"198.18.2.0/24", "2001:2:0:2::/64"}
    # No route anywhere else was added: the client's own default routes are untouched.
    others = [r for r in _routes(lab) if r.get("dev") != tun["ifname"]]
    assert {r["dst"] for r in others} >= {"default", "198.18.1.0/24"}
    assert all(r.get("dev") == lab.client_uplink for r in others if r["dst"] != "multicast")


def test_ipv6_through_the_tunnel(connected: tuple[Lab, Client, dict[str, Any]]) -> None:
    lab, _, _ = connected
    result = _ping(lab, lab.target_ip6)
    assert result.returncode == 0, result.stdout.decode()


def test_bounded_iperf3_transfer(connected: tuple[Lab, Client, dict[str, Any]]) -> None:
    lab, _, _ = connected
    for direction in ((), ("-R",)):
        out = lab.run_in(
            lab.client_ns,
            "iperf3", "-c", lab.target_ip, "-t", "2", "-J", "--connect-timeout", "3000",
            *direction,
            timeout=30,
        )  # fmt: skip
        report = json.loads(out.stdout)
        received = report["end"]["sum_received"]["bytes"]
        assert received > 1_000_000, report["end"]


def test_processes_are_separated_and_unprivileged(
    connected: tuple[Lab, Client, dict[str, Any]],
) -> None:
    _, client, _ = connected
    supervisor = client.proc.pid  # `ip netns exec` execs: this is sepconnect itself
    titles = {pid: _title(pid) for pid in [supervisor, *descendants(supervisor)]}
    roles = {}
    for pid, title in titles.items():
        match = re.match(r"sepconnect: (\w+)", title)
        if match:
            roles[match.group(1)] = pid
    assert set(roles) == {"supervisor", "privhelper", "spawner", "worker"}, titles
    assert roles["supervisor"] == supervisor  # the process the user started stays the one
    for role in ("supervisor", "spawner", "worker"):
        st = _status(roles[role])
        uids = st["Uid"].split()
        assert all(u != "0" for u in uids), (role, st["Uid"])
        assert int(st["CapEff"], 16) == 0, (role, st["CapEff"])
        assert int(st["CapPrm"], 16) == 0, (role, st["CapPrm"])
        assert int(st["CapBnd"], 16) == 0, (role, st["CapBnd"])
        assert st["NoNewPrivs"] == "1", role
    helper = _status(roles["privhelper"])
    cap_net_admin = 1 << 12
    for caps in ("CapEff", "CapPrm", "CapBnd"):
        assert int(helper[caps], 16) == cap_net_admin, (caps, helper[caps])
    assert int(helper["CapInh"], 16) == int(helper["CapAmb"], 16) == 0
    # Issue 13, F6: with --dns-backend none, no process of the session has uid 0 (in any
    # of the four slots); the helper has a uid of its own.
    for pid in titles:
        assert "0" not in _status(pid)["Uid"].split(), (titles[pid], _status(pid)["Uid"])
    helper_uid = helper["Uid"].split()[0]
    assert helper_uid != _status(supervisor)["Uid"].split()[0]
    assert helper["Uid"].split() == [str(HELPER_FALLBACK_UID)] * 4


def test_root_runner_is_the_only_root_process_and_only_when_asked(lab: Lab) -> None:
    """`--dns-backend file` (what `auto` picks in the lab: no resolved, no resolvconf)
    rewrites the client's resolv.conf, which is root's: the root runner, the one process
    of the session with uid 0, does it; with `none` there is none (issue 13, F6)."""
    client = Client(lab, "--dns-backend", "auto")
    client.wait_connected()
    pids = [client.proc.pid, *descendants(client.proc.pid)]
    as_root = [_title(p) for p in pids if "0" in _status(p)["Uid"].split()]
    assert as_root == ["sepconnect: root-runner"], [(_title(p), _status(p)["Uid"]) for p in pids]
    assert client.stop() == 0, client.stderr
    assert any(r["op"] == "start" and r["args"]["dns_backend"] == "file" for r in client.audit())


def test_helper_audit_log_records_each_request(lab: Lab) -> None:
    client = Client(lab)
    client.wait_connected()
    assert client.stop() == 0
    records = client.audit()
    requests = [r for r in records if r["op"] in {"hello", "create_tun", "net_config", "teardown"}]
    assert [r["op"] for r in requests] == ["hello", "create_tun", "net_config", "teardown"]
    assert all(r["result"] == "ok" for r in requests), requests
    # nobody: the lab machine has no "sepconnect" account
    assert {r["peer_uid"] for r in requests} == {65534}
    assert all(isinstance(r["peer_pid"], int) and r["peer_pid"] > 1 for r in requests)
    assert all("time" in r for r in records)


def test_the_supervisor_cannot_erase_or_forge_the_helpers_audit_log(lab: Lab) -> None:
    """F9: only the helper writes the audit log. The supervisor holds no fd of it (an
    O_APPEND fd would not stop ftruncate), and its uid can neither open it for writing
    nor truncate it; its own events go to the session log."""
    client = Client(lab)
    client.wait_connected()
    supervisor = client.proc.pid
    audit_log = os.path.realpath(client.audit_log)
    fds = f"/proc/{supervisor}/fd"
    held = [os.path.realpath(f"{fds}/{fd}") for fd in os.listdir(fds)]
    assert audit_log not in held, held
    assert os.path.realpath(client.session_log) in held
    uid = int(_status(supervisor)["Uid"].split()[0])
    attempt = (
        "import os, sys\n"
        "for name, try_it in (('open', lambda: os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)),\n"
        "                     ('truncate', lambda: os.truncate(sys.argv[1], 0))):\n"
        "    try:\n"
        "        try_it()\n"
        "        print(name, 'allowed')\n"
        "    except PermissionError:\n"
        "        print(name, 'EACCES')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", attempt, audit_log],
        user=uid, group=uid, extra_groups=[],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    assert result.stdout.split("\n")[:2] == ["open EACCES", "truncate EACCES"], result.stdout
    assert client.stop() == 0
    ops = {r["op"] for r in client.audit()}
    assert "hello" in ops
    assert "connect" not in ops  # the supervisor's events are elsewhere
    assert {r["op"] for r in client.session_events()} >= {"connect", "disconnect"}


# --------------------------------------------------------------------------- teardown


def test_sigint_logs_off_and_removes_everything(lab: Lab) -> None:
    routes_before = _routes(lab)
    addrs_before = lab.ip_json(lab.client_ns, "addr", "show")
    client = Client(lab)
    tun = client.wait_connected()
    pids = [client.proc.pid, *descendants(client.proc.pid)]
    assert len(pids) == 4  # supervisor, helper, spawner, worker
    assert json.loads(lab.occtl("-j", "show", "users"))  # one session on the server
    assert client.stop(signal.SIGINT) == 0, client.stderr
    assert lab.client_tun() is None
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert _routes(lab) == routes_before
    assert lab.ip_json(lab.client_ns, "addr", "show") == addrs_before
    assert tun["ifname"] not in {link["ifname"] for link in lab.ip_json(lab.client_ns, "link")}
    # CSTP DISCONNECT logged the session off on the server.
    lab.wait_for(
        "ocserv to drop the session",
        lambda: True if json.loads(lab.occtl("-j", "show", "users") or "[]") == [] else None,
    )


def test_sigterm_exits_zero_and_cleans_up(connected: tuple[Lab, Client, dict[str, Any]]) -> None:
    lab, client, _ = connected
    assert client.stop(signal.SIGTERM) == 0, client.stderr
    assert lab.client_tun() is None


def test_sighup_disconnects_and_cleans_up(connected: tuple[Lab, Client, dict[str, Any]]) -> None:
    lab, client, _ = connected
    assert client.stop(signal.SIGHUP) == 0, client.stderr
    assert "keeping the server session" in client.stderr
    assert lab.client_tun() is None


# --------------------------------------------------------------------------- routing modes


def test_full_tunnel_routes_everything_and_pins_the_gateway(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    lab = lab_factory(OcservOptions(routes=("default",)))
    before = _routes(lab)
    client = Client(lab)
    tun = client.wait_connected()
    ours = _our_routes(lab, tun["ifname"])
    assert ours == {"0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"}, ours
    # The gateway keeps its original path, so the tunnel never carries its own packets.
    gw = [r for r in _routes(lab) if r["dst"] == lab.server_ip]
    assert len(gw) == 1, gw
    assert gw[0]["dev"] == lab.client_uplink, gw
    get = lab.ip_json(lab.client_ns, "route", "get", lab.target_ip)
    assert get[0]["dev"] == tun["ifname"]
    assert _ping(lab, lab.target_ip).returncode == 0
    assert client.stop() == 0, client.stderr
    assert _routes(lab) == before


def test_split_exclude_keeps_the_original_path(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    lab = lab_factory(OcservOptions(routes=("default",), no_routes=("198.18.3.0/24",)))
    before = _routes(lab)
    client = Client(lab)
    client.wait_connected()
    excluded = [r for r in _routes(lab) if r["dst"] == "198.18.3.0/24"]
    assert len(excluded) == 1, excluded
    assert excluded[0]["dev"] == lab.client_uplink
    assert excluded[0].get("gateway") == lab.server_ip
    assert client.stop() == 0, client.stderr
    assert _routes(lab) == before


def test_a_competing_route_is_recorded_by_the_supervisor_and_left_alone(lab: Lab) -> None:
    """A host route with the prefix of a pushed one and a metric below ours (50) may win.
    The helper installs ours next to it and leaves it alone; the supervisor reads the
    routing table once the helper has applied the configuration and writes the
    ``conflict`` record to its session log (supervisor/routes.py)."""
    competing = ("198.18.2.0/24", "via", lab.server_ip, "metric", "10")
    lab.run_in(lab.client_ns, "ip", "route", "add", *competing)
    try:
        client = Client(lab)
        tun = client.wait_connected()
        assert "198.18.2.0/24" in _our_routes(lab, tun["ifname"])
        assert client.stop() == 0, client.stderr
        (uplink,) = lab.ip_json(lab.client_ns, "link", "show", lab.client_uplink)
        conflicts = [e for e in client.session_events() if e["op"] == "conflict"]
        assert [(e["source"], e["result"], e["reason"]) for e in conflicts] == [
            (
                "supervisor",
                "info",
                "198.18.2.0/24: a route with a lower or equal metric than ours (50) exists "
                f"and may win: 198.18.2.0/24 metric 10 oif {uplink['ifindex']}",
            )
        ]
        kept = [r for r in _routes(lab) if r["dst"] == "198.18.2.0/24"]
        assert [(r["dev"], r.get("metric")) for r in kept] == [(lab.client_uplink, 10)]
    finally:
        lab.run_in(lab.client_ns, "ip", "route", "del", *competing, check=False)


# --------------------------------------------------------------------------- failures


def _assert_clean_failure(lab: Lab, client: Client, code: int, pattern: str) -> None:
    rc = client.finish()
    assert rc == code, (rc, client.stderr)
    assert "Traceback" not in client.stderr
    assert re.search(pattern, client.stderr, re.IGNORECASE), client.stderr
    assert lab.client_tun() is None
    assert not [link for link in lab.ip_json(lab.client_ns, "link") if "sepc" in link["ifname"]]


def test_wrong_password(lab: Lab) -> None:
    client = Client(lab, password="not-the-password")
    _assert_clean_failure(lab, client, AUTH_FAILED, r"login failed|authentication failed")


def test_locked_account_is_refused(lab: Lab) -> None:
    # ocserv 1.1.6 reports a locked account exactly like a wrong password.
    client = Client(lab, user="locked")
    _assert_clean_failure(lab, client, AUTH_FAILED, r"login failed|authentication failed")


def test_second_session_refused_by_max_same_clients(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    # ocserv accepts the password, then answers the CONNECT with "401 Cookie is not
    # acceptable" and an access_denied alert (openconnect: "Cookie was rejected by
    # server; exiting.", exit 2). A refused login, not an unreachable server.
    lab = lab_factory(OcservOptions(extra=("max-same-clients = 1",)))
    first = Client(lab)
    first.wait_connected()
    second = Client(lab)
    rc = second.finish()
    assert rc == AUTH_FAILED, (rc, second.stderr)
    assert "Traceback" not in second.stderr
    assert re.search(r"refused the login \(.+\).*max-same-clients", second.stderr), second.stderr
    # the first session is untouched
    assert first.proc.poll() is None
    assert _ping(lab, lab.target_ip).returncode == 0
    assert len(json.loads(lab.occtl("-j", "show", "users"))) == 1
    assert first.stop() == 0, first.stderr


def test_wrong_pin(lab: Lab) -> None:
    wrong = "pin-sha256:" + "A" * 43 + "="
    client = Client(lab, "--servercert", wrong)
    _assert_clean_failure(lab, client, CERT_INVALID, r"does not match --servercert")


def test_rsa_pss_server_certificate_and_openssls_pin(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    # The lab's pin is openssl's (tests/lab.py OPENSSL_PIN_PIPELINE), over the certificate's
    # own rsassaPss SubjectPublicKeyInfo; openconnect accepts the same pin.
    lab = lab_factory(OcservOptions(server_key_type="rsa-pss"))
    cert = x509.load_pem_x509_certificate(Path(lab.workdir, "server-cert.pem").read_bytes())
    assert cert.public_key_algorithm_oid == x509.oid.PublicKeyAlgorithmOID.RSASSA_PSS
    wrong = Client(lab, "--servercert", "pin-sha256:" + "A" * 43 + "=")
    _assert_clean_failure(
        lab, wrong, CERT_INVALID, re.escape(f"(server has {lab.server_cert_pin})")
    )
    client = Client(lab)  # --servercert lab.server_cert_pin
    client.wait_connected()
    assert _ping(lab, lab.target_ip).returncode == 0
    assert client.stop() == 0, client.stderr


def test_ca_verification(lab: Lab) -> None:
    # The lab's CA verifies the chain, and the URL's IP address is in the certificate.
    client = Client(lab, "--cafile", lab.ca_file)
    client.wait_connected()
    assert client.stop() == 0, client.stderr


def test_untrusted_certificate_without_pin(lab: Lab) -> None:
    # No pin, no --cafile: the lab's CA is not in the system store.
    argv_pin_free = Client.__new__(Client)
    argv_pin_free.lab = lab
    argv_pin_free.audit_log = str(Path(lab.workdir, "audit-nopin.jsonl"))
    argv_pin_free.control = str(Path(lab.workdir, "ctl-nopin", "control.sock"))
    argv_pin_free.proc = lab.popen_in(
        lab.client_ns,
        SEPCONNECT, "connect", "--user", "test", "--passwd-on-stdin",
        "--audit-log", argv_pin_free.audit_log, "--control-socket", argv_pin_free.control,
        "--session-log", str(Path(lab.workdir, "session-nopin.jsonl")),
        "--state-dir", str(Path(lab.workdir, "state-nopin")),
        lab.url,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert argv_pin_free.proc.stdin is not None
    argv_pin_free.proc.stdin.write(b"test123\n")
    argv_pin_free.proc.stdin.close()
    argv_pin_free.proc.stdin = None
    argv_pin_free.stderr = ""
    _assert_clean_failure(lab, argv_pin_free, CERT_INVALID, r"verification failed.*pin-sha256:")


def test_unreachable_server(lab: Lab) -> None:
    client = Client(lab, "https://198.18.1.1:4443/")  # nothing listens there
    _assert_clean_failure(lab, client, UNREACHABLE, r"cannot connect")


def test_unresolvable_server(lab: Lab) -> None:
    """The launcher resolves the server once, before the helper or a worker starts (F2)."""
    client = Client(lab, "https://no-such-host.invalid/")
    _assert_clean_failure(lab, client, UNREACHABLE, r"^sepconnect: cannot resolve no-such-host")


def test_unknown_group(lab_factory: Callable[[OcservOptions], Lab]) -> None:
    lab = lab_factory(OcservOptions(groups=("engineering", "sales")))
    client = Client(lab, "--authgroup", "no-such-group")
    _assert_clean_failure(lab, client, UNKNOWN_GROUP, r"no-such-group")


def test_known_group_connects(lab_factory: Callable[[OcservOptions], Lab]) -> None:
    lab = lab_factory(OcservOptions(groups=("engineering", "sales")))
    client = Client(lab, "--authgroup", "sales")
    client.wait_connected()
    assert client.stop() == 0, client.stderr


def test_not_root_is_a_usage_error(lab: Lab) -> None:
    result = lab.run_in(
        lab.client_ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        SEPCONNECT, "connect", "--servercert", lab.server_cert_pin, lab.url,
        check=False,
    )  # fmt: skip
    assert result.returncode == USAGE
    assert b"must be started as root" in result.stderr


MALFORMED_SERVER = r"""
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.create_server(("198.18.1.1", 4443))
print("ready", flush=True)
conn, _ = srv.accept()
tls = ctx.wrap_socket(conn, server_side=True)
tls.recv(65536)
body = b"<config-auth><<<this is not xml"
tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)
tls.recv(1)
"""


def _fake_server(lab: Lab, name: str, source: str) -> subprocess.Popen[bytes]:
    """A small TLS server of this test's, with the lab's certificate, in the server's
    namespace on 198.18.1.1:4443; returns once it listens."""
    script = Path(lab.workdir, name)
    script.write_text(source)
    cert, key = Path(lab.workdir, "server-cert.pem"), Path(lab.workdir, "server-key.pem")
    server = lab.popen_in(
        lab.server_ns, f"{VENV}/bin/python", str(script), str(cert), str(key),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert server.stdout is not None
    assert server.stdout.readline().strip() == b"ready"
    return server


def test_malformed_server_response(lab: Lab) -> None:
    server = _fake_server(lab, "malformed_server.py", MALFORMED_SERVER)
    client = Client(lab, "https://198.18.1.1:4443/")
    _assert_clean_failure(lab, client, PROTOCOL, r"xml|malformed|invalid")
    server.kill()
    server.wait()


# --------------------------------------------------------------------------- the URL's query


def test_url_with_a_query_connects_to_ocserv(lab: Lab) -> None:
    # ocserv 1.1.6 answers "POST /?secret" with 404 (its POST handlers match the exact
    # path) and "GET /?secret" with the login form: sepconnect asks again with GET, as
    # openconnect does, and logs in.
    client = Client(lab, "https://198.18.1.1/?secret&x=1")
    client.wait_connected()
    assert _ping(lab, lab.target_ip).returncode == 0
    assert client.stop() == 0, client.stderr


RECORDING_SERVER = r"""
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.create_server(("198.18.1.1", 4443))
print("ready", flush=True)
for _ in range(2):
    conn, _ = srv.accept()
    with ctx.wrap_socket(conn, server_side=True) as tls:
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(65536)
        print(head.split(b"\r\n")[0].decode(), flush=True)
        tls.sendall(b"HTTP/1.1 404 Not found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
"""


def test_url_path_and_query_on_the_wire(lab: Lab) -> None:
    server = _fake_server(lab, "recording_server.py", RECORDING_SERVER)
    client = Client(lab, "https://198.18.1.1:4443/group?secret=a%20b&x=1#not-sent")
    _assert_clean_failure(lab, client, PROTOCOL, r"HTTP 404 Not found")
    lines = server.stdout.read().decode().splitlines()
    server.wait()
    assert lines == [
        "POST /group?secret=a%20b&x=1 HTTP/1.1",
        "GET /group?secret=a%20b&x=1 HTTP/1.1",
    ]
