"""The worker spawner as a real process under the workers' uid (issue 13, item 2).

Started here as the launcher starts it (setpriv: the workers' uid and gid, no group, an
empty bounding set, no_new_privs) with a socketpair; the supervisor's side is played by a
small script running under the supervisor's uid (``nobody`` here), or by another uid. It
serves only the supervisor's uid, signals only its own children that it has not reaped,
reports each exit, and its workers do not outlive it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sepconnect.ipc.spawner_messages import FROM_SPAWNER, Exited, Spawned
from sepconnect.ipc.wire import socketpair

pytestmark = [pytest.mark.root]

VENV = os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv")
SPAWNER = f"{VENV}/bin/sepconnect-spawner"
PYTHON = f"{VENV}/bin/python"
NOBODY = 65534  # the supervisor's uid here
WORKER = 65532  # the workers' fixed uid and gid (launcher/session_accounts.py)
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


def as_account(uid: int) -> list[str]:
    return [
        SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--bounding-set=-all", "--no-new-privs",
    ]  # fmt: skip


# The supervisor's side, step by step; one JSON line per message received.
PEER = r"""
import json, socket, sys
from sepconnect.ipc.spawner_messages import FROM_SPAWNER, TO_SPAWNER, Signal, Spawn
from sepconnect.ipc.wire import Channel, PeerClosed, plain, socketpair
channel = Channel(socket.socket(fileno=int(sys.argv[1])), FROM_SPAWNER,
                  send_codec=TO_SPAWNER, send_fd_ops={"spawn"})
channel.pass_credentials()
kept = []  # our ends of the workers' channels
child = None
for step in sys.argv[2:]:
    if step == "spawn":
        ours, theirs = socketpair()
        channel.send(Spawn(proto=1, allow_weak_sandbox=False), theirs.fileno())
        theirs.close()
        kept.append(ours)
    elif step.startswith("signal:"):
        _, pid, name = step.split(":")
        channel.send(Signal(pid=child if pid == "child" else int(pid), signal=name))
    elif step == "recv":
        try:
            msg, _ = channel.recv()
        except PeerClosed:
            print(json.dumps({"op": "closed"}), flush=True)
            continue
        if msg.op == "spawned":
            child = msg.pid
        print(json.dumps({"op": msg.op, **plain(msg)}), flush=True)
    elif step == "pause":
        sys.stdin.readline()  # the test looks at the processes meanwhile
    elif step == "close":
        channel.sock.close()  # the spawner's channel only: the workers' stay open
