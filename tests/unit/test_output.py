"""--timestamp, --syslog and -q (launcher/output.py, supervisor/main.py log) and the
PID file of --pid-file (launcher/background.py), without a session: the relay reads
a pipe, writes a pipe and sends to a datagram socket of the test's own."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sepconnect import background, output
from sepconnect.supervisor import main as supervisor
from sepconnect.supervisor.notify import Notifier

STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "


class Relay:
    """relay() in a thread, between pipes of the test's own."""

    def __init__(self, *, timestamp: bool, syslog: bool, syslog_path: str = "/nonexistent"):
        self.source_r, self.source = os.pipe()
        self.control_r, self.control = os.pipe()
        self.out, self.out_w = os.pipe()
        self.thread = threading.Thread(
            target=output.relay,
            args=(self.source_r, self.control_r, self.out_w),
            kwargs={"timestamp": timestamp, "syslog": syslog, "syslog_path": syslog_path},
        )
        self.thread.start()

    def write(self, data: bytes) -> None:
        os.write(self.source, data)

    def finish(self) -> str:
        os.close(self.source)
        self.thread.join(10)
        assert not self.thread.is_alive()
        os.close(self.out_w)
        with os.fdopen(self.out, "rb") as f:
            text = f.read().decode()
        for fd in (self.source_r, self.control_r, self.control):
            os.close(fd)
        return text


@pytest.fixture
def syslogd(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_timestamp_begins_every_line_even_split_writes() -> None:
    relay = Relay(timestamp=True, syslog=False)
    relay.write(b"sepconnect: connected\nsepconnect worker: par")
    time.sleep(0.05)
    relay.write(b"tial line\nlast line without newline")
    lines = relay.finish().splitlines()
    assert [re.sub(STAMP, "", line) for line in lines] == [
        "sepconnect: connected",
        "sepconnect worker: partial line",
        "last line without newline",
    ]
    assert all(re.match(STAMP, line) for line in lines)


def test_without_timestamp_lines_pass_unchanged_and_long_ones_are_cut() -> None:
    relay = Relay(timestamp=False, syslog=False)
    relay.write(b"x" * (output.MAX_LINE * 2 + 10) + b"\nend\n")
    lines = relay.finish().splitlines()
    assert [len(line) for line in lines] == [output.MAX_LINE, output.MAX_LINE, 10, 3]


def test_syslog_only_once_the_tunnel_is_up(syslogd: tuple[str, socket.socket]) -> None:
    path, daemon = syslogd
    relay = Relay(timestamp=True, syslog=True, syslog_path=path)
    relay.write(b"sepconnect: before\n")
    time.sleep(0.1)
    os.write(relay.control, b"U4242")
    time.sleep(0.1)
    relay.write(b"sepconnect: after\n")
    datagram = daemon.recv(4096).decode()
    stderr = relay.finish()
    assert re.fullmatch(STAMP + "sepconnect: before\n", stderr)
    # <daemon.info> as glibc writes it, with the supervisor's pid
    assert re.fullmatch(
        r"<30>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d sepconnect\[4242\]: sepconnect: after",
        datagram,
    )


def test_syslog_without_a_daemon_stays_on_stderr() -> None:
    relay = Relay(timestamp=False, syslog=True, syslog_path="/nonexistent/log")
    os.write(relay.control, b"U1")
    time.sleep(0.1)
    relay.write(b"sepconnect: after\n")
    assert relay.finish() == "sepconnect: after\n"


def test_up_without_syslog_changes_nothing(syslogd: tuple[str, socket.socket]) -> None:
    path, daemon = syslogd
    relay = Relay(timestamp=False, syslog=False, syslog_path=path)
    os.write(relay.control, b"U1")
    time.sleep(0.1)
    relay.write(b"line\n")
    assert relay.finish() == "line\n"
    daemon.settimeout(0.1)
    with pytest.raises(TimeoutError):
        daemon.recv(4096)


def test_format_syslog() -> None:
    when = time.mktime((2026, 3, 5, 7, 8, 9, 0, 0, -1))
    assert output.format_syslog("sepconnect: x", 77, when) == (
        b"<30>Mar 05 07:08:09 sepconnect[77]: sepconnect: x"
    )


def test_quiet_hides_progress_not_failures(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "QUIET", [True])
    supervisor.log("connected to vpn", error=False)
    supervisor.log("giving up: no session after 300 s", error=True)
    supervisor.log("the privileged helper did not exit")  # direct calls: failures
    assert capsys.readouterr().err.splitlines() == [
        "sepconnect: giving up: no session after 300 s",
        "sepconnect: the privileged helper did not exit",
    ]
    supervisor.QUIET[0] = False
    supervisor.log("connected to vpn", error=False)
    assert capsys.readouterr().err == "sepconnect: connected to vpn\n"


def test_ready_hook_runs_once_with_or_without_systemd() -> None:
    calls: list[int] = []
    notifier = Notifier({})
    notifier.on_ready = lambda: calls.append(1)
    notifier.notify(status="connecting")
    assert calls == []
    notifier.notify(ready="1", status="connected")
    notifier.notify(ready="1", status="connected again")
    assert calls == [1]


def test_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "sepconnect.pid"
    path.write_text("12345\n")  # a stale one is emptied at once
    pid_file = background.PidFile(str(path))
    assert path.read_text() == ""
    pid_file.write()
    assert path.read_text() == f"{os.getpid()}\n"
    pid_file.empty()
    assert path.read_text() == ""
    pid_file.remove()
    assert not path.exists()


def test_pid_file_refuses_links_and_other_files(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(ValueError, match="--pid-file .*link"):
        background.PidFile(str(tmp_path / "link"))
    with pytest.raises(ValueError, match="--pid-file .*: not a regular file"):
        background.PidFile("/dev/null")
    with pytest.raises(ValueError, match="--pid-file /nonexistent/x.pid: No such file"):
        background.PidFile("/nonexistent/x.pid")
