"""Can the unprivileged accounts run the installed programs? Asked as root, before
anything starts and before any privilege is dropped.

The helper, the supervisor and the workers run under accounts of their own, with the
interpreter and the packages this launcher runs from: a venv under /root (0700), for
one, works for root and for no one else, and used to end in a PermissionError traceback
from the first process that had dropped root. Each account is asked for real: a forked
child takes the account's uid and gid (no supplementary group) and asks the kernel with
access(2), which judges by the real uid, so modes, ACLs and every directory on the way
count as they will for the real process.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import PurePath

from sepconnect.process import programs

# What every process of a session needs: the interpreter (exec'd by the helper's and the
# spawner's programs and the workers'), the standard library, the installed packages and
# the venv's configuration (without it the interpreter finds no site-packages), and the
# programs themselves (a script needs read as well as execute).
_PROGRAMS = (
    ("sepconnect-privhelper", "sepconnect.privhelper"),
    ("sepconnect-spawner", "sepconnect.spawner"),
    ("sepconnect-worker", "sepconnect.worker"),
)


class NotRunnable(Exception):
    """An account cannot run the installed programs (exit USAGE)."""


def needed_paths() -> list[tuple[str, int]]:
    """(path, access mode) each account needs."""
    import sepconnect

    readable_dir = os.R_OK | os.X_OK
    paths = [(sys.executable, os.X_OK)]
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.append((sysconfig.get_path(name), readable_dir))
    paths.append((os.path.dirname(os.path.abspath(sepconnect.__file__)), readable_dir))
    venv_config = os.path.join(sys.prefix, "pyvenv.cfg")
    if sys.prefix != sys.base_prefix and os.path.exists(venv_config):
        paths.append((venv_config, os.R_OK))
    for name, module in _PROGRAMS:
        program = programs.program(name, module)[0]
        if program != sys.executable:
            paths.append((program, os.R_OK | os.X_OK))
    unique: dict[str, int] = {}
    for path, mode in paths:
        unique[path] = unique.get(path, 0) | mode
    return list(unique.items())


def _mode(path: str | PurePath) -> str:
    try:
        return f" (mode {os.stat(path).st_mode & 0o7777:04o})"
    except OSError:
        return ""


def _blocker(path: str, mode: int) -> str:
    """Why *path* is not accessible to the current real uid: the first directory on its
    way (or its target's) that cannot be entered, else the path itself."""
    for candidate in (path, os.path.realpath(path)):
        for parent in reversed(PurePath(candidate).parents):
            if not os.access(parent, os.X_OK):
                return f"{parent}{_mode(parent)} cannot be entered"
    if os.path.isdir(path):
        verb = "read"
    else:
        verb = {os.X_OK: "run", os.R_OK: "read"}.get(mode, "read and run")
    return f"{path}{_mode(path)} cannot be {verb}"


def _ask_as(uid: int, gid: int, paths: list[tuple[str, int]]) -> str | None:
    """Fork, become uid/gid for good, and check *paths*; None if all are accessible,
    else why not."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            for path, mode in paths:
                if not os.access(path, mode):
                    os.write(write_end, _blocker(path, mode).encode()[:4000])
                    break
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as reader:
            answer = reader.read().decode(errors="replace")
    finally:
        _, wait_status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        return "the check itself failed (could not take its uid)"
    return answer or None


def session_accounts(
    service: tuple[str, int, int], helper: tuple[str, int, int]
) -> list[tuple[str, str, int, int]]:
    """(role, name, uid, gid) of the workers', the supervisor's and the helper's accounts
    of a session the launcher starts as root (the spawner's SpawnerSetupError for a
    worker account it would refuse anyway)."""
    from sepconnect.spawner_start import worker_account

    worker = worker_account(service[1], service[2], helper_uid=helper[1] or None)
    return [
        ("the workers'", worker.name, worker.uid, worker.gid),
        ("the supervisor's", *service),
        ("the helper's", *helper),
    ]


def check_accounts(accounts: Iterable[tuple[str, str, int, int]]) -> None:
    """NotRunnable naming the first account (role, name, uid, gid) that cannot run the
    programs, and the first thing in its way."""
    paths = needed_paths()
    checked: set[tuple[int, int]] = set()
    for role, name, uid, gid in accounts:
        if (uid, gid) in checked or uid == 0:
            continue
        checked.add((uid, gid))
        why = _ask_as(uid, gid, paths)
        if why is not None:
            raise NotRunnable(
                f"{role} account {name} (uid {uid}) cannot run the installed programs: "
                f"{why}; install sepconnect where every account can read it, e.g. "
                "/opt/sepconnect-venv (docs/usage.md)"
            )
