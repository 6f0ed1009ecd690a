"""The UDP socket for DTLS: nonblocking, connected to the server's DTLS port.

Batched (issue #6): :meth:`UdpLink.send_batch` takes the datagrams of one burst and
hands each run of equal-sized ones (the last of a run may be shorter) to the kernel
in one ``sendmsg`` with UDP GSO (a ``UDP_SEGMENT`` control message): one syscall and
one trip through the stack for up to 64 datagrams. A burst of one (the lone packet of
an interactive flow) is one plain ``send``. The kernel still sends separate
datagrams on the wire, so every DTLS record stays one datagram. :meth:`recv_batch`
enables ``UDP_GRO``: the kernel hands over a train of equal-sized datagrams from the
server as one buffer plus the segment size, which we split again. Both fall back to
one datagram per syscall where the kernel refuses them (setsockopt fails, or a GSO
send fails with EIO/EINVAL/ENOPROTOOPT: e.g. a device without checksum offload).
Measured on the lab (docs/performance.md): UDP send was 27% of the worker's samples
during an upload at one datagram per syscall.

Don't-fragment is set (IP_PMTUDISC_DO): the tun MTU is computed so that every packet
fits; a datagram the kernel still refuses (EMSGSIZE) is reported to the caller,
which sends that packet over CSTP instead. An ICMP error for this flow (e.g. port
unreachable) comes back as ECONNREFUSED/EHOSTUNREACH/… from send or recv and is
reported as :class:`UdpError` so that the DTLS channel can fail over at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from typing import Final

from sepconnect.worker.io.mmsg import GRO_CMSG_SPACE, SOL_UDP, UDP_GRO, BatchReceiver, split_gro

__all__ = ["UdpError", "UdpLink"]

_IP_MTU_DISCOVER: Final = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO: Final = getattr(socket, "IP_PMTUDISC_DO", 2)
_IPV6_MTU_DISCOVER: Final = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IPV6_PMTUDISC_DO: Final = 2
_MAX_DATAGRAM: Final = 65535
_UDP_SEGMENT: Final = 103  # <linux/udp.h>: cmsg/sockopt, the GSO segment size
_GSO_MAX_SEGMENTS: Final = 64  # UDP_MAX_SEGMENTS on older kernels (128 on newer)
_GSO_MAX_BYTES: Final = 65000  # the super-datagram must fit an IP packet
_GSO_REFUSED: Final = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_BUFFER: Final = 4 * 1024 * 1024
# Errors that mean "this path is broken now": ICMP errors on a connected socket, a
# firewall's refusal, and a socket aborted from outside (`ss -K`: ECONNABORTED, then
# EDESTADDRREQ once the kernel has disconnected it). The channel then falls back to
# TLS and its next attempt opens a new socket.
_PATH_ERRORS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EACCES,
        errno.EPERM,
        errno.ECONNABORTED,
        errno.EDESTADDRREQ,
    }
)


class UdpError(Exception):
    """The socket reported a path error; *code* is the errno."""

    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.code = code


def _send_failed(exc: OSError) -> None:
    """A send() failed: a path error is raised as UdpError; a datagram refused as too
    large (EMSGSIZE) is skipped and counted as sent (the data path never produces one);
    anything else is raised as it is."""
    if exc.errno in _PATH_ERRORS:
        raise UdpError(exc.errno) from None
    if exc.errno != errno.EMSGSIZE:
        raise exc


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
        self.gso = True  # until the kernel refuses a GSO send
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = True
        except OSError:
            self.gro = False
        self.drained = False  # the last recv_batch stopped at EAGAIN
        self._rbuf = bytearray(_MAX_DATAGRAM)
        self._rview = memoryview(self._rbuf)
        try:
            self._batch: BatchReceiver | None = BatchReceiver(sock.fileno())
        except (OSError, AttributeError):  # no recvmmsg in this libc: recvmsg it is
            self._batch = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_batch(self, datagrams: list[bytes]) -> int:
        """Send as many as the socket takes; returns how many went out.

        Raises UdpError on a path error. A datagram refused as too large (EMSGSIZE)
        is skipped and counted as sent (the data path never produces one).
        """
        n = len(datagrams)
        if n == 1:  # a burst of one (an interactive flow's lone packet): one send()
            try:
                self.sock.send(datagrams[0])
            except BlockingIOError:
                return 0
            except OSError as exc:
                _send_failed(exc)
            return 1
        if not self.gso:
            return self._send_each(datagrams, 0, n)
        sent = 0
        sendmsg = self.sock.sendmsg
        while sent < n:
            size = len(datagrams[sent])
            end = sent + 1
            limit = min(n, sent + _GSO_MAX_SEGMENTS, sent + _GSO_MAX_BYTES // max(1, size))
            while end < limit and len(datagrams[end]) == size:
                end += 1
            if end < limit and len(datagrams[end]) < size:
                end += 1  # the last segment may be shorter
            if end - sent == 1:
                if self._send_each(datagrams, sent, end) == sent:
                    return sent
                sent = end
                continue
            try:
                sendmsg(
                    [b"".join(datagrams[sent:end])],
                    [(SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))],
                )
            except BlockingIOError:
                return sent
            except OSError as exc:
                if exc.errno in _GSO_REFUSED:
                    self.gso = False  # this path cannot segment: one by one from now on
                    return self._send_each(datagrams, sent, n)
                if exc.errno == errno.EMSGSIZE:
                    sent = self._send_each(datagrams, sent, end)
                    if sent < end:
                        return sent
                    continue
                _send_failed(exc)
            sent = end
        return sent

    def _send_each(self, datagrams: list[bytes], start: int, end: int) -> int:
        """One datagram per syscall from index *start* to *end*; returns the index
        reached (no copy of the list: this is also the lone packet's path)."""
        sent = start
        send = self.sock.send
        while sent < end:
            try:
                send(datagrams[sent])
            except BlockingIOError:
                break
            except OSError as exc:
                _send_failed(exc)
            sent += 1
        return sent

    def recv_batch(self, limit: int = 64) -> list[bytes]:
        """Datagrams that are ready now (from up to *limit* reads; with GRO one read
        may carry many). A path error is raised as UdpError once the datagrams read
        before it have been returned."""
        if self._error is not None:
            code, self._error = self._error, None
            raise UdpError(code)
        self.drained = False
        out: list[bytes] = []
        batch = self._batch
        if batch is not None and limit > 1:
            while len(out) < limit:
                got, code = batch.receive(limit - len(out))
                out += got
                if code == errno.EAGAIN:
                    self.drained = True  # the caller need not try again before the next wakeup
                    break
                if code:
                    if code not in _PATH_ERRORS:
                        raise OSError(code, os.strerror(code))
                    if not out:
                        raise UdpError(code)
                    self._error = code
                    break
            return out
        if not self.gro:
            recv = self.sock.recv
            for _ in range(limit):
                try:
                    out.append(recv(_MAX_DATAGRAM))
                except BlockingIOError:
                    self.drained = True
                    break
                except OSError as exc:
                    if not self._keep_error(exc, out):
                        raise
                    break
            return out
        recvmsg_into = self.sock.recvmsg_into
        buf, view = self._rbuf, self._rview
        for _ in range(limit):
            try:
                nbytes, ancdata, _flags, _addr = recvmsg_into([buf], GRO_CMSG_SPACE)
            except BlockingIOError:
                self.drained = True  # the caller need not try again before the next wakeup
                break
            except OSError as exc:
                if not self._keep_error(exc, out):
                    raise
                break
            segment = nbytes
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
                    segment = struct.unpack("=i", data[:4])[0] or nbytes
            split_gro(out, view, 0, nbytes, segment)
        return out

    def _keep_error(self, exc: OSError, out: list[bytes]) -> bool:
        """A path error during a read: raise it now if nothing was read, else keep it
        for the next call. False: not a path error (the caller re-raises)."""
        if exc.errno not in _PATH_ERRORS:
            return False
        if not out:
            raise UdpError(exc.errno) from None
        self._error = exc.errno
        return True

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
        self.sock.close()
