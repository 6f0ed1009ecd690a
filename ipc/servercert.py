"""``--servercert`` pins: their syntax, without importing cryptography or OpenSSL.

The launcher validates the option before it starts anything (importing the TLS layer
for that cost ~14 MB of RSS and ~40 ms, and even hashlib 3.4 MB: docs/performance.md);
the worker matches the pin against the server's certificate (worker/proto/pin.py).
"""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

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

    def __str__(self) -> str:
        if self.kind == "spki":
            return "pin-sha256:" + base64.b64encode(self.digest).decode()
        return "sha256:" + self.digest.hex()
