"""`sepconnect connect --config FILE` (launcher/config.py): openconnect's syntax, checked
line by line against the command line's own parser, root-owned, no secrets (issue 14,
item 5). The files are real files; tests that chown need root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sepconnect import cli, config

GOOD = """\
# a comment, then options as openconnect writes them
server https://vpn.example.com/
user=alice
  authgroup   =  engineering
no-dtls
servercert pin-sha256:xp3scfzy3rOgQEXnfPiYKrUk7D66a8b8O+gEXaMPleE=
servercert sha256:0123
mtu 1300
dns-backend=file
form-entry main:group_list=eng
token-mode totp
token-secret @/etc/sepconnect/kiosk.token

verbose
verbose
"""


def write(tmp_path: Path, text: str, mode: int = 0o644) -> str:
    path = tmp_path / "kiosk.conf"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def expand(argv: list[str]) -> list[str]:
    return config.expand(argv, cli._parser())


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the config file must be root's: run as root")


def test_a_file_means_the_same_as_its_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    argv = expand(["connect", "--config", path, "--mtu", "1400"])
    from_file = cli._parser().parse_args(argv)
    by_hand = cli._parser().parse_args([
        "connect", "--user", "alice", "--authgroup", "engineering", "--no-dtls",
        "--servercert", "pin-sha256:xp3scfzy3rOgQEXnfPiYKrUk7D66a8b8O+gEXaMPleE=",
        "--servercert", "sha256:0123", "--mtu", "1300", "--dns-backend", "file",
        "--form-entry", "main:group_list=eng", "--token-mode", "totp",
        "--token-secret", "@/etc/sepconnect/kiosk.token", "-vv",
        "https://vpn.example.com/", "--mtu", "1400",
    ])  # fmt: skip
    assert vars(from_file) == vars(by_hand)
    assert from_file.mtu == 1400  # the command line after --config wins


def test_config_equals_form_and_no_config_leave_argv_alone(tmp_path: Path) -> None:
    path = write(tmp_path, "user alice\n")
    assert expand(["connect", f"--config={path}", "https://h/"]) == [
        "connect",
        "--user=alice",
        "https://h/",
    ]
    assert expand(["connect", "https://h/"]) == ["connect", "https://h/"]
    assert expand(["status", "--config", "x"]) == ["status", "--config", "x"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user alice\nusr bob\n", ":2: unknown option 'usr'"),
        ("--user alice\n", ":1: unknown option '--user' (write the long name without its dashes)"),
        ("no-dtls yes\n", ":1: no-dtls takes no value"),
        ("\n\nuser\n", ":3: user needs a value"),
        ("mtu big\n", ":1: mtu: 'big' is not a valid int"),
        ("dns-backend=magic\n", ":1: dns-backend: 'magic' is not one of auto, resolved"),
        ("help\n", ":1: unknown option 'help'"),
        ("config /etc/other.conf\n", ":1: config cannot name another file"),
        ("server https://a/\nserver https://b/\n", ":2: server is given twice"),
        ("server\n", ":1: server needs a value (the server's URL)"),
        ("key-password hunter2\n", ":1: key-password would put a secret in the config file; "
         "use key-password-file FILE (a credential file)"),
        ("token-secret base32:JBSWY3DPEHPK3PXP\n", ":1: token-secret would put a secret in the "
         "config file; use token-secret @FILE (a credential file)"),
        ("form-entry main:password=hunter2\n", ":1: form-entry main:password looks like a "
         "secret; give passwords and codes in credentials-file"),
        ("cookie webvpn=abc\n", ":1: cookie would put a secret in the config file; "
         "use cookie-on-stdin"),
    ],
)  # fmt: skip
def test_a_bad_line_is_one_error_naming_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as err:
        expand(["connect", "--config", path])
    assert str(err.value).startswith(path + message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("owner", "mode"), [(65534, 0o644), (0, 0o664), (0, 0o646), (0, 0o666)])
def test_only_a_file_root_owns_and_no_one_else_may_write_is_read(
    tmp_path: Path, owner: int, mode: int
) -> None:
    path = write(tmp_path, "user alice\n", mode)
    os.chown(path, owner, 0)
    with pytest.raises(config.ConfigError, match="must be a regular file owned by root and "
                       "writable by no one else"):  # fmt: skip
        expand(["connect", "--config", path])


def test_a_symlink_a_directory_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    target = write(tmp_path, "user alice\n")
    link = tmp_path / "link.conf"
    link.symlink_to(target)
    for path, why in (
        (str(link), "Too many levels of symbolic links"),
        (str(tmp_path), "must be a regular file"),
        (str(tmp_path / "none.conf"), "No such file or directory"),
    ):
        with pytest.raises(config.ConfigError, match=why):
            expand(["connect", "--config", path])


def test_main_prints_the_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "usr alice\n")
    assert cli.main(["connect", "--config", path]) == 2
    assert capsys.readouterr().err == f"sepconnect: {path}:1: unknown option 'usr'\n"
