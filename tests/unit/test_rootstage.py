"""The launcher's root stage (launcher/rootstage.py) refuses a plan or a request for a
file it does not know, whatever the planner sends: the plan's checker, and the file
server over a real socketpair. No root: tests/integration/test_planner.py runs the
real planner."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sepconnect import files, rootstage
from sepconnect.process.exitcodes import ExitCode


def good_plan(**changes: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "service": ["sepconnect", 990, 990],
        "helper": ["sepconnect-helper", 991, 991],
        "worker": ["sepconnect-worker", 992, 992],
        "control_gid": None,
        "control_dir": "/run/sepconnect",
        "dirs": ["/var/log/sepconnect"],
        "helper_args": ["--audit-log", "/var/log/sepconnect/audit.jsonl"],
        "allow_weak_sandbox": False,
        "relay": None,
        "background": False,
        "quiet": False,
        "pid_file": None,
        "server_address": "198.18.0.1",
    }
    plan.update(changes)
    return plan


def test_the_usage_exit_code_is_exitcodes() -> None:
    assert rootstage.USAGE == ExitCode.USAGE


def test_a_good_plan_passes() -> None:
    assert rootstage.check_plan(good_plan()) == good_plan()
    # --authenticate: only the service account, no session
    assert rootstage.check_plan(good_plan(helper=[], worker=[], control_dir=None, dirs=[]))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"service": ["root", 0, 0]}, r"\['root', 0, 0\] is root's"),
        ({"helper": ["sepconnect-helper", 0, 991]}, "root's"),
        ({"worker": ["w", 992, 0]}, "root's"),
        ({"worker": ["w", 992]}, "not an account"),
        ({"service": []}, "not an account"),
        ({"worker": ["w", "992", 992]}, "not an account"),
        ({"helper": ["h", 990, 991]}, "share a uid"),
        ({"worker": []}, "share a uid"),  # a session needs all three
        ({"service": ["s", True, 990]}, "root's, or not an account"),
        ({"dirs": ["var/log"]}, "not absolute"),
        ({"control_dir": "run"}, "not absolute"),
        ({"pid_file": "/run/x\0y"}, "not absolute"),
        ({"helper_args": ["--uid", 0]}, "not a string"),
        ({"allow_weak_sandbox": 1}, "allow_weak_sandbox is of the wrong type"),
        ({"control_gid": True}, "control_gid is of the wrong type"),
        ({"control_gid": -1}, "control_gid is not a group"),
        ({"relay": [1, 0]}, "relay is not two flags"),
        ({"program": "/bin/sh"}, "unknown or missing keys"),
    ],
)
def test_a_bad_plan_is_refused_with_one_line(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(rootstage.PlanError, match=why) as refused:
        rootstage.check_plan(good_plan(**changes))
    assert "\n" not in str(refused.value)


def test_a_plan_without_a_key_is_refused() -> None:
    plan = good_plan()
    del plan["dirs"]
    with pytest.raises(rootstage.PlanError, match="unknown or missing keys"):
        rootstage.check_plan(plan)
    with pytest.raises(rootstage.PlanError, match="unknown or missing keys"):
        rootstage.check_plan(["not", "a", "dict"])


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    root, planner = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with root, planner:
        yield root, planner


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        ({"open": "shadow", "path": "/etc/shadow"}, "unknown kind 'shadow'"),
        ({"open": ["secret"], "path": "/etc/shadow"}, "unknown kind"),
        ({"open": "secret", "path": "etc/shadow"}, "not an absolute path"),
        ({"open": "secret", "path": "/etc/\0shadow"}, "not an absolute path"),
        ({"open": "secret", "path": "/etc/shadow", "mode": "rw"}, "neither a plan nor"),
        (["open", "secret"], "neither a plan nor"),
    ],
)
def test_a_request_for_a_file_it_does_not_know_is_refused(
    channel: tuple[socket.socket, socket.socket], request_: object, why: str
) -> None:
    root, planner = channel
    planner.send(json.dumps(request_).encode())
    opened: dict[tuple[str, str], int] = {}
    with pytest.raises(rootstage.PlanError, match=why):
        rootstage.serve(root, opened)
    assert opened == {}


def test_a_message_that_is_no_json_is_refused(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    root, planner = channel
    planner.send(b"open /etc/shadow")
    with pytest.raises(ValueError, match="Expecting value"):
        rootstage.serve(root, {})


def test_the_planner_gets_fds_or_errors_then_its_plan_is_returned(
    channel: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    root, planner = channel
    config = tmp_path / "vpn.conf"
    config.write_text("user alice\n")
    planner.send(json.dumps({"open": "config", "path": str(config)}).encode())
    planner.send(json.dumps({"open": "secret", "path": str(tmp_path / "none")}).encode())
    planner.send(json.dumps({"plan": good_plan()}).encode())
    opened: dict[tuple[str, str], int] = {}
    assert rootstage.serve(root, opened) == good_plan()
    _, fds, _, _ = socket.recv_fds(planner, 4096, 1)
    assert os.pread(fds[0], 100, 0) == b"user alice\n"
    os.close(fds[0])
    data, fds, _, _ = socket.recv_fds(planner, 4096, 1)
    assert fds == []
    assert json.loads(data) == {"errno": 2, "error": "No such file or directory"}
    assert list(opened) == [("config", str(config))]
    os.close(opened["config", str(config)])


def test_a_planner_that_ends_without_a_plan_gets_none(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    root, planner = channel
    planner.close()
    assert rootstage.serve(root, {}) is None


def test_each_kind_never_follows_a_symlink_where_it_did_not_before() -> None:
    for kind in ("config", "secret", "secret-rw", "client-file", "pid-file"):
        assert rootstage.KINDS[kind] & os.O_NOFOLLOW, kind
    for kind, flags in rootstage.KINDS.items():
        assert kind == "session-log" or flags & os.O_CLOEXEC, kind


def test_the_files_module_asks_the_root_stage_by_kind_and_absolute_path(
    channel: tuple[socket.socket, socket.socket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner's side (launcher/files.py): relative paths go as absolute ones, and
    the root stage's error comes back as the OSError the callers format."""
    root, planner = channel
    monkeypatch.setattr(files, "_source", [])
    monkeypatch.setattr(files, "_planning", [False])
    monkeypatch.chdir(tmp_path)
    files.ask_root(planner)
    assert files.planning()
    assert files.trusted_owners() == (0,)
    root.send(json.dumps({"errno": 13, "error": "Permission denied"}).encode())
    with pytest.raises(PermissionError, match="Permission denied"):
        files.open_file("secret", "password")
    assert json.loads(root.recv(4096)) == {"open": "secret", "path": str(tmp_path / "password")}


