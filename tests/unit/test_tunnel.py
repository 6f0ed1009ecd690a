"""CONNECT request and response (PROTOCOL.md §2).

OCSERV_CONNECT reproduces the header sequence of ocserv 1.1.6
src/worker-vpn.c connect_handler() for a full-IPv6 OpenConnect client in
PSK-NEGOTIATE mode (add_owasp_headers() first, then X-CSTP-Version ...
X-CSTP-MTU, X-CSTP-Banner), with the sample.config routes.
"""

from __future__ import annotations

import ipaddress
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.ipc.limits import MAX_DNS
from sepconnect.worker.proto.auth import USER_AGENT
from sepconnect.worker.proto.errors import CookieRejected, ProtocolError, ServerRefused
from sepconnect.worker.proto.http import HttpClient, HttpResponse
from sepconnect.worker.proto.tunnel import (
    MAX_ROUTES,
    MAX_VALUE_LEN,
    TunnelConfig,
    build_connect_request,
    compute_mtu,
)
from sepconnect.worker.proto.tunnel import parse_connect_response_untrusted as _parse

APP_ID = "2b1d4a1e0f5c3e7a9b8d6c4f2e0a1b3c5d7e9f1a2b3c4d5e6f708192a3b4c5d6"

OCSERV_CONNECT: list[tuple[str, str]] = [
    ("Strict-Transport-Security", "max-age=31536000 ; includeSubDomains"),
    ("X-Frame-Options", "deny"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
    ("Referrer-Policy", "no-referrer"),
    ("Clear-Site-Data", '"cache","cookies","storage"'),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("X-XSS-Protection", "0"),
    ("X-CSTP-Version", "1"),
    ("X-CSTP-Server-Name", "ocserv 1.1.6"),
    ("X-CSTP-Hostname", "client1"),
    ("X-CSTP-DPD", "90"),
    ("X-CSTP-Default-Domain", "example.com"),
    ("X-CSTP-Address", "198.18.1.23"),
    ("X-CSTP-Netmask", "255.255.255.0"),
    ("X-CSTP-Address-IP6", "fda9:4efe:7e3b:3ea::5/64"),
    ("X-CSTP-DNS", "198.18.1.2"),
    ("X-CSTP-DNS", "fda9:4efe:7e3b:3ea::2"),
    ("X-CSTP-Split-DNS", "corp.example.com"),
    ("X-CSTP-Split-Include", "10.10.10.0/255.255.255.0"),
    ("X-CSTP-Split-Include", "192.168.0.0/255.255.0.0"),
    ("X-CSTP-Split-Include-IP6", "fef4:db8:1000:1001::/64"),
    ("X-CSTP-Tunnel-All-DNS", "false"),
    ("X-CSTP-Client-Bypass-Protocol", "false"),
    ("X-CSTP-Split-Exclude", "192.168.5.0/255.255.255.0"),
    ("X-CSTP-Keepalive", "32400"),
    ("X-CSTP-Idle-Timeout", "none"),
    ("X-CSTP-Smartcard-Removal-Disconnect", "true"),
    ("X-CSTP-Rekey-Time", "172818"),
    ("X-CSTP-Rekey-Method", "ssl"),
    ("X-CSTP-Session-Timeout", "none"),
    ("X-CSTP-Disconnected-Timeout", "none"),
    ("X-CSTP-Keep", "true"),
    ("X-CSTP-TCP-Keepalive", "true"),
    ("X-CSTP-License", "accept"),
    ("X-DTLS-DPD", "90"),
    ("X-DTLS-Port", "443"),
    ("X-DTLS-Rekey-Time", "172828"),
    ("X-DTLS-Rekey-Method", "ssl"),
    ("X-DTLS-Keepalive", "32400"),
    ("X-DTLS-App-ID", APP_ID),
    ("X-DTLS-CipherSuite", "PSK-NEGOTIATE"),
    ("X-CSTP-Base-MTU", "1406"),
    ("X-CSTP-MTU", "1318"),
    ("X-CSTP-Banner", "Welcome%20to%0Athe test VPN"),
]

GATEWAY = ipaddress.ip_address("198.18.1.1")


def parse(resp: HttpResponse) -> TunnelConfig:
    """The CONNECT answer as the worker parses it, connected to GATEWAY."""
    return _parse(resp, gateway=GATEWAY)


def response(
    headers: list[tuple[str, str]] | None = None, status: int = 200, reason: str = "CONNECTED"
) -> HttpResponse:
    hdrs = OCSERV_CONNECT if headers is None else headers
    return HttpResponse(status, reason, tuple((k.lower(), v) for k, v in hdrs), b"")


def without(*names: str) -> list[tuple[str, str]]:
    low = {n.lower() for n in names}
    return [(k, v) for k, v in OCSERV_CONNECT if k.lower() not in low]


def replaced(name: str, *values: str) -> list[tuple[str, str]]:
    return without(name) + [(name, v) for v in values]


def test_realistic_ocserv_response() -> None:
    cfg = parse(response())
    assert cfg.net.ipv4 == IPv4Interface("198.18.1.23/24")
    assert cfg.net.ipv6 == IPv6Interface("fda9:4efe:7e3b:3ea::5/64")
    assert cfg.net.mtu == 1318
    assert cfg.base_mtu == 1406
    assert cfg.net.dns == (IPv4Address("198.18.1.2"), IPv6Address("fda9:4efe:7e3b:3ea::2"))
    assert cfg.net.domains == ("example.com",)
    assert cfg.net.split_dns == ("corp.example.com",)
    assert cfg.net.routes == (
        IPv4Network("10.10.10.0/24"),
        IPv4Network("192.168.0.0/16"),
        IPv6Network("fef4:db8:1000:1001::/64"),
    )
    assert cfg.net.exclude == (IPv4Network("192.168.5.0/24"),)
    assert cfg.net.dns_default is False
    assert (cfg.dpd, cfg.keepalive, cfg.net.idle_timeout) == (90, 32400, None)
    assert (cfg.rekey_time, cfg.rekey_method) == (172818, "ssl")
    assert cfg.session_timeout is None
    assert cfg.net.banner == "Welcome to\nthe test VPN"
    assert cfg.server_name == "ocserv 1.1.6"
    assert cfg.dtls_port == 443
    assert cfg.dtls_app_id == bytes.fromhex(APP_ID)
    assert cfg.dtls_session_id is None
    assert cfg.dtls_cipher == "PSK-NEGOTIATE"
    assert cfg.dtls12 is False
    assert (cfg.dtls_dpd, cfg.dtls_keepalive, cfg.dtls_rekey_time, cfg.dtls_rekey_method) == (
        90,
        32400,
        172828,
        "ssl",
    )
    assert cfg.dtls_mtu is None
    assert cfg.notes == ()
    # every X-CSTP-* header, in order, canonical names; nothing else
    names = [k for k, _ in cfg.cstp_options]
    assert names == [k for k, _ in OCSERV_CONNECT if k.startswith("X-CSTP-")]
    assert ("X-CSTP-Split-Include-IP6", "fef4:db8:1000:1001::/64") in cfg.cstp_options
    assert ("X-CSTP-TCP-Keepalive", "true") in cfg.cstp_options


def test_through_http_client_with_trailing_cstp() -> None:
    raw = (
        b"HTTP/1.1 200 CONNECTED\r\n"
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in OCSERV_CONNECT)
        + b"\r\n"
    )
    client = HttpClient()
    client.request("CONNECT", "/CSCOSSLC/tunnel", [("Host", "vpn.example")])
    resp = client.receive_data_untrusted(raw + b"STF\x01\x00\x00\x07\x00")
    assert resp is not None
    assert parse(resp) == parse(response())
    assert client.trailing_data == b"STF\x01\x00\x00\x07\x00"


