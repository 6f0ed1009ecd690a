"""`sepconnect status|rekey|reconnect|disconnect [NAME] [--socket PATH]`: which control
socket (launcher/remote.py; issue 14, item 5: the units' /run/sepconnect/NAME/)."""

from __future__ import annotations

import pytest

from sepconnect import cli, remote


def path(*argv: str) -> str:
    return remote.socket_path(cli._parser().parse_args(list(argv)))


def test_a_session_name_is_its_units_socket() -> None:
    assert path("status", "kiosk") == "/run/sepconnect/kiosk/control.sock"
    assert path("disconnect", "office@2") == "/run/sepconnect/office@2/control.sock"
    assert path("rekey", "--socket", "/tmp/x.sock") == "/tmp/x.sock"
    assert path("reconnect") == "/run/sepconnect/control.sock"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("status", "../etc"), "is not a session name"),
        (("status", ".."), "is not a session name"),
        (("status", "a/b"), "is not a session name"),
        (("status", "kiosk", "--socket", "/x"), "not both"),
    ],
)
def test_bad_names(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        path(*argv)


def test_main_prints_a_bad_name_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "a/b"]) == 2
    assert capsys.readouterr().err == (
        "sepconnect: 'a/b' is not a session name (a systemd instance name)\n"
    )
