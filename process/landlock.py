"""Landlock (<linux/landlock.h>) through three system calls: one ruleset, for good.

The mechanism only; each process states its own rules (worker/sandbox.py: read its
code and a few files, nothing written; privhelper/main.py: nothing written outside its
state directory). Stdlib and ctypes only: the helper loads it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from typing import Final

from sepconnect.process.libc import LIBC, errno_error

LIBC.syscall.restype = ctypes.c_long

_SYS_CREATE_RULESET: Final = 444  # the same numbers on every architecture
_SYS_ADD_RULE: Final = 445
_SYS_RESTRICT_SELF: Final = 446
_RULE_PATH_BENEATH: Final = 1
_RULE_NET_PORT: Final = 2

FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
FS_REMOVE_DIR: Final = 1 << 4
FS_REMOVE_FILE: Final = 1 << 5
FS_MAKE_REG: Final = 1 << 8
_FS_ABI1: Final = (1 << 13) - 1  # execute … make_sym
FS_REFER: Final = 1 << 13  # ABI 2
FS_TRUNCATE: Final = 1 << 14  # ABI 3
FS_IOCTL_DEV: Final = 1 << 15  # ABI 5
FS_READ: Final = FS_READ_FILE | FS_READ_DIR
NET_BIND_TCP: Final = 1 << 0  # ABI 4
NET_CONNECT_TCP: Final = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
SCOPE_SIGNAL: Final = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPort(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


def _syscall(number: int, *args: object) -> int:
    result = int(LIBC.syscall(ctypes.c_long(number), *args))
    if result < 0:
        raise errno_error(f"landlock syscall {number}")
    return result


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except OSError:
        return 0


def fs_rights(abi: int) -> int:
    """Every filesystem right the kernel's ABI knows."""
    rights = _FS_ABI1
    for version, right in ((2, FS_REFER), (3, FS_TRUNCATE), (5, FS_IOCTL_DEV)):
        if abi >= version:
            rights |= right
    return rights


def restrict(
    abi: int,
    handled_fs: int,
    paths: Iterable[tuple[str, int]],
    tcp_connect: Iterable[int] = (),
) -> None:
    """Restrict this process (and any child it could have) for good: of ``handled_fs``
    only what ``paths`` grant beneath each path; with ABI 4+ no TCP but connect to
    ``tcp_connect``; with ABI 6+ no signals to, or abstract unix sockets of, processes
    outside the domain. A path that does not exist grants nothing."""
    handled_fs &= fs_rights(abi)
    attr = _RulesetAttr(handled_fs, 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net, size = NET_BIND_TCP | NET_CONNECT_TCP, 16
    if abi >= 6:
        attr.scoped, size = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL, 24
    ruleset = _syscall(
        _SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    try:
        for path, access in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                rule = _PathBeneath(access & handled_fs, fd)
                _add_rule(ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule))
            finally:
                os.close(fd)
        if abi >= 4:
            for port in sorted(set(tcp_connect)):
                _add_rule(ruleset, _RULE_NET_PORT, ctypes.byref(_NetPort(NET_CONNECT_TCP, port)))
        _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def _add_rule(ruleset: int, kind: int, rule: object) -> None:
    _syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(kind), rule, ctypes.c_uint32(0))
