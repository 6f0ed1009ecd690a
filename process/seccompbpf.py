"""Seccomp rules, and libseccomp to compile them (ctypes over libseccomp.so.2).

The helper (privhelper/seccomp.py) and the worker (worker/sandbox.py) each write
their own allow-list as :class:`Rule` values; this module only turns rules into a
filter. It holds no policy: which system calls pass, and with which arguments, is
written next to the code that makes them. The helper's start stage loads this module
alone: it compiles the filter to BPF (:func:`compile_bpf`), which its serving stage
loads with seccomp(2). process/seccomp.py adds what the worker needs to load a filter
into itself.

Stdlib only, because the helper loads it. libseccomp is opened by its stable soname,
not through ``ctypes.util.find_library`` (which forks and executes ``ldconfig -p``,
and imports subprocess, shutil, tempfile, bz2 and lzma to do it). The library is
opened once, on first use, and kept.

Architectures: libseccomp resolves names for the native architecture and adds the
arch check itself: a call made as another architecture's, x32 system calls on x86_64
included, gets libseccomp's default bad-arch action (SCMP_ACT_KILL). A name libseccomp
does not know is skipped; one it knows only as another architecture's call (a negative
pseudo-number, e.g. fstat64 on x86_64) is added but can never match.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterable, Iterator
from fcntl import F_DUPFD, F_DUPFD_CLOEXEC, F_GETFD, F_GETFL, F_SETFD, F_SETFL
from termios import FIOCLEX, FIONBIO, FIONCLEX, FIONREAD, TCGETS
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

FD_FCNTLS: Final = (F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC)
"""The fcntl commands that concern only the fd itself: fd flags, status flags, dup.
Not F_SETOWN/F_SETSIG (they aim SIGIO at another process), not locks."""

FD_IOCTLS: Final = (TCGETS, FIONBIO, FIOCLEX, FIONCLEX, FIONREAD)
"""The ioctls CPython makes on any fd; they read or set only that fd's own state:
isatty(), non-blocking, close-on-exec on and off, the bytes queued."""

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
def library() -> ctypes.CDLL:
    """libseccomp.so.2, opened once (SeccompUnavailable where it is missing). Arguments
    are typed where they are passed: a filter context as the pointer it is (c_void_p),
    an action as the c_uint32 it is."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp.so.2: {exc}") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    return lib


def check(rc: int, what: str) -> None:
    """SeccompUnavailable for a libseccomp call that returned ``rc`` (a negative errno)."""
    if rc != 0:
        raise SeccompUnavailable(-rc, f"{what}: {os.strerror(-rc)}")


def context(default: int, rules: Iterable[Rule]) -> ctypes.c_void_p:
    """A libseccomp filter holding ``rules`` in their order; anything else gets
    ``default``. The caller releases it (``library().seccomp_release``)."""
    lib = library()
    ctx = ctypes.c_void_p(lib.seccomp_init(ctypes.c_uint32(default)))
    if not ctx.value:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for rule in rules:
            number = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
            if number == _NR_SCMP_ERROR:
                continue  # not a system call here
            args = (_ArgCmp * len(rule.args))(*(_ArgCmp(*arg) for arg in rule.args))
            action = ctypes.c_uint32(rule.action)
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(args), args)
            check(rc, f"seccomp rule for {rule.syscall}")
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx


def compile_bpf(default: int, rules: Iterable[Rule]) -> bytes:
    """The filter :func:`context` builds, as the BPF program the kernel gets
    (struct sock_filter[], 8 bytes each)."""
    ctx = context(default, rules)
    fd = os.memfd_create("sepconnect-seccomp-bpf", os.MFD_CLOEXEC)
    try:
        check(library().seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
        return os.pread(fd, os.lseek(fd, 0, os.SEEK_CUR), 0)
    finally:
        os.close(fd)
        library().seccomp_release(ctx)
