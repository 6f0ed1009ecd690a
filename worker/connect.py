"""Authenticate and open the tunnel: the blocking first phase of the worker.

It drives the sans-I/O auth and tunnel logic (worker/proto) over a TlsStream
and turns every failure into a :class:`SessionFailure` with the kind the
supervisor maps to an exit code.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from sepconnect.ipc.fields import IpAddress
from sepconnect.ipc.worker_messages import FailureKind, Start
from sepconnect.worker.client_cert import (
    ClientCertError,
    ClientCredential,
    load_client_credential,
)
from sepconnect.worker.io.tls import (
    AccessDenied,
    CertificateInvalid,
    ServerPin,
    TlsError,
    TlsStream,
    TrustConfig,
    Unreachable,
)
from sepconnect.worker.proto import errors
from sepconnect.worker.proto.auth import AuthSession, AuthSuccess, FormPrompt, HttpRequest
from sepconnect.worker.proto.dtls_setup import (
    DEFAULT_CIPHERS,
    DEFAULT_CIPHERS12,
    PSK_NEGOTIATE,
    DtlsPlan,
    NoDtls,
    plan_dtls,
)
from sepconnect.worker.proto.http import HttpClient, HttpResponse
from sepconnect.worker.proto.identity import CLIENT_VERSION, USER_AGENT, ClientIdentity
from sepconnect.worker.proto.tunnel import (
    TunnelConfig,
    build_connect_request,
    compute_mtu,
    parse_connect_response_untrusted,
)

DEFAULT_PORT = 443
PSK_LABEL = b"EXPORTER-openconnect-psk"  # PROTOCOL.md §4.1: no context, 32 bytes


Ask = Callable[[FormPrompt], tuple[Mapping[str, str], str | None]]
"""Who answers a login form's fields (and gives the group for a form without a group
list): the worker asks the supervisor (worker/main.py)."""


class SessionFailure(Exception):
    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int
    path: str
    address: str  # the resolved address we connect to (the VPN gateway)

    @property
    def name(self) -> str:
        return self.host if self.port == DEFAULT_PORT else f"{self.host}:{self.port}"


@dataclass(slots=True)
class Tunnel:
    server: Server
    stream: TlsStream
    config: TunnelConfig
    cookie: str
    banner: str | None
    leftover: bytes  # CSTP bytes that arrived with the CONNECT response
    dtls: DtlsPlan | NoDtls | None = None  # None: --no-dtls

    @property
    def mtu(self) -> int:
        """The tunnel MTU: the server's, lowered to what one DTLS record carries."""
        return self.dtls.mtu if isinstance(self.dtls, DtlsPlan) else self.config.net.mtu


