"""The client certificate and its key, from the bytes the launcher read (``-c``, ``-k``).

The launcher reads the files as root (launcher/client_cert.py) and the worker gets
their bytes in its Start message; it never opens them. They are parsed here, in the
sandboxed worker, and handed to OpenSSL in memory (worker/io/tls.py).

Accepted, as openconnect takes them:

- the certificate file: PEM (one or more certificates, in any order, perhaps with the
  key), DER (one certificate), or PKCS#12 (the key, its certificate and a chain);
- the key file, or the key in the PEM certificate file: PEM or DER, PKCS#1 (RSA),
  SEC1 (EC) or PKCS#8, PKCS#8 encrypted or legacy encrypted PEM (``--key-password``).

The leaf is the certificate whose public key is the key's; the other certificates
go out as its chain.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_private_key,
    load_pem_private_key,
    pkcs12,
)

__all__ = ["ClientCertError", "ClientCredential", "load_client_credential"]

ClientKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----\r?\n.*?-----END \1-----", re.DOTALL
)
_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_HINT = "--key-password, --key-password-file or --key-password-on-stdin"
_ENCRYPTED = f"the key is encrypted: give its password ({_HINT})"


class ClientCertError(Exception):
    """The certificate or key cannot be used; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class ClientCredential:
    """The leaf certificate, the chain to send after it, and the key."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: ClientKey

    def __repr__(self) -> str:  # never print the key
        return f"ClientCredential(subject={self.leaf.subject.rfc4514_string()!r}, key=<hidden>)"


def _spki(key: ClientKey | x509.Certificate) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


KeyLoader = Callable[[bytes, bytes | None], PrivateKeyTypes]


def _decrypting(load: KeyLoader, data: bytes, password: str | None) -> PrivateKeyTypes:
    """``load(data, password)``: a password for an unencrypted key is ignored (as by
    openconnect); a missing or wrong one is a ClientCertError."""
    secret = None if password is None else password.encode()
    try:
        try:
            return load(data, secret)
        except TypeError:  # cryptography: "Password was not given but ... is encrypted"
            if secret is None:
                raise ClientCertError(_ENCRYPTED) from None
            return load(data, None)  # "Password was given but ... is not encrypted"
    except ValueError as exc:
        reason = str(exc).split("\n")[0]
        if secret is not None and _encrypted(load, data):
            # About one wrong password in 250 decrypts to valid padding, and the error
            # is then the DER parser's, not "Incorrect password".
            raise ClientCertError("the key password is wrong (or the key is damaged)") from None
        raise ClientCertError(f"the key cannot be read: {reason[:200]}") from None


def _encrypted(load: KeyLoader, data: bytes) -> bool:
    try:
        load(data, None)
    except TypeError:  # "Password was not given but private key is encrypted"
        return True
    except ValueError:
        return False
    return False


def _key_from(data: bytes, password: str | None, what: str) -> PrivateKeyTypes:
    if b"-----BEGIN" in data:
        match = _PEM_KEY.search(data)
        if match is None:
            raise ClientCertError(f"no PEM private key in {what}")
        block = match.group(0)
        try:
            return _decrypting(load_pem_private_key, block, password)
        except ClientCertError:
            if match.group(1) != b"EC PRIVATE KEY" or b"Proc-Type:" in block:
                raise
            body = b"".join(block.splitlines()[1:-1])
            key = _sec1_key_untrusted(base64.b64decode(body, validate=False))
            if key is None:
                raise
            return key
    try:
        return _decrypting(load_der_private_key, data, password)
    except ClientCertError:
        key = _sec1_key_untrusted(data)
        if key is None:
            raise
        return key


# namedCurve OIDs (RFC 5480), as the contents of their DER OBJECT IDENTIFIER
_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("2a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("2b81040022"): ec.SECP384R1(),
    bytes.fromhex("2b81040023"): ec.SECP521R1(),
}


def _der_element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at ``pos``; ValueError if cut short."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, first, pos = data[pos], data[pos + 1], pos + 2
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 2 or pos + count > len(data):
            raise ValueError("bad length")
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    else:
        length = first
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _sec1_key_untrusted(der: bytes) -> ec.EllipticCurvePrivateKey | None:
    """An RFC 5915 ECPrivateKey whose privateKey has a leading zero byte, or None.

    GnuTLS's certtool writes the scalar as an integer: with a 0x00 in front when its top
    bit is set (33 bytes for P-256, half of its keys). RFC 5915 says the curve's size,
    and cryptography refuses any other while OpenSSL and GnuTLS (openconnect) take it,
    so the scalar and the curve are read here and the key derived from them::

        ECPrivateKey ::= SEQUENCE { version INTEGER (1), privateKey OCTET STRING,
            parameters [0] ECParameters (a namedCurve OID) OPTIONAL, publicKey [1] ... }
    """
    try:
        tag, pos, end = _der_element(der, 0)
        if tag != 0x30 or end != len(der):
            return None
        tag, start, pos = _der_element(der, pos)
        if tag != 0x02 or der[start:pos] != b"\x01":
            return None
        tag, start, pos = _der_element(der, pos)
        scalar = der[start:pos]
        if tag != 0x04 or not scalar:
            return None
        tag, start, pos = _der_element(der, pos)
        if tag != 0xA0:
            return None
        tag, start, stop = _der_element(der, start)
        curve = _CURVES.get(der[start:stop]) if tag == 0x06 else None
        if curve is None:
            return None
        return ec.derive_private_key(int.from_bytes(scalar, "big"), curve)
    except ValueError:  # truncated DER, or a scalar out of range
        return None


def _pkcs12(
    data: bytes, password: str | None
) -> tuple[PrivateKeyTypes | None, list[x509.Certificate]]:
    attempts = [None if password is None else password.encode()]
    if password is None:
        attempts.append(b"")  # an empty password, as certtool and openssl write it
    reason = ""
    for secret in attempts:
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, secret)
        except ValueError as exc:
            reason = str(exc).split("\n")[0]
            continue
        certs = ([cert] if cert is not None else []) + list(extra)
        return key, certs
    if password is None:
        raise ClientCertError(f"the PKCS#12 file is encrypted: give its password ({_HINT})")
    if "password" in reason.lower() or "decrypt" in reason.lower() or "mac" in reason.lower():
        raise ClientCertError("the PKCS#12 password is wrong (or the file is damaged)")
    raise ClientCertError(f"the certificate file cannot be read as PKCS#12: {reason[:200]}")


def _certificates(
    cert_file: bytes, password: str | None
) -> tuple[list[x509.Certificate], PrivateKeyTypes | None]:
    """The certificates of the ``-c`` file, and a key if it holds one (PEM or PKCS#12)."""
    if b"-----BEGIN" in cert_file:
        try:
            certs = x509.load_pem_x509_certificates(cert_file)
        except ValueError:
            raise ClientCertError("no PEM certificate in the certificate file") from None
        key = _key_from(cert_file, password, "it") if _PEM_KEY.search(cert_file) else None
        return certs, key
    try:
        return [x509.load_der_x509_certificate(cert_file)], None
    except ValueError:
        pass
    key, certs = _pkcs12(cert_file, password)
    if not certs:
        raise ClientCertError("the PKCS#12 file holds no certificate")
    return certs, key


def load_client_credential(
    cert_file: bytes, key_file: bytes | None, password: str | None
) -> ClientCredential:
    """Parse the ``-c`` file (and the ``-k`` file, if any); raises ClientCertError."""
    certs, key = _certificates(cert_file, password)
    if key_file is not None:
        key = _key_from(key_file, password, "the key file")
    if key is None:
        raise ClientCertError("no private key: give it with -k/--sslkey")
    if not isinstance(key, _KEY_TYPES):
        raise ClientCertError(f"unsupported key type {type(key).__name__} (RSA, EC or EdDSA)")
    public = _spki(key)
    leaves = [c for c in certs if _spki(c) == public]
    if not leaves:
        raise ClientCertError("the key does not belong to the certificate")
    leaf = leaves[0]
    return ClientCredential(leaf=leaf, chain=tuple(c for c in certs if c is not leaf), key=key)
