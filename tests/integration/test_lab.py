"""Self-tests of the namespace lab (tests/lab.py), using openconnect as the reference
client. They also pin down the ocserv 1.1.6 behaviour the lab documents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, OcservOptions

pytestmark = [pytest.mark.root, pytest.mark.netns]

# Runs inside the client namespace: one TLS handshake per (server_hostname, version),
# verified against the lab CA; prints what the server presented.
TLS_PROBE = r"""
import base64, hashlib, json, socket, ssl, sys
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
ip, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = []
for name in ("vpn.lab.test", ip):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.minimum_version = ctx.maximum_version = version
        with socket.create_connection((ip, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
                spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
                    Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
                out.append({"name": name, "version": tls.version(),
                            "sha256": hashlib.sha256(der).hexdigest(),
                            "pin": base64.b64encode(hashlib.sha256(spki).digest()).decode()})
print(json.dumps(out))
"""

# Runs inside the client namespace: the XML auth flow on one keep-alive connection
# (init, username, then up to three passwords); prints each response.
AUTH_PROBE = r"""
import http.client, json, ssl, sys
ip, cafile, user, password = sys.argv[1:5]
def xml(kind, inner):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<config-auth client="vpn" type="%s" '
            'aggregate-auth-version="2"><version who="vpn">v9.01</version>'
            '<device-id>linux-64</device-id>%s</config-auth>' % (kind, inner))
conn = http.client.HTTPSConnection(ip, 443, context=ssl.create_default_context(cafile=cafile))
cookies, steps = {}, []
bodies = [("/", xml("init", "<group-access>https://%s/</group-access>" % ip)),
          ("/auth", xml("auth-reply", "<auth><username>%s</username></auth>" % user))]
bodies += [("/auth", xml("auth-reply", "<auth><password>%s</password></auth>" % password))] * 3
for path, body in bodies:
    headers = {"X-Transcend-Version": "1", "X-Aggregate-Auth": "1",
               "User-Agent": "Open AnyConnect VPN Agent v9.01"}
    if cookies:
        headers["Cookie"] = "; ".join("%s=%s" % kv for kv in cookies.items())
    try:
        conn.request("POST", path, body.encode(), headers)
        resp = conn.getresponse()
        text = resp.read().decode()
    except (OSError, http.client.HTTPException) as exc:
        steps.append({"error": type(exc).__name__ + ": " + str(exc)})
        break
    for key, value in resp.getheaders():
        if key.lower() == "set-cookie":
            name, _, rest = value.partition("=")
            cookies[name] = rest.split(";")[0]
    steps.append({"status": resp.status, "reason": resp.reason, "body": text,
                  "webvpn": cookies.get("webvpn", "")})
    if resp.status != 200 or 'type="complete"' in text:
        break
print(json.dumps(steps))
"""


def probe(lab: Lab, script: str, *args: str) -> Any:
    res = lab.run_in(lab.client_ns, sys.executable, "-c", script, *args, timeout=20)
    return json.loads(res.stdout)


def ping(lab: Lab, ns: str, dest: str, count: int = 2, wait: int = 2) -> bool:
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(wait), dest]
    return lab.run_in(ns, *argv, check=False, timeout=15).returncode == 0


def host_network_state() -> dict[str, Any]:
    """What the lab must never change in the host namespace (read-only)."""
    state: dict[str, Any] = {}
    for what in (["link"], ["addr"], ["route"], ["-6", "route"], ["rule"]):
        out = subprocess.run(["ip", "-j", *what, "show"], capture_output=True, check=True)
        state[" ".join(what)] = json.loads(out.stdout or b"[]")
    for key in ("ipv4/ip_forward", "ipv6/conf/all/forwarding", "ipv6/conf/default/accept_dad"):
        state[key] = Path("/proc/sys/net", key).read_text()
    return state


def start_openconnect(lab: Lab, *args: str, user: str = "test") -> subprocess.Popen[bytes]:
    with open(Path(lab.workdir, f"openconnect-{user}.log"), "ab") as log:
        return lab.openconnect(user, *args, stdout=log, stderr=subprocess.STDOUT)


def wait_for_tun(lab: Lab, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    def tun() -> dict[str, Any] | None:
        if proc.poll() is not None:
            log = Path(lab.workdir, "openconnect-test.log").read_text(errors="replace")
            pytest.fail(f"openconnect exited with {proc.returncode}:\n{log}")
        return lab.client_tun()

    return lab.wait_for("openconnect's tun", tun, timeout=10)


def test_lab_builds_and_serves_https(lab: Lab) -> None:
    names = lab.run_in(lab.client_ns, "ip", "netns", "list").stdout.decode()
    for ns in (lab.client_ns, lab.server_ns, lab.target_ns):
        assert ns in names

    handshakes = probe(lab, TLS_PROBE, lab.server_ip, str(lab.port), lab.ca_file)
    assert {(h["name"], h["version"]) for h in handshakes} == {
        (name, version)
        for name in ("vpn.lab.test", "198.18.1.1")
        for version in ("TLSv1.2", "TLSv1.3")
    }
    assert {"pin-sha256:" + h["pin"] for h in handshakes} == {lab.server_cert_pin}
    assert {"sha256:" + h["sha256"] for h in handshakes} == {lab.server_cert_sha256}

    # the server reaches the target; the client only has its way to the server
    assert ping(lab, lab.server_ns, lab.target_ip)
    assert ping(lab, lab.server_ns, lab.target_ip6)
    assert ping(lab, lab.client_ns, lab.server_ip6)
    assert not ping(lab, lab.client_ns, lab.target_ip, count=1, wait=1)  # no route back but the VPN
    routes = lab.ip_json(lab.client_ns, "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [(lab.server_ip, lab.client_uplink)]
    routes6 = lab.ip_json(lab.client_ns, "-6", "route", "show", "default")
    assert [r["gateway"] for r in routes6] == [lab.server_ip6]

    forwarding = {
        ns: lab.run_in(ns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
        for ns in (lab.client_ns, lab.server_ns, lab.target_ns)
    }
    assert forwarding == {lab.client_ns: b"0", lab.server_ns: b"1", lab.target_ns: b"0"}

    assert "Status: online" in lab.occtl("show", "status")
    assert json.loads(lab.occtl("-j", "show", "users")) == []
    assert "initialized ocserv 1.1.6" in lab.ocserv_log()


def test_openconnect_connects_and_reaches_target(lab: Lab) -> None:
    proc = start_openconnect(lab)
    tun = wait_for_tun(lab, proc)
    tun_v4 = [a["local"] for a in tun["addr_info"] if a["family"] == "inet"]

    assert ping(lab, lab.client_ns, lab.target_ip, count=3)
    assert ping(lab, lab.client_ns, lab.target_ip6, count=3)
    users = json.loads(lab.occtl("-j", "show", "users"))
    assert [(u["Username"], u["IPv4"], u["P-t-P IPv4"]) for u in users] == [
        ("test", tun_v4[0], lab.vpn_server_ip)
    ]
    # the split-include routes pushed by ocserv point into the tunnel
    route = lab.ip_json(lab.client_ns, "route", "get", lab.target_ip)
    assert route[0]["dev"] == tun["ifname"]

    iperf = lab.run_in(
        lab.client_ns, "iperf3", "-J", "-c", lab.target_ip, "-t", "1", "-p", str(lab.iperf_port)
    )
    assert json.loads(iperf.stdout)["end"]["sum_received"]["bytes"] > 0

    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert lab.client_tun() is None
    log = Path(lab.workdir, "openconnect-test.log").read_text()
    assert "Send BYE packet" in log
    assert lab.wait_for(
        "ocserv to drop the session",
        lambda: True if json.loads(lab.occtl("-j", "show", "users")) == [] else None,
    )


def test_auth_outcomes(lab: Lab) -> None:
    def flow(user: str, password: str) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = probe(
            lab, AUTH_PROBE, lab.server_ip, lab.ca_file, user, password
        )
        return steps

    for user in ("test", "sp@c"):
        steps = flow(user, lab.users[user])
        assert [s["status"] for s in steps] == [200, 200, 200]
        assert 'type="complete"' in steps[-1]["body"]
        assert len(steps[-1]["webvpn"]) == 44

    # wrong password, locked account and unknown user look the same: two
    # "Login failed." forms, then 401 (and the connection is closed)
    for user, password in (("test", "wrong"), ("locked", lab.users["locked"]), ("nobody", "x")):
        steps = flow(user, password)
        assert [(s["status"], s["reason"]) for s in steps] == [
            (200, "OK"),
            (200, "OK"),
            (200, "OK"),
            (200, "OK"),
            (401, "Authentication failed"),
        ], (user, steps)
        assert "Login failed." in steps[2]["body"]
        assert steps[-1]["body"] == ""
        assert all(s["webvpn"] == "" for s in steps)


def test_options_groups_full_tunnel_dtls(lab_factory: Any) -> None:
    opts = OcservOptions(routes=("default",), groups=("engineering", "sales"), dtls=True, mtu=1300)
    lab = lab_factory(opts)
    conf = Path(lab.workdir, "ocserv.conf").read_text().splitlines()
    for line in ("route = default", "select-group = engineering", "udp-port = 443", "mtu = 1300"):
        assert line in conf
    udp = lab.run_in(lab.server_ns, "ss", "-Hlun").stdout.decode()
    assert f"{lab.server_ip}:443" in udp

    proc = start_openconnect(lab, "--authgroup=engineering")
    tun = wait_for_tun(lab, proc)
    assert tun["mtu"] <= 1300
    users = json.loads(lab.occtl("-j", "show", "users"))
    assert [u["Groupname"] for u in users] == ["engineering"]
    # full tunnel: the lab's vpnc-script routes everything into the tun, and the
    # server stays reachable over the original path (it is on-link)
    assert lab.ip_json(lab.client_ns, "route", "get", "203.0.113.1")[0]["dev"] == tun["ifname"]
    assert lab.ip_json(lab.client_ns, "route", "get", lab.server_ip)[0]["dev"] == lab.client_uplink
    assert ping(lab, lab.client_ns, lab.target_ip)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_restart_ocserv(lab: Lab) -> None:
    old = lab.ocserv_pid
    lab.restart_ocserv(OcservOptions(dpd=7))
    assert lab.ocserv_pid not in (None, old)
    assert "dpd = 7" in Path(lab.workdir, "ocserv.conf").read_text().splitlines()
    assert "Status: online" in lab.occtl("show", "status")
    assert lab.options.dpd == 7


def lab_processes(lab: Lab) -> set[int]:
    pids: set[int] = set()
    for ns in (lab.client_ns, lab.server_ns, lab.target_ns):
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, check=True).stdout
        pids |= {int(p) for p in out.split()}
    return pids


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def fail_inside(lab: Lab, pids: set[int]) -> None:
    with lab:
        pids |= lab_processes(lab)
        raise RuntimeError("boom")


def test_teardown_leaves_nothing_behind() -> None:
    before = host_network_state()

    with Lab() as lab:
        proc = start_openconnect(lab)
        wait_for_tun(lab, proc)
        lab.popen_in(lab.target_ns, "sleep", "60")
        pids = lab_processes(lab)
        names: tuple[str, ...] = (lab.client_ns, lab.server_ns, lab.target_ns)
        workdir = lab.workdir
    assert lab.ocserv_pid is None
    assert len(pids) >= 5  # ocserv main, sec-mod, worker, iperf3, openconnect, sleep

    # an exception inside the block tears down just the same
    lab2 = Lab()
    with pytest.raises(RuntimeError, match="boom"):
        fail_inside(lab2, pids)
    names += (lab2.client_ns, lab2.server_ns, lab2.target_ns)
    workdir2 = lab2.workdir

    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, check=True
    ).stdout.decode()
    assert not [ns for ns in names if ns in listed]
    assert not [ns for ns in names if os.path.exists(f"/run/netns/{ns}")]
    assert [pid for pid in pids if not gone(pid)] == []
    assert not os.path.exists(workdir)
    assert not os.path.exists(workdir2)
    assert host_network_state() == before
    assert lab.teardown_seconds < 10
