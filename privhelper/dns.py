"""The tunnel's DNS settings, through one of three resolver backends.

Which backend is used is root's choice on the helper's command line
(``--dns-backend``), never the peer's; ``auto`` picks, at start:

* ``resolved``  when systemd-resolved owns ``org.freedesktop.resolve1`` on the
  system bus: per-link DNS servers, search and routing domains and the
  default-route flag, over its D-Bus API (SetLinkDNS, SetLinkDomains,
  SetLinkDefaultRoute, RevertLink). This is the only backend that can do
  *split DNS*: split-DNS domains become routing-only domains (``~corp.example``)
  of the tun, and unless the tunnel also takes the default DNS route, all
  other names keep going to the host's own servers. A full-tunnel DNS
  configuration adds the ``~.`` routing domain, so no query leaks past the
  tunnel. Everything is per link: when the tun disappears, resolved forgets
  it by itself, so a crash leaves nothing behind.
* ``resolvconf`` when a ``resolvconf`` program is installed: one record
  ``tun-<ifname>.sepconnect`` (the ``tun*`` name puts it first in Debian's
  interface-order), added with ``resolvconf -a`` and deleted with
  ``resolvconf -d``. resolvconf runs in the helper's root script runner
  (runner.py), because the helper itself does not exec.
* ``file``: /etc/resolv.conf rewritten in place (a bind mount or an SELinux
  label survives that, a rename would not): the tunnel's servers first, its
  search domains before the original ones, the original ``options`` kept.
  The original bytes are saved in the state directory and written back,
  byte for byte, on disconnect — unless someone changed the file meanwhile,
  in which case it is left alone and the audit log says where the original
  is. A crash leaves the saved copy and the state file behind, and the next
  helper start restores it (state.py). Split DNS is impossible here
  (glibc asks its servers in order, for every name): the tunnel's servers
  answer all names, as with openconnect's vpnc-script.
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
from sepconnect.privhelper.policy import Address, Refusal

BackendName = Literal["resolved", "resolvconf", "file", "none"]
BACKENDS: Final[tuple[str, ...]] = ("auto", "resolved", "resolvconf", "file", "none")

SYSTEM_BUS: Final = "unix:path=/run/dbus/system_bus_socket"
RESOLVED_NAME: Final = "org.freedesktop.resolve1"
RESOLVED_PATH: Final = "/org/freedesktop/resolve1"
RESOLVED_IFACE: Final = "org.freedesktop.resolve1.Manager"
RESOLV_CONF: Final = "/etc/resolv.conf"
RESOLVCONF_PATHS: Final = ("/usr/sbin/resolvconf", "/sbin/resolvconf")
MAX_RESOLV_CONF: Final = 64 * 1024
GLIBC_MAXNS: Final = 3
HEADER: Final = b"# Written by sepconnect"


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


def _settled(dns: Dns, applied: Dns | None, revert: Callable[[], list[str]]) -> bool:
    """What every file-based apply() starts with: True when there is nothing more to do,
    because ``dns`` is what is applied, or it is empty and what was applied is reverted
    (its first error refuses)."""
    if dns == applied:
        return True
    if not dns:
        errors = revert()
        if errors:
            raise Refusal(errors[0])
        return True
    return False


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
        from jeepney import DBusAddress, MessageType, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        target = DBusAddress(RESOLVED_PATH, bus_name=RESOLVED_NAME, interface=RESOLVED_IFACE)
        try:
            with open_dbus_connection(self.address, auth_timeout=self.timeout) as bus:
                msg = new_method_call(target, method, signature, body)
                reply = bus.send_and_get_reply(msg, timeout=self.timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise Refusal(f"systemd-resolved {method}: {exc}") from None
        if reply.header.message_type == MessageType.error:
            why = reply.body[0] if reply.body else reply.header.fields
            raise Refusal(f"systemd-resolved {method}: {str(why)[:120]}")

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
# resolvconf (through the root script runner)


def resolvconf_text(dns: Dns) -> str:
    """The record given to ``resolvconf -a`` (pure)."""
    lines = [f"nameserver {a}" for a in dns.servers]
    search = [*dns.domains, *(d for d in dns.split if d not in dns.domains)]
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


RunResolvconf = Callable[[Literal["add", "delete"], str, str], None]


class Resolvconf:
    name: BackendName = "resolvconf"

    def __init__(self, ifname: str, run: RunResolvconf) -> None:
        self.record_name = f"tun-{ifname}.sepconnect"
        self.run = run
        self.applied: Dns | None = None

    def apply(self, dns: Dns) -> None:
        if _settled(dns, self.applied, self.revert):
            return
        self.run("add", self.record_name, resolvconf_text(dns))
        self.applied = dns

    def revert(self) -> list[str]:
        if self.applied is None:
            return []
        self.applied = None
        try:
            self.run("delete", self.record_name, "")
        except Refusal as exc:
            return [str(exc)]
        return []

    def record(self) -> dict[str, Any]:
        return {"record": self.record_name} if self.applied is not None else {}


def find_resolvconf() -> str | None:
    for path in RESOLVCONF_PATHS:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


# ---------------------------------------------------------------------------
# /etc/resolv.conf


def resolv_conf_text(original: bytes, dns: Dns, ifname: str) -> bytes:
    """The rewritten resolv.conf (pure): our servers first (glibc reads at most
    three), then the original ones while there is room; our search domains before
    the original ones; every ``options`` line kept."""
    old_servers: list[str] = []
    old_search: list[str] = []
    options: list[str] = []
    for raw in original.decode("utf-8", "replace").splitlines():
        words = raw.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) >= 2:
            old_servers.append(words[1])
        elif words[0] in ("search", "domain"):
            old_search = words[1:]
        elif words[0] == "options":
            options.append(" ".join(words))
    ours = [str(a) for a in dns.servers]
    servers = ours + [s for s in old_servers if s not in ours]
    search = list(dict.fromkeys([*dns.domains, *dns.split, *old_search]))
    lines = [
        HEADER.decode() + f" for {ifname}; the original is put back when the tunnel closes.",
        *(f"nameserver {s}" for s in servers[: max(GLIBC_MAXNS, len(ours))]),
    ]
    if search:
        lines.append("search " + " ".join(search[:32]))
    lines += options
    return ("\n".join(lines) + "\n").encode()


def _digest(data: bytes) -> str:
    # CPython's own SHA-256 (the one hashlib falls back to): hashlib's default is
    # OpenSSL's, and loading libcrypto for one digest of a small file costs the helper
    # 3.4 MB of RSS. Same function, same hex digest (the state file keeps it).
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:  # a CPython built without it (3.12 renamed it _sha2)
        from hashlib import sha256
    return str(sha256(data).hexdigest())


def read_regular(path: str, limit: int = MAX_RESOLV_CONF) -> bytes:
    """A regular file's bytes, not following a symlink in its last component."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise OSError(f"{path}: larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


