"""The supervisor's session machine, sans-I/O: events and ``now`` in, actions out.

Like the worker's protocol core (STYLE.md §1.5), it never reads a clock, touches a
file descriptor or starts a process. The I/O shell (supervisor/main.py) turns what
happens — a worker's message or exit, a helper's reply, a control request, a signal, a
timer — into an :data:`Event`, calls :meth:`Session.handle` with the current
monotonic time, and executes the :data:`Effect` list it gets back, in order. Actions
that ask the helper something (:class:`HelperHello`, :class:`CreateTun`,
:class:`ApplyConfig`, :class:`RunScript`, :class:`Teardown`) are answered by exactly one
helper event each (:class:`HelperDone`, :class:`TunCreated`, :class:`ConfigApplied`,
:class:`HelperRefusal`, :class:`HelperGone`), fed back before any other event;
:meth:`Session.get_timer` says when to feed :class:`Timer`.

The machine holds the whole session: its state (:class:`State`), each worker's phase
(:class:`Phase`), the cookie, the network configuration the helper has (checked again
here with the routing policy: the worker's report is not trusted) and the excludes it
left out, rekey and retry timers, the counters, and every recovery decision (through
supervisor/policy.py) — including whether a worker that lost its connection reconnects
in place or is replaced.

Two tables say what is handled where (anything missing is ignored, or for a worker's
message, a protocol violation that gets the worker killed): :data:`_TRANSITIONS`
(session state × event) and :data:`_ON_MESSAGE` (worker phase × message).
docs/architecture.md, "The supervisor", has the state table in prose.
"""

from __future__ import annotations

import enum
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from sepconnect.ipc.fields import IpAddress
from sepconnect.ipc.helper_messages import LeftOut
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.routing import UnusableConfig, routing_policy
from sepconnect.ipc.wire import Message
from sepconnect.ipc.worker_messages import (
    Failed,
    FailureKind,
    LoginAnswers,
    LoginForm,
    Lost,
    QueryStatus,
    Reconnect,
    Stop,
    Stopped,
    TunHandoff,
    TunnelUp,
    WorkerStatus,
)
from sepconnect.process.exitcodes import ExitCode
from sepconnect.supervisor.policy import HEALTHY_AFTER, Action, RecoveryPolicy

if TYPE_CHECKING:  # the journal module does I/O; only its type is wanted here
    from sepconnect.process.journal import Result

STOP_GRACE: Final = 5.0
"""Seconds a dismissed (or failed) worker gets to exit before it is killed."""
STATUS_WAIT: Final = 1.0
"""Seconds a control `status` waits for the carrying worker's counters."""
REKEY_RETRY: Final = 60.0
"""Seconds before another rekey after a failed one (with a rekey interval)."""

_AUTH_KINDS: Final = frozenset({"auth_failed", "account_locked", "unknown_group", "cert_invalid"})
_DTLS_NOT_NEWS: Final = frozenset({"disabled", "", "starting", "handshaking"})
"""DTLS states a TLS-only report is not logged for: off, or still being set up (a
worker's first report, e.g. the one that says it moved traffic, often comes then)."""

ScriptReason = Literal["attempt-reconnect", "reconnect"]
Purpose = Literal["login", "resume", "rekey"]


class State(enum.Enum):
    CONNECTING = "connecting"  # the first worker logs in; no session yet
    CONNECTED = "connected"  # a worker carries the tun
    RECONNECTING = "reconnecting"  # the session is being restored; the tun stays
    DISCONNECTING = "disconnecting"  # workers are stopping; then the helper's teardown
    CLOSED = "closed"  # Exit was emitted; nothing is handled any more


class Phase(enum.Enum):
    STARTING = "starting"  # spawned: logging in, or connecting with the cookie
    CONFIGURING = "configuring"  # reported its tunnel; the helper is being asked
    CARRYING = "carrying"  # has the tun and moves traffic
    RESUMING = "resuming"  # lost its connection, told to reconnect in place (keeps the tun)
    FAILED = "failed"  # reported Failed, or its configuration was unusable; exits next
    DISMISSED = "dismissed"  # told to stop, or terminated; exits next


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """The shell is ready: start the first worker and greet the helper."""


@dataclass(frozen=True, slots=True)
class Timer:
    """``now`` has reached :meth:`Session.get_timer`."""


@dataclass(frozen=True, slots=True)
class WorkerStarted:
    gen: int
    pid: int


@dataclass(frozen=True, slots=True)
class FromWorker:
    """A validated message from worker ``gen`` (LoginForm, TunnelUp, Failed, Lost,
    WorkerStatus, Stopped)."""

    gen: int
    message: Message


@dataclass(frozen=True, slots=True)
class WorkerBroke:
    """Worker ``gen`` broke the IPC protocol (undecodable message, stray fd)."""

    gen: int
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """Worker ``gen`` is gone and reaped; ``status`` as Popen.returncode (-N: signal N)."""

    gen: int
    status: int


@dataclass(frozen=True, slots=True)
class HelperDone:
    """The helper did what was asked (hello, script event, teardown)."""


@dataclass(frozen=True, slots=True)
class TunCreated:
    ifname: str
    ifindex: int


@dataclass(frozen=True, slots=True)
class ConfigApplied:
    """The helper has the configuration asked for, but for the excludes ``left_out``
    (the host has no path for them outside the tunnel: they stay in it)."""

    left_out: tuple[LeftOut, ...]


@dataclass(frozen=True, slots=True)
class HelperRefusal:
    """The helper refused the request (and changed nothing)."""

    reason: str


