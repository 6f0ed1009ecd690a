"""The supervisor's session machine (supervisor/session.py) with a fake clock and a fake
shell: no processes, no sockets, no root.

The fake shell executes actions the way supervisor/main.py does, minus the I/O: a helper
request is answered at once (and that answer fed back before anything else; a test may
have the next request of a kind fail or be refused), a spawned worker gets pid 1000 +
gen, and after each event the timer is fed if it is due — as the real loop does after
every wakeup. Tests play the workers by feeding their messages and
exits, and read what the machine did from the recorded actions.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import signal
from collections import deque
from ipaddress import ip_network
from typing import Any, TypeVar

import pytest
from messages import start_message
from netconfigs import DEFAULTS, network_config, texts

from sepconnect.ipc.helper_messages import LeftOut
from sepconnect.ipc.routing import routing_policy
from sepconnect.ipc.worker_messages import (
    Failed,
    FailureKind,
    FieldAnswer,
    LoginAnswers,
    LoginField,
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
from sepconnect.supervisor.main import start_for
from sepconnect.supervisor.policy import CRASH_LOOP_DELAYS, HEALTHY_AFTER
from sepconnect.supervisor.session import (
    AnswerForm,
    ApplyConfig,
    Audit,
    Begin,
    ConfigApplied,
    ControlCommand,
    ControlRefused,
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
    State,
    Teardown,
    TerminateWorker,
    Timer,
    TunCreated,
    WorkerExited,
    WorkerStarted,
)

COOKIE = "cookie-1"
UP = TunnelUp(server="vpn.example", net=network_config(), cookie=COOKIE)
UNUSABLE = dataclasses.replace(UP, net=network_config(ipv4=None, ipv6=None))
REKEYING_UP = dataclasses.replace(UP, rekey_time=600, rekey_method="new-tunnel")

A = TypeVar("A")


class Shell:
    """Plays supervisor/main.py around one Session, with a clock that only moves when
    told to."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("can_log_in", True)
        config.setdefault("gateway", ipaddress.ip_address(DEFAULTS["gateway"]))
        config.setdefault("control", True)
        self.session = Session(SessionConfig(supervisor_pid=42, **config))
        self.now = 1000.0
        self.done: list[Effect] = []
        self.code: ExitCode | None = None
        self.net_configs = 0  # ApplyConfig actions: the helper's NetConfig requests
        self.left_out: tuple[LeftOut, ...] = ()  # what the helper answers them with
        # helper events that answer the next request of this kind instead of success
        self.helper_fails: dict[type, Event] = {}
        self.spawner_fails: SpawnerFailed | None = None  # answers every SpawnWorker if set

    def feed(self, event: Event) -> list[Effect]:
        """One event (then the timer, if due); every action it led to, in order."""
        first = len(self.done)
        self._run(event)
        timer = self.session.get_timer()
        if timer is not None and timer <= self.now:
            self._run(Timer())
        return self.done[first:]

    def wait(self, seconds: float) -> list[Effect]:
        """Let ``seconds`` pass, feeding the timer each time it is due."""
        first = len(self.done)
        until = self.now + seconds
        while (timer := self.session.get_timer()) is not None and timer <= until:
            self.now = max(self.now, timer)
            self._run(Timer())
        self.now = until
        return self.done[first:]

    def _run(self, event: Event) -> None:
        queue: deque[Effect] = deque(self.session.handle(event, self.now))
        while queue:
            action = queue.popleft()
            self.done.append(action)
            answer = self._answer(action)
            if answer is not None:
                queue.extend(self.session.handle(answer, self.now))

    def _answer(self, action: Effect) -> Event | None:
        if isinstance(action, SpawnWorker):
            return self.spawner_fails or WorkerStarted(action.gen, 1000 + action.gen)
        failure = self.helper_fails.pop(type(action), None)
        if failure is not None:
            return failure
        if isinstance(action, HelperHello | RunScript | Teardown):
            return HelperDone()
        if isinstance(action, CreateTun):
            return TunCreated("sepc0", 7)
        if isinstance(action, ApplyConfig):
            self.net_configs += 1
            return ConfigApplied(self.left_out)
        if isinstance(action, Exit):
            self.code = action.code
        return None

    # -- playing the workers --------------------------------------------------------------

    def say(self, gen: int, message: Any) -> list[Effect]:
        return self.feed(FromWorker(gen, message))

    def exits(self, gen: int, status: int = 0) -> list[Effect]:
        return self.feed(WorkerExited(gen, status))

    def connect(self, up: TunnelUp = UP) -> int:
        """Start the session; worker 1 logs in and gets the tun."""
        started = self.feed(Begin())
        assert of(started, SpawnWorker) == [SpawnWorker(1, "login", None)]
        assert of(started, HelperHello)
        self.say(1, up)
        assert self.session.state is State.CONNECTED
        return 1

    def traffic(self, gen: int) -> list[Effect]:
        return self.say(gen, status(tx_packets=1, rx_packets=1))

    def stop_all(self) -> list[Effect]:
        """Every worker told to stop (or terminated) exits."""
        first = len(self.done)
        for gen in list(self.session.workers):
            self.exits(gen)
        return self.done[first:]


def carrier(shell: Shell) -> int | None:
    worker = shell.session.carrier
    return None if worker is None else worker.gen


