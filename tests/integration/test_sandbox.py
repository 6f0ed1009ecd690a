"""The sandboxes, proven from the inside: each process's /proc status, and the real worker
trying forbidden things after its sandbox is up (issue #5).

Two ways of running the worker:

- a whole ``sepconnect connect`` session in the lab, with the test-only self-test switch
  (``SEPCONNECT_TEST_SANDBOX_SELFTEST=report``): the sandboxed worker tries every
  non-fatal forbidden operation, prints the outcomes, and then carries on with the
  session, which must still work;
- the installed worker entry point (``python -I -m sepconnect.worker``) started here as
  ``nobody`` with a socketpair and a Start message, as the supervisor starts it: each
  probe that must *kill* it (exec, fork, ptrace, …) gets its own worker, which must die
  of SIGSYS before it does anything else.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from messages import start_message

from sepconnect.ipc.wire import Channel, socketpair
from sepconnect.ipc.worker_messages import FROM_WORKER, TO_WORKER
from sepconnect.process.accounts import HELPER_FALLBACK_UID
from sepconnect.worker import sandbox

from lab import Lab

pytestmark = [pytest.mark.root]

VENV = os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv")
SEPCONNECT = f"{VENV}/bin/sepconnect"
PYTHON = f"{VENV}/bin/python"
NOBODY = 65534
CAP_NET_ADMIN = 1 << 12


def status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found + [d for child in list(found) for d in descendants(child)]


def role(pid: int) -> str | None:
    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    match = re.match(r"sepconnect: (\w+)", title)
    return match.group(1) if match else None


@cache
def _connect_options() -> str:
    return subprocess.run(
        [SEPCONNECT, "connect", "--help"], capture_output=True, text=True, check=False
    ).stdout


def start_session(lab: Lab, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [SEPCONNECT, "connect", "--passwd-on-stdin", "--user", "test", "--dns-backend", "none"]
    argv += ["--audit-log", str(Path(lab.workdir, f"audit-{time.monotonic_ns()}.jsonl"))]
    argv += ["--session-log", str(Path(lab.workdir, f"session-{time.monotonic_ns()}.jsonl"))]
    argv += ["--servercert", lab.server_cert_pin]
    argv += ["--state-dir", str(Path(lab.workdir, f"state-{time.monotonic_ns()}"))]
    if "--control-socket" in _connect_options():
        argv += ["--control-socket", str(Path(lab.workdir, f"ctl-{time.monotonic_ns()}", "s"))]
    proc = lab.popen_in(
        lab.client_ns,
        *argv,
        lab.url,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stdin is not None
    proc.stdin.write(f"{lab.users['test']}\n".encode())
    proc.stdin.close()
    proc.stdin = None
    return proc


def wait_up(lab: Lab, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"sepconnect exited {proc.returncode}:\n{err.decode()}")
        tun = lab.client_tun()
        return tun if tun is not None and "UP" in tun.get("flags", []) else None

    return lab.wait_for("the tunnel", probe, timeout=20)


# --------------------------------------------------------------------------- a real session


@pytest.fixture
def session(lab: Lab) -> Iterator[tuple[Lab, subprocess.Popen[bytes], dict[str, int]]]:
    proc = start_session(lab, {sandbox.SELFTEST_ENV: "report"})
    wait_up(lab, proc)
    pids = {r: pid for pid in [proc.pid, *descendants(proc.pid)] if (r := role(pid))}
    yield lab, proc, pids
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


@pytest.mark.netns
def test_every_process_runs_with_its_manifest(
    session: tuple[Lab, subprocess.Popen[bytes], dict[str, int]],
) -> None:
    lab, proc, pids = session
    assert set(pids) == {"supervisor", "privhelper", "spawner", "worker"}, pids
    for name in ("supervisor", "spawner", "worker"):
        st = status(pids[name])
        assert all(u != "0" for u in st["Uid"].split()), (name, st["Uid"])
        assert all(g != "0" for g in st["Gid"].split()), (name, st["Gid"])
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[cap], 16) == 0, (name, cap, st[cap])
        assert st["NoNewPrivs"] == "1", name
        # Not dumpable: the kernel makes its /proc files root's.
        assert os.stat(f"/proc/{pids[name]}/status").st_uid == 0, name
    worker = status(pids["worker"])
    assert worker["Seccomp"] == "2", worker["Seccomp"]  # filter mode
    assert int(worker["Seccomp_filters"]) >= 1
    helper = status(pids["privhelper"])
    assert helper["Uid"].split() == [str(HELPER_FALLBACK_UID)] * 4  # its own uid, not root
    assert helper["Gid"].split() == [str(HELPER_FALLBACK_UID)] * 4
    assert os.stat(f"/proc/{pids['privhelper']}/status").st_uid == 0  # not dumpable
    for cap in ("CapPrm", "CapEff", "CapBnd"):
        assert int(helper[cap], 16) == CAP_NET_ADMIN, (cap, helper[cap])
    assert int(helper["CapInh"], 16) == int(helper["CapAmb"], 16) == 0
    assert helper["NoNewPrivs"] == "1"
    assert helper["Seccomp"] == "2", helper["Seccomp"]
    assert int(helper["Threads"]) == 1  # single-threaded
    # The data path works inside the sandbox.
    ping = lab.run_in(lab.client_ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", lab.target_ip)
    assert ping.returncode == 0


# What a process with the worker's uid and no sandbox at all (a worker that escaped its
# sandbox) tries against the other processes of the session: a signal (0: only the
# permission check is made).
REACH = r"""
import os, sys
for name, pid in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        os.kill(int(pid), 0)
        print(name, "allowed")
    except OSError as exc:
        print(name, exc.errno)