def test_old_style_ipv6_and_ipv4_only_variants() -> None:
    # Client without X-CSTP-Full-IPv6-Capability: IPv6 as X-CSTP-Address + X-CSTP-Netmask net/len.
    hdrs = without("X-CSTP-Address-IP6") + [
        ("X-CSTP-Address", "fda9:4efe:7e3b:3ea::5"),
        ("X-CSTP-Netmask", "fda9:4efe:7e3b:3ea::/64"),
    ]
    cfg = parse(response(hdrs))
    assert cfg.net.ipv4 == IPv4Interface("198.18.1.23/24")
    assert cfg.net.ipv6 == IPv6Interface("fda9:4efe:7e3b:3ea::5/64")

    cfg = parse(response(without("X-CSTP-Address-IP6")))
    assert cfg.net.ipv6 is None
    assert cfg.net.ipv4 is not None

    cfg = parse(response(without("X-CSTP-Address", "X-CSTP-Netmask")))
    assert cfg.net.ipv4 is None
    assert cfg.net.ipv6 is not None


def test_missing_netmask_is_host_route() -> None:
    cfg = parse(response(without("X-CSTP-Netmask")))
    assert cfg.net.ipv4 == IPv4Interface("198.18.1.23/32")
    cfg = parse(response(replaced("X-CSTP-Address-IP6", "fda9::5")))
    assert cfg.net.ipv6 == IPv6Interface("fda9::5/128")


