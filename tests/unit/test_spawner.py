"""The worker spawner's decisions (spawner/core.py, sans-I/O), its messages, the
supervisor's client (process/spawner_client.py) against a fake spawner over a real
socketpair, and the choice of the workers' account (launcher/session_accounts.py). No
processes, no root: tests/integration/test_spawner.py runs the real one."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import subprocess
from collections.abc import Iterator

import msgpack
import pytest

from sepconnect.ipc.spawner_messages import (
    FD_TO_SPAWNER,
    FROM_SPAWNER,
    TO_SPAWNER,
    Exited,
    Refused,
    Signal,
    Signalled,
    Spawn,
    Spawned,
)
from sepconnect.ipc.wire import Channel, WireError, socketpair
from sepconnect.process.spawner_client import SpawnerClient, SpawnerGone
from sepconnect.session_accounts import WORKER_FALLBACK_ID, SpawnerSetupError, worker_account
from sepconnect.spawner.children import Args, parse_argv
from sepconnect.spawner.core import (
    MAX_WORKERS,
    CloseFd,
    Finish,
    Reply,
    SendSignal,
    SpawnerCore,
    StartWorker,
)

SUPERVISOR = 998
FROM_SUPERVISOR = (4242, SUPERVISOR, SUPERVISOR)
SPAWN = Spawn(proto=1, allow_weak_sandbox=False)

# --------------------------------------------------------------------------- the core


def spawned(core: SpawnerCore, pid: int) -> None:
    assert core.request(SPAWN, 7, FROM_SUPERVISOR) == [StartWorker(7, False)]
    assert core.started(pid) == [Reply(Spawned(pid=pid))]


def test_a_spawn_from_the_supervisor_starts_a_worker() -> None:
    core = SpawnerCore(SUPERVISOR)
    weak = Spawn(proto=1, allow_weak_sandbox=True)
    assert core.request(weak, 9, FROM_SUPERVISOR) == [StartWorker(9, True)]
    assert core.started(5000) == [Reply(Spawned(pid=5000))]
    assert core.children == {5000}


@pytest.mark.parametrize(
    ("sender", "who"),
    [
        ((4242, 0, 0), "uid 0"),
        ((4242, 65532, 65532), "uid 65532"),
        (None, "no credentials"),
        ((0, SUPERVISOR, SUPERVISOR), "uid 998"),  # pid 0: the kernel attached none
    ],
    ids=["root", "the-workers-uid", "no-credentials", "no-pid"],
)
def test_a_request_from_anyone_else_is_refused_and_ends_the_spawner(
    sender: tuple[int, int, int] | None, who: str
) -> None:
    core = SpawnerCore(SUPERVISOR)
    spawned(core, 5000)
    reason = f"refused: the sender has {who}, not the supervisor's uid {SUPERVISOR}"
    assert core.request(SPAWN, 8, sender) == [
        CloseFd(8),
        Reply(Refused(reason=reason)),
        Finish(1, reason),  # the shell kills worker 5000 and exits
    ]
    signal_request = Signal(pid=5000, signal="SIGKILL")
    assert core.request(signal_request, None, sender) == [
        Reply(Refused(reason=reason)),
        Finish(1, reason),
    ]


def test_only_its_own_live_children_are_signalled() -> None:
    core = SpawnerCore(SUPERVISOR)
    spawned(core, 5000)
    assert core.request(Signal(pid=5000, signal="SIGTERM"), None, FROM_SUPERVISOR) == [
        SendSignal(5000, signal.SIGTERM),
        Reply(Signalled(pid=5000)),
    ]
    assert core.request(Signal(pid=5000, signal="SIGKILL"), None, FROM_SUPERVISOR) == [
        SendSignal(5000, signal.SIGKILL),
        Reply(Signalled(pid=5000)),
    ]
    for pid in (1, 4242, 5001):  # init, the supervisor itself, a pid never ours
        refused = core.request(Signal(pid=pid, signal="SIGKILL"), None, FROM_SUPERVISOR)
        reason = f"refused: pid {pid} is not a running worker of this spawner"
        assert refused == [Reply(Refused(reason=reason))]
    # Reaped: its pid may be another process's from now on.
    assert core.exited(5000, -signal.SIGTERM) == [Reply(Exited(pid=5000, status=-15))]
    after = core.request(Signal(pid=5000, signal="SIGKILL"), None, FROM_SUPERVISOR)
    reason = "refused: pid 5000 is not a running worker of this spawner"
    assert after == [Reply(Refused(reason=reason))]


def test_an_exit_is_reported_once_and_only_for_its_children() -> None:
    core = SpawnerCore(SUPERVISOR)
    spawned(core, 5000)
    assert core.exited(5000, 3) == [Reply(Exited(pid=5000, status=3))]
    assert core.exited(5000, 3) == []
    assert core.exited(6000, 0) == []


def test_at_most_max_workers_run_at_once() -> None:
    core = SpawnerCore(SUPERVISOR)
    for pid in range(5000, 5000 + MAX_WORKERS):
        spawned(core, pid)
    reason = f"refused: {MAX_WORKERS} workers are running already"
    assert core.request(SPAWN, 7, FROM_SUPERVISOR) == [CloseFd(7), Reply(Refused(reason=reason))]
    core.exited(5000, 0)
    assert core.request(SPAWN, 7, FROM_SUPERVISOR) == [StartWorker(7, False)]


def test_a_failed_fork_is_refused_with_its_reason() -> None:
    core = SpawnerCore(SUPERVISOR)
    core.request(SPAWN, 7, FROM_SUPERVISOR)
    reason = "cannot start a worker: Resource temporarily unavailable"
    assert core.start_failed("Resource temporarily unavailable") == [Reply(Refused(reason=reason))]
    assert core.children == set()


def test_the_end_of_the_channel_ends_the_spawner() -> None:
    core = SpawnerCore(SUPERVISOR)
    assert core.closed() == [Finish(0, "", 5.0)]  # the workers may log off first
    assert core.broken("undecodable: ExtraData") == [
        Finish(1, "protocol violation: undecodable: ExtraData")
    ]


def test_the_command_line() -> None:
    assert parse_argv(["--fd", "3", "--peer-uid=998"]) == Args(3, 998, None, False)
    full = ["--fd=5", "--peer-uid", "998", "--first-worker", "6", "--allow-weak-sandbox"]
    assert parse_argv(full) == Args(5, 998, 6, True)
    for bad in (
        ["--fd", "3"],
        ["--peer-uid", "998"],
        ["--fd", "3", "--peer-uid", "998", "--fd", "4"],
        ["--fd", "-3", "--peer-uid", "998"],
        ["--fd", "3", "--peer-uid", "998", "--allow-weak-sandbox"],  # only the first's
        ["--fd", "3", "--peer-uid", "998", "--exec", "/bin/sh"],
        ["--fd", "3", "--peer-uid"],
    ):
        with pytest.raises(ValueError):
            parse_argv(bad)


# --------------------------------------------------------------------------- the messages


def test_only_sigterm_and_sigkill_can_be_asked_for() -> None:
    raw = msgpack.packb({"op": "signal", "pid": 5000, "signal": "SIGSTOP"})
    with pytest.raises(WireError, match="SIGSTOP"):
        TO_SPAWNER.decode_untrusted(raw)
    for pid in (0, -1, 2**22 + 1):
        raw = msgpack.packb({"op": "signal", "pid": pid, "signal": "SIGKILL"})
        with pytest.raises(WireError, match="outside"):
            TO_SPAWNER.decode_untrusted(raw)


def test_a_spawn_carries_exactly_one_fd_and_nothing_else_does() -> None:
    a, b = socketpair()
    with a, b:
        spawner = Channel(b, TO_SPAWNER, FD_TO_SPAWNER, send_codec=FROM_SPAWNER, send_fd_ops=())
        a.sendmsg([TO_SPAWNER.encode(SPAWN)])  # no fd
        with pytest.raises(WireError, match="exactly one fd"):
            spawner.recv()
        r, w = os.pipe()
        os.close(w)
        raw = TO_SPAWNER.encode(Signal(pid=5, signal="SIGKILL"))
        a.sendmsg([raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, "little"))])
        os.close(r)
        with pytest.raises(WireError, match="carries an fd"):
            spawner.recv()
        wrong = msgpack.packb({"op": "spawn", "proto": 2, "allow_weak_sandbox": False})
        with pytest.raises(WireError, match="proto"):
            TO_SPAWNER.decode_untrusted(wrong)


# --------------------------------------------------------------------------- the client


class FakeSpawner:
    """The spawner's end of the channel, played by the test."""

    def __init__(self, sock: socket.socket) -> None:
        self.channel = Channel(
            sock, TO_SPAWNER, FD_TO_SPAWNER, send_codec=FROM_SPAWNER, send_fd_ops=()
        )

    def request(self) -> object:
        msg, fd = self.channel.recv()
        if fd is not None:
            os.close(fd)
        return msg

    def say(self, *messages: Spawned | Signalled | Refused | Exited) -> None:
        for message in messages:
            self.channel.send(message)


