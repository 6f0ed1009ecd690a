"""Exit codes of `sepconnect connect`, one per failure a user must tell apart.

docs/usage.md documents them; the worker reports failures by kind and the
supervisor maps each kind to its code here.
"""

from __future__ import annotations

import enum
from typing import Final


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # internal error: a bug, or an unexpected local failure
    USAGE = 2  # bad command line or configuration (a key that cannot be loaded), or not root
    AUTH_FAILED = 3  # wrong username or password, or the server refused the login
    ACCOUNT_LOCKED = 4
    UNKNOWN_GROUP = 5  # --authgroup is not offered by the server
    CERT_INVALID = 6  # server certificate failed verification or the pin
    UNREACHABLE = 7  # name resolution, TCP or TLS connection failed
    PROTOCOL = 8  # the server sent something malformed or unexpected
    HELPER_REFUSED = 9  # the privileged helper refused the network configuration (or the
    # vpnc-script failed to apply it: --script's connect or reconnect)
    SERVER_DISCONNECTED = 10  # the server ended the session, or it went silent (DPD)
    COOKIE_REJECTED = 11  # the session cookie is no longer valid
    NEED_INPUT = 12  # the server asked for more input than was given non-interactively
    CRASH_LOOP = 13  # the worker kept failing right after it got the tun


FAILURE_KINDS: dict[str, ExitCode] = {
    "error": ExitCode.ERROR,
    "auth_failed": ExitCode.AUTH_FAILED,
    "account_locked": ExitCode.ACCOUNT_LOCKED,
    "unknown_group": ExitCode.UNKNOWN_GROUP,
    "cert_invalid": ExitCode.CERT_INVALID,
    "unreachable": ExitCode.UNREACHABLE,
    "protocol": ExitCode.PROTOCOL,
    "helper_refused": ExitCode.HELPER_REFUSED,
    "server_disconnected": ExitCode.SERVER_DISCONNECTED,
    "connection_lost": ExitCode.SERVER_DISCONNECTED,
    "terminated": ExitCode.SERVER_DISCONNECTED,
    "cookie_rejected": ExitCode.COOKIE_REJECTED,
    "need_input": ExitCode.NEED_INPUT,
    "tun_lost": ExitCode.ERROR,  # the tun device was deleted from outside the session
    "client_cert": ExitCode.USAGE,  # our certificate or key cannot be loaded (wrong password)
}


PERMANENT: Final = frozenset(
    {
        ExitCode.USAGE,
        ExitCode.AUTH_FAILED,
        ExitCode.ACCOUNT_LOCKED,
        ExitCode.UNKNOWN_GROUP,
        ExitCode.CERT_INVALID,
        ExitCode.COOKIE_REJECTED,
        ExitCode.NEED_INPUT,
    }
)
"""Failures that starting again cannot fix, and that a retried login can make worse (a
wrong password counts against the account): the units' ``RestartPreventExitStatus=``.
The others (an internal error, an unreachable or misbehaving server, the helper refusing
a configuration, a crash loop) may pass, and the units restart after them."""