def of(actions: list[Effect], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def sent(actions: list[Effect], gen: int | None = None) -> list[Any]:
    """The messages sent to worker ``gen`` (any worker if None)."""
    return [a.message for a in of(actions, Send) if gen is None or a.gen == gen]


def logs(actions: list[Effect]) -> str:
    return "\n".join(a.text for a in of(actions, Log))


def index(actions: list[Effect], predicate: Any) -> int:
    return next(i for i, a in enumerate(actions) if predicate(a))


def status(**counters: int) -> WorkerStatus:
    values = {"tx_bytes": 0, "rx_bytes": 0, "tx_packets": 0, "rx_packets": 0, **counters}
    return WorkerStatus(channel="tls", tls_cipher="TLSv1.3", dtls_cipher=None,
                        dtls_state="disabled", data_path="python", **values)  # fmt: skip


def command(shell: Shell, name: str, request: int = 1) -> list[Effect]:
    return shell.feed(ControlCommand(request, name, uid=0, wall=1_700_000_000.0))


def replies(actions: list[Effect], request: int = 1) -> list[dict[str, Any]]:
    return [a.body for a in of(actions, Reply) if a.request == request]


# -- coming up ----------------------------------------------------------------------------


def test_first_connection_creates_the_tun_configures_it_and_hands_it_over() -> None:
    shell = Shell()
    shell.connect()
    done = shell.done
    assert of(done, CreateTun) == [CreateTun(1400)]
    assert shell.net_configs == 1
    assert sent(done, 1) == [TunHandoff(ifname="sepc0")]
    # tun, then configuration, then the handoff
    assert index(done, lambda a: isinstance(a, CreateTun)) < index(
        done, lambda a: isinstance(a, ApplyConfig)
    ) < index(done, lambda a: isinstance(a, Send))  # fmt: skip
    assert of(done, OpenControl)
    assert Notify({"ready": "1", "status": "connected to vpn.example"}) in done
    assert of(done, Audit)[-1].op == "connect"
    assert shell.session.cookie == COOKIE


def test_a_failure_before_the_session_came_up_is_final() -> None:
    shell = Shell()
    shell.feed(Begin())
    shell.say(1, Failed(kind="auth_failed", message="authentication failed: Login failed."))
    assert of(shell.done, SpawnWorker) == [SpawnWorker(1, "login", None)]
    end = shell.exits(1, 1)
    assert of(end, Teardown)
    assert shell.code == ExitCode.AUTH_FAILED


def test_an_unusable_configuration_ends_the_session() -> None:
    shell = Shell()
    shell.feed(Begin())
    shell.say(1, UNUSABLE)
    assert not sent(shell.done, 1)  # no tun handed to it
    shell.exits(1, 1)
    assert shell.code == ExitCode.PROTOCOL
    assert "unusable configuration" in logs(shell.done)


def test_a_worker_naming_another_gateway_gets_no_tun() -> None:
    """F2: the gateway is the address the launcher resolved; a worker reporting another
    (it would have the helper route that address around the tunnel) is refused."""
    shell = Shell()
    shell.feed(Begin())
    [hello] = of(shell.done, HelperHello)
    assert hello.gateway == ipaddress.ip_address(DEFAULTS["gateway"])
    done = shell.say(1, dataclasses.replace(UP, net=network_config(gateway="10.20.30.40")))
    assert not of(done, CreateTun)
    assert not of(done, ApplyConfig)
    assert not sent(shell.done, 1)  # no tun handed to it
    assert "gateway 10.20.30.40: not the VPN server's address 198.18.1.1" in logs(shell.done)
    [refused] = [a for a in of(done, Audit) if a.op == "unusable_config"]
    assert refused.result == "refused"
    assert refused.reason == "gateway 10.20.30.40: not the VPN server's address 198.18.1.1"
    assert refused.args == {"worker": 1}
    shell.exits(1, 1)
    assert shell.code == ExitCode.PROTOCOL


def test_each_banner_line_is_logged_under_our_prefix() -> None:
    """A multi-line banner (printable: the schema lets no escape in) is logged line by
    line, each as "server banner: …", so that no line of it reads as one of ours."""
    shell = Shell()
    shell.connect(
        dataclasses.replace(UP, net=network_config(banner="Welcome\nsepconnect: fake line"))
    )
    text = logs(shell.done)
    assert "server banner: Welcome\nserver banner: sepconnect: fake line" in text
    assert not any(line.startswith("sepconnect:") for line in text.splitlines())


def test_an_unusable_configuration_after_resuming_in_place_stops_that_worker() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Lost(message="reset"))
    done = shell.say(gen, UNUSABLE)
    assert sent(done, gen) == [Stop(logoff=False)]  # it runs its data path again: stop it
    shell.exits(gen)
    assert shell.code == ExitCode.PROTOCOL


def test_a_worker_breaking_the_protocol_is_killed() -> None:
    shell = Shell()
    gen = shell.connect()
    done = shell.say(gen, UP)  # a second tunnel_up while carrying: not in the table
    assert of(done, KillWorker) == [KillWorker(gen)]


# -- rekey ----------------------------------------------------------------------------------


def test_rekey_is_make_before_break() -> None:
    shell = Shell()
    old = shell.connect(REKEYING_UP)
    assert shell.session.rekey_at == shell.now + 600
    started = shell.wait(600)
    assert of(started, SpawnWorker) == [SpawnWorker(2, "rekey", COOKIE)]
    assert not sent(started, old)  # the old worker carries on meanwhile
    assert carrier(shell) == old
    took_over = shell.say(2, REKEYING_UP)
    handoff = index(took_over, lambda a: isinstance(a, Send) and a.gen == 2)
    stop = index(took_over, lambda a: isinstance(a, Send) and a.gen == old)
    assert handoff < stop  # make, then break
    assert sent(took_over, old) == [Stop(logoff=False)]  # the session stays valid
    assert not of(took_over, CreateTun)
    assert shell.net_configs == 1  # same configuration: the helper was not asked again
    assert carrier(shell) == 2
    assert shell.session.last_rekey == shell.now
    assert shell.session.restarts == 0  # a rekey is not a failure
    assert "rekeyed: worker 2 took over the tunnel" in logs(took_over)


