"""DTLS key schedule and record protection over `cryptography` primitives, sans-I/O.

Layout after aioquic's ``tls.py`` (STYLE.md §1.4): enums and suite table, then the
PRFs as free functions (pure, tested against OpenSSL's TLS1-PRF), then the key
schedule, then one record-protection class per AEAD/CBC family.

Only what AnyConnect needs (PROTOCOL.md §4):

- DTLS 1.2 plain-PSK suites for PSK-NEGOTIATE (RFC 4279/5487/7905);
- DTLS 1.2 "resumed session" suites for the legacy Cisco mode (RSA/ECDHE-RSA
  AES-GCM: in a resumption the key exchange part of the name never runs);
- Cisco's pre-standard DTLS 0.9 (version 0x0100, OpenSSL's DTLS1_BAD_VER) with
  AES-CBC + HMAC-SHA1 and the TLS 1.0 PRF (MD5 ⊕ SHA-1).

Record protection objects are built once per epoch and direction; sealing a data
record is one AEAD call (DESIGN.md §4), and a burst of them is one call of
:meth:`RecordProtection.seal_records`, which frames the records too. The sequence
number used in nonces and additional data is the 64-bit ``epoch << 48 | seq``.
With the compiled accelerator (worker/accel.py), AES-GCM records are sealed and
opened by :class:`CompiledGcmProtection`, the same bytes as :class:`GcmProtection`
(the reference) with one OpenSSL cipher context per epoch and direction.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final

from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from sepconnect.worker import accel
from sepconnect.worker.proto.dtls_records import (
    HEADER,
    HEADER_SEQ64,
    MAX_RECORD_BODY,
    ContentType,
    ReplayWindow,
)

__all__ = [
    "DTLS1_0",
    "DTLS1_2",
    "DTLS_BAD_VER",
    "PSK_SUITES",
    "SUITES",
    "BadRecordMac",
    "CbcSha1Protection",
    "ChaChaProtection",
    "CipherSuite",
    "GcmProtection",
    "KeyBlock",
    "PrfHash",
    "RecordProtection",
    "SuiteInfo",
    "Transcript",
    "extended_master_secret",
    "key_block",
    "make_protection",
    "master_secret",
    "p_hash",
    "prf",
    "psk_premaster",
    "verify_data",
    "version_name",
]

DTLS1_0: Final = 0xFEFF
DTLS1_2: Final = 0xFEFD
DTLS_BAD_VER: Final = 0x0100  # Cisco's pre-RFC 4347 "DTLS 0.9"

_VERSION_NAMES: Final = {DTLS1_2: "DTLS1.2", DTLS1_0: "DTLS1.0", DTLS_BAD_VER: "DTLS0.9"}


def version_name(version: int) -> str:
    return _VERSION_NAMES.get(version, f"0x{version:04x}")


class PrfHash(Enum):
    SHA256 = "sha256"
    SHA384 = "sha384"
    MD5_SHA1 = "md5-sha1"  # TLS 1.0/1.1 PRF, DTLS 1.0 and 0.9


class Aead(Enum):
    AES_GCM = "aes-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"
    AES_CBC_SHA1 = "aes-cbc-hmac-sha1"


class CipherSuite(IntEnum):
    """IANA numbers of the suites we implement."""

    PSK_AES_128_GCM_SHA256 = 0x00A8
    PSK_AES_256_GCM_SHA384 = 0x00A9
    PSK_CHACHA20_POLY1305_SHA256 = 0xCCAB
    RSA_AES_128_GCM_SHA256 = 0x009C
    RSA_AES_256_GCM_SHA384 = 0x009D
    ECDHE_RSA_AES_128_GCM_SHA256 = 0xC02F
    ECDHE_RSA_AES_256_GCM_SHA384 = 0xC030
    RSA_AES_128_CBC_SHA = 0x002F
    RSA_AES_256_CBC_SHA = 0x0035


@dataclass(frozen=True, slots=True)
class SuiteInfo:
    """Parameters of one suite. *name* is OpenSSL's name (what we log)."""

    suite: CipherSuite
    name: str
    aead: Aead
    key_len: int
    fixed_iv_len: int  # implicit IV/salt from the key block (GCM 4, ChaCha 12, CBC 0)
    mac_len: int  # HMAC key and tag length (CBC only)
    prf_hash: PrfHash  # in DTLS 1.2; DTLS 0.9 always uses MD5_SHA1

    @property
    def overhead(self) -> int:
        """Worst-case bytes a record body adds to the plaintext (without the header)."""
        if self.aead is Aead.AES_GCM:
            return 8 + 16  # explicit nonce + tag
        if self.aead is Aead.CHACHA20_POLY1305:
            return 16
        return 16 + self.mac_len + 16  # explicit IV + MAC + up to one block of padding


