"""The split systemd layout without systemd: the helper and the worker spawner each started
by a socket acceptor (what `sepconnect-helper.socket` and `sepconnect-spawner.socket` with
Accept=yes do), the session started directly as the unprivileged service account with
`--helper-socket` and `--spawner-socket`.

Issue 13, item 2 (F1): helper, supervisor and worker run under three uids, and the worker
can reach nothing of the helper's: not from inside the real sandboxed worker, and not as
a process with the worker's uid and no sandbox at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_connect import SEPCONNECT, VENV, _ping, _status, _title
from test_sandbox import EXPECTED_REPORT, sandbox_report

from sepconnect.process.accounts import HELPER_FALLBACK_UID as HELPER_UID
from sepconnect.worker import sandbox

from lab import Lab, descendants

pytestmark = [pytest.mark.root, pytest.mark.netns]

NOBODY = 65534  # the service account here (the lab machine has no "sepconnect")
WORKER = 65532  # the workers' fixed uid and gid (launcher/session_accounts.py): no account here
PYTHON = f"{VENV}/bin/python"

# What systemd does for a socket unit with Accept=yes: listen (the socket's owner, group
# and mode as SocketUser=, SocketGroup=, SocketMode= say), accept one connection, and
# start the service with the connection as fd 3 (SO_PASSCRED on, as PassCredentials=yes
# asks), while it keeps listening: a further connection would start another instance
# (here it waits in the backlog). The service's pid is written next to the ready file;
# the acceptor exits with the service's status.
ACCEPTOR = r"""
import os, socket, sys
path, ready, mode, gid = sys.argv[1], sys.argv[2], int(sys.argv[3], 8), int(sys.argv[4])
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(path)
os.chown(path, 0, gid)
os.chmod(path, mode)
listener.listen(8)
open(ready, "w").close()
conn, _ = listener.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
pid = os.fork()
if pid == 0:
    listener.close()
    os.dup2(conn.fileno(), 3)
    os.execv(sys.argv[5], sys.argv[5:])
conn.close()
with open(ready + ".pid", "w") as f:
    f.write(str(pid))
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""

# User=sepconnect-worker with CapabilityBoundingSet= and NoNewPrivileges=yes.
AS_WORKER_ACCOUNT = (
    shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={WORKER}", f"--regid={WORKER}",
    "--clear-groups", "--bounding-set=-all", "--no-new-privs",
)  # fmt: skip


@dataclass
class Listening:
    acceptor: subprocess.Popen[bytes]
    socket: Path
    ready: Path

    def service_pid(self, lab: Lab) -> int:
        pid_file = Path(f"{self.ready}.pid")
        lab.wait_for("the service to start", lambda: True if pid_file.exists() else None)
        return int(pid_file.read_text())


def listen(
    lab: Lab,
    name: str,
    argv: list[str],
    *,
    mode: int = 0o660,
    env: dict[str, str] | None = None,
    stderr: int | None = None,
) -> Listening:
    work = Path(lab.workdir)
    path, ready = work / f"{name}.sock", work / f"{name}.ready"
    script = work / "acceptor.py"
    if not script.exists():
        script.write_text(ACCEPTOR)
    acceptor = lab.popen_in(
        lab.client_ns, PYTHON, str(script), str(path), str(ready), f"{mode:o}", str(NOBODY),
        *argv, env=env, stderr=stderr,
    )  # fmt: skip
    lab.wait_for(f"the {name} socket", lambda: True if ready.exists() else None)
    return Listening(acceptor, path, ready)


def helper_logs(lab: Lab, name: str) -> Path:
    """LogsDirectory= of the helper's unit: its account's, 0700."""
    logs = Path(lab.workdir, f"{name}-logs")
    logs.mkdir(mode=0o700)
    os.chown(logs, HELPER_UID, HELPER_UID)
    return logs


