"""What the launcher reads for the login: password lines, the session cookie, the
one-time-code secret, and whether the terminal may be asked.

Files are opened by root (launcher/files.py): the planner checks them before anything
starts, the launcher reads them again after the drop (standard input only then), with
the checks --credentials-file has always
had (a regular file, not a symlink, owned by root or by the account sepconnect runs as,
mode 0600 or stricter), or as systemd presents a ``LoadCredential=`` file in
$CREDENTIALS_DIRECTORY (root's, 0440, an ACL granting the service's account read).
Nothing here imports the supervisor's modules, which the launcher loads only once the
first worker is started (docs/performance.md); the token secret is parsed here
(supervisor/oath.py) only when --token-mode is given. Errors are ValueErrors with the
option's name; the launcher makes them usage errors.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import stat
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from sepconnect import files
from sepconnect.ipc.session_limits import SESSION_COOKIE
from sepconnect.openconnect_compat import webvpn_cookie

if TYPE_CHECKING:
    from sepconnect.supervisor.answers import AnswerSources, TokenCodes
    from sepconnect.supervisor.oath import OathToken
    from sepconnect.supervisor.terminal import Terminal

MAX_LINES = 8
_MAX_FILE = 64 * 1024
_FORM_ENTRY = re.compile(r"[^:=]+:[^=]+=.*", re.DOTALL)
_XML_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


_FILE_RULE = (
    "{option} {path}: must be a regular file owned by root (or by the account sepconnect "
    "runs as), mode 0600 or stricter (or a systemd credential in $CREDENTIALS_DIRECTORY)"
)
_NOT_A_CREDENTIAL = "not in $CREDENTIALS_DIRECTORY"
# POSIX ACL as Linux stores it in the system.posix_acl_access attribute: a version, then
# (tag, permissions, id) entries (linux/posix_acl_xattr.h).
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20,
)  # fmt: skip
_ACL_READ = 0x04


def systemd_credential_refusal(fd: int, path: str, st: os.stat_result) -> str | None:
    """None if *fd* is a credential as systemd (>= 254) presents it to a service with
    ``LoadCredential=``: in $CREDENTIALS_DIRECTORY, owned by root (user and group), mode
    0440 or stricter, its ACL (if any) granting named users read and nothing else;
    else why not (:data:`_NOT_A_CREDENTIAL` if it is not in that directory at all).

    Such a file may be read by its group (root) and by the users its ACL names: the
    service's account, which systemd added. No one but root can write it."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory or not os.path.isabs(directory):
        return _NOT_A_CREDENTIAL
    try:
        inside = os.path.samefile(os.path.dirname(os.path.abspath(path)), directory)
        dir_st = os.stat(directory)
    except OSError:
        return _NOT_A_CREDENTIAL
    if not inside:
        return _NOT_A_CREDENTIAL
    if dir_st.st_uid not in files.trusted_owners() or dir_st.st_mode & 0o022:
        return "$CREDENTIALS_DIRECTORY is writable by others than its owner"
    if st.st_uid != 0 or st.st_gid != 0 or stat.S_IMODE(st.st_mode) & ~0o640:
        return (
            "a systemd credential must be owned by root (user and group), mode 0640 or "
            f"stricter (it is {st.st_uid}:{st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o})"
        )
    try:
        acl = os.getxattr(fd, "system.posix_acl_access")
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None  # the mode bits are all there is
        return f"its ACL cannot be read ({exc.strerror})"
    return _acl_refusal(acl)


def _acl_refusal(acl: bytes) -> str | None:
    if len(acl) < 4 or (len(acl) - 4) % 8 or struct.unpack_from("<I", acl)[0] != _ACL_VERSION:
        return "its ACL is not one this system writes"
    for tag, perm, _id in struct.iter_unpack("<HHI", acl[4:]):
        if tag == _ACL_USER_OBJ:
            continue  # root, checked above
        if tag == _ACL_GROUP:
            return "its ACL grants a group access (systemd grants only the service's user)"
        if tag in (_ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK) and perm & ~_ACL_READ:
            return "its ACL grants more than read"
        if tag == _ACL_OTHER and perm:
            return "its ACL grants others access"
    return None