SUITES: Final[dict[CipherSuite, SuiteInfo]] = {
    s.suite: s
    for s in (
        SuiteInfo(
            CipherSuite.PSK_AES_128_GCM_SHA256,
            "PSK-AES128-GCM-SHA256",
            Aead.AES_GCM,
            16,
            4,
            0,
            PrfHash.SHA256,
        ),
        SuiteInfo(
            CipherSuite.PSK_AES_256_GCM_SHA384,
            "PSK-AES256-GCM-SHA384",
            Aead.AES_GCM,
            32,
            4,
            0,
            PrfHash.SHA384,
        ),
        SuiteInfo(
            CipherSuite.PSK_CHACHA20_POLY1305_SHA256,
            "PSK-CHACHA20-POLY1305",
            Aead.CHACHA20_POLY1305,
            32,
            12,
            0,
            PrfHash.SHA256,
        ),
        SuiteInfo(
            CipherSuite.RSA_AES_128_GCM_SHA256,
            "AES128-GCM-SHA256",
            Aead.AES_GCM,
            16,
            4,
            0,
            PrfHash.SHA256,
        ),
        SuiteInfo(
            CipherSuite.RSA_AES_256_GCM_SHA384,
            "AES256-GCM-SHA384",
            Aead.AES_GCM,
            32,
            4,
            0,
            PrfHash.SHA384,
        ),
        SuiteInfo(
            CipherSuite.ECDHE_RSA_AES_128_GCM_SHA256,
            "ECDHE-RSA-AES128-GCM-SHA256",
            Aead.AES_GCM,
            16,
            4,
            0,
            PrfHash.SHA256,
        ),
        SuiteInfo(
            CipherSuite.ECDHE_RSA_AES_256_GCM_SHA384,
            "ECDHE-RSA-AES256-GCM-SHA384",
            Aead.AES_GCM,
            32,
            4,
            0,
            PrfHash.SHA384,
        ),
        SuiteInfo(
            CipherSuite.RSA_AES_128_CBC_SHA,
            "AES128-SHA",
            Aead.AES_CBC_SHA1,
            16,
            0,
            20,
            PrfHash.SHA256,
        ),
        SuiteInfo(
            CipherSuite.RSA_AES_256_CBC_SHA,
            "AES256-SHA",
            Aead.AES_CBC_SHA1,
            32,
            0,
            20,
            PrfHash.SHA256,
        ),
    )
}

#: What PSK-NEGOTIATE offers, in our order of preference (the server decides).
PSK_SUITES: Final = (
    CipherSuite.PSK_AES_128_GCM_SHA256,
    CipherSuite.PSK_AES_256_GCM_SHA384,
    CipherSuite.PSK_CHACHA20_POLY1305_SHA256,
)


class BadRecordMac(Exception):
    """A record failed authentication (or its padding/length was invalid)."""


# ---------------------------------------------------------------------------
# PRFs (RFC 5246 §5; RFC 2246 §5 for the MD5/SHA-1 PRF of TLS 1.0 / DTLS 1.0 / 0.9)


# Hashes come from `cryptography` (its own OpenSSL, loaded anyway), not hashlib/hmac:
# those load the system libcrypto as well, 3.4 MB of the worker's RSS (issue #6).
_HASHES: Final[dict[str, Callable[[], hashes.HashAlgorithm]]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
}


def _hmac(name: str, key: bytes, data: bytes) -> bytes:
    h = crypto_hmac.HMAC(key, _HASHES[name]())
    h.update(data)
    return h.finalize()


def _digest(name: str, data: bytes) -> bytes:
    h = hashes.Hash(_HASHES[name]())
    h.update(data)
    return h.finalize()


