"""The privileged helper's seccomp allow-list (compiled by process/seccompbpf.py).

The rules are the helper's own and live here; the builder that turns them into
a libseccomp filter is the one the worker uses too (stdlib and ctypes only, so
the helper may load it).

The start stage compiles them (:func:`build`, while it still holds its privileges'
worth of trust, never in an unprivileged process); the serving stage loads the BPF
once, after it has dropped to CAP_NET_ADMIN alone and opened its netlink socket, before
it reads the first request, with SECCOMP_FILTER_FLAG_LOG. From then on:

* :data:`ALLOWED` system calls pass: what CPython, network.py (pyroute2's messages
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

What executes a program (the vpnc-script, nft, resolvconf) runs in a runner started
before the filter (process/runner.py): the helper itself never forks or executes.

Architectures: see process/seccompbpf.py (names are resolved for the native one;
any other, x32 system calls on x86_64 included, is killed).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from typing import Final

from sepconnect.process import seccompbpf
from sepconnect.process.seccompbpf import ALLOW, EQ, KILL_PROCESS, Arg, Rule
from sepconnect.process.tun_ioctls import TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ

ALLOWED: Final = (
    # files and fds: the audit log, /dev/net/tun, Python modules loaded lazily, the
    # state file (written, then renamed over the old one; Landlock keeps all of this to
    # the state directory)
    "read", "readv", "pread64", "write", "writev", "open", "openat", "close", "lseek",
    "rename", "renameat", "renameat2", "unlink", "unlinkat",
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

IOCTLS: Final = (TUNSETIFF, TUNGETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ, *seccompbpf.FD_IOCTLS)


def rules() -> Iterator[Rule]:
    """Every rule of the filter, in the order they are added."""
    yield from seccompbpf.allow(sorted(ALLOWED))
    for name in NEVER:
        yield Rule(KILL_PROCESS, name)
    # Argument-checked calls: the listed values pass, any other value gets the errno.
    netlink_route = (Arg(0, EQ, socket.AF_NETLINK), Arg(2, EQ, socket.NETLINK_ROUTE))
    yield Rule(ALLOW, "socket", netlink_route)
    yield from seccompbpf.only("socket", 0, (socket.AF_UNIX,), errno.EAFNOSUPPORT)
    yield from seccompbpf.only("ioctl", 1, IOCTLS, errno.ENOTTY)
    yield from seccompbpf.only("fcntl", 1, seccompbpf.FD_FCNTLS, errno.EINVAL)
    yield Rule(ALLOW, "prlimit64", (Arg(0, EQ, 0),))


DEFAULT: Final = seccompbpf.errno_action(errno.EPERM)
"""For anything not in :func:`rules` (logged by the kernel: the serving stage loads the
filter with SECCOMP_FILTER_FLAG_LOG)."""


def build() -> bytes:
    """The helper's filter as BPF, for the serving stage to load."""
    return seccompbpf.compile_bpf(DEFAULT, rules())
