"""The state directory, read for crashed processes' files.

Loaded at start-up only, and only where the directory holds a file (the helper's start
stage; the root runner): the files themselves are process/statefile.py's, which a
long-lived process keeps writing; the directory is made by process/privatedir.py.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from typing import Any

from sepconnect.process.privatedir import ensure_dir as ensure_dir  # the root runner's
from sepconnect.process.statefile import MAX_STATE, netns_id, process_start_time


def stale(
    directory: str, prefix: str, own_pid: int | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, data) of each crashed process's ``<prefix>-<pid>.json`` in our network
    namespace."""
    own_pid = os.getpid() if own_pid is None else own_pid
    here = netns_id()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith(f"{prefix}-") and name.endswith(".json")):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                data = json.loads(os.read(fd, MAX_STATE))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        pid = data.get("pid")
        if not isinstance(pid, int) or pid == own_pid or data.get("netns") != here:
            continue
        started = process_start_time(pid)
        if started is not None and started == data.get("start_time"):
            continue  # that process is alive: its session is not ours to touch
        yield path, data
