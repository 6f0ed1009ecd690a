"""The UDP socket for DTLS: nonblocking, connected to the server's DTLS port.

Batch-friendly on purpose (issue #6 adds GSO/GRO): :meth:`UdpLink.send_batch` takes
a list of datagrams and :meth:`UdpLink.recv_batch` returns a list, so the event loop
already drains bursts and a later version can hand them to the kernel in one call.

Don't-fragment is set (IP_PMTUDISC_DO): the tun MTU is computed so that every packet
fits; a datagram the kernel still refuses (EMSGSIZE) is reported to the caller,
which sends that packet over CSTP instead. An ICMP error for this flow (e.g. port
unreachable) comes back as ECONNREFUSED/EHOSTUNREACH/… from send or recv and is
reported as :class:`UdpError` so that the DTLS channel can fail over at once.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import Final

__all__ = ["UdpError", "UdpLink"]

_IP_MTU_DISCOVER: Final = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO: Final = getattr(socket, "IP_PMTUDISC_DO", 2)
_IPV6_MTU_DISCOVER: Final = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IPV6_PMTUDISC_DO: Final = 2
_MAX_DATAGRAM: Final = 65535
_BUFFER: Final = 4 * 1024 * 1024
# errors that mean "this path is broken now" (ICMP errors on a connected socket)
_PATH_ERRORS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EACCES,
        errno.EPERM,
    }
)


class UdpError(Exception):
    """The socket reported a path error; *code* is the errno."""

    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.code = code


class UdpLink:
    def __init__(self, address: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):  # capped by net.core.*mem_max
                    sock.setsockopt(socket.SOL_SOCKET, opt, _BUFFER)
            sock.connect((address, port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.address = address
        self.port = port
        self._error: int | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_batch(self, datagrams: list[bytes]) -> int:
        """Send as many as the socket takes; returns how many went out.

        Raises UdpError on a path error. A datagram refused as too large (EMSGSIZE)
        is skipped and counted as sent (the data path never produces one).
        """
        sent = 0
        send = self.sock.send
        for datagram in datagrams:
            try:
                send(datagram)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    sent += 1
                    continue
                if exc.errno in _PATH_ERRORS:
                    raise UdpError(exc.errno) from None
                raise
            sent += 1
        return sent

    def recv_batch(self, limit: int = 64) -> list[bytes]:
        """Up to *limit* datagrams that are ready now. A path error is raised as
        UdpError once the datagrams read before it have been returned."""
        if self._error is not None:
            code, self._error = self._error, None
            raise UdpError(code)
        out: list[bytes] = []
        recv = self.sock.recv
        for _ in range(limit):
            try:
                out.append(recv(_MAX_DATAGRAM))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in _PATH_ERRORS:
                    raise
                if not out:
                    raise UdpError(exc.errno) from None
                self._error = exc.errno
                break
        return out

    def close(self) -> None:
        self.sock.close()
