"""The control socket's request parsing and authorization (no root needed)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from sepconnect.supervisor import control
from sepconnect.supervisor.control import ControlError, ControlServer, Peer, authorized


def test_the_peer_is_read_from_so_peercred() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert control.peer_of(a) == Peer(os.getpid(), os.getuid(), os.getgid())


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
    # supplementary groups are read from /proc/<pid>/status: our own process here
    own_groups = os.getgroups()
    if own_groups:
        assert authorized(
            Peer(os.getpid(), 1234, 1234), service_uid=service, control_gid=own_groups[0]
        )


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
