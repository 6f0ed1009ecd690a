"""What the client tells the server about itself (worker/proto/identity.py): --useragent,
--version-string, --os and --local-hostname, against what openconnect 9.01 sends.

The vectors were taken from openconnect 9.01-3 (Debian 12) against the lab's ocserv:
``openconnect --authenticate --dump-http-traffic --os android`` (the request headers
and the XML of the init request) and ocserv's ``-d 4`` log of the CONNECT request of
``openconnect --os android``. openconnect also sends ``X-Support-HTTP-Auth``, its STRAP
keys and ``<capabilities>`` (single sign-on), which sepconnect does not use.
"""

from __future__ import annotations

from sepconnect.worker.proto.auth import AuthSession, HttpRequest
from sepconnect.worker.proto.identity import CLIENT_VERSION, USER_AGENT, ClientIdentity
from sepconnect.worker.proto.tunnel import build_connect_request

MOBILE_HEADERS = [
    ("X-AnyConnect-Identifier-ClientVersion", "v9.01-3"),
    ("X-AnyConnect-Identifier-Platform", "android"),
    ("X-AnyConnect-Identifier-PlatformVersion", "1.0"),
    ("X-AnyConnect-Identifier-DeviceType", "android"),
    ("X-AnyConnect-Identifier-Device-UniqueID", "A" * 40),
]
ANDROID_XML = (
    '<version who="vpn">v9.01-3</version><device-id platform-version="1.0" '
    'device-type="android" unique-id="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA">android'
    "</device-id>"
)
OPENCONNECT = ClientIdentity(
    user_agent="Open AnyConnect VPN Agent v9.01-3", version="v9.01-3", platform="android"
)


def _init(identity: ClientIdentity) -> HttpRequest:
    session = AuthSession(
        host="198.18.1.1",
        port=443,
        path="/",
        identity=identity,
    )
    return session.first_request()


def test_default_identity_is_sepconnects_on_64_bit_linux() -> None:
    req = _init(ClientIdentity())
    assert dict(req.headers)["User-Agent"] == USER_AGENT
    assert not any(name.startswith("X-AnyConnect") for name, _ in req.headers)
    assert (
        f'<version who="vpn">{CLIENT_VERSION}</version><device-id>linux-64</device-id>'
        in req.body.decode()
    )


def test_mobile_login_request_as_openconnect() -> None:
    req = _init(OPENCONNECT)
    names = [name for name, _ in req.headers]
    # openconnect 9.01: ... X-Aggregate-Auth, X-Support-HTTP-Auth, the identifiers, X-Pad
    at = names.index("X-Aggregate-Auth") + 1
    assert list(req.headers[at : at + 5]) == MOBILE_HEADERS
    assert names[at + 5] == "X-Pad"
    assert dict(req.headers)["User-Agent"] == "Open AnyConnect VPN Agent v9.01-3"
    assert (
        '<config-auth client="vpn" type="init" aggregate-auth-version="2">' + ANDROID_XML
        in req.body.decode()
    )


def test_every_platform_is_the_device_id() -> None:
    for platform in ("linux", "linux-64", "win", "mac-intel"):
        identity = ClientIdentity(platform=platform)
        assert identity.xml().endswith(f"<device-id>{platform}</device-id>")
        assert identity.mobile_headers() == []
    ios = ClientIdentity(platform="apple-ios", version="4.10")
    assert ios.xml().endswith(f'unique-id="{"A" * 40}">apple-ios</device-id>')
    assert ("X-AnyConnect-Identifier-DeviceType", "apple-ios") in ios.mobile_headers()


def test_mobile_connect_request_as_openconnect() -> None:
    req = build_connect_request(
        host="198.18.1.1",
        port=443,
        cookie="AKJJ7m7IQ66g",
        hostname="mybox",
        base_mtu=1488,
        mtu=1378,
        identity=OPENCONNECT,
    )
    headers = list(req.headers)
    # ocserv's log of openconnect 9.01's CONNECT: Host, User-Agent, Cookie,
    # X-CSTP-Version, X-CSTP-Hostname, the identifiers, X-CSTP-Base-MTU, ...
    assert headers[:5] == [
        ("Host", "198.18.1.1"),
        ("User-Agent", "Open AnyConnect VPN Agent v9.01-3"),
        ("Cookie", "webvpn=AKJJ7m7IQ66g"),
        ("X-CSTP-Version", "1"),
        ("X-CSTP-Hostname", "mybox"),
    ]
    assert headers[5:10] == MOBILE_HEADERS


def test_xml_text_is_escaped() -> None:
    identity = ClientIdentity(version="1<2&3", platform="win")
    assert identity.xml() == '<version who="vpn">1&lt;2&amp;3</version><device-id>win</device-id>'