def test_rekey_when_the_server_drops_the_old_connection_first() -> None:
    """The server drops the old connection as soon as the new one shows the cookie: the
    old worker reports the loss, and it must not reconnect in place (it would take the
    session back from its replacement)."""
    shell = Shell()
    old = shell.connect(REKEYING_UP)
    command(shell, "rekey")
    dropped = shell.say(old, Lost(message="the server closed the connection"))
    assert sent(dropped, old) == [Stop(logoff=False)]
    assert not of(dropped, SpawnWorker)  # the rekey worker is the way back
    assert shell.session.state is State.RECONNECTING
    took_over = shell.say(2, REKEYING_UP)
    assert sent(took_over, 2) == [TunHandoff(ifname="sepc0")]
    assert shell.session.state is State.CONNECTED
    assert shell.session.last_rekey == shell.now


@pytest.mark.parametrize("how", ["failed", "crashed"])
def test_a_failed_rekey_keeps_the_current_connection(how: str) -> None:
    shell = Shell()
    old = shell.connect(REKEYING_UP)
    shell.wait(600)
    if how == "failed":
        done = shell.say(2, Failed(kind="unreachable", message="cannot connect"))
        done += shell.exits(2, 1)
    else:
        done = shell.exits(2, -signal.SIGKILL)
    assert "rekey failed" in logs(done)
    assert not sent(done, old)  # untouched
    assert carrier(shell) == old
    assert shell.session.state is State.CONNECTED
    assert shell.session.rekey_at == shell.now + 60  # tried again in a minute
    assert not of(done, SpawnWorker)
    assert shell.session.restarts == 0


# -- a lost connection: in place ------------------------------------------------------------


def test_a_lost_connection_is_resumed_in_place_by_the_same_worker() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    lost = shell.say(gen, Lost(message="connection to the server lost: reset"))
    assert sent(lost, gen) == [Reconnect(cookie=COOKIE)]
    assert not of(lost, SpawnWorker)
    # vpnc-script order: attempt-reconnect before the new connection
    assert index(lost, lambda a: a == RunScript("attempt-reconnect")) < index(
        lost, lambda a: isinstance(a, Send)
    )  # fmt: skip
    assert shell.session.state is State.RECONNECTING
    back = shell.say(gen, UP)
    assert not sent(back, gen)  # it kept the tun: no handoff
    assert not of(back, CreateTun)
    assert shell.net_configs == 1  # same configuration: nothing asked of the helper
    assert RunScript("reconnect") in back
    assert "worker 1 reconnected to the server with the session cookie" in logs(back)
    assert shell.session.state is State.CONNECTED
    assert shell.session.restarts == 0


def test_a_changed_configuration_after_resuming_in_place_is_applied() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Lost(message="reset"))
    routes = ["198.18.2.0/24", "198.18.3.0/24", "2001:2:0:2::/64"]
    back = shell.say(gen, dataclasses.replace(UP, net=network_config(routes=routes)))
    assert "198.18.3.0/24" in shell.session.status(shell.now, 0.0)["routes"]
    assert shell.net_configs == 2
    assert "the server changed the configuration" in logs(back)


def test_when_resuming_in_place_fails_a_new_worker_tries_at_once() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Lost(message="reset"))
    failed = shell.say(gen, Failed(kind="unreachable", message="cannot connect"))
    assert of(failed, SpawnWorker) == [SpawnWorker(2, "resume", COOKIE)]
    shell.exits(gen, 1)
    back = shell.say(2, UP)
    assert sent(back, 2) == [TunHandoff(ifname="sepc0")]
    assert shell.session.state is State.CONNECTED


# -- a worker dies --------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_at_once_with_the_cookie_and_the_same_tun() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    crashed = shell.exits(gen, -signal.SIGKILL)
    assert of(crashed, SpawnWorker) == [SpawnWorker(2, "resume", COOKIE)]
    assert any(a.op == "worker_crash" for a in of(crashed, Audit))
    assert "worker 1 exited unexpectedly (killed by SIGKILL)" in logs(crashed)
    back = shell.say(2, UP)
    assert sent(back, 2) == [TunHandoff(ifname="sepc0")]
    assert len(of(shell.done, CreateTun)) == 1  # the tun stayed
    assert shell.net_configs == 1  # the routes were not touched
    assert shell.session.restarts == 1


def test_twenty_back_to_back_crashes_of_healthy_workers_each_recover_at_once() -> None:
    """Each worker moved traffic (it says so once) and is then killed 50 ms later: every
    one is replaced at once, without a growing delay, and the session never ends."""
    shell = Shell()
    gen = shell.connect()
    for n in range(20):
        shell.traffic(gen)
        shell.wait(0.05)
        crashed = shell.exits(gen, -signal.SIGKILL)
        assert of(crashed, SpawnWorker) == [SpawnWorker(gen + 1, "resume", COOKIE)], n
        gen += 1
        shell.say(gen, UP)
        assert shell.session.state is State.CONNECTED
    assert shell.session.restarts == 20
    assert shell.code is None


def test_a_worker_that_carried_the_tun_long_enough_without_traffic_is_healthy() -> None:
    shell = Shell()
    gen = shell.connect()
    for _ in range(len(CRASH_LOOP_DELAYS) + 3):
        shell.wait(HEALTHY_AFTER)  # an idle tunnel
        crashed = shell.exits(gen, -signal.SIGKILL)
        gen += 1
        assert of(crashed, SpawnWorker) == [SpawnWorker(gen, "resume", COOKIE)]
        shell.say(gen, UP)
    assert shell.code is None


