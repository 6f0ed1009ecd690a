"""worker/connect.py: refusals versus network failures, the driver's HTTP exchange, and
the URL's path and query on the wire.

ocserv 1.1.6 refuses with an HTTP answer and then a TLS access_denied alert (no
close_notify). Over ``max-same-clients`` it does so on the CONNECT that follows a
successful login: ``HTTP/1.1 401 Cookie is not acceptable`` with no Content-Length,
then the alert (seen in the lab; openconnect prints that status line and exits 2).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from messages import start_message
from OpenSSL import SSL
from test_tunnel import parse

from sepconnect.worker.connect import (
    Server,
    SessionFailure,
    _as_refusal,
    _Connection,
    _failure_from,
    open_tunnel,
    server_of,
)
from sepconnect.worker.io.tls import AccessDenied, TlsError, TlsStream, TrustConfig, Unreachable
from sepconnect.worker.proto import errors
from sepconnect.worker.proto.auth import AuthSession, FormPrompt, HttpRequest
from sepconnect.worker.proto.http import HttpClient, HttpResponse
from sepconnect.worker.proto.tunnel import build_connect_request

OCSERV_401 = b"HTTP/1.1 401 Cookie is not acceptable\r\n\r\n"
SERVER = Server(host="198.18.1.1", port=443, path="/", address="198.18.1.1")


class FakeStream:
    """What _Connection uses of a TlsStream: the reads are scripted."""

    def __init__(self, reads: list[bytes | Exception]) -> None:
        self.reads: Iterator[bytes | Exception] = iter(reads)
        self.sent: list[bytes] = []
        self.closed = False

    def send_all(self, data: bytes) -> None:
        self.sent.append(data)

    def recv_some(self) -> bytes:
        item = next(self.reads)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def _connection(stream: FakeStream) -> _Connection:
    conn = _Connection(SERVER, TrustConfig(pins=(), ca_pem=None))
    conn.stream = stream  # type: ignore[assignment]
    return conn


CONNECT = HttpRequest("CONNECT", "/CSCOSSLC/tunnel", (("Host", "198.18.1.1"),), b"", False)
DENIED = AccessDenied("receive failed: tlsv1 alert access denied")


def test_the_alert_ends_a_close_delimited_answer() -> None:
    stream = FakeStream([OCSERV_401, DENIED])
    conn = _connection(stream)
    resp = conn.exchange(CONNECT)
    assert (resp.status, resp.reason) == (401, "Cookie is not acceptable")
    assert stream.closed
    assert conn.stream is None
    with pytest.raises(errors.CookieRejected) as info:
        parse(resp)
    assert info.value.reason == "HTTP 401 Cookie is not acceptable"


def test_the_alert_alone_is_raised() -> None:
    conn = _connection(FakeStream([DENIED]))
    with pytest.raises(AccessDenied):
        conn.exchange(CONNECT)


def test_the_alert_inside_a_response_head_is_raised() -> None:
    conn = _connection(FakeStream([b"HTTP/1.1 401 Cookie", DENIED]))
    with pytest.raises(AccessDenied):
        conn.exchange(CONNECT)


def test_other_tls_errors_are_not_read_as_a_close() -> None:
    conn = _connection(FakeStream([OCSERV_401, TlsError("receive failed: bad record mac")]))
    with pytest.raises(TlsError, match="bad record mac"):
        conn.exchange(CONNECT)


def _cookie_401() -> errors.CookieRejected:
    client = HttpClient()
    client.request("CONNECT", "/CSCOSSLC/tunnel", [("Host", "h")])
    client.receive_data_untrusted(OCSERV_401)
    resp = client.connection_closed()
    assert isinstance(resp, HttpResponse)
    with pytest.raises(errors.CookieRejected) as info:
        parse(resp)
    return info.value


def _failure(exc: Exception, *, resuming: bool) -> SessionFailure:
    return _failure_from(_as_refusal(exc, resuming=resuming))


def test_fresh_login_refused_on_connect_is_an_auth_failure() -> None:
    failure = _failure(_cookie_401(), resuming=False)
    assert failure.kind == "auth_failed"  # exit code 3, not 7 (unreachable) or 11
    assert failure.message == (
        "the server refused the login (HTTP 401 Cookie is not acceptable): "
        "it may allow only one session per user (max-same-clients)"
    )


def test_fresh_login_refused_by_an_alert_is_an_auth_failure() -> None:
    failure = _failure(DENIED, resuming=False)
    assert failure.kind == "auth_failed"
    assert failure.message == (
        "the server refused the login (access denied): "
        "it may allow only one session per user (max-same-clients)"
    )


def test_a_kept_cookie_refused_is_still_a_rejected_cookie() -> None:
    by_alert = _failure(DENIED, resuming=True)
    assert by_alert.kind == "cookie_rejected"
    by_status = _failure(_cookie_401(), resuming=True)
    assert by_status.kind == "cookie_rejected"
    assert "Cookie is not acceptable" in by_status.message


@pytest.mark.parametrize("resuming", [False, True])
def test_network_failures_stay_unreachable(resuming: bool) -> None:
    for exc in (Unreachable("cannot connect"), TlsError("receive failed: Connection reset")):
        assert _failure(exc, resuming=resuming).kind == "unreachable"


def test_wrong_password_stays_auth_failed() -> None:
    exc = errors.AuthFailed("Login rejected by server: Authentication failed")
    failure = _failure(exc, resuming=False)
    assert (failure.kind, failure.message) == ("auth_failed", str(exc))


class _DeniedConnection:
    def recv(self, size: int) -> bytes:
        raise SSL.Error([("SSL routines", "", "tlsv1 alert access denied")])


class _BrokenConnection:
    def recv(self, size: int) -> bytes:
        raise SSL.Error([("SSL routines", "", "decryption failed or bad record mac")])


def test_tls_stream_tells_the_access_denied_alert_apart() -> None:
    stream = TlsStream.__new__(TlsStream)
    stream._records = None  # the fake connections below are not OpenSSL's
    for read in (stream.recv_nowait, stream.recv_buffered):
        stream.conn = _DeniedConnection()  # type: ignore[assignment]
        with pytest.raises(AccessDenied, match="access denied"):
            read()
        stream.conn = _BrokenConnection()  # type: ignore[assignment]
        with pytest.raises(TlsError) as info:
            read()
        assert not isinstance(info.value, AccessDenied)


# --------------------------------------------------------------------------- the URL's query

VECTORS = Path(__file__).parent / "vectors"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://198.18.1.1/?secret", "/?secret"),
        ("https://198.18.1.1?secret", "/?secret"),
        ("https://198.18.1.1:8443/group?a=1&b=%20x#fragment", "/group?a=1&b=%20x"),
        ("https://198.18.1.1/group", "/group"),
        ("https://198.18.1.1", "/"),
    ],
)
def test_the_server_keeps_the_path_and_query(url: str, path: str) -> None:
    assert server_of(url, ipaddress.ip_address("198.18.1.1")).path == path


def _auth(url: str) -> AuthSession:
    server = server_of(url, ipaddress.ip_address("198.18.1.1"))
    return AuthSession(host=server.host, port=server.port, path=server.path)


def _answered(auth: AuthSession, resp: HttpResponse) -> HttpRequest:
    form = auth.handle_response_untrusted(resp)
    assert isinstance(form, FormPrompt)
    return auth.answer({"username": "test", "password": "test123"})


def _wire(req: HttpRequest) -> bytes:
    return HttpClient().request(req.method, req.path, list(req.headers), req.body)


def _form(action: str | None) -> HttpResponse:
    body = (VECTORS / "ocserv-1.1.6-auth-request.xml").read_bytes()
    if action is None:
        body = body.replace(b' action="/auth"', b"")
    return HttpResponse(200, "OK", (("content-type", "text/xml"),), body)


def test_the_first_request_carries_the_query() -> None:
    auth = _auth("https://198.18.1.1/?secret&x=1")
    wire = _wire(auth.first_request())
    assert wire.startswith(b"POST /?secret&x=1 HTTP/1.1\r\nHost: 198.18.1.1\r\n")
    # openconnect sends the whole URL as the group-access too
    assert b"<group-access>https://198.18.1.1/?secret&amp;x=1</group-access>" in wire


def test_a_form_action_replaces_the_query_and_no_action_keeps_it() -> None:
    auth = _auth("https://198.18.1.1/?secret")
    auth.first_request()
    to_action = _answered(auth, _form("/auth"))
    assert _wire(to_action).startswith(b"POST /auth HTTP/1.1\r\n")
    auth = _auth("https://198.18.1.1/?secret")
    auth.first_request()
    same_url = _answered(auth, _form(None))
    assert _wire(same_url).startswith(b"POST /?secret HTTP/1.1\r\n")


def test_connect_keeps_its_fixed_path() -> None:
    # ocserv 1.1.6 answers "CONNECT /CSCOSSLC/tunnel?secret" with "404 Not found" (lab)
    req = build_connect_request(
        host="198.18.1.1", port=443, cookie="c" * 44, hostname="h", base_mtu=1500, mtu=1390
    )
    assert _wire(req).startswith(b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n")


def test_an_unusable_query_is_a_clear_error() -> None:
    start = start_message("https://198.18.1.1/?a b", hostname="h")
    with pytest.raises(SessionFailure) as info:  # before anything is sent
        open_tunnel(start)
    assert info.value.kind == "error"
    assert "invalid URL path '/?a b'" in info.value.message


NOT_FOUND = HttpResponse(404, "Not found", (("content-length", "0"),), b"")


def test_a_404_to_the_init_post_asks_again_with_get() -> None:
    # ocserv 1.1.6: "POST /?secret" is 404 (POST handlers match the exact path), while
    # "GET /?secret" gets the login form (seen in the lab; openconnect does the same)
    auth = _auth("https://198.18.1.1/?secret")
    auth.first_request()
    get = auth.handle_response_untrusted(NOT_FOUND)
    assert isinstance(get, HttpRequest)
    wire = _wire(get)
    assert wire.startswith(b"GET /?secret HTTP/1.1\r\nHost: 198.18.1.1\r\n")
    assert wire.endswith(b"\r\n\r\n")
    assert b"Content-Length" not in wire
    assert b"X-Pad" not in wire
    post = _answered(auth, _form("/auth"))
    assert _wire(post).startswith(b"POST /auth HTTP/1.1\r\n")


def test_only_the_first_404_is_retried() -> None:
    auth = _auth("https://198.18.1.1/?secret")
    auth.first_request()
    auth.handle_response_untrusted(NOT_FOUND)
    with pytest.raises(errors.ServerRefused, match="404"):
        auth.handle_response_untrusted(NOT_FOUND)
    auth = _auth("https://198.18.1.1/")
    auth.first_request()
    _answered(auth, _form("/auth"))
    with pytest.raises(errors.ServerRefused, match="404"):
        auth.handle_response_untrusted(NOT_FOUND)
