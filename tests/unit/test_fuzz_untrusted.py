"""Every entry point of worker/proto that takes bytes from the server, fuzzed (issue 13,
F12; STYLE.md §6.5: a decoder may only raise its declared errors).

:data:`FUZZERS` names the test fuzzing every ``*_untrusted`` function and method of
worker/proto (found by :func:`test_every_untrusted_entry_point_is_fuzzed`, so a new one
cannot be missed) and the errors it may raise; "nothing" means it must not raise at
all. Parsers without the suffix that see server input are fuzzed here too (the tun
coalescer, the DTLS plan, the routing policy). The inputs are built from each format's own
structure, near-valid values mutated, so that they get past the first check: random
bytes alone never reach an IPv6 form action or an empty DATA frame after a TCP segment.
Every test is bounded (modest max_examples, a deadline) to keep the unit suite fast.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pkgutil
import struct
import xml.etree.ElementTree as ET

from dtls_peer import FakeServer, ServerConfig, encode_fragment
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_auth import COOKIE, session
from test_dtls_connection import Pair, psk_params, resume_params
from test_offload import tcp_packet
from test_tunnel import OCSERV_CONNECT, parse, response

import sepconnect.worker.proto as proto_pkg
from sepconnect.ipc.routing import UnusableConfig, routing_policy
from sepconnect.ipc.worker_messages import FROM_WORKER, TunnelUp
from sepconnect.worker import accel
from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto import dtls_handshake as hs
from sepconnect.worker.proto.auth import (
    AuthSuccess,
    FormPrompt,
    HttpRequest,
    parse_config_auth_untrusted,
)
from sepconnect.worker.proto.cstp import MAGIC, CstpDecoder, CstpError
from sepconnect.worker.proto.dtls_channel import ChannelConfig, DtlsChannel
from sepconnect.worker.proto.dtls_connection import (
    ConnectionClosed,
    DtlsConnection,
    State,
)
from sepconnect.worker.proto.dtls_handshake import DtlsError
from sepconnect.worker.proto.dtls_records import ReplayWindow, encode_record, records_untrusted
from sepconnect.worker.proto.dtls_setup import DEFAULT_CIPHERS, DEFAULT_CIPHERS12, plan_dtls
from sepconnect.worker.proto.errors import AuthError, ProtocolError
from sepconnect.worker.proto.http import HttpClient, HttpResponse
from sepconnect.worker.proto.offload import PLAIN_HEADER, VNET_HDR_LEN, Coalescer, coalesce
from sepconnect.worker.proto.session import CstpSession

FUZZ = settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None
)

#: test -> (the errors its entry points may raise, the entry points: module.qualname)
FUZZERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "test_auth_xml_documents": ("ProtocolError", ("auth.parse_config_auth_untrusted",)),
    "test_auth_responses": (
        "ProtocolError, AuthError",
        ("auth._parse_set_cookie_untrusted", "auth.AuthSession.handle_response_untrusted"),
    ),
    "test_auth_form_actions": ("ProtocolError", ("auth.AuthSession.handle_response_untrusted",)),
    "test_http_responses": ("ProtocolError", ("http.HttpClient.receive_data_untrusted",)),
    "test_cstp_frames": (
        "CstpError",
        (
            "cstp.CstpDecoder.feed_untrusted",
            "cstp.CstpDecoder.feed_pairs_untrusted",
            "session.CstpSession.receive_data_untrusted",
        ),
    ),
    "test_connect_headers": (
        "ProtocolError, AuthError",
        ("tunnel.parse_connect_response_untrusted",),
    ),
    "test_dtls_handshake_bodies": (
        "DtlsError",
        (
            "dtls_handshake.fragments_untrusted",
            *(
                f"dtls_handshake.pull_{m}_untrusted"
                for m in (
                    "client_hello",
                    "hello_verify_request",
                    "server_hello",
                    "server_key_exchange",
                    "client_key_exchange",
                    "finished",
                )
            ),
        ),
    ),
    "test_dtls_datagrams_in_every_state": (
        "nothing",
        (
            "dtls_records.records_untrusted",
            "dtls_connection.DtlsConnection.receive_datagrams_untrusted",
            "dtls_connection.DtlsConnection.receive_datagrams_untrusted",
            "dtls_connection.DtlsConnection.receive_split_untrusted",
        ),
    ),
    "test_dtls_record_protection": (
        "BadRecordMac",
        tuple(
            f"dtls_crypto.{c}.open_untrusted"
            for c in (
                "RecordProtection",
                "GcmProtection",
                "CompiledGcmProtection",
                "ChaChaProtection",
                "CbcSha1Protection",
            )
        ),
    ),
    "test_dtls_record_bursts": (
        "nothing",
        tuple(
            f"dtls_crypto.{c}.open_datagrams_untrusted"
            for c in ("RecordProtection", "CompiledGcmProtection")
        ),
    ),
    "test_dtls_channel": (
        "nothing",
        (
            "dtls_channel.DtlsChannel.receive_datagrams_untrusted",
            "dtls_channel.DtlsChannel.receive_datagrams_untrusted",
        ),
    ),
    "test_pin.py::test_fuzz_raises_only_malformed_certificate": (
        "MalformedCertificate",
        tuple(
            f"pin.{f}_untrusted"
            for f in ("matches", "spki_pin", "subject_public_key_info", "fingerprint")
        ),
    ),
}


def _untrusted_entry_points() -> set[str]:
    found: set[str] = set()
    for info in pkgutil.iter_modules(proto_pkg.__path__):
        module = importlib.import_module(f"{proto_pkg.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) and name.endswith("_untrusted"):
                found.add(f"{info.name}.{name}")
            elif inspect.isclass(obj):
                found.update(
                    f"{info.name}.{name}.{attr}"
                    for attr in vars(obj)
                    if attr.endswith("_untrusted")
                )
    return found


def test_every_untrusted_entry_point_is_fuzzed() -> None:
    assert _untrusted_entry_points() == {e for _, entries in FUZZERS.values() for e in entries}
    for test in FUZZERS:
        path, _, name = test.rpartition("::")
        module = importlib.import_module(path.removesuffix(".py")) if path else None
        assert callable(getattr(module, name) if module else globals()[name]), test


# --------------------------------------------------------------------------- text

# What h11 lets through in a header value or reason (visible ASCII, space, tab,
# obs-text), as the latin-1 text HttpResponse carries: superscript digits, NBSP,
# soft hyphen… are where str methods and int() disagree with regular expressions.
LATIN1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
TRICKY = st.sampled_from(
    ["", " ", "\t", "²", "¹0", "٣", "\u00a0", "1e3", "+5", "-1", "0x10", "1_000", "%", "%zz",
     "%00", "[", "]", "[::1]", "::", ":", "/", "//", "\\", "@", "#", "?", "..", "\x00", "99999"]
)  # fmt: skip


def mutated(value: str) -> st.SearchStrategy[str]:
    """*value* with a piece inserted, replaced or cut off."""
    piece = st.one_of(TRICKY, LATIN1)
    n = len(value)
    return st.one_of(
        st.builds(lambda i, p: value[:i] + p + value[i:], st.integers(0, n), piece),
        st.builds(
            lambda i, j, p: value[:i] + p + value[j:], st.integers(0, n), st.integers(0, n), piece
        ),
        st.builds(lambda i: value[:i], st.integers(0, n)),
    )  # fmt: skip


# --------------------------------------------------------------------------- auth

URLISH = st.one_of(
    st.sampled_from(
        [
            "https://[x/",
            "https://[::1/",
            "https://]x[/",
            "https://[::1]:443/auth",
            "//[x/",
            "https://vpn.example.net:99999/",
            "https://vpn.example.net:-1/",
            "https://vpn.example.net:x/",
            "https://u@vpn.example.net/",
            "http://vpn.example.net/",
            "/auth?x=1#f",
            "auth",
            "..",
            "https://vpn.example.net/%zz",
            "https://VPN.EXAMPLE.NET./",
            "https:",
            "https://",
        ]
    ),  # fmt: skip
    mutated("https://vpn.example.net/auth"),
    mutated("/auth"),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
)
ATTR = st.one_of(TRICKY, LATIN1, st.text(max_size=12))
XML_TEXT = st.text(max_size=20).map(lambda t: "".join(c for c in t if c.isprintable()))


def _attrs(**values: str | None) -> str:
    from sepconnect.worker.proto.auth import quoteattr

    return "".join(
        f" {k.replace('_', '-')}={quoteattr(v)}" for k, v in values.items() if v is not None
    )


@st.composite
def auth_documents(draw: st.DrawFn) -> str:
    """config-auth documents; half of them an ordinary login form, so that what
    follows the form (its action, the reply) is reached."""
    login = '<input type="text" name="username"/><input type="password" name="password"/>'
    inputs = draw(
        st.lists(
            st.one_of(
                st.builds(
                    lambda t, n, v: f"<input{_attrs(type=t, name=n, value=v)}/>",
                    st.sampled_from(["text", "password", "hidden", "submit", "TEXT", "x"]),
                    st.one_of(st.sampled_from(["username", "password", "answer", "h"]), ATTR),
                    st.one_of(st.none(), ATTR),
                ),
                st.builds(
                    lambda n, opts: f"<select{_attrs(name=n)}>{opts}</select>",
                    st.one_of(st.sampled_from(["group_list", "s"]), ATTR),
                    st.lists(
                        st.builds(
                            lambda v, label, sel: (
                                f"<option{_attrs(value=v, selected=sel)}>"
                                f"{escape_text(label)}</option>"
                            ),
                            st.one_of(st.none(), ATTR),
                            XML_TEXT,
                            st.sampled_from([None, "true", "x"]),
                        ),
                        max_size=3,
                    ).map("".join),
                ),
            ),
            max_size=4,
        ).map("".join)
        | st.just(login)
    )
    method = draw(st.sampled_from([None, None, "post", "GET", "x"]))
    action = draw(st.one_of(st.none(), URLISH))
    form = f"<form{_attrs(method=method, action=action)}>{inputs}</form>"
    auth_id = draw(st.sampled_from(["main", "main", "success", "x", None]))
    parts = [
        draw(st.sampled_from(["", "<banner>b</banner>"])),
        draw(st.sampled_from(["", "<message>Login failed.</message>", "<message>m</message>"])),
        draw(st.sampled_from(["", "<error>e</error>"])),
        form if draw(st.integers(0, 3)) else "",
    ]
    opaque = draw(st.sampled_from(["", "<opaque is-for='sg'><x a='1'>t</x></opaque>"]))
    token = draw(
        st.sampled_from(
            ["", f"<session-token>{COOKIE}</session-token>", "<session-token>a b</session-token>"]
        )
    )
    kind = draw(st.one_of(st.none(), ATTR))
    return (
        f'<?xml version="1.0"?><config-auth client="vpn"{_attrs(type=kind)}>'
        f"<auth{_attrs(id=auth_id)}>{''.join(parts)}</auth>{opaque}{token}</config-auth>"
    )


def escape_text(text: str) -> str:
    from sepconnect.worker.proto.auth import escape

    return escape(text)


@FUZZ
@given(doc=auth_documents())
def test_auth_xml_documents(doc: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_config_auth_untrusted(doc.encode())


@FUZZ
@given(
    doc=auth_documents(),
    status=st.sampled_from([200, 200, 200, 404, 401, 302, 503]),
    reason=LATIN1,
    cookies=st.lists(
        st.one_of(
            st.sampled_from([f"webvpn={COOKIE}; Secure", "webvpn=", "webvpn=a;Max-Age=0", "x"]),
            mutated(f"webvpn={COOKIE}; Max-Age=5"),
            LATIN1,
        ),
        max_size=3,
    ),
    extra=st.lists(
        st.tuples(st.sampled_from(["connection", "x-reason", "location"]), LATIN1), max_size=2
    ),
    rounds=st.integers(1, 3),
)
def test_auth_responses(
    doc: str,
    status: int,
    reason: str,
    cookies: list[str],
    extra: list[tuple[str, str]],
    rounds: int,
) -> None:
    s = session()
    s.first_request()
    headers = tuple(("set-cookie", c) for c in cookies) + tuple(extra)
    resp = HttpResponse(status, reason, headers, doc.encode())
    for _ in range(rounds):
        try:
            out = s.handle_response_untrusted(resp)
        except (ProtocolError, AuthError):
            return
        if isinstance(out, FormPrompt):  # the supervisor's part: any answer it may give
            out = s.answer({f.name: f.options[-1].value if f.options else "a" for f in out.fields})
        if isinstance(out, AuthSuccess):
            assert out.cookie
            return
        # what we send back is well-formed XML and a request HTTP can carry
        assert isinstance(out, HttpRequest)
        if out.body:
            ET.fromstring(out.body)
        HttpClient().request(out.method, out.path, list(out.headers), out.body)


@settings(FUZZ, max_examples=300)
@given(
    action=URLISH,
    method=st.sampled_from([None, "post", "POST", "get"]),
    port=st.sampled_from([443, 8443]),
    host=st.sampled_from(["vpn.example.net", "2001:db8::1", "198.18.1.1"]),
    path=st.sampled_from(["/", "/?secret", "/a/b"]),
)
@example(action="https://[x/", method=None, port=443, host="vpn.example.net", path="/")
@example(action="https://]x[/", method=None, port=443, host="vpn.example.net", path="/")
@example(action="https://[::1/", method=None, port=443, host="2001:db8::1", path="/")
def test_auth_form_actions(
    action: str, method: str | None, port: int, host: str, path: str
) -> None:
    """Issue 13, F12: the action of an ordinary login form, where the login goes next:
    a URL urllib cannot split (an unclosed IPv6 bracket) raised ValueError."""
    s = session(host=host, port=port, path=path)
    s.first_request()
    form = (
        f"<form{_attrs(method=method, action=action)}>"
        '<input type="text" name="username"/><input type="password" name="password"/></form>'
    )
    doc = (
        f'<config-auth client="vpn" type="auth-request"><auth id="main">{form}</auth></config-auth>'
    )
    try:
        out = s.handle_response_untrusted(HttpResponse(200, "OK", (), doc.encode()))
    except ProtocolError:
        return
    assert isinstance(out, FormPrompt)
    out = s.answer({"username": "u", "password": "p"})
    assert out.path.startswith("/")
    HttpClient().request(out.method, out.path, list(out.headers), out.body)


# --------------------------------------------------------------------------- http


@st.composite
def http_responses(draw: st.DrawFn) -> bytes:
    status = draw(st.one_of(st.sampled_from(["200", "101", "100", "401", "999"]), mutated("200")))
    reason = draw(st.one_of(st.just("OK"), LATIN1))
    lengths = ["5", "5, 5", "5,6", "0", " 5", "+5", "9" * 25]
    length = draw(st.one_of(st.none(), st.sampled_from(lengths), mutated("5")))
    chunked = draw(st.booleans())
    names = ["x-a", "connection", "transfer-encoding", "upgrade", "content-length"]
    headers = draw(st.lists(st.tuples(st.sampled_from(names), LATIN1), max_size=3))
    lines = [f"HTTP/1.1 {status} {reason}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{k}: {v}" for k, v in headers]
    chunks = [b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"f" * 18 + b"\r\n", b"5;x=\xff\r\nhi\r\n"]
    body = draw(st.one_of(st.binary(max_size=20), st.sampled_from(chunks)))
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


@FUZZ
@given(
    data=http_responses(),
    cuts=st.lists(st.integers(0, 200), max_size=3),
    connect=st.booleans(),
    eof=st.booleans(),
)
def test_http_responses(data: bytes, cuts: list[int], connect: bool, eof: bool) -> None:
    client = HttpClient(max_body=100)
    if connect:
        client.request("CONNECT", "/CSCOSSLC/tunnel", [("Host", "vpn.example")])
    else:
        client.request("POST", "/", [("Host", "vpn.example")], b"<x/>")
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    try:
        resp = None
        for a, b in zip(bounds, bounds[1:], strict=False):
            resp = client.receive_data_untrusted(data[a:b])
            if resp is not None:
                break
        if resp is None and eof:
            resp = client.connection_closed()
        if resp is not None:
            assert len(resp.body) <= 100
    except ProtocolError:
        pass


# --------------------------------------------------------------------------- cstp


@st.composite
def cstp_streams(draw: st.DrawFn) -> bytes:
    frames = draw(
        st.lists(
            st.one_of(
                st.builds(
                    lambda t, p, zero, delta: (
                        MAGIC
                        + struct.pack("!HBB", max(0, min(0xFFFF, len(p) + delta)), t, zero)
                        + p
                    ),
                    st.sampled_from([0, 0, 0, 3, 4, 5, 7, 8, 9, 1, 0xFF]),
                    st.one_of(st.just(b""), st.binary(max_size=30)),
                    st.sampled_from([0, 0, 0, 1]),
                    st.sampled_from([0, 0, 0, -1, 1, 20000]),
                ),
                st.binary(max_size=10),
            ),
            max_size=6,
        )
    )
    return b"".join(frames)


@FUZZ
@given(data=cstp_streams(), cut=st.integers(0, 100))
def test_cstp_frames(data: bytes, cut: int) -> None:
    decoder = CstpDecoder()
    try:
        decoder.feed_untrusted(data[:cut])
        decoder.feed_pairs_untrusted(data[cut:])
    except CstpError:
        pass
    s = CstpSession(dpd=30, keepalive=20, now=0.0)
    try:
        packets = s.receive_data_untrusted(data[:cut], 1.0)
        packets += s.receive_data_untrusted(data[cut:], 2.0)
    except CstpError:
        return
    # every DATA payload, empty ones included, goes to the tun through the coalescer
    co = Coalescer()
    for p in [tcp_packet(4, 1, b"x" * 100), *packets]:
        co.add(p)
    co.frames()


# --------------------------------------------------------------------------- tunnel


#: the lab's ocserv answer (X- headers) and what else a server may send
CONNECT_VALUES = [(k, v) for k, v in OCSERV_CONNECT if k.startswith("X-")] + [
    ("X-CSTP-Split-Exclude-IP6", "2001:db8::/32"),
    ("X-CSTP-DNS-IP6", "2001:db8::53"),
    ("X-CSTP-Address", "fda9:4efe:7e3b:3ea::5"),
    ("X-CSTP-Netmask", "fda9:4efe:7e3b:3ea::/64"),
    ("X-CSTP-Session-Timeout-Remaining", "3600"),
    ("X-DTLS-Session-ID", "ab" * 32),
    ("X-DTLS12-CipherSuite", "AES128-GCM-SHA256"),
    ("X-DTLS-MTU", "1300"),
    ("X-DTLS-Content-Encoding", "lzs"),
]


@settings(FUZZ, max_examples=400)
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(range(len(CONNECT_VALUES))).flatmap(
                lambda i: st.tuples(
                    st.just(CONNECT_VALUES[i][0]),
                    st.one_of(st.just(CONNECT_VALUES[i][1]), mutated(CONNECT_VALUES[i][1])),
                )
            ),
            st.sampled_from([1, 1, 1, 2, 40]),  # how many times (list headers have limits)
        ),
        min_size=1,
        max_size=4,
    ),
    replace=st.booleans(),
    drop=st.lists(st.sampled_from([k for k, _ in CONNECT_VALUES]), max_size=2),
    status=st.sampled_from([200] * 8 + [401, 503, 302]),
    reason=LATIN1,
)
def test_connect_headers(
    changes: list[tuple[tuple[str, str], int]],
    replace: bool,
    drop: list[str],
    status: int,
    reason: str,
) -> None:
    """Past the parser too: whatever it accepts goes through the routing policy and
    reaches the supervisor as a TunnelUp its decoder accepts, and the DTLS plan."""
    names = {k for (k, _), _n in changes} if replace else set()
    headers = [(k, v) for k, v in OCSERV_CONNECT if k not in names and k not in drop]
    headers += [(k, v) for (k, v), n in changes for _ in range(n)]
    try:
        config = parse(response(headers, status, reason))
    except (ProtocolError, AuthError):
        return
    plan_dtls(
        config,
        psk=b"\x11" * 32,
        master_secret=b"\x22" * 48,
        base_mtu=1500,
        ipv6_peer=False,
        offered=f"{DEFAULT_CIPHERS}:AES128-SHA",
        offered12=DEFAULT_CIPHERS12,
    )
    try:
        net, _notes = routing_policy(config.net)
    except UnusableConfig:
        return
    up = TunnelUp(server="vpn.example.net", net=net, rekey_time=config.rekey_time, cookie=COOKIE)
    assert FROM_WORKER.decode_untrusted(FROM_WORKER.encode(up)) == up


# --------------------------------------------------------------------------- dtls


_SUITE_IDS = st.one_of(st.sampled_from(sorted(int(x) for x in dc.SUITES)), st.integers(0, 0xFFFF))
_EXTENSIONS = st.one_of(
    st.none(),
    st.lists(
        st.tuples(
            st.sampled_from([0x17, 0xFF01, 0, 48018]),
            st.sampled_from([b"", b"\x00", b"\x01\x00", b"xyz"]),
        ),
        max_size=3,
    ).map(tuple),
)
#: (type, body) of well-formed messages with any field values, and of malformed ones
_MESSAGES = st.one_of(
    st.tuples(
        st.just(hs.HandshakeType.SERVER_HELLO),
        st.builds(
            lambda v, r, sid, suite, comp, ext: hs.push_server_hello(
                hs.ServerHello(v, r, sid, suite, comp, ext)
            ),
            st.sampled_from([dc.DTLS1_2, dc.DTLS_BAD_VER, dc.DTLS1_0, 0]),
            st.binary(min_size=32, max_size=32),
            st.sampled_from([b"", b"\x33" * 32, b"\x44" * 32]),
            _SUITE_IDS,
            st.sampled_from([0, 0, 1]),
            _EXTENSIONS,
        ),
    ),
    st.tuples(
        st.just(hs.HandshakeType.HELLO_VERIFY_REQUEST),
        st.builds(
            lambda v, cookie: hs.push_hello_verify_request(hs.HelloVerifyRequest(v, cookie)),
            st.sampled_from([dc.DTLS1_2, dc.DTLS1_0, dc.DTLS_BAD_VER, 0x0303]),
            st.binary(max_size=255),
        ),
    ),
    st.tuples(
        st.sampled_from(list(hs.HandshakeType) + [99]),
        st.one_of(st.binary(max_size=20), st.just(b""), st.binary(min_size=12, max_size=12)),
    ),
)


@st.composite
def handshake_bodies(draw: st.DrawFn) -> bytes:
    """Handshake fragments of any type, length and offset, whole messages with any
    field values, and framing cut short."""
    frag = st.builds(
        encode_fragment,
        st.sampled_from([0, 1, 2, 3, 11, 12, 14, 16, 20, 99]),
        st.one_of(st.integers(0, 40), st.just(hs.MAX_MESSAGE + 1)),
        st.integers(0, 3),
        st.integers(0, 40),
        st.binary(max_size=40),
    )
    whole = st.builds(
        lambda m, seq: hs.encode_handshake(m[0], seq, m[1]), _MESSAGES, st.integers(0, 2)
    )
    parts = draw(st.lists(st.one_of(frag, whole), max_size=4))
    return b"".join(parts) + draw(st.sampled_from([b"", b"\x02", bytes(11)]))


@FUZZ
@given(body=st.binary(max_size=80), record=handshake_bodies())
def test_dtls_handshake_bodies(body: bytes, record: bytes) -> None:
    for pull in (
        hs.fragments_untrusted,
        hs.pull_client_hello_untrusted,
        hs.pull_hello_verify_request_untrusted,
        hs.pull_server_hello_untrusted,
        hs.pull_server_key_exchange_untrusted,
        hs.pull_client_key_exchange_untrusted,
        hs.pull_finished_untrusted,
    ):
        for raw in (body, record):
            with contextlib.suppress(DtlsError):
                pull(raw)
    asm = hs.MessageAssembler()
    try:
        for f in hs.fragments_untrusted(record):
            asm.add(f)
    except DtlsError:
        pass


def _pair_in(state: str) -> Pair:
    """A client in *state*, its server (the FakeServer) ready to seal records."""
    if state == "resume-wait-ccs":
        suite = dc.CipherSuite.RSA_AES_128_CBC_SHA
        pair = Pair(
            resume_params(suite, dc.DTLS_BAD_VER),
            ServerConfig("resume", suites=(suite,), version=dc.DTLS_BAD_VER),
        )
        pair.client.connect(pair.now)
        for d in pair.client.datagrams_to_send():
            pair.server.receive(d)
        (flight,) = pair.server.datagrams()
        first = records_untrusted(flight)[0]  # the ServerHello only
        pair.client.receive_datagrams_untrusted(
            [encode_record(first.ctype, first.version, 0, first.seq, first.body)], pair.now
        )
        assert pair.client.state is State.WAIT_CCS
        return pair
    pair = Pair(psk_params(), ServerConfig("psk", hello_verify=True))
    if state != "start":
        pair.client.connect(pair.now)
    if state == "established":
        pair.pump()
        assert pair.client.established
    return pair


@st.composite
def dtls_datagrams(draw: st.DrawFn) -> tuple[str, list[tuple[bool, int, int, int, bytes]]]:
    """(state, records): each record sealed by the server (True) or in plaintext."""
    state = draw(st.sampled_from(["start", "hello", "resume-wait-ccs", "established"]))
    records = draw(
        st.lists(
            st.tuples(
                st.booleans(),
                st.sampled_from([20, 21, 22, 23, 24, 0]),
                st.sampled_from([0, 0, 1, 2]),
                st.integers(0, 2**48 - 1),
                st.one_of(
                    st.binary(max_size=30),
                    st.builds(lambda: b""),
                    st.sampled_from([b"\x02\x28", b"\x01\x00", b"\x01", b"\x01\x00\x05"]),
                    handshake_bodies(),
                ),
            ),
            max_size=4,
        )
    )
    return state, records


@FUZZ
@given(case=dtls_datagrams(), burst=st.booleans(), junk=st.binary(max_size=40))
def test_dtls_datagrams_in_every_state(
    case: tuple[str, list[tuple[bool, int, int, int, bytes]]], burst: bool, junk: bytes
) -> None:
    state, records = case
    pair = _pair_in(state)
    server: FakeServer = pair.server
    datagrams = [junk]
    for sealed, ctype, epoch, seq, body in records:
        prot = server.write_prot[1]
        if sealed and prot is not None:
            version = server.version
            datagrams.append(
                encode_record(
                    ctype, version, 1, seq, prot.seal(1 << 48 | seq, ctype, version, body)
                )
            )
        else:
            datagrams.append(encode_record(ctype, dc.DTLS1_2, epoch, seq, body))
    datagrams.append(b"".join(datagrams))
    client: DtlsConnection = pair.client
    if burst:
        client.receive_datagrams_untrusted(datagrams, pair.now)
    else:
        for d in datagrams:
            client.receive_datagrams_untrusted([d], pair.now)
    client.receive_split_untrusted(datagrams, pair.now, 0)  # the data channel's call
    client.handle_timer(pair.now + 10)
    while (event := client.next_event()) is not None:
        if isinstance(event, ConnectionClosed):
            assert isinstance(event.error, DtlsError)


@FUZZ
@given(
    suite=st.sampled_from(sorted(dc.SUITES)),
    body=st.one_of(st.binary(max_size=120), st.integers(0, 8).map(lambda n: bytes(16 * n))),
    seq=st.integers(0, 2**64 - 1),
    ctype=st.integers(0, 255),
    version=st.sampled_from([dc.DTLS1_2, dc.DTLS_BAD_VER, 0]),
)
def test_dtls_record_protection(
    suite: dc.CipherSuite, body: bytes, seq: int, ctype: int, version: int
) -> None:
    info = dc.SUITES[suite]
    keys = dc.key_block(info, info.prf_hash, bytes(48), bytes(32), bytes(32))
    prot = dc.make_protection(info, keys, client_write=False, random=os.urandom)
    with contextlib.suppress(dc.BadRecordMac):
        prot.open_untrusted(seq, ctype, version, body)
    if info.aead is dc.Aead.AES_GCM:  # both implementations (the other is make_protection's)
        for gcm in (dc.GcmProtection, dc.CompiledGcmProtection):
            with contextlib.suppress(dc.BadRecordMac):
                gcm(keys.server_key, keys.server_iv).open_untrusted(seq, ctype, version, body)


@st.composite
def record_bursts(draw: st.DrawFn) -> tuple[int, list[bytes]]:
    """(epoch, datagrams): application-data records of the epoch around a window's edge,
    repeated, of other epochs and types, mutated, and junk."""
    sealer = dc.GcmProtection(b"\x07" * 16, b"salt")
    epoch = draw(st.integers(0, 3))
    datagrams: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["record", "record", "record", "junk", "epoch", "type"]))
        if kind == "junk":
            datagrams.append(draw(st.binary(max_size=40)))
            continue
        seq = draw(st.integers(0, 150) | st.integers(2**48 - 70, 2**48 - 1))
        rec_epoch = epoch + 1 if kind == "epoch" else epoch
        ctype = 22 if kind == "type" else 23
        # plaintexts that start with the data channel's type byte (0), or any other
        plaintext = draw(st.sampled_from([b"", b"\x00", b"\x03"])) + draw(st.binary(max_size=64))
        body = sealer.seal(rec_epoch << 48 | seq, ctype, dc.DTLS1_2, plaintext)
        data = bytearray(encode_record(ctype, dc.DTLS1_2, rec_epoch, seq, body))
        if draw(st.booleans()):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        datagrams += [bytes(data)] * draw(st.integers(1, 2))
    return epoch, datagrams


@FUZZ
@given(
    burst=record_bursts(),
    top=st.integers(-1, 160) | st.integers(2**48 - 100, 2**48 - 1),
    bits=st.integers(0, 2**64 - 1),
    split=st.sampled_from([-1, 0]) | st.integers(0, 255),
)
def test_dtls_record_bursts(
    burst: tuple[int, list[bytes]], top: int, bits: int, split: int
) -> None:
    # The data channel's steady state, both implementations: the same plaintexts (sorted
    # alike by a split byte), the same counts, the same window afterwards
    # (docs/performance.md: differential).
    epoch, datagrams = burst
    results = []
    for prot in (
        dc.GcmProtection(b"\x07" * 16, b"salt"),
        dc.CompiledGcmProtection(b"\x07" * 16, b"salt"),
    ):
        window = ReplayWindow()
        window.restore(top, bits if top >= 0 else 0)
        out: list[bytes] = []
        others: list[bytes] = []
        steps = []
        i = 0
        while i < len(datagrams):
            if split < 0:
                step = prot.open_datagrams_untrusted(datagrams, i, epoch, window, out)
            else:
                step = prot.open_datagrams_untrusted(
                    datagrams, i, epoch, window, out, split, others
                )
            steps.append(step)
            i = step[0] + 1  # the caller's general path takes the one it stopped at
        results.append((out, others, steps, window.position()))
    assert results[0] == results[1]


@FUZZ
@given(case=dtls_datagrams(), junk=st.binary(max_size=40))
def test_dtls_channel(
    case: tuple[str, list[tuple[bool, int, int, int, bytes]]], junk: bytes
) -> None:
    _state, records = case
    server = FakeServer(ServerConfig("psk"))
    channel = DtlsChannel(
        lambda: DtlsConnection(psk_params(), random=os.urandom), ChannelConfig(), 100.0
    )
    for _ in range(5):  # the handshake
        for d in channel.datagrams_to_send():
            server.receive(d)
        for d in server.datagrams():
            channel.receive_datagrams_untrusted([d], 100.0)
    datagrams = [junk]
    for sealed, ctype, epoch, seq, body in records:
        if sealed and server.write_prot[1] is not None:
            server.out.append(server._record(ctype, 1, body))  # authenticated, any content
        else:
            datagrams.append(encode_record(ctype, dc.DTLS1_2, epoch, seq, body))
    channel.receive_datagrams_untrusted(datagrams + server.datagrams(), 100.0)
    for d in [*datagrams, *server.datagrams()]:
        channel.receive_datagrams_untrusted([d], 101.0)


# --------------------------------------------------------------------------- offload


@st.composite
def tun_bursts(draw: st.DrawFn) -> list[bytes]:
    version = draw(st.sampled_from([4, 6]))
    out: list[bytes] = []
    seq = 1000
    for _ in range(draw(st.integers(1, 8))):
        size = draw(st.integers(0, 300))
        packet = tcp_packet(version, seq, bytes(size), ident=seq & 0xFFFF)
        seq += size
        how = draw(st.sampled_from(["as is", "as is", "empty", "cut", "flip", "junk"]))
        if how == "empty":
            packet = b""
        elif how == "cut":
            packet = packet[: draw(st.integers(0, len(packet)))]
        elif how == "flip":
            i = draw(st.integers(0, len(packet) - 1))
            packet = packet[:i] + bytes((packet[i] ^ draw(st.integers(1, 255)),)) + packet[i + 1 :]
        elif how == "junk":
            packet = draw(st.binary(max_size=80))
        out.append(packet)
    return out


@FUZZ
@given(burst=tun_bursts())
def test_tun_coalescer(burst: list[bytes]) -> None:
    # both implementations: the compiled accelerator gives the reference's frames
    assert accel.coalesce is not None
    assert accel.coalesce(burst) == coalesce(burst)
    co = Coalescer()
    for packet in burst:
        co.add(packet)
    frames = co.frame_pieces()
    for pieces in frames:
        assert len(pieces[0]) == VNET_HDR_LEN
        if pieces[0] == PLAIN_HEADER:
            assert len(pieces) == 2  # passed through unchanged
            assert pieces[1] in burst