def write_in_place(path: str, data: bytes) -> None:
    """Overwrite a regular file's contents (same inode, owner, mode, label)."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise OSError(f"{path}: not a regular file")
    # O_TRUNC rather than ftruncate(2): the helper's seccomp filter allows open only.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def save_private(path: str, data: bytes) -> None:
    """Write a new 0600 file (the saved original), atomically."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def restore_resolv_conf(path: str, written_digest: str, saved: str) -> str:
    """Put the saved original back if ``path`` still holds what we wrote.

    Returns what happened, for the audit log. Raises OSError on I/O errors.
    """
    current = read_regular(path)
    original = read_regular(saved)
    if _digest(current) == written_digest:
        write_in_place(path, original)
        os.unlink(saved)
        return f"restored {path} ({len(original)} bytes)"
    if current == original:
        os.unlink(saved)
        return f"{path} already holds the original"
    return f"{path} was changed by someone else since we wrote it: left alone (original: {saved})"


class ResolvConfFile:
    name: BackendName = "file"

    def __init__(self, ifname: str, saved: str, path: str = RESOLV_CONF) -> None:
        self.ifname = ifname
        self.path = path
        self.saved = saved
        self.original: bytes | None = None
        self.written: bytes | None = None
        self.applied: Dns | None = None
        self.notes: list[str] = []

    def apply(self, dns: Dns) -> None:
        if _settled(dns, self.applied, self.revert):
            return
        try:
            if self.original is None:
                original = read_regular(self.path)
                if original.startswith(HEADER):
                    raise Refusal(
                        f"{self.path} holds another sepconnect session's settings: not stacking "
                        "a second one on it (use --dns-backend none for this session)"
                    )
                save_private(self.saved, original)
                self.original = original
            text = resolv_conf_text(self.original, dns, self.ifname)
            self.written = text  # recorded first: a crash mid-write is still recoverable
            write_in_place(self.path, text)
        except OSError as exc:
            raise Refusal(f"{self.path}: {exc.strerror or exc}") from None
        self.applied = dns

    def revert(self) -> list[str]:
        if self.original is None or self.written is None:
            return []
        try:
            note = restore_resolv_conf(self.path, _digest(self.written), self.saved)
        except OSError as exc:
            return [f"{self.path}: restoring the original failed: {exc.strerror or exc}"]
        self.notes.append(note)
        self.original = self.written = self.applied = None
        return [] if "left alone" not in note else [note]

    def record(self) -> dict[str, Any]:
        if self.written is None:
            return {}
        return {"path": self.path, "saved": self.saved, "written": _digest(self.written)}


# ---------------------------------------------------------------------------


def choose(
    requested: str,
    *,
    resolved: Callable[[], bool] = resolved_running,
    resolvconf: Callable[[], str | None] = find_resolvconf,
    resolv_conf: str = RESOLV_CONF,
) -> BackendName:
    """The backend for ``--dns-backend`` (``auto`` decides from what this host runs)."""
    if requested in ("resolved", "resolvconf", "file", "none"):
        return requested  # type: ignore[return-value]  # checked just above
    if resolved():
        return "resolved"
    if resolvconf() is not None:
        return "resolvconf"
    try:
        if stat.S_ISREG(os.lstat(resolv_conf).st_mode):
            return "file"
    except OSError:
        pass
    return "none"