@dataclass(frozen=True, slots=True)
class HelperGone:
    """The helper's channel closed or broke: as the answer to a request (it failed, or
    broke its protocol), or seen by the shell's loop (its socket closed)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SpawnerFailed:
    """The worker spawner is gone (its channel closed or broke), runs under a forbidden
    uid, or refused to start a worker: no worker can be started or signalled any more,
    and those it ran die with it. As the answer to :class:`SpawnWorker`, that worker was
    never started."""

    reason: str


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """An authorized control request; ``wall`` is the wall clock (status times)."""

    request: int
    command: str
    uid: int
    wall: float


@dataclass(frozen=True, slots=True)
class ControlRefused:
    request: int
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class ControlMalformed:
    request: int
    error: str


@dataclass(frozen=True, slots=True)
class ControlUnavailable:
    """The control socket could not be opened."""

    reason: str


@dataclass(frozen=True, slots=True)
class SignalReceived:
    signum: signal.Signals


@dataclass(frozen=True, slots=True)
class FormAnswered:
    """The answers to the login form worker ``gen`` sent (:class:`AnswerForm`)."""

    gen: int
    answers: LoginAnswers = field(repr=False)


@dataclass(frozen=True, slots=True)
class FormUnanswerable:
    """Nothing answers a field of worker ``gen``'s login form (or a choice is not
    offered): its login ends before any answer is sent."""

    gen: int
    kind: FailureKind
    message: str


Event = (
    Begin
    | Timer
    | WorkerStarted
    | FromWorker
    | WorkerBroke
    | WorkerExited
    | HelperDone
    | TunCreated
    | ConfigApplied
    | HelperRefusal
    | HelperGone
    | SpawnerFailed
    | ControlCommand
    | ControlRefused
    | ControlMalformed
    | ControlUnavailable
    | SignalReceived
    | FormAnswered
    | FormUnanswerable
)

# -- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpawnWorker:
    """Start worker ``gen`` with the Start message (to resume, with this cookie; one
    without logs in, and its forms come as :class:`AnswerForm`); answer
    :class:`WorkerStarted`, or :class:`SpawnerFailed`."""

    gen: int
    purpose: Purpose
    cookie: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to worker ``gen`` (a TunHandoff carries the tun fd); a worker
    that is gone is not an error: its exit is reported."""

    gen: int
    message: Message


@dataclass(frozen=True, slots=True)
class AnswerForm:
    """Answer worker ``gen``'s login form from the answer sources (supervisor/answers.py,
    which keeps the login's place among the password lines); the terminal only if
    ``may_ask``. Answer :class:`FormAnswered` or :class:`FormUnanswerable` (nothing if a
    signal interrupted the terminal: the signal is the next event)."""

    gen: int
    form: LoginForm
    may_ask: bool


@dataclass(frozen=True, slots=True)
class TerminateWorker:
    """SIGTERM: the worker has nothing to close politely (it has no tun)."""

    gen: int


@dataclass(frozen=True, slots=True)
class KillWorker:
    gen: int


@dataclass(frozen=True, slots=True)
class HelperHello:
    gateway: IpAddress  # the VPN server's address: the helper's one gateway


@dataclass(frozen=True, slots=True)
class CreateTun:
    mtu: int


@dataclass(frozen=True, slots=True)
class ApplyConfig:
    """The helper's one declarative request (NetConfig): it changes only what differs;
    answer :class:`ConfigApplied`."""

    net: NetworkConfig


@dataclass(frozen=True, slots=True)
class RunScript:
    """The helper's vpnc-script (``--script``) hears of a reconnect; a no-op without one."""

    reason: ScriptReason


@dataclass(frozen=True, slots=True)
class Teardown:
    pass


@dataclass(frozen=True, slots=True)
class OpenControl:
    """Open the control socket; answer :class:`ControlUnavailable` if it cannot be."""