def listen_helper(lab: Lab, name: str, audit: Path, *, mode: int = 0o660) -> Listening:
    # RuntimeDirectory= of the helper's unit: its account's, 0700.
    state = Path(lab.workdir, f"{name}-state")
    state.mkdir(mode=0o700)
    os.chown(state, HELPER_UID, HELPER_UID)
    # What the unit's User=, AmbientCapabilities=CAP_NET_ADMIN and
    # CapabilityBoundingSet=CAP_NET_ADMIN do: the helper never is root.
    return listen(lab, name, [
        "/usr/bin/setpriv", f"--reuid={HELPER_UID}", f"--regid={HELPER_UID}",
        "--clear-groups", "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
        "--bounding-set=-all,+net_admin", f"{VENV}/bin/sepconnect-privhelper", "--fd", "3",
        "--peer-uid", str(NOBODY), "--audit-log", str(audit), "--state-dir", str(state),
    ], mode=mode)  # fmt: skip


@dataclass
class SplitSession:
    helper: Listening
    spawner: Listening
    session: subprocess.Popen[bytes]
    audit: Path
    control: str

    def pids(self, lab: Lab) -> dict[str, int]:
        """helper, supervisor, spawner and worker, by their titles."""
        spawner = self.spawner.service_pid(lab)
        found = {"privhelper": self.helper.service_pid(lab), "supervisor": self.session.pid}
        found["spawner"] = spawner
        workers = [p for p in descendants(spawner) if _title(p) == "sepconnect: worker"]
        assert len(workers) == 1, workers
        found["worker"] = workers[0]
        for role, pid in found.items():
            assert _title(pid) == f"sepconnect: {role}", (role, _title(pid))
        return found

    def stop(self) -> str:
        """SIGINT to the session; its exit status 0 and the helper's and the spawner's
        too; returns what the spawner and its workers wrote (the workers' self-test)."""
        self.session.send_signal(signal.SIGINT)
        _, err = self.session.communicate(timeout=20)
        assert self.session.returncode == 0, err.decode()
        assert self.helper.acceptor.wait(timeout=10) == 0  # the helper tore down and exited
        _, spawner_err = self.spawner.acceptor.communicate(timeout=10)
        assert self.spawner.acceptor.returncode == 0, spawner_err.decode()
        return spawner_err.decode()


