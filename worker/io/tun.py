"""The worker's side of the tun fd: plain packets, or coalesced writes when the
helper created the device with a virtio-net header (privhelper/tun.py, ``vnet_hdr``).

:meth:`TunIO.read_packets` returns ordinary IP packets, and :meth:`TunIO.write_packets`
takes ordinary IP packets; with the header, a burst of in-order TCP segments goes to
the kernel as one super-packet (worker/proto/offload.py).

Reads: with the compiled accelerator (worker/accel.py) the tun hands us TCP
super-packets of up to 64 KiB with partial checksums (TUNSETOFFLOAD CSUM | TSO4 |
TSO6), one read instead of ~45, and ``split_frame`` cuts them into segments with full
checksums in C. Without it, reads use no offload (TUNSETOFFLOAD 0; DESIGN.md: offloads
off unless used): in Python the split costs more than the reads it saves
(docs/performance.md), so the kernel segments and checksums everything before it
reaches us. Either way a frame that asks for a split or a checksum is completed, and
one that cannot be (malformed) is dropped and logged once, never sent on half-done.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from typing import Final

from sepconnect.process.tun_ioctls import IFF_VNET_HDR, IFREQ, TUNGETIFF, TUNSETOFFLOAD
from sepconnect.worker import accel
from sepconnect.worker.proto.offload import PLAIN_HEADER, VNET_HDR_LEN, Coalescer, split_frame

__all__ = ["TunGone", "TunIO"]

_READ_SIZE: Final = VNET_HDR_LEN + 65535
# TUNSETOFFLOAD's argument (<linux/if_tun.h>): what the kernel may hand us unfinished.
# Here, not in process/tun_ioctls.py: only the worker turns offloads on (the helper,
# whose code is budgeted, resets them to 0).
TUN_F_CSUM: Final = 0x01  # a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM)
TUN_F_TSO4: Final = 0x02  # TCP super-packets, IPv4
TUN_F_TSO6: Final = 0x04  # TCP super-packets, IPv6


class TunGone(Exception):
    """The tun device behind our fd no longer exists (deleted from outside the
    session: every call on the fd fails with EBADFD)."""


def _log(text: str) -> None:
    print(f"sepconnect worker: {text}", file=sys.stderr, flush=True)


class TunIO:
    """Nonblocking reads and writes of IP packets on the tun fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        try:
            _, flags = IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ.size)))
        except OSError as exc:
            _raise_if_gone(exc)
            raise
        self.vnet_hdr = bool(flags & IFF_VNET_HDR)
        self.coalesce = self.vnet_hdr
        self.bad_frames = 0  # frames that could not be made into packets: dropped
        self.split = split_frame if accel.split_frame is None else accel.split_frame
        self.tso = self.vnet_hdr and accel.split_frame is not None
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 if self.tso else 0)

    def read_packets(self, budget: int) -> list[bytes]:
        """Read until about ``budget`` packets are in hand or the tun is empty."""
        packets: list[bytes] = []
        read, fd = os.read, self.fd
        if not self.vnet_hdr:
            for _ in range(budget):
                try:
                    packet = read(fd, _READ_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    _raise_if_gone(exc)
                    raise
                if packet:
                    packets.append(packet)
            return packets
        split = self.split
        while len(packets) < budget:
            try:
                frame = read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                _raise_if_gone(exc)
                raise
            if len(frame) <= VNET_HDR_LEN:
                continue
            if frame[0] == 0 and frame[1] == 0:  # no checksum to do, no GSO: as it is
                packets.append(frame[VNET_HDR_LEN:])
                continue
            try:
                packets += split(frame)
            except ValueError as exc:  # OffloadError; the accelerator's own is a ValueError
                self.bad_frames += 1
                if self.bad_frames == 1:
                    _log(f"dropped a frame from the tun: {exc}")
        return packets

    def write_packets(self, packets: list[bytes]) -> None:
        """Write packets from the server; drops what the tun refuses, as a router would."""
        if not self.vnet_hdr:
            for packet in packets:
                self._write(packet)
            return
        if not self.coalesce or len(packets) == 1:
            for packet in packets:
                self._writev((PLAIN_HEADER, packet))
            return
        coalesce = accel.coalesce
        if coalesce is not None:  # compiled: whole frames, one write each
            for frame in coalesce(packets):
                if not self._writev((frame,)) and frame[1]:
                    self._refused()
            return
        coalescer = Coalescer()
        for packet in packets:
            coalescer.add(packet)
        for pieces in coalescer.frame_pieces():
            if not self._writev(pieces) and pieces[0][1]:
                self._refused()

    def _refused(self) -> None:
        # The kernel refused a super-packet: its segments are lost (TCP resends them),
        # and from now on packets go one by one.
        self.coalesce = False
        _log("the tun refused a coalesced write; writing packets one by one")

    def _writev(self, pieces: tuple[bytes, ...]) -> bool:
        """One frame from its pieces: the kernel gathers them (no copy to join)."""
        try:
            os.writev(self.fd, pieces)
        except BlockingIOError:
            return True  # the tun queue is full: drop, as a router would
        except OSError as exc:
            _raise_if_gone(exc)
            if exc.errno not in (errno.EINVAL, errno.EIO):
                raise
            return False  # a packet the kernel refused (malformed)
        return True

    def _write(self, data: bytes) -> bool:
        return self._writev((data,))


def _raise_if_gone(exc: OSError) -> None:
    if exc.errno == errno.EBADFD:
        raise TunGone(exc.strerror) from None