def test_route_forms() -> None:
    hdrs = without("X-CSTP-Split-Include", "X-CSTP-Split-Include-IP6") + [
        ("X-CSTP-Split-Include", "10.1.2.3/255.255.0.0"),  # host bits set: normalised
        ("X-CSTP-Split-Include", "10.9.0.0/16"),
        ("X-CSTP-Split-Include", "10.7.7.7"),
        ("X-CSTP-Split-Include", "0.0.0.0/0.0.0.0"),
        ("X-CSTP-Split-Include", "2001:db8::1/48"),  # IPv6 in the old header
        ("X-CSTP-Split-Include-IP6", "2001:db8:1::/64"),
        ("X-CSTP-Split-Include-IP6", "2001:db8:2::7"),
    ]
    cfg = parse(response(hdrs))
    assert cfg.net.routes == (
        IPv4Network("10.1.0.0/16"),
        IPv4Network("10.9.0.0/16"),
        IPv4Network("10.7.7.7/32"),
        IPv4Network("0.0.0.0/0"),
        IPv6Network("2001:db8::/48"),
        IPv6Network("2001:db8:1::/64"),
        IPv6Network("2001:db8:2::7/128"),
    )


def test_repeated_and_optional_values() -> None:
    hdrs = replaced("X-CSTP-Default-Domain", "example.com, one.example.com;two.example.com") + [
        ("X-CSTP-Split-DNS", "a.example,b.example"),
        ("X-CSTP-DNS", "198.18.1.3"),
        ("X-CSTP-DNS", "198.18.1.2"),  # duplicate collapsed
    ]
    hdrs = [
        (k, v)
        for k, v in hdrs
        if k not in ("X-CSTP-Idle-Timeout", "X-CSTP-Session-Timeout", "X-CSTP-Tunnel-All-DNS")
    ]
    hdrs += [
        ("X-CSTP-Idle-Timeout", "1200"),
        ("X-CSTP-Session-Timeout", "86400"),
        ("X-CSTP-Session-Timeout-Remaining", "3600"),
        ("X-CSTP-Tunnel-All-DNS", "true"),
    ]
    cfg = parse(response(hdrs))
    assert cfg.net.domains == ("example.com", "one.example.com", "two.example.com")
    assert cfg.net.split_dns == ("corp.example.com", "a.example", "b.example")
    assert cfg.net.dns == (
        IPv4Address("198.18.1.2"),
        IPv6Address("fda9:4efe:7e3b:3ea::2"),
        IPv4Address("198.18.1.3"),
    )
    assert cfg.net.idle_timeout == 1200
    assert cfg.session_timeout == 3600
    assert cfg.net.dns_default is True


