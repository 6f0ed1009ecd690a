"""Tunnel setup: the ``CONNECT /CSCOSSLC/tunnel`` request and its answer.

:func:`build_connect_request` writes the request exactly as PROTOCOL.md §2.1
lists it (openconnect's header set and order). :func:`parse_connect_response_untrusted`
turns ocserv's ``200 CONNECTED`` headers (PROTOCOL.md §2.2; ocserv 1.1.6
``worker-vpn.c:connect_handler``) into a validated :class:`TunnelConfig`.

Validation policy: every X-CSTP-*/X-DTLS-* value we interpret is checked, and
a value we cannot accept raises :class:`ProtocolError` naming the header (the
tunnel configuration goes to a root helper, so "best effort" parsing of
hostile input is not an option). Unknown headers are ignored. Route
policy (which prefixes may be installed) is the helper's business; here
routes only have to parse. Assigned addresses and DNS servers must not be
loopback, multicast, unspecified or link-local.

MTU and IPv6: Linux disables IPv6 on an interface whose MTU is below 1280, so
when X-CSTP-MTU < 1280 we withdraw the IPv6 part of the configuration (address,
IPv6 routes, IPv6 DNS servers) and say so in :attr:`TunnelConfig.notes`, as
ocserv itself does when it computes such an MTU. If that leaves no address at
all, the connection fails with "No IP address received".

Limits: at most :data:`MAX_HEADERS` response headers, X-CSTP-*/X-DTLS-*
values of at most :data:`MAX_VALUE_LEN` characters, at most
:data:`MAX_ROUTES` routes per list (ipc/limits.py: what the helper installs);
DNS servers and domains are bounded by the header count, and the routing policy
(ipc/netconfig.py) keeps the first ``MAX_DNS`` and ``MAX_DOMAINS`` of them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Final
from urllib.parse import unquote

from sepconnect.ipc.limits import IPV6_MIN_MTU, MAX_BANNER, MAX_MTU, MAX_ROUTES, MIN_MTU
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.session_limits import CIPHER_LIST, CIPHER_NAME, LOCAL_HOSTNAME, printable
from sepconnect.worker.proto.auth import HttpRequest, format_host_header
from sepconnect.worker.proto.errors import CookieRejected, ProtocolError, ServerRefused
from sepconnect.worker.proto.http import HttpResponse
from sepconnect.worker.proto.identity import ClientIdentity

__all__ = [
    "CONNECT_PATH",
    "DTLS_OVERHEAD",
    "MAX_HEADERS",
    "MAX_MTU",
    "MAX_ROUTES",
    "MAX_VALUE_LEN",
    "MIN_MTU",
    "TunnelConfig",
    "build_connect_request",
    "compute_mtu",
    "parse_connect_response_untrusted",
]

CONNECT_PATH: Final = "/CSCOSSLC/tunnel"
#: openconnect's DTLS_OVERHEAD: type byte 1 + DTLS header 13 + SHA1 MAC 20 +
#: IV 32 + padding 16 (PROTOCOL.md §5.1).
DTLS_OVERHEAD: Final = 82
_UDP_HEADER: Final = 8

MAX_HEADERS: Final = 2048
MAX_VALUE_LEN: Final = 4096
_MAX_SECONDS: Final = 2**31 - 1

# Headers that carry secrets: never copied into cstp_options (which ends up in
# a script environment and logs). Cisco's Post-Auth-XML holds the session token.
_SECRET_HEADERS: Final = frozenset({"x-cstp-post-auth-xml"})

_DIGITS = re.compile(r"[0-9]{1,10}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){1,32}")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_HOSTNAME = re.compile(LOCAL_HOSTNAME)
_COOKIE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,4096}")
# Upper-case these words when restoring header-name capitalisation.
_ACRONYMS: Final = frozenset(
    {
        "x",
        "cstp",
        "dtls",
        "dtls12",
        "dns",
        "ip6",
        "mtu",
        "dpd",
        "nbns",
        "msie",
        "url",
        "id",
        "tcp",
        "xml",
    }
)

_SPECIAL_WORDS: Final = {"ciphersuite": "CipherSuite", "dyndns": "DynDNS"}

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class TunnelConfig:
    """Validated tunnel parameters from the server's CONNECT answer.

    Times are seconds; ``None`` means "not sent", "none" or 0 (disabled).
    *net* is the network configuration as the server gave it, before the routing
    policy (ipc/netconfig.py): ``routes`` are the split-includes (none: "route
    everything"), ``exclude`` the split-excludes, ``dns_default`` is
    X-CSTP-Tunnel-All-DNS, ``gateway`` the address we connected to and ``mtu``
    X-CSTP-MTU. *dtls_mtu* (legacy DTLS only) is reported separately,
    openconnect uses max(mtu, dtls_mtu) when DTLS carries the data.
    *session_timeout* is the lowest non-zero of X-CSTP-Session-Timeout,
    -Session-Timeout-Remaining and -Lease-Duration (as openconnect).
    Routes are in arrival order with host bits cleared.
    *cstp_options* holds every X-CSTP-* header (canonical capitalisation, in
    arrival order) except secret ones, for the vpnc-script environment.
    *dtls12* is True when the DTLS cipher came in X-DTLS12-CipherSuite.
    *notes* lists adjustments made while parsing (for logging).
    """

    net: NetworkConfig
    base_mtu: int | None
    dpd: int | None
    keepalive: int | None
    rekey_time: int | None
    rekey_method: str | None
    session_timeout: int | None
    server_name: str | None
    dtls_port: int | None
    dtls_app_id: bytes | None
    dtls_session_id: bytes | None
    dtls_cipher: str | None
    dtls_dpd: int | None
    dtls_keepalive: int | None
    dtls_rekey_time: int | None
    dtls_rekey_method: str | None
    dtls_mtu: int | None
    cstp_options: tuple[tuple[str, str], ...]
    dtls12: bool = False
    notes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"TunnelConfig(ipv4={self.net.ipv4}, ipv6={self.net.ipv6}, mtu={self.net.mtu}, "
            f"dns={[str(d) for d in self.net.dns]}, includes={len(self.net.routes)}, "
            f"excludes={len(self.net.exclude)}, dpd={self.dpd}, keepalive={self.keepalive}, "
            f"rekey={self.rekey_method}/{self.rekey_time}, dtls_port={self.dtls_port})"
        )


# ---------------------------------------------------------------------------
# Request


def compute_mtu(base_mtu: int, ipv6_peer: bool) -> int:
    """Tunnel MTU to request for a link MTU (PROTOCOL.md §5.1, openconnect).

    base (clamped to >= 1280) - DTLS overhead (82) - UDP (8) - IPv4 (20) or
    IPv6 (40) header; e.g. 1500 over IPv4 gives 1390.
    """
    base = max(base_mtu, IPV6_MIN_MTU)
    return base - DTLS_OVERHEAD - _UDP_HEADER - (40 if ipv6_peer else 20)


def build_connect_request(
    *,
    host: str,
    port: int,
    cookie: str,
    hostname: str,
    base_mtu: int,
    mtu: int,
    ipv6: bool = True,
    dtls_master_secret: bytes | None = None,
    dtls_ciphers: str | None = None,
    dtls12_ciphers: str | None = None,
    previous: TunnelConfig | None = None,
    identity: ClientIdentity = ClientIdentity(),  # noqa: B008 - frozen
) -> HttpRequest:
    """The CONNECT request, headers in openconnect's order (PROTOCOL.md §2.1).

    *hostname* is our local host name (ocserv keeps the first label).
    *mtu* 0 omits X-CSTP-MTU. *previous* (on reconnect) asks for the same
    addresses again. X-DTLS-* headers are sent only with *dtls_master_secret*
    (48 bytes); *dtls_ciphers* defaults to ``PSK-NEGOTIATE`` then;
    X-DTLS12-CipherSuite is sent when *dtls12_ciphers* is given. Raises
    ValueError on invalid arguments. The request always may reuse the auth
    connection (``new_connection=False``); the driver decides.
    """
    if not _COOKIE.fullmatch(cookie):
        raise ValueError("session cookie is empty, too long or has invalid characters")
    if not _HOSTNAME.fullmatch(hostname):
        raise ValueError(f"invalid local host name {hostname!r}")
    if not MIN_MTU <= base_mtu <= 65535:
        raise ValueError(f"base MTU {base_mtu} out of range")
    if mtu != 0 and not MIN_MTU <= mtu <= 65535:
        raise ValueError(f"MTU {mtu} out of range")
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    headers: list[tuple[str, str]] = [
        ("Host", format_host_header(host, port)),
        ("User-Agent", identity.user_agent),
        ("Cookie", f"webvpn={cookie}"),
        ("X-CSTP-Version", "1"),
        ("X-CSTP-Hostname", hostname),
        *identity.mobile_headers(),
        ("X-CSTP-Protocol", "Copyright (c) 2004 Cisco Systems, Inc."),
        ("X-CSTP-Base-MTU", str(base_mtu)),
    ]
    if mtu:
        headers.append(("X-CSTP-MTU", str(mtu)))
    headers.append(("X-CSTP-Address-Type", "IPv6,IPv4" if ipv6 else "IPv4"))
    if previous is not None and previous.net.ipv4 is not None:
        headers.append(("X-CSTP-Address", str(previous.net.ipv4.ip)))
    if ipv6:
        headers.append(("X-CSTP-Full-IPv6-Capability", "true"))
        if previous is not None and previous.net.ipv6 is not None:
            headers.append(("X-CSTP-Address", str(previous.net.ipv6.ip)))
    if dtls_master_secret is not None:
        if len(dtls_master_secret) != 48:
            raise ValueError("DTLS master secret must be 48 bytes")
        ciphers = dtls_ciphers or "PSK-NEGOTIATE"
        if not re.fullmatch(CIPHER_LIST, ciphers):
            raise ValueError(f"invalid DTLS cipher list {ciphers!r}")
        headers.append(("X-DTLS-Master-Secret", dtls_master_secret.hex().upper()))
        headers.append(("X-DTLS-CipherSuite", ciphers))
        if dtls12_ciphers:
            if not re.fullmatch(CIPHER_LIST, dtls12_ciphers):
                raise ValueError(f"invalid DTLS 1.2 cipher list {dtls12_ciphers!r}")
            headers.append(("X-DTLS12-CipherSuite", dtls12_ciphers))
    return HttpRequest("CONNECT", CONNECT_PATH, tuple(headers), b"", False)


# ---------------------------------------------------------------------------
# Response


def _canonical_word(word: str) -> str:
    if word in _ACRONYMS:
        return word.upper()
    return _SPECIAL_WORDS.get(word) or word.capitalize()


def _canonical_name(lower: str) -> str:
    """Restore the usual capitalisation of a lowercased X-CSTP-/X-DTLS- name."""
    return "-".join(_canonical_word(p) for p in lower.split("-"))


def _bad(name: str, value: str, why: str = "an invalid value") -> ProtocolError:
    shown = printable(value, 64)
    return ProtocolError(f"Server sent {_canonical_name(name)} with {why}: {shown!r}")


class _Headers:
    """X-CSTP-*/X-DTLS-* headers of one response, grouped by lowercase name."""

    def __init__(self, resp: HttpResponse) -> None:
        if len(resp.headers) > MAX_HEADERS:
            raise ProtocolError(f"Server sent more than {MAX_HEADERS} headers with the tunnel")
        self.values: dict[str, list[str]] = {}
        self.cstp_options: list[tuple[str, str]] = []
        for name, value in resp.headers:
            if not name.startswith(("x-cstp-", "x-dtls-", "x-dtls12-")):
                continue
            if len(value) > MAX_VALUE_LEN:
                raise ProtocolError(
                    f"Server sent {_canonical_name(name)} longer than {MAX_VALUE_LEN} characters"
                )
            value = value.strip()
            self.values.setdefault(name, []).append(value)
            if name.startswith("x-cstp-") and name not in _SECRET_HEADERS:
                self.cstp_options.append((_canonical_name(name), printable(value, MAX_VALUE_LEN)))

    def all(self, name: str) -> list[str]:
        return self.values.get(name, [])

    def one(self, name: str) -> str | None:
        vals = self.values.get(name)
        if not vals:
            return None
        if any(v != vals[0] for v in vals[1:]):
            raise ProtocolError(f"Server sent conflicting {_canonical_name(name)} headers")
        return vals[0]

    def number(self, name: str, lo: int, hi: int) -> int | None:
        value = self.one(name)
        if value is None:
            return None
        if not _DIGITS.fullmatch(value):
            raise _bad(name, value)
        number = int(value)
        if not lo <= number <= hi:
            raise _bad(name, value, f"a value outside {lo}..{hi}")
        return number

    def seconds(self, name: str, *, allow_none: bool = False) -> int | None:
        """Non-negative seconds; 0 (and ``none`` where allowed) -> None."""
        value = self.one(name)
        if value is not None and allow_none and value.lower() == "none":
            return None
        number = self.number(name, 0, _MAX_SECONDS)
        return number or None

    def flag(self, name: str) -> bool:
        value = self.one(name)
        if value is None:
            return False
        low = value.lower()
        if low not in ("true", "false"):
            raise _bad(name, value)
        return low == "true"

    def method(self, name: str) -> str | None:
        value = self.one(name)
        if value is None:
            return None
        # openconnect treats anything but ssl/new-tunnel as "none"
        return value if value in ("ssl", "new-tunnel") else "none"

    def hex_id(self, name: str, *, exact: int | None = None) -> bytes | None:
        value = self.one(name)
        if value is None:
            return None
        if not _HEX.fullmatch(value):
            raise _bad(name, value)
        raw = bytes.fromhex(value)
        if exact is not None and len(raw) != exact:
            raise _bad(name, value, f"a length other than {exact} bytes")
        return raw


def _check_host_address(name: str, value: str, addr: IPAddress) -> None:
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr.is_link_local:
        raise _bad(name, value, "an unusable address")
    if isinstance(addr, IPv4Address) and addr == IPv4Address("255.255.255.255"):
        raise _bad(name, value, "an unusable address")


def _ip(text: str) -> IPAddress:
    """Parse one address; no IPv6 zone ("%eth0") suffixes."""
    if "%" in text:
        raise ValueError("scoped address")
    return ipaddress.ip_address(text)


def _parse_addr(name: str, value: str) -> IPAddress:
    try:
        addr = _ip(value)
    except ValueError:
        raise _bad(name, value) from None
    _check_host_address(name, value, addr)
    return addr


def _dotted_prefix(mask: str) -> int | None:
    """Prefix length of a contiguous dotted IPv4 netmask, or None."""
    try:
        bits = int(IPv4Address(mask))
    except ValueError:
        return None
    inverted = ~bits & 0xFFFFFFFF
    if inverted & (inverted + 1):
        return None  # not of the form 1...10...0
    return 32 - inverted.bit_length()


def _ipv4_prefix(name: str, value: str) -> int:
    if _DIGITS.fullmatch(value) and int(value) <= 32:
        return int(value)
    prefix = _dotted_prefix(value)
    if prefix is None:
        raise _bad(name, value, "an invalid netmask")
    return prefix


def _ipv6_prefix(name: str, value: str) -> int:
    if not _DIGITS.fullmatch(value) or int(value) > 128:
        raise _bad(name, value, "an invalid prefix length")
    return int(value)


def _parse_route(name: str, value: str) -> IPNetwork:
    """``a.b.c.d``, ``a.b.c.d/N``, ``a.b.c.d/m.m.m.m``, ``v6``, ``v6/N``; host bits cleared."""
    addr_text, slash, mask_text = value.partition("/")
    try:
        addr = _ip(addr_text)
    except ValueError:
        raise _bad(name, value, "an invalid route") from None
    if isinstance(addr, IPv4Address):
        prefix = _ipv4_prefix(name, mask_text) if slash else 32
        return IPv4Network((addr, prefix), strict=False)
    prefix = _ipv6_prefix(name, mask_text) if slash else 128
    return IPv6Network((addr, prefix), strict=False)


def _parse_domains(name: str, values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for token in re.split(r"[\s,;]+", value):
            if not token:
                continue
            if len(token) > 253 or not _DOMAIN.fullmatch(token):
                raise _bad(name, value, "an invalid domain name")
            if token not in out:
                out.append(token)
    return out


def _status_error(resp: HttpResponse) -> Exception:
    reason = printable(resp.header("x-reason") or resp.reason or "", 256)
    if resp.status == 401:
        return CookieRejected(
            f"Server rejected the session cookie: {reason or 'HTTP 401'}",
            reason=f"HTTP 401 {reason}".rstrip(),
        )
    return ServerRefused(
        f"Server refused the tunnel: HTTP {resp.status} {reason}".rstrip(), status=resp.status
    )


def parse_connect_response_untrusted(resp: HttpResponse, *, gateway: IPAddress) -> TunnelConfig:
    """Validate the server's CONNECT answer and extract the tunnel parameters.

    *gateway* is the address the connection went to: the VPN server, whatever the
    server says.

    Raises CookieRejected (401), ServerRefused (any other non-200, message
    from X-Reason), or ProtocolError (missing MTU or address, any invalid
    value, compression we never offered, limits exceeded).
    """
    if resp.status != 200:
        raise _status_error(resp)
    h = _Headers(resp)
    notes: list[str] = []

    for enc in ("x-cstp-content-encoding", "x-dtls-content-encoding"):
        if h.one(enc) is not None:
            raise ProtocolError("Server enabled compression, which we did not offer")

    mtu = h.number("x-cstp-mtu", MIN_MTU, MAX_MTU)
    if mtu is None:
        raise ProtocolError("No MTU received")
    base_mtu = h.number("x-cstp-base-mtu", MIN_MTU, 65535)
    dtls_mtu = h.number("x-dtls-mtu", MIN_MTU, MAX_MTU)

    # Addresses: X-CSTP-Address / X-CSTP-Netmask carry IPv4, and IPv6 in the
    # old style (value with ':'); X-CSTP-Address-IP6 is the full-IPv6 form.
    v4_addr: list[str] = []
    v6_addr: list[str] = []
    for value in h.all("x-cstp-address"):
        (v6_addr if ":" in value else v4_addr).append(value)
    v4_mask: list[str] = []
    v6_mask: list[str] = []
    for value in h.all("x-cstp-netmask"):
        (v6_mask if ":" in value else v4_mask).append(value)
    for what, vals in (
        ("IPv4 address", v4_addr),
        ("IPv6 address", v6_addr),
        ("IPv4 netmask", v4_mask),
    ):
        if len(set(vals)) > 1:
            raise ProtocolError(f"Server sent more than one {what}")
    if len(set(v6_mask)) > 1:
        raise ProtocolError("Server sent more than one IPv6 netmask")

    ipv4: IPv4Interface | None = None
    if v4_addr:
        addr = _parse_addr("x-cstp-address", v4_addr[0])
        if not isinstance(addr, IPv4Address):  # pragma: no cover - split on ':' above
            raise _bad("x-cstp-address", v4_addr[0])
        prefix = _ipv4_prefix("x-cstp-netmask", v4_mask[0]) if v4_mask else 32
        ipv4 = IPv4Interface((addr, prefix))
    elif v4_mask:
        raise ProtocolError("Server sent an IPv4 netmask without an IPv4 address")

    ipv6: IPv6Interface | None = None
    full6 = h.one("x-cstp-address-ip6")
    if full6 is not None:
        addr_text, slash, plen = full6.partition("/")
        addr6 = _parse_addr("x-cstp-address-ip6", addr_text)
        if not isinstance(addr6, IPv6Address):
            raise _bad("x-cstp-address-ip6", full6)
        ipv6 = IPv6Interface((addr6, _ipv6_prefix("x-cstp-address-ip6", plen) if slash else 128))
    elif v6_addr:
        addr6 = _parse_addr("x-cstp-address", v6_addr[0])
        if not isinstance(addr6, IPv6Address):
            raise _bad("x-cstp-address", v6_addr[0])
        plen6 = 128
        if v6_mask:
            _net, slash, plen = v6_mask[0].partition("/")
            if not slash:
                raise _bad("x-cstp-netmask", v6_mask[0], "an invalid IPv6 netmask")
            plen6 = _ipv6_prefix("x-cstp-netmask", plen)
        ipv6 = IPv6Interface((addr6, plen6))

    dns: list[IPAddress] = []
    for name in ("x-cstp-dns", "x-cstp-dns-ip6"):
        for value in h.all(name):
            addr = _parse_addr(name, value)
            if addr not in dns:
                dns.append(addr)

    includes: list[IPNetwork] = []
    excludes: list[IPNetwork] = []
    for name, target in (
        ("x-cstp-split-include", includes),
        ("x-cstp-split-include-ip6", includes),
        ("x-cstp-split-exclude", excludes),
        ("x-cstp-split-exclude-ip6", excludes),
    ):
        for value in h.all(name):
            if len(target) >= MAX_ROUTES:
                raise ProtocolError(f"Server sent more than {MAX_ROUTES} split routes")
            target.append(_parse_route(name, value))

    if mtu < IPV6_MIN_MTU and (
        ipv6 is not None or any(r.version == 6 for r in includes + excludes)
    ):
        notes.append(
            f"IPv6 configuration ignored: MTU {mtu} is below the IPv6 minimum of {IPV6_MIN_MTU}"
        )
        ipv6 = None
        includes = [r for r in includes if r.version == 4]
        excludes = [r for r in excludes if r.version == 4]
        dns = [d for d in dns if d.version == 4]

    if ipv4 is None and ipv6 is None:
        raise ProtocolError("No IP address received")

    domains = _parse_domains("x-cstp-default-domain", h.all("x-cstp-default-domain"))
    split_dns = _parse_domains("x-cstp-split-dns", h.all("x-cstp-split-dns"))

    session_limits = [
        v
        for v in (
            h.seconds("x-cstp-session-timeout", allow_none=True),
            h.seconds("x-cstp-session-timeout-remaining", allow_none=True),
            h.seconds("x-cstp-lease-duration", allow_none=True),
        )
        if v
    ]

    banner_raw = h.one("x-cstp-banner")
    banner = printable(unquote(banner_raw), MAX_BANNER) if banner_raw is not None else None
    server_name_raw = h.one("x-cstp-server-name")
    server_name = printable(server_name_raw, 256) if server_name_raw is not None else None

    cipher12 = h.one("x-dtls12-ciphersuite")
    cipher = cipher12 if cipher12 is not None else h.one("x-dtls-ciphersuite")
    if cipher is not None and not CIPHER_NAME.fullmatch(cipher):
        raise _bad("x-dtls-ciphersuite", cipher)

    net = NetworkConfig(
        gateway=gateway,
        mtu=mtu,
        ipv4=ipv4,
        ipv6=ipv6,
        routes=tuple(includes),
        exclude=tuple(excludes),
        dns=tuple(dns),
        domains=tuple(domains),
        split_dns=tuple(split_dns),
        dns_default=h.flag("x-cstp-tunnel-all-dns"),
        banner=banner or None,
        idle_timeout=h.seconds("x-cstp-idle-timeout", allow_none=True),
    )
    return TunnelConfig(
        net=net,
        base_mtu=base_mtu,
        dpd=h.seconds("x-cstp-dpd"),
        keepalive=h.seconds("x-cstp-keepalive"),
        rekey_time=h.seconds("x-cstp-rekey-time"),
        rekey_method=h.method("x-cstp-rekey-method"),
        session_timeout=min(session_limits) if session_limits else None,
        server_name=server_name or None,
        dtls_port=h.number("x-dtls-port", 1, 65535),
        dtls_app_id=h.hex_id("x-dtls-app-id"),
        dtls_session_id=h.hex_id("x-dtls-session-id", exact=32),
        dtls_cipher=cipher,
        dtls_dpd=h.seconds("x-dtls-dpd"),
        dtls_keepalive=h.seconds("x-dtls-keepalive"),
        dtls_rekey_time=h.seconds("x-dtls-rekey-time"),
        dtls_rekey_method=h.method("x-dtls-rekey-method"),
        dtls_mtu=dtls_mtu,
        cstp_options=tuple(h.cstp_options),
        dtls12=cipher12 is not None,
        notes=tuple(notes),
    )