@pytest.fixture
def pair() -> Iterator[tuple[SpawnerClient, FakeSpawner]]:
    ours, theirs = socketpair()
    client = SpawnerClient(ours, forbidden_uids=frozenset())  # the fake is our own uid
    yield client, FakeSpawner(theirs)
    client.close()
    theirs.close()


def test_workers_get_their_pids_in_the_order_of_the_requests(
    pair: tuple[SpawnerClient, FakeSpawner],
) -> None:
    client, fake = pair
    first, first_channel = client.spawn(allow_weak_sandbox=False)
    second, second_channel = client.spawn(allow_weak_sandbox=True)
    assert fake.request() == Spawn(proto=1, allow_weak_sandbox=False)
    assert fake.request() == Spawn(proto=1, allow_weak_sandbox=True)
    fake.say(Spawned(pid=5000), Exited(pid=5000, status=-9), Spawned(pid=5001))
    assert first.pid == 5000
    assert second.pid == 5001
    assert first.poll() == -9
    assert second.poll() is None
    first_channel.close()
    second_channel.close()


def test_the_worker_started_from_the_spawners_command_line_is_answered_first(
    pair: tuple[SpawnerClient, FakeSpawner],
) -> None:
    client, fake = pair
    later, later_channel = client.spawn(allow_weak_sandbox=False)
    first_ours, _first_theirs = socketpair()
    first, first_channel = client.started_at_exec(first_ours)
    assert first_channel is first_ours
    fake.request()
    fake.say(Spawned(pid=4999), Spawned(pid=5000))
    assert (first.pid, later.pid) == (4999, 5000)
    for sock in (later_channel, first_channel, _first_theirs):
        sock.close()


