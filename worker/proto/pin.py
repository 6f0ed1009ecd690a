"""``--servercert`` pins, parsed without importing cryptography or OpenSSL.

The supervisor validates the option before it starts anything; importing the TLS
layer for that cost it ~14 MB of RSS and ~40 ms, and even hashlib (libcrypto) 3.4 MB
(docs/performance.md). This module imports nothing heavier than ``typing``. The
worker's TLS layer (worker/io/tls.py) re-exports :class:`ServerPin` and matches it
against the server's certificate.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["ServerPin"]


class ServerPin(NamedTuple):
    """``pin-sha256:<base64 SPKI hash>`` or ``sha256:<hex certificate hash>``.

    A NamedTuple, not a dataclass: the launcher parses the option before it starts
    the first worker, and dataclasses (with inspect) would add ~11 ms there.
    """

    kind: str  # "spki" or "cert"
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> ServerPin:
        kind, sep, value = text.partition(":")
        kind = kind.lower()
        try:
            if sep and kind == "pin-sha256":
                digest = base64.b64decode(value, validate=True)
                pin = cls("spki", digest)
            elif sep and kind == "sha256":
                pin = cls("cert", binascii.unhexlify(value))
            else:
                raise ValueError
        except (ValueError, binascii.Error):
            raise ValueError(
                f"--servercert {text!r}: expected pin-sha256:<base64> or sha256:<hex>"
            ) from None
        if len(pin.digest) != 32:
            raise ValueError(f"--servercert {text!r}: a SHA-256 digest has 32 bytes")
        return pin

    def matches(self, cert: x509.Certificate) -> bool:
        # Imported here, not at the top: the supervisor imports this module only to
        # parse the option. The hash is cryptography's, which the worker has loaded
        # anyway; hashlib would load the system's libcrypto too (3.4 MB of RSS).
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        if self.kind == "spki":
            der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        else:
            der = cert.public_bytes(Encoding.DER)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(der)
        return digest.finalize() == self.digest
