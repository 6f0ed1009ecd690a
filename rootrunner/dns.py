"""The resolver backends that need root: /etc/resolv.conf rewritten, or resolvconf.

The root runner (main.py) holds one backend for the session, chosen by root's
``--dns-backend`` (the helper passes it on): ``SetDns`` applies the tunnel's settings,
``RevertDns`` (or the end of the helper's channel) undoes them.

* ``resolvconf``: one record ``tun-<ifname>.sepconnect`` (the ``tun*`` name puts it
  first in Debian's interface-order), added with ``resolvconf -a`` and deleted with
  ``resolvconf -d``.
* ``file``: /etc/resolv.conf rewritten in place (a bind mount or an SELinux label
  survives that, a rename would not): the tunnel's servers first, its search domains
  before the original ones, the original ``options`` kept. The original bytes are saved
  in the root runner's state directory and written back, byte for byte, on disconnect —
  unless someone changed the file meanwhile, in which case it is left alone and the
  audit log says where the original is. A crash leaves the saved copy and the state
  file behind, and the next root runner restores it. Split DNS is impossible here
  (glibc asks its servers in order, for every name): the tunnel's servers answer all
  names, as with openconnect's vpnc-script.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Final, Protocol

from sepconnect.ipc.runner_messages import SetDns
from sepconnect.process.programs import RESOLV_CONF
from sepconnect.process.runner import run_program

MAX_RESOLV_CONF: Final = 64 * 1024
GLIBC_MAXNS: Final = 3
HEADER: Final = b"# Written by sepconnect"


class DnsError(Exception):
    """The change could not be made (nothing was changed); ``str(exc)`` says why."""


class Backend(Protocol):
    def apply(self, dns: SetDns) -> None:
        """Make the tunnel's DNS settings ``dns`` (idempotent); DnsError on failure."""

    def revert(self) -> list[str]:
        """Undo everything applied; return the errors (carry on past them)."""

    def record(self) -> dict[str, Any]:
        """What a later root runner needs to undo this after a crash (JSON-ready)."""


# ---------------------------------------------------------------------------
# resolvconf


def resolvconf_text(dns: SetDns) -> str:
    """The record given to ``resolvconf -a`` (pure)."""
    lines = [f"nameserver {a}" for a in dns.servers]
    search = [*dns.domains, *(d for d in dns.split if d not in dns.domains)]
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


class Resolvconf:
    def __init__(self, program: str) -> None:
        self.program = program
        self.record_name: str | None = None
        self.applied: SetDns | None = None

    def run(self, flag: str, record: str, content: str | None) -> None:
        ran = run_program([self.program, flag, record], {}, content)
        if ran.status != 0:
            raise DnsError(f"resolvconf {flag} {record}: {ran.note or ran.status}")

    def apply(self, dns: SetDns) -> None:
        if dns == self.applied:
            return
        record = f"tun-{dns.ifname}.sepconnect"
        if self.record_name not in (None, record):
            raise DnsError(f"{record}: this session's record is {self.record_name}")
        self.run("-a", record, resolvconf_text(dns))
        self.record_name, self.applied = record, dns

    def revert(self) -> list[str]:
        if self.applied is None or self.record_name is None:
            return []
        self.applied = None
        try:
            self.run("-d", self.record_name, None)
        except DnsError as exc:
            return [str(exc)]
        return []

    def record(self) -> dict[str, Any]:
        if self.applied is None:
            return {}
        return {"backend": "resolvconf", "record": self.record_name}


# ---------------------------------------------------------------------------
# /etc/resolv.conf


def resolv_conf_text(original: bytes, dns: SetDns) -> bytes:
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
        HEADER.decode() + f" for {dns.ifname}; the original is put back when the tunnel closes.",
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
    def __init__(self, saved: str, path: str = RESOLV_CONF) -> None:
        self.path = path
        self.saved = saved
        self.original: bytes | None = None
        self.written: bytes | None = None
        self.applied: SetDns | None = None
        self.notes: list[str] = []

    def apply(self, dns: SetDns) -> None:
        if dns == self.applied:
            return
        try:
            if self.original is None:
                original = read_regular(self.path)
                if original.startswith(HEADER):
                    raise DnsError(
                        f"{self.path} holds another sepconnect session's settings: not stacking "
                        "a second one on it (use --dns-backend none for this session)"
                    )
                save_private(self.saved, original)
                self.original = original
            text = resolv_conf_text(self.original, dns)
            self.written = text  # recorded first: a crash mid-write is still recoverable
            write_in_place(self.path, text)
        except OSError as exc:
            raise DnsError(f"{self.path}: {exc.strerror or exc}") from None
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
        return {
            "backend": "file",
            "path": self.path,
            "saved": self.saved,
            "written": _digest(self.written),
        }
