"""Messages between the supervisor and the worker.

The worker is the untrusted side: everything it sends is validated here by
type and size, and again semantically before anything reaches the helper.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

from sepconnect.ipc.fields import IpAddress
from sepconnect.ipc.limits import IFNAME, IFNAME_MAX, MAX_BANNER, PRINTABLE_TEXT
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.session_limits import (
    CIPHER_LIST,
    FORM_ID,
    FORM_NAME,
    LOCAL_HOSTNAME,
    MAX_CAFILE,
    MAX_CIPHER_LIST,
    MAX_CLIENT_CERT_FILE,
    MAX_CLIENT_KEY_FILE,
    MAX_KEY_PASSWORD,
    MAX_SERVER_PINS,
    PRINTABLE_LINE,
    SERVER_PIN,
    SESSION_COOKIE,
    USER_AGENT,
    VERSION_STRING,
)
from sepconnect.ipc.wire import Codec, Length, Match, Message, Range

Text = Annotated[str, Length(0, 1024)]
FailureKind = Literal[
    "error",
    "auth_failed",
    "account_locked",
    "unknown_group",
    "cert_invalid",
    "unreachable",
    "protocol",
    "server_disconnected",
    "connection_lost",
    "terminated",
    "cookie_rejected",
    "need_input",
    "tun_lost",
    "client_cert",
]
"""connection_lost may be retried with the cookie; terminated means the server ended
the session on purpose (DISCONNECT/TERMINATE, e.g. an administrator's occtl);
client_cert: our own certificate or key cannot be used (not the server's refusal of it)."""

Cookie = Annotated[str, Length(1, 512), Match(SESSION_COOKIE)]
ReportedOs = Literal["linux", "linux-64", "win", "mac-intel", "android", "apple-ios"]
"""session_limits.REPORTED_OS (a Literal for the schema; test_limits checks they agree)."""
DtlsCipherList = Annotated[str, Length(1, MAX_CIPHER_LIST), Match(CIPHER_LIST)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Start(Message):
    """Supervisor → worker, first message: what to connect to and how."""

    op: ClassVar[str] = "start"
    proto: Annotated[int, Range(1, 1)]
    url: Annotated[str, Length(9, 2048)]
    server_address: IpAddress
    """The address to connect to: the launcher resolved the URL's host once (or took it
    from --resolve), before any worker ran, and told the helper. The worker never
    resolves it (F2)."""
    servercerts: Annotated[
        tuple[Annotated[str, Length(4, 80), Match(SERVER_PIN)], ...], Length(0, MAX_SERVER_PINS)
    ] = ()
    """``--servercert`` pins (ipc/servercert.py): the server's certificate must match one."""
    cafile_pem: Annotated[bytes, Length(1, MAX_CAFILE)] | None
    system_trust: bool = True
    """Trust the system store's CAs besides ``cafile_pem`` (not with --no-system-trust)."""
    base_mtu: Annotated[int, Range(1280, 9000)] | None
    mtu: Annotated[int, Range(576, 9000)] | None
    disable_ipv6: bool
    hostname: Annotated[str, Length(1, 63), Match(LOCAL_HOSTNAME)]
    """X-CSTP-Hostname: ``--local-hostname``, else the first label of our host name."""
    verbose: Annotated[int, Range(0, 4)]
    cookie: Cookie | None = dataclasses.field(default=None, repr=False)
    """Resume this session (CONNECT with the cookie) instead of logging in."""
    no_dtls: bool = False
    """Carry data over CSTP (TLS) only; never open UDP."""
    dtls_ciphers: DtlsCipherList | None = None
    """X-DTLS-CipherSuite to send instead of our default (as openconnect --dtls-ciphers)."""
    dtls12_ciphers: DtlsCipherList | None = None
    """X-DTLS12-CipherSuite to send instead of our default."""
    client_cert: Annotated[bytes, Length(1, MAX_CLIENT_CERT_FILE)] | None = dataclasses.field(
        default=None, repr=False
    )
    """The ``--certificate`` file as read by the launcher (PEM, DER or PKCS#12); the
    worker parses it. Sent to every worker: a server may ask for it on each connection."""
    client_key: Annotated[bytes, Length(1, MAX_CLIENT_KEY_FILE)] | None = dataclasses.field(
        default=None, repr=False
    )
    """The ``--sslkey`` file's bytes (None: the key is in ``client_cert``, or no key)."""
    key_password: Annotated[str, Length(0, MAX_KEY_PASSWORD)] | None = dataclasses.field(
        default=None, repr=False
    )
    """The password of the key (or of the PKCS#12 file)."""
    authenticate: bool = False
    """Log in, report :class:`LoggedIn` and exit: no CONNECT, no tunnel (--authenticate,
    --cookieonly)."""
    user_agent: Annotated[str, Length(1, 256), Match(USER_AGENT)] | None = None
    """``--useragent``: the User-Agent of every request instead of ours."""
    version_string: Annotated[str, Length(1, 64), Match(VERSION_STRING)] | None = None
    """``--version-string``: the ``<version who="vpn">`` of the login instead of ours."""
    platform: ReportedOs = "linux-64"
    """``--os``: the platform reported to the server (worker/proto/identity.py)."""


Label = Annotated[str, Length(0, 256), Match(PRINTABLE_LINE)]
FieldName = Annotated[str, Length(1, 64), Match(FORM_NAME)]
MAX_FORM_FIELDS = 32
MAX_FORM_TEXT = 12_000
"""Characters of labels and option values in one LoginForm: at most 4 bytes each in
UTF-8, so that the form fits one message (wire.MAX_MSG) with room to spare."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FormChoice(Message):
    """One option of a select field: the value sent back, the label shown, and whether
    the server marked it selected (the choice for a form that asks only for the group)."""

    op: ClassVar[str] = "form_choice"
    value: Label
    label: Label
    selected: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoginField(Message):
    """One field of a login form someone must answer (the worker answers hidden ones)."""

    op: ClassVar[str] = "login_field"
    kind: Literal["text", "password", "select"]
    name: FieldName
    label: Label
    choices: Annotated[tuple[FormChoice, ...], Length(0, 256)] = ()

    def __post_init__(self) -> None:
        if (self.kind == "select") != bool(self.choices):
            raise ValueError(f"field {self.name}: choices belong to a select, which has some")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoginForm(Message):
    """Worker → supervisor: the server's login form, to be answered with
    :class:`LoginAnswers`. The supervisor holds the passwords, the one-time-code secret
    and the terminal; the worker holds the connection and the form's hidden fields."""

    op: ClassVar[str] = "login_form"
    form_id: Annotated[str, Length(0, 64), Match(f"(?:{FORM_ID})?")]
    """The form's ``<auth id>`` ("" if the server gave none usable): --form-entry's FORM."""
    banner: Annotated[str, Length(1, MAX_BANNER), Match(PRINTABLE_TEXT)] | None
    message: Annotated[str, Length(1, 1024), Match(PRINTABLE_TEXT)] | None
    error: Annotated[str, Length(1, 1024), Match(PRINTABLE_TEXT)] | None
    fields: Annotated[tuple[LoginField, ...], Length(1, MAX_FORM_FIELDS)]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("a field name appears twice")
        text = sum(len(f.label) + sum(len(c.value) + len(c.label) for c in f.choices)
                   for f in self.fields)  # fmt: skip
        if text > MAX_FORM_TEXT:
            raise ValueError(f"more than {MAX_FORM_TEXT} characters of labels and options")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FieldAnswer(Message):
    op: ClassVar[str] = "field_answer"
    name: FieldName
    value: Annotated[str, Length(0, 1024)] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoginAnswers(Message):
    """Supervisor → worker: an answer to each field of the LoginForm it sent last."""

    op: ClassVar[str] = "login_answers"
    answers: Annotated[tuple[FieldAnswer, ...], Length(1, MAX_FORM_FIELDS)]
    group: Annotated[str, Length(1, 256)] | None = None
    """--authgroup, for ``<group-select>`` when the form has no group list: ocserv takes
    a group of the user's (plain auth) that it does not list."""


PIN_SHA256 = r"pin-sha256:[A-Za-z0-9+/]{43}="


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoggedIn(Message):
    """Worker → supervisor, with ``Start.authenticate``: the login succeeded; the worker
    exits next without logging off, so that the cookie stays valid (--authenticate)."""

    op: ClassVar[str] = "logged_in"
    cookie: Cookie = dataclasses.field(repr=False)
    address: IpAddress
    """The server's address the worker logged in at (openconnect's HOST and RESOLVE)."""
    server_pin: Annotated[str, Match(PIN_SHA256)]
    """The server certificate's ``pin-sha256:`` pin (openconnect's FINGERPRINT)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TunnelUp(Message):
    """Worker → supervisor: the server accepted the tunnel with this configuration."""

    op: ClassVar[str] = "tunnel_up"
    server: Annotated[str, Length(1, 255), Match(r"[A-Za-z0-9.:\[\]_-]+")]
    """host[:port] as the URL gave it (a name or an address), for people to read."""
    net: NetworkConfig
    rekey_time: Annotated[int, Range(0, 2**31 - 1)] | None = None
    rekey_method: Literal["ssl", "new-tunnel", "none"] | None = None
    cookie: Cookie = dataclasses.field(default="", repr=False)
    """The session cookie, kept only in the supervisor's memory to resume the session."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TunHandoff(Message):
    """Supervisor → worker: the tun device; the only message carrying an fd."""

    op: ClassVar[str] = "tun"
    ifname: Annotated[str, Length(1, IFNAME_MAX), Match(IFNAME)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Failed(Message):
    """Worker → supervisor: the session cannot go on; the worker exits next."""

    op: ClassVar[str] = "failed"
    kind: FailureKind
    message: Annotated[str, Length(1, 500), Match(PRINTABLE_TEXT)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Stop(Message):
    """Supervisor → worker: end the session; log off (invalidate the cookie) or detach."""

    op: ClassVar[str] = "stop"
    logoff: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Stopped(Message):
    """Worker → supervisor: the session is closed; the worker exits next."""

    op: ClassVar[str] = "stopped"
    tx_bytes: Annotated[int, Range(0, 2**63 - 1)]
    rx_bytes: Annotated[int, Range(0, 2**63 - 1)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QueryStatus(Message):
    """Supervisor → worker: report a WorkerStatus now."""

    op: ClassVar[str] = "query_status"


Counter = Annotated[int, Range(0, 2**63 - 1)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStatus(Message):
    """Worker → supervisor: which channel carries data, and the counters.

    Sent in answer to QueryStatus, and unasked whenever the data channel changes
    (DTLS up, fallback to TLS) and once when packets have first moved both ways on a
    connection (the supervisor's crash-loop guard: supervisor/policy.py, HEALTHY_AFTER).
    """

    op: ClassVar[str] = "worker_status"
    channel: Literal["tls", "dtls"]
    tls_cipher: Annotated[str, Length(0, 100), Match(PRINTABLE_TEXT)]
    dtls_cipher: Annotated[str, Length(0, 100), Match(PRINTABLE_TEXT)] | None
    dtls_state: Annotated[str, Length(0, 200), Match(PRINTABLE_TEXT)]
    # the data path's implementation: the compiled accelerator or pure Python
    # (worker/accel.py; docs/performance.md)
    data_path: Literal["compiled", "python"]
    tx_bytes: Counter
    rx_bytes: Counter
    tx_packets: Counter
    rx_packets: Counter


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Lost(Message):
    """Worker → supervisor: the connection to the server is lost (reset, closed, DPD).

    The worker keeps the tun and waits for the supervisor's decision (its session
    machine holds the whole recovery policy): a :class:`Reconnect` (in place, with the
    cookie) or a :class:`Stop`. Any other end of the session is a :class:`Failed`, after
    which the worker exits.
    """

    op: ClassVar[str] = "lost"
    message: Annotated[str, Length(1, 500), Match(PRINTABLE_TEXT)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Reconnect(Message):
    """Supervisor → worker that reported :class:`Lost`: connect again with this cookie,
    keeping the tun; report :class:`TunnelUp` (then carry on) or :class:`Failed`."""

    op: ClassVar[str] = "reconnect"
    cookie: Cookie = dataclasses.field(repr=False)


TO_WORKER = Codec(Start, LoginAnswers, TunHandoff, Stop, QueryStatus, Reconnect)
FROM_WORKER = Codec(LoginForm, LoggedIn, TunnelUp, Failed, Lost, Stopped, WorkerStatus)
FD_TO_WORKER = frozenset({TunHandoff.op})
