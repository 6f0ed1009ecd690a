"""The one seccomp filter builder: rules in, a libseccomp filter out (ctypes over libseccomp.so.2).

The helper (privhelper/seccomp.py) and the worker (worker/sandbox.py) each write
their own allow-list as :class:`Rule` values; this module only turns rules into a
filter and loads it. It holds no policy: which system calls pass, and with which
arguments, is written next to the code that makes them.

Stdlib only, because the helper loads it. libseccomp is opened by its stable soname,
not through ``ctypes.util.find_library`` (which forks and executes ``ldconfig -p``,
and imports subprocess, shutil, tempfile, bz2 and lzma to do it). The library is
opened once, on first use, and kept: a sandbox asks :func:`available` before it
restricts file access, and builds its filter afterwards.

Architectures: libseccomp resolves names for the native architecture and adds the
arch check itself: a call made as another architecture's, x32 system calls on x86_64
included, gets libseccomp's default bad-arch action (SCMP_ACT_KILL). A name libseccomp
does not know is skipped; one it knows only as another architecture's call (a negative
pseudo-number, e.g. fstat64 on x86_64) is added but can never match.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import termios
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple

# <seccomp.h> actions
KILL_PROCESS: Final = 0x80000000
ALLOW: Final = 0x7FFF0000
_ACT_ERRNO: Final = 0x00050000


def errno_action(code: int) -> int:
    """The action that fails the system call with ``code`` (SCMP_ACT_ERRNO)."""
    return _ACT_ERRNO | (code & 0xFFFF)


# <seccomp.h> enum scmp_compare
EQ: Final = 4
GE: Final = 5
MASKED_EQ: Final = 7

FD_FCNTLS: Final = (
    fcntl.F_DUPFD,
    fcntl.F_GETFD,
    fcntl.F_SETFD,
    fcntl.F_GETFL,
    fcntl.F_SETFL,
    fcntl.F_DUPFD_CLOEXEC,
)
"""The fcntl commands that concern only the fd itself: fd flags, status flags, dup.
Not F_SETOWN/F_SETSIG (they aim SIGIO at another process), not locks."""

FD_IOCTLS: Final = (
    termios.TCGETS,  # isatty()
    termios.FIONBIO,  # non-blocking
    termios.FIOCLEX,
    termios.FIONCLEX,
    termios.FIONREAD,  # bytes queued
)
"""The ioctls CPython makes on any fd; they read or set only that fd's own state."""

_FLTATR_CTL_LOG: Final = 6
_NR_SCMP_ERROR: Final = -1


class Arg(NamedTuple):
    """One argument check (struct scmp_arg_cmp): argument number ``arg`` compared by ``op``.

    EQ/GE: ``argument op datum_a``. MASKED_EQ: ``(argument & datum_a) == datum_b``.
    """

    arg: int
    op: int
    datum_a: int
    datum_b: int = 0


class Rule(NamedTuple):
    """``action`` for ``syscall`` when every one of ``args`` holds."""

    action: int
    syscall: str
    args: tuple[Arg, ...] = ()


def allow(names: Iterable[str]) -> Iterator[Rule]:
    """Allow each system call in ``names`` with any arguments."""
    for name in names:
        yield Rule(ALLOW, name)


def only(syscall: str, index: int, values: Iterable[int], refusal: int) -> Iterator[Rule]:
    """``syscall`` allowed when argument ``index`` is one of ``values``, else errno ``refusal``.

    libseccomp evaluates the equality rules first and the catch-all ``>= 0`` (every
    value) last, so this is an allow-list with a refusal.
    """
    for value in values:
        yield Rule(ALLOW, syscall, (Arg(index, EQ, value),))
    yield Rule(errno_action(refusal), syscall, (Arg(index, GE, 0),))


class SeccompUnavailable(OSError):
    """libseccomp is missing, or it or the kernel refused the filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp.so.2: {exc}") from None
    ctx, fd = ctypes.c_void_p, ctypes.c_int
    for name, restype, argtypes in (
        ("seccomp_init", ctx, (ctypes.c_uint32,)),
        ("seccomp_release", None, (ctx,)),
        ("seccomp_load", ctypes.c_int, (ctx,)),
        ("seccomp_attr_set", ctypes.c_int, (ctx, ctypes.c_int, ctypes.c_uint32)),
        ("seccomp_syscall_resolve_name", ctypes.c_int, (ctypes.c_char_p,)),
        (
            "seccomp_rule_add_array",
            ctypes.c_int,
            (ctx, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)),
        ),
        ("seccomp_export_pfc", ctypes.c_int, (ctx, fd)),
        ("seccomp_export_bpf", ctypes.c_int, (ctx, fd)),
    ):
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def available() -> bool:
    """True if libseccomp.so.2 loads (it then stays loaded for :class:`Filter`)."""
    try:
        _library()
    except SeccompUnavailable:
        return False
    return True


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SeccompUnavailable(-rc, f"{what}: {os.strerror(-rc)}")


class Filter:
    """A libseccomp filter holding ``rules`` in their order; anything else gets ``default``.

    ``log``: ask the kernel to log what the filter refuses (SECCOMP_FILTER_FLAG_LOG;
    an old kernel that cannot is no reason to go without the filter).
    """

    def __init__(self, default: int, rules: Iterable[Rule], *, log: bool = False) -> None:
        self._lib = _library()
        ctx = self._lib.seccomp_init(default)
        if not ctx:
            raise SeccompUnavailable("seccomp_init failed")
        self._ctx: int = ctx
        try:
            if log:
                self._lib.seccomp_attr_set(self._ctx, _FLTATR_CTL_LOG, 1)
            for rule in rules:
                self._add(rule)
        except BaseException:
            self.release()
            raise

    def _add(self, rule: Rule) -> None:
        number = self._lib.seccomp_syscall_resolve_name(rule.syscall.encode())
        if number == _NR_SCMP_ERROR:
            return  # not a system call here
        args = (_ArgCmp * len(rule.args))(*(_ArgCmp(*arg) for arg in rule.args))
        rc = self._lib.seccomp_rule_add_array(self._ctx, rule.action, number, len(args), args)
        _check(rc, f"seccomp rule for {rule.syscall}")

    def export_pfc(self, fd: int) -> None:
        """Write the filter as libseccomp's pseudo code (for review and tests)."""
        _check(self._lib.seccomp_export_pfc(self._ctx, fd), "seccomp_export_pfc")

    def export_bpf(self, fd: int) -> None:
        """Write the filter as the BPF program the kernel would get."""
        _check(self._lib.seccomp_export_bpf(self._ctx, fd), "seccomp_export_bpf")

    def load(self) -> None:
        """Load the filter into this process, for good (needs no_new_privs or CAP_SYS_ADMIN)."""
        _check(self._lib.seccomp_load(self._ctx), "seccomp_load")

    def release(self) -> None:
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = 0

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def load(default: int, rules: Iterable[Rule], *, log: bool = False) -> None:
    """Build the filter and load it into this process, for good."""
    with Filter(default, rules, log=log) as f:
        f.load()