def test_crash_loop_guard_backs_off_then_gives_up() -> None:
    """A worker that dies right after it gets the tun, every time (any cause): the
    replacements wait 0, 1, 2, 4, 8 s, then the session ends with exit 13."""
    shell = Shell()
    gen = shell.connect()
    delays: list[float] = []
    for _ in range(10):
        shell.wait(0.1)
        crashed = shell.exits(gen, -signal.SIGSEGV)
        if shell.code is not None:
            break
        waited = 0.0
        while not of(crashed, SpawnWorker):
            crashed = shell.wait(0.5)
            waited += 0.5
            assert waited < 60
        delays.append(waited)
        gen += 1
        shell.say(gen, UP)
    assert delays == list(CRASH_LOOP_DELAYS)
    assert shell.code == ExitCode.CRASH_LOOP
    assert "failed 6 times in a row right after getting the tun" in logs(shell.done)
    assert of(shell.done, Teardown)


def test_crash_loop_guard_counts_a_connection_lost_right_after_connecting() -> None:
    """A server that drops each connection as soon as it is made: resuming in place
    would loop at full speed; the guard slows it down and ends it."""
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    resumed_in_place = 0
    for _ in range(20):
        done = shell.say(gen, Lost(message="the server closed the connection"))
        if shell.code is not None or shell.session.state is State.DISCONNECTING:
            break
        if Reconnect(cookie=COOKIE) in sent(done, gen):
            resumed_in_place += 1
            shell.say(gen, UP)
            continue
        # a new worker, after a delay
        assert sent(done, gen) == [Stop(logoff=False)]
        shell.exits(gen)
        done = shell.wait(CRASH_LOOP_DELAYS[-1])
        assert of(done, SpawnWorker)
        gen += 1
        shell.say(gen, UP)
    shell.stop_all()
    assert resumed_in_place == 2  # the first loss (healthy), then the first early one
    assert shell.code == ExitCode.CRASH_LOOP


def test_a_healthy_stretch_clears_the_crash_loop_count() -> None:
    """Quick deaths long apart are no crash loop: a worker replaced in good health (here
    by a rekey) starts the count again."""
    shell = Shell()
    gen = shell.connect(REKEYING_UP)
    for _ in range(len(CRASH_LOOP_DELAYS)):
        shell.wait(0.1)
        shell.exits(gen, -signal.SIGSEGV)
        shell.wait(CRASH_LOOP_DELAYS[-1])
        gen += 1
        shell.say(gen, REKEYING_UP)
    assert shell.session.early == len(CRASH_LOOP_DELAYS)
    shell.traffic(gen)
    shell.wait(600)  # rekey: a new worker takes over from the healthy one
    shell.say(gen + 1, REKEYING_UP)
    shell.exits(gen)
    crashed = shell.exits(gen + 1, -signal.SIGSEGV)
    assert of(crashed, SpawnWorker)  # at once, and the session goes on
    assert shell.code is None


def test_a_replacement_that_cannot_connect_waits_as_any_reconnect() -> None:
    """The crash-loop delay is for the attempt after a quick death; a replacement that
    then fails to connect backs off as any reconnect does (at once, 1 s, 2 s, …)."""
    shell = Shell()
    gen = shell.connect()
    for _ in range(3):  # three quick deaths: the next attempt waits CRASH_LOOP_DELAYS[2]
        shell.wait(0.1)
        shell.exits(gen, -signal.SIGSEGV)
        gen += 1
        if shell.session.retry_at is not None:
            assert shell.session.retry_at - shell.now == CRASH_LOOP_DELAYS[shell.session.early - 1]
        shell.wait(CRASH_LOOP_DELAYS[-1])
        shell.say(gen, UP)
    shell.wait(0.1)
    shell.exits(gen, -signal.SIGSEGV)  # the fourth: 4 s
    assert shell.session.retry_at == shell.now + CRASH_LOOP_DELAYS[3]
    shell.wait(CRASH_LOOP_DELAYS[3])
    shell.say(gen + 1, Failed(kind="unreachable", message="cannot connect"))
    assert shell.session.retry_at == shell.now + 1.0


def test_a_deleted_tun_ends_the_session_at_once() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    done = shell.say(gen, Failed(kind="tun_lost", message="the tun device sepc0 is gone"))
    assert not of(done, SpawnWorker)
    assert "reconnecting" not in logs(done)
    shell.exits(gen, 1)
    assert shell.code == ExitCode.ERROR


# -- the session is gone at the server ------------------------------------------------------


@pytest.mark.parametrize("can_log_in", [True, False])
def test_cookie_rejected_logs_in_again_only_with_kept_credentials(can_log_in: bool) -> None:
    shell = Shell(can_log_in=can_log_in)
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Lost(message="reset"))  # the server restarted
    rejected = shell.say(gen, Failed(kind="cookie_rejected", message="the cookie was rejected"))
    rejected += shell.exits(gen, 1)
    if can_log_in:
        assert of(rejected, SpawnWorker) == [SpawnWorker(2, "login", None)]
        assert shell.session.cookie is None
        back = shell.say(2, dataclasses.replace(UP, cookie="cookie-2"))
        assert sent(back, 2) == [TunHandoff(ifname="sepc0")]  # the same tun
        assert shell.session.cookie == "cookie-2"
        assert shell.code is None
    else:
        assert not of(rejected, SpawnWorker)
        assert shell.code == ExitCode.COOKIE_REJECTED
        assert "nothing is kept to log in again unattended" in logs(rejected)


@pytest.mark.parametrize("always_on", [False, True])
def test_admin_disconnect_ends_the_session_unless_always_on(always_on: bool) -> None:
    shell = Shell(always_on=always_on)
    gen = shell.connect()
    shell.traffic(gen)
    ended = shell.say(gen, Failed(kind="terminated", message="the server ended the session"))
    ended += shell.exits(gen, 1)
    if always_on:
        assert of(ended, SpawnWorker) == [SpawnWorker(2, "login", None)]
        shell.say(2, dataclasses.replace(UP, cookie="cookie-2"))
        assert shell.session.state is State.CONNECTED
    else:
        assert not of(ended, SpawnWorker)
        assert shell.code == ExitCode.SERVER_DISCONNECTED
        disconnect = [a for a in of(ended, Audit) if a.op == "disconnect"]
        assert disconnect[0].args == {"logoff": False}  # nothing to log off from


