"""The vpnc-script: the checks the root runner makes before it runs one.

The helper builds the script's environment from validated values (privhelper/script.py)
and the root runner checks every variable's name and value once more
(ipc/script_env.py check_env), and the script's path and ownership (:func:`check_script`), before
each run.
"""

from __future__ import annotations

import os
import stat


def check_script(path: str) -> str:
    """The vpnc-script root named: absolute, and it and every directory above it
    owned by root and writable by nobody else (no symlink in the last part). The
    launcher checks this, the root runner at its start and again before each run."""
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"{path!r}: not an absolute path")
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"{path}: a symbolic link; give the real path")
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o100:
        raise ValueError(f"{path}: not an executable regular file")
    parts = os.path.dirname(os.path.realpath(path))
    checked = [path]
    while True:
        checked.append(parts)
        if parts == "/":
            break
        parts = os.path.dirname(parts)
    for item in checked:
        st = os.stat(item)
        if st.st_uid != 0:
            raise ValueError(f"{path}: {item} is not owned by root")
        sticky_root_dir = item != path and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky_root_dir:
            raise ValueError(f"{path}: {item} is writable by group or others")
    return path
