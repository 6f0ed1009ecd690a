"""The audit trail's journal side (privhelper/audit.py): journald's native protocol with
structured fields, checked against a stand-in journal socket (the build machines run no
journald)."""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path

from sepconnect.privhelper import audit
from sepconnect.process import records
from sepconnect.process.auditfile import open_log
from sepconnect.process.journal import MESSAGE_ID
from sepconnect.process.journal_socket import open_journal


def parse_datagram(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            pos = end + 1
        else:
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            fields[line.decode()] = data[start : start + size].decode()
            pos = start + size + 1
    return fields


def test_records_reach_the_journal_with_structured_fields(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    log = tmp_path / "audit.jsonl"
    fd = open_log(str(log))
    sock = open_journal(path)
    assert sock is not None
    a = audit.Audit(fd, stderr_fd=None, journal=sock)
    a.sender = (4242, 65534, 65534)
    a.record("net_config", "refused", "route 127.0.0.0/8: loopback\nis not allowed", {"mtu": 1400})
    fields = parse_datagram(journal.recv(65536))
    assert fields["MESSAGE_ID"] == MESSAGE_ID
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "sepconnect-privhelper"
    assert fields["SEPCONNECT_OP"] == "net_config"
    assert fields["SEPCONNECT_RESULT"] == "refused"
    assert fields["SEPCONNECT_REASON"] == "route 127.0.0.0/8: loopback\nis not allowed"
    assert (fields["SEPCONNECT_PEER_PID"], fields["SEPCONNECT_PEER_UID"]) == ("4242", "65534")
    assert (fields["SEPCONNECT_PEER_GID"], fields["SEPCONNECT_HELPER_PID"]) == (
        "65534",
        str(os.getpid()),
    )
    assert (
        fields["MESSAGE"]
        == "sepconnect privhelper: net_config refused: " + fields["SEPCONNECT_REASON"]
    )
    assert json.loads(fields["SEPCONNECT_ARGS"]) == {"mtu": 1400}
    # The file has the same record, one JSON line.
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert (record["op"], record["result"], record["peer_uid"]) == ("net_config", "refused", 65534)
    os.close(fd)
    sock.close()
    journal.close()


def test_no_journal_no_socket(tmp_path: Path) -> None:
    assert open_journal(str(tmp_path / "absent")) is None


def test_a_gone_journal_does_not_stop_the_record(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    sock = open_journal(path)
    journal.close()
    log = tmp_path / "audit.jsonl"
    fd = open_log(str(log))
    audit.Audit(fd, stderr_fd=None, journal=sock).record("teardown", "ok")
    assert json.loads(log.read_text())["op"] == "teardown"
    os.close(fd)
    assert sock is not None
    sock.close()


def test_supervisor_events_go_to_the_session_log_and_refuse_secrets(tmp_path: Path) -> None:
    import pytest

    from sepconnect.supervisor import audit as session_audit

    log = tmp_path / "session.jsonl"
    fd = session_audit.open_log(str(log))
    journal_path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(journal_path)
    session_audit.configure(fd, journal_path=journal_path)
    try:
        session_audit.event("connect", "ok", server="vpn.example.com", ipv4="198.18.100.2/24")
        fields = parse_datagram(journal.recv(65536))
        # not the helper's MESSAGE_ID: a query for the helper's records never shows these
        assert fields["MESSAGE_ID"] == records.SESSION_MESSAGE_ID != MESSAGE_ID
        assert fields["SYSLOG_IDENTIFIER"] == "sepconnect-supervisor"
        with pytest.raises(ValueError, match="secret"):
            session_audit.event("connect", "ok", cookie="webvpn=abc")
        with pytest.raises(ValueError, match="secret"):
            session_audit.event("auth_failure", "refused", Password="hunter2")
    finally:
        session_audit.configure(None, journal_path=None)
        os.close(fd)
        journal.close()
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert record["source"] == "supervisor"
    assert {"time", "pid", "uid", "op", "args", "result", "reason"} <= record.keys()
    assert os.stat(log).st_mode & 0o777 == 0o600
