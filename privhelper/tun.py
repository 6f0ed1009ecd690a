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

TUN_DEVICE: Final = "/dev/net/tun"
DEFAULT_TEMPLATE: Final = "sepc%d"  # the kernel picks sepc0, sepc1, …

# <linux/if_tun.h>
TUNSETIFF: Final = 0x400454CA
TUNGETIFF: Final = 0x800454D2
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_PERSIST: Final = 0x0800

_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name[IFNAMSIZ], ifr_flags, padding to 40


@dataclasses.dataclass(frozen=True, slots=True)
class Tun:
    fd: int
    name: str


def open_tun(name: str = DEFAULT_TEMPLATE) -> Tun:
    """Create a layer-3 tun without packet-info header, named ``name`` (may hold one ``%d``).

    Raises OSError. Refuses to attach to an existing *persistent* device: that
    one would outlive the session, and would not be ours.
    """
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        request = _IFREQ.pack(name.encode("ascii"), IFF_TUN | IFF_NO_PI)
        created = fcntl.ioctl(fd, TUNSETIFF, request)
        raw_name, _ = _IFREQ.unpack(created)
        ifname = raw_name.rstrip(b"\0").decode("ascii")
        _, flags = _IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size)))
        if flags & IFF_PERSIST:
            raise OSError(f"{ifname}: an existing persistent device, not ours")
        return Tun(fd, ifname)
    except BaseException:
        os.close(fd)
        raise
