"""Test-only: what the real helper can and cannot do, tried from inside it.

Imported only when the environment names ``SEPCONNECT_TEST_HELPER_SELFTEST`` (set by
tests/integration/test_helper_hostile.py, never by sepconnect): once the helper's
sandbox is complete (its own uid, CAP_NET_ADMIN alone, Landlock, seccomp) and before it
serves, it *attempts* each forbidden operation and prints the outcomes, one JSON line on
stderr. It changes nothing that it may not change: every attempt that succeeds where it
should not is the finding.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from typing import Final

PREFIX: Final = "sepconnect helper selftest: "


def _outcome(attempt: Callable[[], object]) -> str:
    try:
        attempt()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "allowed"


def _create(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    os.unlink(path)


def _append(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))


def run(spec: str, state_dir: str | None) -> None:
    """Try each operation. ``spec`` (JSON, from the test) names the test's stand-ins:
    ``root_file``, a root-owned file like a vpnc-script; ``root_dir``, a root-owned
    directory like /etc; ``open_dir``, a directory anybody may write, like /tmp; and,
    optionally, ``then_execute``, a program to execute last (the serving stage must not)."""
    paths = json.loads(spec)
    probes: dict[str, Callable[[], object]] = {
        "write_root_file": lambda: _append(paths["root_file"]),
        "create_in_root_dir": lambda: _create(f"{paths['root_dir']}/selftest"),
        "create_in_open_dir": lambda: _create(f"{paths['open_dir']}/selftest"),
        "write_etc_resolv_conf": lambda: _append("/etc/resolv.conf"),
        "read_etc_shadow": lambda: os.close(os.open("/etc/shadow", os.O_RDONLY)),
        "setuid_root": lambda: os.setuid(0),
    }
    if state_dir is not None:
        probes["create_in_state_dir"] = lambda: _create(f"{state_dir}/selftest-{os.getpid()}")
    report = {name: _outcome(probe) for name, probe in probes.items()}
    os.write(2, (PREFIX + json.dumps(report, sort_keys=True) + "\n").encode())
    program = paths.get("then_execute")
    if program is not None:  # the seccomp filter kills us here (Landlock would say EACCES)
        outcome = _outcome(lambda: os.execv(program, [program]))  # noqa: S606 - must fail
        os.write(2, (PREFIX + json.dumps({"execute": outcome}) + "\n").encode())