@dataclass(frozen=True, slots=True)
class CloseControl:
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer control request ``request`` (one JSON reply) and close it."""

    request: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notify:
    """sd_notify(3) fields, e.g. {"ready": "1", "status": "connected to …"} (the
    notifier makes each value one printable line)."""

    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class Audit:
    op: str
    result: Result
    reason: str
    args: dict[str, str | int | float | bool | None]


@dataclass(frozen=True, slots=True)
class Log:
    text: str
    error: bool = False
    """A failure, shown even with -q/--quiet (which hides the progress of a healthy session)."""


@dataclass(frozen=True, slots=True)
class Exit:
    code: ExitCode


Effect = (
    SpawnWorker
    | Send
    | AnswerForm
    | TerminateWorker
    | KillWorker
    | HelperHello
    | CreateTun
    | ApplyConfig
    | RunScript
    | Teardown
    | OpenControl
    | CloseControl
    | Reply
    | Notify
    | Audit
    | Log
    | Exit
)

# -- the machine --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    can_log_in: bool  # a login can run unattended (kept answers, a token, a certificate)
    gateway: IpAddress  # the server's address, resolved by the launcher (F2)
    cookie: str | None = field(default=None, repr=False)
    """--cookie-on-stdin: the first worker resumes with it instead of logging in."""
    always_on: bool = False
    reconnect_timeout: float = 300.0
    control: bool = False  # a control socket is wanted
    watchdog_interval: float | None = None  # systemd's, halved
    supervisor_pid: int = 0  # for status
    verbose: int = 0


@dataclass(slots=True)
class _Worker:
    gen: int
    purpose: Purpose
    phase: Phase = Phase.STARTING
    pid: int | None = None
    has_tun: bool = False
    up: TunnelUp | None = None  # its latest report
    net: NetworkConfig | None = None  # that report under the routing policy
    up_at: float | None = None  # when it last got the tun or reconnected in place
    traffic: bool = False  # it moved packets both ways since up_at
    status: WorkerStatus | None = None
    announced: tuple[str, str] | None = None  # its data channel last logged
    deadline: float | None = None  # leaving: killed at this time
    killed: bool = False


@dataclass(slots=True)
class _Counters:
    """Traffic of workers that are gone, so totals survive restarts."""

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


@dataclass(frozen=True, slots=True)
class _PendingStatus:
    request: int
    deadline: float
    wall_offset: float  # wall clock minus monotonic at the request


class Session:
    """One VPN session from the first login to the exit code."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.policy = RecoveryPolicy(
            can_log_in=config.can_log_in,
            always_on=config.always_on,
            reconnect_timeout=config.reconnect_timeout,
        )
        self.state = State.CONNECTING
        self.verbose = config.verbose
        self.workers: dict[int, _Worker] = {}
        self._next_gen = 1
        # what is known of the server session; the cookie never leaves memory
        self.cookie: str | None = None
        self.login_banner: str | None = None  # the last pre-login banner shown
        self.server = ""
        self.gateway = ""
        self.established = False
        self.net: NetworkConfig | None = None  # what the helper has
        self.left_out: tuple[LeftOut, ...] = ()  # excludes the helper could not route outside
        self.ifname: str | None = None
        self.ifindex: int | None = None
        self.connected_since: float | None = None
        self.down_since: float | None = None
        self.rekey_interval: float | None = None
        self.rekey_at: float | None = None
        self.last_rekey: float | None = None
        self.last_error: str | None = None
        # recovery
        self.attempts = 0  # failed attempts to connect since the last connection
        self.early = 0  # workers in a row that failed before they were healthy
        self.restarts = 0
        self.retry_at: float | None = None
        self.retry_action: Action | None = None
        # the rest
        self.watchdog_at: float | None = None
        self.pending: list[_PendingStatus] = []
        self.totals = _Counters()
        self.exit_code = ExitCode.OK
        self._teardown = True
        self._helper_alive = True
        self._tearing_down = False
        self._asked: deque[str] = deque()  # helper requests awaiting their reply
        self._configuring: _Worker | None = None  # whose tunnel the helper is asked for
        self._out: list[Effect] = []

    # -- API ------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Feed one event at monotonic time ``now``; return what to do, in order."""
        handler = _TRANSITIONS[self.state].get(type(event))
        if handler is not None:
            getattr(self, handler)(event, now)
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When to feed :class:`Timer` next (monotonic), or None."""
        deadlines = [
            t
            for t in (
                self.retry_at,
                self.rekey_at,
                self.watchdog_at,
                *(p.deadline for p in self.pending),
                *(w.deadline for w in self.workers.values() if not w.killed),
            )
            if t is not None
        ]
        return min(deadlines, default=None)

    @property
    def carrier(self) -> _Worker | None:
        """The worker that carries the tun now."""
        return next((w for w in self.workers.values() if w.phase is Phase.CARRYING), None)

    @property
    def candidate(self) -> _Worker | None:
        """A new worker still connecting (first login, resume, or rekey)."""
        return next(
            (
                w
                for w in self.workers.values()
                if w.phase in (Phase.STARTING, Phase.CONFIGURING) and not w.has_tun
            ),
            None,
        )

    def status(self, now: float, wall: float) -> dict[str, Any]:
        """The control socket's `status` (times since the epoch from ``wall``)."""
        net, carrier = self.net, self.carrier
        live = carrier.status if carrier is not None else None
        total = _Counters(**{k: getattr(self.totals, k) for k in _Counters.__slots__})
        for worker in self.workers.values():
            total.add(worker.status)
        left_out = {item.prefix for item in self.left_out}

        def epoch(t: float | None) -> float | None:
            return None if t is None else round(wall - (now - t), 3)

        return {
            "state": self.state.value,
            "server": self.server,
            "gateway": self.gateway,
            "interface": self.ifname,
            "ifindex": self.ifindex,
            "mtu": net.mtu if net else None,
            "addresses": [str(a) for a in net.addresses] if net else [],
            "routes": [str(r) for r in net.routes] if net else [],
            "excluded_routes": [str(r) for r in net.exclude if r not in left_out] if net else [],
            "left_out_excludes": [
                {"prefix": str(item.prefix), "reason": item.reason} for item in self.left_out
            ],
            "channel": live.channel if live else None,
            "tls_cipher": live.tls_cipher if live else None,
            "dtls_cipher": live.dtls_cipher if live else None,
            "dtls_state": live.dtls_state if live else None,
            "data_path": live.data_path if live else None,
            "tx_bytes": total.tx_bytes,
            "rx_bytes": total.rx_bytes,
            "tx_packets": total.tx_packets,
            "rx_packets": total.rx_packets,
            "uptime": round(now - self.connected_since, 3) if self.connected_since else 0.0,
            "connected_since": epoch(self.connected_since),
            "worker_pid": carrier.pid if carrier else None,
            "worker_restarts": self.restarts,
            "last_rekey": epoch(self.last_rekey),
            "next_rekey_in": round(self.rekey_at - now, 1) if self.rekey_at is not None else None,
            "last_error": self.last_error,
            "supervisor_pid": self.config.supervisor_pid,
        }

    # -- small helpers --------------------------------------------------------------------

    def _emit(self, *actions: Effect) -> None:
        self._out.extend(actions)

    def _log(self, text: str, *, error: bool = False) -> None:
        self._out.append(Log(text, error))

    def _ask(self, request: str, action: Effect) -> None:
        """A helper request; its reply comes back as the next helper event."""
        self._asked.append(request)
        self._out.append(action)

    def _spawn(self, purpose: Purpose, cookie: str | None) -> None:
        gen = self._next_gen
        self._next_gen += 1
        self.workers[gen] = _Worker(gen, purpose)
        self._emit(SpawnWorker(gen, purpose, cookie))

    def _script(self, reason: ScriptReason) -> None:
        if self.ifname is not None:  # the helper takes script events once the tun exists
            self._ask(f"script {reason}", RunScript(reason))

    def _dismiss(self, worker: _Worker, *, logoff: bool, now: float) -> None:
        """Ask a worker to close its connection (or end it if it has no tun yet); it is
        killed if it has not exited after STOP_GRACE."""
        if worker.phase in (Phase.DISMISSED, Phase.FAILED):
            return
        if worker.phase is Phase.CARRYING and self._healthy(worker, now):
            self.early = 0  # replaced in good health (rekey, reconnect, the end)
        self._emit(
            Send(worker.gen, Stop(logoff=logoff)) if worker.has_tun else TerminateWorker(worker.gen)
        )
        worker.phase = Phase.DISMISSED
        worker.deadline = now + STOP_GRACE

    def _healthy(self, worker: _Worker, now: float) -> bool:
        return worker.traffic or (worker.up_at is not None and now - worker.up_at >= HEALTHY_AFTER)

    # -- start-up -------------------------------------------------------------------------

    def _on_begin(self, _event: Begin, _now: float) -> None:
        # The worker starts first: its start-up (imports, TLS, login: ~0.15 s of the
        # connect time) overlaps the helper's; nothing it reports is read before the
        # helper has answered hello (docs/performance.md).
        self.cookie = self.config.cookie
        if self.cookie is None:
            self._spawn("login", None)
        else:
            self._spawn("resume", self.cookie)
        self._ask("hello", HelperHello(self.config.gateway))

    def _on_control_unavailable(self, event: ControlUnavailable, now: float) -> None:
        self._log(event.reason, error=True)
        self._finish(ExitCode.USAGE, logoff=False, now=now)

    # -- workers --------------------------------------------------------------------------

    def _on_worker_started(self, event: WorkerStarted, _now: float) -> None:
        worker = self.workers.get(event.gen)
        if worker is None:
            return
        worker.pid = event.pid
        if self.verbose:
            self._log(f"worker {worker.gen} started ({worker.purpose}, pid {event.pid})")

    def _on_from_worker(self, event: FromWorker, now: float) -> None:
        worker = self.workers.get(event.gen)
        if worker is None:
            return
        handler = _ON_MESSAGE.get((worker.phase, type(event.message)))
        if handler is None:
            self._log(f"unexpected {event.message.op} from worker {worker.gen}", error=True)
            self._emit(KillWorker(worker.gen))
            return
        getattr(self, handler)(worker, event.message, now)

    def _on_worker_broke(self, event: WorkerBroke, _now: float) -> None:
        self._log(
            f"worker {event.gen} broke the IPC protocol ({event.reason}); stopping it", error=True
        )
        self._emit(KillWorker(event.gen))

    def _on_worker_exited(self, event: WorkerExited, now: float) -> None:
        worker = self.workers.pop(event.gen, None)
        if worker is None:
            return
        self.totals.add(worker.status)
        if worker.phase not in (Phase.DISMISSED, Phase.FAILED):
            status = event.status
            how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"status {status}"
            self._emit(Audit("worker_crash", "info", how, {"worker": worker.gen, "status": status}))
            self._failed(worker, None, f"worker {worker.gen} exited unexpectedly ({how})", now)
        if self.state is State.DISCONNECTING:
            self._after_workers()

    def _on_tunnel_up(self, worker: _Worker, up: TunnelUp, now: float) -> None:
        """A worker connected (a new one, or one that reconnected in place). Its report
        goes through the routing policy again (the worker is not trusted; an honest
        report comes back unchanged); the helper is asked only for what changed, or
        again while excludes are left out (a path for them may exist now)."""
        try:
            if up.net.gateway != self.config.gateway:  # the worker connects to no other
                raise UnusableConfig(
                    f"gateway {up.net.gateway}: not the VPN server's address {self.config.gateway}"
                )
            net, notes = routing_policy(up.net)
        except UnusableConfig as exc:
            self._emit(Audit("unusable_config", "refused", str(exc)[:500], {"worker": worker.gen}))
            self._dismiss(worker, logoff=False, now=now)  # in place, it would carry on
            self._failed(worker, "protocol", f"unusable configuration: {exc}", now)
            return
        for note in notes:
            self._log(note)
        worker.phase, worker.up, worker.net = Phase.CONFIGURING, up, net
        self._configuring = worker
        if self.ifname is None:
            self._ask("create_tun", CreateTun(net.mtu))
        else:
            self._configure(worker, now)

    def _configure(self, worker: _Worker, now: float) -> None:
        assert worker.net is not None
        if worker.net != self.net or self.left_out:
            self._ask("net_config", ApplyConfig(worker.net))
        else:
            self._configured(worker, now)

    def _on_login_form(self, worker: _Worker, form: LoginForm, _now: float) -> None:
        """Only a worker that logs in gets forms answered (one with the cookie has
        nothing to ask); the terminal only until the session first came up: a login
        after that must not wait for someone who may not be there."""
        if worker.purpose != "login":
            self._log(f"unexpected {form.op} from worker {worker.gen}", error=True)
            self._emit(KillWorker(worker.gen))
            return
        if form.banner and form.banner != self.login_banner:
            # The server's pre-login banner: shown (line by line under our prefix, as
            # the tunnel's) and recorded, once for each text.
            self.login_banner = form.banner
            for line in form.banner.splitlines():
                self._log(f"server login banner: {line}")
            self._emit(Audit("login_banner", "info", form.banner[:500], {}))
        self._emit(AnswerForm(worker.gen, form, may_ask=not self.established))

    def _on_form_answered(self, event: FormAnswered, _now: float) -> None:
        worker = self.workers.get(event.gen)
        if worker is not None and worker.phase is Phase.STARTING:
            self._emit(Send(worker.gen, event.answers))

    def _on_form_unanswerable(self, event: FormUnanswerable, now: float) -> None:
        worker = self.workers.get(event.gen)
        if worker is None or worker.phase is not Phase.STARTING:
            return
        self._emit(TerminateWorker(worker.gen))  # it waits for answers that will not come
        self._failed(worker, event.kind, event.message, now)

    def _on_failed(self, worker: _Worker, failed: Failed, now: float) -> None:
        self._failed(worker, failed.kind, failed.message, now)

    def _on_lost(self, worker: _Worker, lost: Lost, now: float) -> None:
        self._failed(worker, "connection_lost", lost.message, now, lost=True)

    def _on_status(self, worker: _Worker, status: WorkerStatus, now: float) -> None:
        worker.status = status
        if status.rx_packets and status.tx_packets:
            worker.traffic = True
            self.early = 0
        announced = (status.channel, status.dtls_state)
        if announced != worker.announced:
            worker.announced = announced
            if status.channel == "dtls":
                self._log(f"data channel: DTLS ({status.dtls_cipher})")
            elif status.dtls_state not in _DTLS_NOT_NEWS:
                self._log(f"data channel: TLS ({status.tls_cipher}); DTLS {status.dtls_state}")
        self._answer_status(expired_only=False, now=now)

    def _on_ignored(self, _worker: _Worker, _msg: Message, _now: float) -> None:
        pass

    def _on_leaving_message(self, worker: _Worker, msg: Message, _now: float) -> None:
        """A dismissed worker's last words: only its counters matter."""
        if isinstance(msg, WorkerStatus):
            worker.status = msg
        elif isinstance(msg, Stopped) and self.state is State.DISCONNECTING:
            self._log(f"session closed ({msg.tx_bytes} bytes sent, {msg.rx_bytes} received)")

    # -- the helper -----------------------------------------------------------------------

    def _on_helper_done(self, _event: HelperDone, now: float) -> None:
        request = self._asked.popleft() if self._asked else ""
        if request == "hello" and self.state is not State.DISCONNECTING:
            if self.config.control:
                self._emit(OpenControl())
            if self.config.watchdog_interval:
                self.watchdog_at = now
        elif request == "teardown":
            self._exit()

    def _on_tun_created(self, event: TunCreated, now: float) -> None:
        self._asked.popleft()
        self.ifname, self.ifindex = event.ifname, event.ifindex
        worker = self._configuring
        if worker is not None and worker.phase is Phase.CONFIGURING:
            self._configure(worker, now)

    def _on_config_applied(self, event: ConfigApplied, now: float) -> None:
        self._asked.popleft()
        worker, self._configuring = self._configuring, None
        if worker is None or worker.phase is not Phase.CONFIGURING or worker.net is None:
            return
        if event.left_out != self.left_out:
            for item in event.left_out:
                self._log(f"exclude {item.prefix} left out, it stays in the tunnel: {item.reason}")
        self.left_out = event.left_out
        if self.net is not None and worker.net != self.net:
            self._log("the server changed the configuration; applied the difference")
        self.net = worker.net
        self._configured(worker, now)

    def _configured(self, worker: _Worker, now: float) -> None:
        """The helper has the worker's configuration: it takes over the tun, or, having
        reconnected in place, carries on with it."""
        self._configuring = None
        assert self.ifname is not None
        if worker.has_tun:
            self._log(f"worker {worker.gen} reconnected to the server with the session cookie")
            worker.announced = None  # a new connection: its data channel is news again
        else:
            self._emit(Send(worker.gen, TunHandoff(ifname=self.ifname)))
            worker.has_tun = True
            previous = self.carrier
            if previous is not None:
                self._dismiss(previous, logoff=False, now=now)
        worker.phase = Phase.CARRYING
        self._connected(worker, now)

    def _on_helper_refusal(self, event: HelperRefusal, now: float) -> None:
        request = self._asked.popleft() if self._asked else ""
        if request == "hello":
            self._log(f"the privileged helper did not start: {event.reason}", error=True)
            self._finish(ExitCode.ERROR, logoff=False, now=now, announce=False, teardown=False)
        elif request in ("create_tun", "net_config"):
            self._configuring = None
            self._log(
                f"the privileged helper refused the network configuration: {event.reason}",
                error=True,
            )
            self._finish(ExitCode.HELPER_REFUSED, logoff=True, now=now)
        elif request == "script reconnect":
            # The script failed to configure the reconnected tunnel: as a refused
            # configuration (the helper refuses no other script event).
            self._log(
                f"the privileged helper refused the network configuration: {event.reason}",
                error=True,
            )
            self._finish(ExitCode.HELPER_REFUSED, logoff=True, now=now)
        elif request.startswith("script "):
            self._log(f"vpnc-script {request.removeprefix('script ')}: {event.reason}", error=True)
        elif request == "teardown":
            self._log(f"helper teardown: {event.reason}", error=True)
            self._exit(ExitCode.ERROR)

    def _on_helper_gone(self, event: HelperGone, now: float) -> None:
        request = self._asked.popleft() if self._asked else ""
        if request.startswith("script "):
            # No answer to a script event does not end the session by itself; a helper
            # that is really gone is seen next (its socket closes, or the next request).
            self._log(f"vpnc-script {request.removeprefix('script ')}: {event.reason}", error=True)
            return
        self._asked.clear()
        self._helper_alive = False  # its channel is not used again: no teardown
        self._configuring = None
        if request == "hello":
            self._log(f"the privileged helper did not start: {event.reason}", error=True)
            self._finish(ExitCode.ERROR, logoff=False, now=now, announce=False, teardown=False)
            return
        if request == "teardown":
            self._log(f"helper teardown: {event.reason}", error=True)
            self._exit(ExitCode.ERROR)
            return
        if self.state is State.DISCONNECTING:
            if self.exit_code == ExitCode.OK:
                self.exit_code = ExitCode.ERROR
            return
        if request:
            self._log(f"the privileged helper failed: {event.reason}", error=True)
        else:
            self._log("the privileged helper exited unexpectedly", error=True)
        self._finish(ExitCode.ERROR, logoff=True, now=now)

    def _on_spawner_failed(self, event: SpawnerFailed, now: float) -> None:
        for gen in [gen for gen, worker in self.workers.items() if worker.pid is None]:
            del self.workers[gen]  # the SpawnWorker this answers: never started
        self._log(f"{event.reason}; ending the session", error=True)
        if self.state is State.DISCONNECTING:
            if self.exit_code == ExitCode.OK:
                self.exit_code = ExitCode.ERROR
            self._after_workers()
            return
        self._finish(ExitCode.ERROR, logoff=True, now=now)

    # -- the session comes up -------------------------------------------------------------

    def _connected(self, worker: _Worker, now: float) -> None:
        up, net = worker.up, worker.net
        assert up is not None
        assert net is not None
        assert self.ifname is not None
        first = not self.established
        self.cookie = up.cookie or self.cookie
        self.server, self.gateway = up.server, str(net.gateway)
        self.established = True
        self.attempts = 0
        self.retry_at = self.retry_action = None
        worker.up_at, worker.traffic = now, False
        self._emit(
            Audit(
                "connect" if first else "reconnect",
                "ok",
                "",
                {
                    "server": up.server,
                    "gateway": str(net.gateway),
                    "ifname": self.ifname,
                    "ipv4": None if net.ipv4 is None else str(net.ipv4),
                    "ipv6": None if net.ipv6 is None else str(net.ipv6),
                    "purpose": worker.purpose,
                },
            )
        )
        if self.down_since is not None:
            self._log(f"session resumed after {now - self.down_since:.2f} s (worker {worker.gen})")
            self._script("reconnect")
        if worker.purpose == "rekey":
            self.last_rekey = now
            self._log(f"rekeyed: worker {worker.gen} took over the tunnel")
        self.down_since = None
        if self.connected_since is None:
            self.connected_since = now
        self.rekey_interval = (
            float(up.rekey_time)
            if up.rekey_method in ("ssl", "new-tunnel") and up.rekey_time
            else None
        )
        self.rekey_at = None if self.rekey_interval is None else now + self.rekey_interval
        self.state = State.CONNECTED
        if first:
            addresses = ", ".join(map(str, net.addresses))
            self._log(
                f"connected to {up.server} ({net.gateway}): {addresses} on {self.ifname}, "
                f"MTU {net.mtu}, routes {' '.join(map(str, net.routes))}"
                + (f", excluded {' '.join(map(str, net.exclude))}" if net.exclude else "")
            )
            if net.banner:
                # Line by line, each under our prefix: a banner line never passes for
                # one of ours (its lines are printable; the schema let nothing else in).
                for line in net.banner.splitlines():
                    self._log(f"server banner: {line}")
            self._emit(Notify({"ready": "1", "status": f"connected to {up.server}"}))
        else:
            self._emit(Notify({"status": f"connected to {up.server}"}))

    # -- failures and recovery ------------------------------------------------------------

    def _failed(
        self,
        worker: _Worker,
        kind: FailureKind | None,
        message: str,
        now: float,
        *,
        lost: bool = False,
    ) -> None:
        """A worker failed (``kind`` None: it died without a word; ``lost``: it lost its
        connection and waits for our decision): recover or give up."""
        if kind in _AUTH_KINDS:
            self._emit(Audit("auth_failure", "refused", message[:500], {"kind": kind}))
        holder = worker.phase is Phase.CARRYING
        if not lost and worker.phase not in (Phase.DISMISSED, Phase.FAILED):
            worker.phase = Phase.FAILED  # it exits next; killed if it lingers
            if worker.gen in self.workers:
                worker.deadline = now + STOP_GRACE
        if self.state is State.DISCONNECTING:
            return
        if worker.purpose == "rekey" and not worker.has_tun and self.carrier is not None:
            self._log(f"rekey failed ({message}); keeping the current connection", error=True)
            self.rekey_at = now + REKEY_RETRY if self.rekey_interval else None
            return
        candidate = self.candidate
        if holder and candidate is not None and candidate.purpose == "rekey":
            # The server drops the old connection as soon as the new one presents the
            # cookie: expected, and the new worker takes over the tun next.
            if self.verbose:
                self._log(f"worker {worker.gen}: {message} (replaced by the rekey)")
            if lost:
                self._dismiss(worker, logoff=False, now=now)
            self.down_since = now
            self.state = State.RECONNECTING
            return
        if holder:
            self.down_since = now
            if self._healthy(worker, now):
                self.early = self.attempts = 0
            else:
                self.early += 1
        elif self.down_since is None:
            self.down_since = now
        self.last_error = message
        decision = self.policy.after_failure(
            kind,
            attempt=self.attempts,
            outage=now - self.down_since,
            established=self.established,
            early=self.early if holder else 0,
            in_place=lost and self.cookie is not None,
        )
        if decision.action is Action.GIVE_UP:
            self._log(message, error=True)
            if self.established:
                self._log(f"giving up: {decision.reason}", error=True)
            self._finish(decision.code, logoff=kind != "terminated", now=now)
            return
        self.state = State.RECONNECTING
        self._emit(Notify({"status": f"reconnecting: {decision.reason}"}))
        if decision.action is Action.RESUME_IN_PLACE:
            assert self.cookie is not None
            self._log(
                f"worker {worker.gen}: {message}; reconnecting in place with the session cookie",
                error=True,
            )
            self.totals.add(worker.status)  # the new connection counts from zero
            worker.status = None
            worker.phase, worker.purpose = Phase.RESUMING, "resume"
            self._script("attempt-reconnect")
            self._emit(Send(worker.gen, Reconnect(cookie=self.cookie)))
            return
        if lost:
            self._dismiss(worker, logoff=False, now=now)
        self.attempts += 1
        self.restarts += 1
        when = "now" if decision.delay == 0 else f"in {decision.delay:.1f} s"
        self._log(f"{message}; {decision.reason}: reconnecting {when}", error=True)
        self.retry_at = now + decision.delay
        self.retry_action = decision.action

    def _retry(self, _now: float) -> None:
        action, self.retry_at, self.retry_action = self.retry_action, None, None
        if self.candidate is not None:
            return
        self._script("attempt-reconnect")
        if action is Action.LOG_IN:
            self.cookie = None
        # No cookie (the server ended the session, then a login failed to reach it):
        # only a new login can bring the session back.
        if self.cookie is None:
            self._spawn("login", None)
        else:
            self._spawn("resume", self.cookie)

    def _rekey(self, reason: str, now: float) -> None:
        self.rekey_at = None if self.rekey_interval is None else now + self.rekey_interval
        if self.candidate is not None or self.carrier is None or self.cookie is None:
            return
        self._log(f"rekey ({reason}): connecting a new tunnel before dropping the old one")
        self._spawn("rekey", self.cookie)

    def _reconnect(self, reason: str, now: float) -> None:
        carrier = self.carrier
        if carrier is None or self.cookie is None:
            return
        self._log(f"reconnecting ({reason})")
        self._dismiss(carrier, logoff=False, now=now)
        self.down_since = now
        self.restarts += 1
        self.state = State.RECONNECTING
        self._script("attempt-reconnect")
        self._spawn("resume", self.cookie)

    # -- timers ---------------------------------------------------------------------------

    def _on_timer(self, _event: Timer, now: float) -> None:
        if self.retry_at is not None and self.retry_at <= now:
            self._retry(now)
        if self.rekey_at is not None and self.rekey_at <= now:
            self._rekey("rekey time reached", now)
        interval = self.config.watchdog_interval
        if self.watchdog_at is not None and interval and self.watchdog_at <= now:
            self._emit(Notify({"watchdog": "1"}))
            self.watchdog_at = now + interval
        for worker in self.workers.values():
            if worker.deadline is not None and worker.deadline <= now and not worker.killed:
                worker.killed = True
                self._emit(KillWorker(worker.gen))
        if self.pending:
            self._answer_status(expired_only=True, now=now)

    # -- control socket and signals -------------------------------------------------------

    def _on_control_command(self, event: ControlCommand, now: float) -> None:
        command, request = event.command, event.request
        if command == "status":
            carrier = self.carrier
            if carrier is None:
                self._emit(Reply(request, {"ok": True, "status": self.status(now, event.wall)}))
                return
            self.pending.append(_PendingStatus(request, now + STATUS_WAIT, event.wall - now))
            self._emit(Send(carrier.gen, QueryStatus()))
            return
        if command == "disconnect":
            self._emit(Reply(request, {"ok": True}))
            self._log(f"disconnect requested over the control socket by uid {event.uid}")
            self._finish(ExitCode.OK, logoff=True, now=now)
            return
        if self.carrier is None:
            error = f"not connected ({self.state.value})"
            self._emit(Reply(request, {"ok": False, "error": error}))
            return
        if command == "rekey":
            self._rekey(f"requested by uid {event.uid}", now)
        else:
            self._reconnect(f"requested by uid {event.uid}", now)
        self._emit(Reply(request, {"ok": True}))

    def _on_control_refused(self, event: ControlRefused, _now: float) -> None:
        self._log(f"control socket: refused pid {event.pid} uid {event.uid} gid {event.gid}")
        self._emit(
            Audit(
                "control_refused",
                "refused",
                "only root and the control group may use it",
                {"peer_pid": event.pid, "peer_uid": event.uid, "peer_gid": event.gid},
            ),
            Reply(event.request, {"ok": False, "error": "permission denied"}),
        )

    def _on_control_malformed(self, event: ControlMalformed, _now: float) -> None:
        self._emit(Reply(event.request, {"ok": False, "error": event.error}))

    def _answer_status(self, *, expired_only: bool, now: float) -> None:
        keep: list[_PendingStatus] = []
        for pending in self.pending:
            if expired_only and pending.deadline > now:
                keep.append(pending)
            else:
                status = self.status(now, now + pending.wall_offset)
                self._emit(Reply(pending.request, {"ok": True, "status": status}))
        self.pending = keep

    def _on_signal(self, event: SignalReceived, now: float) -> None:
        signum = event.signum
        if signum == signal.SIGUSR1:
            self.verbose += 1
            self._log(f"verbosity {self.verbose}")
        elif signum == signal.SIGUSR2:
            self._reconnect("SIGUSR2", now)
        elif signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            logoff = signum != signal.SIGHUP
            self._log(
                f"{signum.name}: disconnecting"
                + ("" if logoff else " (keeping the server session)")
            )
            self._finish(ExitCode.OK, logoff=logoff, now=now)

    # -- the end --------------------------------------------------------------------------

    def _finish(
        self,
        code: ExitCode,
        *,
        logoff: bool,
        now: float,
        announce: bool = True,
        teardown: bool = True,
    ) -> None:
        """End the session: stop the workers (the one carrying the tun, or reconnecting
        with it, logs off if ``logoff``), then, once all have exited, the helper's
        teardown, then Exit(code)."""
        if self.state in (State.DISCONNECTING, State.CLOSED):
            return
        if announce:
            self._emit(
                Audit("disconnect", "info", f"exit {code.name}", {"logoff": logoff}),
                Notify({"stopping": "1", "status": "disconnecting"}),
            )
        self.state = State.DISCONNECTING
        self.exit_code = code
        self._teardown = teardown and self._helper_alive
        self.retry_at = self.rekey_at = None
        for worker in list(self.workers.values()):
            self._dismiss(worker, logoff=logoff and worker.has_tun, now=now)
        for pending in self.pending:
            self._emit(Reply(pending.request, {"ok": False, "error": "disconnecting"}))
        self.pending = []
        if self.config.control:
            self._emit(CloseControl())
        self._after_workers()

    def _after_workers(self) -> None:
        if self.workers or self._tearing_down:
            return
        self._tearing_down = True
        if self._teardown and self._helper_alive:
            self._ask("teardown", Teardown())
        else:
            self._exit()

    def _exit(self, failure: ExitCode | None = None) -> None:
        if failure is not None and self.exit_code == ExitCode.OK:
            self.exit_code = failure
        self.state = State.CLOSED
        self._emit(Exit(self.exit_code))


