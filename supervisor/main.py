"""The supervisor: unprivileged; runs the worker and mediates everything it asks of the helper.

It is the process the user started, after the launcher dropped root. Every decision
of the session's lifecycle — when to start, replace, reconnect or dismiss a worker,
what to ask the helper, what to answer on the control socket, when to give up and
with which exit code — is taken by the sans-I/O session machine
(supervisor/session.py). This module is its I/O shell, and nothing else: one
selector loop over the workers' channels, the helper's, the control socket and a
signal wake-up fd; it turns what happens into the machine's events (with the real
monotonic clock as ``now``) and executes the actions it gets back, in order. A helper
request is a blocking call whose reply is fed back at once.

Single-threaded: signal handlers only record the signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sepconnect.ipc.fields import IpNetwork
from sepconnect.ipc.wire import Channel, PeerClosed, WireError
from sepconnect.ipc.worker_messages import FD_TO_WORKER, FROM_WORKER, TO_WORKER, Start, TunHandoff
from sepconnect.process.exitcodes import ExitCode
from sepconnect.process.spawner_client import SpawnerClient, SpawnerGone, WorkerProcess
from sepconnect.supervisor import audit
from sepconnect.supervisor.answers import (
    AnswerSources,
    Login,
    LoginCancelled,
    TokenCodes,
    Unanswerable,
)
from sepconnect.supervisor.control import (
    ControlError,
    ControlServer,
    authorized,
    parse_request_untrusted,
    reply,
)
from sepconnect.supervisor.helper_client import HelperClient, HelperRefused
from sepconnect.supervisor.notify import Notifier
from sepconnect.supervisor.routes import competing, ours, read_table
from sepconnect.supervisor.session import (
    STOP_GRACE,
    AnswerForm,
    ApplyConfig,
    Audit,
    Begin,
    CloseControl,
    ConfigApplied,
    ControlCommand,
    ControlMalformed,
    ControlRefused,
    ControlUnavailable,
    CreateTun,
    Effect,
    Event,
    Exit,
    FormAnswered,
    FormUnanswerable,
    FromWorker,
    HelperDone,
    HelperGone,
    HelperHello,
    HelperRefusal,
    KillWorker,
    Log,
    Notify,
    OpenControl,
    Reply,
    RunScript,
    Send,
    Session,
    SessionConfig,
    SignalReceived,
    SpawnerFailed,
    SpawnWorker,
    Teardown,
    TerminateWorker,
    Timer,
    TunCreated,
    WorkerBroke,
    WorkerExited,
    WorkerStarted,
)
from sepconnect.supervisor.terminal import Terminal

VERBOSITY = [0]  # set by the launcher before the supervisor starts
QUIET = [False]  # -q/--quiet: failures only; set by the launcher


def log(text: str, *, error: bool = True) -> None:
    if QUIET[0] and not error:
        return
    print(f"sepconnect: {text}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class Options:
    always_on: bool = False
    reconnect_timeout: float = 300.0
    service_uid: int = 65534
    control_path: str | None = None
    control_gid: int | None = None
    allow_weak_sandbox: bool = False
    tun_offload: bool = True  # create the tun with a virtio-net header (worker offloads)
    answers: AnswerSources = field(default_factory=AnswerSources)  # for login forms
    codes: TokenCodes | None = None  # --token-mode: one-time codes
    terminal: Terminal | None = None  # asked during the first login only
    cookie: str | None = field(default=None, repr=False)  # --cookie-on-stdin


def start_for(start: Start, action: SpawnWorker) -> Start:
    """The Start message of a new worker: one that resumes the session gets the cookie.
    No worker gets a password: the forms of one that logs in are answered here."""
    if action.cookie is None:
        return start
    return dataclasses.replace(start, cookie=action.cookie)


@dataclass(slots=True)
class _Process:
    proc: WorkerProcess  # Popen's interface, carried out by the spawner (another uid)
    channel: Channel


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class Supervisor:
    def __init__(
        self,
        helper: HelperClient,
        spawner: SpawnerClient,
        start: Start,
        options: Options | None = None,
        first_worker: tuple[WorkerProcess, socket.socket] | None = None,
    ) -> None:
        self.helper = helper
        # Workers run under their own uid: the spawner starts and signals them for us.
        self.spawner = spawner
        self.spawner_failed = False  # SpawnerFailed fed (once)
        # A worker already started (by the launcher, to overlap its start-up with ours):
        # the first SpawnWorker takes it instead of starting one.
        self.first_worker = first_worker
        self.start = start
        self.options = options or Options()
        self.notifier = Notifier()
        self.session = Session(
            SessionConfig(
                can_log_in=self.options.answers.unattended or start.client_cert is not None,
                gateway=start.server_address,
                cookie=self.options.cookie,
                always_on=self.options.always_on,
                reconnect_timeout=self.options.reconnect_timeout,
                control=self.options.control_path is not None,
                watchdog_interval=self.notifier.watchdog_interval,
                supervisor_pid=os.getpid(),
                verbose=VERBOSITY[0],
            )
        )
        self.workers: dict[int, _Process] = {}
        self.logins: dict[int, Login] = {}  # a worker that logs in: its forms' answers
        self.wake_fd: int | None = None  # the signal wake-up fd, which also ends a question
        self.tun_fd: int | None = None
        self.ifindex: int | None = None  # the tun's
        self.tun_routes: frozenset[IpNetwork] = frozenset()  # ours, at the last NetApplied
        self.control: ControlServer | None = None
        self.requests: dict[int, socket.socket] = {}
        self.next_request = 1
        self.signals: list[int] = []
        self.code: ExitCode | None = None
        self.sel = selectors.DefaultSelector()
        self._execute: dict[type, Callable[[Any], Event | None]] = {
            SpawnWorker: self._spawn,
            Send: self._send,
            AnswerForm: self._answer_form,
            TerminateWorker: self._terminate,
            KillWorker: self._kill,
            HelperHello: lambda action: self._ask(lambda: self.helper.hello(action.gateway)),
            CreateTun: self._create_tun,
            ApplyConfig: self._apply_config,
            RunScript: lambda action: self._ask(lambda: self.helper.script_event(action.reason)),
            Teardown: lambda _: self._ask(self.helper.teardown),
            OpenControl: self._open_control,
            CloseControl: self._close_control,
            Reply: self._reply,
            Notify: lambda action: self.notifier.notify(**action.fields),
            Audit: self._audit,
            Log: lambda action: log(action.text, error=action.error),
            Exit: self._exit,
        }

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> ExitCode:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        self.wake_fd = wake_r.fileno()
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        try:
            self.sel.register(wake_r, selectors.EVENT_READ, ("signal", 0))
            self.sel.register(self.helper.fileno(), selectors.EVENT_READ, ("helper", 0))
            self.sel.register(self.spawner.fileno(), selectors.EVENT_READ, ("spawner", 0))
            self._feed(Begin())
            while self.code is None:
                self._turn(wake_r)
            return self.code
        finally:
            signal.set_wakeup_fd(old_wakeup)
            wake_r.close()
            wake_w.close()
            self._release()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)  # acted on in the loop, never here

    def _turn(self, wake: socket.socket) -> None:
        timer = self.session.get_timer()
        timeout = None if timer is None else max(0.0, timer - time.monotonic())
        for key, _ in self.sel.select(timeout):
            kind, ident = key.data
            if kind == "signal":
                with contextlib.suppress(BlockingIOError):
                    wake.recv(64)
            elif kind == "helper":
                self.sel.unregister(key.fd)  # closed: it stays readable
                self._feed(HelperGone("its socket closed"))
            elif kind == "spawner":
                self.spawner.pump()  # workers' exits, replies to signals
            elif kind == "control":
                self._accept()
            elif kind == "worker" and ident in self.workers:
                self._from_worker(ident)
            self._check_spawner()
            if self.code is not None:
                return
        while self.signals and self.code is None:
            self._feed(SignalReceived(signal.Signals(self.signals.pop(0))))
        timer = self.session.get_timer()
        if self.code is None and timer is not None and timer <= time.monotonic():
            self._feed(Timer())

    def _feed(self, event: Event) -> None:
        """One event in; its actions executed in order. A helper request's reply is fed
        back at once, and the actions it brings are queued after those already due."""
        queue: deque[Effect] = deque(self.session.handle(event, time.monotonic()))
        while queue:
            action = queue.popleft()
            answer = self._execute[type(action)](action)
            if answer is not None:
                queue.extend(self.session.handle(answer, time.monotonic()))

    # -- workers --------------------------------------------------------------------------

    def _check_spawner(self) -> None:
        """The spawner gone (its channel closed or broke, or it refused us): the session
        machine hears of it once; its workers die with it (PR_SET_PDEATHSIG)."""
        if self.spawner.gone is not None and not self.spawner_failed:
            self._feed(self._spawner_failed())

    def _spawner_failed(self) -> SpawnerFailed:
        self.spawner_failed = True
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.spawner.fileno())
        return SpawnerFailed(self.spawner.gone or "the worker spawner failed")

    def _spawn(self, action: SpawnWorker) -> Event:
        if self.first_worker is not None:
            # asked for by the launcher before it imported us (cli.connect)
            (proc, ours), self.first_worker = self.first_worker, None
        else:
            try:
                proc, ours = self.spawner.spawn(allow_weak_sandbox=self.options.allow_weak_sandbox)
            except SpawnerGone:
                return self._spawner_failed()
        channel = Channel(ours, FROM_WORKER, send_codec=TO_WORKER, send_fd_ops=FD_TO_WORKER)
        # The start goes out before the spawner's reply is read: the worker reads it as
        # soon as its imports are done, and the spawner's reply to the first spawn comes
        # only after the spawner's own codec imports. Nothing the worker sends is read
        # before WorkerStarted is fed to the machine.
        with contextlib.suppress(OSError):  # if it died already, its exit is reported
            channel.send(start_for(self.start, action))
        try:
            pid = proc.pid  # the spawner's reply
        except SpawnerGone:
            ours.close()
            return self._spawner_failed()
        self.workers[action.gen] = _Process(proc, channel)
        if action.cookie is None:
            self.logins[action.gen] = Login(self.options.answers, self.options.codes)
        self.sel.register(channel.fileno(), selectors.EVENT_READ, ("worker", action.gen))
        return WorkerStarted(action.gen, pid)

    def _send(self, action: Send) -> None:
        worker = self.workers.get(action.gen)
        if worker is None:
            return
        fd = self.tun_fd if isinstance(action.message, TunHandoff) else None
        with contextlib.suppress(OSError, WireError):  # gone: its exit is reported
            worker.channel.send(action.message, fd)

    def _answer_form(self, action: AnswerForm) -> Event | None:
        """The login's answers (supervisor/answers.py); the terminal blocks the loop
        while it asks, and a signal ends the question (the loop acts on it next)."""
        login = self.logins.get(action.gen)
        if login is None:
            return None
        terminal = self.options.terminal
        ask = (
            functools.partial(terminal.ask, wake=self.wake_fd)
            if terminal is not None and action.may_ask
            else None
        )
        try:
            answers = login.answer(action.form, time.time(), ask)
        except LoginCancelled:
            return None
        except Unanswerable as exc:
            return FormUnanswerable(action.gen, exc.kind, str(exc))
        return FormAnswered(action.gen, answers)

    def _terminate(self, action: TerminateWorker) -> Event | None:
        return self._signal(action.gen, WorkerProcess.terminate)

    def _kill(self, action: KillWorker) -> Event | None:
        return self._signal(action.gen, WorkerProcess.kill)

    def _signal(self, gen: int, send: Callable[[WorkerProcess], None]) -> Event | None:
        worker = self.workers.get(gen)
        if worker is None:
            return None
        if self.spawner.gone is not None:
            # No one can signal it now (its spawner is gone, or we gave up on it): it is
            # dropped here; closing its channel ends it if it still runs.
            return WorkerExited(gen, self._reap(gen))
        if worker.proc.poll() is None:
            send(worker.proc)  # its channel closes: _from_worker reaps it
        return None

    def _from_worker(self, gen: int) -> None:
        try:
            msg, _ = self.workers[gen].channel.recv()
        except PeerClosed:
            self._feed(WorkerExited(gen, self._reap(gen)))
        except WireError as exc:
            self._feed(WorkerBroke(gen, str(exc)))
        else:
            self._feed(FromWorker(gen, msg))

    def _reap(self, gen: int) -> int:
        worker = self.workers.pop(gen)
        self.logins.pop(gen, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(worker.channel.fileno())
        worker.channel.sock.close()
        try:
            try:
                return worker.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                return worker.proc.wait()
        except SpawnerGone:  # it was killed with its spawner
            return -signal.SIGKILL

    # -- the helper -----------------------------------------------------------------------

    def _ask(self, call: Callable[[], object]) -> Event:
        """A blocking helper request; its outcome as the machine's event."""
        try:
            answer = call()
        except HelperRefused as exc:
            return HelperRefusal(exc.reason)
        except (WireError, OSError) as exc:
            return HelperGone(str(exc))
        return answer if isinstance(answer, TunCreated | ConfigApplied) else HelperDone()

    def _create_tun(self, action: CreateTun) -> Event:
        def create() -> TunCreated:
            ifname, ifindex, self.tun_fd = self.helper.create_tun(
                action.mtu, vnet_hdr=self.options.tun_offload
            )
            self.ifindex, self.tun_routes = ifindex, frozenset()
            return TunCreated(ifname, ifindex)

        return self._ask(create)

    def _apply_config(self, action: ApplyConfig) -> Event:
        answer = self._ask(lambda: ConfigApplied(self.helper.net_config(action.net)))
        if isinstance(answer, ConfigApplied) and self.ifindex is not None:
            self._report_competing(self.ifindex, {a.version for a in action.net.addresses})
        return answer

    def _report_competing(self, ifindex: int, versions: set[int]) -> None:
        """The ``conflict`` records (supervisor/routes.py): the host's routes that may win
        over the ones this configuration added. Information only: a table that cannot be
        read is noted and skipped."""
        try:
            table = read_table(versions)
        except (OSError, ValueError) as exc:
            log(f"cannot read the routing table for competing routes: {exc}", error=False)
            return
        installed = ours(table, ifindex)
        for reason in competing(installed - self.tun_routes, ifindex, table):
            audit.event("conflict", "info", reason)
        self.tun_routes = installed

    # -- control socket -------------------------------------------------------------------

    def _open_control(self, _action: OpenControl) -> Event | None:
        assert self.options.control_path is not None
        try:
            self.control = ControlServer(
                self.options.control_path,
                service_uid=self.options.service_uid,
                control_gid=self.options.control_gid,
            )
        except (OSError, ControlError) as exc:
            return ControlUnavailable(str(exc))
        self.sel.register(self.control.fileno(), selectors.EVENT_READ, ("control", 0))
        return None

    def _close_control(self, _action: CloseControl) -> None:
        if self.control is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.control.fileno())
            self.control.close()
            self.control = None

    def _accept(self) -> None:
        assert self.control is not None
        accepted = self.control.accept()
        if accepted is None:
            return
        conn, peer = accepted
        request = self.next_request
        self.next_request += 1
        self.requests[request] = conn
        if not authorized(
            peer, service_uid=self.options.service_uid, control_gid=self.options.control_gid
        ):
            # Drain the request if it is there (without waiting for it): closing on
            # unread data would reset the connection before the peer reads our answer.
            with contextlib.suppress(OSError):
                conn.recv(4096, socket.MSG_DONTWAIT)
            self._feed(ControlRefused(request, peer.pid, peer.uid, peer.gid))
            return
        try:
            command = parse_request_untrusted(conn.recv(4096))
        except (ValueError, OSError) as exc:
            self._feed(ControlMalformed(request, str(exc)))
            return
        self._feed(ControlCommand(request, command, peer.uid, time.time()))

    def _reply(self, action: Reply) -> None:
        conn = self.requests.pop(action.request, None)
        if conn is not None:
            reply(conn, action.body)

    # -- the end --------------------------------------------------------------------------

    def _audit(self, action: Audit) -> None:
        audit.event(action.op, action.result, action.reason, **action.args)

    def _exit(self, action: Exit) -> None:
        self.code = action.code

    def _release(self) -> None:
        """What is still open when the loop ends (normally: only the tun fd)."""
        for gen in list(self.workers):
            self._kill(KillWorker(gen))
            if gen in self.workers:
                self._reap(gen)
        for conn in self.requests.values():
            conn.close()
        self.requests.clear()
        self._close_control(CloseControl())
        if self.tun_fd is not None:
            os.close(self.tun_fd)
            self.tun_fd = None
        self.sel.close()
        self.notifier.close()
