"""The system operations behind the policy's handlers (:class:`policy.Host`), for one session.

:class:`Helper` owns the tun, its routes (netconf.Router), the resolver backend
(dns.py), the fail-closed table (firewall.py, loaded by the nft runner: nft.py), the
vpnc-script (script.py, run by the root runner: rootrunner/) and the state file
(process/statefile.py). The optional parts are imported only when root's options ask
for them. Two modes:

* normal: the helper installs addresses, MTU, routes and DNS itself
  (``--no-routes``: addresses and MTU only; ``--dns-backend none``: no DNS);
* ``--script PATH``: the vpnc-script does it, as under openconnect. The helper
  creates the tun and has the root runner run the script for ``pre-init`` (before the
  tun), ``connect`` (the first NetConfig, and again after a ``disconnect`` when
  a later NetConfig differs), ``attempt-reconnect`` and ``reconnect``
  (ScriptEvent from the supervisor) and ``disconnect`` (teardown, and every
  other way out). Scripts never fail open: a configuration whose environment the
  runner would not take is refused before any script runs
  (script.check_script_env), and a ``connect`` or ``reconnect`` run that cannot
  start or exits non-zero is refused (``connect`` after running ``disconnect`` to
  undo what it did), which ends the session. openconnect ignores every exit
  status; a failing ``pre-init`` or ``attempt-reconnect`` is audited and ignored
  here too (neither configures the tunnel), a failing ``disconnect`` keeps the
  state file for the next start.

What crashed helpers left behind is undone at start-up by recovery.py.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper.netconf import (
    METRIC,
    Netlink,
    Router,
    SetMtu,
    competing,
    is_tun_route,
    route_record,
)
from sepconnect.privhelper.policy import Address, Network, Refusal, check_kill_switch_excludes
from sepconnect.privhelper.tun import Tun, open_tun
from sepconnect.process import statefile

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import Backend, BackendName
    from sepconnect.privhelper.script import Script
    from sepconnect.process.runner import RunnerClient

STATE_PREFIX = "helper"


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """Root's choices from the helper's argv."""

    ifname: str  # a name or a template with %d
    named: bool = False  # --interface was given (a vpnc-script's pre-init sees TUNDEV)
    no_routes: bool = False
    fail_closed: bool = False
    allow_exclude: tuple[Network, ...] = ()  # what --fail-closed lets a server exclude
    dns_backend: BackendName = "none"
    script: str | None = None
    log_level: int = 0
    state_dir: str | None = None


class Helper:
    """:class:`policy.Host`: the tun and its network state, for one session."""

    def __init__(
        self,
        netlink: Netlink,
        options: Options,
        audit: _audit.Audit,
        root: RunnerClient | None = None,
        nft: RunnerClient | None = None,
    ) -> None:
        self.netlink = netlink
        self.options = options
        self.audit = audit
        self.root = root  # the root runner: --script, DNS file/resolvconf
        self.nft = nft  # the nft runner: --fail-closed
        self.tun: Tun | None = None
        self.router: Router | None = None
        self.dns: Backend | None = None
        self.table: str | None = None
        self.gateway: Address | None = None
        self.script: Script | None = None
        if options.script is not None:
            from sepconnect.privhelper.script import Script

            self.script = Script(root, audit, options.log_level)
        self.undo_errors: list[str] = []
        """What could not be undone; the cleanup keeps the state file for the next start."""
        self.state = None
        if options.state_dir is not None:
            self.state = statefile.StateFile(options.state_dir, STATE_PREFIX)

    # -- the policy's operations -------------------------------------------------------

    def create_tun(self, mtu: int, *, vnet_hdr: bool) -> tuple[str, int, int]:
        if self.script is not None:
            if self.audit.sender is not None:
                self.script.vpnpid = self.audit.sender[0]
            self.script.run("pre-init", None, self.options.ifname if self.options.named else None)
        try:
            tun = open_tun(self.options.ifname, vnet_hdr=vnet_hdr)
        except OSError as exc:
            raise Refusal(f"create tun {self.options.ifname}: {exc.strerror or exc}") from None
        try:
            ifindex = self.netlink.index_of(tun.name)
            self.netlink.apply(SetMtu(mtu, None), ifindex)
            fd = os.dup(tun.fd)
        except (Refusal, OSError):
            os.close(tun.fd)  # the device goes with it: nothing was changed
            raise
        self.tun = tun
        self.router = Router(self.netlink, ifindex, mtu)
        if self.options.dns_backend != "none":
            from sepconnect.privhelper import dns

            self.dns = dns.backend(self.options.dns_backend, tun.name, ifindex, self.root)
        self._save(ifname=tun.name)
        return tun.name, ifindex, fd

    def net_config(self, wanted: NetworkConfig) -> dict[Network, str]:
        if self.router is None or self.tun is None:  # the phase table makes this unreachable
            raise Refusal("no tun")
        if self.options.fail_closed:
            check_kill_switch_excludes(wanted, self.options.allow_exclude)
        if self.script is not None:
            self.script.check(wanted, self.tun.name)
        left_out: dict[Network, str] = {}
        if self.script is None and not self.options.no_routes:
            # An exclude the host cannot route outside the tunnel stays in it; the
            # kill switch then treats it as not excluded.
            wanted, left_out = self.router.routable(wanted)
            for prefix, reason in left_out.items():
                self.audit.record("exclude_left_out", "info", f"{prefix}: {reason}")
        if self.options.fail_closed:
            from sepconnect.privhelper import firewall

            first = self.table is None
            self.table = firewall.apply(self.nft, self.tun.name, wanted, self.audit)
            if first:
                self._save(firewall=self.table)
        if self.script is not None:
            self.script.connect(wanted, self.tun.name, self.undo_errors)
            return left_out
        routed = wanted
        if self.options.no_routes:
            routed = dataclasses.replace(wanted, routes=(), exclude=())
        before = self.router.state.routes
        self.router.configure(routed)
        for route in self.router.state.routes - before:
            if is_tun_route(route, self.router.ifindex):
                for other in competing(self.netlink.ipr, route):
                    self.audit.record(
                        "conflict",
                        "info",
                        f"{route.dst}: a route with a lower or equal "
                        f"metric than ours ({METRIC}) exists and may win: {other}",
                    )
        self._save(bypass=self._bypass_records())
        if self.dns is not None:
            from sepconnect.privhelper.dns import Dns

            self.dns.apply(Dns.of(wanted))
        return left_out

    def script_event(self, reason: str) -> None:
        if self.script is not None and self.tun is not None:
            self.script.event(reason, self.tun.name)

    def teardown(self) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove what we installed, then close the tun (the device disappears). Idempotent;
        the state file stays if anything could not be undone, now or before."""
        if self.script is not None and self.tun is not None:  # before the tun goes
            self.script.disconnect(self.tun.name, self.undo_errors)
        errors: list[str] = []
        if self.dns is not None:
            errors += self.dns.revert()
        if self.router is not None:
            errors += self.router.clear()
            self.router = None
        if self.table is not None and self.nft is not None:
            from sepconnect.privhelper import firewall

            errors += firewall.delete(self.nft, self.table)
            self.table = None
        self.undo_errors += errors
        if self.tun is not None or errors:
            failures = "; ".join(self.undo_errors)[:1000]
            self.audit.record("cleanup", "fatal" if failures else "info", failures)
        if self.tun is not None:
            os.close(self.tun.fd)
            self.tun = None
        if self.state is not None and not self.undo_errors:
            self.state.remove()
        for runner in (self.root, self.nft):
            if runner is not None:
                runner.close()  # the root runner undoes what it still holds, then exits
        self.root = self.nft = None

    # -- parts ---------------------------------------------------------------------------

    def _bypass_records(self) -> list[dict[str, Any]]:
        if self.router is None:
            return []
        return [
            route_record(r)
            for r in sorted(self.router.state.routes, key=str)
            if not is_tun_route(r, self.router.ifindex)
        ]

    def _save(self, **changes: Any) -> None:
        if self.state is None:
            return
        try:
            self.state.write(**changes)
        except OSError as exc:
            self.audit.record("state", "info", f"cannot write {self.state.path}: {exc}")