def test_a_login_that_cannot_reach_the_server_is_retried_as_a_login() -> None:
    # Once the server ended the session, no cookie is left: every later attempt
    # (after the restarting server resets the connection) logs in again.
    shell = Shell(always_on=True)
    gen = shell.connect()
    shell.traffic(gen)
    ended = shell.say(gen, Failed(kind="terminated", message="the server ended the session"))
    assert of(ended + shell.exits(gen, 1), SpawnWorker) == [SpawnWorker(2, "login", None)]
    again = shell.say(2, Failed(kind="unreachable", message="TLS handshake failed"))
    again += shell.exits(2, 1) + shell.wait(5)
    assert of(again, SpawnWorker) == [SpawnWorker(3, "login", None)]
    form = shell.say(3, FORM)
    assert not of(form, KillWorker)
    shell.say(3, dataclasses.replace(UP, cookie="cookie-3"))
    assert shell.session.state is State.CONNECTED


def test_always_on_needs_credentials_to_log_in_again() -> None:
    shell = Shell(always_on=True, can_log_in=False)
    gen = shell.connect()
    shell.say(gen, Failed(kind="terminated", message="the server ended the session"))
    shell.exits(gen, 1)
    assert shell.code == ExitCode.SERVER_DISCONNECTED


def test_reconnect_timeout_expiry_ends_the_session() -> None:
    shell = Shell(reconnect_timeout=30.0)
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Lost(message="reset"))
    lost_at = shell.now
    done = shell.say(gen, Failed(kind="unreachable", message="cannot connect"))
    done += shell.exits(gen, 1)
    spawned = 0
    while shell.code is None and shell.now - lost_at < 120:
        for spawn in of(done, SpawnWorker):
            assert spawn.purpose == "resume"
            spawned += 1
            shell.wait(0.2)
            done = shell.say(spawn.gen, Failed(kind="unreachable", message="cannot connect"))
            done += shell.exits(spawn.gen, 1)
            break
        else:
            done = shell.wait(0.5)
    assert shell.code == ExitCode.SERVER_DISCONNECTED
    assert shell.now - lost_at > 30
    assert "no session after 30 s" in logs(shell.done)
    assert spawned >= 4  # 0, 1, 2, 4, 8, 16 s: it did keep trying


# -- signals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "logoff"), [(signal.SIGTERM, True), (signal.SIGINT, True), (signal.SIGHUP, False)]
)
def test_terminating_signals_stop_the_worker_then_tear_down(
    signum: signal.Signals, logoff: bool
) -> None:
    shell = Shell()
    gen = shell.connect()
    stopping = shell.feed(SignalReceived(signum))
    assert sent(stopping, gen) == [Stop(logoff=logoff)]
    assert not of(stopping, Teardown)  # not before the worker has closed its session
    assert Notify({"stopping": "1", "status": "disconnecting"}) in stopping
    assert shell.feed(SignalReceived(signal.SIGTERM)) == []  # once is enough
    shell.say(gen, Stopped(tx_bytes=10, rx_bytes=20))
    end = shell.exits(gen, 0)
    assert of(end, Teardown)
    assert shell.code == ExitCode.OK


def test_a_worker_that_does_not_stop_is_killed_after_the_grace() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.feed(SignalReceived(signal.SIGTERM))
    later = shell.wait(5.0)
    assert of(later, KillWorker) == [KillWorker(gen)]
    shell.exits(gen, -signal.SIGKILL)
    assert shell.code == ExitCode.OK


def test_sigusr2_replaces_the_worker_and_sigusr1_raises_verbosity() -> None:
    shell = Shell()
    gen = shell.connect()
    louder = shell.feed(SignalReceived(signal.SIGUSR1))
    assert "verbosity 1" in logs(louder)
    again = shell.feed(SignalReceived(signal.SIGUSR2))
    assert sent(again, gen) == [Stop(logoff=False)]
    assert of(again, SpawnWorker) == [SpawnWorker(2, "resume", COOKIE)]
    assert "reconnecting (SIGUSR2)" in logs(again)
    assert "worker 2 started" in logs(again)  # verbose now
    shell.exits(gen)
    back = shell.say(2, UP)
    assert sent(back, 2) == [TunHandoff(ifname="sepc0")]
    assert shell.session.restarts == 1


# -- the control socket ---------------------------------------------------------------------


def test_control_status_asks_the_carrier_for_its_counters() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.wait(2.5)
    asked = command(shell, "status")
    assert sent(asked, gen) == [QueryStatus()]
    assert not replies(asked)
    answered = shell.say(gen, status(tx_bytes=100, rx_bytes=200, tx_packets=1, rx_packets=2))
    [body] = replies(answered)
    report = body["status"]
    assert body["ok"] is True
    assert report["state"] == "connected"
    assert report["interface"] == "sepc0"
    assert report["routes"] == list(texts(routing_policy(UP.net)[0].routes))
    assert (report["tx_bytes"], report["rx_packets"]) == (100, 2)
    assert report["worker_pid"] == 1001
    assert report["uptime"] == 2.5
    assert report["connected_since"] == 1_700_000_000.0 - 2.5
    assert report["supervisor_pid"] == 42


def test_control_status_is_answered_without_the_counters_after_a_second() -> None:
    shell = Shell()
    shell.connect()
    command(shell, "status")
    assert not replies(shell.wait(0.9))
    [body] = replies(shell.wait(0.2))
    assert body["status"]["state"] == "connected"


