"""Crash recovery: undo what crashed helpers left behind (bypass routes, nft tables).

A helper writes what it installed outside its tun to its state file (network.py); the tun,
its addresses and its routes went with the crashed helper's fd, the bypass routes on the
uplink and the fail-closed table did not. :func:`main.main` imports this module only
when the state directory holds such files, once the netlink socket is open. (What a
root runner changed, the next root runner undoes: rootrunner/main.py.)
"""

from __future__ import annotations

import errno
import ipaddress
import os
from typing import TYPE_CHECKING, Any

from sepconnect.ipc.netconfig import METRIC, RT_TABLE_MAIN, RTPROT_SEPCONNECT
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper.network import (
    Change,
    KernelError,
    Netlink,
    Route,
)
from sepconnect.process.journal import Result

if TYPE_CHECKING:
    from sepconnect.process.runner import RunnerClient


def route_from_record(record: object) -> Route | None:
    """The route a state file names, or None if the record is not a valid one."""
    if not isinstance(record, dict):
        return None
    try:
        dst = ipaddress.ip_network(str(record["dst"]))
        oif = record["oif"]
        gw = record.get("gateway")
        gateway = None if gw is None else ipaddress.ip_address(str(gw))
    except (KeyError, ValueError):
        return None
    if not isinstance(oif, int) or oif <= 0 or dst.prefixlen == 0:
        return None
    return Route(dst, oif, gateway)


def recover(
    stale: list[tuple[str, dict[str, Any]]],
    netlink: Netlink,
    nft: RunnerClient | None,
    audit: _audit.Audit,
) -> None:
    """Undo what crashed helpers left behind; one ``recover`` audit record per step."""
    for path, data in stale:
        who = {"pid": data.get("pid"), "ifname": str(data.get("ifname", ""))[:15]}

        def note(result: Result, what: str) -> None:
            audit.record("recover", result, what[:500], dict(who))  # noqa: B023

        ok = True
        for record in data.get("bypass", []) if isinstance(data.get("bypass"), list) else []:
            route = route_from_record(record)
            if route is None:
                continue
            try:
                netlink.apply(Change(False, route), 0)
                note(
                    "ok",
                    f"deleted stale route {route} (proto {RTPROT_SEPCONNECT}, "
                    f"metric {METRIC}, table {RT_TABLE_MAIN})",
                )
            except KernelError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                    ok = False
                    note("info", f"stale route {route}: {exc}")
        table = data.get("firewall")
        if isinstance(table, str):
            from sepconnect.privhelper import firewall

            ok = firewall.recover(nft, table, note) and ok
        if ok:
            try:
                os.unlink(path)
            except OSError as exc:
                note("info", f"cannot remove {path}: {exc}")
