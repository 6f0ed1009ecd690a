"""The helper's rtnetlink client: pyroute2's message classes over one blocking socket.

The helper needs a handful of requests (look up a link, set its MTU and state, add and
delete addresses and routes, look up and dump routes). pyroute2 encodes and decodes them
here, as before; only its socket layer is left out. ``import pyroute2`` runs the
package's ``__init__``, which imports every subsystem (NDB with asyncio and sqlite3,
IPDB, conntrack, nftables, ethtool, ...), and even ``pyroute2.iproute.linux`` alone
brings asyncio, ssl, unittest.mock, multiprocessing and ctypes: ~24 MB of the helper's
RSS and ~110 ms of its start-up. The message classes (``rtmsg``, ``ifaddrmsg``) import
none of that. So the ``pyroute2`` package is registered without running its
``__init__`` (:func:`_pyroute2_messages`), and the two submodules are imported from it.

The requests are the ones pyroute2's ``IPRoute`` sends for the same calls (same
header flags and attributes; compared byte for byte under strace when this module was
written), and errors are pyroute2's own :class:`NetlinkError` with the kernel's errno.

Only the kernel (netlink port 0) is listened to: a message from any other sender, a
reply to another request (sequence number), a truncated datagram or a malformed message
raises :class:`NetlinkError` (EPROTO) instead of being interpreted.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import socket
import struct
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Final


def _pyroute2_messages() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """pyroute2's netlink base, exceptions and rtnl message modules, without its __init__.

    Where something has already imported the whole package (a test process), that one
    is used as it is.
    """
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("pyroute2 is not installed")
        # The package object with its search path, its __init__ not executed: the
        # submodules below import only pyroute2.common and pyroute2.netlink.
        sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    return (
        importlib.import_module("pyroute2.netlink"),
        importlib.import_module("pyroute2.netlink.exceptions"),
        importlib.import_module("pyroute2.netlink.rtnl.rtmsg"),
        importlib.import_module("pyroute2.netlink.rtnl.ifaddrmsg"),
    )


_netlink, _exceptions, _rtmsg, _ifaddrmsg = _pyroute2_messages()

NetlinkError: Any = _exceptions.NetlinkError
"""pyroute2's error: ``.code`` is the kernel's errno."""

rtmsg: Any = _rtmsg.rtmsg
ifaddrmsg: Any = _ifaddrmsg.ifaddrmsg


class ifinfmsg(_netlink.nlmsg):  # type: ignore[misc,name-defined]  # noqa: N801
    """struct ifinfomsg with the two attributes the helper sends.

    pyroute2's own ``ifinfmsg`` imports its link-kind plugins and ``pyroute2.config``
    (multiprocessing, pickle, platform): ~1 MB for IFLA_IFNAME and IFLA_MTU. Replies are
    read for the header's index only.
    """

    __slots__ = ()
    prefix = "IFLA_"
    fields = (
        ("family", "B"),
        ("__align", "x"),
        ("ifi_type", "H"),
        ("index", "i"),
        ("flags", "I"),
        ("change", "I"),
    )
    nla_map = (
        (3, "IFLA_IFNAME", "asciiz"),
        (4, "IFLA_MTU", "uint32"),
    )


# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if.h>
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
RTM_NEWLINK: Final = 16
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
IFF_UP: Final = 0x1
RT_TABLE_MAIN: Final = 254

_HEADER: Final = struct.Struct("=IHHII")  # struct nlmsghdr
_ERRNO: Final = struct.Struct("=i")  # struct nlmsgerr's first field
_RECV_BUFFER: Final = 1 << 17
"""Bigger than any one datagram of a dump (the kernel sizes them to the reader's
earlier buffers, at most a few pages); a truncated one is an error all the same."""

_ADD: Final = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_DEL: Final = NLM_F_REQUEST | NLM_F_ACK
_ROUTE_KEYS: Final = frozenset(
    {"family", "dst", "dst_len", "oif", "gateway", "table", "proto", "priority", "type", "scope"}
)


class IPRoute:
    """The subset of pyroute2's synchronous ``IPRoute`` that netconf.Netlink uses.

    Opened before the helper's seccomp filter (``socket``/``bind``); afterwards only
    ``sendto``/``recvfrom`` on it.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> IPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests

    def link_lookup(self, *, ifname: str) -> list[int]:
        """[ifindex] of the interface named ``ifname``, or [] if there is none."""
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", ifname)]
        try:
            replies = self._request(msg, RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, ifinfmsg)
        except NetlinkError:
            return []
        return [int(reply["index"]) for reply in replies]

    def link(
        self, command: str, *, index: int, mtu: int | None = None, state: str | None = None
    ) -> None:
        """``link("set", index=, mtu=)`` or ``link("set", index=, state="up"|"down")``."""
        if command != "set" or (mtu is None) == (state is None):
            raise ValueError(f"unsupported link request {command!r}")
        msg = ifinfmsg()
        msg["index"] = index
        if mtu is not None:
            msg["attrs"] = [("IFLA_MTU", mtu)]
        else:
            if state not in ("up", "down"):
                raise ValueError(f"unsupported link state {state!r}")
            msg["flags"] = IFF_UP if state == "up" else 0
            msg["change"] = IFF_UP
        self._request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, ifinfmsg)

    def addr(
        self, command: str, *, index: int, family: int, address: str, prefixlen: int, flags: int
    ) -> None:
        """``addr("add"|"del", ...)``: IFA_FLAGS carries ``flags`` (IFA_F_NODAD)."""
        kind = {"add": (RTM_NEWADDR, _ADD), "del": (RTM_DELADDR, _DEL)}.get(command)
        if kind is None:
            raise ValueError(f"unsupported address request {command!r}")
        msg = ifaddrmsg()
        msg["family"] = family
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        attrs: list[tuple[str, str | int]] = [("IFA_ADDRESS", address), ("IFA_FLAGS", flags)]
        if family == socket.AF_INET:
            # As iproute2 and pyroute2: IFA_LOCAL is the address of this end (for IPv4
            # IFA_ADDRESS would be the peer's on a point-to-point link).
            attrs.append(("IFA_LOCAL", address))
        msg["attrs"] = attrs
        self._request(msg, kind[0], kind[1], ifaddrmsg)

    def route(self, command: str, **spec: int | str) -> list[Any]:
        """``route("add"|"del"|"get"|"dump", **spec)``; get and dump return rtmsg replies.

        ``spec`` takes pyroute2's keywords: family, dst, dst_len, oif, gateway, table,
        proto, priority, type, scope (netconf.route_spec). get: the kernel's route to
        ``dst`` (one reply). dump: the routes of ``family`` in ``table``.
        """
        unknown = set(spec) - _ROUTE_KEYS
        if unknown:
            raise ValueError(f"unsupported route attributes {sorted(unknown)}")
        table = int(spec.get("table", RT_TABLE_MAIN))
        msg = rtmsg()
        msg["table"] = table
        if command == "dump":
            msg["family"] = int(spec["family"])
            replies = self._request(msg, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, rtmsg)
            # The kernel filters dumps by table only with strict checking: filter here.
            return [r for r in replies if _table_of(r) == table]
        dst = str(spec["dst"])
        family = int(spec.get("family", socket.AF_INET6 if ":" in dst else socket.AF_INET))
        msg["family"] = family
        attrs: list[tuple[str, str | int]] = [("RTA_DST", dst)]
        if command == "get":
            msg["dst_len"] = 32 if family == socket.AF_INET else 128
            msg["attrs"] = attrs
            return self._request(msg, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_ACK, rtmsg)
        kind = {"add": (RTM_NEWROUTE, _ADD), "del": (RTM_DELROUTE, _DEL)}.get(command)
        if kind is None:
            raise ValueError(f"unsupported route request {command!r}")
        for field in ("dst_len", "proto", "scope", "type"):
            msg[field] = int(spec.get(field, 0))
        if "oif" in spec:
            attrs.append(("RTA_OIF", int(spec["oif"])))
        if "gateway" in spec:
            attrs.append(("RTA_GATEWAY", str(spec["gateway"])))
        attrs.append(("RTA_TABLE", table))
        if "priority" in spec:
            attrs.append(("RTA_PRIORITY", int(spec["priority"])))
        msg["attrs"] = attrs
        self._request(msg, kind[0], kind[1], rtmsg)
        return []

    # -- the socket

    def _request(self, msg: Any, msg_type: int, flags: int, reply_class: Any) -> list[Any]:
        """Send one request; the decoded replies until its ACK or the dump's end."""
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        self.sock.sendto(msg.data, (0, 0))
        replies: list[Any] = []
        while True:
            for reply_type, body in self._receive(seq):
                if reply_type == NLMSG_ERROR:
                    if len(body) < _ERRNO.size:
                        raise _protocol_error("short error message")
                    (code,) = _ERRNO.unpack_from(body)
                    if code:
                        raise NetlinkError(-code)
                    return replies  # the ACK
                if reply_type == NLMSG_DONE:
                    return replies
                replies.append(_decode(reply_class, body))
            if not flags & (NLM_F_ACK | NLM_F_DUMP):
                return replies

    def _receive(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """(type, whole message) of each message in the next datagram from the kernel."""
        data, (port, _groups) = self.sock.recvfrom(_RECV_BUFFER, socket.MSG_TRUNC)
        if port != 0:
            raise _protocol_error(f"message from netlink port {port}, not the kernel")
        if len(data) > _RECV_BUFFER:
            raise _protocol_error("truncated datagram")
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, reply_type, _flags, reply_seq, _pid = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size or offset + length > len(data):
                raise _protocol_error("bad message length")
            if reply_seq != seq:
                raise _protocol_error(f"reply to request {reply_seq}, expected {seq}")
            end = offset + length
            if reply_type == NLMSG_ERROR:
                yield reply_type, data[offset + _HEADER.size : end]
            else:
                yield reply_type, data[offset:end]
            offset = (end + 3) & ~3


def _decode(cls: Any, data: bytes) -> Any:
    reply = cls(data)
    try:
        reply.decode()
    except Exception as exc:  # pyroute2's decoders raise many types on bad input
        raise _protocol_error(f"undecodable reply: {exc!r}") from None
    return reply


def _table_of(reply: Any) -> int:
    table = reply.get("RTA_TABLE")
    return int(reply["table"] if table is None else table)


def _protocol_error(reason: str) -> Exception:
    error: Exception = NetlinkError(errno.EPROTO, f"netlink: {reason}")
    return error
