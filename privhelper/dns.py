"""The tunnel's DNS settings, through one of four resolver backends.

Which backend is used is root's choice on the helper's command line
(``--dns-backend``), never the peer's; ``auto`` picks, at start:

* ``resolved``  when systemd-resolved owns ``org.freedesktop.resolve1`` on the
  system bus: per-link DNS servers, search and routing domains and the
  default-route flag, over its D-Bus API (SetLinkDNS, SetLinkDomains,
  SetLinkDefaultRoute, RevertLink), from the helper itself. This is the only backend
  that can do *split DNS*: split-DNS domains become routing-only domains
  (``~corp.example``) of the tun, and unless the tunnel also takes the default DNS
  route, all other names keep going to the host's own servers. A full-tunnel DNS
  configuration adds the ``~.`` routing domain, so no query leaks past the tunnel.
  Everything is per link: when the tun disappears, resolved forgets it by itself, so a
  crash leaves nothing behind.
* ``resolvconf`` when a ``resolvconf`` program is installed, else ``file`` when
  /etc/resolv.conf is a regular file: both are root's, and done by the root runner
  (rootrunner/dns.py), which the helper then starts before it drops root.
* ``none``: DNS is left alone (deployments that manage it themselves).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.runner_messages import RevertDns, SetDns
from sepconnect.privhelper.policy import Address, Refusal
from sepconnect.process import programs
from sepconnect.process.runner import RunnerClient

BackendName = Literal["resolved", "resolvconf", "file", "none"]

SYSTEM_BUS: Final = "unix:path=/run/dbus/system_bus_socket"
RESOLVED_NAME: Final = "org.freedesktop.resolve1"
RESOLVED_PATH: Final = "/org/freedesktop/resolve1"
RESOLVED_IFACE: Final = "org.freedesktop.resolve1.Manager"
POLKIT_RULES: Final = tuple(
    f"{d}/polkit-1/rules.d/50-sepconnect-helper.rules" for d in ("/etc", "/usr/share")
)
"""The install step's polkit rule: the helper's account may change link DNS settings."""
DENIED: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class Dns:
    """The DNS part of a :class:`NetworkConfig`."""

    servers: tuple[Address, ...] = ()
    domains: tuple[str, ...] = ()
    split: tuple[str, ...] = ()
    default: bool = False

    @classmethod
    def of(cls, wanted: NetworkConfig) -> Dns:
        return cls(wanted.dns, wanted.domains, wanted.split_dns, wanted.dns_default)

    def __bool__(self) -> bool:
        return bool(self.servers)


class Backend(Protocol):
    name: BackendName

    def apply(self, dns: Dns) -> None:
        """Make the tunnel's DNS settings ``dns`` (idempotent); Refusal on failure."""

    def revert(self) -> list[str]:
        """Undo everything applied; return the errors (carry on past them)."""

    def record(self) -> dict[str, Any]:
        """What a later helper needs to undo this after a crash (JSON-ready)."""


