"""Limits and patterns that more than one process applies, each defined once.

The worker parses the server's configuration against them, the supervisor
re-validates what the worker reports, and the helper checks every request
against them again (it trusts neither).
"""

from __future__ import annotations

import re
from typing import Final

MAX_MSG: Final = 64 * 1024
"""Hard cap of one IPC message, checked before decoding (DESIGN.md §2)."""

MAX_ITEMS: Final = 256
"""No list or map in any IPC message is longer."""

MAX_ADDRESS_TEXT: Final = 64
"""An address or prefix as IPC text (an IPv6 prefix in full is 43 characters)."""

PROTO_VERSION: Final = 1
"""All processes ship in one wheel: the first message must carry exactly this."""

MIN_MTU: Final = 576
"""RFC 791: the datagram every IPv4 host must accept."""

MAX_MTU: Final = 9000
"""Jumbo frames: nothing larger is plausible for a VPN."""

MAX_ROUTES: Final = 256
"""At most this many routes and, separately, this many excluded prefixes."""

MAX_DNS: Final = 8
"""At most this many DNS servers are applied."""

MAX_DOMAINS: Final = 32
"""At most this many search domains and, separately, this many split-DNS domains."""

MAX_BANNER: Final = 2000
"""The server's banner is cut to this many characters."""

IPV6_MIN_MTU: Final = 1280
"""RFC 8200 §5: a link carrying IPv6 has at least this MTU (Linux disables IPv6 below it)."""

_NOT_PRINTABLE_CHARS: Final = r"\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
NOT_PRINTABLE: Final = re.compile(f"[{_NOT_PRINTABLE_CHARS}]")
"""What never reaches a terminal, a log or a script from the server: control characters
(C0 and C1, DEL) but the newline, and the bidirectional-text controls (Trojan Source)."""
PRINTABLE_TEXT: Final = f"[^{_NOT_PRINTABLE_CHARS}]*"
"""The pattern of text for people (a banner): printable, newlines allowed."""
PRINTABLE_LINE: Final = f"[^{_NOT_PRINTABLE_CHARS}\n]*"
"""One line of text for people (a prompt's label): printable, no newline."""

IFNAME_MAX: Final = 15
"""The longest interface name the kernel takes (IFNAMSIZ less its NUL)."""

IFNAME: Final = rf"(?!\.\.?\Z)[A-Za-z0-9_.-]{{1,{IFNAME_MAX}}}"
"""An interface name, whole (``re.fullmatch``, ``wire.Match``): 1-15 of A-Z a-z 0-9 _ . -,
and not "." or ".." (which the kernel refuses). No "/", ":", "%" or white space: a name
ends up in paths, in a script's environment and in audit records."""

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

DNS_BACKENDS: Final = ("auto", "resolved", "resolvconf", "file", "none")
"""``--dns-backend``: how the tunnel's DNS is applied (privhelper/dns.py), root's choice."""

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
SCRIPT_ARG: Final = f"[^\\n{_NOT_PRINTABLE_CHARS}]{{0,{MAX_SCRIPT_ARG}}}"
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

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def printable(text: str, limit: int) -> str:
    """``text`` without what :data:`NOT_PRINTABLE` matches, stripped, at most ``limit`` long."""
    return NOT_PRINTABLE.sub("", text).strip()[:limit]


def check_ifname(name: str) -> str:
    """An interface name (:data:`IFNAME`); ValueError otherwise."""
    if re.fullmatch(IFNAME, name) is None:
        raise ValueError(f"invalid interface name {name[:40]!r}")
    return name


def canonical_domain(text: str) -> str:
    """A search or split-DNS domain in lower case without its trailing dot.

    LDH labels of 1-63 characters, at most 253 in all, the last not all digits.
    Anything else (underscores, spaces, a newline, ``$(…)``) raises ValueError: a
    domain ends up in resolv.conf, resolved's per-link settings and a script's
    environment, and none of them should ever see more than a host name.
    """
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValueError(f"{text[:64]!r}: not a valid domain name")
    return name
