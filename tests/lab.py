"""A throwaway network lab with a real ocserv, for integration tests (DESIGN.md §6).

Topology (three network namespaces, joined by veth pairs created *inside* them, so
nothing ever appears in the host namespace)::

    client ns ───────────── server ns (ocserv) ───────────── target ns
    to-srv                  to-cli | to-tgt                   to-srv
    198.18.1.2/24           198.18.1.1/24 | 198.18.2.1/24     198.18.2.2/24 (+ iperf3 -s)
    2001:2:0:1::2/64        2001:2:0:1::1/64 | 2001:2:0:2::1/64  2001:2:0:2::2/64

- client: default routes via the server (the "original path" a full-tunnel VPN keeps
  for the gateway itself).
- server: forwarding on (inside its namespace only); ocserv listens on 198.18.1.1:443,
  leases from 198.18.100.0/24 (server end of every tun: 198.18.100.1) and
  2001:2:0:100::/64 (one /128 per client, server end 2001:2:0:100::1).
- target: routes back to the VPN pools via the server and *no* route to the client's
  link, so a packet from the client reaches the target only through the tunnel.

Addresses come from 198.18.0.0/15 and 2001:2::/48 (benchmarking ranges) only.

ocserv 1.1.6 authentication outcomes (observed in this lab, XML flow: init POST to
``/``, then auth-reply POSTs to ``/auth`` on one keep-alive TLS connection):

- username, then the right password: ``HTTP/1.1 200 OK`` + ``type="complete"`` body +
  ``Set-Cookie: webvpn=<44 chars>``.
- wrong password (or unknown user): *not* an immediate 401. The first two wrong
  passwords get ``HTTP/1.1 200 OK`` with an ``auth-request`` whose message is
  ``Login failed.\\nPlease enter your password.`` and a password-only form (same
  ``webvpncontext``); the third gets ``HTTP/1.1 401 Authentication failed`` with
  ``Content-Length: 0``, then a TLS ``access_denied`` alert and the connection closes.
- locked account (``ocpasswd -l``): exactly the same as a wrong password (the plain
  backend just fails the hash compare; log: ``plain-auth: error authenticating user``).
- username and password together in the first auth-reply: ocserv 1.1.6 only takes the
  username and answers with the password form ("Please enter your password.").
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = [
    "Lab",
    "LabCommandError",
    "LabError",
    "OcservOptions",
    "netns_unavailable_reason",
    "openssl_spki_pin",
    "sweep_stale_labs",
]

T = TypeVar("T")

TOOLS = ("ip", "ss", "ocserv", "ocpasswd", "occtl", "certtool", "openssl", "iperf3")
WORKDIR_PREFIX = "sepconnect-lab-"
STATE_FILE = "lab-state.json"
KEEP_ENV = "SEPCONNECT_KEEP_LAB"
# `ip netns exec NS` bind-mounts NETNS_ETC/NS/<file> over /etc/<file> in the command's
# own mount namespace: the client namespace gets a private resolv.conf, so a client's
# DNS changes (sepconnect's resolv.conf backend, a vpnc-script) never reach the host's.
NETNS_ETC = "/etc/netns"
CLIENT_RESOLV_CONF = "# the lab client's own resolver\nnameserver 198.18.1.53\n"
_NO_DAD = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")


class LabError(RuntimeError):
    """The lab could not be built or a lab service misbehaved."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run by the lab failed; the message carries its stderr."""

    def __str__(self) -> str:
        err = self.stderr.decode(errors="replace").strip() if self.stderr else ""
        return f"{super().__str__()}\nstderr: {err[-2000:]}" if err else super().__str__()