_ALWAYS: Final[dict[type, str]] = {
    Timer: "_on_timer",
    WorkerStarted: "_on_worker_started",
    FromWorker: "_on_from_worker",
    WorkerBroke: "_on_worker_broke",
    WorkerExited: "_on_worker_exited",
    HelperDone: "_on_helper_done",
    TunCreated: "_on_tun_created",
    ConfigApplied: "_on_config_applied",
    HelperRefusal: "_on_helper_refusal",
    HelperGone: "_on_helper_gone",
    SpawnerFailed: "_on_spawner_failed",
    ControlMalformed: "_on_control_malformed",
    FormAnswered: "_on_form_answered",
    FormUnanswerable: "_on_form_unanswerable",
}
"""What every live state handles: the workers, the helper, timers."""

_LIVE: Final[dict[type, str]] = {
    **_ALWAYS,
    ControlCommand: "_on_control_command",
    ControlRefused: "_on_control_refused",
    ControlUnavailable: "_on_control_unavailable",
    SignalReceived: "_on_signal",
}
"""Until the session is ending: also the control socket and signals."""

_TRANSITIONS: Final[dict[State, dict[type, str]]] = {
    State.CONNECTING: {**_LIVE, Begin: "_on_begin"},
    State.CONNECTED: _LIVE,
    State.RECONNECTING: _LIVE,
    State.DISCONNECTING: _ALWAYS,
    State.CLOSED: {},
}
"""(session state, event) → handler; an event its state does not list is ignored (a
signal or a control request while disconnecting, anything after Exit)."""

_WORKER_MESSAGES: Final = (LoginForm, TunnelUp, Failed, Lost, WorkerStatus, Stopped)

_ON_MESSAGE: Final[dict[tuple[Phase, type[Message]], str]] = {
    (Phase.STARTING, LoginForm): "_on_login_form",
    (Phase.STARTING, TunnelUp): "_on_tunnel_up",
    (Phase.STARTING, Failed): "_on_failed",
    (Phase.CARRYING, Lost): "_on_lost",
    (Phase.CARRYING, Failed): "_on_failed",
    (Phase.CARRYING, WorkerStatus): "_on_status",
    (Phase.RESUMING, TunnelUp): "_on_tunnel_up",
    (Phase.RESUMING, Failed): "_on_failed",
    # its answer to a status query sent before the loss: old counters, already counted
    (Phase.RESUMING, WorkerStatus): "_on_ignored",
    **{(Phase.DISMISSED, kind): "_on_leaving_message" for kind in _WORKER_MESSAGES},
}
"""(worker phase, message) → handler. Anything else is a protocol violation: the worker
is killed (and its exit handled as a crash)."""
