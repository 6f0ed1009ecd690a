"""The worker's sandbox: no capabilities, a seccomp allow-list, Landlock, rlimits.

:func:`apply` is called once by worker/main.py, after the worker has its Start
message and before it reads one byte from the
network. From then on, for the rest of the worker's life:

* **Capabilities**: none effective, permitted or ambient (checked here: the
  supervisor's uid drop and empty bounding set are what make it so);
  ``no_new_privs`` on; not dumpable (no ptrace by processes of the same uid,
  no core dumps); ``RLIMIT_CORE`` and ``RLIMIT_NPROC`` 0.
* **seccomp** (process/seccomp.py, ctypes over libseccomp): an allow-list of the system
  calls CPython, OpenSSL and the data path make; anything else kills the
  process (``SECCOMP_RET_KILL_PROCESS``): no execve, no fork/clone, no ptrace,
  no kill(2) of another process, no prctl (so it cannot make itself dumpable
  again), no mount/unshare/setns/bpf/keyctl…. A few calls are allowed only
  with some arguments, and fail with an errno otherwise, because glibc and
  CPython *probe* them and cope with a refusal (OpenSSH's sandbox denies
  ``open`` with EACCES for the same reason):

  - ``socket``: AF_INET, AF_INET6 only; other families (AF_UNIX too) get
    EAFNOSUPPORT (glibc's getaddrinfo opens a netlink socket to sort
    addresses and carries on without it).
  - ``ioctl``: only :data:`IOCTLS` (isatty, non-blocking, close-on-exec,
    bytes queued, and the tun ioctls that read or set *that fd's own*
    offload/vnet-header settings, for issue #6); others get ENOTTY. TUNSETIFF
    (create or attach a device) is not among them.
  - ``fcntl``: fd flags, status flags and dup only; F_SETOWN/F_SETSIG (which
    would aim SIGIO at another process) and locks get EINVAL.
  - ``mmap``/``mprotect``: never writable and executable at once (EACCES).
  - ``prlimit64`` only on ourselves, ``tgkill`` only to ourselves (abort()).

* **Landlock** (process/landlock.py): no file may be written, created,
  removed, renamed, truncated or executed anywhere; reading is allowed only
  beneath the Python code (``sys.path``), the shared libraries already mapped,
  the CA store and two of the loader's files (:func:`read_paths`); no resolver file:
  the worker resolves no name. With
  Landlock ABI 4+ TCP connect is limited to the server's port (no DNS
  over TCP), and TCP bind is forbidden; with ABI 6+ the worker can neither
  signal nor connect to abstract unix sockets outside its own domain.
  :data:`LANDLOCK_RULES` says which ABI each rule needs and which are also
  enforced by seccomp.

Fail closed: if the kernel lacks seccomp filters, Landlock, or a Landlock rule
that nothing else enforces (ABI 4's TCP ports), :func:`apply` raises
:class:`SandboxUnavailable` with a message naming what is missing, unless
``allow_weak`` (``sepconnect connect --allow-weak-sandbox``) is set, in which
case it applies what the kernel has and reports what is missing.

File descriptors the worker is *handed* (the tun, via SCM_RIGHTS) keep the
access they were opened with: Landlock checks paths at open(2), and the worker
opens no device.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import mmap
import os
import resource
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Final
from urllib.parse import urlsplit

from sepconnect.process import landlock, privileges, seccomp
from sepconnect.process.libc import LIBC
from sepconnect.process.seccomp import ALLOW, EQ, MASKED_EQ, Arg, Rule
from sepconnect.process.tun_ioctls import TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ
from sepconnect.worker.io.tls import SYSTEM_CA_FILE

landlock_abi = landlock.abi  # a name of ours: tests stand in a kernel without Landlock

LIBC.syscall.restype = ctypes.c_long


SELFTEST_ENV: Final = "SEPCONNECT_TEST_SANDBOX_SELFTEST"
"""Test-only: "report" (try the non-fatal forbidden operations, print the outcomes,
carry on), "report:PATH" (the same, and connect to the unix socket at PATH: the helper's
in the split units) or one of :data:`FATAL_PROBES` (try it; the worker must die of
SIGSYS)."""
REPORT: Final = "report"


def server_port(url: str) -> int:
    """The TCP port the worker will connect to (Landlock allows that one)."""
    try:
        return urlsplit(url).port or 443
    except ValueError:
        return 443


def server_host(url: str) -> str:
    return urlsplit(url).hostname or ""


class SandboxUnavailable(Exception):
    """The kernel (or the system) lacks a sandbox feature and weak sandboxes are not allowed."""


# ---------------------------------------------------------------------------
# seccomp

# Allowed with any arguments. Names a given architecture lacks are skipped.
SYSCALLS: Final = (
    # files and fds (Landlock decides which paths may be opened, and how)
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev",
    "open", "openat", "close", "lseek", "_llseek",
    "fstat", "fstat64", "newfstatat", "stat", "stat64", "lstat", "lstat64", "statx",
    "fstatfs", "statfs", "getdents", "getdents64", "readlink", "readlinkat",
    "access", "faccessat", "faccessat2", "getcwd", "dup", "dup2", "dup3",
    # memory (mmap/mprotect are argument-checked below)
    "munmap", "mremap", "madvise", "brk", "mincore",
    # signals: handlers were set before the sandbox; they are delivered here
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
    # waiting
    "poll", "ppoll", "select", "pselect6", "_newselect",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    # sockets (socket(2) is argument-checked below); TCP, UDP incl. GSO/GRO, unix
    "connect", "bind", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    "getsockopt", "setsockopt", "getsockname", "getpeername", "shutdown",
    # identity, time, randomness, limits (read-only)
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid",
    "getresuid", "getresgid", "getgroups", "uname", "sysinfo", "getrusage", "times",
    "getrlimit", "ugetrlimit", "sched_getaffinity", "sched_yield",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep",
    "getrandom",
    # threads' bookkeeping (glibc), and the way out
    "futex", "set_robust_list", "rseq", "exit", "exit_group",
)  # fmt: skip

SOCKET_FAMILIES: Final = (socket.AF_INET, socket.AF_INET6)
"""TCP to the server and DNS, UDP for DTLS. No AF_UNIX: the worker talks to the
supervisor over the socket it inherits, and a unix socket of its own could reach
pathname sockets Landlock does not cover (the helper's in the split units, journald,
D-Bus). glibc's resolver does without (nscd and nss-resolve answer "unavailable")."""


