"""A process's private state directory: 0700 and its own uid's (process/statedir.py
reads crashed processes' files in it; process/statefile.py writes this one's).

Loaded at start-up only (the helper's start stage, the root runner), and apart from
statedir.py so that a start with no crashed session to undo loads only this.
"""

from __future__ import annotations

import contextlib
import os
import stat


def ensure_dir(path: str, uid: int, gid: int) -> None:
    """Create the state directory, 0700 and ``uid``'s, or check that an existing one is.

    Called as root, a new directory is made ``uid``'s, and so is an existing *private*
    one of root's (made by root for it); anything else (``--state-dir /etc``, somebody
    else's directory) is refused, never taken over.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    private = stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077
    if private and st.st_uid == 0 != uid and os.geteuid() == 0:
        os.chown(path, uid, gid)
        st = os.lstat(path)
    if not private or st.st_uid != uid:
        raise OSError(f"{path}: not a private directory of uid {uid} (mode {st.st_mode:o})")


def has_files(directory: str) -> bool:
    """Does ``directory`` hold a state file (``*.json``), a crashed process's perhaps?"""
    try:
        return any(name.endswith(".json") for name in os.listdir(directory))
    except OSError:
        return False
