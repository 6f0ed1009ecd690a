"""Login methods against the lab's ocserv 1.1.6 (issue 14, items 2 and 4): one-time codes
from --token-mode (ocserv's OTP round through liboath), and forms as openconnect handles
them (--form-entry, --non-inter, prompts on a terminal, clear errors before any password
is sent)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import pty
import re
import select
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_connect import Client, _assert_clean_failure, _ping

from lab import Lab, OcservOptions

pytestmark = [pytest.mark.root, pytest.mark.netns]

NEED_INPUT, UNKNOWN_GROUP = 12, 5
KEY = bytes(range(7, 27))  # the token's secret: 20 bytes, as liboath's examples


def _hotp(counter: int) -> str:
    """RFC 4226, written out here so that the test does not trust the code under test."""
    mac = hmac.new(KEY, counter.to_bytes(8, "big"), hashlib.sha1).digest()
    offset = mac[-1] & 15
    return str((int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF) % 10**6).zfill(6)


def _secret_file(lab: Lab, name: str, text: str) -> Path:
    path = Path(lab.workdir, name)
    path.write_text(text)
    path.chmod(0o600)
    return path


def _with_otp(lab: Lab, line: str) -> Path:
    """ocserv asks for a one-time code after the password, checked by liboath against
    *line* of its users file (users.oath: TYPE USER PIN HEXSECRET [COUNTER [OTP [TIME]]])."""
    users = Path(lab.workdir, "users.oath")
    users.write_text(line + "\n")
    passwd = Path(lab.workdir, "passwd")
    lab.restart_ocserv(OcservOptions(extra=(f'auth = "plain[passwd={passwd},otp={users}]"',)))
    return users


def _logins(lab: Lab) -> int:
    """Logins ocserv saw begin: the username reached its security module."""
    return lab.ocserv_log().count("sec-mod: auth init for user")


def _otps(users: Path) -> list[str]:
    """The last code liboath accepted, from its users file (it records it there)."""
    fields = users.read_text().split()
    return fields[5:6]


def _no_secret_in(texts: list[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{secret!r} logged"


def _logs(client: Client) -> list[str]:
    return [
        client.stderr,
        Path(client.session_log).read_text(),
        Path(client.audit_log).read_text(),
    ]


def _tun_links(lab: Lab) -> list[str]:
    return [link["ifname"] for link in lab.ip_json(lab.client_ns, "link", "show", "type", "tun")]


# --------------------------------------------------------------------------- one-time codes


def test_totp_answers_the_otp_round_and_every_relogin_gets_a_fresh_code(lab: Lab) -> None:
    users = _with_otp(lab, f"HOTP/T30 test - {KEY.hex()}")
    b32 = base64.b32encode(KEY).decode()
    secret = _secret_file(lab, "token", f"base32:{b32}\n")
    client = Client(
        lab, "-vvvv", "--token-mode", "totp", "--token-secret", f"@{secret}", "--always-on"
    )
    client.wait_connected()
    first = _otps(users)
    assert first, users.read_text()  # liboath took a code
    # the server ends the session: --always-on logs in again, at once (within the same
    # 30-s step, as a rule), with a code liboath has not seen: a replay would be refused
    lab.occtl("disconnect", "user", "test")

    def relogged() -> bool | None:
        events = client.session_events()
        return True if any(e["op"] == "reconnect" and e["args"]["purpose"] == "login"
                           for e in events) else None  # fmt: skip

    lab.wait_for("the login after the server ended the session", relogged, timeout=20)
    second = _otps(users)
    assert second, users.read_text()
    assert second != first
    assert _ping(lab, lab.target_ip).returncode == 0
    assert "OTP auth failed" not in lab.ocserv_log()
    assert _logins(lab) == 2
    assert client.stop() == 0, client.stderr
    _no_secret_in(_logs(client), KEY.hex(), b32, lab.users["test"], *first, *second)


def test_hotp_takes_the_next_counter_each_login_and_writes_it_back(lab: Lab) -> None:
    users = _with_otp(lab, f"HOTP test - {KEY.hex()}")
    secret = _secret_file(lab, "token", f"0x{KEY.hex()},3\n")
    for counter in (3, 4):
        client = Client(lab, "--token-mode", "hotp", "--token-secret", f"@{secret}")
        client.wait_connected()
        assert _otps(users) == [_hotp(counter)], users.read_text()
        assert secret.read_text() == f"0x{KEY.hex()},{counter + 1}\n"  # saved before it is sent
        assert client.stop() == 0, client.stderr
    assert "OTP auth failed" not in lab.ocserv_log()


def test_a_token_secret_file_must_be_private(lab: Lab) -> None:
    secret = _secret_file(lab, "token", f"0x{KEY.hex()}\n")
    secret.chmod(0o644)
    client = Client(lab, "--token-mode", "totp", "--token-secret", f"@{secret}")
    assert client.finish() == 2
    assert "mode 0600" in client.stderr
    assert _logins(lab) == 0


# --------------------------------------------------------------------------- forms


def test_form_entries_answer_every_field(lab_factory: Callable[[OcservOptions], Lab]) -> None:
    lab = lab_factory(OcservOptions(groups=("engineering", "sales")))
    client = Client(
        lab, "--form-entry", "main:username=test", "--form-entry", "main:group_list=sal",
        "--form-entry", f"main:password={lab.users['test']}",
        user="", passwd_on_stdin=False,
    )  # fmt: skip
    client.wait_connected()
    assert "sec-mod: auth complete for user 'test' (session: " in lab.ocserv_log()
    assert re.search(r"auth complete for user 'test' .* of group: 'sales'", lab.ocserv_log())
    assert client.stop() == 0, client.stderr


def test_a_missing_username_ends_the_login_before_any_password(lab: Lab) -> None:
    client = Client(lab, user="")  # the password on stdin, which is no terminal
    _assert_clean_failure(lab, client, NEED_INPUT, r"nothing answers it")
    assert client.stderr.strip() == (
        'sepconnect: the server asks for "Username:" (form main, field username) and nothing '
        "answers it (standard input carried the login's input): give --user NAME or "
        "--form-entry main:username=VALUE"
    )
    assert _logins(lab) == 0  # no answer to the login form at all: no username, no password


def test_an_unanswered_group_list_ends_the_login_before_any_password(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    lab = lab_factory(OcservOptions(groups=("engineering", "sales")))
    client = Client(lab)
    _assert_clean_failure(lab, client, NEED_INPUT, r'"Group:" .*offered: engineering, sales')
    assert "--authgroup GROUP or --form-entry main:group_list=VALUE" in client.stderr
    assert _logins(lab) == 0


def test_an_unknown_group_by_prefix(lab_factory: Callable[[OcservOptions], Lab]) -> None:
    lab = lab_factory(OcservOptions(groups=("engineering", "sales")))
    client = Client(lab, "--authgroup", "x")
    _assert_clean_failure(lab, client, UNKNOWN_GROUP, r"Group 'x' is not offered")
    assert _logins(lab) == 0
    prefix = Client(lab, "--authgroup", "eng")  # a unique prefix of a label
    prefix.wait_connected()
    assert prefix.stop() == 0


class Terminal:
    """A pty: sepconnect's standard input, output and error, as a terminal's."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.output = b""

    def expect(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                raise AssertionError(f"no {text!r} on the terminal: {self.output!r}")
            with contextlib.suppress(OSError):  # EIO once the other side is closed
                self.output += os.read(self.master, 4096)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    tty = Terminal()
    yield tty
    tty.close()


def test_prompts_with_the_servers_labels_and_hides_the_password(
    lab_factory: Callable[[OcservOptions], Lab], terminal: Terminal
) -> None:
    lab = lab_factory(OcservOptions(groups=("engineering", "sales")))
    client = Client(lab, user="", passwd_on_stdin=False, terminal=terminal.slave)
    terminal.expect("Please enter your username.\r\nUsername: ")
    terminal.type("test")
    terminal.expect("Group: [engineering|sales]: ")
    terminal.type("sales")
    terminal.expect("Please enter your password.\r\nPassword: ")
    before = len(terminal.output)
    terminal.type(lab.users["test"])
    client.wait_connected()
    terminal.expect("sepconnect: connected to")
    assert lab.users["test"].encode() not in terminal.output  # not echoed
    assert terminal.output[before:].startswith(b"\r\nsepconnect: ")  # the Enter, written for it
    assert re.search(r"auth complete for user 'test' .* of group: 'sales'", lab.ocserv_log())
    assert client.stop() == 0


def test_non_inter_never_prompts(lab: Lab, terminal: Terminal) -> None:
    client = Client(lab, "--non-inter", user="", passwd_on_stdin=False, terminal=terminal.slave)
    assert client.finish() == NEED_INPUT
    terminal.expect("(--non-inter): give --user NAME")
    assert b"Username: " not in terminal.output
    assert _logins(lab) == 0


def test_a_signal_while_asking_ends_the_session(lab: Lab, terminal: Terminal) -> None:
    client = Client(lab, user="", passwd_on_stdin=False, terminal=terminal.slave)
    terminal.expect("Username: ")
    client.proc.send_signal(signal.SIGINT)
    assert client.finish() == 0
    terminal.expect("SIGINT: disconnecting")
    assert _tun_links(lab) == []
    assert _logins(lab) == 0


def test_a_relogin_never_prompts(lab: Lab, terminal: Terminal) -> None:
    """After a server restart the cookie is rejected and the session logs in again (a
    form entry is kept); the password came from the terminal, is not kept, and nobody
    may be there to type it again: the login ends instead of waiting for an answer."""
    client = Client(lab, "--user", "test", "--form-entry", "other:field=x", user="",
                    passwd_on_stdin=False, terminal=terminal.slave)  # fmt: skip
    terminal.expect("Password: ")
    terminal.type(lab.users["test"])
    client.wait_connected()
    lab.restart_ocserv(crash=True)
    assert client.finish(timeout=30) == NEED_INPUT
    terminal.expect('"Password:" (form main, field password) and nothing answers it (nothing '
                    "is asked when logging in again)")  # fmt: skip
    assert terminal.output.count(b"Password: ") == 1
    assert _tun_links(lab) == []
