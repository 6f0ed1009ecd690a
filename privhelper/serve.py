"""The privileged helper's serving stage: the request loop, for the session's whole life.

Executed by the start stage (main.py) in the same process, never by anyone else, as
``sepconnect-privhelper-serve --settings-fd N`` (the installed program: SELinux keeps it
in the helper's domain) or ``python3 -I -m sepconnect.privhelper.serve ...``. It arrives as the
helper's uid with CAP_NET_ADMIN (ambient across the exec), no_new_privs and Landlock
already in force. It reads fd N (a line of JSON settings the start stage validated,
then the compiled seccomp filter), keeps CAP_NET_ADMIN alone (nothing inheritable or
ambient), opens its netlink socket and loads the filter: from then on execve and fork
kill it. A process that holds any other capability, or lacks CAP_NET_ADMIN, refuses to
serve. It answers the requests :data:`policy.POLICY` permits, one at a time, and on any
way out (Teardown, the supervisor going away, SIGTERM, a protocol violation) removes
exactly what it installed before exiting.

Single-threaded; the SIGTERM handler does nothing (its byte on the wakeup fd ends the loop
between requests). Exit status: 0 clean, 1 protocol violation or internal error. What
only options and tests need at the start (the runners, crash recovery, the self-test) is
privhelper/serve_options.py, loaded only then.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import select
import signal
import socket
import sys
from typing import Any, Final

from sepconnect.ipc.helper_messages import Refused
from sepconnect.ipc.schema import plain
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper.channel import Channel, ChannelError, Closed
from sepconnect.privhelper.network import Helper, Netlink, Options
from sepconnect.privhelper.policy import Host, Monitor, Phase, ProtocolViolation
from sepconnect.process import capabilities, prctl
from sepconnect.process.libc import LIBC, errno_error
from sepconnect.process.title import set_title

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1

PROCESS_TITLE: Final = "sepconnect: privhelper"
SELFTEST_ENV: Final = "SEPCONNECT_TEST_HELPER_SELFTEST"  # test-only: test_helper_hostile.py
MAX_SETTINGS: Final = 1 << 20  # a few KiB, and the crashed sessions' state files
SERVING_STATUS: Final = {
    **dict.fromkeys(("CapEff", "CapPrm", "CapBnd"), f"{1 << capabilities.CAP_NET_ADMIN:016x}"),
    **dict.fromkeys(("CapInh", "CapAmb"), f"{0:016x}"),
    "NoNewPrivs": "1",
}
"""What /proc/self/status must say before the serving stage serves: CAP_NET_ADMIN alone,
nothing inheritable or ambient, no_new_privs."""


def serve(
    channel: Channel,
    monitor: Monitor,
    helper: Host,
    audit: _audit.Audit,
    peer_uid: int,
    wakeup_fd: int,
) -> int:
    """Answer requests until the session ends or SIGTERM arrives (its number, a byte on
    ``wakeup_fd``: signal.set_wakeup_fd); return the exit status (the caller cleans up).
    Signal handlers do nothing else: a request is never cut short."""
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.register(wakeup_fd, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if wakeup_fd in ready and signal.SIGTERM in os.read(wakeup_fd, 64):
            audit.sender = None
            audit.record("sigterm", "info", "terminated: ending the session")
            return EXIT_OK
        if channel.fileno() in ready:
            status = _step(channel, monitor, helper, audit, peer_uid)
            if status is not None:
                return status


def _step(
    channel: Channel, monitor: Monitor, helper: Host, audit: _audit.Audit, peer_uid: int
) -> int | None:
    audit.sender = None
    try:
        msg = channel.recv()
    except Closed as exc:
        audit.record("peer_closed", "info", str(exc))
        return EXIT_OK
    except ChannelError as exc:
        audit.sender = channel.last_sender
        audit.record("(undecodable)", "fatal", f"protocol violation: {exc}")
        return EXIT_FATAL
    sender = audit.sender = channel.last_sender
    args: _audit.Args = plain(msg)
    if sender is None or sender[0] <= 0 or sender[1] != peer_uid:
        who = "no credentials" if sender is None else f"uid {sender[1]}"
        audit.record(msg.op, "fatal", f"sender has {who}, expected uid {peer_uid}", args)
        return EXIT_FATAL
    try:
        reply, fd = monitor.handle(helper, msg)
    except ProtocolViolation as exc:
        audit.record(msg.op, "fatal", f"protocol violation: {exc}", args)
        return EXIT_FATAL
    except Exception as exc:  # a bug of ours: fail closed
        audit.record(msg.op, "fatal", f"internal error: {type(exc).__name__}: {exc}", args)
        return EXIT_FATAL
    reason = reply.reason if isinstance(reply, Refused) else ""  # a refusal always has one
    audit.record(msg.op, "refused" if reason else "ok", reason, args)
    try:
        channel.send(reply, fd)
    except OSError as exc:
        audit.record("peer_closed", "info", f"supervisor went away ({exc.strerror})")
        return EXIT_OK
    finally:
        if fd is not None:
            os.close(fd)
    return EXIT_OK if monitor.phase is Phase.CLOSED else None


# ---------------------------------------------------------------------------
# Start of the serving stage


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_SYS_SECCOMP: Final = {"x86_64": 317, "aarch64": 277}
_SECCOMP_SET_MODE_FILTER: Final = 1
_SECCOMP_FILTER_FLAG_LOG: Final = 2


def load_filter(bpf: bytes) -> None:
    """Load the start stage's compiled filter (struct sock_filter[], 8 bytes each) for
    good, denied calls logged; needs no_new_privs (set before the exec, kept across it)."""
    number = _SYS_SECCOMP.get(os.uname().machine)  # no seccomp(2) wrapper in the os module
    if not bpf or len(bpf) % 8 or number is None:
        raise OSError(f"no seccomp filter from the start stage for {os.uname().machine}")
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.addressof(program))
    mode, flags = ctypes.c_uint(_SECCOMP_SET_MODE_FILTER), ctypes.c_uint(_SECCOMP_FILTER_FLAG_LOG)
    if LIBC.syscall(ctypes.c_long(number), mode, flags, ctypes.byref(fprog)) != 0:
        raise errno_error("seccomp")


def _read_settings(fd: int) -> tuple[dict[str, Any], bytes]:
    """The start stage's memfd: a line of JSON settings, then the compiled filter."""
    with open(fd, "rb") as memfd:
        data = memfd.read(MAX_SETTINGS + 1)
    line, _, bpf = data.partition(b"\n")
    settings = json.loads(line)
    if len(data) > MAX_SETTINGS or not isinstance(settings, dict):
        raise ValueError("the settings are not a map of at most 1 MiB")
    return settings, bpf


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--settings-fd":
        os.write(2, b"sepconnect.privhelper.serve: started only by sepconnect.privhelper\n")
        return 2
    settings, bpf = _read_settings(int(argv[1]))
    set_title(PROCESS_TITLE)  # our cmdline: the exec of a script leaves only the interpreter's
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)  # from now on, SIGTERM's byte
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # ends the loop (serve)
    capabilities.keep_only_capabilities(frozenset({capabilities.CAP_NET_ADMIN}))
    prctl.prctl(prctl.PR_SET_DUMPABLE, 0)  # the exec made us dumpable again
    journal_fd = settings["journal_fd"]
    journal = None if journal_fd is None else socket.socket(fileno=journal_fd)
    audit = _audit.Audit(settings["log_fd"], journal=journal)
    with open("/proc/self/status") as f:
        found = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    wrong = {key: found.get(key) for key in SERVING_STATUS if found.get(key) != SERVING_STATUS[key]}
    if wrong:
        audit.record("start", "fatal", f"not CAP_NET_ADMIN alone with no_new_privs: {wrong}")
        return EXIT_FATAL
    # The fds the start stage passed stay inheritable: this stage never executes a program
    # (no code here calls exec, and the filter kills execve; test_helper_has_no_shell_and_no_exec).
    channel = Channel(socket.socket(fileno=settings["fd"]))
    root = nft = None
    if settings["root"] is not None or settings["nft"] is not None:  # options only
        from sepconnect.privhelper.serve_options import adopt_runners

        root, nft = adopt_runners(settings)
    with Netlink() as netlink:
        # The netlink socket is open: from here on, only the allow-list. (The start stage
        # wrote the "start" record; without a filter from it, its "seccomp" said why.)
        try:
            load_filter(bpf)
        except OSError as exc:
            if not settings["allow_weak_sandbox"]:
                reason = f"cannot load the seccomp filter: {exc} (see --allow-weak-sandbox)"
                audit.record("start", "fatal", reason)
                return EXIT_FATAL
            audit.record("seccomp", "info", f"none (--allow-weak-sandbox): {exc}"[:200])
        if settings["stale"] or SELFTEST_ENV in os.environ:  # crashed sessions; a test
            from sepconnect.privhelper.serve_options import before_serving

            before_serving(settings, netlink, nft, audit, os.environ.get(SELFTEST_ENV))
        allowed = tuple(ipaddress.ip_network(p) for p in settings["options"]["allow_exclude"])
        options = Options(**{**settings["options"], "allow_exclude": allowed})
        if options.script is not None or options.fail_closed or options.dns_backend != "none":
            from sepconnect.privhelper.options_helper import OptionsHelper  # options only

            helper: Helper = OptionsHelper(netlink, options, audit, root, nft)
        else:
            helper = Helper(netlink, options, audit)
        status = EXIT_FATAL
        try:
            status = serve(channel, Monitor(), helper, audit, settings["peer_uid"], wakeup_r)
        finally:
            audit.sender = None
            try:
                helper.cleanup()
            finally:
                channel.sock.close()
                audit.record("exit", "info", f"exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
