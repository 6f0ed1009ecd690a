"""recvmmsg(2) for the DTLS socket: many datagrams per system call.

Python's socket module has recvmsg but not recvmmsg. UDP GRO (worker/io/udp.py)
batches only where the receiving device aggregates (a NIC with GRO, NAPI); where it
does not — a veth, as in the lab, or many virtual NICs — every datagram cost one
recvmsg call. Here one call fills up to :data:`SLOTS` messages, each with room for a
GRO train (64 KiB) and its UDP_GRO control message, so both batchings add up.

Memory: the slots live in one anonymous mapping; pages are touched only as
datagrams land in them, so RSS grows by what the traffic uses (a page per slot for
ordinary datagrams), not by the 1 MiB reserved.

The call is made here (ctypes); what it brought is read out by :func:`split_messages`,
or with the compiled accelerator by its ``split_mmsg`` (the same datagrams).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct
from typing import Final

from sepconnect.process.libc import LIBC
from sepconnect.worker import accel

__all__ = [
    "GRO_CMSG_SPACE",
    "SLOTS",
    "SOL_UDP",
    "UDP_GRO",
    "BatchReceiver",
    "split_gro",
    "split_messages",
]

SLOTS: Final = 16
_SLOT: Final = 65536  # a whole GRO train (the kernel never builds a bigger one)
GRO_CMSG_SPACE: Final = socket.CMSG_SPACE(4)  # one UDP_GRO control message (segment size)
SOL_UDP: Final = 17
UDP_GRO: Final = 104  # <linux/udp.h>: sockopt on; cmsg carries the segment size


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))


_recvmmsg = LIBC.recvmmsg
_recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
_recvmmsg.restype = ctypes.c_int

# Where the kernel's answers are, inside one struct mmsghdr.
_STRIDE: Final = ctypes.sizeof(_Mmsghdr)
_LEN_AT: Final = _Mmsghdr.len.offset
_CONTROLLEN_AT: Final = _Mmsghdr.hdr.offset + _Msghdr.controllen.offset
_FLAGS_AT: Final = _Mmsghdr.hdr.offset + _Msghdr.flags.offset
_SIZE_T: Final = struct.Struct("@N")
_UINT: Final = struct.Struct("=I")
_INT: Final = struct.Struct("=i")
_CMSG: Final = struct.Struct("@Nii")  # struct cmsghdr: len, level, type
_CMSG_DATA: Final = socket.CMSG_LEN(0)


class BatchReceiver:
    """Receives on one connected UDP socket; :meth:`receive` returns datagrams."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._data = mmap.mmap(-1, SLOTS * _SLOT)
        self._control = mmap.mmap(-1, mmap.PAGESIZE)
        data_at = ctypes.addressof(ctypes.c_char.from_buffer(self._data))
        control_at = ctypes.addressof(ctypes.c_char.from_buffer(self._control))
        self._iovecs = (_Iovec * SLOTS)()
        self._msgs = (_Mmsghdr * SLOTS)()
        for i in range(SLOTS):
            self._iovecs[i].base = data_at + i * _SLOT
            self._iovecs[i].len = _SLOT
            hdr = self._msgs[i].hdr
            hdr.iov = ctypes.pointer(self._iovecs[i])
            hdr.iovlen = 1
            hdr.control = control_at + i * GRO_CMSG_SPACE
            hdr.controllen = GRO_CMSG_SPACE
        self._msgs_at = ctypes.addressof(self._msgs)
        self._view = memoryview(self._msgs).cast("B")
        self._data_view = memoryview(self._data)
        self._control_view = memoryview(self._control)
        self.truncated = 0  # datagrams larger than a slot (dropped)

    def receive(self, limit: int = SLOTS) -> tuple[list[bytes], int]:
        """(datagrams, errno): what one call brought (GRO trains split again), and 0,
        EAGAIN when the socket was empty, or the errno of a failed call."""
        count = _recvmmsg(self.fd, self._msgs_at, min(limit, SLOTS), socket.MSG_DONTWAIT, None)
        if count < 0:
            return [], ctypes.get_errno() or errno.EIO
        if accel.split_mmsg is None:
            out, truncated = split_messages(self._view, self._data_view, self._control_view, count)
        else:
            out, truncated = accel.split_mmsg(
                self._view, self._data_view, self._control_view, count, _SLOT, GRO_CMSG_SPACE
            )
        self.truncated += truncated
        return out, 0 if count == min(limit, SLOTS) else errno.EAGAIN

    def close(self) -> None:
        self._view.release()
        self._data_view.release()
        self._control_view.release()
        # The ctypes pointers into the mappings must go before the mappings can close.
        del self._iovecs, self._msgs
        self._data.close()
        self._control.close()


def split_messages(
    view: memoryview, data: memoryview, control: memoryview, count: int
) -> tuple[list[bytes], int]:
    """(datagrams, truncated): what one recvmmsg call brought into the slots, GRO trains
    split again; each message's controllen is set back for the next call. The
    reference for the compiled accelerator's ``split_mmsg`` (worker/accel.py)."""
    out: list[bytes] = []
    truncated = 0
    for i in range(count):
        at = i * _STRIDE
        size = min(_UINT.unpack_from(view, at + _LEN_AT)[0], _SLOT)
        used = _SIZE_T.unpack_from(view, at + _CONTROLLEN_AT)[0]
        flags = _INT.unpack_from(view, at + _FLAGS_AT)[0]
        _SIZE_T.pack_into(view, at + _CONTROLLEN_AT, GRO_CMSG_SPACE)  # room for the next call
        if flags & socket.MSG_TRUNC:
            truncated += 1
            continue
        start = i * _SLOT
        segment = size
        if used >= _CMSG_DATA + 4:
            length, level, kind = _CMSG.unpack_from(control, i * GRO_CMSG_SPACE)
            if level == SOL_UDP and kind == UDP_GRO and length >= _CMSG_DATA + 4:
                segment = _INT.unpack_from(control, i * GRO_CMSG_SPACE + _CMSG_DATA)[0] or size
        split_gro(out, data, start, size, segment)
    return out, truncated


def split_gro(out: list[bytes], data: memoryview, start: int, size: int, segment: int) -> None:
    """Append the datagrams of ``size`` bytes at ``data[start:]`` to ``out``: one, or a
    GRO train of ``segment``-byte datagrams (the last may be shorter)."""
    if segment >= size:
        out.append(bytes(data[start : start + size]))
        return
    end = start + size
    out.extend(bytes(data[pos : min(pos + segment, end)]) for pos in range(start, end, segment))
