"""The split systemd layout without systemd: the helper started by a socket acceptor
(what `sepconnect-helper.socket` with Accept=yes does), the session started directly
as the unprivileged service account with `--helper-socket`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from test_connect import SEPCONNECT, VENV, _descendants, _ping, _status, _title

from sepconnect.process.accounts import HELPER_FALLBACK_UID as HELPER_UID

from lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.netns]

NOBODY = 65534

# What systemd does for a socket unit with Accept=yes: listen, accept one connection,
# and start the service with the connection as fd 3 (SO_PASSCRED on, as
# PassCredentials=yes asks).
ACCEPTOR = r"""
import os, socket, sys
path, ready = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(path)
os.chmod(path, 0o666)
listener.listen(1)
open(ready, "w").close()
conn, _ = listener.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
listener.close()
os.dup2(conn.fileno(), 3)
os.execv(sys.argv[3], sys.argv[3:])
"""


def test_session_as_the_service_account_with_a_socket_activated_helper(lab: Lab) -> None:
    work = Path(lab.workdir)
    helper_socket, ready = work / "helper.sock", work / "helper.ready"
    (work / "acceptor.py").write_text(ACCEPTOR)
    # LogsDirectory= and RuntimeDirectory= of the helper's unit: its account's, 0700.
    logs, state = work / "helper-logs", work / "helper-state"
    for directory in (logs, state):
        directory.mkdir(mode=0o700)
        os.chown(directory, HELPER_UID, HELPER_UID)
    audit = logs / "audit.jsonl"
    # What the unit's User=, AmbientCapabilities=CAP_NET_ADMIN and
    # CapabilityBoundingSet=CAP_NET_ADMIN do: the helper never is root.
    acceptor = lab.popen_in(
        lab.client_ns, f"{VENV}/bin/python", str(work / "acceptor.py"), str(helper_socket),
        str(ready), "/usr/bin/setpriv", f"--reuid={HELPER_UID}", f"--regid={HELPER_UID}",
        "--clear-groups", "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
        "--bounding-set=-all,+net_admin", f"{VENV}/bin/sepconnect-privhelper", "--fd", "3",
        "--peer-uid", str(NOBODY), "--audit-log", str(audit), "--state-dir", str(state),
    )  # fmt: skip
    lab.wait_for("the helper socket", lambda: True if ready.exists() else None)
    # RuntimeDirectory= of the session unit: a directory the service account owns.
    control_dir = work / "session-run"
    control_dir.mkdir()
    os.chown(control_dir, NOBODY, NOBODY)
    control = str(control_dir / "control.sock")
    session = lab.popen_in(
        lab.client_ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        SEPCONNECT, "connect", "--helper-socket", str(helper_socket), "--user", "test",
        "--passwd-on-stdin", "--servercert", lab.server_cert_pin, "--control-socket", control,
        lab.url,
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert session.stdin is not None
    session.stdin.write(b"test123\n")
    session.stdin.close()
    session.stdin = None
    try:
        lab.wait_for("the tunnel", lab.client_tun, timeout=20)
        assert _ping(lab, lab.target_ip).returncode == 0
        # The helper runs as its own account with CAP_NET_ADMIN alone; the session never
        # was root either.
        helper_pid = next(p for p in [acceptor.pid] if _title(p) == "sepconnect: privhelper")
        helper = _status(helper_pid)
        assert helper["Uid"].split() == [str(HELPER_UID)] * 4
        for caps in ("CapEff", "CapPrm", "CapBnd"):
            assert int(helper[caps], 16) == 1 << 12, (caps, helper[caps])
        assert int(helper["CapInh"], 16) == int(helper["CapAmb"], 16) == 0
        titles = {_title(p) for p in [session.pid, *_descendants(session.pid)]}
        assert titles == {"sepconnect: supervisor", "sepconnect: worker"}, titles
        for pid in [session.pid, *_descendants(session.pid)]:
            st = _status(pid)
            assert st["Uid"].split() == [str(NOBODY)] * 4
            assert int(st["CapEff"], 16) == 0
        status = json.loads(
            lab.run_in(lab.client_ns, SEPCONNECT, "status", "--json", "--socket", control).stdout
        )
        assert status["state"] == "connected"
    finally:
        session.send_signal(signal.SIGINT)
        _, err = session.communicate(timeout=20)
    assert session.returncode == 0, err.decode()
    assert acceptor.wait(timeout=10) == 0  # the helper tore down and exited
    assert lab.client_tun() is None
    ops = [json.loads(line)["op"] for line in audit.read_text().splitlines()]
    assert "net_config" in ops
    assert "teardown" in ops


def test_split_mode_refuses_root_and_privileged_options(lab: Lab) -> None:
    as_root = lab.run_in(
        lab.client_ns, SEPCONNECT, "connect", "--helper-socket", "/nonexistent", lab.url,
        check=False,
    )  # fmt: skip
    assert as_root.returncode == 2
    assert b"not root" in as_root.stderr
    scripted = lab.run_in(
        lab.client_ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        SEPCONNECT, "connect", "--helper-socket", "/nonexistent", "--fail-closed", lab.url,
        check=False,
    )  # fmt: skip
    assert scripted.returncode == 2
    assert b"helper's own configuration" in scripted.stderr
