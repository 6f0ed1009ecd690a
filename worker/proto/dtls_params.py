"""What the CONNECT exchange decides for DTLS: the parameters of a DtlsConnection.

A module of its own so that planning DTLS (worker/proto/dtls_setup.py, on the connect
path before ``tunnel_up``) does not import the handshake state machine
(dtls_connection.py, dtls_handshake.py): those load while the helper builds the tun.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sepconnect.worker.proto.dtls_crypto import DTLS1_2, DTLS_BAD_VER, SUITES, Aead, CipherSuite

__all__ = ["DtlsParams", "Mode"]


class Mode(Enum):
    PSK = "psk"
    RESUME = "resume"


@dataclass(frozen=True, slots=True)
class DtlsParams:
    """What the CONNECT exchange decided. *session_id* is the App-ID (PSK mode) or
    X-DTLS-Session-ID (resume mode); *suites* what the ClientHello offers (resume
    mode: exactly the suite the server named)."""

    mode: Mode
    session_id: bytes
    suites: tuple[CipherSuite, ...]
    version: int = DTLS1_2
    psk: bytes | None = None
    psk_identity: bytes = b"psk"
    master_secret: bytes | None = None
    extended_master_secret: bool = True
    rto: float = 0.4
    max_rto: float = 2.0
    handshake_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= len(self.session_id) <= 32:
            raise ValueError("DTLS session id must have 1..32 bytes")
        if not self.suites or any(s not in SUITES for s in self.suites):
            raise ValueError("no or unknown DTLS cipher suites")
        if self.mode is Mode.PSK:
            if self.psk is None or not self.psk:
                raise ValueError("PSK mode needs the PSK")
            if self.version != DTLS1_2:
                raise ValueError("PSK mode is DTLS 1.2 only")
        else:
            if self.master_secret is None or len(self.master_secret) != 48:
                raise ValueError("resume mode needs the 48-byte master secret")
            if len(self.suites) != 1:
                raise ValueError("resume mode offers exactly one suite")
            if self.version not in (DTLS1_2, DTLS_BAD_VER):
                raise ValueError("resume mode is DTLS 1.2 or 0.9")
            cbc = SUITES[self.suites[0]].aead is Aead.AES_CBC_SHA1
            if cbc != (self.version == DTLS_BAD_VER):
                raise ValueError("DTLS 0.9 goes with AES-CBC-SHA1 suites only, and vice versa")