def test_legacy_dtls_fields() -> None:
    hdrs = without("X-DTLS-App-ID", "X-DTLS-CipherSuite") + [
        ("X-DTLS-Session-ID", APP_ID),
        ("X-DTLS12-CipherSuite", "AES256-GCM-SHA384"),
        ("X-DTLS-MTU", "1390"),
    ]
    cfg = parse(response(hdrs))
    assert cfg.dtls_session_id == bytes.fromhex(APP_ID)
    assert cfg.dtls_app_id is None
    assert cfg.dtls_cipher == "AES256-GCM-SHA384"
    assert cfg.dtls12 is True
    assert cfg.dtls_mtu == 1390


def test_no_dtls_headers() -> None:
    cfg = parse(response([(k, v) for k, v in OCSERV_CONNECT if not k.startswith("X-DTLS")]))
    assert (cfg.dtls_port, cfg.dtls_app_id, cfg.dtls_cipher, cfg.dtls_dpd) == (
        None,
        None,
        None,
        None,
    )


def test_unknown_rekey_method_is_none_and_dpd_zero_disabled() -> None:
    hdrs = replaced("X-CSTP-Rekey-Method", "teleport")
    hdrs = [(k, v) for k, v in hdrs if k != "X-CSTP-DPD"] + [("X-CSTP-DPD", "0")]
    cfg = parse(response(hdrs))
    assert cfg.rekey_method == "none"
    assert cfg.dpd is None


def test_small_mtu_withdraws_ipv6() -> None:
    cfg = parse(response(replaced("X-CSTP-MTU", "1200")))
    assert cfg.net.mtu == 1200
    assert cfg.net.ipv6 is None
    assert all(r.version == 4 for r in cfg.net.routes + cfg.net.exclude)
    assert cfg.net.dns == (IPv4Address("198.18.1.2"),)
    assert len(cfg.notes) == 1
    assert "1280" in cfg.notes[0]


def test_small_mtu_ipv6_only_fails() -> None:
    hdrs = [
        (k, v)
        for k, v in replaced("X-CSTP-MTU", "1200")
        if k not in ("X-CSTP-Address", "X-CSTP-Netmask")
    ]
    with pytest.raises(ProtocolError, match="No IP address received"):
        parse(response(hdrs))


def test_missing_mtu() -> None:
    with pytest.raises(ProtocolError, match="No MTU received"):
        parse(response(without("X-CSTP-MTU")))


def test_missing_address() -> None:
    with pytest.raises(ProtocolError, match="No IP address received"):
        parse(response(without("X-CSTP-Address", "X-CSTP-Netmask", "X-CSTP-Address-IP6")))


