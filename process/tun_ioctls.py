"""The tun device's ioctl numbers and flags (<linux/if_tun.h>), for the helper that creates
it, the worker that uses it, and both seccomp allow-lists that name them."""

from __future__ import annotations

import struct
from typing import Final


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """<asm-generic/ioctl.h> _IOC (x86, arm, arm64, riscv, s390)."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


_IOW, _IOR = 1, 2
TUNSETIFF: Final = _ioc(_IOW, "T", 202, 4)
TUNGETFEATURES: Final = _ioc(_IOR, "T", 207, 4)
TUNSETOFFLOAD: Final = _ioc(_IOW, "T", 208, 4)
TUNGETIFF: Final = _ioc(_IOR, "T", 210, 4)
TUNGETVNETHDRSZ: Final = _ioc(_IOR, "T", 215, 4)
TUNSETVNETHDRSZ: Final = _ioc(_IOW, "T", 216, 4)

IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_PERSIST: Final = 0x0800
IFF_VNET_HDR: Final = 0x4000

VNET_HDR_LEN: Final = 10
"""struct virtio_net_hdr: what precedes each packet on a tun made with IFF_VNET_HDR."""

IFREQ: Final = struct.Struct("16sH22x")
"""struct ifreq as TUNSETIFF/TUNGETIFF use it: ifr_name[IFNAMSIZ], ifr_flags, padding to 40."""
