"""``sepconnect connect --config FILE``: options from a file, in openconnect's syntax.

One option a line, by its long name without the dashes: ``name``, ``name=value`` or
``name value`` (as openconnect: the name ends at the first space or ``=``, spaces and
``=`` after it are skipped, the value is the rest of the line without trailing spaces).
Empty lines and lines whose first non-space character is ``#`` are ignored. ``server``
names the server URL (as openconnect's ``--server``), which otherwise stays on the command
line. The options replace ``--config FILE`` in the command line, so that options given
after it win, and then go through the same parser and checks as the command line; each
line is checked here first, so that a bad one is reported with the file and line.

The file configures a service: it must be owned by root and writable by no one else.
It holds no secret: options whose value is one are refused here (their credential-file
forms are accepted). Read before anything else: by the planner, through an fd the root
stage opened (launcher/rootstage.py), or as whoever started the launcher.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from collections.abc import Iterator

from sepconnect import files

OPTION = "--config"
SERVER = "server"
MAX_SIZE = 64 * 1024
# Options whose value is a secret, and what to write instead.
_SECRETS = {
    "key-password": "key-password-file FILE (a credential file)",
    "token-secret": "token-secret @FILE (a credential file)",  # accepted in that form
    "cookie": "cookie-on-stdin",  # a session cookie is as good as the password
}
# --form-entry fields whose value is a secret (the server's password and one-time-code
# fields): their answers belong in credentials-file.
_SECRET_FIELD = re.compile(r"pass|secret|otp|token|pin", re.IGNORECASE)
_NAME_END = re.compile(r"[\s=]")
_BETWEEN = " \t\v\f\r="


class ConfigError(Exception):
    """A config file that cannot be used: one line, naming the file (and the line)."""


def expand(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """*argv* with ``connect``'s ``--config FILE`` replaced by the file's options."""
    if not argv or argv[0] != "connect":
        return argv
    found = [i for i, arg in enumerate(argv) if arg == OPTION or arg.startswith(OPTION + "=")]
    if not found:
        return argv
    if len(found) > 1:
        raise ConfigError(f"{OPTION} may be given once")
    at = found[0]
    if argv[at] == OPTION:
        if at + 1 >= len(argv):
            raise ConfigError(f"{OPTION} needs a FILE")
        path, end = argv[at + 1], at + 2
    else:
        path, end = argv[at].partition("=")[2], at + 1
    options = file_arguments(path, _connect_parser(parser))
    return [*argv[:at], *options, *argv[end:]]


def _connect_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:  # noqa: SLF001 - argparse exposes its subparsers no other way
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            sub: argparse.ArgumentParser = action.choices["connect"]
            return sub
    raise LookupError("no connect command")  # a programming error


def read_file(path: str) -> str:
    """The file's text, if it is a regular file owned by root that no one else may write."""
    try:
        fd = files.open_file("config", path)
    except OSError as exc:
        raise ConfigError(f"{OPTION} {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise ConfigError(
                f"{OPTION} {path}: must be a regular file owned by root and writable by no one "
                f"else (it is owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
            )
        data = os.pread(fd, MAX_SIZE + 1, 0)
    except OSError as exc:
        raise ConfigError(f"{OPTION} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SIZE:
        raise ConfigError(f"{OPTION} {path}: larger than {MAX_SIZE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{OPTION} {path}: not UTF-8 text") from None


def lines(text: str) -> Iterator[tuple[int, str, str | None]]:
    """(line number, option name, value or None) for each option line, as openconnect
    splits them."""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        end = _NAME_END.search(line)
        if end is None:
            yield number, line, None
            continue
        # openconnect skips any run of spaces and "=" between the name and the value
        value = line[end.start() :].lstrip(_BETWEEN)
        yield number, line[: end.start()], value or None


def file_arguments(path: str, connect: argparse.ArgumentParser) -> list[str]:
    """The command-line arguments the file stands for, each line checked against
    ``connect``'s own options."""
    text = read_file(path)
    known = connect._option_string_actions  # noqa: SLF001 - the parser's own table
    argv: list[str] = []
    server: str | None = None
    for number, name, value in lines(text):
        where = f"{path}:{number}"
        if name == SERVER:
            if value is None:
                raise ConfigError(f"{where}: server needs a value (the server's URL)")
            if server is not None:
                raise ConfigError(f"{where}: server is given twice")
            server = value
            continue
        if name == OPTION.removeprefix("--"):
            raise ConfigError(f"{where}: config cannot name another file")
        action = known.get(f"--{name}") if not name.startswith("-") else None
        if action is None or isinstance(action, argparse._HelpAction):  # noqa: SLF001
            hint = " (write the long name without its dashes)" if name.startswith("-") else ""
            raise ConfigError(f"{where}: unknown option {name!r}{hint}")
        _check_secret(where, name, value)
        if action.nargs == 0:
            if value is not None:
                raise ConfigError(f"{where}: {name} takes no value")
            argv.append(f"--{name}")
            continue
        if value is None:
            raise ConfigError(f"{where}: {name} needs a value")
        _check_value(where, name, value, action)
        argv.append(f"--{name}={value}")
    if server is not None:
        argv.append(server)
    return argv


def _check_secret(where: str, name: str, value: str | None) -> None:
    if name in _SECRETS and not (name == "token-secret" and (value or "").startswith("@")):
        raise ConfigError(
            f"{where}: {name} would put a secret in the config file; use {_SECRETS[name]}"
        )
    if name == "form-entry" and value is not None:
        field = value.partition("=")[0].partition(":")[2]
        if _SECRET_FIELD.search(field):
            raise ConfigError(
                f"{where}: form-entry {value.partition('=')[0]} looks like a secret; give "
                "passwords and codes in credentials-file"
            )


def _check_value(where: str, name: str, value: str, action: argparse.Action) -> None:
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise ConfigError(f"{where}: {name}: {value!r} is not one of {choices}")
    convert = action.type
    if callable(convert):
        try:
            convert(value)
        except (TypeError, ValueError):
            what = getattr(convert, "__name__", "value")
            raise ConfigError(f"{where}: {name}: {value!r} is not a valid {what}") from None
