"""Typed, size-limited messages over AF_UNIX SOCK_SEQPACKET sockets.

Every channel between sepconnect's processes uses this module. One datagram is
one message: a msgpack map whose ``op`` key names a frozen dataclass, the other
keys being exactly that dataclass's fields. The declared field types and the
``Annotated`` limits next to them are the whole schema; one generic validator
walks them, so no handler ever sees an unchecked value.

Anything that breaks the framing or the schema raises :class:`WireError`. The
channel cannot be trusted after that, and callers treat it as fatal.

This module lives in the privileged helper's package because the helper must
be readable on its own: it imports only the standard library and msgpack.
"""

from __future__ import annotations

import array
import dataclasses
import os
import re
import socket
import struct
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Literal

import msgpack

from sepconnect.ipc.limits import MAX_ADDRESS_TEXT as _MAX_ADDRESS_TEXT
from sepconnect.ipc.limits import MAX_ITEMS as _MAX_ITEMS
from sepconnect.ipc.limits import MAX_MSG as MAX_MSG  # re-exported
from sepconnect.ipc.limits import PROTO_VERSION as PROTO_VERSION  # re-exported
from sepconnect.ipc.schema import ADDRESS_PARSERS as _ADDRESS_PARSERS
from sepconnect.ipc.schema import Length as Length  # re-exported: the schemas' markers
from sepconnect.ipc.schema import Match as Match
from sepconnect.ipc.schema import Message as Message
from sepconnect.ipc.schema import Range as Range
from sepconnect.ipc.schema import plain as _plain


class WireError(Exception):
    """A message broke the framing or the schema."""


class PeerClosed(WireError):
    """The other end closed the channel."""


_Checker = Callable[[Any, str], Any]


def _fail(where: str, why: str) -> typing.NoReturn:
    raise WireError(f"{where}: {why}")


def _limits(where: str, checker: _Checker, extras: Sequence[object]) -> _Checker:
    """Wrap a type checker with the Range/Length/Match markers found in Annotated."""
    checks: list[Callable[[Any, str], None]] = []
    for extra in extras:
        if isinstance(extra, Range):

            def check_range(v: Any, w: str, r: Range = extra) -> None:
                if not r.lo <= v <= r.hi:
                    _fail(w, f"{v!r} outside [{r.lo}, {r.hi}]")

            checks.append(check_range)
        elif isinstance(extra, Length):

            def check_len(v: Any, w: str, n: Length = extra) -> None:
                if not n.lo <= len(v) <= n.hi:
                    _fail(w, f"length {len(v)} outside [{n.lo}, {n.hi}]")

            checks.append(check_len)
        elif isinstance(extra, Match):

            def check_match(
                v: Any, w: str, rx: re.Pattern[str] = re.compile(extra.pattern)
            ) -> None:
                if rx.fullmatch(v) is None:
                    _fail(w, f"{v!r} does not match {rx.pattern!r}")

            checks.append(check_match)
    if not checks:
        return checker

    def checked(value: Any, w: str) -> Any:
        result = checker(value, w)
        for check in checks:
            check(result, w)
        return result

    return checked


