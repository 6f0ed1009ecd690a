"""Client certificates: the worker's parser of the -c/-k bytes (worker/client_cert.py) and
the launcher's checks of the files (launcher/client_cert.py). Keys are made here."""

from __future__ import annotations

import argparse
import base64
import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    pkcs12,
)
from cryptography.x509.oid import NameOID

from sepconnect import client_cert as launcher
from sepconnect.worker.client_cert import (
    ClientCertError,
    _sec1_key_untrusted,
    load_client_credential,
)

PASSWORD = "pässword"


def _cert(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_CERT, RSA_CERT = _cert(EC_KEY, "ec"), _cert(RSA_KEY, "rsa")
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_CERT = _cert(CA_KEY, "ca")


def _key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, enc: Encoding, fmt: PrivateFormat,
         password: str | None = None) -> bytes:  # fmt: skip
    cipher = NoEncryption() if password is None else BestAvailableEncryption(password.encode())
    return key.private_bytes(enc, fmt, cipher)


PEM, DER = Encoding.PEM, Encoding.DER
TRAD, P8 = PrivateFormat.TraditionalOpenSSL, PrivateFormat.PKCS8  # PKCS#1 or SEC1; PKCS#8


@pytest.mark.parametrize(
    ("cert", "key", "password"),
    [
        (EC_CERT.public_bytes(PEM), _key(EC_KEY, PEM, TRAD), None),
        (RSA_CERT.public_bytes(PEM), _key(RSA_KEY, PEM, TRAD), None),
        (EC_CERT.public_bytes(DER), _key(EC_KEY, DER, P8), None),
        (RSA_CERT.public_bytes(DER), _key(RSA_KEY, DER, TRAD), None),
        (EC_CERT.public_bytes(PEM), _key(EC_KEY, PEM, P8, PASSWORD), PASSWORD),
        (RSA_CERT.public_bytes(PEM), _key(RSA_KEY, DER, P8, PASSWORD), PASSWORD),
        (RSA_CERT.public_bytes(PEM), _key(RSA_KEY, PEM, TRAD, PASSWORD), PASSWORD),
        # a password for a key that has none is ignored, as by openconnect
        (EC_CERT.public_bytes(PEM), _key(EC_KEY, PEM, P8), PASSWORD),
    ],
    ids=["pem-sec1", "pem-pkcs1", "der-pkcs8", "der-pkcs1", "pem-pkcs8-enc", "der-pkcs8-enc",
         "pem-legacy-enc", "password-ignored"],
)  # fmt: skip
def test_key_forms(cert: bytes, key: bytes, password: str | None) -> None:
    cred = load_client_credential(cert, key, password)
    assert cred.leaf.public_key() == cred.key.public_key()
    assert cred.chain == ()
    assert "PRIVATE" not in repr(cred)


def test_pem_bundle_with_chain_in_any_order() -> None:
    bundle = (
        CA_CERT.public_bytes(Encoding.PEM)
        + _key(RSA_KEY, Encoding.PEM, PrivateFormat.PKCS8)
        + RSA_CERT.public_bytes(Encoding.PEM)
    )
    cred = load_client_credential(bundle, None, None)
    assert cred.leaf == RSA_CERT
    assert cred.chain == (CA_CERT,)


@pytest.mark.parametrize("password", [PASSWORD, None])
def test_pkcs12(password: str | None) -> None:
    cipher = NoEncryption() if password is None else BestAvailableEncryption(password.encode())
    p12 = pkcs12.serialize_key_and_certificates(b"c", EC_KEY, EC_CERT, [CA_CERT], cipher)
    cred = load_client_credential(p12, None, password)
    assert (cred.leaf, cred.chain) == (EC_CERT, (CA_CERT,))


def test_refusals() -> None:
    pem = EC_CERT.public_bytes(Encoding.PEM)
    encrypted = _key(EC_KEY, Encoding.PEM, PrivateFormat.PKCS8, PASSWORD)
    with pytest.raises(ClientCertError, match="encrypted: give its password"):
        load_client_credential(pem, encrypted, None)
    with pytest.raises(ClientCertError, match="password is wrong"):
        load_client_credential(pem, encrypted, "wrong")
    with pytest.raises(ClientCertError, match="does not belong"):
        load_client_credential(pem, _key(RSA_KEY, Encoding.PEM, PrivateFormat.PKCS8), None)
    with pytest.raises(ClientCertError, match="no private key"):
        load_client_credential(pem, None, None)
    p12 = pkcs12.serialize_key_and_certificates(
        b"c", EC_KEY, EC_CERT, None, BestAvailableEncryption(PASSWORD.encode())
    )
    with pytest.raises(ClientCertError, match="PKCS#12 password is wrong"):
        load_client_credential(p12, None, "wrong")
    with pytest.raises(ClientCertError, match="PKCS#12 file is encrypted"):
        load_client_credential(p12, None, None)
    with pytest.raises(ClientCertError):
        load_client_credential(b"\x30\x03\x02\x01\x00", None, None)


