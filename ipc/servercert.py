"""``--servercert`` pins: their syntax, without importing cryptography or OpenSSL.

Every form openconnect takes (library.c ``openconnect_check_peer_cert_hash``), with its
meaning:

- ``pin-sha256:<base64>``: the SHA-256 of the certificate's SubjectPublicKeyInfo, in
  base64 (RFC 7469); compared case-sensitively.
- ``sha256:<hex>`` and ``sha1:<hex>``: the SHA-256 or SHA-1 of the same
  SubjectPublicKeyInfo (not of the certificate), in hex of either case.
- ``<hex>`` with no type: the SHA-1 of the whole certificate (DER), openconnect's oldest
  form.

A pin may be a prefix of the fingerprint, of at least :data:`MIN_PIN_CHARS` characters
after the type, as openconnect accepts "to ease certain testing use-cases"; the launcher
warns that a prefix is weaker than the whole fingerprint (:meth:`ServerPin.bits`).

The launcher validates the option before it starts anything (importing the TLS layer
for that cost ~14 MB of RSS and ~40 ms, and even hashlib 3.4 MB: docs/performance.md);
the worker matches the pin against the server's certificate (worker/proto/pin.py).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = ["FULL_CHARS", "MIN_PIN_CHARS", "ServerPin"]

MIN_PIN_CHARS: Final = 4
"""The shortest pin after its type, as openconnect (``min_match_len``)."""

FULL_CHARS: Final = {"pin-sha256": 44, "sha256": 64, "sha1": 40, "cert-sha1": 40}
"""The length of each kind's whole fingerprint: base64 of 32 bytes, hex of 32 and 20."""

_BITS_PER_CHAR: Final = {"pin-sha256": 6, "sha256": 4, "sha1": 4, "cert-sha1": 4}
_HEX: Final = re.compile(r"[0-9a-f]+")
# base64 of a 32-byte digest: 43 characters and one "=", or a prefix of that
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]{1,43}|[A-Za-z0-9+/]{43}=")
_USAGE: Final = (
    "expected pin-sha256:<base64>, sha256:<hex> or sha1:<hex> (of the public key) or <hex> "
    "(SHA-1 of the certificate), as openconnect"
)


class ServerPin(NamedTuple):
    """One pin: its kind and the fingerprint (or prefix) it must match.

    ``kind`` is ``pin-sha256``, ``sha256`` or ``sha1`` (hashes of the public key) or
    ``cert-sha1`` (the certificate's SHA-1); ``text`` is the fingerprint as compared,
    hex in lower case.

    A NamedTuple, not a dataclass: the launcher parses the option before it starts
    the first worker, and dataclasses (with inspect) would add ~11 ms there.
    """

    kind: str
    text: str

    @classmethod
    def parse(cls, option: str) -> ServerPin:
        """A pin as openconnect's ``--servercert`` takes it; ValueError otherwise."""
        kind, sep, value = option.partition(":")
        if not sep:
            kind, value = "cert-sha1", option
        kind = kind.lower()
        if kind not in FULL_CHARS:
            raise ValueError(f"--servercert {option[:100]!r}: unknown type {kind!r}; {_USAGE}")
        if kind != "pin-sha256":
            value = value.lower()
        pattern = _BASE64 if kind == "pin-sha256" else _HEX
        if not pattern.fullmatch(value):
            raise ValueError(f"--servercert {option[:100]!r}: {_USAGE}")
        if len(value) < MIN_PIN_CHARS:
            raise ValueError(
                f"--servercert {option[:100]!r}: at least {MIN_PIN_CHARS} characters of "
                "fingerprint are needed"
            )
        if len(value) > FULL_CHARS[kind]:
            raise ValueError(
                f"--servercert {option[:100]!r}: longer than a {kind} fingerprint "
                f"({FULL_CHARS[kind]} characters)"
            )
        return cls(kind, value)

    @property
    def is_prefix(self) -> bool:
        """Shorter than the whole fingerprint: any fingerprint starting so matches."""
        return len(self.text) < FULL_CHARS[self.kind]

    @property
    def bits(self) -> int:
        """How many bits of the fingerprint the pin fixes (a prefix: fewer than the hash)."""
        if self.kind == "pin-sha256" and len(self.text) == FULL_CHARS[self.kind]:
            return 256
        return len(self.text) * _BITS_PER_CHAR[self.kind]

    def matches(self, fingerprint: str) -> bool:
        """Whether ``fingerprint``, this kind's whole fingerprint of a certificate (as
        :meth:`__str__` writes it, without the type), starts with this pin."""
        if self.kind != "pin-sha256":
            fingerprint = fingerprint.lower()
        return fingerprint.startswith(self.text)

    def __str__(self) -> str:
        """The pin as the option takes it (the form the Start message carries)."""
        return self.text if self.kind == "cert-sha1" else f"{self.kind}:{self.text}"
