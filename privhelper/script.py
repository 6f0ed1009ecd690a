"""The vpnc-script environment (PROTOCOL.md §6), built from validated values only.

openconnect exports the server's headers to the script almost verbatim. The
helper instead builds every variable from a :class:`NetworkConfig` — addresses,
prefixes and numbers parsed by :mod:`ipaddress`, domains that passed
:func:`policy.check_domain`, a banner of printable characters — plus what it
knows itself (its tun's name, the supervisor's pid from SCM_CREDENTIALS). No
raw server string reaches the environment. The runner (runner.py) checks each
variable's name and value once more before it executes the script; the helper's
policy refuses, before any run, a configuration whose environment the runner would
not take (:func:`check_script_env`), so a script never runs with less than it should.

Differences from openconnect, all deliberate:

* ``CISCO_CSTP_OPTIONS`` is rebuilt from the validated values (address, netmask,
  MTU, DNS, domains, split routes, idle timeout), not copied from the headers.
* ``CISCO_PROXY_PAC`` and ``INTERNAL_IP4_NBNS`` are not set (not parsed).
* ``INTERNAL_IP4_DNS`` carries IPv4 and IPv6 servers, space separated, at most
  three (as openconnect); ``INTERNAL_IP6_DNS`` carries the IPv6 ones as well,
  for scripts that read it.
* For ``pre-init`` only ``reason``, ``TUNDEV`` (when ``--interface`` names
  it), ``VPNPID`` and ``LOG_LEVEL`` are set: the gateway and tunnel are not
  known before the tun is created.

With ``--script PATH`` the script configures the tunnel, as under openconnect
(:class:`Script`, options_helper.OptionsHelper's script mode): ``pre-init`` before the tun,
``connect`` for the first NetConfig (and again after a ``disconnect`` when a later
one differs), ``attempt-reconnect`` and ``reconnect`` (ScriptEvent), ``disconnect``
at teardown. Scripts never fail open: a configuration whose environment the runner
would not take is refused before any script runs, and a ``connect`` or ``reconnect``
that cannot start or exits non-zero is refused (``connect`` after running
``disconnect``), which ends the session.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.runner_messages import MAX_SCRIPT_ENV, Ran, RunScript
from sepconnect.ipc.script_env import check_env
from sepconnect.privhelper.policy import DEFAULT_ROUTES, Network, Refusal

if TYPE_CHECKING:
    from sepconnect.privhelper.audit import Audit
    from sepconnect.privhelper.firewall import KillSwitch
    from sepconnect.process.runner import RunnerClient

MAX_SCRIPT_DNS = 3  # as openconnect
SESSION_REASONS = ("connect", "attempt-reconnect", "reconnect", "disconnect")
"""The reasons a script runs with a network configuration's environment."""


def _routes(prefix: str, nets: Iterable[Network], v6: bool) -> list[tuple[str, str]]:
    env: list[tuple[str, str]] = []
    items = list(nets)
    if not items:
        return env
    env.append((prefix, str(len(items))))
    for i, net in enumerate(items):
        env.append((f"{prefix}_{i}_ADDR", str(net.network_address)))
        if not v6:
            env.append((f"{prefix}_{i}_MASK", str(net.netmask)))
        env.append((f"{prefix}_{i}_MASKLEN", str(net.prefixlen)))
    return env


def split_lists(wanted: NetworkConfig) -> dict[str, list[Network]]:
    """Includes and excludes per family, as the server pushed them: a family routed
    whole (the two /1 halves) has no include list, which tells a vpnc-script to
    route it whole."""
    halves = {half for pair in DEFAULT_ROUTES.values() for half in pair}
    full = {v: any(r in halves and r.version == v for r in wanted.routes) for v in (4, 6)}
    return {
        "CISCO_SPLIT_INC": [] if full[4] else [r for r in wanted.routes if r.version == 4],
        "CISCO_IPV6_SPLIT_INC": [] if full[6] else [r for r in wanted.routes if r.version == 6],
        "CISCO_SPLIT_EXC": [r for r in wanted.exclude if r.version == 4],
        "CISCO_IPV6_SPLIT_EXC": [r for r in wanted.exclude if r.version == 6],
    }


