"""One-time codes for ``--token-mode totp|hotp`` (RFC 4226 HOTP, RFC 6238 TOTP), sans-I/O.

The secret is written as openconnect writes ``--token-secret`` (oath.c,
``set_oath_mode``):

- an optional ``sha1:``, ``sha256:`` or ``sha512:`` prefix (any case) picks the HMAC
  (default SHA-1);
- for HOTP, an optional ``,COUNTER`` suffix (decimal, ``0x`` hex or ``0`` octal, as
  ``strtol`` reads it) is the next counter (default 0);
- then ``base32:`` (any case) and base32 with its ``=`` padding, ``0x`` and hex digits
  (an odd count gets a leading zero nibble), or else the text itself, as bytes.

Codes have 6 digits and TOTP steps 30 seconds, as openconnect's. PSKC token files
(``<?xml``) are not supported. The supervisor holds the secret and computes every code
at login time; no worker ever sees the secret (supervisor/answers.py).

The HMAC is RFC 2104 over CPython's built-in SHA-1/SHA-2 (``_sha1``, ``_sha256``,
``_sha512``: the digests ``hashlib`` falls back to; no stubs, so looked up by name),
not ``hashlib``/``hmac``: those load the system libcrypto (3.6 MB of the supervisor's
RSS) for two hashes of a few bytes at login time. tests/unit/test_oath.py checks it
against ``hmac`` for key lengths past the block sizes.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

__all__ = ["TOTP_PERIOD", "OathToken", "hmac_digest", "hotp", "parse_token_secret", "totp_step"]

TokenMode = Literal["totp", "hotp"]
Algorithm = Literal["sha1", "sha256", "sha512"]

TOTP_PERIOD: Final = 30
"""Seconds per TOTP step (RFC 6238's default; openconnect supports no other)."""
DIGITS: Final = 6
MAX_SECRET_TEXT: Final = 4096

_PREFIXES: Final[dict[str, Algorithm]] = {"sha1:": "sha1", "sha256:": "sha256", "sha512:": "sha512"}
# strtol(p, &end, 0) with nothing but white space after it: openconnect's counter
_COUNTER = re.compile(r"\s*\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)?\s*")
_HEX = re.compile(r"[0-9a-fA-F]+")


class _Hash(Protocol):
    block_size: int

    def digest(self) -> bytes: ...


def _hash(algorithm: Algorithm) -> Callable[..., _Hash]:
    """CPython's own implementation of *algorithm*; hashlib's only where it has none (a
    build without them: then libcrypto is loaded after all)."""
    try:
        module = importlib.import_module(f"_{algorithm}")
        constructor: Callable[..., _Hash] = getattr(module, algorithm)
    except ImportError:
        import hashlib

        constructor = getattr(hashlib, algorithm)
    return constructor


@dataclass(frozen=True, slots=True)
class OathToken:
    """A parsed ``--token-secret``: the key, the HMAC, and (HOTP) the next counter.

    *text* is the secret as written without its counter, kept to write the new counter
    back after it (openconnect rewrites its token file likewise, but in its own format).
    """

    mode: TokenMode
    key: bytes = field(repr=False)
    algorithm: Algorithm
    counter: int
    text: str = field(repr=False)

    def with_counter(self, counter: int) -> str:
        """The secret as written, with *counter* as its ``,COUNTER`` (HOTP)."""
        return f"{self.text},{counter}"


def parse_token_secret(mode: TokenMode, text: str) -> OathToken:
    """``--token-secret`` in openconnect's syntax; ValueError says what is wrong."""
    if len(text) > MAX_SECRET_TEXT:
        raise ValueError(f"longer than {MAX_SECRET_TEXT} characters")
    rest = text.rstrip()
    if rest.startswith("<?xml"):
        raise ValueError("PSKC token files are not supported")
    algorithm: Algorithm = "sha1"
    for prefix, name in _PREFIXES.items():
        if rest[: len(prefix)].lower() == prefix:
            algorithm, rest = name, rest[len(prefix) :]
            break
    counter = 0
    secret_text = text.rstrip()
    if mode == "hotp" and "," in rest:
        rest, _, number = rest.rpartition(",")
        match = _COUNTER.fullmatch(number)
        if match is None:
            raise ValueError(f"bad HOTP counter {number.strip()[:32]!r}")
        counter = _c_integer(match.group(1) or "0")
        if counter >= 2**64:
            raise ValueError("HOTP counter larger than 64 bits")
        secret_text = secret_text[: secret_text.rindex(",")]
    return OathToken(mode, _decode_key(rest), algorithm, counter, secret_text)


def _c_integer(digits: str) -> int:
    """A C integer literal as strtol(..., 0) reads it: 0x hex, leading-zero octal, decimal."""
    if digits[:2].lower() == "0x":
        return int(digits[2:], 16)
    return int(digits, 8) if digits.startswith("0") else int(digits)


def _decode_key(text: str) -> bytes:
    if text[:7].lower() == "base32:":
        encoded = text[7:]
        if not encoded or len(encoded) % 8:
            raise ValueError("base32 secret: a multiple of 8 characters, padded with '='")
        try:
            key = base64.b32decode(encoded, casefold=True)
        except binascii.Error:
            raise ValueError("base32 secret: not valid base32") from None
    elif text.startswith("0x"):
        digits = text[2:]
        if len(digits) < 2 or not _HEX.fullmatch(digits):
            raise ValueError("hex secret: 0x and at least two hex digits")
        key = bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)
    else:
        key = text.encode("utf-8")
    if not key:
        raise ValueError("empty secret")
    return key


def hotp(key: bytes, counter: int, algorithm: Algorithm = "sha1", digits: int = DIGITS) -> str:
    """RFC 4226 §5.3: HMAC over the 8-byte counter, dynamically truncated."""
    if not 0 <= counter < 2**64:
        raise ValueError(f"counter {counter} out of range")
    mac = hmac_digest(key, counter.to_bytes(8, "big"), algorithm)
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def hmac_digest(key: bytes, message: bytes, algorithm: Algorithm) -> bytes:
    """RFC 2104 HMAC: H((K ^ opad) || H((K ^ ipad) || message)), K padded to a block."""
    new = _hash(algorithm)
    block = new().block_size
    if len(key) > block:
        key = new(key).digest()
    key = key.ljust(block, b"\0")
    inner = new(bytes(b ^ 0x36 for b in key) + message).digest()
    return new(bytes(b ^ 0x5C for b in key) + inner).digest()


def totp_step(now: float, period: int = TOTP_PERIOD) -> int:
    """RFC 6238 §4.2: the time step of *now* (seconds since the epoch), T0 = 0."""
    return int(now) // period
