"""Which data-path implementation this worker runs: the compiled accelerator
(worker/_accel.c, built by ``pip install .`` when a C compiler and the Python headers
are there) or the pure-Python reference (DESIGN.md §4, docs/performance.md).

The worker imports this module before its sandbox closes (worker/main.py), so the
extension's shared object is mapped then; using it later makes no system call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from sepconnect.worker import _accel

__all__ = ["IMPLEMENTATION", "Gcm", "coalesce", "split_frame", "split_mmsg"]

# Each None on the Python path.
Gcm: type[_accel.Gcm] | None  # DTLS AES-GCM records (worker/proto/dtls_crypto.py)
split_frame: Callable[[bytes], list[bytes]] | None  # TSO frames (worker/proto/offload.py)
coalesce: Callable[[list[bytes]], list[bytes]] | None  # tun writes (worker/proto/offload.py)
_SplitMmsg = Callable[[memoryview, memoryview, memoryview, int, int, int], tuple[list[bytes], int]]
split_mmsg: _SplitMmsg | None  # recvmmsg's messages (worker/io/mmsg.py)

try:
    from sepconnect.worker import _accel as _compiled
except ImportError:  # built without a compiler (or SEPCONNECT_NO_ACCEL=1)
    Gcm = split_frame = coalesce = split_mmsg = None
else:
    Gcm = _compiled.Gcm
    split_frame = _compiled.split_frame
    coalesce = _compiled.coalesce
    split_mmsg = _compiled.split_mmsg

IMPLEMENTATION: Literal["compiled", "python"] = "python" if Gcm is None else "compiled"
