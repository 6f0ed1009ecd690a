"""Field types shared by the helper's and the worker's message schemas.

Kept apart from helper_messages.py so that the worker, which only speaks
worker_messages.py, does not build the helper's codecs when it starts (~10 ms of
its start-up, which is on the connect path).
"""

from __future__ import annotations

from typing import Annotated

from sepconnect.ipc.wire import Length, Match, Range

__all__ = [
    "Banner",
    "Domain",
    "IpAddress",
    "Ipv4Interface",
    "Ipv6Interface",
    "Mtu",
    "Prefix",
    "Reason",
    "Seq",
]

Seq = Annotated[int, Range(0, 2**31 - 1)]
Mtu = Annotated[int, Range(576, 9000)]
# Syntax only; policy.py parses with ipaddress and applies the semantic rules.
Ipv4Interface = Annotated[str, Length(9, 18), Match(r"[0-9.]+/[0-9]{1,2}")]
Ipv6Interface = Annotated[str, Length(4, 43), Match(r"[0-9a-fA-F:.]+/[0-9]{1,3}")]
Prefix = Annotated[str, Length(4, 43), Match(r"[0-9a-fA-F:.]+/[0-9]{1,3}")]
IpAddress = Annotated[str, Length(2, 39), Match(r"[0-9a-fA-F:.]+")]
Reason = Annotated[str, Length(1, 200)]
# A DNS name as a search or routing domain: LDH labels only (policy.py checks the labels).
Domain = Annotated[str, Length(1, 253), Match(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")]
# Free text meant for people (the server's banner): printable, newlines allowed, nothing else.
Banner = Annotated[str, Length(1, 2000), Match(r"[^\x00-\x09\x0b-\x1f\x7f-\x9f]*")]
