"""The files of a connect that only root may open: asked of the root stage, or opened here.

Under the root stage (launcher/rootstage.py) the planner asks it for each file by kind
and path (:func:`ask_root`), and the launcher after the drop takes the fds it opened
(:func:`take_from`); started by anyone else, the launcher opens them itself with the same
flags. The checks on each file (owner, mode, size, contents) are the callers', on the
fd, whoever opened it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable

from sepconnect.rootstage import open_for

_source: list[Callable[[str, str], int]] = []
_planning: list[bool] = [False]


def open_file(kind: str, path: str) -> int:
    """An fd of *path*, opened as its *kind* says (rootstage.KINDS); OSError if not."""
    if not _source:
        return open_for(kind, path)
    return _source[0](kind, os.path.abspath(path))


def planning() -> bool:
    """Whether this is the planner: it leaves standard input to the session."""
    return _planning[0]


def trusted_owners() -> tuple[int, ...]:
    """Who may own a file with a secret in it: root, or, started without root, also the
    account sepconnect runs as."""
    return (0,) if _source else (0, os.geteuid())


def ask_root(channel: socket.socket) -> None:
    """In the planner: every file from the root stage, over *channel*."""

    def request(kind: str, path: str) -> int:
        channel.send(json.dumps({"open": kind, "path": path}).encode())
        data, fds, _, _ = socket.recv_fds(channel, 4096, 1)
        if fds:
            return fds[0]
        reply = json.loads(data)
        raise OSError(reply["errno"], reply["error"])

    _source.append(request)
    _planning[0] = True


def take_from(files: dict[tuple[str, str], int]) -> None:
    """After the drop: each file from the fds the root stage opened (each once)."""

    def take(kind: str, path: str) -> int:
        fd = files.pop((kind, path), None)
        if fd is None:
            raise OSError(errno.EACCES, "not opened by the root stage")
        if kind != "session-log":
            os.lseek(fd, 0, os.SEEK_SET)  # the planner read it through the same file
        return fd

    _source.append(take)