def test_status_errors() -> None:
    with pytest.raises(CookieRejected, match="Cookie is not acceptable"):
        parse(response([], 401, "Cookie is not acceptable"))
    with pytest.raises(ServerRefused, match="503 Server configuration error") as info:
        parse(response([("X-Reason", "Server configuration error")], 503, "Service Unavailable"))
    assert info.value.status == 503
    with pytest.raises(ServerRefused, match="404 Not Found"):
        parse(response([], 404, "Not Found"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-CSTP-Address", "127.0.0.1"),
        ("X-CSTP-Address", "0.0.0.0"),
        ("X-CSTP-Address", "224.0.0.1"),
        ("X-CSTP-Address", "169.254.1.1"),
        ("X-CSTP-Address", "255.255.255.255"),
        ("X-CSTP-Address", "198.18.1.300"),
        ("X-CSTP-Address", "198.18.1.23; rm -rf /"),
        ("X-CSTP-Address", ""),
        ("X-CSTP-Netmask", "255.0.255.0"),
        ("X-CSTP-Netmask", "0.0.0.255"),
        ("X-CSTP-Netmask", "33"),
        ("X-CSTP-Netmask", "banana"),
        ("X-CSTP-Address-IP6", "::1/128"),
        ("X-CSTP-Address-IP6", "fe80::1/64"),
        ("X-CSTP-Address-IP6", "ff02::1/64"),
        ("X-CSTP-Address-IP6", "fda9::5/129"),
        ("X-CSTP-Address-IP6", "fda9::5/-1"),
        ("X-CSTP-Address-IP6", "198.18.1.1/24"),
        ("X-CSTP-DNS", "127.0.0.53"),
        ("X-CSTP-DNS", "::"),
        ("X-CSTP-DNS", "dns.example.com"),
        ("X-CSTP-Split-Include", "10.0.0.0/255.0.255.0"),
        ("X-CSTP-Split-Include", "10.0.0.0/40"),
        ("X-CSTP-Split-Include", "10.0.0.0/"),
        ("X-CSTP-Split-Include-IP6", "2001:db8::/200"),
        ("X-CSTP-Split-Exclude", "nonsense"),
        ("X-CSTP-Split-Include-IP6", "2001:db8::%eth0/64"),
        ("X-CSTP-Address-IP6", "fda9::5%1/64"),
        ("X-CSTP-MTU", "575"),
        ("X-CSTP-MTU", "9001"),
        ("X-CSTP-MTU", "-1400"),
        ("X-CSTP-MTU", "1400.5"),
        ("X-CSTP-MTU", "\uff11\uff14\uff10\uff10"),  # fullwidth digits
        ("X-CSTP-Base-MTU", "70000"),
        ("X-CSTP-DPD", "ninety"),
        ("X-CSTP-DPD", "99999999999"),
        ("X-CSTP-Keepalive", "-5"),
        ("X-CSTP-Idle-Timeout", "soon"),
        ("X-CSTP-Tunnel-All-DNS", "maybe"),
        ("X-CSTP-Default-Domain", "exa mple.com;$(reboot)"),
        ("X-CSTP-Split-DNS", "bad..example"),
        ("X-CSTP-Split-DNS", "-bad.example"),
        ("X-DTLS-Port", "0"),
        ("X-DTLS-Port", "65536"),
        ("X-DTLS-App-ID", "xyz"),
        ("X-DTLS-App-ID", "abc"),
        ("X-DTLS-App-ID", "00" * 33),
        ("X-DTLS-Session-ID", "00" * 16),
        ("X-DTLS-CipherSuite", "PSK NEGOTIATE"),
        ("X-CSTP-Content-Encoding", "lzs"),
        ("X-DTLS-Content-Encoding", "oc-lz4"),
    ],
)
def test_hostile_values(name: str, value: str) -> None:
    with pytest.raises(ProtocolError):
        parse(response(replaced(name, value)))


def test_conflicting_scalars() -> None:
    with pytest.raises(ProtocolError, match="conflicting"):
        parse(response(OCSERV_CONNECT + [("X-CSTP-MTU", "1300")]))
    with pytest.raises(ProtocolError, match="more than one IPv4 address"):
        parse(response(OCSERV_CONNECT + [("X-CSTP-Address", "198.18.1.24")]))
    # an identical repeat is harmless
    parse(response(OCSERV_CONNECT + [("X-CSTP-MTU", "1318")]))


