"""How the launcher starts the helper and the worker spawner, and the spawner the worker.

Each process is exec'd through its own installed program (`sepconnect-privhelper`,
`sepconnect-spawner`, `sepconnect-worker`), so that an SELinux policy can move it into
its own domain on exec (selinux/sepconnect.fc labels these files). The environment is replaced by a
fixed, minimal one: with no PYTHON* variables the interpreter is as isolated as
under `python -I`, and nothing the user's shell exported reaches a child.

Where the programs are not installed (a source checkout used in place), the
module is run with `python -I -m` instead, and no domain transition happens.
"""

from __future__ import annotations

import os
import sys
import sysconfig

_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# System files and programs root's options use.
RESOLV_CONF = "/etc/resolv.conf"
"""What ``--dns-backend file`` rewrites."""
NFT = ("/usr/sbin/nft",)
"""Where ``--fail-closed`` finds nft (Debian package nftables)."""
RESOLVCONF_PATHS = ("/usr/sbin/resolvconf", "/sbin/resolvconf")
"""Where ``--dns-backend resolvconf`` finds resolvconf."""
# Test-only switches read by the worker and the helper (tests/integration/test_sandbox.py,
# test_helper_hostile.py); passed on only when set, and inert in normal runs.
_PASSED_THROUGH = ("SEPCONNECT_TEST_SANDBOX_SELFTEST", "SEPCONNECT_TEST_HELPER_SELFTEST")


def program(name: str, module: str) -> list[str]:
    """argv prefix that runs ``module`` through its installed program ``name``."""
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return [path]
    return [sys.executable, "-I", "-m", module]


def installed(paths: tuple[str, ...]) -> str | None:
    """The first of ``paths`` that is an executable file (a system program of root's choice)."""
    return next((p for p in paths if os.path.isfile(p) and os.access(p, os.X_OK)), None)


def child_environment() -> dict[str, str]:
    env = dict(_ENV)
    for name in _PASSED_THROUGH:
        if name in os.environ:
            env[name] = os.environ[name]
    return env
