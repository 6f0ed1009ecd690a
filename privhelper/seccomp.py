"""The privileged helper's own seccomp allow-list (ctypes over libseccomp.so.2).

The helper may import only the standard library, msgpack, pyroute2 and
jeepney, so this is a small binding of its own rather than pyseccomp.

:func:`apply` is called once, after the helper has dropped to CAP_NET_ADMIN
and opened its netlink socket, before it reads the first request. From then on:

* :data:`ALLOWED` system calls pass: what CPython, rtnl.py (pyroute2's messages
  over one blocking NETLINK_ROUTE socket) and the helper's own work need — reading its
  socket, writing its audit log, opening /dev/net/tun, netlink.
* Some pass only with certain arguments; the rest of their uses fail with an
  errno: ``socket`` (AF_NETLINK with NETLINK_ROUTE, AF_UNIX for the journal),
  ``ioctl`` (:data:`IOCTLS`: TUNSETIFF/TUNGETIFF, TUNSETVNETHDRSZ and
  TUNSETOFFLOAD for the device it creates, and the harmless fd ones),
  ``prlimit64`` on itself only, ``fcntl`` for fd flags and dup only (no
  F_SETOWN/F_SETSIG: no SIGIO aimed at other processes).
* :data:`NEVER` (execve, execveat, ptrace, process_vm_*, …) kills the helper
  on the spot (SECCOMP_RET_KILL_PROCESS): only a compromised helper would try
  them. Its tun fd closes with it, so the device and the routes through it go.
* Every *other* system call fails with EPERM (and is logged to the kernel
  audit log). Not killed, on purpose: the helper then still removes what it
  installed (the bypass routes on the uplink would otherwise outlive it) and
  writes an audit record — "fatal with cleanup".

Later features (issue #7) are *groups* that are off by default: a reviewed
change turns one on in main.py with ``apply(features={"dns_files"})`` — the
system calls it adds are listed here, next to the reason, and nowhere else.

- ``dns_files``: replace /etc/resolv.conf atomically (write a temporary file,
  fsync, rename) and restore it.
- ``run_scripts``: fork and execute a vpnc-script. This also takes execve and
  execveat off :data:`NEVER`. Prefer running scripts from a child forked
  *before* :func:`apply` with its own, narrower filter.

Architectures: libseccomp resolves names for the native architecture and adds
the arch check itself (any other arch, including x32 system calls on x86_64,
is killed).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import termios
from collections.abc import Iterable, Iterator
from typing import Final

from sepconnect.process.tun_ioctls import TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ

ALLOWED: Final = (
    # files and fds: the audit log, /dev/net/tun, Python modules loaded lazily
    "read", "readv", "pread64", "write", "writev", "open", "openat", "close", "lseek",
    "fstat", "newfstatat", "stat", "lstat", "statx", "getdents64", "readlink", "readlinkat",
    "access", "faccessat", "faccessat2", "getcwd", "dup", "dup2", "dup3",
    # memory
    "mmap", "munmap", "mremap", "mprotect", "madvise", "brk",
    # signals (the SIGTERM handler only sets a flag) and waiting
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
    "poll", "ppoll", "select", "pselect6",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    # sockets: the supervisor's channel, netlink, the journal; asyncio's self-pipe
    "sendto", "recvfrom", "sendmsg", "recvmsg", "bind", "connect", "getsockname",
    "getpeername", "getsockopt", "setsockopt", "shutdown", "socketpair", "pipe", "pipe2",
    # identity, time, randomness
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
    "getresgid", "uname", "sysinfo", "clock_gettime", "clock_getres", "gettimeofday",
    "nanosleep", "clock_nanosleep", "getrandom", "getrlimit",
    # glibc bookkeeping and the way out
    "futex", "set_robust_list", "rseq", "exit", "exit_group",
)  # fmt: skip

NEVER: Final = (
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev",
    "fork", "vfork", "clone", "clone3", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "mount", "umount2",
    "pivot_root", "chroot", "setns", "unshare", "open_by_handle_at",
)  # fmt: skip
"""Killed at once: nothing in the helper ever makes these calls."""

FEATURES: Final[dict[str, tuple[str, ...]]] = {
    "dns_files": (
        "rename", "renameat", "renameat2", "unlink", "unlinkat", "fsync", "fdatasync",
        "fchmod", "fchown", "umask",
    ),
    "run_scripts": (
        "execve", "execveat", "fork", "vfork", "clone", "clone3", "wait4", "waitid",
        "setsid", "setpgid", "chdir", "close_range", "kill", "prlimit64",
    ),
}  # fmt: skip
"""Off by default; see the module docstring (issue #7)."""

IOCTLS: Final = (
    TUNSETIFF,
    TUNGETIFF,
    TUNSETOFFLOAD,
    TUNSETVNETHDRSZ,
    termios.TCGETS,
    termios.FIONBIO,
    termios.FIOCLEX,
    termios.FIONCLEX,
    termios.FIONREAD,
)
NETLINK_ROUTE: Final = 0
FCNTLS: Final = (0, 1, 2, 3, 4, 1030)
"""F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC."""

# <seccomp.h>
_ACT_KILL_PROCESS: Final = 0x80000000
_ACT_ALLOW: Final = 0x7FFF0000
_ACT_ERRNO: Final = 0x00050000
_CMP_EQ: Final = 4
_CMP_GE: Final = 5
_FLTATR_CTL_LOG: Final = 6
_NR_SCMP_ERROR: Final = -1


def _errno_action(code: int) -> int:
    return _ACT_ERRNO | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class SeccompUnavailable(OSError):
    """libseccomp is missing or the kernel refused the filter."""


def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp.so.2: {exc}") from None
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.restype = None
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_export_pfc.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.seccomp_export_pfc.restype = ctypes.c_int
    return lib


Rule = tuple[int, str, tuple[tuple[int, int, int], ...]]
"""(action, system call, ((arg, op, value), ...))"""


def rules(features: Iterable[str] = ()) -> Iterator[Rule]:
    """Every rule of the filter, in the order they are added."""
    enabled = set(features)
    unknown = enabled - FEATURES.keys()
    if unknown:
        raise ValueError(f"unknown seccomp feature(s): {sorted(unknown)}")
    extra = {name for f in sorted(enabled) for name in FEATURES[f]}
    for name in sorted(set(ALLOWED) | extra):
        yield _ACT_ALLOW, name, ()
    for name in NEVER:
        if name not in extra:
            yield _ACT_KILL_PROCESS, name, ()
    # Argument-checked calls: the listed values pass, any other value gets the errno.
    for family, protocol in ((socket.AF_NETLINK, NETLINK_ROUTE), (socket.AF_UNIX, None)):
        checks = ((0, _CMP_EQ, family),) + (() if protocol is None else ((2, _CMP_EQ, protocol),))
        yield _ACT_ALLOW, "socket", checks
    yield _errno_action(errno.EAFNOSUPPORT), "socket", ((0, _CMP_GE, 0),)
    for request in IOCTLS:
        yield _ACT_ALLOW, "ioctl", ((1, _CMP_EQ, request),)
    yield _errno_action(errno.ENOTTY), "ioctl", ((1, _CMP_GE, 0),)
    for cmd in FCNTLS:
        yield _ACT_ALLOW, "fcntl", ((1, _CMP_EQ, cmd),)
    yield _errno_action(errno.EINVAL), "fcntl", ((1, _CMP_GE, 0),)
    if "prlimit64" not in extra:
        yield _ACT_ALLOW, "prlimit64", ((0, _CMP_EQ, 0),)


class Filter:
    """A libseccomp filter context holding :func:`rules`."""

    def __init__(self, features: Iterable[str] = ()) -> None:
        self._lib = _library()
        ctx = self._lib.seccomp_init(_errno_action(errno.EPERM))
        if not ctx:
            raise SeccompUnavailable("seccomp_init failed")
        self._ctx: int = ctx
        try:
            if self._lib.seccomp_attr_set(self._ctx, _FLTATR_CTL_LOG, 1) != 0:
                pass  # an old kernel cannot log denials; the filter still works
            for action, name, checks in rules(features):
                self._add(action, name, checks)
        except BaseException:
            self.release()
            raise

    def _add(self, action: int, name: str, checks: tuple[tuple[int, int, int], ...]) -> None:
        number = self._lib.seccomp_syscall_resolve_name(name.encode())
        if number == _NR_SCMP_ERROR:
            return  # not a system call here (libseccomp names other archs' calls negatively)
        array = (_ArgCmp * max(1, len(checks)))(*(_ArgCmp(a, op, v, 0) for a, op, v in checks))
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, number, len(checks), array)
        if rc != 0:
            raise SeccompUnavailable(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

    def export_pfc(self, fd: int) -> None:
        """Write the filter as libseccomp's pseudo code (for review and tests)."""
        rc = self._lib.seccomp_export_pfc(self._ctx, fd)
        if rc != 0:
            raise SeccompUnavailable(-rc, os.strerror(-rc))

    def load(self) -> None:
        rc = self._lib.seccomp_load(self._ctx)
        if rc != 0:
            raise SeccompUnavailable(-rc, f"seccomp_load: {os.strerror(-rc)}")

    def release(self) -> None:
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = 0


def apply(features: Iterable[str] = ()) -> None:
    """Load the helper's filter into this process, for good (needs no_new_privs)."""
    f = Filter(features)
    try:
        f.load()
    finally:
        f.release()
