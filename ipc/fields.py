"""Field types shared by the message schemas of both channels.

Kept apart from helper_messages.py so that the worker, which only speaks
worker_messages.py, does not build the helper's codecs when it starts (~10 ms of
its start-up, which is on the connect path).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Annotated

from sepconnect.ipc.limits import MAX_BANNER, MAX_MTU, MIN_MTU, PRINTABLE_TEXT
from sepconnect.ipc.schema import Length, Match, Range

Seq = Annotated[int, Range(0, 2**31 - 1)]
Mtu = Annotated[int, Range(MIN_MTU, MAX_MTU)]
# Addresses travel as text and are parsed by the codec (ipc/wire.py): a handler
# only ever sees ipaddress objects. Policy (which ranges) is each receiver's.
IpAddress = IPv4Address | IPv6Address
IpNetwork = IPv4Network | IPv6Network
Reason = Annotated[str, Length(1, 200)]
# A DNS name as a search or routing domain: LDH labels only (limits.canonical_domain).
Domain = Annotated[str, Length(1, 253), Match(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")]
# Free text meant for people (the server's banner): printable, newlines allowed, nothing else.
Banner = Annotated[str, Length(1, MAX_BANNER), Match(PRINTABLE_TEXT)]