def p_hash(name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """P_<hash>(secret, seed) truncated to *length* bytes."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = _hmac(name, secret, a)
        out += _hmac(name, secret, a + seed)
    return bytes(out[:length])


def prf(kind: PrfHash, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """PRF(secret, label, seed) of TLS 1.2 (SHA-256/384) or TLS 1.0 (MD5 ⊕ SHA-1)."""
    if kind is PrfHash.MD5_SHA1:
        half = (len(secret) + 1) // 2
        md5 = p_hash("md5", secret[:half], label + seed, length)
        sha = p_hash("sha1", secret[len(secret) - half :], label + seed, length)
        return bytes(x ^ y for x, y in zip(md5, sha, strict=True))
    return p_hash(kind.value, secret, label + seed, length)


def psk_premaster(psk: bytes) -> bytes:
    """RFC 4279 §2: uint16 N, N zero bytes, uint16 N, the PSK."""
    n = len(psk).to_bytes(2, "big")
    return n + bytes(len(psk)) + n + psk


def master_secret(
    kind: PrfHash, premaster: bytes, client_random: bytes, server_random: bytes
) -> bytes:
    return prf(kind, premaster, b"master secret", client_random + server_random, 48)


def extended_master_secret(kind: PrfHash, premaster: bytes, session_hash: bytes) -> bytes:
    """RFC 7627 §4."""
    return prf(kind, premaster, b"extended master secret", session_hash, 48)


def verify_data(kind: PrfHash, master: bytes, label: bytes, handshake_hash: bytes) -> bytes:
    """Finished.verify_data (12 bytes); *label* is b"client finished" or b"server finished"."""
    return prf(kind, master, label, handshake_hash, 12)


class Transcript:
    """Running hash of the handshake messages, for Finished and the EMS session hash.

    The TLS 1.2 PRF hashes with the suite's hash; the TLS 1.0 PRF with MD5 and SHA-1
    concatenated. Messages are kept (they are few and small) because the suite, and
    so the hash, is only known after the ServerHello.
    """

    __slots__ = ("_messages",)

    def __init__(self) -> None:
        self._messages: list[bytes] = []

    def add(self, message: bytes) -> None:
        self._messages.append(message)

    def reset(self) -> None:
        self._messages.clear()

    def digest(self, kind: PrfHash) -> bytes:
        data = b"".join(self._messages)
        if kind is PrfHash.MD5_SHA1:
            return _digest("md5", data) + _digest("sha1", data)
        return _digest(kind.value, data)


@dataclass(frozen=True, slots=True)
class KeyBlock:
    client_mac: bytes
    server_mac: bytes
    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes


def key_block(
    info: SuiteInfo, kind: PrfHash, master: bytes, client_random: bytes, server_random: bytes
) -> KeyBlock:
    """Split PRF(master, "key expansion", server_random + client_random) (RFC 5246 §6.3)."""
    sizes = (info.mac_len,) * 2 + (info.key_len,) * 2 + (info.fixed_iv_len,) * 2
    block = prf(kind, master, b"key expansion", server_random + client_random, sum(sizes))
    parts: list[bytes] = []
    pos = 0
    for size in sizes:
        parts.append(block[pos : pos + size])
        pos += size
    return KeyBlock(*parts)


# ---------------------------------------------------------------------------
# Record protection


# seq_num(8) + type(1) + version(2) + length(2): one C call per record
_aad: Final[Callable[[int, int, int, int], bytes]] = struct.Struct(">QBHH").pack
_header: Final[Callable[[int, int, int, int], bytes]] = HEADER_SEQ64.pack
_UNPACK: Final = HEADER.unpack_from
_HEADER_SIZE: Final = HEADER.size
_APP: Final = int(ContentType.APPLICATION_DATA)


def split_plaintext(
    plaintext: bytes, split: int, out: list[bytes], others: list[bytes] | None
) -> None:
    """A plaintext of two bytes or more that starts with the byte *split* goes to *out*
    without it, any other to *others* as it is: the data channel's CSTP type byte
    (DtlsChannel), taken off by the record layer so that data packets need no loop of
    their own (in C with the compiled accelerator)."""
    assert others is not None
    if len(plaintext) > 1 and plaintext[0] == split:
        out.append(plaintext[1:])
    else:
        others.append(plaintext)


class RecordProtection:
    """Seal/open record bodies of one epoch in one direction."""

    overhead: int = 0

    def seal(self, seq64: int, ctype: int, version: int, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def open_untrusted(self, seq64: int, ctype: int, version: int, body: bytes) -> bytes:
        """Plaintext of *body*, or BadRecordMac."""
        raise NotImplementedError

    def open_datagrams_untrusted(
        self,
        datagrams: list[bytes],
        start: int,
        epoch: int,
        window: ReplayWindow,
        out: list[bytes],
        split: int = -1,
        others: list[bytes] | None = None,
    ) -> tuple[int, int, int, int]:
        """The data channel's steady state, a burst at a time: from ``datagrams[start]``
        on, every datagram that is exactly one application-data record of *epoch* is
        checked against the replay *window* (before decrypting, and updated after) and
        opened; the plaintexts are appended to *out* (with a *split* byte, as
        :func:`split_plaintext` sorts them between *out* and *others*). Stops at the
        first datagram that is anything else, for the caller's general path. Returns
        (the index where it stopped, records accepted, replays dropped, records that
        failed to authenticate)."""
        accepted = replays = bad = 0
        end = len(datagrams)
        i = start
        while i < end:
            data = datagrams[i]
            body_size = len(data) - _HEADER_SIZE
            if body_size <= 0:
                break
            ctype, version, rec_epoch, seq_hi, seq_lo, length = _UNPACK(data)
            if not (
                ctype == _APP
                and rec_epoch == epoch
                and length == body_size
                and length <= MAX_RECORD_BODY
            ):
                break
            i += 1
            seq = seq_hi << 32 | seq_lo
            if not window.is_fresh(seq):
                replays += 1
                continue
            try:
                plaintext = self.open_untrusted(
                    epoch << 48 | seq, ctype, version, data[_HEADER_SIZE:]
                )
            except BadRecordMac:
                bad += 1
                continue
            window.accept(seq)
            accepted += 1
            if split < 0:
                out.append(plaintext)
            else:
                split_plaintext(plaintext, split, out, others)
        return i, accepted, replays, bad

    def seal_records(
        self,
        first_seq64: int,
        ctype: int,
        version: int,
        plaintexts: list[bytes],
        prefix: bytes = b"",
    ) -> list[bytes]:
        """Whole records (header and sealed body) carrying *prefix* + each of
        *plaintexts*, with consecutive sequence numbers from *first_seq64*."""
        out = []
        seq64 = first_seq64
        for plaintext in plaintexts:
            body = self.seal(seq64, ctype, version, prefix + plaintext)
            out.append(_header(ctype, version, seq64, len(body)) + body)
            seq64 += 1
        return out


class GcmProtection(RecordProtection):
    """AES-GCM (RFC 5288): 4-byte salt from the key block + 8-byte explicit nonce."""

    __slots__ = ("_aead", "_salt")
    overhead = 8 + 16

    def __init__(self, key: bytes, salt: bytes) -> None:
        self._aead = AESGCM(key)
        self._salt = salt

    def seal(self, seq64: int, ctype: int, version: int, plaintext: bytes) -> bytes:
        aad = _aad(seq64, ctype, version, len(plaintext))
        explicit = aad[:8]  # the sequence number, big-endian
        return explicit + self._aead.encrypt(self._salt + explicit, plaintext, aad)

    def seal_records(
        self,
        first_seq64: int,
        ctype: int,
        version: int,
        plaintexts: list[bytes],
        prefix: bytes = b"",
    ) -> list[bytes]:
        # seal() and the header in one loop with the lookups hoisted: the upload's hot
        # path, and a lone packet's (issue #6)
        encrypt, salt, out = self._aead.encrypt, self._salt, []
        seq64 = first_seq64
        for plaintext in plaintexts:
            if prefix:
                plaintext = prefix + plaintext
            size = len(plaintext)
            aad = _aad(seq64, ctype, version, size)
            explicit = aad[:8]
            out.append(
                _header(ctype, version, seq64, size + 24)  # + explicit nonce and tag
                + explicit
                + encrypt(salt + explicit, plaintext, aad)
            )
            seq64 += 1
        return out

    def open_untrusted(self, seq64: int, ctype: int, version: int, body: bytes) -> bytes:
        if len(body) < 8 + 16:
            raise BadRecordMac("record too short")
        aad = _aad(seq64, ctype, version, len(body) - 24)
        try:
            return self._aead.decrypt(self._salt + body[:8], body[8:], aad)
        except Exception:  # cryptography's InvalidTag
            raise BadRecordMac("authentication failed") from None


class CompiledGcmProtection(GcmProtection):
    """:class:`GcmProtection` with the record loop in C (worker/_accel.c): the same
    records, byte for byte (tests/unit/test_accel.py)."""

    __slots__ = ("_compiled",)

    def __init__(self, key: bytes, salt: bytes) -> None:
        super().__init__(key, salt)
        assert accel.Gcm is not None
        self._compiled = accel.Gcm(key, salt)

    def seal(self, seq64: int, ctype: int, version: int, plaintext: bytes) -> bytes:
        return self._compiled.seal_records(seq64, ctype, version, [plaintext])[0][13:]

    def seal_records(
        self,
        first_seq64: int,
        ctype: int,
        version: int,
        plaintexts: list[bytes],
        prefix: bytes = b"",
    ) -> list[bytes]:
        return self._compiled.seal_records(first_seq64, ctype, version, plaintexts, prefix)

    def open_untrusted(self, seq64: int, ctype: int, version: int, body: bytes) -> bytes:
        plaintext = self._compiled.open(seq64, ctype, version, body)
        if plaintext is None:
            raise BadRecordMac("authentication failed")
        return plaintext

    def open_datagrams_untrusted(
        self,
        datagrams: list[bytes],
        start: int,
        epoch: int,
        window: ReplayWindow,
        out: list[bytes],
        split: int = -1,
        others: list[bytes] | None = None,
    ) -> tuple[int, int, int, int]:
        if window.size != 64:  # the compiled window is one 64-bit word
            return super().open_datagrams_untrusted(
                datagrams, start, epoch, window, out, split, others
            )
        top, bits = window.position()
        stop, top, bits, accepted, replays, bad = self._compiled.open_datagrams(
            datagrams, start, epoch, top, bits, out, split, others
        )
        window.restore(top, bits)
        return stop, accepted, replays, bad


class ChaChaProtection(RecordProtection):
    """ChaCha20-Poly1305 (RFC 7905): nonce = IV xor the padded 64-bit sequence number."""

    __slots__ = ("_aead", "_iv")
    overhead = 16

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._iv = int.from_bytes(iv, "big")

    def _nonce(self, seq64: int) -> bytes:
        return (self._iv ^ seq64).to_bytes(12, "big")

    def seal(self, seq64: int, ctype: int, version: int, plaintext: bytes) -> bytes:
        aad = _aad(seq64, ctype, version, len(plaintext))
        return self._aead.encrypt(self._nonce(seq64), plaintext, aad)

    def open_untrusted(self, seq64: int, ctype: int, version: int, body: bytes) -> bytes:
        if len(body) < 16:
            raise BadRecordMac("record too short")
        aad = _aad(seq64, ctype, version, len(body) - 16)
        try:
            return self._aead.decrypt(self._nonce(seq64), body, aad)
        except Exception:  # cryptography's InvalidTag
            raise BadRecordMac("authentication failed") from None


class CbcSha1Protection(RecordProtection):
    """AES-CBC with HMAC-SHA1, MAC-then-encrypt, explicit per-record IV (DTLS 1.0/0.9).

    The MAC covers seq64 + type + version + length + plaintext. *random* gives the
    per-record IVs. Decryption checks padding and MAC without an early exit on the
    padding (the remaining timing difference is the accepted cost of this legacy mode,
    which only runs when the server chooses it).
    """

    __slots__ = ("_key", "_mac_key", "_random")
    overhead = 16 + 20 + 16

    def __init__(self, key: bytes, mac_key: bytes, random: Callable[[int], bytes]) -> None:
        self._key = algorithms.AES(key)
        self._mac_key = mac_key
        self._random = random

    def _mac(self, seq64: int, ctype: int, version: int, data: bytes) -> bytes:
        return _hmac("sha1", self._mac_key, _aad(seq64, ctype, version, len(data)) + data)

    def seal(self, seq64: int, ctype: int, version: int, plaintext: bytes) -> bytes:
        mac = self._mac(seq64, ctype, version, plaintext)
        pad = 15 - (len(plaintext) + len(mac)) % 16
        data = plaintext + mac + bytes((pad,)) * (pad + 1)
        iv = self._random(16)
        enc = Cipher(self._key, modes.CBC(iv)).encryptor()
        return iv + enc.update(data) + enc.finalize()

    def open_untrusted(self, seq64: int, ctype: int, version: int, body: bytes) -> bytes:
        if len(body) < 16 + 32 or len(body) % 16:
            raise BadRecordMac("bad record length")
        dec = Cipher(self._key, modes.CBC(body[:16])).decryptor()
        data = dec.update(body[16:]) + dec.finalize()
        pad = data[-1]
        good = pad + 1 + 20 <= len(data)
        end = len(data) - pad - 1 if good else len(data) - 1 - 20
        if good:
            good = data[end:-1] == bytes((pad,)) * pad
        plaintext, tag = data[: end - 20], data[end - 20 : end]
        expected = self._mac(seq64, ctype, version, plaintext)
        if not constant_time.bytes_eq(expected, tag) or not good:
            raise BadRecordMac("authentication failed")
        return plaintext


def make_protection(
    info: SuiteInfo, keys: KeyBlock, *, client_write: bool, random: Callable[[int], bytes]
) -> RecordProtection:
    """The client's write (or read, with ``client_write=False``) protection."""
    key = keys.client_key if client_write else keys.server_key
    iv = keys.client_iv if client_write else keys.server_iv
    if info.aead is Aead.AES_GCM:
        return GcmProtection(key, iv) if accel.Gcm is None else CompiledGcmProtection(key, iv)
    if info.aead is Aead.CHACHA20_POLY1305:
        return ChaChaProtection(key, iv)
    mac = keys.client_mac if client_write else keys.server_mac
    return CbcSha1Protection(key, mac, random)
