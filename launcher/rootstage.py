"""The ``sepconnect`` program, and the launcher's root stage: all of it that runs as root.

Anything but ``connect`` started as root goes straight to the command line (cli.py).
For a connect, root forks a *planner*, which takes the default service account's uids
for good (no capability, an empty bounding set, no_new_privs, not dumpable) before it
imports anything else, and only then parses the command line, the config file and
openconnect's option forms (cli.py). The files only root may open it asks of us by kind
and path; we open each with the flags its kind has always had (:data:`KINDS`) and hand
it the fd. Its last message is a *plan*: the accounts, the helper's arguments, the
directories to make. We check the plan's shape (:func:`check_plan`), carry it out (the
directories, the worker spawner, the helper), drop to the service account, and only then
import the rest of the launcher, which parses the command line again, unprivileged, and
reads the files through the fds we opened (cli.after_root_stage). Before the planner,
and again for the plan's accounts, a child that became each account checks that it can
run the installed programs.

We trust the plan no more than root's own command line, from which a fresh, dropped,
non-dumpable child computed it (it saw no network input but the DNS answer for the
server's name, which we pass on unread); we still check its shape, and we never parse
a key, a certificate or a config file. Only with -b, --timestamp or --syslog do we load
more (launcher/background.py, launcher/output.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from sepconnect.process import lockdown, programs
from sepconnect.process.accounts import service_account, worker_default
from sepconnect.process.auditfile import open_log

USAGE = 2
"""ExitCode.USAGE: process/exitcodes.py, whose 46 lines we do not load for one number
(tests/unit/test_rootstage.py checks that they agree)."""
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
KINDS = {
    "config": _READ | os.O_NONBLOCK,  # --config
    "secret": _READ,  # --credentials-file, --token-secret @FILE
    "secret-rw": os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,  # --token-secret @FILE for hotp
    "client-file": _READ | os.O_NONBLOCK,  # -c, -k, --key-password-file (a FIFO must not hang)
    "cafile": os.O_RDONLY | os.O_CLOEXEC,
    "pid-file": os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,  # mode 0644
    "session-log": 0,  # process/auditfile.py's open_log, in a directory made 0700
}
"""What the planner may ask us to open, and how each kind is opened."""
_PLAN: dict[str, type | tuple[type, ...]] = {
    "service": list, "helper": list, "worker": list, "dirs": list, "helper_args": list,
    "control_gid": (int, type(None)), "control_dir": (str, type(None)),
    "pid_file": (str, type(None)), "relay": (list, type(None)), "server_address": str,
    "allow_weak_sandbox": bool, "background": bool, "quiet": bool,
}  # fmt: skip
"""The plan's keys and their types; "helper" and "worker" are empty without a session
(--authenticate: only the service account runs)."""
_VERBS = {os.X_OK: "run", os.R_OK: "read"}
_ROLES = {"worker": "the workers'", "service": "the supervisor's", "helper": "the helper's"}


class PlanError(ValueError):
    """A plan or a request we do not carry out (one line)."""


def check_plan(plan: object) -> dict[str, Any]:
    """The plan if its shape is right: known keys of the right types, absolute paths,
    string arguments, and accounts that are never root's and never share a uid."""
    if not isinstance(plan, dict) or set(plan) != set(_PLAN):
        raise PlanError("the planner's plan has unknown or missing keys")
    for key, kinds in _PLAN.items():
        if not isinstance(plan[key], kinds) or isinstance(plan[key], bool) != (kinds is bool):
            raise PlanError(f"the planner's plan: {key} is of the wrong type")
    accounts = [plan[key] for key in _ROLES if plan[key] or key == "service"]
    for account in accounts:
        if len(account) != 3 or not isinstance(account[0], str) or not _ids(*account[1:]):
            raise PlanError(f"the planner's plan: {account!r} is root's, or not an account")
    if len({ids[1] for ids in accounts}) != len(accounts) or len(accounts) == 2:
        raise PlanError("the planner's plan: the helper, supervisor and workers share a uid")
    paths = [*plan["dirs"], plan["control_dir"] or "/", plan["pid_file"] or "/"]
    if not all(isinstance(p, str) and os.path.isabs(p) and "\0" not in p for p in paths):
        raise PlanError("the planner's plan: a path that is not absolute")
    if not all(isinstance(a, str) and "\0" not in a for a in plan["helper_args"]):
        raise PlanError("the planner's plan: a helper argument that is not a string")
    if plan["relay"] is not None and [type(b) for b in plan["relay"]] != [bool, bool]:
        raise PlanError("the planner's plan: relay is not two flags")
    if plan["control_gid"] is not None and not _ids(plan["control_gid"] or 1):
        raise PlanError("the planner's plan: control_gid is not a group")
    return plan


def _ids(*ids: object) -> bool:
    return all(type(i) is int and 0 < i < 2**32 - 1 for i in ids)


