"""What reaches systemd and the terminal from the worker is one clean line per field
(issue 13, F8/F10)."""

from __future__ import annotations

import socket
from pathlib import Path

import msgpack
import pytest
from netconfigs import network_config

from sepconnect.ipc.wire import WireError
from sepconnect.ipc.worker_messages import FROM_WORKER, TunnelUp
from sepconnect.supervisor.notify import Notifier


def test_a_value_cannot_add_a_field_to_the_notify_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    try:
        notifier.notify(ready="1", status="connected to vpn\nMAINPID=4242\nWATCHDOG_USEC=0\x1b[2J")
        lines = systemd.recv(4096).decode().split("\n")
    finally:
        notifier.close()
        systemd.close()
    assert lines[0] == "READY=1"
    assert lines[1].startswith("STATUS=connected to vpn MAINPID=4242")
    assert len(lines) == 2  # no MAINPID= or WATCHDOG_USEC= field of its own
    assert "\x1b" not in lines[1]


@pytest.mark.parametrize(
    "fields",
    [
        {"op": "failed", "kind": "error", "message": "boom\x1b]52;c;AAAA\x07"},
        {"op": "failed", "kind": "error", "message": "right\u202eleft"},
        {"op": "lost", "message": "connection reset\x1b[2J"},
        {"op": "worker_status", "channel": "tls", "tls_cipher": "x\x1b[31m", "dtls_cipher": None,
         "dtls_state": "", "tx_bytes": 0, "rx_bytes": 0, "tx_packets": 0, "rx_packets": 0},
    ],
)  # fmt: skip
def test_worker_text_with_terminal_escapes_never_decodes(fields: dict[str, object]) -> None:
    with pytest.raises(WireError, match="does not match"):
        FROM_WORKER.decode_untrusted(msgpack.packb(fields))


@pytest.mark.parametrize(
    "server", ["vpn\nMAINPID=4242\nWATCHDOG_USEC=0", "vpn\x1b[2J", "vpn\u202e"]
)
def test_a_tunnel_up_naming_a_hostile_server_never_decodes(server: str) -> None:
    """F8/F10: the server's name a worker reports (logged, sent to systemd, shown by
    status) is a host name or address, nothing else."""
    fields = msgpack.unpackb(
        FROM_WORKER.encode(TunnelUp(server="vpn", net=network_config(), cookie="c"))
    )
    assert FROM_WORKER.decode_untrusted(msgpack.packb(fields)).server == "vpn"  # type: ignore[attr-defined]
    with pytest.raises(WireError, match="does not match"):
        FROM_WORKER.decode_untrusted(msgpack.packb({**fields, "server": server}))
