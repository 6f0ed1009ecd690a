"""What a message schema is made of: the base class, the limit markers, the plain form.

Every message is a frozen dataclass deriving :class:`Message`; its declared field types,
with the :class:`Range`, :class:`Length` and :class:`Match` markers of ``Annotated``
next to them, are the whole schema. ipc/wire.py validates every channel against them;
the helper's own codec (privhelper/channel.py) reads the same declarations, so the
helper need not load wire.py. Stdlib only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of an int or float field."""

    lo: float
    hi: float


@dataclasses.dataclass(frozen=True, slots=True)
class Length:
    """Inclusive bounds of the length of a str, bytes or tuple field."""

    lo: int
    hi: int


@dataclasses.dataclass(frozen=True, slots=True)
class Match:
    """The whole str must match this regular expression."""

    pattern: str


class Message:
    """Base of every IPC message; subclasses are frozen, slotted, kw-only dataclasses."""

    __slots__ = ()
    op: ClassVar[str]


ADDRESS_PARSERS: dict[Any, Callable[[str], Any]] = {
    ipaddress.IPv4Address: ipaddress.IPv4Address,
    ipaddress.IPv6Address: ipaddress.IPv6Address,
    ipaddress.IPv4Interface: ipaddress.IPv4Interface,
    ipaddress.IPv6Interface: ipaddress.IPv6Interface,
    ipaddress.IPv4Network: ipaddress.IPv4Network,  # strict: host bits set is an error
    ipaddress.IPv6Network: ipaddress.IPv6Network,
    frozenset({ipaddress.IPv4Address, ipaddress.IPv6Address}): ipaddress.ip_address,
    frozenset({ipaddress.IPv4Network, ipaddress.IPv6Network}): ipaddress.ip_network,
}
"""Address types a field may declare (one, or a union of the two versions): carried as
text, handed over parsed."""
ADDRESS_TYPES: tuple[type, ...] = tuple(t for t in ADDRESS_PARSERS if isinstance(t, type))


def plain(value: Any) -> Any:
    """A message's fields as plain data in declaration order (addresses as text, tuples as
    lists, nested messages as maps): what goes on the wire, and into JSON."""
    if isinstance(value, Message):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, ADDRESS_TYPES):
        return str(value)
    return value