# <linux/if_tun.h> queries (encoded as process/tun_ioctls.py explains): the worker's
# filter passes them, the helper never makes them, so they are not in that shared module.
TUNGETFEATURES: Final = 0x800454CF  # _IOR 207
TUNGETVNETHDRSZ: Final = 0x800454D7  # _IOR 215

IOCTLS: Final = (
    *seccomp.FD_IOCTLS,
    TUNGETFEATURES,
    TUNGETIFF,  # the handed tun's name and flags
    TUNSETOFFLOAD,  # offloads of our tun only
    TUNGETVNETHDRSZ,
    TUNSETVNETHDRSZ,  # this fd's vnet header size
)
"""The only ioctl requests the worker may make (others: ENOTTY)."""


def seccomp_rules(pid: int) -> Iterator[Rule]:
    """The worker's rules, in the order they are added. ``pid``: our own."""
    yield from seccomp.allow(SYSCALLS)
    yield from seccomp.only("socket", 0, SOCKET_FAMILIES, errno.EAFNOSUPPORT)
    yield from seccomp.only("socketcall", 0, (), errno.ENOSYS)  # i386's multiplexer: never
    yield from seccomp.only("ioctl", 1, IOCTLS, errno.ENOTTY)
    yield from seccomp.only("fcntl", 1, seccomp.FD_FCNTLS, errno.EINVAL)
    yield from seccomp.only("fcntl64", 1, seccomp.FD_FCNTLS, errno.EINVAL)
    # W^X: a mapping may be writable or executable, never both.
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    for name in ("mmap", "mmap2", "mprotect"):
        yield Rule(ALLOW, name, (Arg(2, MASKED_EQ, mmap.PROT_EXEC, 0),))
        yield Rule(ALLOW, name, (Arg(2, MASKED_EQ, mmap.PROT_WRITE, 0),))
        yield Rule(seccomp.errno_action(errno.EACCES), name, (Arg(2, MASKED_EQ, wx, wx),))
    yield Rule(ALLOW, "prlimit64", (Arg(0, EQ, 0),))
    yield Rule(ALLOW, "tgkill", (Arg(0, EQ, pid),))


