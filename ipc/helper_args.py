"""The privileged helper's command-line values: the launcher checks the user's options
against them, and the helper's start stage (privhelper/main.py) checks its argv against
them again. The serving stage never loads this module: the start stage hands it checked
values."""

from __future__ import annotations

import re
from typing import Final

from sepconnect.ipc.limits import IFNAME

DNS_BACKENDS: Final = ("auto", "resolved", "resolvconf", "file", "none")
"""``--dns-backend``: how the tunnel's DNS is applied (privhelper/dns.py), root's choice."""


def check_ifname(name: str) -> str:
    """An interface name (:data:`ipc.limits.IFNAME`); ValueError otherwise."""
    if re.fullmatch(IFNAME, name) is None:
        raise ValueError(f"invalid interface name {name[:40]!r}")
    return name
