"""``--fail-closed``: nftables rules that let traffic leave only through the tunnel.

While the session is up, one table of our own, ``inet sepconnect_<helper pid>``,
has an output chain (priority ``filter``, policy drop) that accepts only:

* loopback and the tun;
* the VPN gateway (the tunnel's own packets);
* the split-exclude prefixes (they were pushed to stay outside the tunnel);
* IPv6 neighbour and router discovery and DHCP/DHCPv6 (the uplink itself must
  keep working, or the gateway becomes unreachable);

and rejects everything else (TCP with a reset, the rest with ICMP
"administratively prohibited"), so applications fail at once instead of
hanging. Traffic routed *through* the host (forwarding) is not filtered.

The ruleset is generated here from validated values (our own interface name,
addresses and prefixes) and loaded by the root script runner with ``nft -f -``
as one transaction that replaces the table atomically; it is deleted on
disconnect. pyroute2's nftables support is too low-level to express this
reviewably, hence ``nft``. After a crash the table stays (traffic stays blocked:
fail closed) until the next helper start removes it (recovery.py).

Worker restarts need nothing from here: the helper keeps the tun and its routes
while a worker is replaced, so packets for the tunnel queue or drop in the tun
and never take the uplink (tests/integration/test_routes_dns.py checks this
with and without this table).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from typing import Any

from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.runner_messages import RunNft
from sepconnect.privhelper.audit import Audit
from sepconnect.privhelper.policy import Network, Refusal
from sepconnect.process.journal import Result
from sepconnect.process.runner import RunnerClient


def table_name(pid: int) -> str:
    return f"sepconnect_{pid}"


def _set(items: Iterable[object]) -> str:
    return "{ " + ", ".join(str(i) for i in items) + " }"


def ruleset(table: str, ifname: str, wanted: NetworkConfig) -> str:
    """The whole table, replacing any previous version of it in one transaction."""
    gateway = wanted.gateway
    v4: list[object] = []
    v6: list[object] = []
    (v4 if gateway.version == 4 else v6).append(gateway)
    excludes: list[Network] = list(wanted.exclude)
    v4 += [n for n in excludes if n.version == 4]
    v6 += [n for n in excludes if n.version == 6]
    lines = [
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy drop;",
        '    oif "lo" accept',
        f'    oifname "{ifname}" accept',
    ]
    if v4:
        lines.append(f"    ip daddr {_set(v4)} accept")
    if v6:
        lines.append(f"    ip6 daddr {_set(v6)} accept")
    lines += [
        "    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
        "    udp sport 68 udp dport 67 accept",
        "    udp sport 546 udp dport 547 accept",
        "    meta l4proto tcp reject with tcp reset",
        "    reject with icmpx type admin-prohibited",
        "  }",
        "}",
    ]
    text = "\n".join(lines) + "\n"
    # Everything above came from ipaddress objects and our own interface name.
    assert all(isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address) for a in [gateway])
    return text


def delete_ruleset(table: str) -> str:
    """Remove the table; creating it first makes this succeed when it is already gone."""
    return f"table inet {table}\ndelete table inet {table}\n"


def apply(nft: RunnerClient | None, ifname: str, wanted: NetworkConfig, audit: Audit) -> str:
    """Load our table for ``wanted`` (replacing the previous version); its name."""
    if nft is None:
        raise Refusal("fail-closed: no nft runner")
    table = table_name(os.getpid())
    ran = nft.call(RunNft(ruleset=ruleset(table, ifname, wanted)))
    audit.record(
        "fail_closed",
        "ok" if ran.status == 0 else "refused",
        ran.note,
        {"table": table, "gateway": str(wanted.gateway)},
    )
    if ran.status != 0:
        raise Refusal(f"fail-closed rules: {ran.note or ran.status}")
    return table


def delete(nft: RunnerClient, table: str) -> list[str]:
    """Delete our table at the end of the session; the errors."""
    ran = nft.call(RunNft(ruleset=delete_ruleset(table)))
    return [] if ran.status == 0 else [f"fail-closed table {table}: {ran.note}"]


def recover(nft: RunnerClient | None, table: str, note: Callable[[Result, str], None]) -> bool:
    """Delete a crashed session's table (named in its state file); False if it stays."""
    if not (table.startswith("sepconnect_") and table[11:].isdigit()):
        return True
    if nft is None:
        note("info", f"fail-closed table {table}: no nft runner")
        return False
    ran = nft.call(RunNft(ruleset=delete_ruleset(table)))
    result: Result = "ok" if ran.status == 0 else "info"
    note(result, f"deleted fail-closed table {table}: status {ran.status}")
    return True


class KillSwitch:
    """``--fail-closed`` for one session (options_helper.OptionsHelper): the rule on
    what a server may exclude, and our table from the first configuration to the
    cleanup."""

    def __init__(
        self,
        nft: RunnerClient | None,
        audit: Audit,
        allowed: tuple[Network, ...],
        save: Callable[..., Any],
    ) -> None:
        self.nft, self.audit, self.allowed = nft, audit, allowed
        self.save = save  # the helper's state file: the table outlives a crash
        self.table: str | None = None

    def check(self, wanted: NetworkConfig) -> None:
        """A server may exclude only private or link-local space from the tunnel (a LAN,
        a printer), or what root allowed with --allow-exclude: four /2 excludes would
        otherwise turn the kill switch into pass-all."""
        for prefix in wanted.exclude:
            first, last = prefix.network_address, prefix.broadcast_address
            if prefix.is_private or any(first in a and last in a for a in self.allowed):
                continue
            raise Refusal(
                f"exclude {prefix}: --fail-closed lets a server exclude only private space "
                f"(allow more with --allow-exclude {prefix})"
            )

    def apply(self, wanted: NetworkConfig, ifname: str) -> None:
        """Load the table for ``wanted`` (its excludes those the host routes outside the
        tunnel), before the routes change."""
        first = self.table is None
        self.table = apply(self.nft, ifname, wanted, self.audit)
        if first:
            self.save(firewall=self.table)

    def delete(self) -> list[str]:
        """Delete the table, last at the cleanup; the errors."""
        if self.table is None or self.nft is None:
            return []
        errors = delete(self.nft, self.table)
        self.table = None
        return errors
