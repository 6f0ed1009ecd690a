"""The control socket: `sepconnect status|rekey|reconnect|disconnect`.

An AF_UNIX SOCK_SEQPACKET socket created by the (unprivileged) supervisor,
mode 0660 with the group from --control-group, or 0600 without one. One
request and one reply per connection, each a single JSON datagram. Every peer
is identified with SO_PEERCRED and SO_PEERGROUPS: root and members of the control group are
served; anyone else — including the service account itself, which is what a
compromised worker would be — is refused, and the refusal is logged.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Final

from sepconnect.ipc.wire import peer_credentials
from sepconnect.process.libc import LIBC, errno_error

COMMANDS = ("status", "rekey", "reconnect", "disconnect")
_MAX = 64 * 1024


class ControlError(Exception):
    """The control socket could not be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    """Supplementary groups at connect() (SO_PEERGROUPS)."""


SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)  # <asm-generic/socket.h>
_GETSOCKOPT_MAX: Final = 1024
"""The largest buffer CPython's socket.getsockopt takes: 256 groups."""
_NGROUPS_MAX: Final = 65536


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The supplementary groups the peer had when it connected (SO_PEERGROUPS).

    Recorded by the kernel at connect(), like SO_PEERCRED: not a later /proc read,
    which races with the peer's exit and is blind under ProtectProc=invisible.
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GETSOCKOPT_MAX)
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            raise
        buffer = (ctypes.c_uint32 * _NGROUPS_MAX)()  # more than 256 groups
        size = ctypes.c_uint32(ctypes.sizeof(buffer))
        if LIBC.getsockopt(
            sock.fileno(), socket.SOL_SOCKET, SO_PEERGROUPS, buffer, ctypes.byref(size)
        ):
            raise errno_error("getsockopt(SO_PEERGROUPS)") from None
        raw = bytes(buffer)[: size.value]
    return frozenset(struct.unpack(f"={len(raw) // 4}I", raw))


def peer_of(conn: socket.socket) -> Peer:
    return Peer(*peer_credentials(conn), groups=peer_groups(conn))


def authorized(peer: Peer, *, service_uid: int, control_gid: int | None) -> bool:
    if peer.uid == 0:
        return True
    if peer.uid == service_uid or control_gid is None:
        return False
    return peer.gid == control_gid or control_gid in peer.groups


def parse_request_untrusted(data: bytes) -> str:
    """The command of one request datagram; ValueError with the reason otherwise."""
    try:
        request = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(request, dict) or set(request) != {"command"}:
        raise ValueError('expected {"command": ...}')
    command = request["command"]
    if command not in COMMANDS:
        raise ValueError(f"unknown command (one of {', '.join(COMMANDS)})")
    return str(command)


def encode_reply(reply: dict[str, Any]) -> bytes:
    data = json.dumps(reply, sort_keys=True).encode()
    if len(data) > _MAX:
        data = json.dumps({"ok": False, "error": "reply too large"}).encode()
    return data


class ControlServer:
    """The listening socket; the supervisor's loop accepts and answers."""

    def __init__(self, path: str, *, service_uid: int, control_gid: int | None) -> None:
        self.path = path
        self.service_uid = service_uid
        self.control_gid = control_gid
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_umask = os.umask(0o177)  # no window in which the socket is wider open
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot create the control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        if control_gid is not None:
            os.chown(path, -1, control_gid)
            os.chmod(path, 0o660)
        sock.listen(8)
        sock.setblocking(False)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, Peer] | None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return None
        conn.settimeout(1.0)
        return conn, peer_of(conn)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _remove_stale(path: str) -> None:
    """Remove a socket left by a dead session; refuse to take over a live one."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ControlError(f"another sepconnect session is running (control socket {path})")


def reply(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.send(encode_reply(message))
    conn.close()


def request(path: str, command: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Client side, for the CLI: send one command and return the decoded reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        # A refused peer is answered at once, before its request is read: the reply
        # is already queued for us even if our send finds the socket closed.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.send(json.dumps({"command": command}).encode())
        data = sock.recv(_MAX)
    except FileNotFoundError:
        raise ControlError(f"no sepconnect session is running (no {path})") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}") from None
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        decoded = json.loads(data)
    except json.JSONDecodeError:
        raise ControlError("malformed reply from the supervisor") from None
    if not isinstance(decoded, dict):
        raise ControlError("malformed reply from the supervisor")
    return decoded