def script_env(
    reason: str,
    *,
    ifname: str | None,
    vpnpid: int,
    log_level: int,
    wanted: NetworkConfig | None,
) -> list[tuple[str, str]]:
    """The variables for one run of the script, in a stable order."""
    env: list[tuple[str, str]] = [("reason", reason)]
    if ifname is not None:
        env.append(("TUNDEV", ifname))
    env += [("VPNPID", str(vpnpid)), ("LOG_LEVEL", str(log_level))]
    if wanted is None:
        return env
    env.append(("VPNGATEWAY", str(wanted.gateway)))
    env.append(("INTERNAL_IP4_MTU", str(wanted.mtu)))
    options: list[tuple[str, str]] = [("X-CSTP-MTU", str(wanted.mtu))]
    if wanted.idle_timeout is not None:
        env.append(("IDLE_TIMEOUT", str(wanted.idle_timeout)))
        options.append(("X-CSTP-Idle-Timeout", str(wanted.idle_timeout)))
    for iface in wanted.addresses:
        if isinstance(iface, ipaddress.IPv4Interface):
            env.append(("INTERNAL_IP4_ADDRESS", str(iface.ip)))
            env.append(("INTERNAL_IP4_NETMASK", str(iface.netmask)))
            env.append(("INTERNAL_IP4_NETMASKLEN", str(iface.network.prefixlen)))
            env.append(("INTERNAL_IP4_NETADDR", str(iface.network.network_address)))
            options += [("X-CSTP-Address", str(iface.ip)), ("X-CSTP-Netmask", str(iface.netmask))]
        else:
            env.append(("INTERNAL_IP6_ADDRESS", str(iface.ip)))
            env.append(("INTERNAL_IP6_NETMASK", f"{iface.ip}/{iface.network.prefixlen}"))
            options.append(("X-CSTP-Address-IP6", f"{iface.ip}/{iface.network.prefixlen}"))
    dns = list(wanted.dns[:MAX_SCRIPT_DNS])
    if dns:
        env.append(("INTERNAL_IP4_DNS", " ".join(str(a) for a in dns)))
        v6 = [str(a) for a in dns if a.version == 6]
        if v6:
            env.append(("INTERNAL_IP6_DNS", " ".join(v6)))
        options += [("X-CSTP-DNS", str(a)) for a in wanted.dns]
    if wanted.domains:
        env.append(("CISCO_DEF_DOMAIN", " ".join(wanted.domains)))
        options.append(("X-CSTP-Default-Domain", " ".join(wanted.domains)))
    if wanted.split_dns:
        env.append(("CISCO_SPLIT_DNS", ",".join(wanted.split_dns)))
        options += [("X-CSTP-Split-DNS", d) for d in wanted.split_dns]
    if wanted.banner is not None:
        env.append(("CISCO_BANNER", wanted.banner))
    lists = split_lists(wanted)
    for name, nets in lists.items():
        env += _routes(name, nets, v6="IPV6" in name)
        header = "Exclude" if "EXC" in name else "Include"
        suffix = "-IP6" if "IPV6" in name else ""
        options += [(f"X-CSTP-Split-{header}{suffix}", str(n)) for n in nets]
    env.append(("CISCO_CSTP_OPTIONS", "".join(f"{k}={v}\n" for k, v in options)))
    return env


def encode_env(env: list[tuple[str, str]]) -> bytes:
    """The runner's wire form: ``NAME=value`` items separated by NUL bytes."""
    return b"\0".join(f"{k}={v}".encode() for k, v in env)


def check_script_env(wanted: NetworkConfig, *, ifname: str, vpnpid: int, log_level: int) -> None:
    """Refusal unless the runner takes the environment of every run ``wanted`` would get:
    built by :func:`script_env` itself, at most ``MAX_SCRIPT_ENV`` bytes, and every
    variable allowed (ipc/script_env.py check_env). A configuration the script cannot get whole is
    refused before anything runs, rather than the script failing later."""
    for reason in SESSION_REASONS:
        blob = encode_env(
            script_env(reason, ifname=ifname, vpnpid=vpnpid, log_level=log_level, wanted=wanted)
        )
        if len(blob) > MAX_SCRIPT_ENV:
            raise Refusal(
                f"the vpnc-script environment for this configuration ({len(blob)} bytes) "
                f"exceeds the runner's limit of {MAX_SCRIPT_ENV}: too many routes, excludes "
                "or domains for --script"
            )
        try:
            check_env(blob)
        except ValueError as exc:
            raise Refusal(f"the vpnc-script environment for this configuration: {exc}") from None


