"""launcher/credentials.py and the launcher's login options: what is read as root, and
the syntax of each option, before anything starts."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import pytest

from sepconnect import cli, credentials


def _args(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["connect", *argv, "https://vpn.example/"])


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


def test_bad_login_options() -> None:
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
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    assert credentials.no_prompt_reason(_args()) == "standard input is not a terminal"
    monkeypatch.setattr(os, "isatty", lambda fd: True)
    assert credentials.no_prompt_reason(_args()) is None