@pytest.fixture
def split(lab: Lab) -> Iterator[SplitSession]:
    work = Path(lab.workdir)
    audit = helper_logs(lab, "helper") / "audit.jsonl"
    helper = listen_helper(lab, "helper", audit)
    # The sandboxed worker also tries to connect to the helper's socket (a probe that
    # only attempts; the worker reports the errno and carries on).
    probe_env = {**os.environ, sandbox.SELFTEST_ENV: f"{sandbox.REPORT}:{helper.socket}"}
    spawner = listen(lab, "spawner", [
        *AS_WORKER_ACCOUNT, f"{VENV}/bin/sepconnect-spawner", "--fd", "3",
        "--peer-uid", str(NOBODY),
    ], env=probe_env, stderr=subprocess.PIPE)  # fmt: skip
    # RuntimeDirectory= of the session unit: a directory the service account owns.
    control_dir = work / "session-run"
    control_dir.mkdir()
    os.chown(control_dir, NOBODY, NOBODY)
    control = str(control_dir / "control.sock")
    session = lab.popen_in(
        lab.client_ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        "--bounding-set=-all",  # CapabilityBoundingSet= of the session unit
        SEPCONNECT, "connect", "--helper-socket", str(helper.socket),
        "--spawner-socket", str(spawner.socket), "--user", "test",
        "--passwd-on-stdin", "--servercert", lab.server_cert_pin, "--control-socket", control,
        lab.url,
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert session.stdin is not None
    session.stdin.write(b"test123\n")
    session.stdin.close()
    session.stdin = None
    split = SplitSession(helper, spawner, session, audit, control)

    def up() -> dict[str, object] | None:
        if session.poll() is not None:
            _, err = session.communicate()
            _, spawner_err = spawner.acceptor.communicate(timeout=10)
            raise AssertionError(
                f"the session exited {session.returncode}:\n{err.decode()}{spawner_err.decode()}"
            )
        return lab.client_tun()

    try:
        lab.wait_for("the tunnel", up, timeout=20)
        yield split
    finally:
        if session.poll() is None:
            session.send_signal(signal.SIGINT)
            session.communicate(timeout=20)
        for listening in (helper, spawner):
            if listening.acceptor.poll() is None:
                listening.acceptor.communicate(timeout=10)


def test_session_as_the_service_account_with_socket_activated_helper_and_spawner(
    lab: Lab, split: SplitSession
) -> None:
    assert _ping(lab, lab.target_ip).returncode == 0
    pids = split.pids(lab)
    # The helper runs as its own account with CAP_NET_ADMIN alone, the session never
    # was root, and the workers run under their own account.
    helper = _status(pids["privhelper"])
    assert helper["Uid"].split() == [str(HELPER_UID)] * 4
    for caps in ("CapEff", "CapPrm", "CapBnd"):
        assert int(helper[caps], 16) == 1 << 12, (caps, helper[caps])
    assert int(helper["CapInh"], 16) == int(helper["CapAmb"], 16) == 0
    titles = {_title(p) for p in [split.session.pid, *descendants(split.session.pid)]}
    assert titles == {"sepconnect: supervisor"}, titles  # it starts no process itself
    expected = {"supervisor": NOBODY, "spawner": WORKER, "worker": WORKER}
    for role, uid in expected.items():
        st = _status(pids[role])
        assert st["Uid"].split() == [str(uid)] * 4, (role, st["Uid"])
        assert st["Gid"].split() == [str(uid)] * 4, (role, st["Gid"])
        assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == int(st["CapBnd"], 16) == 0
        assert st["NoNewPrivs"] == "1", role
    status = json.loads(
        lab.run_in(lab.client_ns, SEPCONNECT, "status", "--json", "--socket", split.control).stdout
    )
    assert status["state"] == "connected"
    assert status["worker_pid"] == pids["worker"]
    spawner_err = split.stop()
    assert lab.client_tun() is None
    ops = [json.loads(line)["op"] for line in split.audit.read_text().splitlines()]
    assert "net_config" in ops
    assert "teardown" in ops
    # From inside the real sandboxed worker: connecting to the helper's socket fails
    # (seccomp refuses the AF_UNIX socket before the path is even looked at).
    report = sandbox_report(spawner_err)
    assert report == {**EXPECTED_REPORT, "connect_unix_path": "EAFNOSUPPORT"}, report


def test_helper_supervisor_and_worker_have_three_uids(lab: Lab, split: SplitSession) -> None:
    pids = split.pids(lab)
    uids = {role: _status(pid)["Uid"].split()[0] for role, pid in pids.items()}
    assert len({uids["privhelper"], uids["supervisor"], uids["worker"]}) == 3, uids
    split.stop()


# A process with the worker's uid and no sandbox at all: what a worker that escaped its
# sandbox could do. It connects to the helper's socket and asks for a tun as the
# supervisor would (HelperClient: hello{role: supervisor}, then create_tun).
FORGED_HELLO = r"""
import ipaddress, socket, sys
from sepconnect.ipc.wire import PeerClosed, WireError
from sepconnect.supervisor.helper_client import HelperClient
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print("connect", exc.errno)
    sys.exit(0)
client = HelperClient(sock, timeout=5)
try:
    client.hello(ipaddress.ip_address(sys.argv[2]))
    print("hello ok")
    ifname, ifindex, fd = client.create_tun(1400)
    print("tun", ifname)
except (PeerClosed, WireError, OSError) as exc:
    print("refused", type(exc).__name__)
"""


def _as_worker_uid(lab: Lab, script: str, *args: str) -> str:
    path = Path(lab.workdir, "as-worker.py")
    path.write_text(script)
    result = subprocess.run(
        [PYTHON, "-I", str(path), *args], user=WORKER, group=WORKER, extra_groups=[],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def test_a_process_with_the_workers_uid_gets_nothing_from_the_helper(
    lab: Lab, split: SplitSession
) -> None:
    pids = split.pids(lab)
    worker = _status(pids["worker"])
    assert worker["Uid"].split()[0] == str(WORKER)
    tuns_before = {link["ifname"] for link in lab.ip_json(lab.client_ns, "link", "show")}
    # The helper's socket as the unit makes it (root:sepconnect, 0660): no connect at all.
    out = _as_worker_uid(lab, FORGED_HELLO, str(split.helper.socket), lab.server_ip)
    assert out == "connect 13", out  # EACCES
    # A helper socket open to everyone (a misconfigured unit): the helper itself refuses
    # the sender's uid, records it, and creates nothing.
    audit = helper_logs(lab, "open-helper") / "audit.jsonl"
    open_helper = listen_helper(lab, "open-helper", audit, mode=0o666)
    out = _as_worker_uid(lab, FORGED_HELLO, str(open_helper.socket), lab.server_ip)
    assert out == "refused PeerClosed", out
    assert open_helper.acceptor.wait(timeout=10) != 0  # it ended on the violation
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    hello = [r for r in records if r["op"] == "hello"]
    assert len(hello) == 1, records
    assert hello[0]["result"] == "fatal"
    assert hello[0]["peer_uid"] == WORKER
    assert f"expected uid {NOBODY}" in hello[0]["reason"]
    assert not any(r["op"] == "create_tun" for r in records)
    tuns_after = {link["ifname"] for link in lab.ip_json(lab.client_ns, "link", "show")}
    assert tuns_after == tuns_before
    # The session is untouched.
    assert _ping(lab, lab.target_ip).returncode == 0
    split.stop()


def test_split_mode_refuses_root_and_privileged_options(lab: Lab) -> None:
    as_root = lab.run_in(
        lab.client_ns, SEPCONNECT, "connect", "--helper-socket", "/nonexistent",
        "--spawner-socket", "/nonexistent", lab.url,
        check=False,
    )  # fmt: skip
    assert as_root.returncode == 2
    assert b"not root" in as_root.stderr
    scripted = lab.run_in(
        lab.client_ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        SEPCONNECT, "connect", "--helper-socket", "/nonexistent",
        "--spawner-socket", "/nonexistent", "--fail-closed", lab.url,
        check=False,
    )  # fmt: skip
    assert scripted.returncode == 2
    assert b"helper's own configuration" in scripted.stderr


def test_split_mode_needs_the_spawner_socket(lab: Lab) -> None:
    """Started as the service account, the session cannot give the workers a uid of
    their own: without the spawner's socket it refuses to run them under its own."""
    result = lab.run_in(
        lab.client_ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        SEPCONNECT, "connect", "--helper-socket", "/nonexistent", lab.url,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert b"--helper-socket needs --spawner-socket" in result.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--dns-backend", "file"), b"--dns-backend belong(s) to the helper's own configuration"),
        (("--audit-log", "/tmp/x.jsonl"), b"--audit-log belong(s) to the helper's own"),
        (("--state-dir", "/tmp/x"), b"--state-dir belong(s) to the helper's own"),
        (("--session-log", "/tmp/x.jsonl"), b"--session-log is not used: the unprivileged "
         b"session's events go to the journal"),
    ],
)  # fmt: skip
def test_split_mode_refuses_what_only_the_helpers_unit_can_honour(
    lab: Lab, option: tuple[str, str], message: bytes
) -> None:
    """Issue 14, item 7: these were silently ignored under --helper-socket (the helper's
    unit has its own DNS backend, audit log and state directory)."""
    result = lab.run_in(
        lab.client_ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        SEPCONNECT, "connect", "--helper-socket", "/nonexistent",
        "--spawner-socket", "/nonexistent", *option, lab.url,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(b"sepconnect: --helper-socket: " + message)
    assert result.stderr.count(b"\n") == 1, result.stderr


def _systemd_credential(directory: Path, uid: int, secret: str) -> str:
    """What systemd >= 254 makes of LoadCredential=password:FILE for a service running as
    *uid*: a directory and a file of root's, 0500 and 0440, each with a real ACL entry
    (setfacl) that lets *uid* in and read; $CREDENTIALS_DIRECTORY names the directory."""
    directory.mkdir(mode=0o500)
    path = directory / "password"
    path.write_text(secret)
    path.chmod(0o440)
    subprocess.run(["setfacl", "-m", f"u:{uid}:r", str(path)], check=True)
    subprocess.run(["setfacl", "-m", f"u:{uid}:rx", str(directory)], check=True)
    return str(path)


@pytest.fixture
def unit_runtime_dir() -> Iterator[tuple[str, Path]]:
    """RuntimeDirectory=sepconnect/%i of the session unit, for a NAME of this test's own:
    /run/sepconnect/NAME, the service account's (removed afterwards, and /run/sepconnect
    too if the test made it)."""
    import secrets

    name = f"test-{secrets.token_hex(4)}"
    parent = Path("/run/sepconnect")
    made_parent = not parent.exists()
    parent.mkdir(mode=0o755, exist_ok=True)
    runtime = parent / name
    runtime.mkdir(mode=0o755)
    os.chown(runtime, NOBODY, NOBODY)
    try:
        yield name, runtime
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                parent.rmdir()


def test_the_session_unit_from_a_config_file_and_a_systemd_credential(
    lab: Lab, unit_runtime_dir: tuple[str, Path]
) -> None:
    """Issue 14, items 5 and 7: the session as sepconnect-session@NAME.service starts it:
    options from a root-owned config file in openconnect's syntax, the password from a
    credential shaped as systemd >= 254 delivers it (root's 0440 plus a user ACL, which
    the 0600-or-stricter rule refused), read by the unprivileged service account; then
    `sepconnect status NAME` and `sepconnect disconnect NAME` find its control socket."""
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl not installed (scripts/bootstrap.sh installs acl)")
    name, runtime = unit_runtime_dir
    work = Path(lab.workdir)
    conf = work / f"{name}.conf"
    conf.write_text(
        f"# /etc/sepconnect/{name}.conf\nserver {lab.url}\nuser = test\n"
        f"servercert {lab.server_cert_pin}\nreconnect-timeout 30\n"
    )
    conf.chmod(0o644)
    creds = work / "credentials"
    password = _systemd_credential(creds, NOBODY, "test123\n")
    audit = helper_logs(lab, "helper") / "audit.jsonl"
    helper = listen_helper(lab, "helper", audit)
    spawner = listen(lab, "spawner", [
        *AS_WORKER_ACCOUNT, f"{VENV}/bin/sepconnect-spawner", "--fd", "3",
        "--peer-uid", str(NOBODY),
    ])  # fmt: skip
    session = lab.popen_in(
        lab.client_ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        "--bounding-set=-all",
        SEPCONNECT, "connect", "--config", str(conf), "--helper-socket", str(helper.socket),
        "--spawner-socket", str(spawner.socket), "--credentials-file", password,
        "--control-socket", str(runtime / "control.sock"),
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)},
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def up() -> dict[str, object] | None:
            if session.poll() is not None:
                raise AssertionError(f"exit {session.returncode}: {session.communicate()[1]!r}")
            return lab.client_tun()

        lab.wait_for("the tunnel", up, timeout=20)
        assert _ping(lab, lab.target_ip).returncode == 0
        status = json.loads(lab.run_in(lab.client_ns, SEPCONNECT, "status", name, "--json").stdout)
        assert status["state"] == "connected"
        lab.run_in(lab.client_ns, SEPCONNECT, "disconnect", name)
        _, err = session.communicate(timeout=20)
        assert session.returncode == 0, err.decode()
        assert lab.client_tun() is None
    finally:
        if session.poll() is None:
            session.send_signal(signal.SIGINT)
            session.communicate(timeout=20)
        for listening in (helper, spawner):
            try:
                listening.acceptor.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # the session failed before it connected
                listening.acceptor.kill()
                listening.acceptor.communicate()
