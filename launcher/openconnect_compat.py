"""openconnect's forms of the options a deployment's scripts pass, checked as root.

Each function takes what the user wrote and returns the value sepconnect uses, or
raises ValueError with a one-line reason; warnings come back as text for the launcher
to print. Nothing here starts a process or imports more than the standard library and
ipc (the launcher's start-up is on the connect path: docs/performance.md).

- the server: a bare host name is ``https://HOST/``; ``-g/--usergroup`` is the URL's
  path when the URL has none (openconnect's main.c: "the path in the URL superseded
  the one in the --usergroup argument");
- ``--servercert``: every form openconnect takes (ipc/servercert.py);
- ``-s/--script``: openconnect runs a shell command line (``/bin/sh -c``); no shell runs
  here, so the line is split as a shell would split words, and shell syntax beyond
  that (pipes, variables, redirections, globs) is refused rather than passed on as
  literal text;
- ``--useragent``, ``--version-string``, ``--os``, ``--local-hostname``: what the server
  is told about the client.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Sequence
from urllib.parse import urlsplit

from sepconnect.ipc.servercert import ServerPin
from sepconnect.ipc.session_limits import (
    LOCAL_HOSTNAME,
    MAX_SERVER_PINS,
    REPORTED_OS,
    SESSION_COOKIE,
    USER_AGENT,
    VERSION_STRING,
)

__all__ = [
    "add_options",
    "check_local_hostname",
    "check_user_agent",
    "check_version_string",
    "script_command",
    "server_pins",
    "server_url",
    "session_cookie",
    "webvpn_cookie",
]

# A group path as openconnect puts it after the host: printable ASCII, no white space,
# no fragment (the login's first request goes to it as given).
_USERGROUP = re.compile(r"[\x21-\x22\x24-\x7e]{1,256}")
# What a shell would act on beyond splitting words and removing quotes. No shell runs
# the script, so these would reach it as literal text: refused instead.
_SHELL_SYNTAX = frozenset(";&|<>`$()*?[]{}~\n")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# A pin shorter than this many bits draws a warning (openconnect takes 4 characters)
_STRONG_PIN_BITS = 128


def server_url(text: str, usergroup: str | None) -> tuple[str, list[str]]:
    """The server URL from the command line's SERVER and ``--usergroup``, as openconnect
    reads them, and any warnings.

    ``vpn.example.com``, ``vpn.example.com:8443/path``: ``https://`` is assumed. Any
    other scheme is refused (openconnect: "Only https:// permitted for server URL").
    """
    warnings: list[str] = []
    scheme, sep, rest = text.partition("://")
    url = f"https://{rest}" if sep else f"https://{text}"
    if sep and scheme.lower() != "https":
        raise ValueError(f"the server URL must be https:// (or a bare host name), got {text!r}")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"bad port in server URL {text!r}") from None
    if not parts.hostname or any(c.isspace() for c in text):
        raise ValueError(f"no server host name in {text!r}")
    if usergroup is not None:
        group = usergroup.lstrip("/")
        if not _USERGROUP.fullmatch(group):
            raise ValueError(
                f"-g/--usergroup {usergroup[:60]!r}: 1-256 characters of printable ASCII, "
                "without spaces or '#'"
            )
        if parts.path not in ("", "/") or parts.query:
            warnings.append(
                f"-g/--usergroup {group}: ignored, the URL has a path already (as openconnect)"
            )
        else:
            url = f"https://{parts.netloc}/{group}"
    return url, warnings


def server_pins(texts: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """The ``--servercert`` pins, each as ipc/servercert.py writes it, and warnings."""
    if len(texts) > MAX_SERVER_PINS:
        raise ValueError(f"--servercert: at most {MAX_SERVER_PINS} pins")
    pins = [ServerPin.parse(text) for text in texts]
    warnings = [
        f"--servercert {pin}: only a prefix ({pin.bits} bits): a certificate made to match "
        "it is far easier to find than one matching the whole fingerprint; give it whole"
        for pin in pins
        if pin.bits < _STRONG_PIN_BITS
    ]
    return tuple(str(pin) for pin in pins), warnings


def script_command(text: str, search_path: str) -> tuple[str, ...]:
    """``-s/--script``'s command line as an argv: the program (a name is looked up in
    *search_path*, the runner's own PATH) and its arguments. ValueError's text does not
    name the option.

    The program is checked by the caller (rootrunner/script.py check_script) and the
    arguments by ipc/script_env.py check_script_args; here only what a shell would have
    done is.
    """
    if not text.strip():
        raise ValueError("an empty command line")
    syntax = sorted(_SHELL_SYNTAX.intersection(text))
    if syntax:
        shown = " ".join(repr(c) for c in syntax)
        raise ValueError(
            f"{shown} is shell syntax, and no shell runs the script: give a "
            "program and its arguments (anything more belongs in a script of your own)"
        )
    try:
        argv = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:  # e.g. "No closing quotation"
        raise ValueError(f"{text[:80]!r}: {exc}") from None
    program = argv[0]
    if _ASSIGNMENT.match(program):
        raise ValueError(f"{program!r} sets a variable, which needs a shell; give a program")
    if "/" not in program:
        import shutil  # only here: the launcher's start-up never loads it (test_startup.py)

        found = shutil.which(program, path=search_path)
        if found is None:
            raise ValueError(f"no program {program!r} in {search_path}")
        # The name's link (e.g. /usr/local/bin/vpn-slice into a virtualenv) is root's
        # own PATH entry; the program checked and run is what it leads to.
        program = os.path.realpath(found)
    elif not program.startswith("/"):
        raise ValueError(f"{program!r}: give an absolute path or a name")
    return (program, *argv[1:])


def _checked(value: str | None, pattern: str, what: str, rule: str) -> str | None:
    if value is not None and re.fullmatch(pattern, value) is None:
        raise ValueError(f"{what} {value[:80]!r}: {rule}")
    return value


def check_user_agent(value: str | None) -> str | None:
    return _checked(
        value,
        USER_AGENT,
        "--useragent",
        "1-256 characters of printable ASCII, no space at either end",
    )


def check_version_string(value: str | None) -> str | None:
    return _checked(
        value,
        VERSION_STRING,
        "--version-string",
        "1-64 characters of printable ASCII, no space at either end",
    )


def webvpn_cookie(text: str) -> str | None:
    """The value of ``webvpn`` in a cookie list (``a=1; webvpn=VALUE``), or None."""
    for item in text.split(";"):
        name, eq, value = item.strip().partition("=")
        if eq and name == "webvpn":
            return value
    return None


def session_cookie(value: str | None) -> str | None:
    """``-C/--cookie``: the webvpn cookie's value, as ``--cookieonly`` prints it, or as
    openconnect 9 prints it (``openconnect_strapkey=…; webvpn=VALUE``: the value of
    ``webvpn`` is taken; sepconnect makes no use of the STRAP key)."""
    found = None if value is None else webvpn_cookie(value)
    if found is not None:
        value = found
    return _checked(
        value, SESSION_COOKIE, "-C/--cookie", "1-512 characters of a cookie value (RFC 6265)"
    )


def check_local_hostname(value: str | None) -> str | None:
    return _checked(
        value,
        LOCAL_HOSTNAME,
        "--local-hostname",
        "1-63 characters of A-Z a-z 0-9 . - starting with a letter or digit",
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    """The openconnect options registered here (their checks are above)."""
    parser.add_argument(
        "-g",
        "--usergroup",
        metavar="GROUP",
        help="log in at https://SERVER/GROUP, as openconnect: the URL path (a URL with a "
        "path of its own keeps it); not the login group, which is --authgroup",
    )
    parser.add_argument(
        "--useragent",
        metavar="STRING",
        help="send this User-Agent instead of sepconnect's (some Cisco ASAs answer 404 to "
        "anything but e.g. 'AnyConnect'); printable ASCII",
    )
    parser.add_argument(
        "--version-string",
        metavar="STRING",
        help='report this client version to the server (<version who="vpn">)',
    )
    parser.add_argument(
        "--os",
        choices=REPORTED_OS,
        default="linux-64",
        help="the platform reported to the server (X-AnyConnect-Platform, <device-id>; "
        "android and apple-ios add openconnect's mobile identifiers); default linux-64",
    )
    parser.add_argument(
        "--local-hostname",
        metavar="NAME",
        help="the host name given to the server (X-CSTP-Hostname; default: the first label "
        "of this host's name)",
    )
    parser.add_argument(
        "--cookieonly",
        action="store_true",
        help="log in, print the session cookie on standard output and exit: no tunnel "
        "(needs no root; as root, the login still runs as --setuid USER)",
    )
    parser.add_argument(
        "-C",
        "--cookie",
        metavar="COOKIE",
        help="make the tunnel with this session cookie (from --cookieonly) instead of "
        "logging in; other local users can read a command line: prefer the cookie on "
        "standard input",
    )
    parser.add_argument(
        "-b",
        "--background",
        action="store_true",
        help="return once the tunnel is up, the session going on in the background "
        "(its PID: --pid-file); if it fails before, exit with its exit code",
    )
    parser.add_argument(
        "--pid-file",
        metavar="FILE",
        help="write the supervisor's PID (the process to signal) to FILE once the tunnel is "
        "up; emptied when the session ends",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="less output: failures only, not the progress of a healthy session",
    )
    parser.add_argument(
        "--timestamp",
        action="store_true",
        help="begin every message line, of every process, with [YYYY-MM-DD HH:MM:SS]",
    )
    parser.add_argument(
        "-l",
        "--syslog",
        action="store_true",
        help="once the tunnel is up, send every message to syslog (daemon.info) instead of "
        "standard error",
    )