class NoDns:
    name: BackendName = "none"

    def apply(self, dns: Dns) -> None:
        pass

    def revert(self) -> list[str]:
        return []

    def record(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------
# systemd-resolved over D-Bus


def resolved_calls(ifindex: int, dns: Dns) -> list[tuple[str, str, tuple[Any, ...]]]:
    """The Manager method calls (name, signature, body) that configure the link (pure)."""
    servers = [
        (socket.AF_INET if a.version == 4 else socket.AF_INET6, a.packed) for a in dns.servers
    ]
    domains = [(d, False) for d in dns.domains]
    domains += [(d, True) for d in dns.split if d not in dns.domains]
    if dns.default and dns.servers:
        domains.append((".", True))  # "~.": this link answers every name
    return [
        ("SetLinkDNS", "ia(iay)", (ifindex, servers)),
        ("SetLinkDomains", "ia(sb)", (ifindex, domains)),
        ("SetLinkDefaultRoute", "ib", (ifindex, bool(dns.default and dns.servers))),
    ]


class Resolved:
    """Per-link settings of systemd-resolved (jeepney, blocking, one call at a time)."""

    name: BackendName = "resolved"

    def __init__(self, ifindex: int, address: str = SYSTEM_BUS, timeout: float = 5.0) -> None:
        self.ifindex = ifindex
        self.address = address
        self.timeout = timeout
        self.applied: Dns | None = None

    def _call(self, method: str, signature: str, body: tuple[Any, ...]) -> None:
        from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        target = DBusAddress(RESOLVED_PATH, bus_name=RESOLVED_NAME, interface=RESOLVED_IFACE)
        try:
            with open_dbus_connection(self.address, auth_timeout=self.timeout) as bus:
                msg = new_method_call(target, method, signature, body)
                reply = bus.send_and_get_reply(msg, timeout=self.timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise Refusal(f"systemd-resolved {method}: {exc}") from None
        if reply.header.message_type == MessageType.error:
            why = str(reply.body[0] if reply.body else reply.header.fields)[:120]
            if reply.header.fields.get(HeaderFields.error_name, "") in DENIED:
                why += " (the helper's account needs the polkit rule of scripts/install-system.sh)"
            raise Refusal(f"systemd-resolved {method}: {why}")

    def apply(self, dns: Dns) -> None:
        if dns == self.applied:
            return
        if not dns:
            self.revert()
            return
        for method, signature, body in resolved_calls(self.ifindex, dns):
            self._call(method, signature, body)
        self.applied = dns

    def revert(self) -> list[str]:
        if self.applied is None:
            return []
        self.applied = None
        try:
            self._call("RevertLink", "i", (self.ifindex,))
        except Refusal as exc:
            text = str(exc)
            if "No such" in text or "not known" in text or "UnknownObject" in text:
                return []  # the link is gone, and resolved forgot it with it
            return [text]
        return []

    def record(self) -> dict[str, Any]:
        return {}  # per-link: nothing outlives the tun


def resolved_running(address: str = SYSTEM_BUS, timeout: float = 2.0) -> bool:
    """Whether systemd-resolved owns its bus name now (the bus never starts it for us)."""
    path = address.removeprefix("unix:path=")
    if path != address and not os.path.exists(path):
        # No system bus at all: the answer without importing jeepney (~0.5 MB of RSS
        # that the helper would keep for the whole session).
        return False
    try:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        bus_addr = DBusAddress(
            "/org/freedesktop/DBus",
            bus_name="org.freedesktop.DBus",
            interface="org.freedesktop.DBus",
        )
        with open_dbus_connection(address, auth_timeout=timeout) as bus:
            msg = new_method_call(bus_addr, "NameHasOwner", "s", (RESOLVED_NAME,))
            reply = bus.send_and_get_reply(msg, timeout=timeout)
        return bool(reply.body and reply.body[0] is True)
    except (OSError, TimeoutError, ValueError, ImportError):
        return False


# ---------------------------------------------------------------------------
# file and resolvconf: root's, so the root runner's (rootrunner/dns.py)


class RootDns:
    """The ``file`` and ``resolvconf`` backends, carried out by the root runner."""

    def __init__(self, name: BackendName, ifname: str, runner: RunnerClient) -> None:
        self.name = name
        self.ifname = ifname
        self.runner = runner
        self.applied: Dns | None = None

    def apply(self, dns: Dns) -> None:
        if dns == self.applied:
            return
        if not dns:
            errors = self.revert()
            if errors:
                raise Refusal(errors[0])
            return
        msg = SetDns(ifname=self.ifname, servers=dns.servers, domains=dns.domains, split=dns.split)
        ran = self.runner.call(msg)
        if ran.status != 0:
            raise Refusal(f"{self.name} DNS: {ran.note or ran.status}")
        self.applied = dns

    def revert(self) -> list[str]:
        if self.applied is None:
            return []
        self.applied = None
        ran = self.runner.call(RevertDns())
        return [f"{self.name} DNS: {ran.note or ran.status}"] if ran.status else []

    def record(self) -> dict[str, Any]:
        return {}  # the root runner keeps its own (process/statefile.py)


def backend(name: BackendName, ifname: str, ifindex: int, root: RunnerClient | None) -> Backend:
    """The session's backend ``name`` (not ``none``) for the tun ``ifname``."""
    if name == "resolved":
        return Resolved(ifindex)
    if root is None:
        raise Refusal(f"the {name} DNS backend needs the root runner")
    return RootDns(name, ifname, root)


class Resolver:
    """``--dns-backend`` for one session (options_helper.OptionsHelper): the backend,
    set up for the tun at the first configuration, after its routes."""

    def __init__(self, name: BackendName, root: RunnerClient | None) -> None:
        self.name = name
        self.root = root
        self.backend: Backend | None = None

    def apply(self, wanted: NetworkConfig, ifname: str, ifindex: int) -> None:
        if self.backend is None:
            self.backend = backend(self.name, ifname, ifindex, self.root)
        self.backend.apply(Dns.of(wanted))

    def revert(self) -> list[str]:
        return [] if self.backend is None else self.backend.revert()


# ---------------------------------------------------------------------------


def polkit_rule_installed() -> bool:
    return any(os.path.exists(path) for path in POLKIT_RULES)


def choose(
    requested: str,
    *,
    resolved: Callable[[], bool] = resolved_running,
    polkit: Callable[[], bool] = polkit_rule_installed,
    resolvconf: Callable[[], str | None] = lambda: programs.installed(programs.RESOLVCONF_PATHS),
    resolv_conf: str = programs.RESOLV_CONF,
) -> BackendName:
    """The backend for ``--dns-backend`` (``auto`` decides from what this host runs):
    systemd-resolved only where the install step's polkit rule lets the helper's account
    use it (resolved trusts uid 0 or polkit, never a capability)."""
    if requested in ("resolved", "resolvconf", "file", "none"):
        return requested  # type: ignore[return-value]  # checked just above
    if polkit() and resolved():
        return "resolved"
    if resolvconf() is not None:
        return "resolvconf"
    try:
        if stat.S_ISREG(os.lstat(resolv_conf).st_mode):
            return "file"
    except OSError:
        pass
    return "none"
