"""HTTP/1.1 client over h11: requests, responses in pieces, CONNECT, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.worker.proto.errors import ProtocolError
from sepconnect.worker.proto.http import HttpClient, HttpResponse

AUTH_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<config-auth client="vpn" type="auth-request"/>'
)

# Shape of ocserv 1.1.6 get_auth_handler2() output (worker-auth.c): status,
# Set-Cookie, Content-Type, Content-Length, X-Transcend-Version, OWASP headers.
AUTH_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Set-Cookie: webvpncontext=00112233445566778899aabbccddeeff; Max-Age=300; Secure; HttpOnly\r\n"
    b"Content-Type: text/xml\r\n"
    b"Content-Length: %d\r\n"
    b"X-Transcend-Version: 1\r\n"
    b"Strict-Transport-Security: max-age=31536000 ; includeSubDomains\r\n"
    b"X-Frame-Options: deny\r\n"
    b"\r\n" % len(AUTH_BODY)
) + AUTH_BODY

CSTP_BYTES = b"STF\x01\x00\x00\x07\x00STF\x01\x00\x14\x00\x00" + bytes(20)

CONNECT_RESPONSE = (
    b"HTTP/1.1 200 CONNECTED\r\n"
    b"X-CSTP-Version: 1\r\n"
    b"X-CSTP-Address: 198.18.1.23\r\n"
    b"X-CSTP-MTU: 1390\r\n"
    b"\r\n"
)


def _post(client: HttpClient) -> bytes:
    return client.request("POST", "/", [("Host", "vpn.example"), ("Content-Length", "3")], b"abc")


def test_request_bytes_keep_order_and_case() -> None:
    client = HttpClient()
    out = client.request(
        "POST",
        "/auth",
        [("Host", "vpn.example:8443"), ("User-Agent", "UA"), ("X-Aggregate-Auth", "1")],
        b"<x/>",
    )
    assert out == (
        b"POST /auth HTTP/1.1\r\nHost: vpn.example:8443\r\nUser-Agent: UA\r\n"
        b"X-Aggregate-Auth: 1\r\nContent-Length: 4\r\n\r\n<x/>"
    )


def test_connect_request_bytes() -> None:
    client = HttpClient()
    out = client.request(
        "CONNECT", "/CSCOSSLC/tunnel", [("Host", "vpn.example"), ("X-CSTP-Version", "1")]
    )
    assert (
        out
        == b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: vpn.example\r\nX-CSTP-Version: 1\r\n\r\n"
    )


def test_invalid_request_header_is_value_error() -> None:
    with pytest.raises(ValueError, match="invalid HTTP request"):
        HttpClient().request("GET", "/", [("Host", "a\r\nEvil: 1")])


def test_response_in_pieces_every_boundary() -> None:
    for cut in range(0, len(AUTH_RESPONSE) + 1, 7):
        client = HttpClient()
        _post(client)
        first = client.receive_data_untrusted(AUTH_RESPONSE[:cut])
        if cut < len(AUTH_RESPONSE):
            assert first is None
            resp = client.receive_data_untrusted(AUTH_RESPONSE[cut:])
        else:
            resp = first
        assert resp is not None
        assert resp.status == 200
        assert resp.reason == "OK"
        assert resp.body == AUTH_BODY
        assert resp.header("Content-Type") == "text/xml"
        assert (
            resp.header(
                "set-cookie",
            )
            is not None
        )
        assert resp.headers[0][0] == "set-cookie"  # lowercased, order kept
        assert client.reuse()


def test_byte_by_byte() -> None:
    client = HttpClient()
    _post(client)
    resp = None
    for i in range(len(AUTH_RESPONSE)):
        assert resp is None
        resp = client.receive_data_untrusted(AUTH_RESPONSE[i : i + 1])
    assert resp is not None
    assert resp.body == AUTH_BODY


def test_header_helpers() -> None:
    resp = HttpResponse(200, "OK", (("set-cookie", "a=1"), ("x", "y"), ("set-cookie", "b=2")), b"")
    assert resp.header("SET-COOKIE") == "a=1"
    assert resp.header_all("Set-Cookie") == ["a=1", "b=2"]
    assert resp.header("missing") is None
    assert resp.header_all("missing") == []


def test_keep_alive_second_request() -> None:
    client = HttpClient()
    _post(client)
    assert client.receive_data_untrusted(AUTH_RESPONSE) is not None
    assert client.reuse()
    out = _post(client)
    assert out.startswith(b"POST / HTTP/1.1\r\n")
    assert not client.reuse()  # outstanding
    assert client.receive_data_untrusted(AUTH_RESPONSE) is not None


def test_connection_close_means_no_reuse() -> None:
    client = HttpClient()
    _post(client)
    resp = client.receive_data_untrusted(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    assert resp is not None
    assert resp.status == 200
    assert not client.reuse()
    with pytest.raises(RuntimeError):
        _post(client)


def test_http10_response_means_no_reuse() -> None:
    client = HttpClient()
    _post(client)
    resp = client.receive_data_untrusted(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert resp is not None
    assert not client.reuse()


def test_connect_with_trailing_cstp_bytes() -> None:
    client = HttpClient()
    client.request("CONNECT", "/CSCOSSLC/tunnel", [("Host", "vpn.example")])
    resp = client.receive_data_untrusted(CONNECT_RESPONSE + CSTP_BYTES)
    assert resp is not None
    assert resp.status == 200
    assert resp.reason == "CONNECTED"
    assert resp.header("x-cstp-mtu") == "1390"
    assert resp.body == b""
    assert client.trailing_data == CSTP_BYTES
    assert client.switched
    assert not client.reuse()
    with pytest.raises(RuntimeError):
        client.receive_data_untrusted(b"more")
    assert client.connection_closed() is None


def test_connect_in_pieces_trailing_only_from_last_piece() -> None:
    client = HttpClient()
    client.request("CONNECT", "/CSCOSSLC/tunnel", [("Host", "vpn.example")])
    assert client.receive_data_untrusted(CONNECT_RESPONSE[:-1]) is None
    resp = client.receive_data_untrusted(CONNECT_RESPONSE[-1:] + CSTP_BYTES[:3])
    assert resp is not None
    assert resp.status == 200
    assert client.trailing_data == CSTP_BYTES[:3]


def test_connect_401_without_length_completed_by_eof() -> None:
    # ocserv cookie_authenticate_or_exit() writes
    # "HTTP/1.1 401 Cookie is not acceptable\r\n\r\n" and closes.
    client = HttpClient()
    client.request("CONNECT", "/CSCOSSLC/tunnel", [("Host", "vpn.example")])
    assert client.receive_data_untrusted(b"HTTP/1.1 401 Cookie is not acceptable\r\n\r\n") is None
    resp = client.connection_closed()
    assert resp is not None
    assert (resp.status, resp.reason, resp.body) == (401, "Cookie is not acceptable", b"")
    assert not client.switched


def test_connect_503_x_reason() -> None:
    client = HttpClient()
    client.request("CONNECT", "/CSCOSSLC/tunnel", [("Host", "vpn.example")])
    client.receive_data_untrusted(
        b"HTTP/1.1 503 Service Unavailable\r\nX-Reason: Server configuration error\r\n\r\n"
    )
    resp = client.connection_closed()
    assert resp is not None
    assert resp.status == 503
    assert resp.header("x-reason") == "Server configuration error"


def test_eof_mid_headers_is_protocol_error() -> None:
    client = HttpClient()
    _post(client)
    client.receive_data_untrusted(AUTH_RESPONSE[:30])
    with pytest.raises(ProtocolError, match="closed"):
        client.connection_closed()


def test_eof_mid_body_is_protocol_error() -> None:
    client = HttpClient()
    _post(client)
    client.receive_data_untrusted(AUTH_RESPONSE[:-5])
    with pytest.raises(ProtocolError):
        client.connection_closed()


def test_eof_without_any_response() -> None:
    client = HttpClient()
    _post(client)
    with pytest.raises(ProtocolError):
        client.connection_closed()


def test_eof_when_idle_is_fine() -> None:
    assert HttpClient().connection_closed() is None


def test_oversize_body_by_content_length() -> None:
    client = HttpClient(max_body=100)
    _post(client)
    with pytest.raises(ProtocolError, match="exceeds 100"):
        client.receive_data_untrusted(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n")


def test_oversize_body_chunked() -> None:
    client = HttpClient(max_body=100)
    _post(client)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"40\r\n" + b"x" * 64 + b"\r\n"
    assert client.receive_data_untrusted(head + chunk) is None
    with pytest.raises(ProtocolError, match="exceeds 100"):
        client.receive_data_untrusted(chunk)


def test_oversize_body_read_until_close() -> None:
    client = HttpClient(max_body=100)
    _post(client)
    client.receive_data_untrusted(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 60)
    with pytest.raises(ProtocolError, match="exceeds"):
        client.receive_data_untrusted(b"x" * 60)


def test_oversize_headers() -> None:
    client = HttpClient(max_header=1024)
    _post(client)
    with pytest.raises(ProtocolError):
        client.receive_data_untrusted(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 2000)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
    ],
)
def test_malformed_responses(raw: bytes) -> None:
    client = HttpClient()
    _post(client)
    with pytest.raises(ProtocolError, match="Malformed"):
        client.receive_data_untrusted(raw)


def test_data_without_request_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="without a pending"):
        HttpClient().receive_data_untrusted(b"HTTP/1.1 200 OK\r\n\r\n")


def test_extra_data_after_response() -> None:
    client = HttpClient()
    _post(client)
    assert client.receive_data_untrusted(AUTH_RESPONSE) is not None
    with pytest.raises(ProtocolError):
        client.receive_data_untrusted(b"junk")


def test_informational_responses_skipped_but_bounded() -> None:
    client = HttpClient()
    _post(client)
    resp = client.receive_data_untrusted(b"HTTP/1.1 100 Continue\r\n\r\n" + AUTH_RESPONSE)
    assert resp is not None
    assert resp.status == 200
    client = HttpClient()
    _post(client)
    with pytest.raises(ProtocolError, match="1xx"):
        client.receive_data_untrusted(b"HTTP/1.1 100 Continue\r\n\r\n" * 20)


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda cut, junk: AUTH_RESPONSE[:cut] + junk,
            st.integers(0, len(AUTH_RESPONSE)),
            st.binary(max_size=40),
        ),
    ),
    connect=st.booleans(),
    eof=st.booleans(),
)
def test_fuzz_only_protocol_error(data: bytes, connect: bool, eof: bool) -> None:
    client = HttpClient(max_body=200)
    if connect:
        client.request("CONNECT", "/CSCOSSLC/tunnel", [("Host", "vpn.example")])
    else:
        _post(client)
    try:
        resp = client.receive_data_untrusted(data)
        if resp is None and eof:
            resp = client.connection_closed()
        if resp is not None:
            assert 100 <= resp.status <= 999
            assert len(resp.body) <= 200
    except ProtocolError:
        pass
