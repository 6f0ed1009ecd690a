"""The supervisor: unprivileged; runs the worker and mediates everything it asks of the helper.

It is the process the user started, after the launcher dropped root. It owns
the session's lifecycle: spawn the worker, turn the worker's tunnel report into
the helper's NetConfig (re-validated), hand the tun fd on, and end the session
on a signal or a failure, leaving nothing installed behind.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from sepconnect.exitcodes import FAILURE_KINDS, ExitCode
from sepconnect.privhelper.client import HelperClient, HelperRefused
from sepconnect.privhelper.wire import Channel, PeerClosed, WireError, socketpair
from sepconnect.supervisor.netconfig import BadTunnelConfig, desired_net
from sepconnect.supervisor.schema import (
    FD_TO_WORKER,
    FROM_WORKER,
    TO_WORKER,
    Failed,
    Start,
    Stop,
    Stopped,
    TunHandoff,
    TunnelUp,
)

_STOP_GRACE = 5.0  # seconds a worker gets to log off before it is killed


def log(text: str) -> None:
    print(f"sepconnect: {text}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class _Tun:
    ifname: str
    ifindex: int
    fd: int


class Supervisor:
    def __init__(self, helper: HelperClient, helper_proc_pid: int, start: Start) -> None:
        self.helper = helper
        self.helper_pid = helper_proc_pid
        self.start = start
        self.tun: _Tun | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.connected = False
        self.signals: list[int] = []

    # -- worker --------------------------------------------------------------------------

    def _spawn_worker(self) -> Channel:
        ours, theirs = socketpair()
        try:
            self.worker = subprocess.Popen(
                [sys.executable, "-I", "-m", "sepconnect.worker", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                process_group=0,
                close_fds=True,
            )
        finally:
            theirs.close()
        channel = Channel(ours, FROM_WORKER, send_codec=TO_WORKER, send_fd_ops=FD_TO_WORKER)
        channel.send(self.start)
        return channel

    def _stop_worker(self, *, logoff: bool) -> None:
        """Ask the worker to end the session, then make sure it is gone."""
        worker, channel = self.worker, self.channel
        if worker is None:
            return
        if channel is not None and self.connected and worker.poll() is None:
            try:
                channel.send(Stop(logoff=logoff))
                deadline = time.monotonic() + _STOP_GRACE
                while time.monotonic() < deadline:
                    ready = selectors.DefaultSelector()
                    ready.register(channel.fileno(), selectors.EVENT_READ)
                    events = ready.select(max(0.0, deadline - time.monotonic()))
                    ready.close()
                    if not events:
                        break
                    msg, _ = channel.recv()
                    if isinstance(msg, Stopped):
                        log(f"session closed ({msg.tx_bytes} bytes sent, {msg.rx_bytes} received)")
                        break
            except (OSError, WireError):
                pass  # the worker is going away anyway; it is reaped below
        if worker.poll() is None and not self.connected:
            worker.terminate()  # still authenticating, or already failed: nothing to log off
        try:
            worker.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        if channel is not None:
            channel.sock.close()
        self.worker = None
        self.channel = None

    # -- tunnel --------------------------------------------------------------------------

    def _on_tunnel_up(self, up: TunnelUp) -> None:
        assert self.channel is not None
        net = desired_net(up)
        for note in net.notes:
            log(note)
        if self.tun is None:
            ifname, ifindex, fd = self.helper.create_tun(net.mtu)
            self.tun = _Tun(ifname, ifindex, fd)
        self.helper.net_config(
            mtu=net.mtu,
            ipv4=net.ipv4,
            ipv6=net.ipv6,
            routes=net.routes,
            exclude=net.exclude,
            gateway=net.gateway,
        )
        self.channel.send(TunHandoff(ifname=self.tun.ifname), self.tun.fd)
        self.connected = True
        addresses = ", ".join(a for a in (net.ipv4, net.ipv6) if a)
        log(
            f"connected to {up.server} ({net.gateway}): {addresses} on {self.tun.ifname}, "
            f"MTU {net.mtu}, routes {' '.join(net.routes)}"
            + (f", excluded {' '.join(net.exclude)}" if net.exclude else "")
        )
        if up.banner:
            log(f"server banner: {up.banner}")

    # -- main loop -----------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)  # acted on in the loop, never here

    def run(self) -> ExitCode:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            return self._loop(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            wake_r.close()
            wake_w.close()

    def _loop(self, wake: socket.socket) -> ExitCode:
        try:
            self.helper.hello()
        except (HelperRefused, WireError, OSError) as exc:
            log(f"the privileged helper did not start: {exc}")
            return ExitCode.ERROR
        self.channel = self._spawn_worker()
        sel = selectors.DefaultSelector()
        sel.register(wake, selectors.EVENT_READ, "signal")
        sel.register(self.channel.fileno(), selectors.EVENT_READ, "worker")
        sel.register(self.helper.fileno(), selectors.EVENT_READ, "helper")
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "signal":
                        with contextlib.suppress(BlockingIOError):
                            wake.recv(64)
                    elif key.data == "helper":
                        log("the privileged helper exited unexpectedly")
                        return self._finish(ExitCode.ERROR, logoff=True)
                    elif key.data == "worker":
                        code = self._from_worker()
                        if code is not None:
                            return self._finish(code, logoff=True)
                if self.signals:
                    signum = self.signals.pop(0)
                    logoff = signum != signal.SIGHUP
                    log(
                        f"{signal.Signals(signum).name}: disconnecting"
                        + ("" if logoff else " (keeping the server session)")
                    )
                    return self._finish(ExitCode.OK, logoff=logoff)
        finally:
            sel.close()

    def _from_worker(self) -> ExitCode | None:
        assert self.channel is not None
        assert self.worker is not None
        try:
            msg, _ = self.channel.recv()
        except PeerClosed:
            status = self.worker.wait()
            log(f"the worker exited unexpectedly (status {status})")
            return ExitCode.ERROR
        except WireError as exc:
            log(f"the worker broke the IPC protocol ({exc}); stopping it")
            return ExitCode.ERROR
        if isinstance(msg, TunnelUp):
            try:
                self._on_tunnel_up(msg)
            except BadTunnelConfig as exc:
                log(f"unusable configuration from the server: {exc}")
                return ExitCode.PROTOCOL
            except HelperRefused as exc:
                log(f"the privileged helper refused the network configuration: {exc}")
                return ExitCode.HELPER_REFUSED
            return None
        if isinstance(msg, Failed):
            log(msg.message)
            self.connected = False  # the worker exits on its own after Failed
            return FAILURE_KINDS[msg.kind]
        log(f"unexpected {msg.op} from the worker")
        return ExitCode.ERROR

    def _finish(self, code: ExitCode, *, logoff: bool) -> ExitCode:
        self._stop_worker(logoff=logoff)
        try:
            self.helper.teardown()
        except (HelperRefused, WireError, OSError) as exc:
            log(f"helper teardown: {exc}")
            if code == ExitCode.OK:
                code = ExitCode.ERROR
        if self.tun is not None:
            os.close(self.tun.fd)
            self.tun = None
        return code
