"""The tun device's ioctls and their arguments (<linux/if_tun.h>), for the helper and the worker.

The helper creates the device with them (privhelper/tun.py) and lets its seccomp
filter pass them (privhelper/seccomp.py); the worker reads and sets its own fd's
offloads with them (worker/io/tun.py) and lets its filter pass those
(worker/sandbox.py, which defines the two queries only its filter passes). Constants only.
"""

from __future__ import annotations

import struct
from typing import Final

# <asm-generic/ioctl.h>: _IOW('T', nr, int) is 0x4004_54_nr and _IOR 0x8004_54_nr on x86,
# arm, arm64, riscv and s390 (direction << 30 | sizeof(int) << 16 | 'T' << 8 | nr).
TUNSETIFF: Final = 0x400454CA  # _IOW 202: create or attach a device
TUNSETOFFLOAD: Final = 0x400454D0  # _IOW 208: this device's offloads
TUNGETIFF: Final = 0x800454D2  # _IOR 210: the fd's device name and flags
TUNSETVNETHDRSZ: Final = 0x400454D8  # _IOW 216: this fd's vnet header size

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
