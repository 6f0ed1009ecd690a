"""The tun device's ioctls and their arguments (<linux/if_tun.h>), for the helper and the worker.

The helper creates the device with them (privhelper/tun.py) and lets its seccomp
filter pass them (privhelper/seccomp.py); the worker reads and sets its own fd's
offloads with them (worker/io/tun.py) and lets its filter pass those
(worker/sandbox.py). Constants only.
"""

from __future__ import annotations

import struct
from typing import Final

_IOC_WRITE: Final = 1
_IOC_READ: Final = 2


def _ioc(direction: int, nr: int, size: int = 4) -> int:
    """<asm-generic/ioctl.h> _IOC for type 'T' (x86, arm, arm64, riscv, s390)."""
    return (direction << 30) | (size << 16) | (ord("T") << 8) | nr


TUNSETIFF: Final = _ioc(_IOC_WRITE, 202)  # 0x400454CA: create or attach a device
TUNGETFEATURES: Final = _ioc(_IOC_READ, 207)  # 0x800454CF
TUNSETOFFLOAD: Final = _ioc(_IOC_WRITE, 208)  # 0x400454D0: this device's offloads
TUNGETIFF: Final = _ioc(_IOC_READ, 210)  # 0x800454D2: the fd's device name and flags
TUNGETVNETHDRSZ: Final = _ioc(_IOC_READ, 215)  # 0x800454D7
TUNSETVNETHDRSZ: Final = _ioc(_IOC_WRITE, 216)  # 0x400454D8: this fd's vnet header size

# ifr_flags
IFF_TUN: Final = 0x0001
IFF_PERSIST: Final = 0x0800
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000

IFREQ: Final = struct.Struct("16sH22x")
"""struct ifreq as TUNSETIFF/TUNGETIFF use it: ifr_name[IFNAMSIZ], ifr_flags, padding to 40."""

VNET_HDR_LEN: Final = 10
"""sizeof(struct virtio_net_hdr) (<linux/virtio_net.h>): the header the helper sets
(TUNSETVNETHDRSZ) and the worker speaks (worker/proto/offload.py)."""
