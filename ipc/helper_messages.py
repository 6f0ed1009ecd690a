"""Messages between the supervisor and the privileged helper.

The supervisor sends requests; the helper answers each with exactly one reply
carrying the request's ``seq``. Types and size limits are declared here; what
is *allowed* (address classes, phases, once-only) is the helper's policy.py.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

from sepconnect.ipc.fields import IpAddress, IpNetwork, Mtu, Reason, Seq
from sepconnect.ipc.limits import IFNAME, MAX_ROUTES, PROTO_VERSION
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.schema import Length, Match, Message, Range


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """First message; the helper refuses everything before it.

    ``gateway``: the VPN server's address, resolved by the launcher before any worker
    ran. The helper keeps it for the session and refuses a NetConfig naming another:
    neither a worker nor a server chooses what is routed around the tunnel."""

    op: ClassVar[str] = "hello"
    seq: Seq
    proto: Annotated[int, Range(PROTO_VERSION, PROTO_VERSION)]
    role: Literal["supervisor"]
    gateway: IpAddress


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CreateTun(Message):
    """Open /dev/net/tun and create the device (the helper picks the name).

    ``vnet_hdr``: packets on the tun carry a virtio-net header (IFF_VNET_HDR), so
    the worker can use tun offloads; offloads themselves start off."""

    op: ClassVar[str] = "create_tun"
    seq: Seq
    mtu: Mtu
    vnet_hdr: bool = False  # the default serves Python callers; on the wire it is required


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NetConfig(Message):
    """Make the tun's whole network state ``net`` (declarative, idempotent: repeat freely).

    The helper checks ``net`` under its own policy (privhelper/policy.py) and
    changes only what differs from what it installed before.
    """

    op: ClassVar[str] = "net_config"
    seq: Seq
    net: NetworkConfig


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScriptEvent(Message):
    """The supervisor's news for a vpnc-script: the worker is about to reconnect
    (``attempt-reconnect``) or has reconnected (``reconnect``). Without
    ``--script`` the helper answers Done and does nothing; a ``reconnect`` run that
    fails is refused (the session ends)."""

    op: ClassVar[str] = "script_event"
    seq: Seq
    reason: Literal["attempt-reconnect", "reconnect"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Teardown(Message):
    """Remove everything installed, close the tun, reply, and exit."""

    op: ClassVar[str] = "teardown"
    seq: Seq


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Done(Message):
    """The request was carried out."""

    op: ClassVar[str] = "done"
    seq: Seq


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LeftOut(Message):
    """An excluded prefix the host has no path for outside the tunnel: it stays in it."""

    op: ClassVar[str] = "left_out"
    prefix: IpNetwork
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NetApplied(Message):
    """Reply to NetConfig: carried out, but for the excludes ``left_out``."""

    op: ClassVar[str] = "net_applied"
    seq: Seq
    left_out: Annotated[tuple[LeftOut, ...], Length(0, MAX_ROUTES)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TunCreated(Message):
    """Reply to CreateTun; the only message that carries an fd (the tun)."""

    op: ClassVar[str] = "tun_created"
    seq: Seq
    ifname: Annotated[str, Match(IFNAME)]
    ifindex: Annotated[int, Range(1, 2**31 - 1)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Refused(Message):
    """The request was refused; nothing was changed."""

    op: ClassVar[str] = "refused"
    seq: Seq
    reason: Reason


REQUEST_TYPES = (Hello, CreateTun, NetConfig, ScriptEvent, Teardown)
"""What the helper accepts."""

REPLY_TYPES = (Done, NetApplied, TunCreated, Refused)
"""What the supervisor accepts from the helper. The supervisor's codecs of both
(``REQUESTS``, ``REPLIES``) are supervisor/helper_client.py's; the helper speaks its
channel with its own codec (privhelper/channel.py) and never loads ipc/wire.py."""