def open_for(kind: str, path: str) -> int:
    """Open *path* as its *kind* says; OSError as the kernel says why not."""
    if kind == "session-log":
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return open_log(path)
    return os.open(path, KINDS[kind], 0o644)


def serve(channel: socket.socket, files: dict[tuple[str, str], int]) -> object:
    """Answer the planner's requests for files until it sends its plan (None if it ends
    without one: an error it printed, or --help)."""
    while data := channel.recv(1 << 20):
        request = json.loads(data)  # ValueError if it is no JSON, as PlanError
        if not isinstance(request, dict) or set(request) not in ({"plan"}, {"open", "path"}):
            raise PlanError("the planner sent neither a plan nor a request for a file")
        if "plan" in request:
            return request["plan"]
        kind, path = request["open"], request["path"]
        if not isinstance(kind, str) or kind not in KINDS:
            raise PlanError(f"the planner asked for a file of unknown kind {kind!r}")
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise PlanError(f"the planner asked for {kind} at {path!r}: not an absolute path")
        try:
            files[kind, path] = files.get((kind, path)) or open_for(kind, path)
        except OSError as exc:
            reply = {"errno": exc.errno or 0, "error": exc.strerror or str(exc)}
            channel.send(json.dumps(reply).encode())
        else:
            socket.send_fds(channel, [b"{}"], [files[kind, path]])
    return None


def become(uid: int, gid: int, groups: tuple[int, ...] = ()) -> None:
    """Take *uid*, *gid* and *groups* for good, no capability (bounding set too),
    no_new_privs, not dumpable (only root can touch us now); then prove root cannot
    come back."""
    lockdown.drop_bounding_set()
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    lockdown.no_new_privs_and_undumpable()
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("privilege drop failed: setuid(0) succeeded")


def _fork_as(uid: int, gid: int, task: Callable[[], int]) -> int:
    """The pid of a child that :func:`become` uid/gid first, then runs *task* and exits
    with its result."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            become(uid, gid)
            code = task()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return code if code >= 0 else 128 - code


def needed_paths() -> list[tuple[str, int]]:
    """(path, access mode) every account of a session needs: the interpreter, the
    standard library, the installed packages, the venv's configuration, the programs."""
    import sepconnect

    search = os.R_OK | os.X_OK
    paths = [(sys.executable, os.X_OK)]
    paths += [
        (sysconfig.get_path(p), search) for p in ("stdlib", "platstdlib", "purelib", "platlib")
    ]
    paths.append((os.path.dirname(os.path.abspath(sepconnect.__file__)), search))
    if sys.prefix != sys.base_prefix:
        paths.append((os.path.join(sys.prefix, "pyvenv.cfg"), os.R_OK))
    for name in ("privhelper", "spawner", "worker"):
        program = programs.program(f"sepconnect-{name}", f"sepconnect.{name}")[0]
        paths += [(program, search)] if program != sys.executable else []
    return paths


def blocker(path: str, mode: int) -> str | None:
    """Why we may not access *path* (by our real uid, as the kernel judges: modes, ACLs,
    every directory on the way): the first directory on its way (or its target's) we
    cannot enter, else the path itself; None if we may."""
    if os.access(path, mode):
        return None
    what, verb = path, "read" if os.path.isdir(path) else _VERBS.get(mode, "read and run")
    for candidate in (path, os.path.realpath(path)):
        closed = [d for d in PurePath(candidate).parents if not os.access(d, os.X_OK)]
        if closed:
            what, verb = str(closed[-1]), "entered"
            break
    with contextlib.suppress(OSError):
        what += f" (mode {os.stat(what).st_mode & 0o7777:04o})"
    return f"{what} cannot be {verb}"


def check_runnable(accounts: list[tuple[str, str, int, int]], checked: set[int]) -> None:
    """PlanError naming the first account (role, name, uid, gid) that cannot run the
    installed programs, and the first thing in its way."""
    paths = needed_paths()
    for role, name, uid, gid in accounts:
        why = None if uid in checked else ask_as(uid, gid, paths)
        checked.add(uid)
        if why is not None:
            raise PlanError(
                f"{role} account {name} (uid {uid}) cannot run the installed programs: "
                f"{why}; install sepconnect where every account can read it, e.g. "
                "/opt/sepconnect-venv (docs/usage.md)"
            )


def ask_as(uid: int, gid: int, paths: list[tuple[str, int]]) -> str | None:
    """Why uid/gid cannot use the first of *paths* it cannot use (None if it can use
    them all), asked of the kernel in a child that became uid/gid."""
    read_end, write_end = os.pipe()
    pid = _fork_as(uid, gid, functools.partial(_report, write_end, paths))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        why = reader.read().decode(errors="replace")
    if _exit_code(pid) != 0:
        return "the check itself failed (could not take its uid)"
    return why or None


