"""AnyConnect XML "aggregate auth" (PROTOCOL.md §1.2-1.6, §1.9), sans-I/O.

The exchange, as ocserv runs it:

1. ``POST <path>`` with an XML ``init`` document -> ``200`` + ``auth-request``
   form (username, password, optional ``group_list`` select). *path* is the URL's
   path and query as given; ocserv answers a POST to a path with a query with
   ``404``, and then ``GET <path>`` brings the same form (as openconnect does).
2. ``POST <form action>`` with an ``auth-reply`` answering the form (and
   ``<group-select>`` when a group was asked for) -> either
   another ``auth-request`` (second password, OTP, or ``Login failed.`` after a
   wrong password), ``401 <reason>`` (failure; ocserv then closes the
   connection), or ``200`` + ``<auth id="success">`` with the session cookie in
   ``Set-Cookie: webvpn=...``.

:class:`AuthSession` is the client side of that loop: it returns the next
:class:`HttpRequest` for the driver to send, :class:`AuthSuccess`, or a
:class:`FormPrompt`: a form with fields someone must answer (text, password,
select). The session answers hidden fields itself and knows no secret: the driver
obtains the answers (the worker asks the supervisor, which holds the passwords,
the one-time-code secret and the terminal) and passes them to
:meth:`AuthSession.answer`. A form for single sign-on in a web browser (SAML
``sso-v2``) raises :class:`NeedMoreInput` with a message naming
``--cookie-on-stdin``.

Server XML is parsed with defusedxml (no DTDs, no entities, no external
references), at most :data:`MAX_XML_BYTES` bytes and :data:`MAX_XML_DEPTH`
levels deep; anything else raises :class:`ProtocolError`.

Wrong passwords and locked accounts on ocserv 1.1.6: the plain module answers
a wrong password (and a locked account, whose ``ocpasswd -l`` hash starts with
``!`` and so never matches) with a new password form whose message is
``Login failed.`` (twice), and only the third time with ``401 Authentication
failed``. Re-sending a password there would be wrong and earns ban points, so
a form that says ``Login failed`` (or carries an ``<error>``) after we sent a
password raises :class:`AuthFailed` at once. See errors.AccountLocked.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urljoin, urlsplit

import defusedxml.ElementTree as _defused_et  # type: ignore[import-untyped]

from sepconnect.ipc.session_limits import FORM_ID, FORM_NAME, NOT_PRINTABLE
from sepconnect.worker.proto.errors import (
    AccountLocked,
    AuthFailed,
    NeedMoreInput,
    ProtocolError,
    ServerRefused,
)
from sepconnect.worker.proto.http import HttpResponse
from sepconnect.worker.proto.identity import (
    CLIENT_VERSION,
    DEFAULT_PLATFORM,
    USER_AGENT,
    ClientIdentity,
)

__all__ = [
    "CLIENT_VERSION",
    "DEVICE_ID",
    "MAX_ROUNDS",
    "MAX_XML_BYTES",
    "MAX_XML_DEPTH",
    "USER_AGENT",
    "AuthDocument",
    "AuthForm",
    "AuthSession",
    "AuthSuccess",
    "FormField",
    "FormOption",
    "FormPrompt",
    "HttpRequest",
    "format_host_header",
    "parse_config_auth_untrusted",
]

#: ocserv classifies clients by User-Agent prefix (PROTOCOL.md §1.2):
#: "AnyConnect-compatible OpenConnect" -> OpenConnect (IPv6 routes and DNS,
#: modern XML); a bare "AnyConnect..." would be treated as Cisco's client.
#: --useragent, --version-string and --os change them (identity.py).
DEVICE_ID: Final = DEFAULT_PLATFORM

MAX_XML_BYTES: Final = 256 * 1024
MAX_XML_DEPTH: Final = 32
#: Bound on request/response rounds of one login, against server loops.
MAX_ROUNDS: Final = 10
_MAX_FIELDS: Final = 32
_MAX_OPTIONS: Final = 256
_MAX_COOKIES: Final = 32
_MAX_COOKIE_VALUE: Final = 4096
_MAX_PATH: Final = 2048
_MAX_TEXT: Final = 4096  # user-visible strings (banner, message) are cut here

# Form field names become XML element names in our reply: accept only a
# conservative subset of XML names so nothing can break out of the element.
_XML_NAME = re.compile(FORM_NAME)
_FORM_ID = re.compile(FORM_ID)
_MAX_LABEL = 256
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
# Cookie values: printable ASCII without separators that would break our
# Cookie header (RFC 6265 cookie-octet, plus nothing else).
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_PATH_CHARS = re.compile(r"[\x21-\x7e]+")
_NON_POSITIVE = re.compile(r"-[0-9]{1,20}|0+")
# Characters XML 1.0 cannot carry at all (we refuse them in credentials).
_XML_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


# xml.sax.saxutils.escape/quoteattr, here because importing xml.sax.saxutils pulls
# in urllib.request and http.client (~10 ms of the worker's start-up, on the connect path).
def escape(data: str) -> str:
    return data.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")


def quoteattr(data: str) -> str:
    data = escape(data).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in data:
        return f'"{data}"'
    if "'" not in data:
        return f"'{data}'"
    return '"{}"'.format(data.replace('"', "&quot;"))


# Control characters stripped from text shown to users (terminal escapes etc.).
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LOCKED = re.compile(r"\b(locked|disabled)\b", re.IGNORECASE)

# Password-type fields that openconnect sends back as <password>.
_RENAMED_TO_PASSWORD: Final = frozenset({"answer", "whichpin"})
#: The select whose answer goes into ``<group-select>`` (openconnect's authgroup).
GROUP_FIELD: Final = "group_list"
SSO_MESSAGE: Final = (
    "the server asks for single sign-on (SAML) in a web browser, which sepconnect does not "
    "do: log in with a client that can (such as openconnect --authenticate), then connect "
    "with its cookie: sepconnect connect --cookie-on-stdin"
)


# ---------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request for the driver to send.

    *new_connection* is True when the request must go on a fresh TLS
    connection (the first request of a login, or the server said
    ``Connection: close``). The driver must also open a new connection when
    its HttpClient reports ``reuse() == False``.
    """

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    new_connection: bool

    def __repr__(self) -> str:  # bodies and cookies carry secrets
        return (
            f"HttpRequest({self.method} {self.path}, {len(self.body)} body bytes, "
            f"new_connection={self.new_connection})"
        )