def server_of(url: str, address: IpAddress) -> Server:
    """The server to talk to: the URL's host, port and path, at ``address``, which the
    launcher resolved once for the whole session (the helper knows it as the gateway)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise SessionFailure("error", f"server URL must be https://host[:port][/path], got {url!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise SessionFailure("error", f"bad port in server URL {url!r}") from None
    host = parts.hostname
    # The login's first request goes to the URL's path and query as given (a server may
    # take a group or a secret from the query, e.g. https://vpn/?secret); the fragment
    # is the client's own. CONNECT has its fixed path (PROTOCOL.md §2.1).
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Server(host=host, port=port, path=path, address=str(address))


def _trust(start: Start) -> TrustConfig:
    try:
        pins = tuple(ServerPin.parse(text) for text in start.servercerts)
    except ValueError as exc:
        raise SessionFailure("error", str(exc)) from None
    return TrustConfig(pins=pins, ca_pem=start.cafile_pem, system_store=start.system_trust)


def _client_credential(start: Start) -> ClientCredential | None:
    if start.client_cert is None:
        return None
    try:
        return load_client_credential(start.client_cert, start.client_key, start.key_password)
    except ClientCertError as exc:
        raise SessionFailure("client_cert", f"client certificate: {exc}") from None


class _Connection:
    """The current TLS connection and its HTTP state."""

    def __init__(
        self, server: Server, trust: TrustConfig, client: ClientCredential | None = None
    ) -> None:
        self.server = server
        self.trust = trust
        self.client = client
        self.stream: TlsStream | None = None
        self.http = HttpClient()
        self.server_pin = ""  # the pin of the certificate last verified

    def open(self) -> TlsStream:
        if self.stream is None:
            self.stream = TlsStream.connect(
                self.server.host,
                self.server.port,
                self.server.address,
                self.trust,
                client=self.client,
            )
            self.http = HttpClient()
            self.server_pin = self.stream.server_pin
        return self.stream

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def exchange(self, req: HttpRequest) -> HttpResponse:
        if req.new_connection:
            self.close()
        stream = self.open()
        stream.send_all(self.http.request(req.method, req.path, list(req.headers), req.body))
        while True:
            try:
                data = stream.recv_some()
            except AccessDenied:
                # ocserv ends a refusal with an access_denied alert, not a close_notify,
                # right after an answer whose body runs to the close (its "401 Cookie is
                # not acceptable" has no Content-Length): the alert ends that answer.
                self.close()
                resp = self._completed_by_close()
                if resp is None:
                    raise
                return resp
            if not data:
                self.close()
                resp = self.http.connection_closed()
                if resp is None:
                    raise errors.ProtocolError("the server closed the connection mid-response")
                return resp
            resp = self.http.receive_data_untrusted(data)
            if resp is not None:
                return resp

    def _completed_by_close(self) -> HttpResponse | None:
        try:
            return self.http.connection_closed()
        except errors.ProtocolError:  # no complete answer before the alert
            return None


#: Why a server would refuse a login that has just succeeded; ocserv's case.
_REFUSAL_HINT = "it may allow only one session per user (max-same-clients)"


def _as_refusal(exc: Exception, *, resuming: bool) -> Exception:
    """The refusals among connection failures.

    ocserv refuses with a TLS access_denied alert (AccessDenied) and, on CONNECT, with
    ``401 Cookie is not acceptable`` (CookieRejected). Resuming with a kept cookie,
    either means the cookie is no longer valid. After a fresh login the cookie is
    seconds old, so the server refused the login itself (LoginRefused: exit code 3),
    which is no network failure (exit code 7) either.
    """
    if resuming:
        if isinstance(exc, AccessDenied):
            return errors.CookieRejected("the server rejected the session cookie")
        return exc
    if isinstance(exc, AccessDenied):
        return errors.LoginRefused(f"the server refused the login (access denied): {_REFUSAL_HINT}")
    if isinstance(exc, errors.CookieRejected):
        detail = exc.reason or "HTTP 401"
        return errors.LoginRefused(f"the server refused the login ({detail}): {_REFUSAL_HINT}")
    return exc


def _failure_from(exc: Exception) -> SessionFailure:
    table: list[tuple[type[Exception], FailureKind]] = [
        (CertificateInvalid, "cert_invalid"),
        (Unreachable, "unreachable"),
        (errors.AccountLocked, "account_locked"),
        (errors.AuthFailed, "auth_failed"),
        (errors.LoginRefused, "auth_failed"),
        (errors.NeedMoreInput, "need_input"),
        (errors.CookieRejected, "cookie_rejected"),
        (errors.ProtocolError, "protocol"),
        (errors.AuthError, "auth_failed"),
        (TlsError, "unreachable"),
    ]
    for cls, kind in table:
        if isinstance(exc, cls):
            return SessionFailure(kind, str(exc) or cls.__name__)
    return SessionFailure("error", f"{type(exc).__name__}: {exc}")


def _base_mtu(stream: TlsStream, requested: int | None) -> int:
    if requested is not None:
        return requested
    try:
        mss = stream.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    except OSError:
        return 1406
    headers = 60 if stream.sock.family == socket.AF_INET6 else 40
    return max(1280, min(9000, mss + headers))


def identity_of(start: Start) -> ClientIdentity:
    """--useragent, --version-string and --os (identity.py)."""
    return ClientIdentity(
        user_agent=start.user_agent or USER_AGENT,
        version=start.version_string or CLIENT_VERSION,
        platform=start.platform,
    )


def _log_in(start: Start, server: Server, conn: _Connection, ask: Ask | None) -> AuthSuccess:
    try:
        auth = AuthSession(
            host=server.host,
            port=server.port,
            path=server.path,
            certificate=start.client_cert is not None,
            identity=identity_of(start),
        )
    except ValueError as exc:  # e.g. a space or non-ASCII in the URL's path or query
        raise SessionFailure("error", f"cannot log in to {start.url!r}: {exc}") from None
    step: HttpRequest | AuthSuccess | FormPrompt = auth.first_request()
    while not isinstance(step, AuthSuccess):
        if isinstance(step, FormPrompt):
            if ask is None:
                raise SessionFailure("error", "a login form arrived where none was expected")
            values, group = ask(step)
            try:
                step = auth.answer(values, group=group)
            except ValueError as exc:  # the supervisor's answers do not fit the form
                raise SessionFailure("error", f"login form answers: {exc}") from None
            continue
        resp = conn.exchange(step)
        step = auth.handle_response_untrusted(resp)
        if not conn.http.reuse():
            conn.close()
    return step


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A login alone (--authenticate): the cookie, and where and whom it is valid at."""

    cookie: str
    address: str
    server_pin: str

    def __repr__(self) -> str:
        return f"Authenticated(cookie=<hidden>, address={self.address!r})"


