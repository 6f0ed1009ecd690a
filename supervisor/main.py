"""The supervisor: unprivileged; runs the worker and mediates everything it asks of the helper.

It is the process the user started, after the launcher dropped root, and it owns
the session's lifecycle:

- spawn a worker, turn its tunnel report into the helper's NetConfig
  (re-validated), and hand it the tun fd the helper keeps for the whole session;
- when a worker dies or loses the server, start another that resumes the
  session with the cookie — the tun, its addresses and routes stay put, and the
  helper is asked for changes only when the server's configuration changed;
- rekey make-before-break: a second worker connects with the cookie, then gets
  the tun, then the first one is dismissed without logging off;
- answer the control socket, talk to systemd, and on a signal or a final
  failure end everything in order, leaving nothing installed behind.

Single-threaded: one selector loop; signal handlers only record the signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from sepconnect.ipc.helper_messages import LeftOut
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.routing import UnusableConfig, routing_policy
from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.ipc.worker_messages import (
    FD_TO_WORKER,
    FROM_WORKER,
    TO_WORKER,
    Failed,
    FailureKind,
    Hold,
    QueryStatus,
    Start,
    Stop,
    Stopped,
    TunHandoff,
    TunnelUp,
    WorkerStatus,
)
from sepconnect.process import programs
from sepconnect.process.exitcodes import FAILURE_KINDS, ExitCode
from sepconnect.supervisor import audit
from sepconnect.supervisor.control import (
    ControlError,
    ControlServer,
    authorized,
    parse_request_untrusted,
    reply,
)
from sepconnect.supervisor.helper_client import HelperClient, HelperRefused
from sepconnect.supervisor.notify import Notifier
from sepconnect.supervisor.policy import Action, RecoveryPolicy

_STOP_GRACE = 5.0  # seconds a dismissed worker gets to close before it is killed
_STATUS_WAIT = 1.0  # seconds a control `status` waits for the worker's counters

VERBOSITY = [0]


def log(text: str) -> None:
    print(f"sepconnect: {text}", file=sys.stderr, flush=True)


class State(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTING = "disconnecting"


@dataclass(slots=True)
class _Tun:
    ifname: str
    ifindex: int
    fd: int


@dataclass(eq=False, slots=True)
class Worker:
    gen: int
    proc: subprocess.Popen[bytes]
    channel: Channel
    started: float
    purpose: str  # "login", "resume", "rekey"
    failure: Failed | None = None
    status: WorkerStatus | None = None
    announced: tuple[str, str] | None = None  # the data channel last logged: (channel, state)
    carrying: bool = False  # has the tun and carries traffic
    dismissed_at: float | None = None


@dataclass(slots=True)
class Counters:
    """Traffic of dismissed workers, so totals survive restarts."""

    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    rx_packets: int = 0

    def add(self, status: WorkerStatus | None) -> None:
        if status is not None:
            self.tx_bytes += status.tx_bytes
            self.rx_bytes += status.rx_bytes
            self.tx_packets += status.tx_packets
            self.rx_packets += status.rx_packets


@dataclass(slots=True)
class Options:
    always_on: bool = False
    reconnect_timeout: float = 300.0
    service_uid: int = 65534
    control_path: str | None = None
    control_gid: int | None = None
    allow_weak_sandbox: bool = False
    tun_offload: bool = True  # create the tun with a virtio-net header (worker offloads)


@dataclass(slots=True)
class _PendingStatus:
    conn: socket.socket
    deadline: float


@dataclass(slots=True)
class _Session:
    """What the supervisor knows of the server session; the cookie never leaves memory."""

    cookie: str | None = None
    server: str = ""
    gateway: str = ""
    net: NetworkConfig | None = None
    left_out: tuple[LeftOut, ...] = ()  # excludes the helper could not route outside
    rekey_at: float | None = None
    rekey_interval: float | None = None
    established: bool = False
    connected_since: float | None = None
    down_since: float | None = None
    attempts: int = 0
    restarts: int = 0
    last_rekey: float | None = None
    last_error: str | None = None
    retry_at: float | None = None
    retry_action: Action | None = None
    banner_shown: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    def __init__(
        self,
        helper: HelperClient,
        start: Start,
        options: Options | None = None,
        first_worker: tuple[subprocess.Popen[bytes], socket.socket] | None = None,
    ) -> None:
        self.helper = helper
        # A worker already started (by the launcher, to overlap its start-up with ours):
        # the first _spawn takes it instead of starting one.
        self.first_worker = first_worker
        self.start = start
        self.options = options or Options()
        self.policy = RecoveryPolicy(
            can_log_in=bool(start.passwords),
            always_on=self.options.always_on,
            reconnect_timeout=self.options.reconnect_timeout,
        )
        self.state = State.CONNECTING
        self.session = _Session()
        self.tun: _Tun | None = None
        self.workers: list[Worker] = []
        self.next_gen = 1
        self.counters = Counters()
        self.signals: list[int] = []
        self.started_at = time.time()
        self.notifier = Notifier()
        self.control: ControlServer | None = None
        self.pending_status: list[_PendingStatus] = []
        self.watchdog_at: float | None = None
        self.sel = selectors.DefaultSelector()

    # -- workers ---------------------------------------------------------------------------

    @property
    def carrier(self) -> Worker | None:
        return next((w for w in self.workers if w.carrying and w.dismissed_at is None), None)

    @property
    def candidate(self) -> Worker | None:
        """A worker still connecting (first login, resume, or rekey)."""
        return next((w for w in self.workers if not w.carrying and w.dismissed_at is None), None)

    def _spawn(self, purpose: str, *, cookie: str | None) -> Worker:
        if self.first_worker is not None:
            # started by the launcher before it imported us (cli.connect)
            (proc, ours), self.first_worker = self.first_worker, None
        else:
            proc, ours = programs.start_worker(allow_weak_sandbox=self.options.allow_weak_sandbox)
        channel = Channel(ours, FROM_WORKER, send_codec=TO_WORKER, send_fd_ops=FD_TO_WORKER)
        worker = Worker(self.next_gen, proc, channel, time.monotonic(), purpose)
        self.next_gen += 1
        self.workers.append(worker)
        self.sel.register(channel.fileno(), selectors.EVENT_READ, ("worker", worker))
        start = self.start
        if cookie is not None:  # it resumes the session: it never needs the passwords
            start = dataclasses.replace(start, cookie=cookie, passwords=())
        channel.send(start)
        if VERBOSITY[0]:
            log(f"worker {worker.gen} started ({purpose}, pid {proc.pid})")
        return worker

    def _dismiss(self, worker: Worker, *, logoff: bool) -> None:
        """Ask a worker to close its connection; it is reaped when it exits."""
        if worker.dismissed_at is not None:
            return
        worker.dismissed_at = time.monotonic()
        was_carrying = worker.carrying
        worker.carrying = False
        if was_carrying:
            with contextlib.suppress(OSError, WireError):
                worker.channel.send(Stop(logoff=logoff))
        elif worker.proc.poll() is None:
            worker.proc.terminate()  # still logging in: nothing to close politely

    def _reap(self, worker: Worker) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(worker.channel.fileno())
        worker.channel.sock.close()
        if worker.proc.poll() is None:
            try:
                worker.proc.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
        self.counters.add(worker.status)
        worker.status = None
        self.workers.remove(worker)

    # -- tunnel ----------------------------------------------------------------------------

    def _on_tunnel_up(self, worker: Worker, up: TunnelUp) -> ExitCode | None:
        try:
            net = self._checked_net(up)
        except UnusableConfig as exc:
            return self._failed(worker, "protocol", f"unusable configuration: {exc}")
        try:
            if self.tun is None:
                ifname, ifindex, fd = self.helper.create_tun(
                    net.mtu, vnet_hdr=self.options.tun_offload
                )
                self.tun = _Tun(ifname, ifindex, fd)
            if self._needs_apply(net):
                changed = net != self.session.net
                self._apply(net)
                if self.session.net is not None and changed:
                    log("the server changed the configuration; applied the difference")
        except HelperRefused as exc:
            log(f"the privileged helper refused the network configuration: {exc}")
            return self._finish(ExitCode.HELPER_REFUSED, logoff=True)
        except (WireError, OSError) as exc:  # the helper is gone or broke its protocol
            log(f"the privileged helper failed: {exc}")
            return self._finish(ExitCode.ERROR, logoff=True)
        self.session.net = net
        worker.channel.send(TunHandoff(ifname=self.tun.ifname), self.tun.fd)
        previous = self.carrier
        worker.carrying = True
        if previous is not None:
            self._dismiss(previous, logoff=False)
        self._connected(worker, up, net)
        return None

    def _checked_net(self, up: TunnelUp) -> NetworkConfig:
        """The routing policy again over the worker's report (it is not trusted)."""
        net, notes = routing_policy(up.net)
        for note in notes:
            log(note)
        return net

    def _apply(self, net: NetworkConfig) -> None:
        """The helper's one declarative request; it changes only what differs."""
        left_out = self.helper.net_config(net)
        if left_out != self.session.left_out:
            for item in left_out:
                log(f"exclude {item.prefix} left out, it stays in the tunnel: {item.reason}")
        self.session.left_out = left_out

    def _needs_apply(self, net: NetworkConfig) -> bool:
        """A changed configuration, or excludes left out last time (a path may exist now)."""
        return net != self.session.net or bool(self.session.left_out)

    def _on_resumed_in_place(self, worker: Worker, up: TunnelUp) -> ExitCode | None:
        """The carrying worker lost its connection and made a new one itself, keeping
        the tun fd: only the configuration may need the helper, and only if it changed."""
        try:
            net = self._checked_net(up)
        except UnusableConfig as exc:
            return self._failed(worker, "protocol", f"unusable configuration: {exc}")
        if self._needs_apply(net):
            changed = net != self.session.net
            try:
                self._apply(net)
            except HelperRefused as exc:
                log(f"the privileged helper refused the network configuration: {exc}")
                return self._finish(ExitCode.HELPER_REFUSED, logoff=True)
            except (WireError, OSError) as exc:  # the helper is gone or broke its protocol
                log(f"the privileged helper failed: {exc}")
                return self._finish(ExitCode.ERROR, logoff=True)
            if changed:
                log("the server changed the configuration; applied the difference")
            self.session.net = net
        log(f"worker {worker.gen} reconnected to the server with the session cookie")
        worker.announced = None  # a new connection: its data channel is news again
        self._script_event("reconnect")
        self._connected(worker, up, net)
        return None

    def _connected(self, worker: Worker, up: TunnelUp, net: NetworkConfig) -> None:
        assert self.tun is not None
        s = self.session
        now = time.monotonic()
        first = not s.established
        s.cookie = up.cookie or s.cookie
        s.server, s.gateway = up.server, str(net.gateway)
        s.established = True
        s.attempts = 0
        s.retry_at = s.retry_action = None
        audit.event(
            "connect" if first else "reconnect",
            "ok",
            server=up.server,
            gateway=str(net.gateway),
            ifname=self.tun.ifname,
            ipv4=None if net.ipv4 is None else str(net.ipv4),
            ipv6=None if net.ipv6 is None else str(net.ipv6),
            purpose=worker.purpose,
        )
        if s.down_since is not None:
            log(f"session resumed after {now - s.down_since:.2f} s (worker {worker.gen})")
            self._script_event("reconnect")
        if worker.purpose == "rekey":
            s.last_rekey = time.time()
            log(f"rekeyed: worker {worker.gen} took over the tunnel")
        s.down_since = None
        if s.connected_since is None:
            s.connected_since = time.time()
        s.rekey_interval = (
            float(up.rekey_time)
            if up.rekey_method in ("ssl", "new-tunnel") and up.rekey_time
            else None
        )
        s.rekey_at = None if s.rekey_interval is None else now + s.rekey_interval
        self.state = State.CONNECTED
        if first:
            addresses = ", ".join(map(str, net.addresses))
            log(
                f"connected to {up.server} ({net.gateway}): {addresses} on {self.tun.ifname}, "
                f"MTU {net.mtu}, routes {' '.join(map(str, net.routes))}"
                + (f", excluded {' '.join(map(str, net.exclude))}" if net.exclude else "")
            )
            if net.banner:
                log(f"server banner: {net.banner}")
            self.notifier.notify(ready="1", status=f"connected to {up.server}")
        else:
            self.notifier.notify(status=f"connected to {up.server}")

    # -- failures and recovery -------------------------------------------------------------

    def _failed(self, worker: Worker, kind: FailureKind | None, message: str) -> ExitCode | None:
        """A worker ended (with a reason, or None if it just died): recover or give up."""
        if kind in ("auth_failed", "account_locked", "unknown_group", "cert_invalid"):
            audit.event("auth_failure", "refused", message[:500], kind=kind)
        carrying = worker.carrying
        self._dismiss(worker, logoff=False)
        if worker.purpose == "rekey" and self.carrier is not None:
            log(f"rekey failed ({message}); keeping the current connection")
            s = self.session
            s.rekey_at = time.monotonic() + 60.0 if s.rekey_interval else None
            return None
        if self.state == State.DISCONNECTING:
            return None
        s = self.session
        now = time.monotonic()
        rekeying = self.candidate
        if carrying and rekeying is not None and rekeying.purpose == "rekey":
            # The server drops the old connection as soon as the new one presents
            # the cookie: expected, and the new worker takes over the tun next.
            if VERBOSITY[0]:
                log(f"worker {worker.gen}: {message} (replaced by the rekey)")
            s.down_since = now
            self.state = State.RECONNECTING
            return None
        if carrying or s.down_since is None:
            s.down_since = now
        if carrying and s.established:
            s.attempts = 0
        s.last_error = message
        decision = self.policy.after_failure(
            kind, attempt=s.attempts, outage=now - s.down_since, established=s.established
        )
        if decision.action == Action.GIVE_UP:
            log(message)
            code = FAILURE_KINDS.get(kind or "error", ExitCode.ERROR)
            if s.established and kind in (None, "connection_lost", "unreachable", "error"):
                log(f"giving up: {decision.reason}")
                code = ExitCode.SERVER_DISCONNECTED
            return self._finish(code, logoff=kind != "terminated")
        s.attempts += 1
        s.restarts += 1
        self.state = State.RECONNECTING
        when = "now" if decision.delay == 0 else f"in {decision.delay:.1f} s"
        log(f"{message}; {decision.reason}: reconnecting {when}")
        self.notifier.notify(status=f"reconnecting: {decision.reason}")
        s.retry_at = now + decision.delay
        s.retry_action = decision.action
        return None

    def _script_event(self, reason: Literal["attempt-reconnect", "reconnect"]) -> None:
        """The helper's vpnc-script (--script) hears of reconnects; a no-op without one."""
        try:
            self.helper.script_event(reason)
        except (HelperRefused, WireError, OSError) as exc:
            log(f"vpnc-script {reason}: {exc}")

    def _retry(self) -> None:
        s = self.session
        action, s.retry_at, s.retry_action = s.retry_action, None, None
        if self.candidate is not None:
            return
        if self.tun is not None:
            self._script_event("attempt-reconnect")
        if action == Action.LOG_IN:
            s.cookie = None
            self._spawn("login", cookie=None)
        else:
            self._spawn("resume", cookie=s.cookie)

    def _rekey(self, reason: str) -> None:
        s = self.session
        s.rekey_at = None if s.rekey_interval is None else time.monotonic() + s.rekey_interval
        if self.candidate is not None or self.carrier is None or s.cookie is None:
            return
        log(f"rekey ({reason}): connecting a new tunnel before dropping the old one")
        with contextlib.suppress(OSError, WireError):
            self.carrier.channel.send(Hold())
        self._spawn("rekey", cookie=s.cookie)

    def _reconnect(self, reason: str) -> None:
        carrier = self.carrier
        if carrier is None or self.session.cookie is None:
            return
        log(f"reconnecting ({reason})")
        self._dismiss(carrier, logoff=False)
        s = self.session
        s.down_since = time.monotonic()
        s.restarts += 1
        self.state = State.RECONNECTING
        self._script_event("attempt-reconnect")
        self._spawn("resume", cookie=s.cookie)

    # -- messages from workers -------------------------------------------------------------

    def _from_worker(self, worker: Worker) -> ExitCode | None:
        try:
            msg, _ = worker.channel.recv()
        except PeerClosed:
            return self._worker_gone(worker)
        except WireError as exc:
            log(f"worker {worker.gen} broke the IPC protocol ({exc}); stopping it")
            worker.proc.kill()
            return self._worker_gone(worker)
        if worker.dismissed_at is not None:
            if isinstance(msg, (Stopped, WorkerStatus)):
                worker.status = msg if isinstance(msg, WorkerStatus) else worker.status
            return None
        if isinstance(msg, TunnelUp):
            if worker.carrying:
                return self._on_resumed_in_place(worker, msg)
            return self._on_tunnel_up(worker, msg)
        if isinstance(msg, Failed):
            worker.failure = msg
            return self._failed(worker, msg.kind, msg.message)
        if isinstance(msg, WorkerStatus):
            worker.status = msg
            if worker.announced != (msg.channel, msg.dtls_state):
                worker.announced = (msg.channel, msg.dtls_state)
                self._log_channel(msg)
            self._answer_status()
            return None
        log(f"unexpected {msg.op} from worker {worker.gen}")
        worker.proc.kill()
        return self._worker_gone(worker)

    def _log_channel(self, status: WorkerStatus) -> None:
        if status.channel == "dtls":
            log(f"data channel: DTLS ({status.dtls_cipher})")
        elif status.dtls_state not in ("disabled", ""):
            log(f"data channel: TLS ({status.tls_cipher}); DTLS {status.dtls_state}")

    def _worker_gone(self, worker: Worker) -> ExitCode | None:
        dismissed = worker.dismissed_at is not None
        self._reap(worker)
        if dismissed or worker.failure is not None:
            return None
        status = worker.proc.returncode
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"status {status}"
        audit.event("worker_crash", "info", how, worker=worker.gen, status=status)
        return self._failed(worker, None, f"worker {worker.gen} exited unexpectedly ({how})")

    # -- control socket --------------------------------------------------------------------

    def _on_control(self) -> ExitCode | None:
        assert self.control is not None
        accepted = self.control.accept()
        if accepted is None:
            return None
        conn, peer = accepted
        if not authorized(
            peer, service_uid=self.options.service_uid, control_gid=self.options.control_gid
        ):
            log(f"control socket: refused pid {peer.pid} uid {peer.uid} gid {peer.gid}")
            audit.event(
                "control_refused",
                "refused",
                "only root and the control group may use it",
                peer_pid=peer.pid,
                peer_uid=peer.uid,
                peer_gid=peer.gid,
            )
            # Drain the request if it is there (without waiting for it): closing on
            # unread data would reset the connection before the peer reads our answer.
            with contextlib.suppress(OSError):
                conn.recv(4096, socket.MSG_DONTWAIT)
            reply(conn, {"ok": False, "error": "permission denied"})
            return None
        try:
            command = parse_request_untrusted(conn.recv(4096))
        except (ValueError, OSError) as exc:
            reply(conn, {"ok": False, "error": str(exc)})
            return None
        if command == "status":
            carrier = self.carrier
            if carrier is None:
                reply(conn, {"ok": True, "status": self.status()})
                return None
            self.pending_status.append(_PendingStatus(conn, time.monotonic() + _STATUS_WAIT))
            with contextlib.suppress(OSError, WireError):
                carrier.channel.send(QueryStatus())
            return None
        if command == "disconnect":
            reply(conn, {"ok": True})
            log(f"disconnect requested over the control socket by uid {peer.uid}")
            return self._finish(ExitCode.OK, logoff=True)
        if command == "rekey":
            if self.carrier is None:
                reply(conn, {"ok": False, "error": f"not connected ({self.state.value})"})
                return None
            self._rekey(f"requested by uid {peer.uid}")
        elif command == "reconnect":
            if self.carrier is None:
                reply(conn, {"ok": False, "error": f"not connected ({self.state.value})"})
                return None
            self._reconnect(f"requested by uid {peer.uid}")
        reply(conn, {"ok": True})
        return None

    def _answer_status(self, *, expired_only: bool = False) -> None:
        now = time.monotonic()
        keep: list[_PendingStatus] = []
        for pending in self.pending_status:
            if expired_only and pending.deadline > now:
                keep.append(pending)
            else:
                reply(pending.conn, {"ok": True, "status": self.status()})
        self.pending_status = keep

    def status(self) -> dict[str, Any]:
        s, net, tun = self.session, self.session.net, self.tun
        carrier = self.carrier
        live = carrier.status if carrier is not None else None
        total = Counters(**{k: getattr(self.counters, k) for k in Counters.__slots__})
        for worker in self.workers:
            total.add(worker.status)
        return {
            "state": self.state.value,
            "server": s.server,
            "gateway": s.gateway,
            "interface": tun.ifname if tun else None,
            "ifindex": tun.ifindex if tun else None,
            "mtu": net.mtu if net else None,
            "addresses": [str(a) for a in net.addresses] if net else [],
            "routes": [str(r) for r in net.routes] if net else [],
            "excluded_routes": [
                str(r) for r in net.exclude if r not in {i.prefix for i in s.left_out}
            ]
            if net
            else [],
            "left_out_excludes": [
                {"prefix": str(item.prefix), "reason": item.reason} for item in s.left_out
            ],
            "channel": live.channel if live else None,
            "tls_cipher": live.tls_cipher if live else None,
            "dtls_cipher": live.dtls_cipher if live else None,
            "dtls_state": live.dtls_state if live else None,
            "tx_bytes": total.tx_bytes,
            "rx_bytes": total.rx_bytes,
            "tx_packets": total.tx_packets,
            "rx_packets": total.rx_packets,
            "uptime": round(time.time() - s.connected_since, 3) if s.connected_since else 0.0,
            "connected_since": s.connected_since,
            "worker_pid": carrier.proc.pid if carrier else None,
            "worker_restarts": s.restarts,
            "last_rekey": s.last_rekey,
            "next_rekey_in": (
                round(s.rekey_at - time.monotonic(), 1) if s.rekey_at is not None else None
            ),
            "last_error": s.last_error,
            "supervisor_pid": os.getpid(),
        }

    # -- main loop -------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)  # acted on in the loop, never here

    def run(self) -> ExitCode:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGHUP,
            signal.SIGUSR1,
            signal.SIGUSR2,
        ):
            signal.signal(signum, self._on_signal)
        try:
            return self._main(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            wake_r.close()
            wake_w.close()
            self.sel.close()
            self.notifier.close()

    def _main(self, wake: socket.socket) -> ExitCode:
        # The worker starts first: its start-up (imports, TLS, login: ~0.15 s of the
        # connect time) overlaps the helper's; nothing it reports is read before the
        # helper has answered hello (docs/performance.md).
        self._spawn("login", cookie=None)
        try:
            self.helper.hello()
        except (HelperRefused, WireError, OSError) as exc:
            log(f"the privileged helper did not start: {exc}")
            for worker in list(self.workers):
                self._dismiss(worker, logoff=False)
                self._reap(worker)
            return ExitCode.ERROR
        if self.options.control_path:
            try:
                self.control = ControlServer(
                    self.options.control_path,
                    service_uid=self.options.service_uid,
                    control_gid=self.options.control_gid,
                )
            except (OSError, ControlError) as exc:
                log(str(exc))
                return self._finish(ExitCode.USAGE, logoff=False)
            self.sel.register(self.control.fileno(), selectors.EVENT_READ, ("control", None))
        self.sel.register(wake, selectors.EVENT_READ, ("signal", None))
        self.sel.register(self.helper.fileno(), selectors.EVENT_READ, ("helper", None))
        if self.notifier.watchdog_interval:
            self.watchdog_at = time.monotonic()
        while True:
            code = self._turn(wake)
            if code is not None:
                return code

    def _timeout(self) -> float | None:
        deadlines = [
            t
            for t in (
                self.session.retry_at,
                self.session.rekey_at,
                self.watchdog_at,
                *(p.deadline for p in self.pending_status),
                *(w.dismissed_at + _STOP_GRACE for w in self.workers if w.dismissed_at),
            )
            if t is not None
        ]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _turn(self, wake: socket.socket) -> ExitCode | None:
        for key, _ in self.sel.select(self._timeout()):
            kind, worker = key.data
            code: ExitCode | None = None
            if kind == "signal":
                with contextlib.suppress(BlockingIOError):
                    wake.recv(64)
            elif kind == "helper":
                log("the privileged helper exited unexpectedly")
                return self._finish(ExitCode.ERROR, logoff=True)
            elif kind == "control":
                code = self._on_control()
            elif kind == "worker" and worker in self.workers:
                code = self._from_worker(worker)
            if code is not None:
                return code
        while self.signals:
            code = self._on_signal_number(self.signals.pop(0))
            if code is not None:
                return code
        return self._timers()

    def _on_signal_number(self, signum: int) -> ExitCode | None:
        if signum == signal.SIGUSR1:
            VERBOSITY[0] += 1
            log(f"verbosity {VERBOSITY[0]}")
            return None
        if signum == signal.SIGUSR2:
            self._reconnect("SIGUSR2")
            return None
        logoff = signum != signal.SIGHUP
        log(
            f"{signal.Signals(signum).name}: disconnecting"
            + ("" if logoff else " (keeping the server session)")
        )
        return self._finish(ExitCode.OK, logoff=logoff)

    def _timers(self) -> ExitCode | None:
        now = time.monotonic()
        s = self.session
        if s.retry_at is not None and s.retry_at <= now:
            self._retry()
        if s.rekey_at is not None and s.rekey_at <= now:
            self._rekey("rekey time reached")
        if self.watchdog_at is not None and self.watchdog_at <= now:
            self.notifier.notify(watchdog="1")
            assert self.notifier.watchdog_interval is not None
            self.watchdog_at = now + self.notifier.watchdog_interval
        for worker in list(self.workers):
            if worker.dismissed_at is not None and now - worker.dismissed_at > _STOP_GRACE:
                worker.proc.kill()
                self._reap(worker)
        if self.pending_status:
            self._answer_status(expired_only=True)
        return None

    def _finish(self, code: ExitCode, *, logoff: bool) -> ExitCode:
        """End the session: workers, then the helper's teardown; return the exit code."""
        audit.event("disconnect", "info", f"exit {code.name}", logoff=logoff)
        self.state = State.DISCONNECTING
        self.notifier.notify(stopping="1", status="disconnecting")
        for worker in list(self.workers):
            if worker.carrying:
                self._dismiss(worker, logoff=logoff)
                self._await_stopped(worker)
            else:
                self._dismiss(worker, logoff=False)
        for worker in list(self.workers):
            self._reap(worker)
        for pending in self.pending_status:
            reply(pending.conn, {"ok": False, "error": "disconnecting"})
        self.pending_status = []
        if self.control is not None:
            self.control.close()
            self.control = None
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

    def _await_stopped(self, worker: Worker) -> None:
        deadline = time.monotonic() + _STOP_GRACE
        probe = selectors.DefaultSelector()
        probe.register(worker.channel.fileno(), selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not probe.select(max(0.0, deadline - time.monotonic())):
                    return
                try:
                    msg, _ = worker.channel.recv()
                except (PeerClosed, WireError, OSError):
                    return
                if isinstance(msg, WorkerStatus):
                    worker.status = msg
                if isinstance(msg, Stopped):
                    log(f"session closed ({msg.tx_bytes} bytes sent, {msg.rx_bytes} received)")
                    return
        finally:
            probe.close()
