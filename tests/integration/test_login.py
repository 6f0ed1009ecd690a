"""Login methods against the lab's ocserv 1.1.6 (issue 14, items 2-4): one-time codes
from --token-mode (ocserv's OTP round through liboath), the two-phase login with
openconnect 9.01 both ways (--authenticate, --cookie-on-stdin), and forms as openconnect
handles them (--form-entry, --non-inter, prompts on a terminal, clear errors before any
password is sent)."""

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
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_connect import (
    SEPCONNECT,
    Client,
    _assert_clean_failure,
    _fake_server,
    _ping,
)

from lab import Lab, OcservOptions

pytestmark = [pytest.mark.root, pytest.mark.netns]

NEED_INPUT, COOKIE_REJECTED, UNKNOWN_GROUP = 12, 11, 5
KEY = bytes(range(7, 27))  # the token's secret: 20 bytes, as liboath's examples
VARIABLES = ("COOKIE", "HOST", "CONNECT_URL", "FINGERPRINT", "RESOLVE")


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


# --------------------------------------------------------------------------- two phases


def _variables(output: str) -> dict[str, str]:
    """The assignments as a shell reads them (eval), in the order printed."""
    names = [line.partition("=")[0] for line in output.splitlines()]
    assert names == list(VARIABLES), output
    script = 'eval "$1"; printf "%s\\n" ' + " ".join(f'"${n}"' for n in VARIABLES)
    result = subprocess.run(
        ["bash", "-c", script, "-", output], check=True, capture_output=True, text=True
    )
    return dict(zip(VARIABLES, result.stdout.splitlines(), strict=True))


def _openconnect_authenticate(lab: Lab, *args: str) -> dict[str, str]:
    result = lab.run_in(
        lab.client_ns, "openconnect", "--authenticate", "--non-inter", "--user", "test",
        "--passwd-on-stdin", "--servercert", lab.server_cert_pin, *args,
        input=b"test123\n",
    )  # fmt: skip
    return _variables(result.stdout.decode())


