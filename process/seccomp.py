"""The one seccomp filter builder: rules in, a libseccomp filter out (ctypes over libseccomp.so.2).

The rules and the compiler are process/seccompbpf.py's (re-exported here), the part
the helper's start stage loads; this module adds what the worker needs to load a filter
into itself (:class:`Filter`, :func:`available`) and what tests read (pseudo code).
A sandbox asks :func:`available` before it restricts file access, and builds its
filter afterwards: the library stays open.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Final

from sepconnect.process.seccompbpf import ALLOW as ALLOW
from sepconnect.process.seccompbpf import EQ as EQ
from sepconnect.process.seccompbpf import FD_FCNTLS as FD_FCNTLS
from sepconnect.process.seccompbpf import FD_IOCTLS as FD_IOCTLS
from sepconnect.process.seccompbpf import GE as GE
from sepconnect.process.seccompbpf import KILL_PROCESS as KILL_PROCESS
from sepconnect.process.seccompbpf import Arg as Arg
from sepconnect.process.seccompbpf import Rule as Rule
from sepconnect.process.seccompbpf import SeccompUnavailable as SeccompUnavailable
from sepconnect.process.seccompbpf import allow as allow
from sepconnect.process.seccompbpf import check, context, library
from sepconnect.process.seccompbpf import compile_bpf as compile_bpf
from sepconnect.process.seccompbpf import errno_action as errno_action
from sepconnect.process.seccompbpf import only as only

MASKED_EQ: Final = 7  # <seccomp.h> enum scmp_compare


def available() -> bool:
    """True if libseccomp.so.2 loads (it then stays loaded for :class:`Filter`)."""
    try:
        library()
    except SeccompUnavailable:
        return False
    return True


class Filter:
    """A libseccomp filter holding ``rules`` in their order; anything else gets ``default``."""

    def __init__(self, default: int, rules: Iterable[Rule]) -> None:
        self._lib = library()
        self._ctx = context(default, rules)

    def export_pfc(self, fd: int) -> None:
        """Write the filter as libseccomp's pseudo code (for review and tests)."""
        check(self._lib.seccomp_export_pfc(self._ctx, fd), "seccomp_export_pfc")

    def export_bpf(self, fd: int) -> None:
        """Write the filter as the BPF program the kernel would get."""
        check(self._lib.seccomp_export_bpf(self._ctx, fd), "seccomp_export_bpf")

    def load(self) -> None:
        """Load the filter into this process, for good (needs no_new_privs or CAP_SYS_ADMIN)."""
        check(self._lib.seccomp_load(self._ctx), "seccomp_load")

    def release(self) -> None:
        if self._ctx.value:
            self._lib.seccomp_release(self._ctx)
            self._ctx = ctypes.c_void_p()

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def load(default: int, rules: Iterable[Rule]) -> None:
    """Build the filter and load it into this process, for good."""
    with Filter(default, rules) as f:
        f.load()
