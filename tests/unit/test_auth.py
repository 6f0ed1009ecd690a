"""XML aggregate auth against ocserv-shaped documents (PROTOCOL.md §1.2-1.6).

The XML vectors in vectors/ocserv-1.1.6-*.xml are laid out as ocserv 1.1.6
src/worker-auth.c writes them (OC_LOGIN_START, OC_LOGIN_FORM_START,
OC_LOGIN_FORM_INPUT_USER/_PASSWORD/_PASSWORD_CTR, append_group_idx(),
oc_success_msg_head + banner + OC_SUCCESS_MSG_FOOT; pass_msg_failed and
pass_msg_otp from src/auth/common.c).
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.worker.proto.auth import (
    MAX_ROUNDS,
    MAX_XML_BYTES,
    USER_AGENT,
    AuthSession,
    AuthSuccess,
    Credentials,
    HttpRequest,
    parse_config_auth_untrusted,
)
from sepconnect.worker.proto.errors import (
    AccountLocked,
    AuthError,
    AuthFailed,
    NeedMoreInput,
    ProtocolError,
    ServerRefused,
    UnknownGroup,
)
from sepconnect.worker.proto.http import HttpResponse

VECTORS = Path(__file__).parent / "vectors"
AUTH_REQUEST = (VECTORS / "ocserv-1.1.6-auth-request.xml").read_bytes()
AUTH_REQUEST_GROUPS = (VECTORS / "ocserv-1.1.6-auth-request-groups.xml").read_bytes()
SECOND_PASSWORD = (VECTORS / "ocserv-1.1.6-second-password.xml").read_bytes()
LOGIN_FAILED = (VECTORS / "ocserv-1.1.6-login-failed.xml").read_bytes()
SUCCESS = (VECTORS / "ocserv-1.1.6-success.xml").read_bytes()

CONTEXT = "SGVsbG8gc2Vzc2lvbiBpZGVudGlmaWVyIQ=="
COOKIE = "3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs="  # base64 of 32 bytes, 44 chars


def ok(body: bytes, *cookies: str, extra: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    headers = tuple(("set-cookie", c) for c in cookies) + (
        ("content-type", "text/xml"),
        ("content-length", str(len(body))),
        ("x-transcend-version", "1"),
    )
    return HttpResponse(200, "OK", headers + extra, body)


def success_response() -> HttpResponse:
    # Header set of ocserv 1.1.6 post_common_handler().
    return ok(
        SUCCESS,
        f"webvpncontext={CONTEXT}; Secure; HttpOnly",
        f"webvpn={COOKIE}; Secure; HttpOnly",
        "webvpnc=; expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure; HttpOnly",
        "webvpnc=bu:/&p:t&iu:1/&sh:0123456789ABCDEF0123456789ABCDEF01234567; path=/; "
        "Secure; HttpOnly",
        extra=(("connection", "Keep-Alive"),),
    )


def fail401(reason: str = "Authentication failed") -> HttpResponse:
    return HttpResponse(401, reason, (("content-length", "0"),), b"")


def session(
    username: str = "test",
    passwords: tuple[str, ...] = ("test",),
    group: str | None = None,
    *,
    host: str = "vpn.example.net",
    port: int = 443,
    path: str = "/",
) -> AuthSession:
    return AuthSession(
        host=host, port=port, path=path, credentials=Credentials(username, passwords, group)
    )


def xml(req: HttpRequest) -> ET.Element:
    return ET.fromstring(req.body)


def header(req: HttpRequest, name: str) -> str | None:
    return next((v for k, v in req.headers if k.lower() == name.lower()), None)


# -- the init request -----------------------------------------------------


def test_init_request() -> None:
    req = session().first_request()
    assert req.method == "POST"
    assert req.path == "/"
    assert req.new_connection
    assert req.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    root = xml(req)
    assert root.tag == "config-auth"
    assert root.attrib == {"client": "vpn", "type": "init", "aggregate-auth-version": "2"}
    assert [c.tag for c in root] == ["version", "device-id", "group-access"]
    assert root.find("version").get("who") == "vpn"  # type: ignore[union-attr]
    assert root.findtext("device-id") == "linux-64"
    assert root.findtext("group-access") == "https://vpn.example.net/"


def test_init_request_headers() -> None:
    req = session().first_request()
    names = [k for k, _ in req.headers]
    assert names == [
        "Host",
        "User-Agent",
        "Accept",
        "Accept-Encoding",
        "X-Transcend-Version",
        "X-Aggregate-Auth",
        "X-Pad",
        "Content-Type",
        "Content-Length",
    ]
    assert header(req, "Host") == "vpn.example.net"
    assert header(req, "User-Agent") == USER_AGENT
    # ocserv classifies by prefix (worker-http.c); never a bare "AnyConnect".
    assert USER_AGENT.startswith("AnyConnect-compatible OpenConnect VPN Agent")
    assert header(req, "Accept-Encoding") == "identity"
    assert header(req, "X-Transcend-Version") == "1"
    assert header(req, "X-Aggregate-Auth") == "1"
    assert header(req, "Content-Type") == "application/xml; charset=utf-8"
    assert header(req, "Content-Length") == str(len(req.body))
    pad = header(req, "X-Pad")
    assert pad is not None
    assert set(pad) == {"0"}
    assert (len(pad) + len(req.body)) % 64 == 0
    assert 1 <= len(pad) <= 64


def test_init_with_group_port_and_path() -> None:
    req = session(group="group1", port=8443, path="/corp").first_request()
    assert req.path == "/corp"
    assert header(req, "Host") == "vpn.example.net:8443"
    root = xml(req)
    assert root.findtext("group-access") == "https://vpn.example.net:8443/corp"
    # Not in the init: ocserv would echo any name into its option list
    # (worker-auth.c append_group_str), hiding an unknown group.
    assert root.find("group-select") is None


def test_ipv6_literal_host() -> None:
    req = session(host="2001:db8::1", port=4443).first_request()
    assert header(req, "Host") == "[2001:db8::1]:4443"


def test_first_request_only_once() -> None:
    s = session()
    s.first_request()
    with pytest.raises(RuntimeError):
        s.first_request()


@pytest.mark.parametrize("bad", [{"host": "a b"}, {"host": ""}, {"port": 0}, {"path": "/a b"}])
def test_invalid_session_arguments(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"host": "vpn.example.net", "port": 443, "path": "/"}
    args.update(bad)
    with pytest.raises(ValueError):
        AuthSession(credentials=Credentials("u", ("p",)), **args)  # type: ignore[arg-type]


def test_credentials_with_control_characters_rejected() -> None:
    with pytest.raises(ValueError, match="control"):
        session(passwords=("pa\x00ss",))


def test_secrets_not_in_repr() -> None:
    creds = Credentials("alice", ("hunter2",))
    assert "hunter2" not in repr(creds)
    s = AuthSession(host="h", port=443, path="/", credentials=creds)
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST))
    assert isinstance(req, HttpRequest)
    assert b"hunter2" in req.body
    assert "hunter2" not in repr(req)
    done = s.handle_response_untrusted(success_response())
    assert isinstance(done, AuthSuccess)
    assert COOKIE not in repr(done)


# -- the happy paths --------------------------------------------------------


def test_username_password_flow() -> None:
    s = session()
    s.first_request()
    req = s.handle_response_untrusted(
        ok(AUTH_REQUEST, f"webvpncontext={CONTEXT}; Max-Age=300; Secure; HttpOnly")
    )
    assert isinstance(req, HttpRequest)
    assert req.method == "POST"
    assert req.path == "/auth"
    assert not req.new_connection
    assert header(req, "Cookie") == f"webvpncontext={CONTEXT}"
    root = xml(req)
    assert root.attrib["type"] == "auth-reply"
    assert [c.tag for c in root] == ["version", "device-id", "auth"]
    auth = root.find("auth")
    assert auth is not None
    assert [(c.tag, c.text) for c in auth] == [("username", "test"), ("password", "test")]
    assert s.last_message == "Please enter your username."

    done = s.handle_response_untrusted(success_response())
    assert done == AuthSuccess(cookie=COOKIE, banner="Welcome to the test VPN")


def test_two_step_password() -> None:
    s = session(passwords=("secret", "123456"))
    s.first_request()
    first = s.handle_response_untrusted(ok(AUTH_REQUEST))
    assert isinstance(first, HttpRequest)
    second = s.handle_response_untrusted(ok(SECOND_PASSWORD))
    assert isinstance(second, HttpRequest)
    auth = xml(second).find("auth")
    assert auth is not None
    assert [(c.tag, c.text) for c in auth] == [("secondary_password", "123456")]
    assert s.last_message == "Please enter your OTP password."
    assert isinstance(s.handle_response_untrusted(success_response()), AuthSuccess)


def test_second_password_missing_is_need_more_input() -> None:
    s = session(passwords=("secret",))
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST))
    with pytest.raises(NeedMoreInput, match="Password2:.*OTP"):
        s.handle_response_untrusted(ok(SECOND_PASSWORD))


def test_no_password_at_all() -> None:
    s = session(passwords=())
    s.first_request()
    with pytest.raises(NeedMoreInput, match="Password:"):
        s.handle_response_untrusted(ok(AUTH_REQUEST))


def test_special_characters_escaped() -> None:
    # ocserv test user "sp@c/al" with password "!@#$%^&*()<>"; ocserv XML-unescapes.
    s = session("sp@c/al", ("!@#$%^&*()<>",))
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST))
    assert isinstance(req, HttpRequest)
    assert b"<password>!@#$%^&amp;*()&lt;&gt;</password>" in req.body
    auth = xml(req).find("auth")
    assert auth is not None
    assert auth.findtext("password") == "!@#$%^&*()<>"
    assert auth.findtext("username") == "sp@c/al"


def test_empty_password_is_an_answer() -> None:
    s = session("empty", ("",))
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST))
    assert isinstance(req, HttpRequest)
    assert xml(req).findtext("auth/password") in ("", None)


# -- groups ---------------------------------------------------------------------


def test_group_by_value() -> None:
    s = session(group="group1")
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST_GROUPS))
    assert isinstance(req, HttpRequest)
    root = xml(req)
    assert root.findtext("group-select") == "group1"
    assert root.find("auth/group_list") is None  # not inside <auth>
    assert s.pre_login_banner == "Authorised users only"


def test_group_by_label() -> None:
    s = session(group="Second group")
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST_GROUPS))
    assert isinstance(req, HttpRequest)
    assert xml(req).findtext("group-select") == "group2"


def test_group_option_without_value_attribute() -> None:
    s = session(group="(none)")
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST_GROUPS))
    assert isinstance(req, HttpRequest)
    assert xml(req).findtext("group-select") == "(none)"


def test_unknown_group() -> None:
    s = session(group="nosuch")
    s.first_request()
    with pytest.raises(UnknownGroup, match="nosuch.*group1.*group2"):
        s.handle_response_untrusted(ok(AUTH_REQUEST_GROUPS))


def test_no_group_requested_uses_server_default() -> None:
    s = session()
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST_GROUPS))
    assert isinstance(req, HttpRequest)
    assert xml(req).find("group-select") is None


# ocserv 1.1.6 get_auth_handler2() with a client certificate whose OUs are groups
# (cert-group-oid) and no group chosen: a form with the group select alone.
GROUP_ONLY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<config-auth client="vpn" type="auth-request" '
    b'aggregate-auth-version="2">\n<auth id="main">\n<message>Please select your group.'
    b'</message>\n<form method="post" action="/auth">\n<select name="group_list" '
    b'label="Group:">\n<option>engineering</option>\n<option>sales</option>\n</select>\n'
    b"</form></auth>\n</config-auth>"
)


@pytest.mark.parametrize(("wanted", "sent"), [(None, "engineering"), ("sales", "sales")])
def test_a_form_asking_only_for_the_group_gets_one(wanted: str | None, sent: str) -> None:
    # Nothing else to answer, so no server default: the first option, as openconnect.
    s = session(username="", passwords=(), group=wanted)
    s.first_request()
    req = s.handle_response_untrusted(ok(GROUP_ONLY))
    assert isinstance(req, HttpRequest)
    assert xml(req).findtext("group-select") == sent


def test_group_without_select_is_still_sent() -> None:
    # Plain-auth groups from the passwd file are selectable without a select list.
    s = session(group="tost")
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST))
    assert isinstance(req, HttpRequest)
    assert xml(req).findtext("group-select") == "tost"


# -- failures -------------------------------------------------------------------


def test_401_is_auth_failed_with_reason() -> None:
    s = session()
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST))
    with pytest.raises(AuthFailed, match="Authentication failed"):
        s.handle_response_untrusted(fail401())


def test_401_other_reason() -> None:
    s = session()
    s.first_request()
    with pytest.raises(AuthFailed, match="No certificate"):
        s.handle_response_untrusted(fail401("No certificate"))


def test_login_failed_reprompt_is_auth_failed() -> None:
    # ocserv plain module: wrong (or locked: "!" hash) password -> new password
    # form with pass_msg_failed, not a 401 (src/auth/plain.c, MAX_PASSWORD_TRIES).
    s = session(passwords=("wrong", "would-be-otp"))
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST))
    with pytest.raises(AuthFailed, match=r"Login failed\.$") as info:
        s.handle_response_untrusted(ok(LOGIN_FAILED))
    assert not isinstance(info.value, AccountLocked)


def test_locked_reason_text_is_account_locked() -> None:
    s = session()
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST))
    with pytest.raises(AccountLocked, match="locked"):
        s.handle_response_untrusted(fail401("Account locked"))
    assert issubclass(AccountLocked, AuthError)


def test_error_element_after_password_is_failure() -> None:
    body = AUTH_REQUEST.replace(
        b"<message>", b'<error id="88">Account is disabled</error><message>'
    )
    s = session()
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST))
    with pytest.raises(AccountLocked, match="disabled"):
        s.handle_response_untrusted(ok(body))


def test_server_refused_503() -> None:
    s = session()
    s.first_request()
    resp = HttpResponse(
        503, "Service Unavailable", (("x-reason", "Server configuration error"),), b""
    )
    with pytest.raises(ServerRefused, match="503 Server configuration error") as info:
        s.handle_response_untrusted(resp)
    assert info.value.status == 503


def test_redirect_is_refused() -> None:
    s = session()
    s.first_request()
    with pytest.raises(ServerRefused, match="302"):
        s.handle_response_untrusted(HttpResponse(302, "Found", (("location", "https://x/"),), b""))


def test_success_without_cookie() -> None:
    s = session()
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST))
    with pytest.raises(ProtocolError, match="no webvpn"):
        s.handle_response_untrusted(ok(SUCCESS))


@pytest.mark.parametrize(
    "cookie", ["webvpn=a b", 'webvpn="abc"', "webvpn=" + "A" * 5000, "webvpn=a\x7fb"]
)
def test_invalid_webvpn_cookie(cookie: str) -> None:
    s = session()
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST))
    with pytest.raises(ProtocolError, match="invalid webvpn"):
        s.handle_response_untrusted(ok(SUCCESS, cookie))


def test_session_token_fallback() -> None:
    body = SUCCESS.replace(
        b"</config-auth>", b"<session-token>ABCDEF0123</session-token></config-auth>"
    )
    s = session()
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST))
    done = s.handle_response_untrusted(ok(body))
    assert isinstance(done, AuthSuccess)
    assert done.cookie == "ABCDEF0123"


def test_invalid_session_token() -> None:
    body = SUCCESS.replace(
        b"</config-auth>", b"<session-token>AB CD;x</session-token></config-auth>"
    )
    s = session()
    s.first_request()
    with pytest.raises(ProtocolError, match="invalid webvpn"):
        s.handle_response_untrusted(ok(body))


def test_cookie_bookkeeping() -> None:
    s = session(passwords=("a", "b", "c", "d"))
    s.first_request()
    s.handle_response_untrusted(ok(AUTH_REQUEST, "webvpncontext=one; Max-Age=300", "junk"))
    req = s.handle_response_untrusted(ok(SECOND_PASSWORD, "webvpncontext=two", "other=x"))
    assert isinstance(req, HttpRequest)
    assert header(req, "Cookie") == "webvpncontext=two; other=x"
    req2 = s.handle_response_untrusted(
        ok(
            SECOND_PASSWORD.replace(b"secondary_password", b"third"),
            "webvpncontext=; expires=Thu, 01 Jan 1970",
        )
    )
    assert isinstance(req2, HttpRequest)
    assert header(req2, "Cookie") == "other=x"
    req3 = s.handle_response_untrusted(
        ok(SECOND_PASSWORD.replace(b"secondary_password", b"fourth"), "other=x; Max-Age=0")
    )
    assert isinstance(req3, HttpRequest)
    assert header(req3, "Cookie") is None


def test_no_form_no_success() -> None:
    s = session()
    s.first_request()
    body = b'<config-auth client="vpn" type="auth-request"><auth id="main"/></config-auth>'
    with pytest.raises(ProtocolError, match="neither"):
        s.handle_response_untrusted(ok(body))


CERT_REQUEST = b'<config-auth client="vpn" type="auth-request"><client-cert-request/></config-auth>'


def test_client_cert_request_without_a_certificate() -> None:
    s = session()
    s.first_request()
    with pytest.raises(NeedMoreInput, match=r"client certificate.*-c/--certificate"):
        s.handle_response_untrusted(ok(CERT_REQUEST))


def test_client_cert_request_with_a_certificate_starts_over_once() -> None:
    # As openconnect: the init again, on a new connection whose handshake presents the
    # certificate; asked a second time, the server did not accept it.
    s = AuthSession(
        host="vpn.example.com",
        port=443,
        path="/",
        credentials=Credentials(username="", passwords=(), certificate=True),
    )
    first = s.first_request()
    again = s.handle_response_untrusted(ok(CERT_REQUEST))
    assert isinstance(again, HttpRequest)
    assert again.new_connection
    assert (again.method, again.path, again.body) == (first.method, first.path, first.body)
    with pytest.raises(AuthFailed, match="did not accept ours"):
        s.handle_response_untrusted(ok(CERT_REQUEST))


def test_certificate_login_without_a_form() -> None:
    # ocserv with auth = "certificate" answers the init with success at once.
    s = AuthSession(
        host="vpn.example.com",
        port=443,
        path="/",
        credentials=Credentials(username="", passwords=(), certificate=True),
    )
    s.first_request()
    result = s.handle_response_untrusted(success_response())
    assert isinstance(result, AuthSuccess)
    assert result.cookie == COOKIE


def test_unknown_text_field() -> None:
    body = AUTH_REQUEST.replace(b'name="username"', b'name="secondary_username"')
    s = session()
    s.first_request()
    with pytest.raises(NeedMoreInput, match="Username:"):
        s.handle_response_untrusted(ok(body))


def test_password_change_demanded() -> None:
    body = SECOND_PASSWORD.replace(b"secondary_password", b"new_password")
    s = session(passwords=("a", "b"))
    s.first_request()
    with pytest.raises(NeedMoreInput, match="password change"):
        s.handle_response_untrusted(ok(body))


def test_round_limit() -> None:
    s = session(passwords=("p",) * 50)
    s.first_request()
    for _ in range(MAX_ROUNDS - 1):
        s.handle_response_untrusted(ok(SECOND_PASSWORD))
    s.handle_response_untrusted(ok(SECOND_PASSWORD))  # round MAX_ROUNDS still answered
    with pytest.raises(ProtocolError, match="rounds"):
        s.handle_response_untrusted(ok(SECOND_PASSWORD))


# -- forms: hidden fields, opaque, actions ------------------------------------------

CISCO_FORM = b"""<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">
<opaque is-for="sg"><tunnel-group>corp</tunnel-group>
<config-hash>1595829378234</config-hash></opaque>
<auth id="main">
<message>Please enter your username and password.</message>
<form method="post" action="%s">
<input type="hidden" name="tgroup" value="corp" />
<input type="text" name="username" label="Username:" />
<input type="password" name="password" label="Password:" />
<input type="submit" name="Login" value="Logon" />
<select name="realm" label="Realm:"><option value="a">A</option>
<option value="b" selected="true">B</option></select>
</form></auth></config-auth>"""


def cisco(action: str) -> bytes:
    return CISCO_FORM % action.encode()


def test_hidden_opaque_and_other_select() -> None:
    s = session()
    s.first_request()
    req = s.handle_response_untrusted(ok(cisco("/+webvpn+/index.html")))
    assert isinstance(req, HttpRequest)
    assert req.path == "/+webvpn+/index.html"
    root = xml(req)
    assert [c.tag for c in root] == ["version", "device-id", "opaque", "auth"]
    opaque = root.find("opaque")
    assert opaque is not None
    assert opaque.get("is-for") == "sg"
    assert opaque.findtext("tunnel-group") == "corp"
    assert opaque.findtext("config-hash") == "1595829378234"
    auth = root.find("auth")
    assert auth is not None
    assert [(c.tag, c.text) for c in auth] == [
        ("tgroup", "corp"),
        ("username", "test"),
        ("password", "test"),
        ("realm", "b"),
    ]


@pytest.mark.parametrize(
    ("action", "path"),
    [
        ("/auth", "/auth"),
        ("", "/corp/"),
        ("next", "/corp/next"),
        ("/a?x=1", "/a?x=1"),
        ("https://vpn.example.net/login", "/login"),
        ("https://VPN.example.net:443/login", "/login"),
    ],
)
def test_form_actions(action: str, path: str) -> None:
    s = session(path="/corp/")
    s.first_request()
    req = s.handle_response_untrusted(ok(cisco(action)))
    assert isinstance(req, HttpRequest)
    assert req.path == path


@pytest.mark.parametrize(
    "action",
    [
        "https://evil.example/auth",
        "//evil.example/auth",
        "https://vpn.example.net:444/auth",
        "http://vpn.example.net/auth",
        "https://user@vpn.example.net/auth",
        "/a b",
        "https://[x/",  # issue 13, F12: urllib's ValueError, not a ProtocolError, before
        "https://]x[/",
    ],
)
def test_form_action_elsewhere_refused(action: str) -> None:
    s = session()
    s.first_request()
    with pytest.raises(ProtocolError):
        s.handle_response_untrusted(ok(cisco(action)))


def test_form_method_get_refused() -> None:
    body = AUTH_REQUEST.replace(b'method="post"', b'method="get"')
    s = session()
    s.first_request()
    with pytest.raises(ProtocolError, match="method"):
        s.handle_response_untrusted(ok(body))


def test_connection_close_means_new_connection() -> None:
    s = session()
    s.first_request()
    req = s.handle_response_untrusted(ok(AUTH_REQUEST, extra=(("connection", "close"),)))
    assert isinstance(req, HttpRequest)
    assert req.new_connection


@pytest.mark.parametrize("name", [b"a b", b"x&gt;y", b"1abc", b"a:b", b""])
def test_field_names_that_are_not_xml_names(name: bytes) -> None:
    body = AUTH_REQUEST.replace(b'name="password"', b'name="' + name + b'"')
    s = session()
    s.first_request()
    with pytest.raises(ProtocolError, match="name"):
        s.handle_response_untrusted(ok(body))


def test_control_characters_stripped_from_messages() -> None:
    # ESC itself cannot appear in XML 1.0, but the C1 CSI (U+009B) and bidi
    # overrides (U+202E) can; neither may reach a terminal.
    body = AUTH_REQUEST.replace(b"Please enter your username.", b"Hi\xc2\x9b2J there\xe2\x80\xae!")
    s = session()
    s.first_request()
    s.handle_response_untrusted(ok(body))
    assert s.last_message == "Hi2J there!"


# -- hostile XML --------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<config-auth client="vpn" type="auth-request">
<auth id="main"><message>&lol3;</message></auth></config-auth>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<config-auth client="vpn" type="auth-request">
<auth id="main"><message>&xxe;</message></auth></config-auth>"""