class Token(NamedTuple):
    token: OathToken
    save: Callable[[str], None] | None  # HOTP from @FILE: writes the next counter back


def read_secret_file(path: str, option: str, *, writable: bool = False) -> tuple[str, int]:
    """The text of a secret file and its fd (open only when *writable*, else closed)."""
    try:
        fd = files.open_file("secret-rw" if writable else "secret", path)
    except OSError as exc:
        raise ValueError(f"{option} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in files.trusted_owners():
            raise ValueError(_FILE_RULE.format(option=option, path=path))
        if st.st_mode & 0o077:
            why = _NOT_A_CREDENTIAL if writable else systemd_credential_refusal(fd, path, st)
            if why == _NOT_A_CREDENTIAL:
                raise ValueError(_FILE_RULE.format(option=option, path=path))
            if why is not None:
                raise ValueError(f"{option} {path}: {why}")
        data = os.pread(fd, _MAX_FILE + 1, 0)
        if len(data) > _MAX_FILE:
            raise ValueError(f"{option} {path}: larger than {_MAX_FILE} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{option} {path}: not UTF-8 text") from None
    except BaseException:
        os.close(fd)
        raise
    if not writable:
        os.close(fd)
        fd = -1
    return text, fd


def _check_lines(lines: list[str], option: str) -> tuple[str, ...]:
    if len(lines) > MAX_LINES:
        raise ValueError(f"{option}: at most {MAX_LINES} lines")
    if any(_XML_FORBIDDEN.search(line) for line in lines):
        raise ValueError(f"{option}: a line has control characters that XML cannot carry")
    return tuple(lines)


def read_passwords(args: argparse.Namespace) -> tuple[str, ...]:
    """The password lines: --credentials-file, or standard input (--passwd-on-stdin)."""
    if args.credentials_file:
        text, _ = read_secret_file(args.credentials_file, "--credentials-file")
        lines = text.splitlines()
        if not lines:
            raise ValueError(f"--credentials-file {args.credentials_file}: 1 to {MAX_LINES} lines")
        return _check_lines(lines, f"--credentials-file {args.credentials_file}")
    if args.passwd_on_stdin and not files.planning():  # the planner leaves stdin alone
        return _check_lines(sys.stdin.read(_MAX_FILE).splitlines(), "--passwd-on-stdin")
    return ()


def read_cookie(args: argparse.Namespace) -> str | None:
    """The session cookie the first worker resumes with instead of logging in:
    ``-C/--cookie`` (already checked: openconnect_compat.session_cookie), or with
    --cookie-on-stdin the first line of standard input, as openconnect --authenticate
    prints COOKIE: ``webvpn=<value>``, maybe after other cookies (openconnect 9's
    ``openconnect_strapkey=…; webvpn=…``, which ocserv does not use), separated by ``;``.
    """
    if args.cookie is not None:
        return str(args.cookie)
    if not args.cookie_on_stdin or files.planning():
        return None
    line = sys.stdin.readline(_MAX_FILE).strip()
    value = webvpn_cookie(line)
    if value is not None:
        if not re.fullmatch(SESSION_COOKIE, value):
            raise ValueError("--cookie-on-stdin: the webvpn cookie is empty or not valid")
        return value
    raise ValueError(
        "--cookie-on-stdin: expected webvpn=<cookie> on standard input (as openconnect "
        "--authenticate prints COOKIE)"
    )


def check_form_entries(entries: list[str]) -> None:
    for entry in entries:
        if not _FORM_ENTRY.fullmatch(entry):
            raise ValueError(
                f"--form-entry {entry.partition('=')[0]!r}: expected FORM:FIELD=VALUE, "
                "e.g. main:username=alice"
            )
        if _XML_FORBIDDEN.search(entry):
            raise ValueError("--form-entry: control characters that XML cannot carry")


def read_token(args: argparse.Namespace) -> Token | None:
    """--token-mode with --token-secret SECRET or @FILE (openconnect's syntax); for HOTP
    from a file, the file stays open so that each new counter is written back to it."""
    if args.token_mode is None and args.token_secret is None:
        return None
    if args.token_mode is None or args.token_secret is None:
        raise ValueError("--token-mode and --token-secret go together")
    from sepconnect.supervisor.oath import parse_token_secret

    secret = args.token_secret
    fd = -1
    if secret.startswith("@"):
        hotp = args.token_mode == "hotp"  # noqa: S105 - a mode's name
        secret, fd = read_secret_file(secret[1:], "--token-secret", writable=hotp)
    try:
        token = parse_token_secret(args.token_mode, secret)
    except ValueError as exc:
        if fd >= 0:
            os.close(fd)
        raise ValueError(f"--token-secret: {exc}") from None
    return Token(token, None if fd < 0 else _counter_saver(fd, args.token_secret[1:]))


def _counter_saver(fd: int, path: str) -> Callable[[str], None]:
    def save(text: str) -> None:
        data = (text + "\n").encode()
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        except OSError as exc:
            print(
                f"sepconnect: --token-secret @{path}: the next HOTP counter could not be "
                f"saved ({exc.strerror}); set it by hand before the next run",
                file=sys.stderr,
                flush=True,
            )

    return save


def no_prompt_reason(args: argparse.Namespace) -> str | None:
    """Why the terminal may not be asked for login answers; None if it may."""
    if args.non_inter:
        return "--non-inter"
    if args.passwd_on_stdin or args.cookie_on_stdin or args.key_password_on_stdin:
        return "standard input carried the login's input"
    if not os.isatty(0):
        return "standard input is not a terminal"
    return None


class LoginInput(NamedTuple):
    """Everything the login needs that was read as root."""

    passwords: tuple[str, ...]
    cookie: str | None
    token: Token | None

    def __repr__(self) -> str:
        return f"LoginInput(<{len(self.passwords)} passwords>, cookie={self.cookie is not None})"


def read_login(args: argparse.Namespace) -> LoginInput:
    """Read (as root) and check every login option; ValueError names the bad one."""
    if args.cookie_on_stdin and (
        args.passwd_on_stdin or args.authenticate or args.cookieonly or args.cookie is not None
    ):
        other = (
            "--passwd-on-stdin"
            if args.passwd_on_stdin
            else "--authenticate"
            if args.authenticate
            else "--cookieonly"
            if args.cookieonly
            else "-C/--cookie"
        )
        raise ValueError(f"--cookie-on-stdin and {other} cannot go together")
    if args.user is not None and (_XML_FORBIDDEN.search(args.user) or len(args.user) > 256):
        raise ValueError("--user: at most 256 characters, without control characters")
    check_form_entries(args.form_entry)
    return LoginInput(read_passwords(args), read_cookie(args), read_token(args))


def answer_sources(
    args: argparse.Namespace, login: LoginInput
) -> tuple[AnswerSources, TokenCodes | None, Terminal | None]:
    """The supervisor's answers to login forms: (AnswerSources, TokenCodes or None,
    Terminal or None). Imports the supervisor's modules: call it once the worker runs."""
    from sepconnect.supervisor.answers import AnswerSources, FormEntry, TokenCodes
    from sepconnect.supervisor.terminal import Terminal

    reason = no_prompt_reason(args)
    sources = AnswerSources(
        username=args.user,
        passwords=login.passwords,
        group=args.authgroup,
        form_entries=tuple(FormEntry.parse(entry) for entry in args.form_entry),
        token=None if login.token is None else login.token.token,
        no_prompt_reason=reason,
    )
    codes = None if login.token is None else TokenCodes(login.token.token, login.token.save)
    return sources, codes, None if reason is not None else Terminal()
