"""The launcher's root stage (launcher/rootstage.py), as root: the planner that parses the
command line and reads root's files is a child that already runs as the service account,
with no capability (not even in its bounding set), no_new_privs, and not dumpable: a
process of the same uid cannot ptrace it. Seen from /proc and tried with ptrace(2) while
the planner waits for a file the root stage is still opening (a FIFO: its open blocks
until a writer comes). No network: the server is an IP literal and the launcher stops
at the FIFO, which is no regular file."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_connect import SEPCONNECT

from sepconnect.process.accounts import service_account

pytestmark = [pytest.mark.root]

PTRACE_ATTACH = 16
OPENAT = 257  # x86_64


@pytest.fixture
def fifo() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="sepconnect-rootstage-"))
    path = directory / "password"
    os.mkfifo(path, 0o600)
    try:
        yield path
    finally:
        path.unlink()
        directory.rmdir()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _ptrace_as(uid: int, gid: int, pid: int) -> int:
    """The errno of PTRACE_ATTACH to *pid* from a process of uid/gid (0: it worked)."""

    def become() -> None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)

    code = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"r = libc.ptrace({PTRACE_ATTACH}, {pid}, None, None)\n"
        "sys.exit(0 if r == 0 else ctypes.get_errno())\n"
    )
    result = subprocess.run(
        ["python3", "-I", "-c", code], preexec_fn=become, timeout=10, check=False
    )
    return result.returncode


def test_the_planner_runs_as_the_service_account_without_privilege_and_undumpable(
    fifo: Path,
) -> None:
    _, uid, gid = service_account(None)
    launcher = subprocess.Popen(
        [SEPCONNECT, "connect", "--dns-backend", "none", "--credentials-file", str(fifo),
         "--servercert", "pin-sha256:xp3scfzy3rOgQEXnfPiYKrUk7D66a8b8O+gEXaMPleE=",
         "--user", "u", "https://198.18.0.1/"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        planners: list[int] = []
        while not planners and time.monotonic() < deadline:
            # the root stage is blocked in openat(2) of the FIFO for the planner, which waits
            if Path(f"/proc/{launcher.pid}/syscall").read_text().startswith(f"{OPENAT} "):
                planners = _children(launcher.pid)
            time.sleep(0.05)
        assert len(planners) == 1, planners
        planner = planners[0]
        status = _status(planner)
        assert status["Uid"].split() == [str(uid)] * 4
        assert status["Gid"].split() == [str(gid)] * 4
        assert status["Groups"] == ""
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[caps], 16) == 0, (caps, status[caps])
        assert status["NoNewPrivs"] == "1"
        # Not dumpable: /proc gives its files to root, and its own uid cannot ptrace it.
        assert os.stat(f"/proc/{planner}/fd").st_uid == 0
        assert _ptrace_as(uid, gid, planner) == 1  # EPERM
        # It parsed the command line already: it asked for the credentials file.
        assert launcher.poll() is None
        root_stage = _status(launcher.pid)
        assert root_stage["Uid"].split() == ["0"] * 4  # the root stage waits for the open
    finally:
        with open(fifo, "w") as writer:  # noqa: PTH123 - the FIFO's open releases the root stage
            writer.write("pw\n")
        _, stderr = launcher.communicate(timeout=30)
    # the planner refuses it (today's rule for --credentials-file), as before
    assert launcher.returncode == 2, stderr
    assert stderr == (
        f"sepconnect: --credentials-file {fifo}: must be a regular file owned by root (or by "
        "the account sepconnect runs as), mode 0600 or stricter (or a systemd credential in "
        "$CREDENTIALS_DIRECTORY)\n"
    )


def test_ptrace_as_the_same_uid_works_on_a_dumpable_process() -> None:
    """The check above can fail: the same uid may trace a dumpable process of its own."""
    _, uid, gid = service_account(None)

    def become() -> None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)

    sleeper = subprocess.Popen(["sleep", "30"], preexec_fn=become)
    try:
        time.sleep(0.1)
        assert os.stat(f"/proc/{sleeper.pid}/fd").st_uid == uid
        assert _ptrace_as(uid, gid, sleeper.pid) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
