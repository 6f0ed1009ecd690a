"""`sepconnect connect --script` with Debian's real vpnc-script against the lab's ocserv.

The client runs in the lab's client namespace *and* a private mount namespace (a tmpfs
on /run, where vpnc-script keeps its backups, and a file of the test bind-mounted on
/etc/resolv.conf), so neither the host's network nor its resolver is touched. A
wrapper logs each run's reason, uid and effective capabilities, saves the
environment, and execs /usr/share/vpnc-scripts/vpnc-script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, OcservOptions

pytestmark = [pytest.mark.root, pytest.mark.netns]

VENV = os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv")
SEPCONNECT = f"{VENV}/bin/sepconnect"
VPNC_SCRIPT = "/usr/share/vpnc-scripts/vpnc-script"
ORIGINAL = b"# the client's own resolver\nnameserver 198.18.1.53\n"
HOSTILE_BANNER = "Welcome $(touch /tmp/sepconnect-pwned) `touch /tmp/sepconnect-pwned2`"
WRAPPER = """#!/bin/sh
echo "$reason uid=$(id -u) $(grep CapEff /proc/self/status | tr -d '\\t')" >> {log}
env | grep -E '^(CISCO_|INTERNAL_IP|VPNGATEWAY|TUNDEV|VPNPID|IDLE_TIMEOUT|reason)' \\
  | sort > {envdir}/$reason.env
exec {script}
"""


def _connect(lab: Lab, script: Path, resolv: Path) -> subprocess.Popen[bytes]:
    """`sepconnect connect --script SCRIPT` in the client namespace and a private mount
    namespace (/run on a tmpfs, ``resolv`` on /etc/resolv.conf); the password is sent."""
    resolv.write_bytes(ORIGINAL)
    work = Path(lab.workdir)
    connect = (
        f"mount -t tmpfs -o mode=755 tmpfs /run && mount --bind {resolv} /etc/resolv.conf && "
        f"exec {SEPCONNECT} connect --passwd-on-stdin --user test "
        f"--audit-log {work / 'audit.jsonl'} --session-log {work / 'session.jsonl'} "
        f"--servercert {lab.server_cert_pin} --script {script} {lab.url}"
    )
    proc = lab.popen_in(
        lab.client_ns, "unshare", "-m", "--propagation", "private", "sh", "-c", connect,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"test123\n")
    proc.stdin.close()
    proc.stdin = None
    return proc


def _routes(lab: Lab) -> list[Any]:
    """The client namespace's routes, both families, every table."""
    return [
        lab.ip_json(lab.client_ns, *family, "route", "show", "table", "all")
        for family in ((), ("-6",))
    ]


def _tuns(lab: Lab) -> list[str]:
    return [
        link["ifname"]
        for link in lab.ip_json(lab.client_ns, "link", "show")
        if link.get("link_type") == "none"
    ]


def _pids_titled(title: str, parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue
        if cmdline.startswith(title.encode()) and ppid == parent:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path(VPNC_SCRIPT).exists(), reason="Debian package vpnc-scripts needed")