def authenticate(start: Start, ask: Ask) -> Authenticated:
    """Log in and stop there: no CONNECT, and no logoff, so the cookie stays valid."""
    client = _client_credential(start)
    server = server_of(start.url, start.server_address)
    conn = _Connection(server, _trust(start), client)
    try:
        success = _log_in(start, server, conn, ask)
    except (errors.ProtocolError, errors.AuthError, TlsError) as exc:
        raise _failure_from(_as_refusal(exc, resuming=False)) from None
    finally:
        conn.close()
    return Authenticated(cookie=success.cookie, address=server.address, server_pin=conn.server_pin)


def open_tunnel(start: Start, ask: Ask | None = None) -> Tunnel:
    """Log in, answering forms with *ask* (or resume with ``start.cookie``), and CONNECT;
    the TLS stream then carries CSTP."""
    client = _client_credential(start)
    server = server_of(start.url, start.server_address)
    conn = _Connection(server, _trust(start), client)
    try:
        if start.cookie is not None:
            success = AuthSuccess(cookie=start.cookie, banner=None)
        else:
            success = _log_in(start, server, conn, ask)
        stream = conn.open()
        base_mtu = _base_mtu(stream, start.base_mtu)
        # DTLS "resumed session" secret (PROTOCOL.md §4.2); unused in PSK mode
        master_secret = None if start.no_dtls else os.urandom(48)
        ipv6_peer = ipaddress.ip_address(server.address).version == 6
        # what the CONNECT offers; plan_dtls refuses a choice that is not in it
        offered = (start.dtls_ciphers or DEFAULT_CIPHERS, start.dtls12_ciphers or DEFAULT_CIPHERS12)
        connect_req = build_connect_request(
            host=server.host,
            port=server.port,
            cookie=success.cookie,
            hostname=start.hostname,
            base_mtu=base_mtu,
            mtu=start.mtu or compute_mtu(base_mtu, ipv6_peer),
            ipv6=not start.disable_ipv6,
            dtls_master_secret=master_secret,
            dtls_ciphers=offered[0],
            dtls12_ciphers=offered[1],
            identity=identity_of(start),
        )
        resp = conn.exchange(connect_req)
        config = parse_connect_response_untrusted(
            resp, gateway=ipaddress.ip_address(server.address)
        )
        leftover = conn.http.trailing_data
        dtls = (
            None if start.no_dtls else _plan_dtls(stream, config, master_secret, base_mtu, offered)
        )
    except (errors.ProtocolError, errors.AuthError, TlsError) as exc:
        conn.close()
        raise _failure_from(_as_refusal(exc, resuming=start.cookie is not None)) from None
    assert conn.stream is not None
    return Tunnel(
        server=server,
        stream=conn.stream,
        config=config,
        cookie=success.cookie,
        banner=success.banner or config.net.banner,
        leftover=leftover,
        dtls=dtls,
    )


def _plan_dtls(
    stream: TlsStream,
    config: TunnelConfig,
    master_secret: bytes | None,
    base_mtu: int,
    offered: tuple[str, str],
) -> DtlsPlan | NoDtls:
    psk = None
    if config.dtls_cipher == PSK_NEGOTIATE:
        try:  # right after CONNECT, from the TLS session that carried it
            psk = stream.export_keying_material(PSK_LABEL, 32)
        except Exception:  # pyOpenSSL raises its Error; DTLS is then simply off
            psk = None
    ipv6_peer = stream.sock.family == socket.AF_INET6
    return plan_dtls(
        config,
        psk=psk,
        master_secret=master_secret,
        base_mtu=base_mtu,
        ipv6_peer=ipv6_peer,
        offered=offered[0],
        offered12=offered[1],
    )