def _sepconnect_authenticate(lab: Lab, *args: str, setpriv: tuple[str, ...] = ()) -> str:
    result = lab.run_in(
        lab.client_ns, *setpriv, SEPCONNECT, "connect", "--authenticate", "--user", "test",
        "--passwd-on-stdin", "--audit-log", str(Path(lab.workdir, "no-audit.jsonl")), *args,
        input=b"test123\n", check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b"", result.stderr.decode()
    return result.stdout.decode()


@contextlib.contextmanager
def _openconnect_with_cookie(lab: Lab, cookie: str, *args: str) -> Iterator[None]:
    proc = lab.popen_in(
        lab.client_ns, "openconnect", "--non-inter", "--cookie-on-stdin",
        "--script", lab.vpnc_script, *args,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(f"{cookie}\n".encode())
    proc.stdin.close()
    proc.stdin = None  # so that communicate() does not flush it
    try:
        lab.wait_for("openconnect's tunnel", lambda: lab.client_tun(), timeout=15)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        print(err.decode(errors="replace")[-2000:])


@pytest.mark.parametrize("as_root", [True, False], ids=["root", "unprivileged"])
def test_authenticate_prints_what_openconnect_prints_and_openconnect_connects(
    lab: Lab, as_root: bool
) -> None:
    url = f"https://{lab.hostname}/"
    resolve = f"{lab.hostname}:{lab.server_ip}"
    theirs = _openconnect_authenticate(lab, "--resolve", resolve, url)
    setpriv = () if as_root else ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    output = _sepconnect_authenticate(
        lab, "--resolve", resolve, "--cafile", lab.ca_file, url, setpriv=setpriv
    )
    ours = _variables(output)
    # openconnect 9.01 prints 'value' as is; ours is the same text for these values
    assert output == "".join(f"{n}='{ours[n]}'\n" for n in VARIABLES)
    for name in ("HOST", "CONNECT_URL", "FINGERPRINT", "RESOLVE"):
        assert ours[name] == theirs[name], name
    assert (ours["HOST"], ours["CONNECT_URL"]) == (lab.server_ip, url)
    assert (ours["FINGERPRINT"], ours["RESOLVE"]) == (lab.server_cert_pin, resolve)
    assert re.fullmatch(r"webvpn=[A-Za-z0-9+/=]{44}", ours["COOKIE"]), ours["COOKIE"]
    assert re.search(r"(^|; )webvpn=[A-Za-z0-9+/=]{44}$", theirs["COOKIE"]), theirs["COOKIE"]
    # a login only: no helper (its audit log was never opened), no tun, no tunnel
    assert not Path(lab.workdir, "no-audit.jsonl").exists()
    assert _tun_links(lab) == []
    assert _logins(lab) == 2
    with _openconnect_with_cookie(
        lab, ours["COOKIE"], "--servercert", ours["FINGERPRINT"], "--resolve", ours["RESOLVE"],
        ours["CONNECT_URL"],
    ):  # fmt: skip
        assert _ping(lab, lab.target_ip).returncode == 0
    assert _logins(lab) == 2  # openconnect did not log in: the cookie was enough


def test_openconnects_cookie_connects_sepconnect(lab: Lab) -> None:
    theirs = _openconnect_authenticate(lab, lab.url)
    assert theirs["COOKIE"].startswith("openconnect_strapkey=")  # 9.01's, before webvpn=
    client = Client(
        lab, "--cookie-on-stdin", "--servercert", theirs["FINGERPRINT"], theirs["CONNECT_URL"],
        user="", passwd_on_stdin=False, stdin=theirs["COOKIE"] + "\n",
    )  # fmt: skip
    client.wait_connected()
    assert _ping(lab, lab.target_ip).returncode == 0
    assert _logins(lab) == 1  # openconnect's; sepconnect used its cookie
    assert client.stop() == 0, client.stderr
    _no_secret_in(_logs(client), theirs["COOKIE"].rpartition("webvpn=")[2])


def test_sepconnects_cookie_connects_sepconnect(lab: Lab) -> None:
    ours = _variables(_sepconnect_authenticate(lab, "--servercert", lab.server_cert_pin, lab.url))
    client = Client(
        lab, "--cookie-on-stdin", "--servercert", ours["FINGERPRINT"], ours["CONNECT_URL"],
        user="", passwd_on_stdin=False, stdin=ours["COOKIE"] + "\n",
    )  # fmt: skip
    client.wait_connected()
    assert _logins(lab) == 1
    assert client.stop() == 0, client.stderr


def test_a_cookie_the_server_does_not_know(lab: Lab) -> None:
    client = Client(
        lab, "--cookie-on-stdin", user="", passwd_on_stdin=False,
        stdin="webvpn=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )  # fmt: skip
    _assert_clean_failure(lab, client, COOKIE_REJECTED, r"rejected the session cookie")
    bare = Client(lab, "--cookie-on-stdin", user="", passwd_on_stdin=False, stdin="AAAA\n")
    assert bare.finish() == 2
    assert "expected webvpn=<cookie>" in bare.stderr


SSO_SERVER = r"""
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.create_server(("198.18.1.1", 4443))
print("ready", flush=True)
body = open(sys.argv[3], "rb").read()
conn, _ = srv.accept()
with ctx.wrap_socket(conn, server_side=True) as tls:
    tls.settimeout(3)
    requests = 0
    try:
        while True:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(65536)
                if not chunk:
                    raise EOFError
                head += chunk
            requests += 1
            print(head.split(b"\r\n")[0].decode(), flush=True)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
    except (EOFError, OSError):
        pass
"""


def test_single_sign_on_says_to_use_cookie_on_stdin(lab: Lab) -> None:
    form = Path(__file__).parent.parent / "unit" / "vectors" / "cisco-asa-sso-v2.xml"
    copy = Path(lab.workdir, "sso.xml")
    copy.write_bytes(form.read_bytes())
    script = SSO_SERVER.replace("sys.argv[3]", repr(str(copy)))
    server = _fake_server(lab, "sso_server.py", script)
    client = Client(lab, "https://198.18.1.1:4443/")
    _assert_clean_failure(lab, client, NEED_INPUT, r"single sign-on.*--cookie-on-stdin")
    assert server.stdout is not None
    lines = server.stdout.read().decode().splitlines()
    server.wait()
    assert lines == ["POST / HTTP/1.1"]  # the init; no reply to the SSO form


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


def test_the_pre_login_banner_is_shown_and_recorded(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    """Issue 14, item 8: ocserv's pre-login-banner, with no terminal asked."""
    lab = lab_factory(OcservOptions(extra=("pre-login-banner = Authorised use only",)))
    client = Client(lab)
    client.wait_connected()
    assert client.stop() == 0, client.stderr
    assert "sepconnect: server login banner: Authorised use only\n" in client.stderr
    banners = [e for e in client.session_events() if e["op"] == "login_banner"]
    assert [(e["result"], e["reason"]) for e in banners] == [("info", "Authorised use only")]


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