def build_seccomp_filter(pid: int) -> seccomp.Filter:
    """The worker's filter, not yet loaded: anything not in :func:`seccomp_rules` kills it."""
    if not seccomp.available():
        raise SandboxUnavailable("libseccomp (libseccomp.so.2) is not available")
    return seccomp.Filter(seccomp.KILL_PROCESS, seccomp_rules(pid))


def apply_seccomp(pid: int) -> None:
    with build_seccomp_filter(pid) as f:
        f.load()


# ---------------------------------------------------------------------------
# Landlock (process/landlock.py): what the worker may read, and what each ABI enforces


@dataclasses.dataclass(frozen=True, slots=True)
class LandlockRule:
    abi: int
    """The first Landlock ABI that enforces it."""
    what: str
    also_enforced_by: str | None
    """What enforces it on a kernel with an older ABI; None: nothing (required)."""


LANDLOCK_RULES: Final = (
    LandlockRule(1, "no file written, created, removed or executed, reads only where listed", None),
    LandlockRule(2, "no file linked or renamed into another directory", "ABI 1: no write rights"),
    LandlockRule(3, "no file truncated", "seccomp: no truncate or ftruncate"),
    LandlockRule(4, "TCP connect only to the server's port, no TCP bind", None),
    LandlockRule(5, "no ioctl on a device opened by path", "seccomp: the listed ioctls only"),
    LandlockRule(6, "no abstract unix socket or signal outside its domain",
                 "seccomp: no AF_UNIX, no kill"),
)  # fmt: skip


def landlock_gaps(abi: int) -> tuple[tuple[LandlockRule, ...], tuple[LandlockRule, ...]]:
    """The rules a kernel with Landlock ``abi`` cannot enforce: (required, covered otherwise)."""
    gaps = [rule for rule in LANDLOCK_RULES if rule.abi > abi]
    return (
        tuple(r for r in gaps if r.also_enforced_by is None),
        tuple(r for r in gaps if r.also_enforced_by is not None),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ReadPaths:
    dirs: tuple[str, ...]
    files: tuple[str, ...]


SYSTEM_FILES: Final = (
    "/etc/ld.so.cache",  # where the dynamic loader finds a library loaded lazily
    "/etc/localtime",
)
"""No resolver files: the worker resolves no name (the launcher resolved the server)."""


def _mapped_library_dirs() -> set[str]:
    dirs: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/self/maps", encoding="ascii") as maps:
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip() if line.count(" ") >= 5 else ""
            if path.startswith("/") and ".so" in os.path.basename(path):
                dirs.add(os.path.dirname(path))
    return dirs


def read_paths() -> ReadPaths:
    """What the worker may read: its code, its libraries, the CA store, two loader files."""
    dirs = {p for p in sys.path if p and os.path.isdir(p)}
    dirs |= _mapped_library_dirs()
    dirs.add(os.path.dirname(SYSTEM_CA_FILE))
    dirs.add(os.path.dirname(os.path.realpath(SYSTEM_CA_FILE)))
    files = [f for f in SYSTEM_FILES if os.path.exists(f)]
    return ReadPaths(tuple(sorted(d for d in dirs if os.path.isdir(d))), tuple(files))


def apply_landlock(abi: int, paths: ReadPaths, tcp_ports: Iterable[int]) -> None:
    """Restrict this process (and any child it could have) for good: read only ``paths``,
    write and execute nothing, TCP connect only to ``tcp_ports``."""
    rules = [(d, landlock.FS_READ) for d in paths.dirs]
    rules += [(f, landlock.FS_READ_FILE) for f in paths.files]
    landlock.restrict(abi, landlock.fs_rights(abi), rules, tcp_ports)


# ---------------------------------------------------------------------------
# Putting it together


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxStatus:
    landlock_abi: int
    landlock: bool
    seccomp: bool
    missing: tuple[str, ...]
    """Features the kernel lacks (non-empty only with allow_weak)."""
    covered: tuple[str, ...] = ()
    """Landlock rules the kernel's ABI lacks that seccomp or an older rule enforces."""

    def describe(self) -> str:
        """One line for the log: the Landlock ABI in use and what it leaves to others."""
        landlock = f"Landlock ABI {self.landlock_abi}" if self.landlock else "no Landlock"
        line = f"sandbox: {landlock}, seccomp {'on' if self.seccomp else 'off'}"
        if self.covered:
            line += "; not enforced by Landlock here: " + "; ".join(self.covered)
        return line


_CAP_FIELDS: Final = ("CapEff", "CapPrm", "CapAmb")


def _capabilities() -> dict[str, int]:
    with open("/proc/self/status", encoding="ascii") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].strip(), 16) for k in _CAP_FIELDS if k in fields}


