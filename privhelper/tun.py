"""Create the tun device: open /dev/net/tun and TUNSETIFF, nothing more.

The device is *not* persistent: it lives exactly as long as some process
holds an fd of it. The helper keeps one fd for the whole session (so the
worker can be restarted without losing the device, its addresses and its
routes) and hands out duplicates; when the helper closes its fd at the end,
the device disappears.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import struct
from typing import Final

from sepconnect.process import tun_ioctls as tun  # the ioctls and their arguments

TUN_DEVICE: Final = "/dev/net/tun"
DEFAULT_TEMPLATE: Final = "sepc%d"  # the kernel picks sepc0, sepc1, …


@dataclasses.dataclass(frozen=True, slots=True)
class Tun:
    fd: int
    name: str


def open_tun(name: str = DEFAULT_TEMPLATE, *, vnet_hdr: bool = False) -> Tun:
    """Create a layer-3 tun without packet-info header, named ``name`` (may hold one ``%d``).

    With ``vnet_hdr`` every packet on the fd carries a 10-byte virtio-net header,
    which is what lets the worker use offloads (TSO, coalesced writes). Offloads
    themselves start off: the worker turns on (TUNSETOFFLOAD, on its own fd of
    this device) only those its code handles.

    Raises OSError. Refuses to attach to an existing *persistent* device: that
    one would outlive the session, and would not be ours.
    """
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = tun.IFF_TUN | tun.IFF_NO_PI | (tun.IFF_VNET_HDR if vnet_hdr else 0)
        created = fcntl.ioctl(fd, tun.TUNSETIFF, tun.IFREQ.pack(name.encode("ascii"), flags))
        raw_name, _ = tun.IFREQ.unpack(created)
        ifname = raw_name.rstrip(b"\0").decode("ascii")
        _, flags = tun.IFREQ.unpack(fcntl.ioctl(fd, tun.TUNGETIFF, bytes(tun.IFREQ.size)))
        if flags & tun.IFF_PERSIST:
            raise OSError(f"{ifname}: an existing persistent device, not ours")
        if vnet_hdr:
            fcntl.ioctl(fd, tun.TUNSETVNETHDRSZ, struct.pack("i", tun.VNET_HDR_LEN))
        fcntl.ioctl(fd, tun.TUNSETOFFLOAD, 0)
        return Tun(fd, ifname)
    except BaseException:
        os.close(fd)
        raise
