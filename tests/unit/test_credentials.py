"""launcher/credentials.py and the launcher's login options: what is read as root, and
the syntax of each option, before anything starts."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sepconnect import cli, credentials


def _args(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["connect", *argv, "https://vpn.example/"])


@pytest.mark.parametrize(
    ("line", "cookie"),
    [
        ("webvpn=AHKE1sREqvj2h+Zj3uAQYj=", "AHKE1sREqvj2h+Zj3uAQYj="),
        # openconnect 9.01's COOKIE: its STRAP key first
        ("openconnect_strapkey=MHcCAQ+/==; webvpn=AAeix0DFp4KV1WNg=", "AAeix0DFp4KV1WNg="),
        ("  webvpn=abc ;other=1", "abc"),
    ],
)  # fmt: skip
def test_cookie_on_stdin(monkeypatch: pytest.MonkeyPatch, line: str, cookie: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\nmore\n"))
    assert credentials.read_cookie(_args("--cookie-on-stdin")) == cookie


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("AHKE1sREqvj2h+Zj3uAQYjr/PJzAbZlpcqYjmUa5WPc=", "expected webvpn=<cookie>"),
        ("", "expected webvpn=<cookie>"),
        ("webvpn=", "empty or not valid"),
        ("webvpn=a b", "empty or not valid"),
        ("webvpn=" + "A" * 600, "empty or not valid"),
    ],
)
def test_bad_cookies(monkeypatch: pytest.MonkeyPatch, line: str, message: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\n"))
    with pytest.raises(ValueError, match=message):
        credentials.read_cookie(_args("--cookie-on-stdin"))


def test_cookie_option_is_the_same_cookie_as_on_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    # -C/--cookie (openconnect's; checked by _check_args) goes where --cookie-on-stdin's
    # goes: LoginInput.cookie, with which the supervisor's first worker resumes
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    args = _args("-C", "openconnect_strapkey=MHcCAQ+/==; webvpn=AAeix0DFp4KV1WNg=")
    cli._check_args(args)
    assert credentials.read_login(args).cookie == "AAeix0DFp4KV1WNg="
    assert credentials.read_login(_args()).cookie is None


@pytest.mark.parametrize("other", [["-C", "abc"], ["--cookieonly"], ["--authenticate"]])
def test_cookie_on_stdin_goes_alone(other: list[str]) -> None:
    with pytest.raises(ValueError, match="--cookie-on-stdin and .* cannot go together"):
        credentials.read_login(_args("--cookie-on-stdin", *other))


def _private(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secret_files_must_be_private_regular_files(tmp_path: Path) -> None:
    loose = _private(tmp_path, "x", 0o640)
    with pytest.raises(ValueError, match="mode 0600 or stricter"):
        credentials.read_secret_file(str(loose), "--token-secret")
    link = tmp_path / "link"
    link.symlink_to(_private(tmp_path, "x"))
    with pytest.raises(ValueError, match="--token-secret .*link"):
        credentials.read_secret_file(str(link), "--token-secret")  # O_NOFOLLOW
    assert credentials.read_secret_file(str(tmp_path / "secret"), "--token-secret") == ("x", -1)


def test_a_hotp_token_file_gets_each_next_counter(tmp_path: Path) -> None:
    path = _private(tmp_path, "sha256:0x0001020304050607,9\n\n\n")
    token = credentials.read_token(_args("--token-mode", "hotp", "--token-secret", f"@{path}"))
    assert token is not None
    assert (token.token.counter, token.token.algorithm) == (9, "sha256")
    assert token.save is not None
    token.save(token.token.with_counter(10))
    assert path.read_text() == "sha256:0x0001020304050607,10\n"
    assert path.stat().st_mode & 0o777 == 0o600


def test_token_options(tmp_path: Path) -> None:
    totp = credentials.read_token(
        _args("--token-mode", "totp", "--token-secret", "base32:AEBAGBAF")
    )
    assert totp is not None
    assert (totp.token.key, totp.save) == (b"\x01\x02\x03\x04\x05", None)
    with pytest.raises(ValueError, match="go together"):
        credentials.read_token(_args("--token-mode", "totp"))
    with pytest.raises(ValueError, match="--token-secret: base32 secret"):
        credentials.read_token(_args("--token-mode", "totp", "--token-secret", "base32:AB"))
    with pytest.raises(SystemExit):  # argparse: not a mode openconnect has and we do
        _args("--token-mode", "rsa")


def test_login_options_that_cannot_go_together() -> None:
    with pytest.raises(ValueError, match="--cookie-on-stdin and --passwd-on-stdin"):
        credentials.read_login(_args("--cookie-on-stdin", "--passwd-on-stdin"))
    with pytest.raises(ValueError, match="--cookie-on-stdin and --authenticate"):
        credentials.read_login(_args("--cookie-on-stdin", "--authenticate"))
    with pytest.raises(ValueError, match="FORM:FIELD=VALUE"):
        credentials.read_login(_args("--form-entry", "username=alice"))
    with pytest.raises(ValueError, match="--user"):
        credentials.read_login(_args("--user", "a\x01b"))


def test_password_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
    assert credentials.read_passwords(_args("--passwd-on-stdin")) == ("one", "two")
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n" * 9))
    with pytest.raises(ValueError, match="at most 8 lines"):
        credentials.read_passwords(_args("--passwd-on-stdin"))
    monkeypatch.setattr("sys.stdin", io.StringIO("a\x00b\n"))
    with pytest.raises(ValueError, match="control characters"):
        credentials.read_passwords(_args("--passwd-on-stdin"))
    path = _private(tmp_path, "pw\n")
    assert credentials.read_passwords(_args("--credentials-file", str(path))) == ("pw",)


def test_no_prompt_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    assert credentials.no_prompt_reason(_args("--non-inter")) == "--non-inter"
    assert "standard input carried" in (
        credentials.no_prompt_reason(_args("--passwd-on-stdin")) or ""
    )
    key_on_stdin = _args("-c", "cert.pem", "--key-password-on-stdin")
    assert "standard input carried" in (credentials.no_prompt_reason(key_on_stdin) or "")
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    assert credentials.no_prompt_reason(_args()) == "standard input is not a terminal"
    monkeypatch.setattr(os, "isatty", lambda fd: True)
    assert credentials.no_prompt_reason(_args()) is None


@pytest.mark.parametrize(
    ("value", "address"),
    [("vpn.example:192.0.2.1", "192.0.2.1"), ("VPN.example:2001:db8::1", "2001:db8::1"),
     ("vpn.example:[2001:db8::2]", "2001:db8::2")],
)  # fmt: skip
def test_resolve(value: str, address: str) -> None:
    assert str(cli._resolve_address(_args("--resolve", value))) == address


def test_resolve_for_an_ipv6_literal_host() -> None:
    # openconnect 9.01 prints RESOLVE='[2001:2:0:1::1]:2001:2:0:1::1' for such a URL
    args = cli._parser().parse_args(
        ["connect", "--resolve", "[2001:db8::1]:2001:db8::2", "https://[2001:db8::1]/"]
    )
    assert str(cli._resolve_address(args)) == "2001:db8::2"


def test_shell_variables_as_openconnect_prints_them() -> None:
    import ipaddress

    from sepconnect.ipc.worker_messages import LoggedIn
    from sepconnect.supervisor.authenticate import shell_variables

    pin = "pin-sha256:" + "A" * 43 + "="
    v6 = LoggedIn(cookie="c'k", address=ipaddress.ip_address("2001:db8::1"), server_pin=pin)
    # the lab's ocserv on IPv6, what openconnect 9.01 printed but the cookie's quote
    assert shell_variables("https://[2001:db8::1]/path?q", v6) == (
        "COOKIE='webvpn=c'\\''k'\n"
        "HOST='[2001:db8::1]'\n"
        "CONNECT_URL='https://[2001:db8::1]/'\n"
        f"FINGERPRINT='{pin}'\n"
        "RESOLVE='[2001:db8::1]:2001:db8::1'\n"
    )
    v4 = LoggedIn(cookie="x", address=ipaddress.ip_address("192.0.2.1"), server_pin=pin)
    out = shell_variables("https://VPN.example:8443/group", v4)
    assert "CONNECT_URL='https://vpn.example:8443/'\n" in out
    assert out.endswith("RESOLVE='vpn.example:192.0.2.1'\n")


@pytest.mark.parametrize(
    ("value", "message"),
    [("vpn.example", "expected HOST:IP"), ("vpn.example:nowhere", "expected HOST:IP"),
     ("other.example:192.0.2.1", "the URL's host, vpn.example")],
)  # fmt: skip
def test_bad_resolve(value: str, message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        cli._check_args(_args("--resolve", value))


def _credential(directory: Path, acl: str | None, mode: int = 0o440) -> Path:
    """A credential as systemd >= 254 writes it for LoadCredential=: root's, 0440, and a
    user ACL entry for the service's account (a real ACL, set with setfacl)."""
    directory.mkdir(mode=0o500, exist_ok=True)
    path = directory / "password"
    path.write_text("hunter2\n")
    os.chmod(path, mode)
    if acl is not None:
        subprocess.run(["setfacl", "-m", acl, str(path)], check=True)
    return path


