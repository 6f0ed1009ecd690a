"""The helper's end of its channel to the supervisor: the codec for this one channel.

The supervisor speaks ipc/wire.py (``Channel`` with supervisor/helper_client.py's
REQUESTS and REPLIES); this is the same wire format, read and written with the helper's own few
lines instead of the codec every channel shares: one datagram of a SOCK_SEQPACKET
socket is one msgpack map, the ``op`` key naming a message of
ipc/helper_messages.py and the other keys exactly its fields. Each field is checked
against its declaration there (the type, and the ``Range``/``Length``/``Match``
markers of ipc/schema.py: the one definition of every limit), and the handlers get
the same frozen dataclasses with addresses parsed. Only :data:`REQUEST_TYPES` are
read, and no fd may come with them; only :data:`REPLY_TYPES` are sent, TunCreated with
the tun's fd (SCM_RIGHTS). The kernel attaches the sender's pid/uid/gid to each message
(SO_PASSCRED, SCM_CREDENTIALS). tests/unit/test_helper_channel.py holds it to wire.py,
byte for byte, and to its refusals.

Anything that breaks the framing or the schema raises :class:`ChannelError`: the
helper treats it as a protocol violation.
"""

from __future__ import annotations

import array
import dataclasses
import re
import socket
import struct
import types
import typing
from typing import Annotated, Any, Literal

import msgpack

from sepconnect.ipc.helper_messages import REPLY_TYPES, REQUEST_TYPES, TunCreated
from sepconnect.ipc.limits import MAX_ADDRESS_TEXT, MAX_ITEMS, MAX_MSG
from sepconnect.ipc.schema import ADDRESS_PARSERS, Length, Match, Message, Range, plain

_REQUESTS = {cls.op: cls for cls in REQUEST_TYPES}
_UCRED = struct.Struct("3i")
_CMSG_SPACE = socket.CMSG_SPACE(4 * 4) + socket.CMSG_SPACE(_UCRED.size)


class ChannelError(Exception):
    """A message broke the framing or the schema."""


class Closed(ChannelError):
    """The supervisor closed the channel, or it was reset (the message says which)."""


def _bounds(mark: object, value: Any) -> str | None:
    if isinstance(mark, Range) and not mark.lo <= value <= mark.hi:
        return f"{value!r} outside [{mark.lo}, {mark.hi}]"
    if isinstance(mark, Length) and not mark.lo <= len(value) <= mark.hi:
        return f"length {len(value)} outside [{mark.lo}, {mark.hi}]"
    if isinstance(mark, Match) and re.fullmatch(mark.pattern, value) is None:
        return f"{value[:40]!r} does not match {mark.pattern!r}"
    return None


def _check(tp: Any, value: Any, where: str) -> Any:
    """``value`` as the declared type ``tp`` wants it, or ChannelError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    why = f"{str(value)[:40]!r} is not a valid {getattr(tp, '__name__', 'address')}"
    if origin is Annotated:
        value = _check(args[0], value, where)
        why = next(filter(None, (_bounds(mark, value) for mark in args[1:])), "")
        if not why:
            return value
    elif origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = tuple(a for a in args if a is not type(None))
        return _check(rest[0] if len(rest) == 1 else frozenset(rest), value, where)
    elif origin is Literal:
        if type(value) is str and value in args:
            return value
        why = f"{str(value)[:40]!r} is not one of {sorted(args)}"
    elif origin is tuple:
        if type(value) is list and len(value) <= MAX_ITEMS:
            return tuple(_check(args[0], item, f"{where}[]") for item in value)
        why = "expected a list"
    elif tp in (bool, int, str):
        if type(value) is tp:  # bool is not an int here, and int is not a bool
            return value
        why = f"expected {tp.__name__}, got {type(value).__name__}"
    elif tp in ADDRESS_PARSERS:
        if type(value) is str and len(value) <= MAX_ADDRESS_TEXT and "%" not in value:  # no zone
            try:
                return ADDRESS_PARSERS[tp](value)
            except ValueError:
                pass
    elif isinstance(tp, type) and issubclass(tp, Message):
        if type(value) is dict:
            return _build(tp, value, where)
        why = "expected a map"
    raise ChannelError(f"{where}: {why}")


def _build(cls: type[Message], raw: dict[Any, Any], where: str) -> Message:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if raw.keys() - set(names):
        raise ChannelError(f"{where}: unknown field(s) {sorted(map(str, raw.keys() - set(names)))}")
    if set(names) - raw.keys():
        raise ChannelError(f"{where}: missing field(s) {sorted(set(names) - raw.keys())}")
    values = {name: _check(hints[name], raw[name], f"{where}.{name}") for name in names}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a __post_init__ cross-field check
        raise ChannelError(f"{where}: {exc}") from None


def decode(data: bytes) -> Message:
    """One request from its bytes, validated; ChannelError otherwise."""
    if len(data) > MAX_MSG:
        raise ChannelError(f"message: {len(data)} bytes exceeds {MAX_MSG}")
    try:
        raw = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_str_len=MAX_MSG, max_bin_len=MAX_MSG,
            max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS, max_ext_len=0,
        )  # fmt: skip
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ChannelError(f"message: undecodable: {type(exc).__name__}") from None
    if type(raw) is not dict:
        raise ChannelError("message: not a map")
    op = raw.pop("op", None)
    cls = _REQUESTS.get(op) if type(op) is str else None
    if cls is None:
        raise ChannelError(f"message: unknown op {str(op)[:40]!r}")
    return _build(cls, raw, cls.op)


def encode(reply: Message) -> bytes:
    """A reply's bytes, as wire.Codec.encode makes them: the fields in order, then op."""
    if type(reply) not in REPLY_TYPES:
        raise TypeError(f"{type(reply).__name__} is not a reply")
    return msgpack.packb({**plain(reply), "op": reply.op}, use_bin_type=True)


class Channel:
    """The helper's end of its SOCK_SEQPACKET socket to the supervisor."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.last_sender: tuple[int, int, int] | None = None
        """(pid, uid, gid) of the last message's sender, from SCM_CREDENTIALS."""

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> Message:
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                MAX_MSG + 1, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC
            )
        except OSError as exc:  # ECONNRESET and the like: the peer exited with messages unread
            raise Closed(f"supervisor went away ({exc.strerror})") from None
        self.last_sender, fds = None, array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, gid = _UCRED.unpack_from(payload)
                # pid 0: no credentials were recorded (the overflow uid, "nobody")
                self.last_sender = (pid, uid, gid) if pid > 0 else None
        for fd in fds:
            socket.close(fd)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MSG:
            raise ChannelError("message: truncated or oversized")
        if not data:
            raise Closed("supervisor went away")
        msg = decode(data)
        if fds:
            raise ChannelError(f"{msg.op}: carries an fd the schema does not allow")
        return msg

    def send(self, reply: Message, fd: int | None = None) -> None:
        if (fd is not None) != isinstance(reply, TunCreated):
            raise ChannelError(f"{reply.op}: fd presence does not match the schema")
        rights = (
            [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
        )
        self.sock.sendmsg([encode(reply)], rights)