def test_control_status_counts_the_traffic_of_replaced_workers() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.say(gen, status(tx_bytes=100, rx_bytes=100, tx_packets=1, rx_packets=1))
    shell.exits(gen, -signal.SIGKILL)
    shell.say(2, UP)
    command(shell, "status")
    [body] = replies(shell.say(2, status(tx_bytes=5, rx_bytes=5, tx_packets=1, rx_packets=1)))
    assert body["status"]["tx_bytes"] == 105
    assert body["status"]["worker_restarts"] == 1


def test_control_rekey_and_reconnect() -> None:
    shell = Shell()
    gen = shell.connect()
    rekey = command(shell, "rekey", request=1)
    assert replies(rekey, 1) == [{"ok": True}]
    assert of(rekey, SpawnWorker) == [SpawnWorker(2, "rekey", COOKIE)]
    assert not sent(rekey, gen)
    shell.say(2, UP)
    shell.exits(gen)
    reconnect = command(shell, "reconnect", request=2)
    assert replies(reconnect, 2) == [{"ok": True}]
    assert sent(reconnect, 2) == [Stop(logoff=False)]
    assert of(reconnect, SpawnWorker) == [SpawnWorker(3, "resume", COOKIE)]
    # while reconnecting, neither is possible
    busy = command(shell, "rekey", request=3)
    assert replies(busy, 3) == [{"ok": False, "error": "not connected (reconnecting)"}]


def test_control_disconnect_logs_off() -> None:
    shell = Shell()
    gen = shell.connect()
    bye = command(shell, "disconnect")
    assert replies(bye) == [{"ok": True}]
    assert sent(bye, gen) == [Stop(logoff=True)]
    shell.exits(gen)
    assert shell.code == ExitCode.OK


def test_control_refused_peer_is_logged_audited_and_answered() -> None:
    shell = Shell()
    shell.connect()
    done = shell.feed(ControlRefused(1, pid=7, uid=65534, gid=65534))
    assert replies(done) == [{"ok": False, "error": "permission denied"}]
    assert [a.op for a in of(done, Audit)] == ["control_refused"]
    assert "refused pid 7 uid 65534" in logs(done)


def test_a_new_worker_still_logging_in_is_terminated_on_disconnect() -> None:
    shell = Shell()
    shell.feed(Begin())
    done = shell.feed(SignalReceived(signal.SIGINT))
    assert of(done, TerminateWorker) == [TerminateWorker(1)]
    shell.exits(1, -signal.SIGTERM)
    assert shell.code == ExitCode.OK


FAILURES: tuple[FailureKind, ...] = ("auth_failed", "cert_invalid", "protocol", "need_input")


@pytest.mark.parametrize("kind", FAILURES)
def test_failures_another_attempt_cannot_fix_end_the_session_with_their_code(
    kind: FailureKind,
) -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Failed(kind=kind, message=kind))
    shell.exits(gen, 1)
    assert shell.code is not None
    assert shell.code not in (ExitCode.OK, ExitCode.SERVER_DISCONNECTED)


# -- the network configuration and the helper -----------------------------------------------

EXCLUDED = network_config(exclude=["198.19.99.0/24", "198.18.7.0/24"])
LEFT_OUT = (
    LeftOut(
        prefix=ip_network("198.19.99.0/24"),
        reason="route lookup of 198.19.99.1: unreachable (no route outside the tunnel)",
    ),
)


def test_excludes_the_helper_left_out_are_in_status_and_asked_for_again() -> None:
    shell = Shell()
    shell.left_out = LEFT_OUT
    gen = shell.connect(dataclasses.replace(UP, net=EXCLUDED))
    assert "exclude 198.19.99.0/24 left out, it stays in the tunnel: route lookup" in logs(
        shell.done
    )
    report = shell.session.status(shell.now, 0.0)
    assert report["left_out_excludes"] == [
        {"prefix": "198.19.99.0/24", "reason": LEFT_OUT[0].reason}
    ]
    assert report["excluded_routes"] == ["198.18.7.0/24"]
    # The same configuration after a restart: asked for again (a path may exist now).
    shell.traffic(gen)
    shell.left_out = ()
    shell.exits(gen, -signal.SIGKILL)
    shell.say(2, dataclasses.replace(UP, net=EXCLUDED))
    assert shell.net_configs == 2
    report = shell.session.status(shell.now, 0.0)
    assert report["left_out_excludes"] == []
    assert report["excluded_routes"] == ["198.19.99.0/24", "198.18.7.0/24"]
    # Nothing left out any more: the same configuration again asks nothing.
    shell.traffic(2)
    shell.exits(2, -signal.SIGKILL)
    shell.say(3, dataclasses.replace(UP, net=EXCLUDED))
    assert shell.net_configs == 2


def test_the_workers_report_goes_through_the_routing_policy_again() -> None:
    """The worker is not trusted: the supervisor applies the routing policy to what it
    reports (an honest report comes back unchanged) and says what it left out."""
    dishonest = network_config(
        ipv6=None, routes=["198.18.2.0/24", "2001:2:0:2::/64"], exclude=["0.0.0.0/0"]
    )
    shell = Shell()
    shell.connect(dataclasses.replace(UP, net=dishonest))
    [applied] = of(shell.done, ApplyConfig)
    assert applied.net == routing_policy(dishonest)[0]
    assert texts(applied.net.routes) == ("198.18.2.0/24",)
    assert applied.net.exclude == ()
    text = logs(shell.done)
    assert "route 2001:2:0:2::/64 left out: no IPv6 address on the tunnel" in text
    assert "exclude 0.0.0.0/0 left out" in text