@dataclass(frozen=True, slots=True)
class AuthSuccess:
    """Login done. *cookie* is the webvpn cookie value (a secret)."""

    cookie: str
    banner: str | None

    def __repr__(self) -> str:
        return f"AuthSuccess(cookie=<hidden>, banner={self.banner!r})"


@dataclass(frozen=True, slots=True)
class FormOption:
    value: str
    label: str
    selected: bool


@dataclass(frozen=True, slots=True)
class FormField:
    """One ``<input>`` or ``<select>`` of an auth-request form.

    *kind* is ``text``, ``password``, ``hidden`` or ``select``.
    """

    kind: str
    name: str
    label: str
    value: str | None = None
    options: tuple[FormOption, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthForm:
    method: str
    action: str | None
    fields: tuple[FormField, ...]


@dataclass(frozen=True, slots=True)
class FormPrompt:
    """A server form with fields someone must answer: text, password and select fields
    (the hidden ones are the session's). *form_id* is the ``<auth id>`` (``""`` if it is
    missing or unusable), which ``--form-entry FORM:FIELD=VALUE`` names."""

    form_id: str
    banner: str | None
    message: str | None
    error: str | None
    fields: tuple[FormField, ...]


@dataclass(frozen=True, slots=True)
class AuthDocument:
    """The parts of a server ``<config-auth>`` document we use.

    *opaque* is the server's ``<opaque>`` element re-serialised, to be copied
    back into our reply. Text fields are stripped of control characters and
    cut to a bounded length.
    """

    type: str | None
    auth_id: str | None
    banner: str | None
    message: str | None
    error: str | None
    form: AuthForm | None
    opaque: str | None
    session_token: str | None
    client_cert_request: bool
    sso: bool = False
    """A single sign-on form (``<sso-v2-login>``, or an ``<input type="sso">``)."""


# ---------------------------------------------------------------------------
# Parsing server XML


def _clean_label(text: str | None) -> str:
    """A field or option label for a prompt: one line of printable text."""
    return _clean_text(" ".join((text or "").split()), _MAX_LABEL) or ""


def _clean_text(text: str | None, limit: int = _MAX_TEXT) -> str | None:
    """Make server text safe to show: drop control characters, bound length."""
    if text is None:
        return None
    cleaned = _UNPRINTABLE.sub("", text).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "\u2026"
    return cleaned


def _parse_xml(text: str) -> ET.Element:
    fromstring = cast(Callable[..., ET.Element], _defused_et.fromstring)
    try:
        return fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except ET.ParseError as exc:
        raise ProtocolError(f"Malformed XML from server: {exc}") from None
    except ValueError as exc:  # defusedxml's DTDForbidden, EntitiesForbidden, ...
        raise ProtocolError(f"Forbidden XML construct from server: {type(exc).__name__}") from None


def _check_depth(root: ET.Element) -> None:
    stack = [(root, 1)]
    while stack:
        elem, depth = stack.pop()
        if depth > MAX_XML_DEPTH:
            raise ProtocolError(f"XML from server is nested more than {MAX_XML_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in elem)


def _elem_text(elem: ET.Element) -> str:
    return "".join(elem.itertext())


def _checked_name(name: str | None, what: str) -> str:
    if name is None or not _XML_NAME.fullmatch(name):
        raise ProtocolError(
            f"Server form has an unusable {what} name: {_clean_text(name or '', 64)!r}"
        )
    return name


def _parse_select(elem: ET.Element) -> FormField | None:
    name = _checked_name(elem.get("name"), "select")
    options: list[FormOption] = []
    for opt in elem:
        if opt.tag != "option":
            continue
        if len(options) >= _MAX_OPTIONS:
            raise ProtocolError(f"Server form select {name!r} has more than {_MAX_OPTIONS} options")
        text = _elem_text(opt)
        value = opt.get("value")
        if value is None:
            value = text
        if len(value) > _MAX_LABEL or NOT_PRINTABLE.search(value) or "\n" in value:
            raise ProtocolError(f"Server form select {name!r} has an unusable option value")
        label = _clean_label(text) or value
        options.append(FormOption(value=value, label=label, selected=opt.get("selected") == "true"))
    if not options:
        return None  # an empty <select/> asks for nothing (openconnect skips it too)
    return FormField("select", name, _clean_label(elem.get("label")), None, tuple(options))


def _parse_form(elem: ET.Element) -> AuthForm:
    fields: list[FormField] = []
    for child in elem:
        parsed: FormField | None = None
        if child.tag == "select":
            parsed = _parse_select(child)
        elif child.tag == "input":
            kind = (child.get("type") or "").lower()
            if kind in ("text", "password", "hidden"):
                name = _checked_name(child.get("name"), "input")
                label = _clean_label(child.get("label"))
                parsed = FormField(
                    kind, name, label, child.get("value") if kind == "hidden" else None
                )
            # submit/reset/unknown input types ask for nothing (as openconnect); "sso"
            # is seen by parse_config_auth_untrusted
        if parsed is not None:
            if len(fields) >= _MAX_FIELDS:
                raise ProtocolError(f"Server form has more than {_MAX_FIELDS} fields")
            if any(f.name == parsed.name for f in fields):
                raise ProtocolError(f"Server form has two fields named {parsed.name!r}")
            fields.append(parsed)
    return AuthForm(
        method=elem.get("method") or "POST", action=elem.get("action"), fields=tuple(fields)
    )


def parse_config_auth_untrusted(body: bytes) -> AuthDocument:
    """Parse a server ``<config-auth>`` XML document.

    Raises ProtocolError if *body* is larger than MAX_XML_BYTES, not UTF-8,
    not well-formed XML, uses DTDs or entities, nests deeper than
    MAX_XML_DEPTH, is not a ``config-auth`` document, or has a form field
    name we could not safely send back.
    """
    if len(body) > MAX_XML_BYTES:
        raise ProtocolError(f"XML response from server is larger than {MAX_XML_BYTES} bytes")
    if not body.strip():
        raise ProtocolError("Empty response from server where an XML document was expected")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("XML response from server is not valid UTF-8") from None
    root = _parse_xml(text)
    _check_depth(root)
    if root.tag != "config-auth":
        raise ProtocolError(f"Unexpected XML document from server: <{_clean_text(root.tag, 64)}>")

    auth_id = banner = message = error = opaque = session_token = None
    form: AuthForm | None = None
    cert_request = sso = False
    seen_auth = False
    for child in root:
        tag = child.tag
        if tag == "auth" and not seen_auth:
            seen_auth = True
            auth_id = child.get("id")
            for sub in child:
                if sub.tag == "banner" and banner is None:
                    banner = _clean_text(_elem_text(sub))
                elif sub.tag == "message" and message is None:
                    message = _clean_text(_elem_text(sub))
                elif sub.tag == "error" and error is None:
                    error = _clean_text(_elem_text(sub))
                elif sub.tag == "form" and form is None:
                    form = _parse_form(sub)
                    sso = sso or any(
                        i.tag == "input" and (i.get("type") or "").lower() == "sso" for i in sub
                    )
                elif sub.tag == "sso-v2-login":
                    sso = True
        elif tag == "opaque" and opaque is None:
            node = copy.copy(child)
            node.tail = None
            opaque = ET.tostring(node, encoding="unicode")
        elif tag == "client-cert-request":
            cert_request = True
        elif tag == "session-token" and session_token is None:
            session_token = _elem_text(child).strip()
    return AuthDocument(
        type=root.get("type"),
        auth_id=auth_id,
        banner=banner or None,
        message=message or None,
        error=error or None,
        form=form,
        opaque=opaque,
        session_token=session_token or None,
        client_cert_request=cert_request,
        sso=sso,
    )


def _parse_set_cookie_untrusted(value: str) -> tuple[str, str, bool] | None:
    """Return (name, value, expired) of one Set-Cookie header, or None if unusable."""
    first, _, attrs = value.partition(";")
    name, eq, val = first.partition("=")
    name = name.strip()
    val = val.strip()
    if not eq or not _COOKIE_NAME.fullmatch(name):
        return None
    if len(val) > _MAX_COOKIE_VALUE or not _COOKIE_VALUE.fullmatch(val):
        if name == "webvpn":
            raise ProtocolError("Server sent an invalid webvpn session cookie")
        return None
    expired = not val
    for attr in attrs.split(";"):
        key, _, arg = attr.partition("=")
        if key.strip().lower() == "max-age" and _NON_POSITIVE.fullmatch(arg.strip()):
            expired = True
    return name, val, expired


# ---------------------------------------------------------------------------
# Building requests


def format_host_header(host: str, port: int) -> str:
    """``host`` or ``host:port`` when port != 443; IPv6 literals bracketed."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port == 443 else f"{host}:{port}"


def _xml_doc(kind: str, inner: str, identity: ClientIdentity) -> bytes:
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<config-auth client="vpn" type={quoteattr(kind)} aggregate-auth-version="2">'
        f"{identity.xml()}{inner}</config-auth>\n"
    )
    return doc.encode("utf-8")


def _check_xml_safe(value: str, what: str) -> None:
    if _XML_FORBIDDEN.search(value):
        raise ValueError(f"{what} contains control characters that XML cannot carry")


def _failure_error(text: str) -> AuthFailed | AccountLocked:
    if _LOCKED.search(text):
        return AccountLocked(f"Login rejected by server: {text}")
    return AuthFailed(f"Login rejected by server: {text}")


class AuthSession:
    """Client side of one login (a new AuthSession per attempt).

    ``first_request()`` once, then ``handle_response_untrusted()`` with each response
    until it returns :class:`AuthSuccess` or raises; a :class:`FormPrompt` in between is
    answered with :meth:`answer`, which returns the next request.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        certificate: bool = False,
        identity: ClientIdentity = ClientIdentity(),  # noqa: B008 - frozen
    ) -> None:
        """*certificate*: a client certificate is configured (the TLS layer presents it
        when the server asks in the handshake); *identity*: what the client says it is
        (--useragent, --version-string, --os)."""
        if not host or _UNPRINTABLE.search(host) or any(c in host for c in " /?#@"):
            raise ValueError(f"invalid server host name {host!r}")
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        if not path.startswith("/"):
            path = "/" + path
        if len(path) > _MAX_PATH or not _PATH_CHARS.fullmatch(path) or "#" in path:
            raise ValueError(f"invalid URL path {path!r}")
        self._host = host
        self._port = port
        self._path = path
        self._identity = identity
        self._host_header = format_host_header(host, port)
        self._cookies: dict[str, str] = {}
        self._rounds = 0
        self._sent_password = False
        self._started = False
        self._done = False
        self._certificate = certificate
        self._certificate_retried = False
        # the form of the FormPrompt returned last, with its opaque and the next
        # request's connection, until answer() is called
        self._pending: tuple[AuthDocument, AuthForm, bool] | None = None

    # -- requests --------------------------------------------------------

    def _request(
        self, path: str, body: bytes, *, new_connection: bool, method: str = "POST"
    ) -> HttpRequest:
        headers: list[tuple[str, str]] = [
            ("Host", self._host_header),
            ("User-Agent", self._identity.user_agent),
        ]
        if self._cookies:
            headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self._cookies.items())))
        headers += [
            ("Accept", "*/*"),
            ("Accept-Encoding", "identity"),
            ("X-Transcend-Version", "1"),
            ("X-Aggregate-Auth", "1"),
            *self._identity.mobile_headers(),
        ]
        if method == "POST":
            headers += [
                # Pad so the body length says nothing about the password length
                # (rounded up to a multiple of 64, as openconnect does).
                ("X-Pad", "0" * (64 - len(body) % 64)),
                ("Content-Type", "application/xml; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ]
        return HttpRequest(method, path, tuple(headers), body, new_connection)

    def first_request(self) -> HttpRequest:
        """The XML ``init`` POST to the configured path (on a new connection).

        A group is never sent here but in the auth-reply to the form that offers the
        group list, once it is one of the server's options: ocserv copies a group named
        in the init into its ``group_list`` options (worker-auth.c ``append_group_str``)
        whether or not it exists, which would hide an unknown group until the password
        had been sent and rejected. ocserv reads ``<group-select>`` from the auth-reply
        as well.
        """
        if self._started:
            raise RuntimeError("first_request() called twice")
        self._started = True
        return self._init_request()

    def _init_request(self) -> HttpRequest:
        url = f"https://{self._host_header}{self._path}"
        inner = f"<group-access>{escape(url)}</group-access>"
        body = _xml_doc("init", inner, self._identity)
        return self._request(self._path, body, new_connection=True)

    def _certificate_requested(self) -> HttpRequest:
        """``<client-cert-request>``: the server wants a certificate it did not get in
        the handshake (Cisco's gateways ask so). As openconnect does: start over once on
        a new connection, whose handshake presents ours; asked again, it was refused."""
        if not self._certificate:
            raise NeedMoreInput(
                "Server asks for a client certificate and none is configured (-c/--certificate)"
            )
        if self._certificate_retried:
            self._done = True
            raise AuthFailed("Server asks for a client certificate again: it did not accept ours")
        self._certificate_retried = True
        return self._init_request()

    # -- responses -------------------------------------------------------

    def handle_response_untrusted(
        self, resp: HttpResponse
    ) -> HttpRequest | AuthSuccess | FormPrompt:
        """Process the server's answer to our last request.

        Returns the next request, AuthSuccess, or a FormPrompt to :meth:`answer`.
        Raises AuthFailed, AccountLocked, NeedMoreInput, ServerRefused or ProtocolError.
        """
        if not self._started or self._done or self._pending is not None:
            raise RuntimeError("no request outstanding")
        self._rounds += 1
        if self._rounds > MAX_ROUNDS:
            raise ProtocolError(f"Login did not finish within {MAX_ROUNDS} rounds")
        self._collect_cookies(resp)

        if resp.status == 404 and self._rounds == 1:
            # ocserv 1.1.6 finds the handler of a POST by its exact path, so the init
            # POST to a URL with a query (https://vpn/?secret) is "404 Not found"; its GET
            # handlers take a query and answer with the same login form. openconnect
            # falls back to GET there too (auth.c: "Try without XML POST this time").
            return self._request(self._path, b"", new_connection=False, method="GET")
        if resp.status == 401:
            self._done = True
            raise _failure_error(_clean_text(resp.reason, 256) or "Authentication failed")
        if resp.status != 200:
            self._done = True
            reason = _clean_text(resp.header("x-reason") or resp.reason, 256)
            raise ServerRefused(
                f"Server refused login: HTTP {resp.status} {reason}".rstrip(), status=resp.status
            )

        doc = parse_config_auth_untrusted(resp.body)
        if doc.auth_id == "success":
            self._done = True
            return AuthSuccess(cookie=self._session_cookie(doc), banner=doc.banner)
        if doc.client_cert_request:
            return self._certificate_requested()
        if doc.sso:
            self._done = True
            raise NeedMoreInput(SSO_MESSAGE)
        if self._sent_password:
            failure = doc.error or (
                doc.message
                if doc.message and doc.message.lower().startswith("login failed")
                else None
            )
            if failure:
                self._done = True
                raise _failure_error(failure.splitlines()[0].strip())
        if doc.form is None:
            if doc.error:
                raise ProtocolError(f"Server reported an error: {doc.error}")
            raise ProtocolError("Server response has neither a login form nor a session cookie")
        self._action_path(doc.form)  # refuse a form that sends the answers elsewhere now
        connection = (resp.header("connection") or "").lower()
        new_conn = "close" in (t.strip() for t in connection.split(","))
        self._pending = (doc, doc.form, new_conn)
        asked = tuple(f for f in doc.form.fields if f.kind != "hidden")
        if not asked:  # nothing for anyone to answer: the hidden fields go back at once
            return self.answer({})
        form_id = doc.auth_id if doc.auth_id and _FORM_ID.fullmatch(doc.auth_id) else ""
        return FormPrompt(form_id, doc.banner, doc.message, doc.error, asked)

    def answer(self, values: Mapping[str, str], *, group: str | None = None) -> HttpRequest:
        """The auth-reply to the last FormPrompt: *values* answers each of its fields by
        name (a select with one of its option values). *group* goes in ``<group-select>``
        when the form has no group list. ValueError if an answer is missing, unasked for,
        not an option, or not something XML can carry."""
        if self._pending is None:
            raise RuntimeError("no form to answer")
        doc, form, new_conn = self._pending
        asked = {f.name: f for f in form.fields if f.kind != "hidden"}
        if set(values) != set(asked):
            missing = sorted(set(asked) - set(values))
            extra = sorted(set(values) - set(asked))
            raise ValueError(f"answers do not fit the form (missing {missing}, unasked {extra})")
        answers: list[tuple[str, str]] = []
        group_select = group
        if group is not None:
            _check_xml_safe(group, "the group")
        sent_password = False
        for field in form.fields:
            if field.kind == "hidden":
                answers.append((field.name, field.value or ""))
                continue
            value = values[field.name]
            _check_xml_safe(value, f"the answer to {field.name}")
            if field.kind == "select":
                if value not in {o.value for o in field.options}:
                    raise ValueError(f"{value[:64]!r} is not an option of {field.name}")
                if field.name == GROUP_FIELD:
                    group_select = value  # in <group-select>, as openconnect sends it
                    continue
            elif field.kind == "password":
                sent_password = True
            name = "password" if field.name in _RENAMED_TO_PASSWORD else field.name
            answers.append((name, value))
        self._pending = None
        inner = doc.opaque or ""
        inner += "<auth>" + "".join(f"<{n}>{escape(v)}</{n}>" for n, v in answers) + "</auth>"
        if group_select is not None:
            inner += f"<group-select>{escape(group_select)}</group-select>"
        self._sent_password = self._sent_password or sent_password
        body = _xml_doc("auth-reply", inner, self._identity)
        return self._request(self._action_path(form), body, new_connection=new_conn)

    def _collect_cookies(self, resp: HttpResponse) -> None:
        for value in resp.header_all("set-cookie"):
            parsed = _parse_set_cookie_untrusted(value)
            if parsed is None:
                continue
            name, val, expired = parsed
            if expired:
                self._cookies.pop(name, None)
                continue
            if name not in self._cookies and len(self._cookies) >= _MAX_COOKIES:
                raise ProtocolError(f"Server set more than {_MAX_COOKIES} cookies")
            self._cookies[name] = val

    def _session_cookie(self, doc: AuthDocument) -> str:
        cookie = self._cookies.get("webvpn") or doc.session_token
        if not cookie:
            raise ProtocolError("Server reported login success but sent no webvpn session cookie")
        if len(cookie) > _MAX_COOKIE_VALUE or not _COOKIE_VALUE.fullmatch(cookie):
            raise ProtocolError("Server sent an invalid webvpn session cookie")
        return cookie

    def _action_path(self, form: AuthForm) -> str:
        if form.method.upper() != "POST":
            raise ProtocolError(
                f"Server form uses method {_clean_text(form.method, 32)!r}; only POST is supported"
            )
        action = form.action
        if action is None or action == "":
            return self._path
        if len(action) > _MAX_PATH or not _PATH_CHARS.fullmatch(action):
            raise ProtocolError("Server form action is not a usable URL")
        base = f"https://{self._host_header}{self._path}"
        try:
            target = urlsplit(urljoin(base, action))
        except ValueError:  # e.g. an unclosed IPv6 bracket: https://[x/
            raise ProtocolError("Server form action is not a usable URL") from None
        if target.scheme != "https" or (target.hostname or "").lower() != self._host.lower().strip(
            "[]"
        ):
            raise ProtocolError("Server form sends the login to another host; refusing")
        try:
            port = target.port or 443
        except ValueError:
            raise ProtocolError("Server form action has an invalid port") from None
        if port != self._port or target.username is not None or target.password is not None:
            raise ProtocolError("Server form sends the login to another host; refusing")
        path = target.path or "/"
        return f"{path}?{target.query}" if target.query else path
