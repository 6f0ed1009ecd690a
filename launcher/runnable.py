"""Can an account run the installed programs? The root stage (rootstage.check_runnable)
asks a child that became the account, and only that child loads this module: none of
it runs as root. The kernel judges, as for the real process: modes, ACLs, every
directory on the way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
from pathlib import PurePath

_VERBS = {os.X_OK: "run", os.R_OK: "read"}


def needed_paths(programs: list[str]) -> list[tuple[str, int]]:
    """(path, access mode) every account of a session needs: the interpreter, the
    standard library, the installed packages, the venv's configuration, and *programs*
    (the installed ones root runs, as root found them)."""
    import sepconnect

    search = os.R_OK | os.X_OK
    paths = [(sys.executable, os.X_OK)]
    paths += [
        (sysconfig.get_path(p), search) for p in ("stdlib", "platstdlib", "purelib", "platlib")
    ]
    paths.append((os.path.dirname(os.path.abspath(sepconnect.__file__)), search))
    if sys.prefix != sys.base_prefix:
        paths.append((os.path.join(sys.prefix, "pyvenv.cfg"), os.R_OK))
    paths += [(program, search) for program in programs if program != sys.executable]
    return paths


def blocker(path: str, mode: int) -> str | None:
    """Why we may not access *path* (by our real uid): the first directory on its way
    (or its target's) we cannot enter, else the path itself; None if we may."""
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


def first_blocker(paths: list[tuple[str, int]]) -> str:
    """Why we cannot use the first of *paths* we cannot use; "" if we can use them all."""
    return next(filter(None, (blocker(path, mode) for path, mode in paths)), "")