def test_every_wrong_password_is_called_wrong() -> None:
    # A wrong password decrypts to valid padding about once in 250 tries; the DER
    # parser's error must not then reach the user as "cannot be read".
    encrypted = _key(EC_KEY, Encoding.PEM, PrivateFormat.PKCS8, PASSWORD)
    for attempt in range(1500):
        with pytest.raises(ClientCertError, match="password is wrong"):
            load_client_credential(EC_CERT.public_bytes(Encoding.PEM), encrypted, f"no{attempt}")


def test_gnutls_ec_key_with_a_leading_zero_byte() -> None:
    # certtool writes P-256's scalar as 33 bytes (0x00 first) when its top bit is set.
    while True:
        key = ec.generate_private_key(ec.SECP256R1())
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        if scalar[0] & 0x80:
            break
    der = _key(key, Encoding.DER, PrivateFormat.TraditionalOpenSSL)
    assert der[5:7] == b"\x04\x20"  # OCTET STRING of 32 bytes, after the version
    long_der = bytearray(der[:5] + b"\x04\x21\x00" + der[7:])
    long_der[1] += 1  # the outer SEQUENCE grew by one byte (short-form length)
    derived = _sec1_key_untrusted(bytes(long_der))
    assert derived is not None
    assert derived.private_numbers() == key.private_numbers()
    cert = _cert(key, "gnutls").public_bytes(Encoding.PEM)
    pem = b"-----BEGIN EC PRIVATE KEY-----\n" + base64.encodebytes(bytes(long_der))
    pem += b"-----END EC PRIVATE KEY-----\n"
    assert load_client_credential(cert, pem, None).key.private_numbers() == key.private_numbers()
    assert _sec1_key_untrusted(bytes(long_der[:-5])) is None  # cut short


# --------------------------------------------------------------------------- the launcher


def _args(**given: object) -> argparse.Namespace:
    fields: dict[str, object] = {
        "certificate": None,
        "sslkey": None,
        "key_password": None,
        "key_password_file": None,
        "key_password_on_stdin": False,
    }
    return argparse.Namespace(**{**fields, **given})


def _write(path: Path, data: bytes, mode: int) -> str:
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def test_launcher_reads_the_files_and_checks_the_key_files_mode(tmp_path: Path) -> None:
    cert = _write(tmp_path / "c.pem", EC_CERT.public_bytes(Encoding.PEM), 0o644)
    key = _write(tmp_path / "k.pem", _key(EC_KEY, Encoding.PEM, PrivateFormat.PKCS8), 0o600)
    files = launcher.read_client_cert(_args(certificate=cert, sslkey=key, key_password="x"))
    assert files.cert == Path(cert).read_bytes()
    assert files.key == Path(key).read_bytes()
    assert files.password == "x"
    assert "x" not in repr(files).replace("ClientCertFiles", "")
    os.chmod(key, 0o640)
    with pytest.raises(launcher.OptionError, match=r"mode 0600 or stricter\); .*mode 0640"):
        launcher.read_client_cert(_args(certificate=cert, sslkey=key))


def test_launcher_knows_which_certificate_files_hold_a_key() -> None:
    assert not launcher.holds_key(EC_CERT.public_bytes(Encoding.PEM))
    assert not launcher.holds_key(EC_CERT.public_bytes(Encoding.DER))
    assert launcher.holds_key(
        EC_CERT.public_bytes(Encoding.PEM) + _key(EC_KEY, Encoding.PEM, PrivateFormat.PKCS8)
    )
    p12 = pkcs12.serialize_key_and_certificates(b"c", EC_KEY, EC_CERT, None, NoEncryption())
    assert launcher.holds_key(p12)


def test_launcher_refusals(tmp_path: Path) -> None:
    cert = _write(tmp_path / "c.pem", EC_CERT.public_bytes(Encoding.PEM), 0o644)
    p12 = pkcs12.serialize_key_and_certificates(b"c", EC_KEY, EC_CERT, None, NoEncryption())
    loose_p12 = _write(tmp_path / "c.p12", p12, 0o644)
    cases = [
        (_args(sslkey=cert), "-k/--sslkey goes with -c/--certificate"),
        (_args(key_password="x"), "--key-password goes with -c/--certificate"),
        (_args(certificate=cert, key_password="x", key_password_on_stdin=True), "one way only"),
        (_args(certificate="pkcs11:token=t;object=o"), "PKCS#11 tokens are not supported"),
        (_args(certificate=cert), "no private key in it; give it with -k/--sslkey"),
        (_args(certificate=loose_p12), r"-c/--certificate .*holds a private key"),
        (_args(certificate=str(tmp_path / "missing")), "No such file"),
        (_args(certificate=str(tmp_path)), "not a regular file|Is a directory"),
    ]
    for args, message in cases:
        with pytest.raises(launcher.OptionError, match=message):
            launcher.read_client_cert(args)
    key = _write(tmp_path / "k.pem", _key(EC_KEY, Encoding.PEM, PrivateFormat.PKCS8), 0o600)
    with pytest.raises(launcher.OptionError, match="together: .* more than the 60000"):
        launcher.read_client_cert(_args(certificate=cert, sslkey=key), other_bytes=59_500)
