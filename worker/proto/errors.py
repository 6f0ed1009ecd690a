"""Exceptions raised by the sans-I/O protocol core.

Every exception carries one line of text meant for the user; the driver decides
whether to log it, reconnect or exit (STYLE.md §1.5 rule 5).

Two families:

- :class:`ProtocolError`: the server sent something we cannot accept (bad
  framing, malformed HTTP or XML, out-of-range values, an unexpected status).
- :class:`AuthError`: the server understood us and said no, or asked for
  something we cannot give non-interactively.
"""

from __future__ import annotations

__all__ = [
    "AccountLocked",
    "AuthError",
    "AuthFailed",
    "CookieRejected",
    "LoginRefused",
    "NeedMoreInput",
    "ProtocolError",
    "ServerRefused",
]


class ProtocolError(Exception):
    """The server sent something malformed or unacceptable."""


class ServerRefused(ProtocolError):
    """The server answered with an HTTP status we cannot continue from.

    The message includes the status code and the server's reason (``X-Reason``
    header or reason phrase), e.g. ``503 Server configuration error``.
    """

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AuthError(Exception):
    """Base class of authentication outcomes other than success."""


class AuthFailed(AuthError):
    """The server rejected the credentials.

    ocserv answers a wrong password first with a new password form whose
    message is ``Login failed.`` (up to MAX_PASSWORD_TRIES - 1 = 2 times), and
    finally with ``HTTP/1.1 401 Authentication failed`` before closing the
    connection. Both end up here, with the server's text in the message.
    """


class AccountLocked(AuthError):
    """The server said the account is locked or disabled.

    ocserv 1.1.6 never says so distinguishably. ``ocpasswd -l`` prefixes the
    stored crypt hash with ``!``; ``crypt()`` then never matches (or fails), so
    the plain module takes exactly the wrong-password path: a ``Login failed.``
    re-prompt, then ``401 Authentication failed``. The PAM module ends a failed
    ``pam_acct_mgmt`` with the same generic 401 (ocserv avoids telling apart an
    unknown user, a wrong password and a locked account). This class is raised
    only when the server's failure text itself mentions a locked or disabled
    account, which other servers (e.g. RADIUS Reply-Message texts relayed by
    ocserv, Cisco ASA) may do.
    """


class NeedMoreInput(AuthError):
    """The server asked for something the worker cannot give: a client certificate, or
    single sign-on in a web browser. (Which form fields have answers is the supervisor's
    to decide: supervisor/answers.py.)"""


class CookieRejected(AuthError):
    """The server refused the session cookie on CONNECT (HTTP 401).

    *reason* is the server's answer as shown to users, e.g. ``HTTP 401 Cookie is not
    acceptable``.
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class LoginRefused(AuthError):
    """The server accepted the credentials but refused the session they opened.

    ocserv 1.1.6 over ``max-same-clients`` (the user has that many sessions already)
    lets the login succeed, then answers the CONNECT with the cookie it has just issued
    with ``HTTP/1.1 401 Cookie is not acceptable`` and a TLS ``access_denied`` alert
    (its log: "user tried to connect more than 1 times"). A fresh cookie cannot have
    expired, so this is a refusal of the login, not a stale cookie: the driver raises
    it instead of CookieRejected when the cookie came from this login.
    """