class Script:
    """The session's runs of the vpnc-script (``--script``), through the root runner
    (OptionsHelper's script mode; the rules are in this module's docstring)."""

    def __init__(self, root: RunnerClient | None, audit: Audit, log_level: int) -> None:
        self.root = root
        self.audit = audit
        self.log_level = log_level
        self.vpnpid = 0
        """The supervisor's pid (CreateTun's SCM_CREDENTIALS)."""
        self.wanted: NetworkConfig | None = None
        """What the script last configured (``connect`` ran for it), until ``disconnect``."""

    def pre_init(self, ifname: str | None) -> None:
        """``pre-init``, before the tun exists (TUNDEV: the name root gave, if any)."""
        if self.audit.sender is not None:
            self.vpnpid = self.audit.sender[0]  # the supervisor's, from CreateTun
        self.run("pre-init", None, ifname)

    def check(self, wanted: NetworkConfig, ifname: str) -> None:
        check_script_env(wanted, ifname=ifname, vpnpid=self.vpnpid, log_level=self.log_level)

    def configure(
        self,
        wanted: NetworkConfig,
        ifname: str,
        kill_switch: KillSwitch | None,
        undo_errors: list[str],
    ) -> dict[Network, str]:
        """A NetConfig in script mode: the script configures the tunnel, not the helper's
        router (nothing is left out). The configuration is refused before anything runs if
        the runner would not take its environment; the kill switch goes first."""
        self.check(wanted, ifname)
        if kill_switch is not None:
            kill_switch.apply(wanted, ifname)
        self.connect(wanted, ifname, undo_errors)
        return {}

    def run(self, reason: str, wanted: NetworkConfig | None, ifname: str | None) -> Ran:
        if self.root is None:
            raise Refusal("vpnc-script: no root runner")
        env = script_env(
            reason, ifname=ifname, vpnpid=self.vpnpid, log_level=self.log_level, wanted=wanted
        )
        ran = self.root.call(RunScript(reason=reason, env=encode_env(env)))  # type: ignore[arg-type]
        ignored = ran.status != 0 and reason in ("pre-init", "attempt-reconnect")
        self.audit.record(
            "script",
            "ok" if ran.status == 0 else "info",
            ran.note + (" (ignored, as openconnect does)" if ignored else ""),
            {"reason": reason, "status": ran.status, "tundev": ifname},
        )
        return ran

    def connect(self, wanted: NetworkConfig, ifname: str, undo_errors: list[str]) -> None:
        """``connect`` for ``wanted`` unless the script configured it already (after
        ``disconnect`` for what it configured before); Refusal if it fails."""
        if wanted == self.wanted:
            return
        self.disconnect(ifname, undo_errors)
        self.wanted = wanted
        ran = self.run("connect", wanted, ifname)
        if ran.status != 0:
            # It may have done part of its work: undone now, as at teardown.
            undone = self.disconnect(ifname, undo_errors)
            raise Refusal(
                f"vpnc-script connect failed: {ran.note or ran.status}; "
                + ("disconnect run" if undone else "disconnect failed too")
            )

    def event(self, reason: str, ifname: str) -> None:
        """A ScriptEvent; Refusal if a ``reconnect`` run fails."""
        if self.wanted is None:
            return
        ran = self.run(reason, self.wanted, ifname)
        if ran.status != 0 and reason == "reconnect":
            raise Refusal(f"vpnc-script reconnect failed: {ran.note or ran.status}")

    def disconnect(self, ifname: str, undo_errors: list[str]) -> bool:
        """``disconnect`` for what the script configured, if anything; False if it failed
        (kept in ``undo_errors``)."""
        if self.wanted is None:
            return True
        ran = self.run("disconnect", self.wanted, ifname)
        self.wanted = None
        if ran.status != 0:
            undo_errors.append(f"vpnc-script disconnect: {ran.note or ran.status}")
            return False
        return True
