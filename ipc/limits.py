"""Limits and patterns that more than one process applies, each defined once.

The worker parses the server's configuration against them, the supervisor
re-validates what the worker reports, and the helper checks every request
against them again (it trusts neither). This module holds what the helper's
messages and policy need (the helper loads it); the limits of the session's
options and of what only the worker reads from the server, which the helper
never sees, are ipc/session_limits.py.
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

NOT_PRINTABLE_CHARS: Final = r"\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
"""What never reaches a terminal, a log or a script from the server (a regular expression's
character class): control characters (C0 and C1, DEL) but the newline, and the
bidirectional-text controls (Trojan Source)."""
PRINTABLE_TEXT: Final = f"[^{NOT_PRINTABLE_CHARS}]*"
"""The pattern of text for people (a banner): printable, newlines allowed."""
IFNAME_MAX: Final = 15
"""The longest interface name the kernel takes (IFNAMSIZ less its NUL)."""

IFNAME: Final = rf"(?!\.\.?\Z)[A-Za-z0-9_.-]{{1,{IFNAME_MAX}}}"
"""An interface name, whole (``re.fullmatch``, ``wire.Match``): 1-15 of A-Z a-z 0-9 _ . -,
and not "." or ".." (which the kernel refuses). No "/", ":", "%" or white space: a name
ends up in paths, in a script's environment and in audit records. (The argv check for the
launcher and the helper's start stage is ipc/helper_args.py.)"""

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def canonical_domain(text: str) -> str:
    """A search or split-DNS domain in lower case without its trailing dot.

    LDH labels of 1-63 characters, at most 253 in all, the last not all digits.
    Anything else (underscores, spaces, a newline, ``$(…)``) raises ValueError: a
    domain ends up in resolv.conf, resolved's per-link settings and a script's
    environment, and none of them should ever see more than a host name.
    """
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if not 0 < len(name) <= 253 or labels[-1].isdigit() or not all(map(_LABEL.fullmatch, labels)):
        raise ValueError(f"{text[:64]!r}: not a valid domain name")
    return name