"""


class Spawner:
    def __init__(self, *, uid: int = WORKER, peer_uid: int = NOBODY) -> None:
        self.ours, theirs = socketpair()
        self.proc = subprocess.Popen(
            [*as_account(uid), SPAWNER, "--fd", str(theirs.fileno()), "--peer-uid", str(peer_uid)],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        theirs.close()

    def peer(self, *steps: str, uid: int = NOBODY) -> subprocess.Popen[str]:
        """The supervisor's side as ``uid``, doing ``steps``; our end is handed to it."""
        return subprocess.Popen(
            [PYTHON, "-I", "-c", PEER, str(self.ours.fileno()), *steps],
            pass_fds=(self.ours.fileno(),), user=uid, group=uid, extra_groups=[],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def close(self) -> tuple[int, str]:
        self.ours.close()
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err.decode()


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    spawner = Spawner()
    yield spawner
    spawner.ours.close()
    if spawner.proc.poll() is None:
        spawner.proc.kill()
    spawner.proc.communicate()


def replies(peer: subprocess.Popen[str], answer: str | None = None) -> list[dict[str, object]]:
    """What the peer prints from now on (``answer``: its input, which ends a pause)."""
    out, _ = peer.communicate(answer, timeout=20)
    return [json.loads(line) for line in out.splitlines()]


def status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


@pytest.mark.parametrize("uid", [0, 65531], ids=["root", "another-uid"])
def test_the_spawner_refuses_a_peer_of_another_uid(spawner: Spawner, uid: int) -> None:
    got = replies(spawner.peer("spawn", "recv", "recv", uid=uid))
    assert got == [
        {
            "op": "refused",
            "reason": f"refused: the sender has uid {uid}, not the supervisor's uid {NOBODY}",
        },
        {"op": "closed"},  # and it ended
    ], got
    code, err = spawner.close()
    assert code == 1, err
    assert f"the sender has uid {uid}" in err
    assert "sepconnect: worker" not in err  # no worker was started


def test_the_spawner_signals_only_its_own_children(spawner: Spawner) -> None:
    outsider = subprocess.Popen(["sleep", "30"], user=WORKER, group=WORKER, extra_groups=[])
    try:
        peer = spawner.peer(
            f"signal:{outsider.pid}:SIGKILL", "recv",  # the workers' uid, not its child
            "signal:1:SIGTERM", "recv",
            "spawn", "recv", "pause",
            "signal:child:SIGTERM", "recv", "recv",
            "signal:child:SIGKILL", "recv",  # reaped: its pid may be someone else's now
        )  # fmt: skip
        assert peer.stdout is not None
        lines = [json.loads(peer.stdout.readline()) for _ in range(3)]
        not_ours = "is not a running worker of this spawner"
        assert lines[0] == {"op": "refused", "reason": f"refused: pid {outsider.pid} {not_ours}"}
        assert lines[1] == {"op": "refused", "reason": f"refused: pid 1 {not_ours}"}
        assert lines[2]["op"] == "spawned"
        worker = int(str(lines[2]["pid"]))
        st = status(worker)
        assert st["PPid"] == str(spawner.proc.pid)
        assert st["Uid"].split() == [str(WORKER)] * 4
        assert st["Gid"].split() == [str(WORKER)] * 4
        assert st["Groups"] == ""
        assert int(st["CapBnd"], 16) == int(st["CapEff"], 16) == 0
        assert st["NoNewPrivs"] == "1"
        rest = replies(peer, "\n")
        assert rest == [
            {"op": "signalled", "pid": worker},
            {"op": "exited", "pid": worker, "status": -signal.SIGTERM},
            {"op": "refused", "reason": f"refused: pid {worker} {not_ours}"},
        ], rest
        assert outsider.poll() is None  # untouched
    finally:
        outsider.kill()
        outsider.wait()
    code, err = spawner.close()
    assert code == 0, err


def test_the_workers_end_with_the_spawner(spawner: Spawner) -> None:
    """Closing the channel ends the spawner, which kills its workers first; a spawner
    that is killed takes its workers with it (PR_SET_PDEATHSIG)."""
    peer = spawner.peer("spawn", "recv", "spawn", "recv", "pause")
    assert peer.stdout is not None
    first, second = (json.loads(peer.stdout.readline()) for _ in range(2))
    workers = [int(str(first["pid"])), int(str(second["pid"]))]
    assert all(Path(f"/proc/{pid}").exists() for pid in workers)
    os.kill(spawner.proc.pid, signal.SIGKILL)
    spawner.proc.wait()

    def gone(pid: int) -> bool:
        try:
            return status(pid)["State"].startswith("Z")  # killed, waiting for init
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, [status(pid)["State"] for pid in workers]
        time.sleep(0.05)
    replies(peer, "\n")


def test_closing_the_channel_ends_the_spawner_after_its_workers(spawner: Spawner) -> None:
    """The supervisor gone (its channels closed), a worker exits by itself (logging off
    the server): the spawner waits for it, reaps it and exits."""
    peer = spawner.peer("spawn", "recv")
    (spawned,) = replies(peer)  # the peer has exited: the worker's channel is closed
    worker = int(str(spawned["pid"]))
    started = time.monotonic()
    code, err = spawner.close()
    assert code == 0, err
    assert time.monotonic() - started < 4  # it did not need the grace
    assert not Path(f"/proc/{worker}").exists()  # reaped before the spawner exited


def test_a_worker_still_running_when_the_channel_closes_is_killed(spawner: Spawner) -> None:
    """One whose channel is still open (here: held by the peer) gets the grace (5 s),
    then SIGKILL."""
    peer = spawner.peer("spawn", "recv", "close", "pause")
    assert peer.stdout is not None
    worker = int(str(json.loads(peer.stdout.readline())["pid"]))
    started = time.monotonic()
    code, err = spawner.close()
    waited = time.monotonic() - started
    assert code == 0, err
    assert 4.5 < waited < 9, waited
    assert not Path(f"/proc/{worker}").exists()
    replies(peer, "\n")


def test_the_first_worker_starts_from_the_command_line() -> None:
    """As the launcher starts it: the first worker's channel end on its command line; it
    is started before anything is asked, and reported first."""
    ours, theirs = socketpair()
    worker_ours, worker_theirs = socketpair()
    fds = (theirs.fileno(), worker_theirs.fileno())
    argv = [SPAWNER, "--fd", str(fds[0]), "--peer-uid", str(NOBODY)]
    argv += ["--first-worker", str(fds[1])]
    proc = subprocess.Popen(
        [*as_account(WORKER), *argv], pass_fds=fds, stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    theirs.close()
    worker_theirs.close()
    try:
        ours.settimeout(10)
        spawned = FROM_SPAWNER.decode_untrusted(ours.recv(65536))
        assert isinstance(spawned, Spawned)
        st = status(spawned.pid)
        assert st["PPid"] == str(proc.pid)
        assert st["Uid"].split() == [str(WORKER)] * 4
        # Its channel is the one we hold: it ends when we close our end.
        worker_ours.close()
        exited = FROM_SPAWNER.decode_untrusted(ours.recv(65536))
        assert exited == Exited(pid=spawned.pid, status=1)  # PeerClosed before its start
    finally:
        worker_ours.close()
        ours.close()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()


@pytest.mark.parametrize(
    ("uid", "peer_uid", "reason"),
    [
        (0, NOBODY, "refusing to run as root"),
        (WORKER, WORKER, f"refusing to run under the supervisor's uid {WORKER}"),
    ],
    ids=["root", "the-supervisors-uid"],
)
def test_the_spawner_refuses_to_run_as_root_or_the_supervisor(
    uid: int, peer_uid: int, reason: str
) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        argv = [SPAWNER, "--fd", str(theirs.fileno()), "--peer-uid", str(peer_uid)]
        result = subprocess.run(
            argv if uid == 0 else [*as_account(uid), *argv],
            pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=20,
            check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr
