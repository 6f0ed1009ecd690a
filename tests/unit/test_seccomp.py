"""process/seccomp.py and seccompbpf.py, the one seccomp builder, and the two allow-lists.

The sandboxes themselves are proven from inside the real processes
(tests/integration/test_sandbox.py, test_privhelper.py, test_helper_hostile.py);
here a child loads a small filter of its own and tries what it allows and refuses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest

from sepconnect.privhelper import seccomp as helper_seccomp
from sepconnect.process import seccomp, tun_ioctls
from sepconnect.worker import sandbox

pytestmark = pytest.mark.skipif(not seccomp.available(), reason="no libseccomp.so.2")

CHILD = """
import errno, fcntl, mmap, os, socket
from sepconnect.process import privileges, seccomp, tun_ioctls
from sepconnect.worker import sandbox

def attempt(action):
    try:
        action()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "allowed"

rw = mmap.PROT_READ | mmap.PROT_WRITE
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # before the filter: none after
privileges.prctl(privileges.PR_SET_NO_NEW_PRIVS, 1)
seccomp.load(seccomp.KILL_PROCESS, [
    *sandbox.seccomp_rules(os.getpid()),
    seccomp.Rule(seccomp.ALLOW, "no_such_system_call"),  # skipped, not an error
])
print(attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()))
print(attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()))
print(attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).close()))
print(attempt(lambda: mmap.mmap(-1, 4096, prot=rw).close()))
print(attempt(lambda: mmap.mmap(-1, 4096, prot=rw | mmap.PROT_EXEC).close()))
print(attempt(lambda: fcntl.ioctl(s.fileno(), tun_ioctls.TUNSETIFF, bytes(40))))
print(attempt(lambda: fcntl.fcntl(s.fileno(), fcntl.F_SETOWN, os.getpid())), flush=True)
os.fork()
print("survived")
"""


def test_a_loaded_filter_does_what_its_rules_say() -> None:
    """The worker's rules through the builder, in a child that has only them."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHILD], capture_output=True, text=True, check=False
    )
    assert result.returncode == -signal.SIGSYS, result.stderr
    assert result.stdout.split() == [
        "allowed",
        "EAFNOSUPPORT",
        "EAFNOSUPPORT",
        "allowed",
        "EACCES",
        "ENOTTY",
        "EINVAL",
    ]


def test_only_is_an_allow_list_with_a_refusal() -> None:
    rules = list(seccomp.only("ioctl", 1, (5, 7), 25))
    assert rules == [
        seccomp.Rule(seccomp.ALLOW, "ioctl", (seccomp.Arg(1, seccomp.EQ, 5),)),
        seccomp.Rule(seccomp.ALLOW, "ioctl", (seccomp.Arg(1, seccomp.EQ, 7),)),
        seccomp.Rule(seccomp.errno_action(25), "ioctl", (seccomp.Arg(1, seccomp.GE, 0),)),
    ]


def _pfc(f: seccomp.Filter) -> str:
    with tempfile.TemporaryFile() as out:
        f.export_pfc(out.fileno())
        out.seek(0)
        return out.read().decode()


def test_the_helpers_filter_builds() -> None:
    """build() compiles the helper's rules with its default action: the same BPF as a
    filter of them, whose pseudo code shows the rules."""
    with seccomp.Filter(helper_seccomp.DEFAULT, helper_seccomp.rules()) as f:
        pfc = _pfc(f)
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out.fileno())
            out.seek(0)
            assert helper_seccomp.build() == out.read()
    assert "action ERRNO(1);" in pfc  # the default: EPERM
    assert 'syscall "ioctl"' in pfc
    assert 'syscall "ptrace"' in pfc
    assert "action KILL_PROCESS;" in pfc


def test_the_workers_filter_builds() -> None:
    with sandbox.build_seccomp_filter(os.getpid()) as f:
        pfc = _pfc(f)
    assert 'syscall "tgkill"' in pfc
    assert 'syscall "execve"' not in pfc  # not listed: the default action kills it


def test_only_the_helper_may_create_a_tun() -> None:
    assert tun_ioctls.TUNSETIFF in helper_seccomp.IOCTLS
    assert tun_ioctls.TUNSETIFF not in sandbox.IOCTLS
    assert tun_ioctls.TUNSETOFFLOAD in sandbox.IOCTLS
