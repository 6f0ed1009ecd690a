"""supervisor/oath.py: HOTP and TOTP against the RFC vectors, and openconnect's
``--token-secret`` syntax (oath.c, set_oath_mode) byte for byte."""

from __future__ import annotations

import base64
import hmac
import subprocess
import sys

import pytest

from sepconnect.supervisor.oath import (
    Algorithm,
    OathToken,
    hmac_digest,
    hotp,
    parse_token_secret,
    totp_step,
)

RFC4226_KEY = b"12345678901234567890"
# RFC 4226 Appendix D: HOTP values for counters 0 to 9
RFC4226_CODES = [
    "755224", "287082", "359152", "969429", "338314",
    "254676", "287922", "162583", "399871", "520489",
]  # fmt: skip

# RFC 6238 Appendix B: 8-digit TOTP values; the seeds for SHA-256 and SHA-512 are the
# ASCII digits repeated to the hash's length (the appendix's reference code)
RFC6238_KEYS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890" * 6 + b"1234",
}
RFC6238_CODES = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("counter", "code"), list(enumerate(RFC4226_CODES)))
def test_rfc4226_vectors(counter: int, code: str) -> None:
    assert hotp(RFC4226_KEY, counter) == code


@pytest.mark.parametrize(("now", "sha1", "sha256", "sha512"), RFC6238_CODES)
def test_rfc6238_vectors(now: int, sha1: str, sha256: str, sha512: str) -> None:
    step = totp_step(now)
    assert hotp(RFC6238_KEYS["sha1"], step, "sha1", digits=8) == sha1
    assert hotp(RFC6238_KEYS["sha256"], step, "sha256", digits=8) == sha256
    assert hotp(RFC6238_KEYS["sha512"], step, "sha512", digits=8) == sha512


def test_six_digits_by_default_with_leading_zeros() -> None:
    # RFC 6238 at 1111111109 is 07081804: the 6-digit code keeps its leading zero
    assert hotp(RFC6238_KEYS["sha1"], totp_step(1111111109)) == "081804"


def test_time_steps() -> None:
    assert [totp_step(t) for t in (0, 29.9, 30, 59, 60)] == [0, 0, 1, 1, 2]


KEY = bytes(range(20))
B32 = base64.b32encode(KEY).decode()  # 32 characters, no padding needed


@pytest.mark.parametrize(
    ("mode", "text", "key", "algorithm", "counter"),
    [
        ("totp", "base32:" + B32, KEY, "sha1", 0),
        ("totp", "BASE32:" + B32.lower(), KEY, "sha1", 0),
        ("totp", "0x" + KEY.hex(), KEY, "sha1", 0),
        ("totp", "0x" + KEY.hex().upper(), KEY, "sha1", 0),
        ("totp", "0xabc", b"\x0a\xbc", "sha1", 0),  # odd: a leading zero nibble
        ("totp", "sha256:0x" + KEY.hex(), KEY, "sha256", 0),
        ("totp", "SHA512:base32:" + B32, KEY, "sha512", 0),
        ("totp", "sha1:12345678901234567890", RFC4226_KEY, "sha1", 0),
        ("totp", "12345678901234567890\n", RFC4226_KEY, "sha1", 0),  # a file's newline
        ("totp", "raw,with,commas", b"raw,with,commas", "sha1", 0),  # TOTP: no counter
        ("hotp", "0x" + KEY.hex() + ",5", KEY, "sha1", 5),
        ("hotp", "base32:" + B32 + ",0x10", KEY, "sha1", 16),
        ("hotp", "base32:" + B32 + ",010", KEY, "sha1", 8),  # strtol base 0: octal
        ("hotp", "sha256:0x" + KEY.hex() + ", 7 \n", KEY, "sha256", 7),
        ("hotp", "0x" + KEY.hex() + ",", KEY, "sha1", 0),
        ("hotp", "secret", b"secret", "sha1", 0),
        ("hotp", "base32:MFRGGZDF", b"abcde", "sha1", 0),
        ("hotp", "base32:MFRGG===", b"abc", "sha1", 0),
    ],
)
def test_openconnect_secret_syntax(
    mode: str, text: str, key: bytes, algorithm: str, counter: int
) -> None:
    token = parse_token_secret(mode, text)  # type: ignore[arg-type]
    assert (token.key, token.algorithm, token.counter) == (key, algorithm, counter)


@pytest.mark.parametrize(
    ("mode", "text", "message"),
    [
        ("totp", "base32:MFRGG", "multiple of 8"),
        ("totp", "base32:MFRGG!!!", "not valid base32"),
        ("totp", "base32:", "multiple of 8"),
        ("totp", "0xzz", "hex digits"),
        ("totp", "0x1", "hex digits"),
        ("totp", "", "empty"),
        ("totp", "<?xml version='1.0'?><KeyContainer/>", "PSKC"),
        ("hotp", "0x" + KEY.hex() + ",-1", "counter"),
        ("hotp", "0x" + KEY.hex() + ",08", "counter"),
        ("hotp", "0x" + KEY.hex() + ",5x", "counter"),
        ("hotp", "0x" + KEY.hex() + ",0x10000000000000000", "64 bits"),
        ("totp", "x" * 5000, "longer"),
    ],
)
def test_bad_secrets(mode: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_token_secret(mode, text)  # type: ignore[arg-type]


def test_the_counter_is_written_back_in_the_secrets_own_format() -> None:
    token = parse_token_secret("hotp", "sha256:base32:" + B32 + ",41\n")
    assert token.with_counter(42) == "sha256:base32:" + B32 + ",42"
    bare = parse_token_secret("hotp", "0x" + KEY.hex())
    assert bare.with_counter(1) == "0x" + KEY.hex() + ",1"


def test_the_secret_is_not_in_repr() -> None:
    token = parse_token_secret("totp", "0x" + KEY.hex())
    assert isinstance(token, OathToken)
    assert KEY.hex() not in repr(token)
    assert repr(KEY) not in repr(token)


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_hmac_as_the_stdlib_for_every_key_length(algorithm: Algorithm) -> None:
    # past both block sizes (64 and 128 bytes): a longer key is hashed first
    for length in range(0, 200, 7):
        key = bytes(range(length % 256)) * (length // 256) + bytes(range(length % 256))
        message = b"message %d" % length
        assert hmac_digest(key, message, algorithm) == hmac.digest(key, message, algorithm)


def test_the_supervisor_does_not_load_libcrypto() -> None:
    code = (
        "import sys\n"
        "import sepconnect.supervisor.main\n"
        "from sepconnect.supervisor.oath import hotp\n"
        "hotp(b'12345678901234567890', 1, 'sha512')\n"
        "print(sorted(m for m in ('_hashlib', 'hashlib', 'hmac') if m in sys.modules))\n"
        "print('libcrypto.so' in open('/proc/self/maps').read())\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.split("\n")[:2] == ["[]", "False"]
