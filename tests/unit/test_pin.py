"""``--servercert`` pins (worker/proto/pin.py, worker/io/tls.py describe_pin).

The reference for ``pin-sha256:`` is the openssl CLI pipeline in tests/lab.py
(``openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst
-sha256 -binary | base64``), run on certificates the openssl CLI generates here, one
per key type. RSA-PSS is the case that broke: cryptography re-encodes an
``rsassaPss`` key as ``rsaEncryption``, so a pin over its re-encoded key differs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconnect.ipc.session_limits import SERVER_PIN
from sepconnect.worker.io.tls import CertificateInvalid, TrustConfig, _verify, describe_pin
from sepconnect.worker.proto.pin import (
    MAX_CERTIFICATE_DER,
    MalformedCertificate,
    ServerPin,
    fingerprint_untrusted,
    matches_untrusted,
    spki_pin_untrusted,
    subject_public_key_info_untrusted,
)

from lab import openssl_spki_pin

# --------------------------------------------------------------------------- DER walk

# A hand-made certificate skeleton (RFC 5280 §4.1 shape; the walker looks at tags and
# lengths only, never inside the skipped elements):
SPKI = bytes.fromhex("3009300306012a030200ff")  # SEQ { SEQ { OID 1.2 } BIT STRING }
TBS_V3 = (
    bytes.fromhex("a003020102")  # [0] EXPLICIT version v3
    + bytes.fromhex("020101")  # serialNumber 1
    + bytes.fromhex("3000")  # signature
    + bytes.fromhex("3000")  # issuer
    + bytes.fromhex("3000")  # validity
    + bytes.fromhex("3000")  # subject
    + SPKI
    + bytes.fromhex("a300")  # [3] extensions: after the SPKI, never looked at
)
SIG = bytes.fromhex("3000030100")  # signatureAlgorithm, signatureValue


def _seq(content: bytes, tag: int = 0x30) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


CERT_V3 = _seq(_seq(TBS_V3) + SIG)


def test_walks_to_the_spki_of_a_v3_skeleton() -> None:
    assert CERT_V3.hex() == (
        "3024" "301d" "a003020102" "020101" "3000" "3000" "3000" "3000"
        "3009300306012a030200ff" "a300" "3000030100"
    )  # fmt: skip
    assert subject_public_key_info_untrusted(CERT_V3) == SPKI


def test_version_is_optional() -> None:
    v1 = _seq(_seq(TBS_V3[5:]) + SIG)  # v1 certificates have no [0] version
    assert subject_public_key_info_untrusted(v1) == SPKI


def test_long_form_lengths() -> None:
    subject = _seq(b"\x05\x00" * 100)  # 200 bytes: 30 81 c8 ...
    assert subject[:3] == bytes.fromhex("3081c8")
    key = _seq(b"\x04\x82\x01\x00" + b"\xab" * 256)  # 260 bytes: 30 82 01 04 ...
    tbs = bytes.fromhex("020101300030003000") + subject + key
    cert = _seq(_seq(tbs) + SIG)
    assert cert[1] == 0x82  # the Certificate's length takes two bytes
    assert subject_public_key_info_untrusted(cert) == key


def test_spki_is_the_last_element_of_tbs() -> None:
    cert = _seq(_seq(TBS_V3[: -len(b"\xa3\x00")]) + SIG)
    assert subject_public_key_info_untrusted(cert) == SPKI


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "one byte": b"\x30",
    "not a SEQUENCE": _seq(_seq(TBS_V3) + SIG, tag=0x31),
    "trailing bytes": CERT_V3 + b"\x00",
    "cut short": CERT_V3[:-1],
    "indefinite length": b"\x30\x80" + CERT_V3[2:] + b"\x00\x00",
    "non-minimal short length": b"\x30\x81\x26" + CERT_V3[2:],
    "length with a leading zero": b"\x30\x82\x00\x26" + CERT_V3[2:],
    "five length bytes": b"\x30\x85\x00\x00\x00\x00\x26" + CERT_V3[2:],
    "length past the end": b"\x30\x84\x7f\xff\xff\xff" + CERT_V3[2:],
    "high tag number": _seq(b"\x1f\x81\x00\x00"),
    "tbs is not a SEQUENCE": _seq(_seq(TBS_V3, tag=0x31) + SIG),
    "no serial number": _seq(_seq(bytes.fromhex("a003020102")) + SIG),
    "serial is not an INTEGER": _seq(_seq(bytes.fromhex("0401") + TBS_V3[6:]) + SIG),
    "issuer is a SET": _seq(_seq(TBS_V3[:8] + bytes.fromhex("30003100") + TBS_V3[12:]) + SIG),
    "no SPKI": _seq(_seq(TBS_V3[: TBS_V3.index(SPKI)]) + SIG),
    "SPKI past the tbs": _seq(_seq(TBS_V3[: TBS_V3.index(SPKI)] + b"\x30\x0b" + SPKI[2:]) + SIG),
    "version past the tbs": _seq(_seq(bytes.fromhex("a005020102")) + SIG),
}


@pytest.mark.parametrize("der", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_der_raises_the_declared_error(der: bytes) -> None:
    with pytest.raises(MalformedCertificate):
        subject_public_key_info_untrusted(der)
    with pytest.raises(MalformedCertificate):
        spki_pin_untrusted(der)


def test_oversized_input_is_refused_before_walking() -> None:
    big = _seq(b"\x00" * MAX_CERTIFICATE_DER)
    with pytest.raises(MalformedCertificate, match="larger than"):
        subject_public_key_info_untrusted(big)


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=200)
    | st.builds(lambda i, b: CERT_V3[:i] + b, st.integers(0, 40), st.binary(max_size=8))
)
def test_fuzz_raises_only_malformed_certificate(data: bytes) -> None:
    # a pin of the whole certificate hashes any bytes; one of the public key walks them
    assert fingerprint_untrusted("cert-sha1", data) == hashlib.sha1(data).hexdigest()
    for kind in ("pin-sha256", "sha256", "sha1"):
        with contextlib.suppress(MalformedCertificate):
            fingerprint_untrusted(kind, data)
            matches_untrusted(ServerPin(kind, "abcd"), data)
            spki_pin_untrusted(data)
    try:
        spki = subject_public_key_info_untrusted(data)
    except MalformedCertificate:
        return
    assert spki in data
    assert spki[0] == 0x30


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(CERT_V3) - 1), st.integers(0, 255))
def test_fuzz_single_byte_changes(index: int, value: int) -> None:
    data = bytearray(CERT_V3)
    data[index] = value
    with contextlib.suppress(MalformedCertificate):
        subject_public_key_info_untrusted(bytes(data))


# --------------------------------------------------------------------------- ServerPin


B64 = base64.b64encode(bytes(range(32))).decode()
HEX32, HEX20 = bytes(range(32)).hex(), bytes(range(20)).hex()


@pytest.mark.parametrize(
    ("text", "kind", "normal"),
    [
        # every form openconnect's --servercert takes (library.c
        # openconnect_check_peer_cert_hash): the type in lower case, hex in either case
        (f"pin-sha256:{B64}", "pin-sha256", f"pin-sha256:{B64}"),
        (f"PIN-SHA256:{B64}", "pin-sha256", f"pin-sha256:{B64}"),
        (f"sha256:{HEX32.upper()}", "sha256", f"sha256:{HEX32}"),
        (f"sha1:{HEX20}", "sha1", f"sha1:{HEX20}"),
        (f"SHA1:{HEX20.upper()}", "sha1", f"sha1:{HEX20}"),
        (HEX20.upper(), "cert-sha1", HEX20),  # no type: SHA-1 of the whole certificate
        # prefixes of 4 characters or more
        ("pin-sha256:AAEC", "pin-sha256", "pin-sha256:AAEC"),
        ("sha256:0001", "sha256", "sha256:0001"),
        ("sha1:AbCdEf", "sha1", "sha1:abcdef"),
        ("0a1B", "cert-sha1", "0a1b"),
    ],
)
def test_parse_every_openconnect_form(text: str, kind: str, normal: str) -> None:
    pin = ServerPin.parse(text)
    assert pin.kind == kind
    assert str(pin) == normal
    assert ServerPin.parse(str(pin)) == pin
    assert re.fullmatch(SERVER_PIN, normal)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sha1:00", "at least 4 characters"),
        ("abc", "at least 4 characters"),
        ("pin-sha256:!!!!", "expected pin-sha256"),
        ("sha256:zzzz", "expected pin-sha256"),
        ("sha256:" + HEX32 + "00", "longer than a sha256 fingerprint"),
        ("sha1:" + HEX32, "longer than a sha1 fingerprint"),
        (HEX32, "longer than a cert-sha1 fingerprint"),
        ("pin-sha256:" + B64 + "A", "expected pin-sha256"),
        ("md5:" + HEX20, "unknown type 'md5'"),
        ("sha256:", "expected pin-sha256"),
    ],
)
def test_parse_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="--servercert") as info:
        ServerPin.parse(text)
    assert reason in str(info.value)


def test_prefix_bits() -> None:
    assert ServerPin.parse(f"pin-sha256:{B64}").bits == 256
    assert not ServerPin.parse(f"pin-sha256:{B64}").is_prefix
    assert ServerPin.parse("pin-sha256:AAEC").bits == 24
    assert ServerPin.parse(f"sha1:{HEX20}").bits == 160
    assert ServerPin.parse("sha256:0001").is_prefix
    assert ServerPin.parse("0001").bits == 16


def test_pins_of_the_skeleton() -> None:
    spki_sha256 = hashlib.sha256(SPKI).digest()
    whole = "pin-sha256:" + base64.b64encode(spki_sha256).decode()
    assert str(spki_pin_untrusted(CERT_V3)) == whole
    fingerprints = {
        "pin-sha256": base64.b64encode(spki_sha256).decode(),
        "sha256": spki_sha256.hex(),  # of the public key, as openconnect; not the certificate
        "sha1": hashlib.sha1(SPKI).hexdigest(),
        "cert-sha1": hashlib.sha1(CERT_V3).hexdigest(),
    }
    for kind, fingerprint in fingerprints.items():
        assert fingerprint_untrusted(kind, CERT_V3) == fingerprint
        for length in (4, 11, len(fingerprint)):
            assert matches_untrusted(ServerPin(kind, fingerprint[:length].lower()
                                               if kind != "pin-sha256" else fingerprint[:length]),
                                     CERT_V3), (kind, length)  # fmt: skip
        other = ServerPin(kind, ("B" if fingerprint[0] == "a" else "a") + fingerprint[1:])
        assert not matches_untrusted(other, CERT_V3)
    assert not matches_untrusted(ServerPin("sha256", hashlib.sha256(CERT_V3).hexdigest()), CERT_V3)
    # base64 is compared as written: another case is another pin
    swapped = fingerprints["pin-sha256"].swapcase()
    assert not matches_untrusted(ServerPin("pin-sha256", swapped), CERT_V3)


# --------------------------------------------------------------------------- against openssl

# openssl genpkey arguments per key type; RSA-PSS both without parameters (the
# AlgorithmIdentifier is the rsassaPss OID alone) and restricted to SHA-256 (with
# RSASSA-PSS-params)
KEYS: dict[str, tuple[str, ...]] = {
    "rsa": ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"),
    "rsa-pss": ("-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"),
    "rsa-pss-params": (
        "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048",
        "-pkeyopt", "rsa_pss_keygen_md:sha256", "-pkeyopt", "rsa_pss_keygen_saltlen:32",
    ),
    "ec-p256": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
    "ed25519": ("-algorithm", "ED25519"),
}  # fmt: skip

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module", params=sorted(KEYS))
def openssl_cert(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, bytes]:
    kind: str = request.param
    folder: Path = tmp_path_factory.mktemp(kind)
    key, cert = folder / "key.pem", folder / "cert.pem"
    _openssl("genpkey", *KEYS[kind], "-out", str(key))
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(key),
        "-subj",
        f"/CN={kind}.test",
        "-days",
        "2",
        "-out",
        str(cert),
    )
    return kind, cert.read_bytes()


@needs_openssl
def test_pin_equals_openssls(openssl_cert: tuple[str, bytes]) -> None:
    kind, pem = openssl_cert
    expected = openssl_spki_pin(pem)
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(Encoding.DER)
    assert str(spki_pin_untrusted(der)) == expected, kind
    assert describe_pin(cert) == expected, kind
    assert matches_untrusted(ServerPin.parse(expected), der), kind
    # the SPKI cut out of the certificate is the one openssl writes back
    pubkey = "set -o pipefail; openssl x509 -pubkey -noout | openssl pkey -pubin -outform der"
    spki_der = subprocess.run(
        ["bash", "-c", pubkey],
        input=pem, check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    assert subject_public_key_info_untrusted(der) == spki_der, kind
    # the hex forms: openssl dgst over that SPKI, and openssl's certificate fingerprint
    for algo in ("sha256", "sha1"):
        out = subprocess.run(
            ["openssl", "dgst", f"-{algo}", "-r"], input=spki_der,
            check=True, capture_output=True, timeout=60,
        ).stdout.decode().split()[0]  # fmt: skip
        assert fingerprint_untrusted(algo, der) == out, (kind, algo)
        assert matches_untrusted(ServerPin.parse(f"{algo}:{out.upper()}"), der), (kind, algo)
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha1"], input=pem,
        check=True, capture_output=True, timeout=60,
    ).stdout.decode()  # fmt: skip
    sha1 = out.strip().split("=", 1)[1].replace(":", "")
    assert matches_untrusted(ServerPin.parse(sha1), der), kind


@needs_openssl
def test_rsa_pss_pin_differs_from_the_re_encoded_key(openssl_cert: tuple[str, bytes]) -> None:
    """Why the pin is taken from the certificate's bytes: cryptography hands back an
    RSA-PSS key as rsaEncryption (the bug of issue 16), the other keys unchanged."""
    kind, pem = openssl_cert
    cert = x509.load_pem_x509_certificate(pem)
    reencoded = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    own = subject_public_key_info_untrusted(cert.public_bytes(Encoding.DER))
    assert (reencoded != own) == kind.startswith("rsa-pss"), kind


@needs_openssl
def test_verify_accepts_openssls_pin_and_names_it_on_mismatch(
    openssl_cert: tuple[str, bytes],
) -> None:
    kind, pem = openssl_cert
    expected = openssl_spki_pin(pem)
    cert = x509.load_pem_x509_certificate(pem)
    _verify("198.18.1.1", [cert], TrustConfig(pins=(ServerPin.parse(expected),), ca_pem=None))
    wrong = ServerPin("pin-sha256", "A" * 43 + "=")
    with pytest.raises(CertificateInvalid, match="does not match") as info:
        _verify("198.18.1.1", [cert], TrustConfig(pins=(wrong,), ca_pem=None))
    assert expected in str(info.value), kind


@needs_openssl
def test_every_pin_counts(openssl_cert: tuple[str, bytes]) -> None:
    # Several --servercert pins: the certificate must match one of them, wherever it
    # stands in the list (before, the last pin given silently replaced the others).
    _, pem = openssl_cert
    cert = x509.load_pem_x509_certificate(pem)
    right = ServerPin.parse(openssl_spki_pin(pem))
    cert_pin = ServerPin("cert-sha1", hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest())
    wrong, wrong2 = ServerPin("pin-sha256", "A" * 43 + "="), ServerPin("cert-sha1", "00" * 20)
    for pins in ((right, wrong), (wrong, right), (wrong, wrong2, cert_pin)):
        _verify("198.18.1.1", [cert], TrustConfig(pins=pins, ca_pem=None))
    with pytest.raises(CertificateInvalid, match="does not match"):
        _verify("198.18.1.1", [cert], TrustConfig(pins=(wrong, wrong2), ca_pem=None))