@pytest.mark.parametrize(
    "answer",
    [HelperRefusal("too many routes"), HelperGone("net_config: no reply from the helper")],
    ids=["refused", "failed"],
)
def test_a_helper_that_refuses_or_fails_the_configuration_ends_the_session(
    answer: HelperRefusal | HelperGone,
) -> None:
    shell = Shell()
    shell.helper_fails[ApplyConfig] = answer
    shell.feed(Begin())
    done = shell.say(1, UP)
    assert not sent(done, 1)  # no tun handed to it
    assert of(done, TerminateWorker) == [TerminateWorker(1)]
    end = shell.exits(1, -signal.SIGTERM)
    if isinstance(answer, HelperRefusal):
        assert "the privileged helper refused the network configuration: too many" in logs(done)
        assert of(end, Teardown)
        assert shell.code == ExitCode.HELPER_REFUSED
    else:
        assert "the privileged helper failed: net_config: no reply" in logs(done)
        assert not of(end, Teardown)  # its channel is not used again
        assert shell.code == ExitCode.ERROR


def test_a_helper_failing_after_an_in_place_reconnect_logs_off() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Lost(message="reset"))
    shell.helper_fails[ApplyConfig] = HelperGone("broken pipe")
    changed = dataclasses.replace(UP, net=network_config(routes=["198.18.3.0/24"]))
    done = shell.say(gen, changed)
    assert sent(done, gen) == [Stop(logoff=True)]
    shell.exits(gen)
    assert shell.code == ExitCode.ERROR


def test_the_helper_going_away_ends_the_session_without_a_teardown() -> None:
    shell = Shell()
    gen = shell.connect()
    done = shell.feed(HelperGone("its socket closed"))
    assert "the privileged helper exited unexpectedly" in logs(done)
    assert sent(done, gen) == [Stop(logoff=True)]
    end = shell.exits(gen)
    assert not of(end, Teardown)
    assert shell.code == ExitCode.ERROR


@pytest.mark.parametrize(
    "answer", [HelperRefusal("protocol 2"), HelperGone("no reply")], ids=["refused", "failed"]
)
def test_a_helper_that_does_not_start_ends_everything_at_once(
    answer: HelperRefusal | HelperGone,
) -> None:
    shell = Shell()
    shell.helper_fails[HelperHello] = answer
    done = shell.feed(Begin())
    assert "the privileged helper did not start" in logs(done)
    assert of(done, TerminateWorker) == [TerminateWorker(1)]
    assert not of(done, Audit)
    assert not of(done, OpenControl)
    end = shell.exits(1, -signal.SIGTERM)
    assert not of(end, Teardown)
    assert shell.code == ExitCode.ERROR


GONE = SpawnerFailed("the worker spawner: its channel closed")


def test_the_spawner_going_away_ends_the_session_with_a_teardown() -> None:
    """Its workers die with it; the helper is fine: the session ends in order."""
    shell = Shell()
    gen = shell.connect()
    done = shell.feed(GONE)
    assert "the worker spawner: its channel closed; ending the session" in logs(done)
    assert sent(done, gen) == [Stop(logoff=True)]
    assert not of(done, SpawnWorker)
    end = shell.exits(gen, -signal.SIGKILL)
    assert of(end, Teardown)
    assert shell.code == ExitCode.ERROR


def test_a_worker_the_spawner_cannot_start_ends_the_session() -> None:
    shell = Shell()
    shell.spawner_fails = GONE
    done = shell.feed(Begin())
    assert of(done, SpawnWorker) == [SpawnWorker(1, "login", None)]
    assert "ending the session" in logs(done)
    assert not shell.session.workers  # never started: nothing to wait for
    assert not of(done, TerminateWorker)
    assert not of(done, OpenControl)  # the helper's hello answered while ending
    assert of(done, Teardown)
    assert shell.code == ExitCode.ERROR


def test_a_replacement_the_spawner_cannot_start_ends_the_session() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.spawner_fails = GONE
    done = shell.exits(gen, -signal.SIGKILL)
    assert of(done, SpawnWorker) == [SpawnWorker(2, "resume", COOKIE)]
    assert "ending the session" in logs(done)
    assert of(done, Teardown)
    assert shell.code == ExitCode.ERROR


def test_a_failing_vpnc_script_does_not_end_the_session() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.helper_fails[RunScript] = HelperGone("script_event: no reply from the helper")
    done = shell.exits(gen, -signal.SIGKILL)
    assert "vpnc-script attempt-reconnect: script_event: no reply" in logs(done)
    assert of(done, SpawnWorker) == [SpawnWorker(2, "resume", COOKIE)]
    back = shell.say(2, UP)
    assert RunScript("reconnect") in back
    assert shell.session.state is State.CONNECTED


def test_a_refused_reconnect_script_ends_the_session() -> None:
    """The helper refuses a reconnect run that failed (--script): exit 9, logged off and
    torn down; a refused attempt-reconnect is only logged."""
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.helper_fails[RunScript] = HelperRefusal("vpnc-script attempt-reconnect failed")
    done = shell.say(gen, Lost(message="reset"))
    assert "vpnc-script attempt-reconnect: vpnc-script attempt-reconnect failed" in logs(done)
    assert shell.session.state is State.RECONNECTING
    shell.helper_fails[RunScript] = HelperRefusal("vpnc-script reconnect failed: /x exited with 1")
    back = shell.say(gen, UP)
    assert RunScript("reconnect") in back
    assert (
        "the privileged helper refused the network configuration: vpnc-script reconnect "
        "failed: /x exited with 1"
    ) in logs(back)
    assert sent(back, gen) == [Stop(logoff=True)]
    end = shell.exits(gen)
    assert of(end, Teardown)
    assert shell.code == ExitCode.HELPER_REFUSED


def test_only_a_worker_that_resumes_gets_the_cookie() -> None:
    start = start_message("https://vpn.example/")
    assert start_for(start, SpawnWorker(1, "login", None)) == start
    for purpose in ("resume", "rekey"):
        resuming = start_for(start, SpawnWorker(2, purpose, COOKIE))  # type: ignore[arg-type]
        assert resuming.cookie == COOKIE
        assert dataclasses.replace(resuming, cookie=None) == start