"""


@pytest.mark.netns
def test_helper_supervisor_and_worker_run_under_three_uids(
    session: tuple[Lab, subprocess.Popen[bytes], dict[str, int]],
) -> None:
    """Issue 13, item 2: the worker (and its spawner) have a uid and gid of their own,
    neither the supervisor's nor the helper's, and no supplementary group; a process
    with that uid cannot signal the supervisor or the helper."""
    lab, proc, pids = session
    st = {name: status(pid) for name, pid in pids.items()}
    uids = {name: s["Uid"].split() for name, s in st.items()}
    gids = {name: s["Gid"].split() for name, s in st.items()}
    for name in pids:
        assert len(set(uids[name])) == 1, (name, uids[name])  # real, effective, saved, fs
        assert len(set(gids[name])) == 1, (name, gids[name])
    helper, supervisor, worker = (uids[n][0] for n in ("privhelper", "supervisor", "worker"))
    assert len({helper, supervisor, worker}) == 3, uids
    assert uids["spawner"] == uids["worker"]
    assert gids["worker"][0] not in (gids["supervisor"][0], gids["privhelper"][0]), gids
    assert st["worker"]["Groups"] == st["spawner"]["Groups"] == "", st["worker"]["Groups"]
    assert worker != "0"
    try:
        owner = pwd.getpwuid(int(worker)).pw_name
    except KeyError:
        owner = None  # the fixed uid (no sepconnect-worker account on the lab machine)
    assert owner in (None, "sepconnect-worker"), owner
    targets = [str(a) for n in ("supervisor", "privhelper") for a in (n, pids[n])]
    result = subprocess.run(
        [PYTHON, "-I", "-c", REACH, *targets],
        user=int(worker), group=int(gids["worker"][0]), extra_groups=[],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    assert result.stdout.splitlines() == ["supervisor 1", "privhelper 1"], result.stdout  # EPERM


@pytest.mark.netns
def test_sandboxed_worker_cannot_do_forbidden_things(
    session: tuple[Lab, subprocess.Popen[bytes], dict[str, int]],
) -> None:
    lab, proc, _ = session
    # Traffic still flows with the self-test done (it ran before the TLS connection).
    ping = lab.run_in(lab.client_ns, "ping", "-c", "1", "-W", "2", lab.target_ip)
    assert ping.returncode == 0
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    results = sandbox_report(err.decode())
    assert results == EXPECTED_REPORT


def sandbox_report(stderr: str) -> dict[str, str]:
    import json

    lines = [ln for ln in stderr.splitlines() if ln.startswith(sandbox.PROBE_PREFIX)]
    assert len(lines) == 1, stderr
    report: dict[str, str] = json.loads(lines[0][len(sandbox.PROBE_PREFIX) :])
    return report


EXPECTED_REPORT = {
    # files: Landlock (and, for /etc/shadow, DAC too)
    "read_etc_shadow": "EACCES",
    "read_etc_passwd": "EACCES",  # world-readable, but not ours to read
    "create_file_in_tmp": "EACCES",
    "write_dev_null": "EACCES",
    "open_dev_net_tun": "EACCES",  # so no tun can be created or attached
    # sockets and ioctls: seccomp
    "netlink_socket": "EAFNOSUPPORT",
    "packet_socket": "EAFNOSUPPORT",
    "unix_socket": "EAFNOSUPPORT",  # no pathname sockets: helper, journald, D-Bus
    "tunsetiff_ioctl": "ENOTTY",
    "siocgifconf_ioctl": "ENOTTY",
    "wx_mapping": "EACCES",
    # TCP only to the server's port (Landlock ABI 4+)
    "tcp_connect_other_port": "EACCES",
    "tcp_connect_dns": "EACCES",  # no DNS: the launcher resolved the server
    "read_resolv_conf": "EACCES",
    # and what the worker needs still works
    "read_ca_store": "allowed",
    "udp_socket": "allowed",
    "udp6_socket": "allowed",
    "isatty": "allowed",
}


# --------------------------------------------------------------------------- the worker alone


def run_worker(probe: str, *, weak: bool = False, timeout: float = 20) -> tuple[int, str]:
    """The installed worker as nobody, given a Start; it sandboxes itself, then probes."""
    ours, theirs = socketpair()
    env = {"PATH": "/usr/bin:/bin", sandbox.SELFTEST_ENV: probe}
    weak_flag = ["--allow-weak-sandbox"] if weak else []
    proc = subprocess.Popen(
        [PYTHON, "-I", "-m", "sepconnect.worker", "--fd", str(theirs.fileno()), *weak_flag],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env=env,
    )
    theirs.close()
    channel = Channel(ours, FROM_WORKER, send_codec=TO_WORKER)
    try:
        # Loopback, nothing listens: a worker that survives its probe gets ECONNREFUSED.
        channel.send(start_message("https://127.0.0.1:9/"))
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()
    return proc.returncode, err.decode(errors="replace")


@pytest.mark.parametrize("probe", sandbox.FATAL_PROBES)
def test_forbidden_system_calls_kill_the_worker(probe: str) -> None:
    code, err = run_worker(probe)
    assert code == -signal.SIGSYS, (code, err)
    assert "survived" not in err
    assert "Traceback" not in err


def test_worker_alone_reports_the_same_outcomes() -> None:
    code, err = run_worker("report")
    assert "Traceback" not in err, err
    assert sandbox_report(err) == EXPECTED_REPORT
    assert code != -signal.SIGSYS


def test_worker_refuses_to_run_with_capabilities() -> None:
    # Run as root (the worker's own root check aside): the sandbox refuses capabilities.
    code = subprocess.run(
        [PYTHON, "-I", "-c", "from sepconnect.worker import sandbox; sandbox.apply(server_port=1)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert code.returncode == 1
    assert "holds capabilities it must not have: CapEff=" in code.stderr
    assert sys.executable  # (the test itself runs as root)


# --------------------------------------------------------------------------- the audit trail


@pytest.mark.netns
def test_a_full_session_logs_no_secret(lab: Lab) -> None:
    """Connect with -vvvv, move traffic, disconnect: neither the audit log (helper and
    supervisor records) nor anything printed holds the password or the cookie."""
    import json
    import secrets

    password = "pw-" + secrets.token_urlsafe(24)
    lab.add_user("auditee", password)
    audit_log = Path(lab.workdir, "audit-secrets.jsonl")
    session_log = Path(lab.workdir, "session-secrets.jsonl")
    argv = [SEPCONNECT, "connect", "-vvvv", "--passwd-on-stdin", "--user", "auditee"]
    argv += ["--audit-log", str(audit_log), "--session-log", str(session_log)]
    argv += ["--servercert", lab.server_cert_pin]
    argv += ["--state-dir", str(Path(lab.workdir, "state-secrets"))]
    if "--control-socket" in _connect_options():
        argv += ["--control-socket", str(Path(lab.workdir, "ctl-secrets", "s"))]
    proc = lab.popen_in(
        lab.client_ns,
        *argv,
        lab.url,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(f"{password}\n".encode())
    proc.stdin.close()
    proc.stdin = None
    wait_up(lab, proc)
    assert lab.run_in(lab.client_ns, "ping", "-c", "2", "-i", "0.2", lab.target_ip).returncode == 0
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    text = audit_log.read_text() + session_log.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    ops = [r["op"] for r in records]
    for op in ("start", "hello", "create_tun", "net_config", "connect", "disconnect", "teardown"):
        assert op in ops, ops
    everything = text + out.decode(errors="replace") + err.decode(errors="replace")
    everything += lab.ocserv_log()  # not ours, but a leak through the server would show
    assert password not in everything
    assert password.encode().hex() not in everything
    # The AnyConnect cookie is "webvpn=<base64>": neither its name nor a cookie-sized
    # base64 token appears in what we wrote.
    ours = text + out.decode(errors="replace") + err.decode(errors="replace")
    assert "webvpn" not in ours.lower()
    tokens = re.findall(r"[A-Za-z0-9+/]{40,}={0,2}", ours)
    pins = {lab.server_cert_pin.removeprefix("pin-sha256:")}
    assert set(tokens) <= pins, tokens


@pytest.mark.netns
def test_failed_login_is_audited_without_the_password(lab: Lab) -> None:
    import json

    audit_log = Path(lab.workdir, "audit-authfail.jsonl")
    session_log = Path(lab.workdir, "session-authfail.jsonl")
    wrong = "wrong-" + "x" * 20
    proc = lab.popen_in(
        lab.client_ns,
        SEPCONNECT, "connect", "--passwd-on-stdin", "--user", "test",
        "--audit-log", str(audit_log), "--session-log", str(session_log),
        "--servercert", lab.server_cert_pin,
        "--state-dir", str(Path(lab.workdir, "state-authfail")),
        *(["--control-socket", str(Path(lab.workdir, "ctl-authfail", "s"))]
          if "--control-socket" in _connect_options() else []),
        lab.url,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(f"{wrong}\n".encode())
    proc.stdin.close()
    proc.stdin = None
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err.decode()  # AUTH_FAILED
    text = session_log.read_text()
    failures = [r for r in map(json.loads, text.splitlines()) if r["op"] == "auth_failure"]
    assert len(failures) == 1, text
    assert failures[0]["result"] == "refused"
    assert failures[0]["source"] == "supervisor"
    assert wrong not in text + err.decode()
    assert wrong not in (audit_log.read_text() if audit_log.exists() else "")


WEAK_PROBE = """
import sys
from sepconnect.worker import sandbox
abi = int(sys.argv[2])
sandbox.landlock_abi = lambda: abi  # a kernel without Landlock, or with an older ABI
try:
    status = sandbox.apply(server_port=443, allow_weak=sys.argv[1] == "weak")