@dataclass(frozen=True)
class OcservOptions:
    """The ocserv knobs tests need; the lab writes ocserv.conf from them."""

    # split-include routes pushed to clients; () or ("default",) = full tunnel
    routes: tuple[str, ...] = ("198.18.2.0/24", "2001:2:0:2::/64")
    no_routes: tuple[str, ...] = ()  # split-exclude
    ipv6: bool = True  # False: no IPv6 pool, and IPv6 routes/no-routes are left out
    dtls: bool = False  # udp-port set (DTLS) or not
    dpd: int = 90
    keepalive: int = 32400
    mtu: int | None = None
    cookie_timeout: int = 300
    rekey_time: int = 172800
    rekey_method: str = "ssl"
    groups: tuple[str, ...] = ()  # select-group entries; user "test" is in all of them
    dns: tuple[str, ...] = ("198.18.2.53",)
    # certtool --key-type of the server certificate's key: ecdsa, rsa, rsa-pss, ed25519
    # (read when the lab starts; restart_ocserv keeps the certificate)
    server_key_type: str = "ecdsa"
    # ocserv's `auth` methods, all required ("plain": the lab's password file; "certificate":
    # a client certificate from the lab's CA, see Lab.make_client_cert), and `enable-auth`
    # methods, any one of which is enough on its own
    auth: tuple[str, ...] = ("plain",)
    enable_auth: tuple[str, ...] = ()
    # with "certificate": the user's groups are the certificate's OUs (cert-group-oid);
    # with "plain" too, ocserv then wants the password file's group among them
    cert_groups: bool = False
    # ocserv's -d (stderr log level): 3 debug; 4 adds each HTTP header it reads (the
    # cookie censored) and the login's POST bodies (with the lab's passwords)
    debug: int = 3
    # raw extra lines; a "key = value" line replaces the lab's own line for that key,
    # except for the keys that may repeat (route, dns, ...), which are added to.
    extra: tuple[str, ...] = ()


CERT_UID_OID = "0.9.2342.19200300.100.1.1"
CERT_OU_OID = "2.5.4.11"

_REPEATABLE_KEYS = frozenset(
    {"route", "no-route", "dns", "nbns", "split-dns", "select-group", "custom-header"}
    | {"iroute", "included-http-headers", "server-cert", "server-key"}
)


def _is_ipv6(value: str) -> bool:
    return ":" in value


def ocserv_config(options: OcservOptions, workdir: str) -> str:
    """ocserv.conf text for ``options``, with every path inside ``workdir``."""
    w = Path(workdir)
    methods = {"plain": f'"plain[passwd={w / "passwd"}]"', "certificate": '"certificate"'}
    lines: list[tuple[str, str]] = [
        *(("auth", methods[m]) for m in options.auth),
        *(("enable-auth", methods[m]) for m in options.enable_auth),
        ("listen-host", Lab.server_ip),
        ("tcp-port", str(Lab.port)),
        ("run-as-user", "nobody"),
        ("run-as-group", "nogroup"),
        ("chroot-dir", str(w / "chroot")),
        ("socket-file", "ocserv.sock"),  # relative to chroot-dir
        ("occtl-socket-file", str(w / "occtl.sock")),
        ("use-occtl", "true"),
        ("pid-file", str(w / "ocserv.pid")),
        ("server-cert", str(w / "server-cert.pem")),
        ("server-key", str(w / "server-key.pem")),
        ("ca-cert", str(w / "ca.pem")),
        ("isolate-workers", "true"),  # seccomp works here
        ("max-clients", "64"),
        ("max-same-clients", "0"),  # unlimited
        ("rate-limit-ms", "0"),
        ("max-ban-score", "0"),  # tests fail logins on purpose; never ban
        ("min-reauth-time", "0"),  # no wait before retrying after a failed login
        ("auth-timeout", "60"),
        ("server-stats-reset-time", "604800"),
        ("keepalive", str(options.keepalive)),
        ("dpd", str(options.dpd)),
        ("mobile-dpd", str(options.dpd)),
        ("switch-to-tcp-timeout", "25"),
        ("try-mtu-discovery", "false"),
        ("tls-priorities", '"NORMAL:%SERVER_PRECEDENCE:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1"'),
        ("cookie-timeout", str(options.cookie_timeout)),
        ("deny-roaming", "false"),
        ("rekey-time", str(options.rekey_time)),
        ("rekey-method", options.rekey_method),
        ("log-level", str(options.debug)),  # as -d (OcservOptions.debug)
        ("device", "vpns"),
        ("predictable-ips", "true"),  # a user keeps its address across sessions
        ("ping-leases", "false"),
        ("ipv4-network", Lab.pool4),
        ("cisco-client-compat", "true"),
        ("dtls-legacy", "true"),
        ("client-bypass-protocol", "false"),
    ]
    if "certificate" in options.auth + options.enable_auth:
        lines.append(("cert-user-oid", CERT_UID_OID))  # the user name: the certificate's UID
        if options.cert_groups:
            lines.append(("cert-group-oid", CERT_OU_OID))  # its groups: the OUs
    if options.ipv6:
        lines += [("ipv6-network", Lab.pool6), ("ipv6-subnet-prefix", "128")]
    if options.dtls:
        lines.append(("udp-port", str(Lab.port)))
    if options.mtu is not None:
        lines.append(("mtu", str(options.mtu)))
    lines += [("dns", d) for d in options.dns if options.ipv6 or not _is_ipv6(d)]
    lines += [("route", r) for r in options.routes if options.ipv6 or not _is_ipv6(r)]
    lines += [("no-route", r) for r in options.no_routes if options.ipv6 or not _is_ipv6(r)]
    if options.groups:
        lines += [("select-group", g) for g in options.groups]
        lines.append(("auto-select-group", "false"))
    overridden = {
        key
        for key in (line.partition("=")[0].strip() for line in options.extra)
        if key and key not in _REPEATABLE_KEYS
    }
    text = [f"{k} = {v}" for k, v in lines if k not in overridden]
    return "\n".join(["# generated by tests/lab.py", *text, *options.extra, ""])