def _compile(tp: Any, where: str) -> _Checker:
    """Turn a declared field type into a function that validates and converts a decoded value."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        return _limits(where, _compile(base, where), extras)
    if tp is bool:
        return _exact(bool)
    if tp is int:
        return _exact(int)
    if tp is str:
        return _exact(str)
    if tp is bytes:
        return _exact(bytes)
    if tp is float:

        def as_float(v: Any, w: str) -> float:
            if type(v) is int:
                return float(v)
            if type(v) is not float or v != v:  # NaN never passes a range check
                _fail(w, "expected a float")
            return v

        return as_float
    if origin is Literal:
        allowed = frozenset(typing.get_args(tp))

        def literal(v: Any, w: str) -> Any:
            if type(v) is not str or v not in allowed:
                _fail(w, f"{v!r} is not one of {sorted(allowed)}")
            return v

        return literal
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: only tuple[T, ...] is supported")
        item = _compile(args[0], where + "[]")

        def sequence(v: Any, w: str) -> tuple[Any, ...]:
            if type(v) not in (list, tuple):
                _fail(w, "expected a list")
            if len(v) > _MAX_ITEMS:
                _fail(w, "list too long")
            return tuple(item(x, w) for x in v)

        return sequence
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        rest = tuple(m for m in members if m is not type(None))
        if len(rest) == len(members):  # no None: an address union, or nothing we know
            return _address(frozenset(members), where)
        inner = _compile(rest[0], where) if len(rest) == 1 else _address(frozenset(rest), where)

        def optional(v: Any, w: str) -> Any:
            return None if v is None else inner(v, w)

        return optional
    if tp in _ADDRESS_PARSERS:
        return _address(tp, where)
    if isinstance(tp, type) and issubclass(tp, Message):
        schema = _schema(tp)

        def nested(v: Any, w: str) -> Message:
            if type(v) is not dict:
                _fail(w, "expected a map")
            return typing.cast(Message, _build(tp, schema, v, w))

        return nested
    raise TypeError(f"{where}: unsupported field type {tp!r}")


def _address(key: Any, where: str) -> _Checker:
    parse = _ADDRESS_PARSERS.get(key)
    if parse is None:
        raise TypeError(f"{where}: unsupported field type {key!r}")

    def address(v: Any, w: str) -> Any:
        if type(v) is not str or len(v) > _MAX_ADDRESS_TEXT or "%" in v:  # no zone ids
            _fail(w, "expected an address as text")
        try:
            return parse(v)
        except ValueError:
            _fail(w, f"{v!r} is not a valid {getattr(parse, '__name__', 'address')}")

    return address


def _exact(kind: type) -> _Checker:
    def check(v: Any, w: str) -> Any:
        if type(v) is not kind:  # bool is not an int here, and int is not a bool
            _fail(w, f"expected {kind.__name__}, got {type(v).__name__}")
        return v

    return check


_SCHEMAS: dict[type[Message], dict[str, _Checker]] = {}


def _schema(cls: type[Message]) -> dict[str, _Checker]:
    cached = _SCHEMAS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        cached = {
            f.name: _compile(hints[f.name], f"{cls.__name__}.{f.name}")
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        }
        _SCHEMAS[cls] = cached
    return cached


def _build(cls: type[Message], schema: dict[str, _Checker], raw: dict[Any, Any], where: str) -> Any:
    unknown = raw.keys() - schema.keys()
    if unknown:
        _fail(where, f"unknown field(s) {sorted(map(str, unknown))}")
    missing = schema.keys() - raw.keys()
    if missing:
        _fail(where, f"missing field(s) {sorted(missing)}")
    values = {name: check(raw[name], f"{where}.{name}") for name, check in schema.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a __post_init__ cross-field check
        _fail(where, str(exc))


def plain(msg: Message) -> dict[str, Any]:
    """A message's fields as plain data (addresses as text, tuples as lists), e.g. for JSON."""
    return typing.cast(dict[str, Any], _plain(msg))


def _reject_ext(code: int, data: bytes) -> Any:
    raise WireError("msgpack extension types are not allowed")


class Codec:
    """Encodes and decodes one channel's closed set of message types."""

    def __init__(self, *message_types: type[Message]) -> None:
        # Each type's validator is built when its first message arrives, not here: the
        # codecs are built at import, on the connect path of three processes, and most
        # processes decode only a few of their types (~15 ms of each one's start-up on
        # a loaded machine). tests/unit/test_wire.py builds all of them with check().
        self._types: dict[str, type[Message]] = {}
        for cls in message_types:
            if cls.op in self._types:
                raise TypeError(f"duplicate op {cls.op!r}")
            self._types[cls.op] = cls

    def check(self) -> None:
        """Build every type's validator now: TypeError for a field type the schema
        language does not have."""
        for cls in self._types.values():
            _schema(cls)

    @property
    def message_types(self) -> frozenset[type[Message]]:
        return frozenset(self._types.values())

    def encode(self, msg: Message) -> bytes:
        if self._types.get(msg.op) is not type(msg):
            raise TypeError(f"{type(msg).__name__} is not part of this channel")
        body = plain(msg)
        body["op"] = msg.op
        data: bytes = msgpack.packb(body, use_bin_type=True)
        if len(data) > MAX_MSG:
            raise WireError(f"{msg.op}: message of {len(data)} bytes exceeds {MAX_MSG}")
        return data

    def decode_untrusted(self, data: bytes) -> Message:
        if len(data) > MAX_MSG:
            _fail("message", f"{len(data)} bytes exceeds {MAX_MSG}")
        try:
            raw = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                use_list=True,
                ext_hook=_reject_ext,
                max_str_len=MAX_MSG,
                max_bin_len=MAX_MSG,
                max_array_len=_MAX_ITEMS,
                max_map_len=_MAX_ITEMS,
                max_ext_len=0,
            )
        except WireError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            _fail("message", f"undecodable: {type(exc).__name__}")
        if type(raw) is not dict:
            _fail("message", "not a map")
        op = raw.pop("op", None)
        if type(op) is not str:
            _fail("message", "no op")
        cls = self._types.get(op)
        if cls is None:
            _fail("message", f"unknown op {op[:40]!r}")
        return typing.cast(Message, _build(cls, _schema(cls), raw, op))


