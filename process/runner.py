"""Program runners: the only processes of sepconnect that execute programs.

The helper never forks or executes (its seccomp filter kills execve). What root's
options need a program for runs in a runner the helper starts at its start-up, before
its seccomp filter, and talks to over a SEQPACKET socketpair
(ipc/runner_messages.py): the root runner (rootrunner/: vpnc-script, resolvconf,
/etc/resolv.conf) and the nft runner (privhelper/nft.py: ``--fail-closed``).

Here: the helper's :class:`RunnerClient`; a runner's :func:`serve` loop, which answers
only the helper that started it (SCM_CREDENTIALS: its parent's pid and the helper's
uid); and :func:`run_program`, the one place a program is executed: an argv built by
the runner, never a shell, a fixed environment, stdin from the request or /dev/null,
output to the helper's stderr, :data:`TIMEOUT` seconds, then its process group is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Final

from sepconnect.ipc.runner_messages import REPLIES, Ran
from sepconnect.ipc.wire import Channel, Codec, Message, PeerClosed, WireError, socketpair
from sepconnect.process import programs

TIMEOUT: Final = 60.0
SAFE_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run_program(argv: list[str], env: dict[str, str], stdin: str | None) -> Ran:
    """Run ``argv`` (``PATH`` is :data:`SAFE_PATH`) and wait for it, at most :data:`TIMEOUT`."""
    try:
        proc = subprocess.Popen(
            argv,
            env={**env, "PATH": SAFE_PATH},
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),
            stderr=sys.stderr.fileno(),
            cwd="/",
            close_fds=True,
            process_group=0,
        )
    except OSError as exc:
        return Ran(status=127, note=f"cannot execute {argv[0]}: {exc.strerror}"[:200])
    try:
        proc.communicate(None if stdin is None else stdin.encode(), timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return Ran(status=-9, note=f"{argv[0]}: killed after {TIMEOUT:g} s")
    status = max(-64, min(255, proc.returncode))
    return Ran(status=status, note="" if status == 0 else f"{argv[0]} exited with {status}"[:200])


def runner_channel(fd: int, requests: Codec) -> Channel:
    """A runner's end of its channel (fd ``fd``, inherited from the helper)."""
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    channel = Channel(sock, requests, send_codec=REPLIES)
    channel.pass_credentials()
    return channel


def serve(channel: Channel, handle: Callable[[Message], Ran], peer_uid: int) -> int:
    """Answer the helper (our parent, with ``peer_uid``) until it closes the channel.

    Returns 0 at the end of the channel, 1 on anything else (a bad message, a stranger).
    """
    parent = os.getppid()
    while True:
        try:
            msg, _ = channel.recv()
        except PeerClosed:
            return 0
        except (WireError, OSError):
            return 1
        sender = channel.last_sender
        if sender is None or sender[0] != parent or sender[1] != peer_uid:
            return 1  # only the helper that started us may ask
        channel.send(handle(msg))


class RunnerClient:
    """The helper's end: start a runner program (before the seccomp filter) and ask it."""

    def __init__(
        self,
        program: str,
        module: str,
        args: Sequence[str],
        requests: Codec,
        peer_uid: int,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.proc: subprocess.Popen[bytes] | None
        ours, theirs = socketpair()
        argv = [*programs.program(program, module), "--fd", str(theirs.fileno())]
        argv += ["--peer-uid", str(peer_uid), *args]
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=(theirs.fileno(), *pass_fds),
                stdin=subprocess.DEVNULL,
                close_fds=True,
                env=programs.child_environment(),
            )
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.channel = Channel(ours, REPLIES, send_codec=requests)
        self.channel.pass_credentials()

    @classmethod
    def adopt(cls, requests: Codec, fd: int, pid: int) -> RunnerClient:
        """The client of runner ``pid`` that this process started before it executed its
        serving stage (privhelper/serve.py): our end of its channel is ``fd``."""
        client = cls.__new__(cls)
        client.proc, client.pid = None, pid
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        client.channel = Channel(sock, REPLIES, send_codec=requests)
        client.channel.pass_credentials()
        return client

    def call(self, msg: Message) -> Ran:
        """Send one request and wait for its answer (the runner enforces the timeout).

        A request the runner's schema would refuse is not sent: the runner treats one as
        a protocol violation and exits, and every later run (``disconnect``) would fail."""
        codec = self.channel.send_codec
        try:
            codec.decode_untrusted(codec.encode(msg))
        except WireError as exc:
            return Ran(status=126, note=f"not run: {exc}"[:200])
        try:
            self.channel.send(msg)
            reply, _ = self.channel.recv()
        except (OSError, WireError) as exc:
            return Ran(status=127, note=f"the runner is gone ({exc})"[:200])
        if not isinstance(reply, Ran):  # pragma: no cover - the codec allows nothing else
            return Ran(status=127, note="unexpected reply from the runner")
        return reply

    def close(self) -> None:
        """Close our end: the runner finishes (it undoes what it still holds) and exits.

        The helper's seccomp filter denies wait4(2) (EPERM), so the runner may not be
        reaped here; it exits by itself and is reaped by whoever inherits it.
        """
        self.channel.sock.close()
        if self.proc is None:  # adopted: not waitable under the filter either
            return
        try:
            self.proc.wait(TIMEOUT + 5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.returncode = -1  # not waitable from here; see above
