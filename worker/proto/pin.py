"""Matching a ``--servercert`` pin (ipc/servercert.py) against the server's certificate.

A ``pin-sha256`` pin is the SHA-256 of the SubjectPublicKeyInfo bytes exactly as they
appear in the certificate, which is what ``openssl x509 -pubkey -noout | openssl pkey
-pubin -outform der | openssl dgst -sha256 -binary | base64`` and openconnect compute;
``sha256:`` and ``sha1:`` pins are the SHA-256 and SHA-1 of the same bytes in hex, and a
pin without a type the SHA-1 of the whole certificate (as openconnect's
``openconnect_check_peer_cert_hash``). Those bytes are cut out of the certificate's DER by
:func:`subject_public_key_info_untrusted` and never re-encoded by a library: cryptography,
for one, re-encodes an RSA-PSS key (``rsassaPss``, with or without parameters) as
``rsaEncryption``, which hashes to a different pin.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.hashes import HashAlgorithm

from sepconnect.ipc.servercert import ServerPin

__all__ = [
    "MAX_CERTIFICATE_DER",
    "MalformedCertificate",
    "ServerPin",
    "fingerprint_untrusted",
    "matches_untrusted",
    "spki_pin_untrusted",
]

#: Largest certificate we walk (a certificate with a large RSA key and many
#: extensions is a few KiB; TLS itself caps one certificate at 2^24 - 1 bytes).
MAX_CERTIFICATE_DER: Final = 1 << 20

_SEQUENCE: Final = 0x30
_INTEGER: Final = 0x02
_VERSION: Final = 0xA0  # [0] EXPLICIT, constructed


class MalformedCertificate(ValueError):
    """The certificate's DER does not lead to a SubjectPublicKeyInfo (RFC 5280 §4.1)."""


def matches_untrusted(pin: ServerPin, cert_der: bytes) -> bool:
    """Whether the DER certificate *cert_der* has *pin* (or, for a prefix, a fingerprint
    that starts with it); raises MalformedCertificate (for a pin of the public key) if
    its DER cannot be walked."""
    return pin.matches(fingerprint_untrusted(pin.kind, cert_der))


def fingerprint_untrusted(kind: str, cert_der: bytes) -> str:
    """The whole fingerprint of *kind* (ipc/servercert.py) of a DER certificate, without
    the type: base64 for ``pin-sha256``, lower-case hex for the others."""
    from cryptography.hazmat.primitives import hashes

    if kind == "cert-sha1":
        return _digest(hashes.SHA1(), cert_der).hex()  # noqa: S303 - openconnect's form
    spki = subject_public_key_info_untrusted(cert_der)
    if kind == "pin-sha256":
        return base64.b64encode(_digest(hashes.SHA256(), spki)).decode()
    if kind == "sha256":
        return _digest(hashes.SHA256(), spki).hex()
    if kind == "sha1":
        return _digest(hashes.SHA1(), spki).hex()  # noqa: S303 - openconnect's form
    raise ValueError(f"unknown pin type {kind!r}")


def spki_pin_untrusted(cert_der: bytes) -> ServerPin:
    """The whole ``pin-sha256`` pin of a DER certificate: SHA-256 over its own
    SubjectPublicKeyInfo bytes. Raises MalformedCertificate."""
    return ServerPin("pin-sha256", fingerprint_untrusted("pin-sha256", cert_der))


def _digest(algorithm: HashAlgorithm, data: bytes) -> bytes:
    # Imported where called: the DER walk needs no cryptography. The hash is
    # cryptography's, which the worker has loaded anyway; hashlib would load the
    # system's libcrypto too (3.4 MB of RSS).
    from cryptography.hazmat.primitives import hashes

    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def _tlv(data: bytes, pos: int, end: int, what: str) -> tuple[int, int, int]:
    """The DER element at ``data[pos:end]``: (tag, start of its contents, its end).

    Only what a certificate's outer structure uses: one-byte tags (no high tag
    numbers) and definite lengths in minimal form, up to 4 length bytes.
    """
    if pos + 2 > end:
        raise MalformedCertificate(f"certificate DER ends inside the {what} header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise MalformedCertificate(f"certificate DER: unexpected high tag number at {what}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise MalformedCertificate(f"certificate DER: indefinite length at {what}")
        if count > 4:
            raise MalformedCertificate(f"certificate DER: {what} length has {count} bytes")
        if pos + count > end:
            raise MalformedCertificate(f"certificate DER ends inside the {what} length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if data[pos] == 0 or length < 0x80:
            raise MalformedCertificate(f"certificate DER: {what} length is not minimal")
        pos += count
    if length > end - pos:
        raise MalformedCertificate(f"certificate DER: {what} runs past its container")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    got, start, stop = _tlv(data, pos, end, what)
    if got != tag:
        raise MalformedCertificate(f"certificate DER: {what} has tag {got:#04x}, not {tag:#04x}")
    return start, stop


def subject_public_key_info_untrusted(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo element (header included) of a DER certificate, as it
    appears there (RFC 5280 §4.1)::

        Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
        TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER,
            signature SEQUENCE, issuer SEQUENCE, validity SEQUENCE, subject SEQUENCE,
            subjectPublicKeyInfo SEQUENCE, ... }

    Only the elements up to the SubjectPublicKeyInfo are walked, every length checked
    against its container. Raises MalformedCertificate: for input larger than
    MAX_CERTIFICATE_DER, bytes after the certificate, or an element that is cut
    short, not DER as used here, or not the one expected.
    """
    data = bytes(cert_der)
    if len(data) > MAX_CERTIFICATE_DER:
        raise MalformedCertificate(f"certificate DER is larger than {MAX_CERTIFICATE_DER} bytes")
    cert_start, cert_end = _expect(data, 0, len(data), _SEQUENCE, "Certificate")
    if cert_end != len(data):
        raise MalformedCertificate("certificate DER: bytes after the Certificate")
    pos, tbs_end = _expect(data, cert_start, cert_end, _SEQUENCE, "tbsCertificate")
    if pos < tbs_end and data[pos] == _VERSION:
        pos = _expect(data, pos, tbs_end, _VERSION, "version")[1]
    pos = _expect(data, pos, tbs_end, _INTEGER, "serialNumber")[1]
    for what in ("signature", "issuer", "validity", "subject"):
        pos = _expect(data, pos, tbs_end, _SEQUENCE, what)[1]
    spki_end = _expect(data, pos, tbs_end, _SEQUENCE, "subjectPublicKeyInfo")[1]
    return data[pos:spki_end]