_FD_SIZE = array.array("i").itemsize
_UCRED = struct.Struct("3i")
# Room to notice (and close) surplus fds, plus the sender's credentials when SO_PASSCRED is on.
_CMSG_SPACE = socket.CMSG_SPACE(4 * _FD_SIZE) + socket.CMSG_SPACE(_UCRED.size)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        os.close(fd)


class Channel:
    """One end of a SOCK_SEQPACKET socketpair.

    ``codec`` decodes what arrives; ``send_codec`` (default: the same) encodes
    what we send, so each direction accepts only its own message types.

    ``fd_ops`` names the only incoming messages that carry a file descriptor:
    each of them must carry exactly one, and any other message carrying one is
    rejected after the descriptor is closed. ``send_fd_ops`` (default: the
    same) is that rule for what we send.
    """

    def __init__(
        self,
        sock: socket.socket,
        codec: Codec,
        fd_ops: Iterable[str] = (),
        *,
        send_codec: Codec | None = None,
        send_fd_ops: Iterable[str] | None = None,
    ) -> None:
        if sock.type != socket.SOCK_SEQPACKET:
            raise ValueError("a Channel needs a SOCK_SEQPACKET socket")
        self.sock = sock
        self.codec = codec
        self.send_codec = codec if send_codec is None else send_codec
        self.fd_ops = frozenset(fd_ops)
        self.send_fd_ops = self.fd_ops if send_fd_ops is None else frozenset(send_fd_ops)
        self.last_sender: tuple[int, int, int] | None = None
        """(pid, uid, gid) of the last message's sender, when SO_PASSCRED is set on ``sock``."""

    def pass_credentials(self) -> None:
        """Have the kernel attach the sender's real pid/uid/gid to every message we receive.

        SO_PEERCRED of a socketpair names whoever created the pair, not the
        process that holds the other end now; SCM_CREDENTIALS names the sender.
        """
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: Message, fd: int | None = None) -> None:
        if (fd is not None) != (msg.op in self.send_fd_ops):
            raise WireError(f"{msg.op}: fd presence does not match the schema")
        data = self.send_codec.encode(msg)
        if fd is None:
            self.sock.sendmsg([data])
        else:
            fds = array.array("i", [fd])
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])

    def recv(self) -> tuple[Message, int | None]:
        """Receive one message; the fd (if the schema says one comes) is close-on-exec."""
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                MAX_MSG + 1, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC
            )
        except ConnectionResetError:  # the peer exited with messages unread
            raise PeerClosed("peer closed the channel") from None
        fds, self.last_sender = _parse_ancillary(ancdata)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MSG:
            _close_all(fds)
            _fail("message", "truncated or oversized")
        if not data:
            _close_all(fds)
            raise PeerClosed("peer closed the channel")
        try:
            msg = self.codec.decode_untrusted(data)
        except WireError:
            _close_all(fds)
            raise
        if msg.op in self.fd_ops:
            if len(fds) != 1:
                _close_all(fds)
                _fail(msg.op, f"expected exactly one fd, got {len(fds)}")
            return msg, fds[0]
        if fds:
            _close_all(fds)
            _fail(msg.op, "carries an fd the schema does not allow")
        return msg, None


def _parse_ancillary(
    ancdata: list[tuple[int, int, bytes]],
) -> tuple[list[int], tuple[int, int, int] | None]:
    fds: list[int] = []
    sender: tuple[int, int, int] | None = None
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _FD_SIZE
            fds.extend(array.array("i", payload[:usable]))
        elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
            pid, uid, gid = _UCRED.unpack_from(payload)
            # pid 0: the kernel recorded no credentials (neither end had
            # SO_PASSCRED when the message was sent) and reports the overflow
            # uid/gid, 65534 — which is also "nobody". That is not a sender.
            sender = (pid, uid, gid) if pid > 0 else None
    return fds, sender


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from SO_PEERCRED."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A close-on-exec SEQPACKET pair; the child's end is passed with pass_fds."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