def _report(out: int, paths: list[tuple[str, int]]) -> int:
    """In a child that became the account: on *out*, why it cannot use the first of
    *paths* it cannot use, if any."""
    why = next(filter(None, (blocker(path, mode) for path, mode in paths)), "")
    os.write(out, why.encode()[:4000])
    return 0


def _popen(argv: list[str], fds: tuple[socket.socket, ...], **kw: Any) -> subprocess.Popen[bytes]:
    """Start a program with *fds* (closed here), in its own process group (a ^C at the
    terminal is the supervisor's, which ends the session in order)."""
    try:
        env = programs.child_environment()
        pass_fds = [sock.fileno() for sock in fds]
        return subprocess.Popen(
            argv, pass_fds=pass_fds, stdin=subprocess.DEVNULL, process_group=0, env=env, **kw
        )
    finally:
        for sock in fds:
            sock.close()


def _start_session(plan: dict[str, Any], uid: int) -> tuple[Any, Any, Any]:
    """The worker spawner (which becomes the workers' account before exec: the program
    never runs with root's uid or a capability) with the first worker's channel, then
    the helper; (spawner, helper, our end of the helper's channel)."""
    weak = ["--allow-weak-sandbox"] if plan["allow_weak_sandbox"] else []
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    first, first_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    _, worker_uid, worker_gid = plan["worker"]
    spawner = _popen(
        [*programs.program("sepconnect-spawner", "sepconnect.spawner"), "--fd",
         str(theirs.fileno()), "--peer-uid", str(uid), "--first-worker",
         str(first_theirs.fileno()), *weak],
        (theirs, first_theirs),
        preexec_fn=lambda: become(worker_uid, worker_gid),  # we are one thread
    )  # fmt: skip
    channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    _, helper_uid, helper_gid = plan["helper"]
    helper = _popen(  # ours last: the last of an option wins, whatever helper_args hold
        [*programs.program("sepconnect-privhelper", "sepconnect.privhelper"),
         *plan["helper_args"], "--fd", str(theirs.fileno()), "--peer-uid", str(uid),
         "--uid", str(helper_uid), "--gid", str(helper_gid), *weak],
        (theirs,),
    )  # fmt: skip
    return (spawner, ours, first), helper, channel


def _run(argv: list[str], plan: dict[str, Any], files: dict[tuple[str, str], int]) -> int:
    """Carry out a checked plan, drop to the service account, and go on as the launcher."""
    _, uid, gid = plan["service"]
    for directory in plan["dirs"]:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    if plan["control_dir"] is not None:
        with contextlib.suppress(OSError):  # the launcher checks it after the drop
            os.mkdir(plan["control_dir"], 0o700)
            os.chown(plan["control_dir"], uid, gid)
            os.chmod(plan["control_dir"], 0o755)  # noqa: S103 - for --control-group's members
    relay = background = None
    if plan["relay"] is not None or plan["background"]:  # before anything else starts
        from sepconnect.background import start_hooks

        relay, background = start_hooks(plan, files)
    spawner, helper, channel = _start_session(plan, uid) if plan["helper"] else (None,) * 3
    # The control group stays a supplementary group, for the supervisor to give its
    # socket to; it grants nothing else.
    group = plan["control_gid"]
    become(uid, gid, (gid,) if group is None else (gid, group))
    from sepconnect.cli import Started, after_root_stage

    return after_root_stage(argv, Started(plan, files, helper, channel, spawner, relay, background))


def main(argv: list[str] | None = None) -> int:
    """The ``sepconnect`` program."""
    argv = sys.argv[1:] if argv is None else argv
    if os.geteuid() != 0 or argv[:1] != ["connect"]:
        from sepconnect.cli import main as command_line

        return command_line(argv)
    files: dict[tuple[str, str], int] = {}
    checked: set[int] = set()
    try:
        # The planner runs as the default service account: it has not read --setuid yet.
        planner = service_account(None)
        defaults = [(_ROLES["worker"], *worker_default()), (_ROLES["service"], *planner)]
        check_runnable(defaults, checked)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def plan_it() -> int:
            ours.close()
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # stdin is the session's, after the drop
            from sepconnect.cli import plan

            return plan(argv, theirs)

        pid = _fork_as(planner[1], planner[2], plan_it)
        theirs.close()
        try:
            with ours:
                plan = serve(ours, files)
        finally:
            code = _exit_code(pid)
        if code != 0 or plan is None:
            return code
        plan = check_plan(plan)
        check_runnable([(role, *plan[key]) for key, role in _ROLES.items() if plan[key]], checked)
    except ValueError as exc:  # PlanError, AccountError, a request that is no JSON
        print(f"sepconnect: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 1  # ExitCode.ERROR
    return _run(argv, plan, files)