# --------------------------------------------------------------------------- processes


def _run(
    argv: list[str],
    *,
    timeout: float = 30,
    check: bool = True,
    input: bytes | None = None,  # mirrors subprocess.run
) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run in a new session (no controlling tty); on timeout the whole
    process group is killed, not only the direct child."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    with proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            _signal_group(proc, signal.SIGKILL)
            proc.communicate()
            raise
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise LabCommandError(proc.returncode, argv, out, err)
    return result


# The reference for ``--servercert pin-sha256:`` (as openconnect's documentation gives it):
# the hash of the certificate's own SubjectPublicKeyInfo, as openssl writes it back.
OPENSSL_PIN_PIPELINE = (
    "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der"
    " | openssl dgst -sha256 -binary | base64"
)


def openssl_spki_pin(cert_pem: bytes) -> str:
    """``pin-sha256:<base64>`` of a PEM certificate, computed by the openssl CLI."""
    out = _run(["bash", "-c", f"set -o pipefail; {OPENSSL_PIN_PIPELINE}"], input=cert_pem)
    return "pin-sha256:" + out.stdout.decode().strip()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of each of its threads, recursively); a
    process that exits meanwhile is skipped."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            out.append(int(child))
            out.extend(descendants(int(child)))
    return out


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the process group led by ``proc`` (started with start_new_session), but
    only while ``proc`` is unreaped, so its pid/pgid cannot have been reused."""
    if proc.returncode is None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the group, wait ``grace`` seconds, then SIGKILL it; always reap and close."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        # the leader is still unreaped here, so the group id is still ours
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def _process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22, starttime


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs in ``ns``: by construction only processes the lab or
    its tests started (nobody else knows the throwaway namespace)."""
    res = _run(["ip", "netns", "pids", ns], check=False, timeout=10)
    pids = [int(p) for p in res.stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
        time.sleep(0.01)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _delete_namespace(ns: str) -> None:
    if Path("/run/netns", ns).exists():
        _kill_namespace_processes(ns)
        _run(["ip", "netns", "delete", ns], timeout=10)
    shutil.rmtree(Path(NETNS_ETC, ns), ignore_errors=True)


# --------------------------------------------------------------------------- registry

_live_labs: dict[int, Lab] = {}
_registry_lock = threading.Lock()
_hooks_installed = False


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _install_cleanup_hooks() -> None:
    """atexit closes labs still open; SIGTERM/SIGHUP (if nobody handles them) become
    KeyboardInterrupt, so ``with Lab()`` blocks and fixtures unwind and clean up."""
    global _hooks_installed
    with _registry_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
    atexit.register(_close_all_labs)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _raise_interrupt)


def _close_all_labs() -> None:
    for lab in list(_live_labs.values()):
        try:
            lab.close()
        except Exception as exc:  # last resort at exit
            print(f"sepconnect lab: cleanup of {lab.name} failed: {exc}")


