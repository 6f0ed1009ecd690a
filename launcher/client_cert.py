"""``-c/--certificate``, ``-k/--sslkey`` and the key's password: read as root, parsed by the worker.

Root opens the files (launcher/files.py); the planner checks them before anything starts
and the launcher reads them again after it dropped privileges; and
the supervisor hands their bytes to each worker in its Start message: the worker
never opens them (its sandbox would not let it) and never learns their paths. A file
that holds a private key (the key file, a PEM certificate file with the key in it, a
PKCS#12 file) must be a regular file owned by root (or, with --helper-socket, by the
account sepconnect runs as) that nobody else may read or write: mode 0600 or stricter.

Nothing here parses a key: that is done in the sandboxed worker (worker/client_cert.py),
and this module imports no cryptography (the launcher becomes the supervisor, which
should not carry OpenSSL; docs/performance.md). It only tells the formats apart
enough to know which file holds a key.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import NamedTuple

from sepconnect import files
from sepconnect.ipc.session_limits import (
    MAX_CLIENT_CERT_FILE,
    MAX_CLIENT_KEY_FILE,
    MAX_KEY_PASSWORD,
    MAX_START_FILES,
)

__all__ = ["ClientCertFiles", "OptionError", "add_options", "read_client_cert"]

PKCS11_UNSUPPORTED = (
    "PKCS#11 tokens are not supported: the TLS library in use (pyOpenSSL over the OpenSSL "
    "built into cryptography) cannot use a key that stays in a token (docs/usage.md)"
)


class OptionError(Exception):
    """A bad option or file; the launcher prints the message and exits with USAGE."""


class ClientCertFiles(NamedTuple):
    """What the worker gets: the files' bytes and the key's password. A NamedTuple, not a
    dataclass: the launcher keeps its imports small (ipc/servercert.py says why)."""

    cert: bytes | None
    key: bytes | None
    password: str | None

    def __repr__(self) -> str:  # never print the key or its password
        return f"ClientCertFiles(cert={self.cert is not None}, key=<hidden>, password=<hidden>)"


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--certificate",
        metavar="FILE",
        help="log in with this client certificate: PEM (perhaps with its chain and key), DER, "
        "or PKCS#12 (with its key); read as root",
    )
    parser.add_argument(
        "-k",
        "--sslkey",
        metavar="FILE",
        help="the certificate's private key (PEM or DER; PKCS#1, SEC1 or PKCS#8, perhaps "
        "encrypted), if not in the --certificate file; a root-owned file of mode 0600 or "
        "stricter",
    )
    parser.add_argument(
        "--key-password",
        metavar="PASSWORD",
        help="the password of the key or PKCS#12 file (other local users can see a command "
        "line: prefer --key-password-file or --key-password-on-stdin)",
    )
    parser.add_argument(
        "--key-password-file",
        metavar="FILE",
        help="read the key's password from the first line of FILE (root-owned, mode 0600 or "
        "stricter)",
    )
    parser.add_argument(
        "--key-password-on-stdin",
        action="store_true",
        help="read the key's password from the first line of standard input (before the "
        "lines of --passwd-on-stdin)",
    )


def _describe_owner(st: os.stat_result) -> str:
    return f"it is owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def _read(path: str, flag: str, limit: int) -> tuple[bytes, os.stat_result]:
    try:
        # O_NONBLOCK (rootstage.KINDS): a FIFO must not hang us; refused below as not regular.
        fd = files.open_file("client-file", path)
    except OSError as exc:
        raise OptionError(f"{flag} {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OptionError(f"{flag} {path}: not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if not data:
        raise OptionError(f"{flag} {path}: empty")
    if len(data) > limit:
        raise OptionError(f"{flag} {path}: larger than {limit} bytes")
    return data, st


def _check_private(path: str, flag: str, st: os.stat_result) -> None:
    """A file with a secret in it: owned by root (or by us, without root) and 0600."""
    if st.st_uid not in files.trusted_owners() or st.st_mode & 0o077:
        raise OptionError(
            f"{flag} {path}: holds a private key, so it must be owned by root and not readable "
            f"by others (mode 0600 or stricter); {_describe_owner(st)}"
        )


def _der_content_tag(data: bytes) -> int | None:
    """The tag of the first element inside a DER SEQUENCE, or None if ``data`` is not one."""
    if len(data) < 4 or data[0] != 0x30:
        return None
    first = data[1]
    offset = 2 if first < 0x80 else 2 + (first & 0x7F)
    return data[offset] if offset < len(data) else None


def holds_key(cert_file: bytes) -> bool:
    """Whether a ``-c`` file holds a private key: PEM with a PRIVATE KEY block, or anything
    that is not a DER certificate (PKCS#12: a SEQUENCE starting with its INTEGER version;
    a certificate's starts with the tbsCertificate SEQUENCE)."""
    if b"-----BEGIN" in cert_file:
        return b"PRIVATE KEY-----" in cert_file
    return _der_content_tag(cert_file) != 0x30


def _check_uri(flag: str, value: str | None) -> None:
    if value is not None and value.lower().startswith("pkcs11:"):
        raise OptionError(f"{flag}: {PKCS11_UNSUPPORTED}")


def _key_password(args: argparse.Namespace) -> str | None:
    given = [
        flag
        for flag, value in (
            ("--key-password", args.key_password is not None),
            ("--key-password-file", args.key_password_file is not None),
            ("--key-password-on-stdin", args.key_password_on_stdin),
        )
        if value
    ]
    if len(given) > 1:
        raise OptionError(f"{' and '.join(given)}: give the key's password one way only")
    if given and args.certificate is None:
        raise OptionError(f"{given[0]} goes with -c/--certificate")
    if args.key_password_file is not None:
        data, st = _read(args.key_password_file, "--key-password-file", 64 * 1024)
        _check_private(args.key_password_file, "--key-password-file", st)
        password = data.decode("utf-8", "strict").splitlines()[0] if data.strip() else ""
    elif args.key_password_on_stdin:
        # Only the first line: what follows is for --passwd-on-stdin (same buffer).
        password = (
            ""
            if files.planning()
            else sys.stdin.readline(MAX_KEY_PASSWORD + 2).removesuffix("\n").removesuffix("\r")
        )
    else:
        password = args.key_password
    if password is not None and len(password) > MAX_KEY_PASSWORD:
        raise OptionError(f"the key's password is longer than {MAX_KEY_PASSWORD} characters")
    return password


def read_client_cert(args: argparse.Namespace, other_bytes: int = 0) -> ClientCertFiles:
    """The ``-c``/``-k`` files and the key's password, read now (as root).

    *other_bytes*: what --cafile already puts in the Start message (MAX_START_FILES).
    Raises OptionError.
    """
    _check_uri("-c/--certificate", args.certificate)
    _check_uri("-k/--sslkey", args.sslkey)
    if args.sslkey is not None and args.certificate is None:
        raise OptionError("-k/--sslkey goes with -c/--certificate")
    password = _key_password(args)
    if args.certificate is None:
        return ClientCertFiles(None, None, None)
    cert, st = _read(args.certificate, "-c/--certificate", MAX_CLIENT_CERT_FILE)
    if b"-----BEGIN" in cert and b"-----BEGIN CERTIFICATE-----" not in cert:
        raise OptionError(f"-c/--certificate {args.certificate}: no PEM certificate in it")
    if holds_key(cert):
        _check_private(args.certificate, "-c/--certificate", st)
    elif args.sslkey is None:
        raise OptionError(
            f"-c/--certificate {args.certificate}: no private key in it; give it with -k/--sslkey"
        )
    key = None
    if args.sslkey is not None:
        key, st = _read(args.sslkey, "-k/--sslkey", MAX_CLIENT_KEY_FILE)
        _check_private(args.sslkey, "-k/--sslkey", st)
    total = other_bytes + len(cert) + len(key or b"")
    if total > MAX_START_FILES:
        raise OptionError(
            f"--cafile, -c/--certificate and -k/--sslkey together: {total} bytes, more than "
            f"the {MAX_START_FILES} the worker's start message carries"
        )
    return ClientCertFiles(cert, key, password)