def test_the_root_stage_loads_only_what_it_runs() -> None:
    """What root loads before the drop in a default connect (docs/security.md, "The
    trusted base, counted"; test_code_budget.py counts it from a real one): its own
    module and six small ones of process/, none of the launcher's parsing."""
    code = (
        "import sys, sepconnect.rootstage\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('sepconnect'))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == [
        "sepconnect",
        "sepconnect.process",
        "sepconnect.process.accounts",
        "sepconnect.process.auditfile",
        "sepconnect.process.libc",
        "sepconnect.process.lockdown",
        "sepconnect.process.prctl",
        "sepconnect.process.privdrop",
        "sepconnect.process.programs",
        "sepconnect.rootstage",
    ]


def test_the_helpers_channel_and_accounts_are_the_root_stages_whatever_the_plan_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """helper_args come first: for each option the helper's parser takes the last one,
    so a plan that names --uid 0 (or another fd or peer) does not get it."""
    started: list[list[str]] = []

    def popen(argv: list[str], fds: tuple[socket.socket, ...], **_: object) -> None:
        started.append(argv)
        for sock in fds:
            sock.close()

    monkeypatch.setattr(rootstage, "_popen", popen)
    hostile = ["--uid", "0", "--gid=0", "--peer-uid", "0", "--fd", "0"]
    spawner, _, channel = rootstage._start_session(good_plan(helper_args=hostile), 990)
    for sock in (*spawner[1:], channel):
        sock.close()
    helper = started[1]
    for option, value in (("--uid", "991"), ("--gid", "991"), ("--peer-uid", "990")):
        last = max(i for i, arg in enumerate(helper) if arg.partition("=")[0] == option)
        assert helper[last + 1] == value, helper
    last_fd = max(i for i, arg in enumerate(helper) if arg == "--fd")
    assert helper[last_fd + 1] != "0"
    spawner_argv = started[0]  # takes no argument from the plan
    assert spawner_argv[spawner_argv.index("--peer-uid") + 1] == "990"