def apply(*, server_port: int, allow_weak: bool = False) -> SandboxStatus:
    """Sandbox this process for the rest of its life (see the module docstring).

    Raises SandboxUnavailable (nothing is half-applied that matters: the
    caller exits) if a required feature is missing and not ``allow_weak``, or
    if the process still holds a capability (never allowed).
    """
    held = {k: v for k, v in _capabilities().items() if v}
    if held:
        raise SandboxUnavailable(
            "the worker holds capabilities it must not have: "
            + ", ".join(f"{k}={v:#x}" for k, v in sorted(held.items()))
        )
    missing: list[str] = []
    abi = landlock_abi()
    required, covered = landlock_gaps(abi)
    if abi < 1:
        missing.append("Landlock (kernel 5.13+ with lsm=landlock)")
    else:
        missing += [f"Landlock ABI {r.abi} ({r.what}; this kernel has ABI {abi})" for r in required]
    seccomp_ok = seccomp.available() and _seccomp_filters_supported()
    if not seccomp_ok:
        missing.append("seccomp filters (libseccomp.so.2 and a kernel with CONFIG_SECCOMP_FILTER)")
    if missing and not allow_weak:
        raise SandboxUnavailable(
            "cannot sandbox the worker: this system lacks "
            + " and ".join(missing)
            + "; run with --allow-weak-sandbox to connect anyway with a weaker sandbox"
        )
    privileges.no_new_privs_and_undumpable()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    sys.dont_write_bytecode = True  # no __pycache__ writes (Landlock would refuse them)
    if abi >= 1:
        apply_landlock(abi, read_paths(), (server_port,))
    if seccomp_ok:
        apply_seccomp(os.getpid())  # last: it forbids what the steps above use
    return SandboxStatus(
        abi,
        abi >= 1,
        seccomp_ok,
        tuple(missing),
        tuple(f"{r.what} (ABI {r.abi}; {r.also_enforced_by})" for r in covered if abi >= 1),
    )


def _seccomp_filters_supported() -> bool:
    """True if the kernel has seccomp filters (PR_GET_SECCOMP works)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return any(line.startswith("Seccomp:") for line in f)
    except OSError:
        return False


# ---------------------------------------------------------------------------
# Test-only: attempt forbidden things from inside the sandboxed worker

PROBE_PREFIX: Final = "sepconnect worker: sandbox selftest: "
FATAL_PROBES: Final = ("exec", "fork", "ptrace", "kill", "prctl", "unshare", "setuid")
"""Probes that must kill the worker (SIGSYS): run one per process."""


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _attempt(action: Callable[[], object]) -> str:
    """``allowed`` if ``action`` succeeded, else the errno's name."""
    try:
        action()
    except OSError as exc:
        return _errno_name(exc)
    return "allowed"


def _open_close(path: str, flags: int) -> None:
    os.close(os.open(path, flags | os.O_CLOEXEC, 0o600))


def _socket_close(family: int, kind: int, proto: int = 0) -> None:
    socket.socket(family, kind, proto).close()


