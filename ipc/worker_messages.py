"""Messages between the supervisor and the worker.

The worker is the untrusted side: everything it sends is validated here by
type and size, and again semantically before anything reaches the helper.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Annotated, ClassVar, Literal

from sepconnect.ipc.limits import (
    CIPHER_LIST,
    FORM_ID,
    FORM_NAME,
    IFNAME,
    IFNAME_MAX,
    MAX_BANNER,
    MAX_CIPHER_LIST,
    PRINTABLE_LINE,
    PRINTABLE_TEXT,
)
from sepconnect.ipc.netconfig import NetworkConfig
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
]
"""connection_lost may be retried with the cookie; terminated means the server ended
the session on purpose (DISCONNECT/TERMINATE, e.g. an administrator's occtl)."""

Cookie = Annotated[str, Length(1, 512)]
DtlsCipherList = Annotated[str, Length(1, MAX_CIPHER_LIST), Match(CIPHER_LIST)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Start(Message):
    """Supervisor → worker, first message: what to connect to and how."""

    op: ClassVar[str] = "start"
    proto: Annotated[int, Range(1, 1)]
    url: Annotated[str, Length(9, 2048)]
    servercert: Annotated[str, Length(8, 200)] | None
    cafile_pem: Annotated[bytes, Length(1, 60_000)] | None
    base_mtu: Annotated[int, Range(1280, 9000)] | None
    mtu: Annotated[int, Range(576, 9000)] | None
    disable_ipv6: bool
    hostname: Annotated[str, Length(1, 64)]
    verbose: Annotated[int, Range(0, 4)]
    cookie: Cookie | None = dataclasses.field(default=None, repr=False)
    """Resume this session (CONNECT with the cookie) instead of logging in."""
    no_dtls: bool = False
    """Carry data over CSTP (TLS) only; never open UDP."""
    dtls_ciphers: DtlsCipherList | None = None
    """X-DTLS-CipherSuite to send instead of our default (as openconnect --dtls-ciphers)."""
    dtls12_ciphers: DtlsCipherList | None = None
    """X-DTLS12-CipherSuite to send instead of our default."""
    authenticate: bool = False
    """Log in, report :class:`LoggedIn` and exit: no CONNECT, no tunnel (--authenticate)."""
    server_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    """Connect to this address instead of looking the URL's host up (--resolve)."""


Label = Annotated[str, Length(0, 256), Match(PRINTABLE_LINE)]
FieldName = Annotated[str, Length(1, 64), Match(FORM_NAME)]
MAX_FORM_FIELDS = 32
MAX_FORM_TEXT = 12_000
"""Characters of labels and option values in one LoginForm: at most 4 bytes each in
UTF-8, so that the form fits one message (wire.MAX_MSG) with room to spare."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FormChoice(Message):
    """One option of a select field: the value sent back, the label shown."""

    op: ClassVar[str] = "form_choice"
    value: Label
    label: Label


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
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
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
    (DTLS up, fallback to TLS).
    """

    op: ClassVar[str] = "worker_status"
    channel: Literal["tls", "dtls"]
    tls_cipher: Annotated[str, Length(0, 100), Match(PRINTABLE_TEXT)]
    dtls_cipher: Annotated[str, Length(0, 100), Match(PRINTABLE_TEXT)] | None
    dtls_state: Annotated[str, Length(0, 200), Match(PRINTABLE_TEXT)]
    tx_bytes: Counter
    rx_bytes: Counter
    tx_packets: Counter
    rx_packets: Counter


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hold(Message):
    """Supervisor → carrying worker: a replacement is connecting with the cookie (rekey).

    The server will drop this worker's connection when the new one arrives; the worker
    must then report the loss, not reconnect in place (which would take the session
    back from its replacement).
    """

    op: ClassVar[str] = "hold"


TO_WORKER = Codec(Start, LoginAnswers, TunHandoff, Stop, QueryStatus, Hold)
FROM_WORKER = Codec(LoginForm, LoggedIn, TunnelUp, Failed, Stopped, WorkerStatus)
FD_TO_WORKER = frozenset({TunHandoff.op})