def sweep_stale_labs() -> list[str]:
    """Remove labs whose owning process died without cleaning up (e.g. SIGKILL).

    Only labs recorded by this module (a state file in the lab's workdir) whose owner
    process is gone are touched. Returns the names of the labs removed.
    """
    removed = []
    for state_path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*/{STATE_FILE}"):
        try:
            state = json.loads(state_path.read_text())
            owner, started = int(state["owner_pid"]), str(state["owner_start"])
            namespaces = [str(ns) for ns in state["namespaces"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _process_start_time(owner) == started:
            continue  # owner alive: not ours to touch
        for ns in namespaces:
            with contextlib.suppress(LabCommandError, subprocess.TimeoutExpired):
                _delete_namespace(ns)
        shutil.rmtree(state_path.parent, ignore_errors=True)
        removed.append(state_path.parent.name)
    return removed


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 'ip' not found"
    probe = f"sc-{secrets.token_hex(3)}-probe"
    res = _run(["ip", "netns", "add", probe], check=False, timeout=10)
    if Path("/run/netns", probe).exists():  # even after a partial failure
        _run(["ip", "netns", "delete", probe], check=False, timeout=10)
    if res.returncode != 0:
        return f"'ip netns add' fails here: {res.stderr.decode(errors='replace').strip()}"
    return None


# --------------------------------------------------------------------------- the lab

_VPNC_SCRIPT = r"""#!/bin/sh
# Minimal vpnc-script for the lab: sets the tun's addresses, MTU and routes in the
# caller's namespace and never touches DNS (Debian's vpnc-script would rewrite the
# shared /etc/resolv.conf). Split-excludes are ignored (the gateway is on-link).
# All state lives on the tun, so "disconnect" has nothing to undo.
[ "$reason" = connect ] || exit 0
set -e
ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1280}"
[ -z "$INTERNAL_IP4_ADDRESS" ] || ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
[ -z "$INTERNAL_IP6_NETMASK" ] || ip -6 addr add "$INTERNAL_IP6_NETMASK" dev "$TUNDEV" nodad
if [ -z "$CISCO_SPLIT_INC$CISCO_IPV6_SPLIT_INC" ]; then
  ip route replace 0.0.0.0/1 dev "$TUNDEV"
  ip route replace 128.0.0.0/1 dev "$TUNDEV"
  [ -z "$INTERNAL_IP6_NETMASK" ] || ip -6 route replace ::/1 dev "$TUNDEV"
  [ -z "$INTERNAL_IP6_NETMASK" ] || ip -6 route replace 8000::/1 dev "$TUNDEV"
fi
i=0
while [ "$i" -lt "${CISCO_SPLIT_INC:-0}" ]; do
  eval "net=\$CISCO_SPLIT_INC_${i}_ADDR/\$CISCO_SPLIT_INC_${i}_MASKLEN"
  ip route replace "$net" dev "$TUNDEV"
  i=$((i + 1))
done
i=0
while [ "$i" -lt "${CISCO_IPV6_SPLIT_INC:-0}" ]; do
  eval "net=\$CISCO_IPV6_SPLIT_INC_${i}_ADDR/\$CISCO_IPV6_SPLIT_INC_${i}_MASKLEN"
  ip -6 route replace "$net" dev "$TUNDEV"
  i=$((i + 1))
done
"""

_CA_TEMPLATE = """cn = "sepconnect lab CA"
organization = "sepconnect lab"
serial = 1
expiration_days = 2
ca
cert_signing_key
crl_signing_key
"""

_SERVER_TEMPLATE = """cn = "{hostname}"
organization = "sepconnect lab"
serial = 2
expiration_days = 2
dns_name = "{hostname}"
ip_address = "{ip}"
signing_key
{encryption_key}
tls_www_server
"""
_CLIENT_TEMPLATE = """cn = "{uid}"
uid = "{uid}"
{units}
organization = "sepconnect lab"
serial = {serial}
expiration_days = 2
signing_key
tls_www_client
"""
# certtool options for the server key, by OcservOptions.server_key_type
_SERVER_KEY_ARGS = {
    "ecdsa": ("--key-type=ecdsa",),
    "rsa": ("--key-type=rsa", "--bits=2048"),
    "rsa-pss": ("--key-type=rsa-pss", "--bits=2048"),
    "ed25519": ("--key-type=ed25519",),
}


class Lab:
    """Client, server (ocserv) and target namespaces; ``with Lab(options) as lab:``
    builds everything and tears all of it down on exit, even on errors."""

    server_ip: ClassVar[str] = "198.18.1.1"
    server_ip6: ClassVar[str] = "2001:2:0:1::1"
    client_ip: ClassVar[str] = "198.18.1.2"
    client_ip6: ClassVar[str] = "2001:2:0:1::2"
    server_target_ip: ClassVar[str] = "198.18.2.1"  # server's address on the target link
    server_target_ip6: ClassVar[str] = "2001:2:0:2::1"
    target_ip: ClassVar[str] = "198.18.2.2"
    target_ip6: ClassVar[str] = "2001:2:0:2::2"
    pool4: ClassVar[str] = "198.18.100.0/24"
    pool6: ClassVar[str] = "2001:2:0:100::/64"
    vpn_server_ip: ClassVar[str] = "198.18.100.1"  # server end of every ocserv tun
    vpn_server_ip6: ClassVar[str] = "2001:2:0:100::1"
    hostname: ClassVar[str] = "vpn.lab.test"  # DNS SAN of the server cert
    port: ClassVar[int] = 443
    url: ClassVar[str] = "https://198.18.1.1/"
    client_uplink: ClassVar[str] = "to-srv"  # client's interface towards the server
    iperf_port: ClassVar[int] = 5201

    def __init__(self, options: OcservOptions | None = None, *, keep: bool | None = None):
        self.options = options if options is not None else OcservOptions()
        self.keep = os.environ.get(KEEP_ENV) == "1" if keep is None else keep
        self.name = f"sc-{secrets.token_hex(3)}"
        self.client_ns = f"{self.name}-cli"
        self.server_ns = f"{self.name}-srv"
        self.target_ns = f"{self.name}-tgt"
        self.users: dict[str, str] = {
            "test": "test123",
            "locked": "locked123",
            "sp@c": "!@#$%^&*()<>",
        }
        self.workdir = ""
        self.ca_file = ""
        self.vpnc_script = ""
        self.server_cert_pin = ""
        self.server_cert_sha256 = ""
        self._client_serial = 0
        self._ocserv: subprocess.Popen[bytes] | None = None
        self._iperf: subprocess.Popen[bytes] | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._started = False
        self._closed = False
        self.setup_seconds = 0.0
        self.teardown_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        if self._started:
            raise LabError("a Lab can be started only once")
        self._started = True
        t0 = time.monotonic()
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise LabError(f"lab tools not installed: {', '.join(missing)}")
        _install_cleanup_hooks()
        sweep_stale_labs()
        with _registry_lock:
            _live_labs[id(self)] = self
        try:
            self.workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{self.name}-")
            os.chmod(self.workdir, 0o755)  # unprivileged clients read ca.pem
            self._write_state()
            self._build_network()
            self._make_certificates()
            self._make_users()
            vpnc = Path(self.workdir, "vpnc-script")
            vpnc.write_text(_VPNC_SCRIPT)
            vpnc.chmod(0o755)
            self.vpnc_script = str(vpnc)
            self._write_ocserv_config()
            self._start_ocserv()
            self._start_iperf()
            self._wait_links_up()
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - t0

    def close(self) -> None:
        """Tear everything down (idempotent). Every step runs even if one fails; the
        first failure is re-raised at the end."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        t0 = time.monotonic()
        errors: list[BaseException] = []

        def step(action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:  # collected, re-raised below
                errors.append(exc)

        # tests' processes first (openconnect can still say goodbye to ocserv); all get
        # SIGTERM at once, so their grace periods overlap
        for proc in self._procs:
            step(functools.partial(_signal_group, proc, signal.SIGTERM))
        for proc in reversed(self._procs):
            step(functools.partial(_stop, proc, grace=3))
        if self._ocserv is not None:
            step(lambda: self._stop_ocserv())
        for ns in reversed(self._namespaces):
            step(functools.partial(_delete_namespace, ns))
        if self.workdir:
            step(lambda: Path(self.workdir, STATE_FILE).unlink(missing_ok=True))
            if not self.keep:
                step(lambda: shutil.rmtree(self.workdir))
        with _registry_lock:
            _live_labs.pop(id(self), None)
        self.teardown_seconds = time.monotonic() - t0
        if errors:
            raise errors[0]

    def _write_state(self) -> None:
        state = {
            "owner_pid": os.getpid(),
            "owner_start": _process_start_time(os.getpid()),
            "namespaces": [self.client_ns, self.server_ns, self.target_ns],
        }
        Path(self.workdir, STATE_FILE).write_text(json.dumps(state))

    # ------------------------------------------------------------------ building

    def _ip_batch(self, ns: str, commands: str) -> None:
        _run(["ip", "-n", ns, "-batch", "-"], input=commands.encode(), timeout=10)

    def _build_network(self) -> None:
        for ns in (self.client_ns, self.server_ns, self.target_ns):
            _run(["ip", "netns", "add", ns], timeout=10)
            self._namespaces.append(ns)
            etc = Path(NETNS_ETC, ns)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(CLIENT_RESOLV_CONF)
            # No IPv6 duplicate address detection on links created from now on: a
            # tentative link-local address would stall neighbour discovery for ~1 s.
            # (/proc/sys/net is per network namespace: this changes only ``ns``.)
            self.run_in(ns, "sysctl", "-q", "-w", *_NO_DAD)
        c, s, t = self.client_ns, self.server_ns, self.target_ns
        up = self.client_uplink
        # veth pairs are created inside the server namespace, one end moved straight
        # into the peer namespace: nothing appears in the host namespace.
        self._ip_batch(
            s,
            f"""link set lo up
link add to-cli type veth peer name {up} netns {c}
link add to-tgt type veth peer name to-srv netns {t}
addr add {self.server_ip}/24 dev to-cli
addr add {self.server_ip6}/64 dev to-cli nodad
addr add {self.server_target_ip}/24 dev to-tgt
addr add {self.server_target_ip6}/64 dev to-tgt nodad
link set to-cli up
link set to-tgt up
""",
        )
        self._ip_batch(
            c,
            f"""link set lo up
addr add {self.client_ip}/24 dev {up}
addr add {self.client_ip6}/64 dev {up} nodad
link set {up} up
route add default via {self.server_ip}
route add ::/0 via {self.server_ip6}
""",
        )
        self._ip_batch(
            t,
            f"""link set lo up
addr add {self.target_ip}/24 dev to-srv
addr add {self.target_ip6}/64 dev to-srv nodad
link set to-srv up
route add {self.pool4} via {self.server_target_ip}
route add {self.pool6} via {self.server_target_ip6}
""",
        )
        self.run_in(
            s, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"
        )

    def _wait_links_up(self) -> None:
        """Wait until every veth is operationally UP. The kernel's linkwatch reports the
        carrier of the second-opened end up to ~1 s late; until then IPv6 neighbour
        discovery on that link stalls."""

        def all_up() -> bool | None:
            for ns in self._namespaces:
                for link in self.ip_json(ns, "link", "show", "type", "veth"):
                    if link.get("operstate") != "UP":
                        return None
            return True

        _wait_for("the lab's links to come up", all_up, timeout=10)

    def _make_certificates(self) -> None:
        w = Path(self.workdir)
        (w / "ca.tmpl").write_text(_CA_TEMPLATE)
        key_type = self.options.server_key_type
        if key_type not in _SERVER_KEY_ARGS:
            raise LabError(f"unknown server key type {key_type!r}")
        # an RSA-PSS, ECDSA or EdDSA key only signs; "encryption_key" was always there for
        # ECDSA (the default lab), so it stays there
        encryption = "" if key_type in ("rsa-pss", "ed25519") else "encryption_key"
        (w / "server.tmpl").write_text(
            _SERVER_TEMPLATE.format(
                hostname=self.hostname, ip=self.server_ip, encryption_key=encryption
            )
        )
        _run(
            ["certtool", "--generate-privkey", "--key-type=ecdsa", f"--outfile={w / 'ca-key.pem'}"]
        )
        _run(
            ["certtool", "--generate-privkey", *_SERVER_KEY_ARGS[key_type]]
            + [f"--outfile={w / 'server-key.pem'}"]
        )
        _run(
            ["certtool", "--generate-self-signed", f"--load-privkey={w / 'ca-key.pem'}"]
            + [f"--template={w / 'ca.tmpl'}", f"--outfile={w / 'ca.pem'}"]
        )
        _run(
            ["certtool", "--generate-certificate", f"--load-privkey={w / 'server-key.pem'}"]
            + [f"--load-ca-certificate={w / 'ca.pem'}", f"--load-ca-privkey={w / 'ca-key.pem'}"]
            + [f"--template={w / 'server.tmpl'}", f"--outfile={w / 'server-cert.pem'}"]
        )
        self.ca_file = str(w / "ca.pem")
        cert_pem = (w / "server-cert.pem").read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.server_cert_pin = openssl_spki_pin(cert_pem)
        self.server_cert_sha256 = (
            "sha256:" + hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        )

    def make_client_cert(
        self, name: str, uid: str = "test", groups: tuple[str, ...] = (), key_type: str = "ecdsa"
    ) -> tuple[str, str]:
        """A client certificate from the lab's CA (which ocserv trusts, ``ca-cert``) for user
        ``uid`` with ``groups`` as its OUs, and its key (certtool's PEM: SEC1 for EC, PKCS#1
        for RSA, as ``server_key_type`` names them); returns (cert path, key path), both
        root-owned in the lab's directory, the key of mode 0600."""
        if key_type not in _SERVER_KEY_ARGS:
            raise LabError(f"unknown key type {key_type!r}")
        w = Path(self.workdir)
        key, cert, template = w / f"{name}-key.pem", w / f"{name}-cert.pem", w / f"{name}.tmpl"
        self._client_serial += 1
        units = "\n".join(f'unit = "{g}"' for g in groups)
        template.write_text(
            _CLIENT_TEMPLATE.format(uid=uid, units=units, serial=100 + self._client_serial)
        )
        _run(["certtool", "--generate-privkey", *_SERVER_KEY_ARGS[key_type], f"--outfile={key}"])
        key.chmod(0o600)
        _run(
            ["certtool", "--generate-certificate", f"--load-privkey={key}"]
            + [f"--load-ca-certificate={w / 'ca.pem'}", f"--load-ca-privkey={w / 'ca-key.pem'}"]
            + [f"--template={template}", f"--outfile={cert}"]
        )
        return str(cert), str(key)

    def _make_users(self) -> None:
        for user, password in self.users.items():
            groups = self.options.groups if user == "test" else ()
            self.add_user(user, password, groups)
        _run(["ocpasswd", "-c", str(Path(self.workdir, "passwd")), "-l", "locked"])

    def add_user(self, user: str, password: str, groups: tuple[str, ...] = ()) -> None:
        """Add (or update) a user in ocserv's password file; takes effect at once."""
        argv = ["ocpasswd", "-c", str(Path(self.workdir, "passwd"))]
        if groups:
            argv += ["-g", ",".join(groups)]
        # new session: no controlling tty, so ocpasswd reads the password from stdin
        _run([*argv, user], input=f"{password}\n{password}\n".encode())
        self.users[user] = password

    def _write_ocserv_config(self) -> None:
        Path(self.workdir, "chroot").mkdir(exist_ok=True)
        Path(self.workdir, "ocserv.conf").write_text(ocserv_config(self.options, self.workdir))

    def _start_ocserv(self) -> None:
        conf = str(Path(self.workdir, "ocserv.conf"))
        with open(Path(self.workdir, "ocserv.log"), "ab") as log:
            # -f: stay in the foreground (we hold the main pid); -d: log to stderr
            self._ocserv = self._spawn(
                self.server_ns,
                "ocserv",
                "-f",
                "-d",
                str(self.options.debug),
                "-c",
                conf,
                stdout=log,
                stderr=log,
            )
        occtl_sock = Path(self.workdir, "occtl.sock")
        listen = f"{self.server_ip}:{self.port}"

        def ready() -> bool | None:
            if self._ocserv is None or self._ocserv.poll() is not None:
                raise LabError(f"ocserv exited during startup:\n{self.ocserv_log()[-3000:]}")
            if not occtl_sock.exists():  # created after sec-mod is up
                return None
            out = self.run_in(self.server_ns, "ss", "-Hltn", timeout=5).stdout.decode()
            return True if listen in out else None

        _wait_for("ocserv to listen", ready, timeout=10)

    def _stop_ocserv(self) -> None:
        if self._ocserv is not None:
            proc, self._ocserv = self._ocserv, None
            # ocserv-main, sec-mod and workers share the process group, so all get
            # SIGTERM. ocserv-main then polls its children every 500 ms before it
            # exits (~1 s); nothing it does then matters here, so SIGKILL sooner.
            _stop(proc, grace=0.3)

    def restart_ocserv(self, options: OcservOptions | None = None, *, crash: bool = False) -> None:
        """Stop ocserv (all sessions are lost) and start it again, optionally with new
        options. Clients see a refused/closed connection meanwhile. A graceful stop
        sends every client a CSTP DISCONNECT first (indistinguishable, on the wire,
        from an administrator's ``occtl disconnect``); ``crash=True`` SIGKILLs the
        whole ocserv process group instead, as a crash or power loss would."""
        if crash and self._ocserv is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._ocserv.pid, signal.SIGKILL)
            self._ocserv.wait()
        self._stop_ocserv()
        Path(self.workdir, "occtl.sock").unlink(missing_ok=True)
        if options is not None:
            self.options = options
            self._write_ocserv_config()
        self._start_ocserv()

    def _start_iperf(self) -> None:
        # not daemonized: we hold its pid. Listens on [::] (v4 and v6) in the target ns.
        # --idle-timeout: a test whose client vanished mid-run (its tunnel went away)
        # leaves the server "busy" for minutes otherwise.
        self._iperf = self.popen_in(
            self.target_ns,
            "iperf3",
            "-s",
            "-p",
            str(self.iperf_port),
            "--idle-timeout",
            "3",
            "--rcv-timeout",
            "3000",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port = f":{self.iperf_port}"

        def ready() -> bool | None:
            if self._iperf is None or self._iperf.poll() is not None:
                raise LabError("iperf3 server exited during startup")
            out = self.run_in(self.target_ns, "ss", "-Hltn", timeout=5).stdout.decode()
            return True if port in out else None

        _wait_for("iperf3 to listen", ready, timeout=10)

    # ------------------------------------------------------------------ helpers

    def _spawn(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw["start_new_session"] = True  # own process group, killed as a whole
        # `ip netns exec` execs the command: the pid we hold is the command's own
        proc: subprocess.Popen[bytes] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        return proc

    def run_in(
        self,
        ns: str,
        *argv: str,
        timeout: float = 30,
        check: bool = True,
        input: bytes | None = None,  # mirrors subprocess.run
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside namespace ``ns`` and capture stdout/stderr. A non-zero
        exit raises LabCommandError (with stderr) when ``check``."""
        return _run(["ip", "netns", "exec", ns, *argv], timeout=timeout, check=check, input=input)

    def iperf(
        self,
        *args: str,
        target: str | None = None,
        seconds: float = 2,
        prefix: tuple[str, ...] = (),
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], float]:
        """One ``iperf3 -c`` run from the client namespace to ``target`` (default: the
        target's IPv4 address): its JSON report and how long it took, not counting the
        attempts a server still winding down an earlier test turned away ("busy"). An
        iperf3 error raises AssertionError with iperf3's message; a run that overruns
        ``timeout`` (default ``seconds`` + 30) raises subprocess.TimeoutExpired."""
        for _ in range(10):
            started = time.monotonic()
            out = self.run_in(
                self.client_ns, *prefix, "iperf3", "-c", target or self.target_ip,
                "-t", f"{seconds:g}", "-J", "--connect-timeout", "3000", *args, check=False,
                timeout=seconds + 30 if timeout is None else timeout,
            )  # fmt: skip
            result: dict[str, Any] = json.loads(out.stdout or b"{}")
            if "busy" not in result.get("error", ""):
                break
            time.sleep(1)  # the server still winds down an earlier test (--idle-timeout)
        if "error" in result or "end" not in result:
            error = result.get("error", out.stderr.decode(errors="replace")[-300:])
            raise AssertionError(f"iperf3 {' '.join(args)} failed: {error}")
        return result, time.monotonic() - started

    def popen_in(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``ns`` in its own process group (stdin defaults to
        /dev/null). Tracked: at teardown the group gets SIGTERM, then SIGKILL."""
        if ns not in self._namespaces:
            raise LabError(f"{ns!r} is not a namespace of this lab")
        proc = self._spawn(ns, *argv, **kw)
        self._procs.append(proc)
        return proc

    def ocserv_log(self) -> str:
        try:
            return Path(self.workdir, "ocserv.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def ocserv_pid(self) -> int | None:
        return self._ocserv.pid if self._ocserv is not None else None

    @property
    def iperf_pid(self) -> int | None:
        """The ``iperf3 -s`` in the target namespace."""
        return self._iperf.pid if self._iperf is not None else None

    def occtl(self, *args: str) -> str:
        """occtl against this lab's ocserv, e.g. ``lab.occtl("-j", "show", "users")``."""
        sock = str(Path(self.workdir, "occtl.sock"))
        return self.run_in(self.server_ns, "occtl", "-s", sock, *args, timeout=10).stdout.decode()

    def ip_json(self, ns: str, *args: str) -> Any:
        """``ip -j ARGS`` in ``ns``, parsed (``[]`` for empty output)."""
        out = _run(["ip", "-n", ns, "-j", *args], timeout=10).stdout
        return json.loads(out) if out.strip() else []

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 10) -> T:
        """Poll ``probe`` every 20 ms until it returns something other than None."""
        return _wait_for(what, probe, timeout)

    def openconnect(
        self,
        user: str = "test",
        *args: str,
        password: str | None = None,
        prefix: tuple[str, ...] = (),
        **kw: Any,
    ) -> subprocess.Popen[bytes]:
        """Start the reference client (openconnect) in the client ns with the lab's
        vpnc-script and pinned server cert; the password is written to its stdin.
        ``prefix``: a command that execs openconnect, e.g. ``("taskset", "-c", "0")``."""
        if password is None:
            password = self.users[user]
        proc = self.popen_in(
            self.client_ns,
            *prefix,
            "openconnect",
            "--user",
            user,
            "--passwd-on-stdin",
            "--non-inter",
            "--servercert",
            self.server_cert_pin,
            "--script",
            self.vpnc_script,
            *args,
            self.url,
            stdin=subprocess.PIPE,
            **kw,
        )
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(f"{password}\n".encode())
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        proc.stdin = None  # so that communicate() works on the returned process
        return proc

    def client_tun(self) -> dict[str, Any] | None:
        """The client ns's tun device (``ip -j addr`` entry) once it has an address from
        the VPN pool, else None."""
        pool = ipaddress.ip_network(self.pool4)
        for link in self.ip_json(self.client_ns, "addr", "show"):
            if link.get("link_type") == "none" and any(
                a.get("family") == "inet" and ipaddress.ip_address(a["local"]) in pool
                for a in link.get("addr_info", [])
            ):
                return dict(link)
        return None