def test_signals_go_through_the_spawner_and_a_late_refusal_is_no_failure(
    pair: tuple[SpawnerClient, FakeSpawner],
) -> None:
    client, fake = pair
    worker, channel = client.spawn(allow_weak_sandbox=False)
    fake.request()
    fake.say(Spawned(pid=5000))
    assert worker.pid == 5000
    worker.terminate()
    worker.kill()
    assert fake.request() == Signal(pid=5000, signal="SIGTERM")
    assert fake.request() == Signal(pid=5000, signal="SIGKILL")
    # It exited meanwhile: the second signal is refused, and the exit follows.
    fake.say(Signalled(pid=5000), Exited(pid=5000, status=-15), Refused(reason="refused: …"))
    assert worker.wait(timeout=5) == -15
    client.pump()
    assert client.gone is None
    worker.kill()  # exited: nothing is sent (as Popen)
    fake.say(Spawned(pid=1))  # answers nothing: a broken spawner
    client.pump()
    assert client.gone is not None
    assert "spawned answers no request" in client.gone
    channel.close()


def test_wait_times_out_like_popen(pair: tuple[SpawnerClient, FakeSpawner]) -> None:
    client, fake = pair
    worker, channel = client.spawn(allow_weak_sandbox=False)
    fake.request()
    fake.say(Spawned(pid=5000))
    with pytest.raises(subprocess.TimeoutExpired):
        worker.wait(timeout=0.05)
    channel.close()


