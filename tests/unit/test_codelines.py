"""tests/codelines.py, the trusted base's counter, on a made-up strace (no root needed).

What it must get right, or the budget test could pass on a helper that is not small:
a module loaded before an exec still counts as privileged, a child forked while root
starts privileged, a setresuid away from 0 ends it (but not for the helper), and the
helper's stages are told apart.
"""

from __future__ import annotations

from pathlib import Path

from codelines import trace_session

import sepconnect.privhelper.main
import sepconnect.privhelper.policy
import sepconnect.process.privileges

MAIN = Path(sepconnect.privhelper.main.__file__)
POLICY = Path(sepconnect.privhelper.policy.__file__)
PRIVILEGES = Path(sepconnect.process.privileges.__file__)


def _open(pid: int, path: Path) -> str:
    return f'{pid} openat(AT_FDCWD, "{path}", O_RDONLY|O_CLOEXEC) = 3'


def _exec(pid: int, module: str) -> str:
    return f'{pid} execve("/usr/bin/python3", ["python3", "-I", "-m", "{module}"], 0x1) = 0'


TRACE = "\n".join(
    [
        '100 execve("/venv/bin/sepconnect", ["/venv/bin/sepconnect", "connect"], 0x1) = 0',
        _open(100, PRIVILEGES),
        "100 clone(child_stack=NULL, flags=SIGCHLD <unfinished ...>",
        _exec(101, "sepconnect.privhelper"),  # the child runs before its parent resumes
        "100 <... clone resumed>, child_tidptr=0x7f) = 101",
        "100 vfork() = 102",
        _open(101, MAIN),
        "101 setresuid(65533, 65533, 65533) = 0",  # the helper keeps CAP_NET_ADMIN
        _exec(101, "sepconnect.privhelper.serve"),
        _open(101, POLICY),
        "100 setresuid(65534, 65534, 65534) = 0",
        _open(100, POLICY),  # after the launcher's drop: not privileged
        "100 clone3({flags=CLONE_VM, exit_signal=SIGCHLD}, 88) = 103",
        _exec(102, "sepconnect.spawner"),
        _open(102, POLICY),  # forked while root, never dropped: privileged
        _open(103, MAIN),  # forked after the drop: not privileged
    ]
)


def test_privilege_follows_forks_and_survives_execs() -> None:
    processes = trace_session(TRACE)
    launcher, helper, spawner, late = (processes[pid] for pid in (100, 101, 102, 103))
    assert launcher.privileged == [PRIVILEGES]
    assert launcher.modules == [PRIVILEGES, POLICY]
    assert helper.program == "sepconnect.privhelper.serve"
    assert helper.modules == [POLICY]  # the serving stage: after its last exec
    assert helper.stages == [("sepconnect.privhelper", [MAIN]), (helper.program, [POLICY])]
    assert helper.privileged == [MAIN, POLICY]  # the start stage counts too
    assert spawner.privileged == [POLICY]
    assert late.privileged == []