def _tcp_connect(address: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(address)
        except (ConnectionRefusedError, TimeoutError, OSError) as exc:
            if isinstance(exc, PermissionError):
                raise
            # not refused by the sandbox: the network answered (or not)
            return


def _unix_connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)


def _wx_mapping() -> None:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()


def _ioctl(fd: int, request: int) -> None:
    fcntl.ioctl(fd, request, bytes(40))


def report_probes(
    channel_fd: int, server: tuple[str, int], unix_path: str | None = None
) -> dict[str, str]:
    """Try every non-fatal forbidden operation; return probe → outcome (an errno name).
    With ``unix_path``, also connect to the pathname socket there."""
    tmp = f"/tmp/sepconnect-sandbox-probe-{os.getpid()}"  # noqa: S108  # must fail
    results = {
        "read_etc_shadow": _attempt(lambda: _open_close("/etc/shadow", os.O_RDONLY)),
        "read_etc_passwd": _attempt(lambda: _open_close("/etc/passwd", os.O_RDONLY)),
        "create_file_in_tmp": _attempt(
            lambda: _open_close(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        ),
        "write_dev_null": _attempt(lambda: _open_close("/dev/null", os.O_WRONLY)),
        "open_dev_net_tun": _attempt(lambda: _open_close("/dev/net/tun", os.O_RDWR)),
        "netlink_socket": _attempt(
            lambda: _socket_close(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        ),
        "packet_socket": _attempt(lambda: _socket_close(socket.AF_PACKET, socket.SOCK_RAW, 0)),
        "unix_socket": _attempt(lambda: _socket_close(socket.AF_UNIX, socket.SOCK_SEQPACKET)),
        "tunsetiff_ioctl": _attempt(lambda: _ioctl(channel_fd, TUNSETIFF)),
        "siocgifconf_ioctl": _attempt(lambda: _ioctl(channel_fd, 0x8912)),
        "wx_mapping": _attempt(_wx_mapping),
        "tcp_connect_other_port": _attempt(lambda: _tcp_connect((server[0], 22))),
        "tcp_connect_dns": _attempt(lambda: _tcp_connect((server[0], 53))),
        "read_resolv_conf": _attempt(lambda: _open_close("/etc/resolv.conf", os.O_RDONLY)),
        # and what the worker must still be able to do:
        "read_ca_store": _attempt(lambda: _open_close(SYSTEM_CA_FILE, os.O_RDONLY)),
        "udp_socket": _attempt(lambda: _socket_close(socket.AF_INET, socket.SOCK_DGRAM)),
        "udp6_socket": _attempt(lambda: _socket_close(socket.AF_INET6, socket.SOCK_DGRAM)),
        "isatty": _attempt(lambda: os.isatty(channel_fd)),
    }
    if unix_path is not None:
        results["connect_unix_path"] = _attempt(lambda: _unix_connect(unix_path))
    if results["create_file_in_tmp"] == "allowed":  # a weak sandbox: tidy up
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return results


def fatal_probe(name: str) -> str:
    """Attempt one operation that must kill the process; return only if it did not."""
    parent = os.getppid()
    if name == "exec":
        os.execv("/bin/true", ["/bin/true"])  # noqa: S606  # must be killed
    elif name == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0)
    elif name == "ptrace":
        ptrace_attach = 16
        LIBC.ptrace(ctypes.c_long(ptrace_attach), ctypes.c_long(parent), None, None)
    elif name == "kill":
        os.kill(parent, 0)
    elif name == "prctl":
        privileges.prctl(privileges.PR_SET_DUMPABLE, 1)
    elif name == "unshare":
        clone_newuser = 0x10000000
        LIBC.unshare(ctypes.c_int(clone_newuser))
    elif name == "setuid":
        os.setuid(os.getuid())
    else:
        raise ValueError(f"unknown probe {name!r}")
    return f"{name}: survived (errno {ctypes.get_errno()})"


def selftest_line(results: dict[str, str]) -> str:
    return PROBE_PREFIX + json.dumps(results, sort_keys=True)