def test_huge_values_and_counts() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        parse(response(OCSERV_CONNECT + [("X-CSTP-Banner-Extra", "A" * (MAX_VALUE_LEN + 1))]))
    with pytest.raises(ProtocolError, match="longer than"):
        parse(response(replaced("X-CSTP-Banner", "x" * 100000)))
    many = [
        ("X-CSTP-Split-Include", f"10.{i // 256}.{i % 256}.0/24") for i in range(MAX_ROUTES + 1)
    ]
    with pytest.raises(ProtocolError, match="routes"):
        parse(response(OCSERV_CONNECT + many))
    with pytest.raises(ProtocolError, match="headers"):
        parse(response(OCSERV_CONNECT + [("X-Other", "1")] * 5000))
    # DNS servers are bounded by the header count; the routing policy keeps MAX_DNS
    dns = [("X-CSTP-DNS", f"198.18.3.{i}") for i in range(1, 60)]
    assert len(parse(response(OCSERV_CONNECT + dns)).net.dns) > MAX_DNS
    # a long but acceptable list is fine
    ok = [("X-CSTP-Split-Include", f"10.{i // 256}.{i % 256}.0/24") for i in range(250)]
    assert len(parse(response(OCSERV_CONNECT + ok)).net.routes) == 253


def test_banner_and_server_name_sanitised() -> None:
    hdrs = replaced("X-CSTP-Banner", "hi%1B[2Jthere%0Aline%C2%9B") + [
        ("X-CSTP-Server-Name-Note", "")
    ]
    hdrs = [(k, v) for k, v in hdrs if k != "X-CSTP-Server-Name"] + [
        ("X-CSTP-Server-Name", "evil\x7fserver")
    ]
    cfg = parse(response(hdrs))
    assert cfg.net.banner == "hi[2Jthere\nline"
    assert cfg.server_name == "evilserver"


def test_unknown_and_secret_headers() -> None:
    hdrs = OCSERV_CONNECT + [
        ("X-My-Header", "hi there"),
        (
            "X-CSTP-Post-Auth-XML",
            "<config-auth><session-token>secret</session-token></config-auth>",
        ),
        ("X-CSTP-DynDNS", "true"),
        ("X-CSTP-MSIE-Proxy-Pac-URL", "http://proxy.example/pac"),
    ]
    cfg = parse(response(hdrs))
    text = repr(cfg.cstp_options)
    assert "secret" not in text
    assert "X-My-Header" not in text
    assert ("X-CSTP-DynDNS", "true") in cfg.cstp_options
    assert ("X-CSTP-MSIE-Proxy-Pac-URL", "http://proxy.example/pac") in cfg.cstp_options


# -- request ------------------------------------------------------------------------


