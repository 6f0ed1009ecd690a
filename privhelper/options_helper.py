"""The helper with the optional parts root's options ask for: the vpnc-script
(``--script``), the kill switch (``--fail-closed``) and a DNS backend other than ``none``,
each carrying its own rules (script.Script, firewall.KillSwitch, dns.Resolver), and the
program runners they use.

privhelper/serve.py imports this module only when an option asks for one of these
parts, so that a default session never loads it; docs/security.md lists its size with
the optional parts of the trusted base. The order of the parts is fixed: on a NetConfig,
the kill switch's check, then the script (which configures the tunnel instead of the
router) or the routable configuration, then the kill switch, the tun's routes, the DNS;
at the cleanup, the script's disconnect, the DNS revert, the routes, and the kill switch
last, so that traffic stays blocked until the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.privhelper import audit as _audit
from sepconnect.privhelper.network import Helper, Netlink, Options
from sepconnect.privhelper.policy import Network

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import Resolver
    from sepconnect.privhelper.firewall import KillSwitch
    from sepconnect.privhelper.script import Script
    from sepconnect.process.runner import RunnerClient


class OptionsHelper(Helper):
    """:class:`network.Helper` with the script, the kill switch and the DNS backend."""

    def __init__(
        self,
        netlink: Netlink,
        options: Options,
        audit: _audit.Audit,
        root: RunnerClient | None = None,
        nft: RunnerClient | None = None,
    ) -> None:
        super().__init__(netlink, options, audit)
        self.runners = [r for r in (root, nft) if r is not None]  # closed at the cleanup
        self.script: Script | None = None
        self.kill_switch: KillSwitch | None = None
        self.dns: Resolver | None = None
        if options.script is not None:
            from sepconnect.privhelper.script import Script

            self.script = Script(root, audit, options.log_level)
        if options.fail_closed:
            from sepconnect.privhelper.firewall import KillSwitch

            self.kill_switch = KillSwitch(nft, audit, options.allow_exclude, self.save)
        if options.dns_backend != "none":
            from sepconnect.privhelper.dns import Resolver

            self.dns = Resolver(options.dns_backend, root)

    def create_tun(self, mtu: int, *, vnet_hdr: bool) -> tuple[str, int, int]:
        if self.script is not None:
            self.script.pre_init(self.options.ifname if self.options.named else None)
        return super().create_tun(mtu, vnet_hdr=vnet_hdr)

    def net_config(self, wanted: NetworkConfig) -> dict[Network, str]:
        router, tun = self.configured()
        if self.kill_switch is not None:
            self.kill_switch.check(wanted)
        if self.script is not None:  # it configures the tunnel instead of the router
            return self.script.configure(wanted, tun.name, self.kill_switch, self.undo_errors)
        wanted, left_out = self.routable(router, wanted)
        if self.kill_switch is not None:
            self.kill_switch.apply(wanted, tun.name)
        self.install(router, wanted)
        if self.dns is not None:
            self.dns.apply(wanted, tun.name, router.ifindex)
        return left_out

    def script_event(self, reason: str) -> None:
        if self.script is not None and self.tun is not None:
            self.script.event(reason, self.tun.name)

    def undo(self) -> list[str]:
        if self.script is not None and self.tun is not None:  # before the tun goes
            self.script.disconnect(self.tun.name, self.undo_errors)
        errors = [] if self.dns is None else self.dns.revert()
        errors += super().undo()
        if self.kill_switch is not None:  # last: traffic stays blocked until the end
            errors += self.kill_switch.delete()
        return errors

    def cleanup(self) -> None:
        super().cleanup()
        for runner in self.runners:
            runner.close()  # the root runner undoes what it still holds, then exits
        self.runners = []