PLAIN_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE config-auth SYSTEM "http://example.invalid/x.dtd">
<config-auth client="vpn" type="complete"><auth id="success"/></config-auth>"""

INTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY e "x">]><config-auth><auth id="success"/></config-auth>"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BILLION_LAUGHS, "Forbidden"),
        (EXTERNAL_ENTITY, "Forbidden"),
        (PLAIN_DTD, "Forbidden"),
        (INTERNAL_ENTITY, "Forbidden"),
        (AUTH_REQUEST[:-20], "Malformed"),
        (b"", "Empty"),
        (b"  \n", "Empty"),
        (b"<html><body>Hello</body></html>", "Unexpected XML"),
        (b"not xml at all", "Malformed"),
        (AUTH_REQUEST.replace(b"username.", b"user\xffname."), "UTF-8"),
        (b'<?xml version="1.0" encoding="ISO-8859-1"?><config-auth>\xe9</config-auth>', "UTF-8"),
        (b"<config-auth>" + b"<a>" * 40 + b"</a>" * 40 + b"</config-auth>", "nested"),
        (b"<config-auth>" + b" " * MAX_XML_BYTES + b"</config-auth>", "larger"),
        (b"<config-auth>\x00</config-auth>", "Malformed"),
    ],
)
def test_hostile_xml(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_config_auth_untrusted(body)
    s = session()
    s.first_request()
    with pytest.raises(ProtocolError):
        s.handle_response_untrusted(ok(body))


def test_parse_document_fields() -> None:
    doc = parse_config_auth_untrusted(AUTH_REQUEST_GROUPS)
    assert doc.type == "auth-request"
    assert doc.auth_id == "main"
    assert doc.banner == "Authorised users only"
    assert doc.message == "Please enter your username."
    assert doc.form is not None
    assert doc.form.action == "/auth"
    kinds = [(f.kind, f.name) for f in doc.form.fields]
    assert kinds == [("text", "username"), ("password", "password"), ("select", "group_list")]
    select = doc.form.fields[2]
    assert [(o.value, o.label) for o in select.options] == [
        ("group2", "Second group"),
        ("(none)", "(none)"),
        ("group1", "group1"),
        ("group3", "Group 3"),
    ]
    done = parse_config_auth_untrusted(SUCCESS)
    assert (done.type, done.auth_id, done.banner, done.form) == (
        "complete",
        "success",
        "Welcome to the test VPN",
        None,
    )


XML_PIECES = [
    b"<config-auth>",
    b"</config-auth>",
    b'<auth id="main">',
    b'<auth id="success">',
    b"</auth>",
    b'<form method="post" action="/auth">',
    b"</form>",
    b'<input type="password" name="password"/>',
    b'<input type="text" name="username"/>',
    b'<input type="hidden" name="h" value="v"/>',
    b'<select name="group_list"><option value="g">G</option></select>',
    b"<opaque><x>1</x></opaque>",
    b"<message>hi</message>",
    b"<banner>b</banner>",
    b"<error>e</error>",
    b"<session-token>tok</session-token>",
    b"<client-cert-request/>",
    b"&amp;",
    b"&lol;",
    b"<!DOCTYPE x>",
    b"\xff",
]


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(st.one_of(st.sampled_from(XML_PIECES), st.binary(max_size=12)), max_size=14),
    status=st.sampled_from([200, 200, 200, 401, 403, 500]),
    cookie=st.sampled_from([None, f"webvpn={COOKIE}", "webvpn=", "webvpn=a;b", "bad"]),
    group=st.sampled_from([None, "g", "x"]),
)
def test_fuzz_handle_response_only_declared_errors(
    pieces: list[bytes], status: int, cookie: str | None, group: str | None
) -> None:
    body = b"".join(pieces)
    s = session(passwords=("a",), group=group)
    s.first_request()
    headers = (("set-cookie", cookie),) if cookie else ()
    try:
        out = s.handle_response_untrusted(HttpResponse(status, "R", headers, body))
    except (AuthError, ProtocolError):
        return
    if isinstance(out, HttpRequest):
        ET.fromstring(out.body)  # whatever we send back is well-formed XML
        assert out.method == "POST"
        assert out.path.startswith("/")
    else:
        assert out.cookie


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_parse_only_protocol_error(body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_config_auth_untrusted(body)


@given(st.text())
def test_escape_and_quoteattr_match_the_standard_library(text: str) -> None:
    from xml.sax.saxutils import escape as std_escape
    from xml.sax.saxutils import quoteattr as std_quoteattr

    from sepconnect.worker.proto.auth import escape, quoteattr

    assert escape(text) == std_escape(text)
    assert quoteattr(text) == std_quoteattr(text)