def test_a_refused_spawn_ends_the_use_of_the_spawner(
    pair: tuple[SpawnerClient, FakeSpawner],
) -> None:
    client, fake = pair
    worker, channel = client.spawn(allow_weak_sandbox=False)
    fake.request()
    fake.say(Refused(reason="cannot start a worker: Resource temporarily unavailable"))
    with pytest.raises(SpawnerGone, match="Resource temporarily unavailable"):
        _ = worker.pid
    assert client.gone is not None
    with pytest.raises(SpawnerGone):
        client.spawn(allow_weak_sandbox=False)
    channel.close()


def test_workers_of_a_spawner_that_is_gone_count_as_killed(
    pair: tuple[SpawnerClient, FakeSpawner],
) -> None:
    client, fake = pair
    worker, channel = client.spawn(allow_weak_sandbox=False)
    fake.request()
    fake.say(Spawned(pid=5000))
    assert worker.pid == 5000
    fake.channel.sock.close()
    assert worker.wait(timeout=5) == -signal.SIGKILL  # PR_SET_PDEATHSIG
    assert client.gone == "the worker spawner: its channel closed"
    worker.terminate()  # nothing to do, and no error
    channel.close()


def test_a_spawner_under_a_forbidden_uid_is_not_used() -> None:
    ours, theirs = socketpair()
    client = SpawnerClient(ours, forbidden_uids=frozenset({os.getuid()}))
    fake = FakeSpawner(theirs)
    worker, channel = client.spawn(allow_weak_sandbox=False)
    fake.request()
    fake.say(Spawned(pid=5000))
    with pytest.raises(SpawnerGone, match=f"uid {os.getuid()}; the workers must have"):
        _ = worker.pid
    channel.close()
    client.close()
    theirs.close()


# --------------------------------------------------------------------------- the account


def _passwd(name: str, uid: int, gid: int, shell: str = "/usr/sbin/nologin") -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, gid, "", "/nonexistent", shell))


def _no_account(_key: object) -> pwd.struct_passwd:
    raise KeyError(_key)


def _no_group(_key: object) -> grp.struct_group:
    raise KeyError(_key)


def test_the_worker_account_when_it_exists() -> None:
    account = worker_account(
        998, 998, getpwnam=lambda name: _passwd(name, 997, 996), getpwuid=_no_account
    )
    assert (account.name, account.uid, account.gid) == ("sepconnect-worker", 997, 996)


def test_the_fixed_uid_without_the_account() -> None:
    account = worker_account(
        65534, 65534, getpwnam=_no_account, getpwuid=_no_account, getgrgid=_no_group
    )
    assert (account.uid, account.gid) == (WORKER_FALLBACK_ID, WORKER_FALLBACK_ID) == (65532,) * 2


@pytest.mark.parametrize(
    ("lookups", "error"),
    [
        (
            {"getpwnam": lambda n: _passwd(n, 997, 996, "/bin/bash")},
            "login shell '/bin/bash'",
        ),
        ({"getpwnam": lambda n: _passwd(n, 0, 996)}, "must not have root's uid or gid"),
        ({"getpwnam": lambda n: _passwd(n, 997, 0)}, "must not have root's uid or gid"),
        ({"getpwnam": lambda n: _passwd(n, 998, 996)}, "must not share the service account"),
        ({"getpwnam": lambda n: _passwd(n, 997, 998)}, "must not share the service account"),
        (
            {
                "getpwnam": _no_account,
                "getpwuid": lambda uid: _passwd("nonroot", uid, uid),
                "getgrgid": _no_group,
            },
            "fixed uid 65532 belongs to 'nonroot'",
        ),
        (
            {
                "getpwnam": _no_account,
                "getpwuid": _no_account,
                "getgrgid": lambda gid: grp.struct_group(("staff2", "x", gid, [])),
            },
            "fixed gid 65532 belongs to 'staff2'",
        ),
    ],
    ids=["login-shell", "root-uid", "root-gid", "service-uid", "service-gid", "uid-taken",
         "gid-taken"],
)  # fmt: skip
def test_a_worker_account_that_would_be_someone_elses_is_refused(
    lookups: dict[str, object], error: str
) -> None:
    with pytest.raises(SpawnerSetupError, match=error.replace("(", r"\(")):
        worker_account(998, 998, **lookups)  # type: ignore[arg-type]
