"""The control socket's request parsing and authorization (root only for 300 groups)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sepconnect.supervisor import control
from sepconnect.supervisor.control import ControlError, ControlServer, Peer, authorized


def test_the_peer_is_read_from_so_peercred() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        peer = control.peer_of(a)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())


@pytest.mark.parametrize("command", control.COMMANDS)
def test_known_commands_parse(command: str) -> None:
    assert control.parse_request_untrusted(f'{{"command": "{command}"}}'.encode()) == command


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"command": "shutdown"}',
        b'{"command": "status", "x": 1}',
        b'{"cmd": "status"}',
        b'"status"',
        b"{" * 10000,
    ],
)
def test_anything_else_is_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        control.parse_request_untrusted(data)


def test_authorization() -> None:
    service = 999
    assert authorized(Peer(1, 0, 0), service_uid=service, control_gid=None)
    assert not authorized(Peer(1, service, service), service_uid=service, control_gid=4)
    assert not authorized(Peer(1, 1234, 1234), service_uid=service, control_gid=None)
    assert authorized(Peer(1, 1234, 4), service_uid=service, control_gid=4)
    assert authorized(Peer(1, 1234, 1234, frozenset({7, 4})), service_uid=service, control_gid=4)
    assert not authorized(Peer(1, 1234, 1234, frozenset({7})), service_uid=service, control_gid=4)


def test_peer_groups_are_the_connecting_process_groups() -> None:
    """SO_PEERGROUPS: the groups the peer had at connect(), as the kernel recorded them."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        peer = control.peer_of(a)
    assert peer.pid == os.getpid()
    assert peer.groups == frozenset(os.getgroups())


def test_a_peer_with_more_groups_than_the_first_buffer(tmp_path: Path) -> None:
    """More than 256 supplementary groups (CPython's getsockopt buffer): all read."""
    if os.geteuid() != 0:
        pytest.skip("setting 300 supplementary groups needs root")
    groups = list(range(70000, 70300))
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    child = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", f"import socket; s = socket.socket(socket.AF_UNIX, "
         f"socket.SOCK_SEQPACKET); s.connect({path!r}); s.recv(1)"],
        extra_groups=groups,
    )  # fmt: skip
    try:
        conn, _ = listener.accept()
        with conn:
            assert control.peer_of(conn).groups == frozenset(groups)
            conn.send(b"x")
    finally:
        listener.close()
        child.wait(timeout=10)


def test_server_round_trip_and_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(path)
    stale.close()  # a dead session's socket: taken over
    server = ControlServer(path, service_uid=os.getuid() + 1, control_gid=None)
    assert (Path(path).stat().st_mode & 0o777) == 0o600
    with pytest.raises(ControlError, match="another sepconnect session"):
        ControlServer(path, service_uid=0, control_gid=None)

    def serve() -> None:
        server.sock.setblocking(True)
        while True:  # the refused second server's probe connected first: skip it
            conn, _ = server.sock.accept()
            data = conn.recv(4096)
            if data:
                break
            conn.close()
        command = control.parse_request_untrusted(data)
        control.reply(conn, {"ok": True, "echo": command})

    thread = threading.Thread(target=serve)
    thread.start()
    assert control.request(path, "status") == {"ok": True, "echo": "status"}
    thread.join()
    server.close()
    assert not Path(path).exists()
    with pytest.raises(ControlError, match="no sepconnect session"):
        control.request(path, "status")


def test_status_text_shows_times_as_dates_and_lists_as_words() -> None:
    from sepconnect.remote import _format_status

    text = _format_status(
        {"state": "connected", "connected_since": 0, "last_rekey": None, "routes": ["a", "b"]}
    )
    assert "connected since: 1970-01-01T00:00:00+00:00" in text
    assert "last rekey: -" in text
    assert "routes: a b" in text


def test_status_text_escapes_what_a_terminal_would_act_on() -> None:
    """Whatever a session answers (its supervisor is not trusted to have cleaned it), a
    value shows as one line with no escape sequence, OSC 52 and bidi controls included."""
    from sepconnect.remote import _format_status

    osc52 = "\x1b]52;c;cm0gLXJmIH4=\x07"
    text = _format_status({"server": f"vpn{osc52}\nfake: line", "last_error": "a\u202eb"})
    for character in ("\x1b", "\x07", "\u202e"):
        assert character not in text
    assert text.count("\n") == 1  # two fields, two lines
    assert "server: vpn\\x1b]52;c;cm0gLXJmIH4=\\x07\\nfake: line" in text
    assert "last error: a\\u202eb" in text


def test_a_peer_that_has_exited_is_still_known_by_its_groups() -> None:
    """The groups come from the connection, not /proc/<pid>: a member of the control
    group whose process is gone by the time the supervisor looks is still a member
    (and a non-member whose pid was reused is not taken for the new process)."""
    if os.geteuid() != 0:
        pytest.skip("setting supplementary groups needs root")
    path = f"\0sepconnect-test-groups-{os.getpid()}"  # abstract: no file permissions
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    with listener:
        subprocess.run(  # noqa: S603
            [sys.executable, "-c", f"import socket; socket.socket(socket.AF_UNIX, "
             f"socket.SOCK_SEQPACKET).connect({path!r})"],
            user=65534, group=65534, extra_groups=[4242], check=True, timeout=10,
        )  # fmt: skip
        conn, _ = listener.accept()
        with conn:
            peer = control.peer_of(conn)
    assert authorized(peer, service_uid=999, control_gid=4242)
