"""Messages between the helper and the program runners it starts (process/runner.py).

Two runners, each only for what root's options ask for:

* the *root runner* (rootrunner/), uid 0, for what only root may do: the vpnc-script
  (``--script``) and the DNS backends that rewrite /etc/resolv.conf or call
  resolvconf (``--dns-backend file|resolvconf``);
* the *nft runner* (privhelper/nft.py), the helper's own uid with CAP_NET_ADMIN, for
  ``--fail-closed``.

The helper asks, a runner answers each request with one :class:`Ran`. A runner trusts
the helper no more than the helper trusts the supervisor: every value is checked here
and again by the runner before it reaches a program or a file.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Final, Literal

from sepconnect.ipc.fields import Domain, IpAddress
from sepconnect.ipc.limits import IFNAME, MAX_DNS, MAX_DOMAINS
from sepconnect.ipc.wire import MAX_MSG, Codec, Length, Match, Message, Range

ScriptReason = Literal["pre-init", "connect", "disconnect", "reconnect", "attempt-reconnect"]

MAX_SCRIPT_ENV: Final = MAX_MSG - 512
"""The most bytes of a vpnc-script environment (``NAME=value`` items separated by NUL
bytes) the root runner takes: one :class:`RunScript` message, whose other fields fit in
the rest of ``MAX_MSG``. The helper's policy refuses a configuration whose environment
would be larger (privhelper/script.py check_script_env), so a script never runs without
its configuration. execve(2) takes any environment this size whatever the stack limit:
each string is below MAX_ARG_STRLEN (128 KiB), and strings, pointers (8 bytes per item,
every item at least 9 bytes long), PATH and the script's path stay below the 128 KiB
(ARG_MAX) it always allows."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunScript(Message):
    """Run the vpnc-script; ``env`` is ``NAME=value`` items separated by NUL bytes."""

    op: ClassVar[str] = "run_script"
    reason: ScriptReason
    env: Annotated[bytes, Length(0, MAX_SCRIPT_ENV)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SetDns(Message):
    """Make the tunnel's DNS settings these, with the root runner's backend (file or
    resolvconf): ``servers`` first, ``domains`` then ``split`` as search domains."""

    op: ClassVar[str] = "set_dns"
    ifname: Annotated[str, Match(IFNAME)]
    servers: Annotated[tuple[IpAddress, ...], Length(1, MAX_DNS)]
    domains: Annotated[tuple[Domain, ...], Length(0, MAX_DOMAINS)]
    split: Annotated[tuple[Domain, ...], Length(0, MAX_DOMAINS)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RevertDns(Message):
    """Undo the DNS settings (nothing to do if none are applied)."""

    op: ClassVar[str] = "revert_dns"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunNft(Message):
    """Load this ruleset with ``nft -f -`` (one atomic transaction)."""

    op: ClassVar[str] = "run_nft"
    ruleset: Annotated[str, Length(1, 60_000), Match(r'[A-Za-z0-9_ .:/{},;"\n\t-]+')]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ran(Message):
    """Done; ``status`` is 0 or the failure's exit status (negative: killed by that signal)."""

    op: ClassVar[str] = "ran"
    status: Annotated[int, Range(-64, 255)]
    note: Annotated[str, Length(0, 200)]


ROOT_REQUESTS: Final = Codec(RunScript, SetDns, RevertDns)
"""What the root runner accepts."""

NFT_REQUESTS: Final = Codec(RunNft)
"""What the nft runner accepts."""

REPLIES: Final = Codec(Ran)
"""What the helper accepts from either."""