def test_debian_vpnc_script_runs_as_root_for_every_reason(
    lab_factory: Callable[..., Lab],
) -> None:
    lab = lab_factory(
        OcservOptions(
            dns=("198.18.2.53",),
            extra=(
                "default-domain = corp.example",
                "split-dns = intra.example",
                f'banner = "{HOSTILE_BANNER}"',
            ),
        )
    )
    work = Path(lab.workdir)
    log, envdir = work / "reasons.log", work / "env"
    envdir.mkdir()
    wrapper = work / "wrapper"
    wrapper.write_text(WRAPPER.format(log=log, envdir=envdir, script=VPNC_SCRIPT))
    wrapper.chmod(0o755)
    resolv = work / "resolv.conf"
    proc = _connect(lab, wrapper, resolv)

    def reasons() -> list[str]:
        return log.read_text().split("\n")[:-1] if log.exists() else []

    def routed() -> bool | None:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1].decode())
        get = lab.ip_json(lab.client_ns, "route", "get", lab.target_ip)
        return True if get and get[0]["dev"].startswith("sepc") else None

    lab.wait_for("the vpnc-script to route the target through the tunnel", routed, 20)
    assert [r.split()[0] for r in reasons()] == ["pre-init", "connect"]
    # The script did the work: address, routes, DNS.
    tun = lab.client_tun()
    assert tun is not None
    assert lab.run_in(lab.client_ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", lab.target_ip)
    text = resolv.read_text()
    assert "nameserver 198.18.2.53" in text, text
    assert "corp.example" in text, text
    env = dict(
        line.split("=", 1)
        for line in (envdir / "connect.env").read_text().splitlines()
        if "=" in line
    )
    assert env["TUNDEV"] == tun["ifname"]
    assert env["VPNGATEWAY"] == lab.server_ip
    assert env["CISCO_SPLIT_INC_0_ADDR"] == "198.18.2.0"
    assert env["CISCO_SPLIT_DNS"] == "intra.example"
    assert env["CISCO_BANNER"] == HOSTILE_BANNER  # data, never executed
    assert not Path("/tmp/sepconnect-pwned").exists()
    assert not Path("/tmp/sepconnect-pwned2").exists()
    # A worker dies: the tun stays, the script hears attempt-reconnect and reconnect.
    (spawner,) = _pids_titled("sepconnect: spawner", proc.pid)  # the workers' parent
    (worker,) = lab.wait_for(
        "the worker", lambda: _pids_titled("sepconnect: worker", spawner) or None
    )
    os.kill(worker, signal.SIGKILL)
    lab.wait_for(
        "the reconnect script run",
        lambda: True if "reconnect" in [r.split()[0] for r in reasons()] else None,
        30,
    )
    assert lab.client_tun() is not None
    assert lab.run_in(lab.client_ns, "ping", "-c", "1", "-W", "2", lab.target_ip)
    # Disconnect: the script removes its routes and puts resolv.conf back.
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    done = [r.split()[0] for r in reasons()]
    assert done == ["pre-init", "connect", "attempt-reconnect", "reconnect", "disconnect"], done
    for line in reasons():  # every one as root, with full capabilities
        assert " uid=0 " in line, line
        assert not line.endswith("CapEff:0000000000000000"), line
    assert resolv.read_bytes() == ORIGINAL
    assert lab.client_tun() is None
    get = lab.ip_json(lab.client_ns, "route", "get", lab.target_ip)
    assert get[0]["dev"] == lab.client_uplink


FAILING_WRAPPER = """#!/bin/sh
echo "$reason" >> {log}
{script} || exit
[ "$reason" != "{fail}" ]
"""


@pytest.mark.skipif(not Path(VPNC_SCRIPT).exists(), reason="Debian package vpnc-scripts needed")
@pytest.mark.parametrize("fail", ["connect", "reconnect"])
def test_a_failing_connect_or_reconnect_script_ends_the_session(
    lab_factory: Callable[..., Lab], fail: str
) -> None:
    """The script does its work, then exits 1: the session ends with exit 9 and the
    script's own disconnect undoes what it did (resolv.conf, routes); the tun goes."""
    lab = lab_factory(OcservOptions(dns=("198.18.2.53",)))
    work = Path(lab.workdir)
    log = work / "reasons.log"
    wrapper = work / "wrapper"
    wrapper.write_text(FAILING_WRAPPER.format(log=log, script=VPNC_SCRIPT, fail=fail))
    wrapper.chmod(0o755)
    resolv = work / "resolv.conf"
    routes_before = _routes(lab)
    proc = _connect(lab, wrapper, resolv)
    if fail == "reconnect":

        def connected() -> bool | None:
            if proc.poll() is not None:
                raise AssertionError(proc.communicate()[1].decode())
            events = Path(lab.workdir) / "session.jsonl"  # the supervisor's events
            lines = events.read_text().splitlines() if events.exists() else []
            return True if "connect" in [json.loads(line)["op"] for line in lines] else None

        lab.wait_for("the session to be connected", connected, 20)
        assert "nameserver 198.18.2.53" in resolv.read_text()
        (spawner,) = _pids_titled("sepconnect: spawner", proc.pid)  # the workers' parent
        (worker,) = lab.wait_for(
            "the worker", lambda: _pids_titled("sepconnect: worker", spawner) or None
        )
        os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 9, text
    assert (
        f"sepconnect: the privileged helper refused the network configuration: "
        f"vpnc-script {fail} failed: {wrapper} exited with 1"
    ) in text, text
    assert "connected to" not in text or fail == "reconnect", text
    done = log.read_text().split()
    if fail == "connect":
        assert done == ["pre-init", "connect", "disconnect"], done
    else:
        assert done == ["pre-init", "connect", "attempt-reconnect", "reconnect", "disconnect"]
    assert resolv.read_bytes() == ORIGINAL
    assert _tuns(lab) == []
    assert _routes(lab) == routes_before


def test_a_script_that_cannot_be_executed_ends_the_session(
    lab_factory: Callable[..., Lab],
) -> None:
    """A root-owned executable file the kernel cannot execute (its interpreter does not
    exist): no session reports connected; exit 9, no tun, no route."""
    lab = lab_factory()
    script = Path(lab.workdir) / "broken-script"
    script.write_text("#!/nonexistent/sepconnect-test/sh\n")
    script.chmod(0o755)
    routes_before = _routes(lab)
    proc = _connect(lab, script, Path(lab.workdir) / "resolv.conf")
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 9, text
    assert (
        f"sepconnect: the privileged helper refused the network configuration: "
        f"vpnc-script connect failed: cannot execute {script}: No such file or directory"
    ) in text, text
    assert "connected to" not in text, text
    assert _tuns(lab) == []
    assert _routes(lab) == routes_before