def test_build_connect_request_exact() -> None:
    req = build_connect_request(
        host="vpn.example.net",
        port=443,
        cookie="AbC+/0123=",
        hostname="client1",
        base_mtu=1500,
        mtu=1390,
    )
    assert (req.method, req.path, req.body, req.new_connection) == (
        "CONNECT",
        "/CSCOSSLC/tunnel",
        b"",
        False,
    )
    assert list(req.headers) == [
        ("Host", "vpn.example.net"),
        ("User-Agent", USER_AGENT),
        ("Cookie", "webvpn=AbC+/0123="),
        ("X-CSTP-Version", "1"),
        ("X-CSTP-Hostname", "client1"),
        ("X-CSTP-Protocol", "Copyright (c) 2004 Cisco Systems, Inc."),
        ("X-CSTP-Base-MTU", "1500"),
        ("X-CSTP-MTU", "1390"),
        ("X-CSTP-Address-Type", "IPv6,IPv4"),
        ("X-CSTP-Full-IPv6-Capability", "true"),
    ]
    client = HttpClient()
    wire = client.request(req.method, req.path, list(req.headers), req.body)
    assert wire.startswith(b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: vpn.example.net\r\n")
    assert wire.endswith(b"X-CSTP-Full-IPv6-Capability: true\r\n\r\n")


def test_build_connect_request_reconnect_ipv4_only_dtls() -> None:
    prev = parse(response())
    req = build_connect_request(
        host="vpn.example.net",
        port=8443,
        cookie="c",
        hostname="client1",
        base_mtu=1406,
        mtu=0,
        ipv6=False,
        dtls_master_secret=bytes(range(48)),
        previous=prev,
    )
    hdrs = list(req.headers)
    assert hdrs[0] == ("Host", "vpn.example.net:8443")
    names = [k for k, _ in hdrs]
    assert "X-CSTP-MTU" not in names
    assert "X-CSTP-Full-IPv6-Capability" not in names
    assert ("X-CSTP-Address-Type", "IPv4") in hdrs
    assert [v for k, v in hdrs if k == "X-CSTP-Address"] == ["198.18.1.23"]
    assert hdrs[-2] == ("X-DTLS-Master-Secret", bytes(range(48)).hex().upper())
    assert hdrs[-1] == ("X-DTLS-CipherSuite", "PSK-NEGOTIATE")

    req6 = build_connect_request(
        host="vpn.example.net",
        port=443,
        cookie="c",
        hostname="h",
        base_mtu=1406,
        mtu=1300,
        previous=prev,
    )
    assert [v for k, v in req6.headers if k == "X-CSTP-Address"] == [
        "198.18.1.23",
        "fda9:4efe:7e3b:3ea::5",
    ]
    assert not any(k.startswith("X-DTLS") for k, _ in req6.headers)


@pytest.mark.parametrize(
    "bad",
    [
        {"cookie": ""},
        {"cookie": "a b"},
        {"cookie": "a;b"},
        {"hostname": "bad host"},
        {"hostname": "x\r\nEvil: 1"},
        {"base_mtu": 100},
        {"mtu": 70000},
        {"dtls_master_secret": b"short"},
        {"dtls_master_secret": bytes(48), "dtls_ciphers": "A B"},
    ],
)
def test_build_connect_request_rejects(bad: dict[str, object]) -> None:
    args: dict[str, object] = {
        "host": "vpn.example.net",
        "port": 443,
        "cookie": "abc",
        "hostname": "client1",
        "base_mtu": 1500,
        "mtu": 1390,
    }
    args.update(bad)
    with pytest.raises(ValueError):
        build_connect_request(**args)  # type: ignore[arg-type]


def test_compute_mtu() -> None:
    # PROTOCOL.md §5.1: base 1500 over IPv4 -> 1390.
    assert compute_mtu(1500, False) == 1390
    assert compute_mtu(1500, True) == 1370
    assert compute_mtu(1000, False) == 1280 - 82 - 8 - 20  # clamped to 1280
    assert compute_mtu(9000, False) == 8890


def test_tunnel_config_repr_is_short() -> None:
    cfg = parse(response())
    assert isinstance(cfg, TunnelConfig)
    assert "198.18.1.23" in repr(cfg)
    assert len(repr(cfg)) < 400


HEADER_NAMES = [k for k, _ in OCSERV_CONNECT] + [
    "X-CSTP-Split-Exclude-IP6",
    "X-CSTP-DNS-IP6",
    "X-CSTP-Session-Timeout-Remaining",
    "X-CSTP-Lease-Duration",
    "X-DTLS-Session-ID",
    "X-DTLS12-CipherSuite",
    "X-DTLS-MTU",
]
VALUES = st.one_of(
    st.sampled_from([v for _, v in OCSERV_CONNECT]),
    st.sampled_from(["", "none", "0", "true", "::", "1.2.3.4/33", "00" * 32, "a" * 300]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF), max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(
    changes=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), VALUES), max_size=6),
    drop=st.lists(st.sampled_from(HEADER_NAMES), max_size=4),
    status=st.sampled_from([200, 200, 200, 401, 503]),
)
def test_fuzz_only_declared_errors(
    changes: list[tuple[str, str]], drop: list[str], status: int
) -> None:
    hdrs = [(k, v) for k, v in OCSERV_CONNECT if k not in drop] + changes
    try:
        cfg = parse(response(hdrs, status))
    except ProtocolError:
        return
    except CookieRejected:
        assert status == 401
        return
    assert status == 200
    assert 576 <= cfg.net.mtu <= 9000
    assert cfg.net.ipv4 is not None or cfg.net.ipv6 is not None
    if cfg.net.ipv6 is not None:
        assert cfg.net.mtu >= 1280