except sandbox.SandboxUnavailable as exc:
    print("refused:", exc)
    sys.exit(3)
print("missing:", status.missing, "seccomp:", status.seccomp)
print(status.describe())
"""


def _weak_probe(mode: str, abi: int) -> subprocess.CompletedProcess[str]:
    """WEAK_PROBE as nobody, with the kernel's Landlock ABI taken to be ``abi``."""
    return subprocess.run(
        [PYTHON, "-I", "-c", WEAK_PROBE, mode, str(abi)],
        capture_output=True,
        text=True,
        check=False,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        timeout=30,
    )


@pytest.mark.parametrize("mode", ["strict", "weak"])
def test_missing_kernel_feature_fails_closed_unless_weak_is_allowed(mode: str) -> None:
    result = _weak_probe(mode, abi=0)
    if mode == "strict":
        assert result.returncode == 3, result.stderr
        assert "lacks Landlock" in result.stdout
        assert "--allow-weak-sandbox" in result.stdout
    else:
        assert result.returncode == 0, result.stderr
        assert "missing: ('Landlock" in result.stdout
        assert "seccomp: True" in result.stdout


@pytest.mark.parametrize("mode", ["strict", "weak"])
def test_a_landlock_abi_without_tcp_rules_fails_closed_unless_weak_is_allowed(mode: str) -> None:
    """ABI 1-3 cannot limit TCP connect to the server's port: refused by default, and
    named; the rules seccomp also enforces (ABI 5, 6) are reported, not refused."""
    result = _weak_probe(mode, abi=3)
    if mode == "strict":
        assert result.returncode == 3, result.stderr
        assert "Landlock ABI 4 (TCP connect only to the server's port" in result.stdout
        assert "this kernel has ABI 3" in result.stdout
        assert "--allow-weak-sandbox" in result.stdout
    else:
        assert result.returncode == 0, result.stderr
        assert 'missing: ("Landlock ABI 4 (TCP connect' in result.stdout
        described = "sandbox: Landlock ABI 3, seccomp on; not enforced by Landlock here:"
        assert described in result.stdout
        assert "no abstract unix socket or signal outside its domain (ABI 6" in result.stdout
