"""Limits and patterns of the session's options and of what the server says to the worker.

The launcher checks the user's options against them, the Start message carries them to
the worker (ipc/worker_messages.py), and the worker applies them to what the server
sends. The helper never sees any of them: what its messages and policy need is
ipc/limits.py, which it loads alone.
"""

from __future__ import annotations

import re
from typing import Final

from sepconnect.ipc.limits import NOT_PRINTABLE_CHARS

NOT_PRINTABLE: Final = re.compile(f"[{NOT_PRINTABLE_CHARS}]")
"""What never reaches a terminal, a log or a script from the server (limits.NOT_PRINTABLE_CHARS)."""
PRINTABLE_LINE: Final = f"[^{NOT_PRINTABLE_CHARS}\n]*"
"""One line of text for people (a prompt's label): printable, no newline."""

_CIPHER_NAME = r"[A-Za-z0-9_.\-]{1,64}"
CIPHER_NAME: Final = re.compile(_CIPHER_NAME)
"""One cipher-suite name as AnyConnect servers send and take them (X-DTLS-CipherSuite)."""

MAX_CIPHERS: Final = 32
MAX_CIPHER_LIST: Final = 512
CIPHER_LIST: Final = (
    rf"(?=.{{1,{MAX_CIPHER_LIST}}}\Z){_CIPHER_NAME}(?::{_CIPHER_NAME}){{0,{MAX_CIPHERS - 1}}}"
)
"""A colon-separated cipher list, whole (``re.fullmatch``, ``wire.Match``), as openconnect's
--dtls-ciphers: at most :data:`MAX_CIPHERS` names and :data:`MAX_CIPHER_LIST` characters
(the defaults are 4 and 5 names, under 100 characters)."""

SERVER_PIN: Final = (
    r"(?i:sha1|sha256):[0-9A-Fa-f]{4,64}|(?i:pin-sha256):[A-Za-z0-9+/]{4,43}=?|[0-9A-Fa-f]{4,40}"
)
"""A ``--servercert`` pin as the Start message carries it, whole (``re.fullmatch``): the
forms of ipc/servercert.py, which checks each kind's length exactly."""

MAX_SERVER_PINS: Final = 8
"""``--servercert`` may be given this many times."""

USER_AGENT: Final = r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?"
"""``--useragent``, whole: 1-256 characters of printable ASCII (an HTTP header value; no
control character, so nothing can end the header early), no space at either end."""

VERSION_STRING: Final = r"[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?"
"""``--version-string``, whole: as :data:`USER_AGENT`, at most 64 characters."""

REPORTED_OS: Final = ("linux", "linux-64", "win", "mac-intel", "android", "apple-ios")
"""``--os``: the platforms openconnect reports (``openconnect_set_reported_os``)."""

LOCAL_HOSTNAME: Final = r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}"
"""``--local-hostname`` (X-CSTP-Hostname), whole: 1-63 of A-Z a-z 0-9 . - (ocserv takes
this much; it drops a name with anything else)."""

SESSION_COOKIE: Final = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,512}"
"""The webvpn session cookie's value, whole (``-C/--cookie``, what ``--cookieonly`` prints):
RFC 6265 cookie-octets, at most 512 (ocserv's are 44 characters)."""

MAX_SCRIPT_ARGS: Final = 32
MAX_SCRIPT_ARG: Final = 1024
SCRIPT_ARG: Final = f"[^\\n{NOT_PRINTABLE_CHARS}]{{0,{MAX_SCRIPT_ARG}}}"
"""One argument of ``-s/--script``'s command line after the program, whole: printable,
one line, at most :data:`MAX_SCRIPT_ARG` characters (and at most :data:`MAX_SCRIPT_ARGS`
of them)."""

MAX_CAFILE: Final = 60_000
"""``--cafile``: the most bytes of PEM the launcher reads and the Start message carries."""

MAX_CLIENT_CERT_FILE: Final = 32_768
"""``--certificate``: the certificate file (PEM or DER, with its chain, perhaps its key;
or PKCS#12), as read by the launcher and carried in the Start message."""

MAX_CLIENT_KEY_FILE: Final = 16_384
"""``--sslkey``: the key file (PEM or DER, PKCS#1, SEC1 or PKCS#8, perhaps encrypted);
an RSA-8192 key in encrypted PEM has ~6.6 KB."""

MAX_KEY_PASSWORD: Final = 1024
"""``--key-password``: the longest password for the key."""

MAX_START_FILES: Final = 60_000
"""--cafile, --certificate and --sslkey together: with the rest of the Start message they
stay under the codec's 64 KiB (ipc/wire.py MAX_MSG)."""

FORM_NAME: Final = r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}"
"""A login form field's name, whole: the subset of XML names the worker writes back as
an element name (``<password>…</password>``), so that nothing can break out of it."""

FORM_ID: Final = r"[A-Za-z0-9_.\-]{1,64}"
"""A login form's id (``<auth id="main">``) as ``--form-entry FORM:FIELD=VALUE`` names it:
no ``:`` or ``=``, which separate the parts of that option."""


def printable(text: str, limit: int) -> str:
    """``text`` without what :data:`NOT_PRINTABLE` matches, stripped, at most ``limit`` long."""
    return NOT_PRINTABLE.sub("", text).strip()[:limit]