@pytest.fixture
def _setfacl() -> None:
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl not installed (scripts/bootstrap.sh installs acl)")
    if os.geteuid() != 0:
        pytest.skip("the credential must be root's: run as root")


@pytest.mark.usefixtures("_setfacl")
def test_a_systemd_credential_with_its_acl_is_read_in_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, item 7: systemd >= 254 presents a LoadCredential= file as 0440 plus a
    user ACL; the 0600-or-stricter rule refused it."""
    creds = tmp_path / "credentials"
    path = _credential(creds, "u:65534:r")
    assert (
        "user:65534:r--"
        in subprocess.run(
            ["getfacl", "-n", str(path)], capture_output=True, text=True, check=True
        ).stdout
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert credentials.read_secret_file(str(path), "--credentials-file") == ("hunter2\n", -1)
    # no ACL at all: 0440 root:root, readable by root's group only
    subprocess.run(["setfacl", "-b", str(path)], check=True)
    assert credentials.read_secret_file(str(path), "--credentials-file")[0] == "hunter2\n"
    # HOTP writes its counter back: that needs a file of our own, not systemd's
    with pytest.raises(ValueError, match="mode 0600 or stricter"):
        credentials.read_secret_file(str(path), "--token-secret", writable=True)


@pytest.mark.usefixtures("_setfacl")
@pytest.mark.parametrize(
    ("acl", "mode", "owner", "message"),
    [
        ("u:65534:rw", 0o440, (0, 0), "mode 0640 or stricter"),  # the mask shows it
        ("u:65534:rw,m::r", 0o440, (0, 0), "its ACL grants more than read"),
        ("g:65534:r", 0o440, (0, 0), "its ACL grants a group access"),
        ("o::r", 0o440, (0, 0), "mode 0640 or stricter"),
        (None, 0o460, (0, 0), "mode 0640 or stricter"),
        ("u:65534:r", 0o440, (0, 65534), "owned by root \\(user and group\\)"),
    ],
)
def test_a_credential_shaped_otherwise_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    acl: str | None,
    mode: int,
    owner: tuple[int, int],
    message: str,
) -> None:
    creds = tmp_path / "credentials"
    path = _credential(creds, acl, mode)
    os.chown(path, *owner)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(ValueError, match=message):
        credentials.read_secret_file(str(path), "--credentials-file")


@pytest.mark.usefixtures("_setfacl")
def test_the_credential_shape_counts_only_in_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _credential(tmp_path / "credentials", "u:65534:r")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ValueError, match="mode 0600 or stricter"):
        credentials.read_secret_file(str(path), "--credentials-file")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # another directory
    with pytest.raises(ValueError, match="mode 0600 or stricter"):
        credentials.read_secret_file(str(path), "--credentials-file")
    os.chmod(tmp_path / "credentials", 0o777)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "credentials"))
    with pytest.raises(ValueError, match="writable by others than its owner"):
        credentials.read_secret_file(str(path), "--credentials-file")