# -- login forms ----------------------------------------------------------------------------

FORM = LoginForm(
    form_id="main",
    banner=None,
    message=None,
    error=None,
    fields=(LoginField(kind="password", name="password", label="Password:"),),
)
ANSWERS = LoginAnswers(answers=(FieldAnswer(name="password", value="hunter2"),))


def test_the_pre_login_banner_is_shown_and_recorded_once() -> None:
    """Issue 14, item 8: the login form's banner is logged line by line under our prefix
    and written to the session log, once for each text (a second form repeating it, or a
    re-login's, adds nothing)."""
    shell = Shell()
    shell.feed(Begin())
    banned = dataclasses.replace(FORM, banner="Authorized use only\nsepconnect: fake")
    done = shell.say(1, banned)
    assert "server login banner: Authorized use only\nserver login banner: sepconnect: fake" in (
        logs(done)
    )
    [record] = [a for a in of(done, Audit) if a.op == "login_banner"]
    assert (record.result, record.reason) == ("info", "Authorized use only\nsepconnect: fake")
    assert of(done, AnswerForm)
    again = shell.say(1, banned)
    assert "banner" not in logs(again)
    assert not [a for a in of(again, Audit) if a.op == "login_banner"]


def test_a_login_form_is_answered_by_the_shell_and_the_answers_sent() -> None:
    shell = Shell()
    shell.feed(Begin())
    asked = shell.say(1, FORM)
    assert of(asked, AnswerForm) == [AnswerForm(1, FORM, may_ask=True)]
    assert sent(shell.feed(FormAnswered(1, ANSWERS))) == [ANSWERS]
    shell.say(1, UP)  # then the worker connects as ever
    assert shell.session.state is State.CONNECTED


def test_a_login_after_the_session_came_up_never_asks_the_terminal() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Lost(message="reset"))
    relogin = shell.say(gen, Failed(kind="cookie_rejected", message="the cookie was rejected"))
    relogin += shell.exits(gen, 1)
    assert of(relogin, SpawnWorker) == [SpawnWorker(2, "login", None)]
    assert of(shell.say(2, FORM), AnswerForm) == [AnswerForm(2, FORM, may_ask=False)]


def test_a_worker_with_the_cookie_that_sends_a_form_is_killed() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.feed(SignalReceived(signal.SIGUSR2))  # reconnect: a worker resumes with the cookie
    assert shell.session.workers[2].purpose == "resume"
    out = shell.say(2, FORM)
    assert not of(out, AnswerForm)
    assert of(out, KillWorker) == [KillWorker(2)]
    assert gen in shell.session.workers


def test_a_form_nothing_answers_ends_the_login_without_answers() -> None:
    shell = Shell(can_log_in=False)
    shell.feed(Begin())
    shell.say(1, FORM)
    out = shell.feed(FormUnanswerable(1, "need_input", "nothing answers Password:"))
    assert not sent(out)
    assert of(out, TerminateWorker) == [TerminateWorker(1)]  # it waits for answers
    out += shell.exits(1, 0)
    assert shell.code == ExitCode.NEED_INPUT
    assert "nothing answers Password:" in logs(out)


def test_answers_for_a_worker_no_longer_logging_in_are_dropped() -> None:
    shell = Shell()
    shell.feed(Begin())
    shell.say(1, FORM)
    shell.feed(SignalReceived(signal.SIGTERM))  # while the terminal asked
    assert not sent(shell.feed(FormAnswered(1, ANSWERS)))


def test_a_cookie_given_at_the_start_resumes_instead_of_logging_in() -> None:
    shell = Shell(cookie=COOKIE)
    started = shell.feed(Begin())
    assert of(started, SpawnWorker) == [SpawnWorker(1, "resume", COOKIE)]
    assert of(shell.say(1, FORM), KillWorker) == [KillWorker(1)]


# -- more of a worker's life ----------------------------------------------------------------


def test_the_data_channel_is_logged_once_per_connection() -> None:
    shell = Shell()
    gen = shell.connect()
    moving = status(tx_packets=1, rx_packets=1)
    handshaking = dataclasses.replace(moving, dtls_state="handshaking")
    dtls = dataclasses.replace(moving, channel="dtls", dtls_cipher="DTLS1.2 AES", dtls_state="up")
    assert logs(shell.say(gen, handshaking)) == ""  # not news yet
    assert logs(shell.say(gen, dtls)) == "data channel: DTLS (DTLS1.2 AES)"
    assert logs(shell.say(gen, dtls)) == ""  # told already
    shell.say(gen, Lost(message="reset"))
    shell.say(gen, UP)
    assert logs(shell.say(gen, dtls)) == "data channel: DTLS (DTLS1.2 AES)"  # a new connection


def test_a_worker_reconnecting_in_place_logs_off_when_the_session_ends() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.say(gen, Lost(message="reset"))
    done = shell.feed(SignalReceived(signal.SIGTERM))
    assert sent(done, gen) == [Stop(logoff=True)]
    assert not of(shell.say(gen, UP), Send)  # it got through before it read the stop
    end = shell.exits(gen)
    assert of(end, Teardown)
    assert shell.code == ExitCode.OK


def test_a_lost_connection_while_logging_out_is_not_resumed() -> None:
    shell = Shell()
    gen = shell.connect()
    shell.traffic(gen)
    shell.feed(SignalReceived(signal.SIGINT))
    done = shell.say(gen, Lost(message="reset"))  # crossed our stop
    assert not sent(done)
    assert not of(done, SpawnWorker)
    shell.exits(gen)
    assert shell.code == ExitCode.OK
