"""openconnect's option names and forms (issue 14, item 6), as the launcher parses them:
the server argument, -g/--usergroup, every --servercert form, -s with arguments,
--useragent/--version-string/--os/--local-hostname, -C/--cookie, and the names of the
process and output options. The wire side (what the server is told) is in
test_identity.py; the end-to-end checks against ocserv and openconnect itself in
tests/integration/test_openconnect_options.py."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from sepconnect import cli, openconnect_compat
from sepconnect.ipc.script_env import check_script_args
from sepconnect.ipc.wire import WireError
from sepconnect.ipc.worker_messages import FROM_WORKER, TO_WORKER, LoggedIn, Start

B64 = "hYRhL9MOPB1fKu+4nPKAEjoUdwW5w+mGpsLRYYj2pIA="


def connect_args(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["connect", *argv])


# --------------------------------------------------------------------------- option names


def test_certificate_option_takes_its_value_and_the_url_stays_the_url() -> None:
    # issue 14: "-c cert.pem URL reports the URL as the unknown argument"
    args = connect_args("-c", "cert.pem", "https://vpn.example/")
    assert (args.certificate, args.url) == ("cert.pem", "https://vpn.example/")


def test_g_is_openconnects_usergroup_and_authgroup_is_the_group() -> None:
    args = connect_args("-g", "VPN", "--authgroup", "staff", "vpn.example")
    assert (args.usergroup, args.authgroup) == ("VPN", "staff")
    args = connect_args("--usergroup", "VPN", "vpn.example")
    assert args.usergroup == "VPN"


def test_openconnect_short_and_long_names() -> None:
    args = connect_args(
        "-b", "--pid-file", "/run/x.pid", "-q", "-l", "--timestamp", "-C", "abc",
        "-s", "vpn-slice 10.0.0.0/8", "--useragent", "AnyConnect", "--os", "win",
        "--local-hostname", "box", "--version-string", "4.10.05095", "--cookieonly",
        "vpn.example",
    )  # fmt: skip
    assert args.background
    assert args.quiet
    assert args.syslog
    assert args.timestamp
    assert args.cookieonly
    assert (args.pid_file, args.cookie) == ("/run/x.pid", "abc")
    assert args.script == "vpn-slice 10.0.0.0/8"
    assert (args.useragent, args.os, args.local_hostname) == ("AnyConnect", "win", "box")
    assert args.version_string == "4.10.05095"
    assert connect_args("vpn.example").os == "linux-64"


def test_os_takes_openconnects_values_only(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("linux", "linux-64", "win", "mac-intel", "android", "apple-ios"):
        assert connect_args("--os", name, "vpn.example").os == name
    with pytest.raises(SystemExit):
        connect_args("--os", "windows", "vpn.example")
    assert "invalid choice: 'windows'" in capsys.readouterr().err


def test_help_says_where_a_name_differs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        connect_args("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "-g GROUP, --usergroup GROUP log in at https://SERVER/GROUP, as openconnect" in text
    assert "not the login group, which is --authgroup" in text
    assert "--authgroup GROUP choose this login group (as openconnect; -g is --usergroup)" in text
    assert "no shell runs it" in text


# --------------------------------------------------------------------------- the server


@pytest.mark.parametrize(
    ("given", "usergroup", "url"),
    [
        ("vpn.example.com", None, "https://vpn.example.com"),
        ("vpn.example.com:8443/group", None, "https://vpn.example.com:8443/group"),
        ("198.18.1.1", None, "https://198.18.1.1"),
        ("[2001:db8::1]:4443", None, "https://[2001:db8::1]:4443"),
        ("HTTPS://vpn.example.com/", None, "https://vpn.example.com/"),
        ("https://vpn.example.com/?x=1", None, "https://vpn.example.com/?x=1"),
        # --usergroup is the path of a URL that has none, as openconnect
        ("vpn.example.com", "VPN", "https://vpn.example.com/VPN"),
        ("https://vpn.example.com/", "/VPN", "https://vpn.example.com/VPN"),
        ("vpn.example.com:8443", "a/b?c", "https://vpn.example.com:8443/a/b?c"),
    ],
)
def test_server_url(given: str, usergroup: str | None, url: str) -> None:
    assert openconnect_compat.server_url(given, usergroup) == (url, [])


def test_a_url_path_wins_over_usergroup_with_a_warning() -> None:
    url, warnings = openconnect_compat.server_url("https://vpn.example.com/auth", "VPN")
    assert url == "https://vpn.example.com/auth"
    assert warnings == ["-g/--usergroup VPN: ignored, the URL has a path already (as openconnect)"]


@pytest.mark.parametrize(
    ("given", "usergroup", "message"),
    [
        ("http://vpn.example.com", None, "must be https://"),
        ("ftp://vpn.example.com", None, "must be https://"),
        ("vpn.example.com:99999", None, "bad port"),
        ("https://", None, "no server host name"),
        ("vpn example", None, "no server host name"),
        ("vpn.example.com", "a b", "--usergroup"),
        ("vpn.example.com", "a#b", "--usergroup"),
        ("vpn.example.com", "é", "--usergroup"),
        ("vpn.example.com", "", "--usergroup"),
    ],
)
def test_server_url_refuses(given: str, usergroup: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        openconnect_compat.server_url(given, usergroup)


def test_check_args_normalises_the_server_and_the_pins(capsys: pytest.CaptureFixture[str]) -> None:
    args = connect_args("--servercert", "SHA1:ABCDEF0123", "-g", "VPN", "vpn.example")
    cli._check_args(args)
    assert args.url == "https://vpn.example/VPN"
    assert args.servercert == ("sha1:abcdef0123",)
    assert capsys.readouterr().err == (
        "sepconnect: warning: --servercert sha1:abcdef0123: only a prefix (40 bits): a "
        "certificate made to match it is far easier to find than one matching the whole "
        "fingerprint; give it whole\n"
    )


# --------------------------------------------------------------------------- --servercert


def test_server_pins_every_form_and_several() -> None:
    pins, warnings = openconnect_compat.server_pins(
        [f"pin-sha256:{B64}", "SHA256:" + "AB" * 32, "sha1:" + "cd" * 20, "EF" * 20]
    )
    assert pins == (f"pin-sha256:{B64}", "sha256:" + "ab" * 32, "sha1:" + "cd" * 20, "ef" * 20)
    assert warnings == []


def test_server_pins_limits() -> None:
    with pytest.raises(ValueError, match="at most 8 pins"):
        openconnect_compat.server_pins(["ab" * 20] * 9)
    with pytest.raises(ValueError, match="unknown type 'sha512'"):
        openconnect_compat.server_pins(["sha512:" + "ab" * 64])


# --------------------------------------------------------------------------- -s/--script


@pytest.fixture
def program_dir(tmp_path: Path) -> Path:
    program = tmp_path / "vpn-slice"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (tmp_path / "link").symlink_to(program)
    return tmp_path


def test_script_command_is_split_as_a_shell_splits_words(program_dir: Path) -> None:
    path = str(program_dir / "vpn-slice")
    assert openconnect_compat.script_command(path, "/nonexistent") == (path,)
    command = f"{path} --verbose 10.0.0.0/8 'two words' \"x=1\" %10.1.0.0/16 host=198.18.2.2"
    assert openconnect_compat.script_command(command, "/nonexistent") == (
        path, "--verbose", "10.0.0.0/8", "two words", "x=1", "%10.1.0.0/16", "host=198.18.2.2",
    )  # fmt: skip


def test_script_command_looks_a_name_up_in_the_runners_path(program_dir: Path) -> None:
    search = f"/nonexistent:{program_dir}"
    assert openconnect_compat.script_command("vpn-slice 10.0.0.0/8", search) == (
        str(program_dir / "vpn-slice"),
        "10.0.0.0/8",
    )
    # a name found as a link is run (and checked) as what it leads to
    assert openconnect_compat.script_command("link", search) == (str(program_dir / "vpn-slice"),)
    with pytest.raises(ValueError, match="no program 'missing' in /nonexistent"):
        openconnect_compat.script_command("missing", "/nonexistent")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", "an empty command line"),
        ("   ", "an empty command line"),
        ("/bin/script; rm -rf /", "';' is shell syntax"),
        ("/bin/script | logger", "'|' is shell syntax"),
        ("/bin/script $HOME", "'\\$' is shell syntax"),
        ("/bin/script `id`", "'`' is shell syntax"),
        ("/bin/script > /tmp/x", "'>' is shell syntax"),
        ("/bin/script /etc/*", "'\\*' is shell syntax"),
        ("/bin/script && x", "'&' is shell syntax"),
        ("/bin/script ~/x", "'~' is shell syntax"),
        ("/bin/script\nid", "'\\\\n' is shell syntax"),
        ("FOO=1 /bin/script", "sets a variable, which needs a shell"),
        ("./script", "give an absolute path or a name"),
        ("bin/script", "give an absolute path or a name"),
        ("/bin/script 'unclosed", "No closing quotation"),
    ],
)
def test_script_command_refuses_what_needs_a_shell(command: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        openconnect_compat.script_command(command, "/usr/bin:/bin")


def test_script_arguments_are_bounded_printable_lines() -> None:
    assert check_script_args(["10.0.0.0/8", "", "two words", "é"]) == (
        "10.0.0.0/8", "", "two words", "é",
    )  # fmt: skip
    for bad in (["a\nb"], ["a\x00b"], ["\x1b[2J"], ["right\u202eleft"], ["x" * 1025]):
        with pytest.raises(ValueError, match="not one printable line"):
            check_script_args(bad)
    with pytest.raises(ValueError, match="more than 32 arguments"):
        check_script_args(["x"] * 33)


def test_network_argv_passes_the_arguments_to_the_helper(
    program_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # check_script wants root's own file; the test's tmp_path is not: only here, skip it
    monkeypatch.setattr("sepconnect.rootrunner.script.check_script", lambda path: path)
    path = str(program_dir / "vpn-slice")
    args = connect_args("-s", f"{path} --flag -x 10.0.0.0/8", "vpn.example")
    argv = cli._network_argv(args)
    at = argv.index("--script")
    assert argv[at : at + 5] == [
        "--script", path, "--script-arg=--flag", "--script-arg=-x", "--script-arg=10.0.0.0/8",
    ]  # fmt: skip


def test_network_argv_checks_the_program(program_dir: Path) -> None:
    (program_dir / "vpn-slice").chmod(0o777)  # anyone could change what root runs
    args = connect_args("-s", f"{program_dir / 'vpn-slice'} 10.0.0.0/8", "vpn.example")
    with pytest.raises(cli.UsageError, match="-s/--script: .*(not owned by root|writable by)"):
        cli._network_argv(args)


def test_root_runner_and_helper_take_the_arguments_in_order() -> None:
    from sepconnect.privhelper import main as helper
    from sepconnect.privhelper.runners import root_runner_args
    from sepconnect.rootrunner import main as rootrunner

    args = helper.parse_args(
        ["--fd", "3", "--peer-uid", "1", "--script", "/bin/true", "--script-arg=--x",
         "--script-arg=", "--script-arg=-y", "--script-arg=10.0.0.0/8"]
    )  # fmt: skip
    assert (args.script, args.script_arg) == ("/bin/true", ["--x", "", "-y", "10.0.0.0/8"])
    # the root runner's command line, as the helper writes it and the runner reads it
    argv = ["--fd", "5", "--peer-uid", "990", *root_runner_args(args, "/run/x-root", "none", 7)]
    parsed, script = rootrunner.parse_args(argv)
    assert script == ("/bin/true", "--x", "", "-y", "10.0.0.0/8")
    assert (parsed.state_dir, parsed.audit_fd, parsed.dns_backend) == ("/run/x-root", 7, None)
    assert rootrunner.parse_args(["--peer-uid", "990", "--state-dir", "/x"])[1] is None
    with pytest.raises(SystemExit):
        rootrunner.parse_args(["--peer-uid", "990", "--state-dir", "/x", "--script-arg=a"])


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (
            openconnect_compat.check_user_agent,
            ["AnyConnect", "Cisco AnyConnect VPN Agent for Windows 4.10.05095", "x" * 256],
            ["", " AnyConnect", "AnyConnect ", "a\r\nX-Evil: 1", "é", "x" * 257, "a\tb"],
        ),
        (
            openconnect_compat.check_version_string,
            ["4.10.05095", "v9.01-3"],
            ["", "4.10\n", "x" * 65, "é"],
        ),
        (
            openconnect_compat.check_local_hostname,
            ["box", "box-1.example", "a" * 63],
            ["", "-box", "box_1", "b x", "a" * 64, "é"],
        ),
    ],
)
def test_identity_values(check: object, good: list[str], bad: list[str]) -> None:
    assert callable(check)
    for value in good:
        assert check(value) == value
    for value in bad:
        with pytest.raises(ValueError, match="--"):
            check(value)


def _start(**changes: object) -> Start:
    fields: dict[str, object] = {
        "proto": 1,
        "url": "https://vpn.example/",
        "server_address": ipaddress.ip_address("198.18.1.1"),
        "cafile_pem": None,
        "base_mtu": None,
        "mtu": None,
        "disable_ipv6": False,
        "hostname": "client",
        "verbose": 0,
    }
    fields.update(changes)
    return Start(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_agent", "a\r\nX-Evil: 1"),
        ("user_agent", "x" * 257),
        ("version_string", "1\n"),
        ("platform", "windows"),
        ("hostname", "a b"),
        ("servercerts", ("sha1:zz",)),
        ("servercerts", ("md5:" + "ab" * 16,)),
        ("cookie", "a; b"),
    ],
)
def test_start_schema_refuses_what_the_launcher_refuses(field: str, value: object) -> None:
    good = _start()
    assert TO_WORKER.decode_untrusted(TO_WORKER.encode(good)) == good
    with pytest.raises((WireError, ValueError)):
        TO_WORKER.decode_untrusted(TO_WORKER.encode(_start(**{field: value})))


def test_start_carries_the_new_values() -> None:
    start = _start(
        user_agent="AnyConnect",
        version_string="4.10.05095",
        platform="android",
        hostname="box",
        cookie="AKJJ7m7IQ66gObeYIhTX9dS2pqbPVuOuSJinCvz4YxM=",
        servercerts=("0a1b", "sha1:abcd", "pin-sha256:AAEC"),
        authenticate=True,
    )
    assert TO_WORKER.decode_untrusted(TO_WORKER.encode(start)) == start


def test_logged_in_message() -> None:
    address = ipaddress.ip_address("198.18.1.1")
    msg = LoggedIn(cookie="AKJJ7m7IQ66g", address=address, server_pin=f"pin-sha256:{B64}")
    assert FROM_WORKER.decode_untrusted(FROM_WORKER.encode(msg)) == msg
    assert "AKJJ" not in repr(msg)


# --------------------------------------------------------------------------- -C/--cookie


@pytest.mark.parametrize(
    ("given", "cookie"),
    [
        ("AKJJ7m7IQ66gObeYIhTX9dS2pqbPVuOuSJinCvz4YxM=",) * 2,
        ("webvpn=AKJJ7m7IQ66g", "AKJJ7m7IQ66g"),
        # openconnect 9.01's --authenticate/--cookieonly (its STRAP key is not used here)
        ("openconnect_strapkey=MHcCAQEEIEyJa1W+/=; webvpn=AHV0KVWy9oSL2Rd=", "AHV0KVWy9oSL2Rd="),
        (None, None),
    ],
)
def test_session_cookie(given: str | None, cookie: str | None) -> None:
    assert openconnect_compat.session_cookie(given) == cookie


@pytest.mark.parametrize("bad", ["", "a b", "a;b", "x" * 513, "webvpn=", 'a"b'])
def test_session_cookie_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="-C/--cookie"):
        openconnect_compat.session_cookie(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cookieonly", "-C", "abc"], "not with -C/--cookie"),
        (["--cookieonly", "-b"], "not with -b/--background or --pid-file"),
        (["--cookieonly", "--pid-file", "/run/x.pid"], "not with -b/--background or --pid-file"),
        (["--authenticate", "-b"], "--authenticate makes no tunnel"),
        (["--authenticate", "-C", "abc"], "not with -C/--cookie"),
        (["--authenticate", "--cookieonly"], "give one"),
    ],
)
def test_option_pairs_refused(argv: list[str], message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        cli._check_args(connect_args(*argv, "vpn.example"))
