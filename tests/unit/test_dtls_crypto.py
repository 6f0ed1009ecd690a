"""DTLS key schedule and record protection against byte vectors from independent
implementations (OpenSSL's TLS1-PRF and CLI ciphers, and a handshake captured with
`openssl s_server`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto.dtls_records import HEADER, encode_record

VECTORS = Path(__file__).parent / "vectors"

# `openssl kdf -keylen 100 -kdfopt digest:<D> -kdfopt hexsecret:9bbe436ba940f017b17652849a71db35
#  -kdfopt seed:"test label" -kdfopt hexseed:a0ba9f936cda311827a6f796ffd5198c TLS1-PRF`
# (OpenSSL 3.0.19). The SHA-256 output is also the well-known TLS 1.2 PRF test vector.
PRF_SECRET = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
PRF_SEED = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
PRF_OUT = {
    dc.PrfHash.SHA256: "E3F229BA727BE17B8D122620557CD453C2AAB21D07C3D495329B52D4E61EDB5A6B301791"
    "E90D35C9C9A46B4E14BAF9AF0FA022F7077DEF17ABFD3797C0564BAB4FBC91666E9DEF9B97FCE34F796789BAA4"
    "8082D122EE42C5A72E5A5110FFF70187347B66",
    dc.PrfHash.SHA384: "DD88775CD827187B67A3F7652B5C13F715791CC46E0274A6D3FB16651103DEFC544CD8AF"
    "B68369A219BB918B8B21DDB1764AF0A70339E6DEC085E574F655851BA692513203536BDFC3675E53768210F0A2"
    "389DD324311A440C7C30EF44B391D914C3B0C7",
    dc.PrfHash.MD5_SHA1: "661740E6F98BC901EFD2738502A71C03F76DD2F86298549B1148EFF06714CF0F6B7C53"
    "2CD8C69F1530E0BB680EEC34C495FA75A8BFCC9C335484C0D3D194AB6E32975903C50EBCDBE9D67C0591BDBD80"
    "DDDCC36D33CCD58ADF96CAAE173F48DC40F983E2",
}


@pytest.mark.parametrize("kind", list(PRF_OUT))
def test_prf_matches_openssl(kind: dc.PrfHash) -> None:
    out = dc.prf(kind, PRF_SECRET, b"test label", PRF_SEED, 100)
    assert out.hex().upper() == PRF_OUT[kind]


def test_psk_premaster_layout_rfc4279() -> None:
    psk = b"\xaa" * 32
    assert dc.psk_premaster(psk) == b"\x00\x20" + bytes(32) + b"\x00\x20" + psk


def test_key_block_sizes_per_suite() -> None:
    master, cr, sr = b"m" * 48, b"c" * 32, b"s" * 32
    gcm = dc.key_block(
        dc.SUITES[dc.CipherSuite.PSK_AES_256_GCM_SHA384], dc.PrfHash.SHA384, master, cr, sr
    )
    assert (len(gcm.client_key), len(gcm.client_iv), len(gcm.client_mac)) == (32, 4, 0)
    cha = dc.key_block(
        dc.SUITES[dc.CipherSuite.PSK_CHACHA20_POLY1305_SHA256], dc.PrfHash.SHA256, master, cr, sr
    )
    assert (len(cha.client_key), len(cha.client_iv)) == (32, 12)
    cbc = dc.key_block(
        dc.SUITES[dc.CipherSuite.RSA_AES_128_CBC_SHA], dc.PrfHash.MD5_SHA1, master, cr, sr
    )
    assert (len(cbc.client_mac), len(cbc.server_mac), len(cbc.client_key)) == (20, 20, 16)
    # the split follows RFC 5246 §6.3: one PRF output cut in order
    whole = dc.prf(dc.PrfHash.MD5_SHA1, master, b"key expansion", sr + cr, 72)
    assert cbc.client_mac + cbc.server_mac + cbc.client_key + cbc.server_key == whole


# Built with the OpenSSL CLI (independent of our code): HMAC-SHA1 via `openssl dgst -mac HMAC`
# over seq64 00010000 00000005 | type 17 | version 0100 | length 000e | "hello dtls 0.9",
# padded with 14 x 0x0d, encrypted with `openssl enc -aes-128-cbc -nopad
# -K 000102…0f -iv 33…33`; the IV is sent in front (DTLS 0.9 / OpenSSL's DTLS1_BAD_VER).
CBC_BODY = bytes.fromhex(
    "33333333333333333333333333333333"
    "20e249e2a3d41a551ae95e6dc29ae5315093430163f51c0aacf5319a8dd4779289a1353541040a670fa5ea5950568e04"
)


def test_cbc_sha1_record_matches_openssl_cli() -> None:
    prot = dc.CbcSha1Protection(bytes(range(16)), b"\x22" * 20, lambda n: b"\x33" * n)
    seq64 = 1 << 48 | 5
    assert prot.seal(seq64, 23, dc.DTLS_BAD_VER, b"hello dtls 0.9") == CBC_BODY
    assert prot.open_untrusted(seq64, 23, dc.DTLS_BAD_VER, CBC_BODY) == b"hello dtls 0.9"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # last block (padding)
        lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:],  # first block
        lambda b: b[:-16],  # truncated by a block
        lambda b: b[:-3],  # not a block multiple
        lambda b: b[:16],  # IV only
    ],
)
def test_cbc_sha1_rejects_tampering(mutate: object) -> None:
    prot = dc.CbcSha1Protection(bytes(range(16)), b"\x22" * 20, lambda n: b"\x33" * n)
    with pytest.raises(dc.BadRecordMac):
        prot.open_untrusted(1 << 48 | 5, 23, dc.DTLS_BAD_VER, mutate(CBC_BODY))  # type: ignore[operator]
    with pytest.raises(dc.BadRecordMac):  # right bytes, wrong sequence number
        prot.open_untrusted(1 << 48 | 6, 23, dc.DTLS_BAD_VER, CBC_BODY)


@given(payload=st.binary(max_size=300), seq=st.integers(0, 2**48 - 1))
def test_aead_round_trip_and_binding(payload: bytes, seq: int) -> None:
    for prot in (dc.GcmProtection(b"k" * 16, b"salt"), dc.ChaChaProtection(b"k" * 32, b"i" * 12)):
        seq64 = 1 << 48 | seq
        body = prot.seal(seq64, 23, dc.DTLS1_2, payload)
        assert len(body) == len(payload) + prot.overhead
        assert prot.open_untrusted(seq64, 23, dc.DTLS1_2, body) == payload
        for bad in ((seq64 ^ 1, 23), (seq64, 22)):
            with pytest.raises(dc.BadRecordMac):
                prot.open_untrusted(bad[0], bad[1], dc.DTLS1_2, body)


@given(body=st.binary(max_size=200))
def test_open_untrusted_only_raises_bad_record_mac(body: bytes) -> None:
    prots = (
        dc.GcmProtection(b"k" * 16, b"salt"),
        dc.ChaChaProtection(b"k" * 32, b"i" * 12),
        dc.CbcSha1Protection(b"k" * 16, b"m" * 20, lambda n: b"\0" * n),
    )
    for prot in prots:
        with pytest.raises(dc.BadRecordMac):
            prot.open_untrusted(1 << 48, 23, dc.DTLS1_2, body)


def test_suite_overheads() -> None:
    assert dc.SUITES[dc.CipherSuite.PSK_AES_128_GCM_SHA256].overhead == 24
    assert dc.SUITES[dc.CipherSuite.PSK_CHACHA20_POLY1305_SHA256].overhead == 16
    assert dc.SUITES[dc.CipherSuite.RSA_AES_128_CBC_SHA].overhead == 52


@pytest.mark.parametrize("name", ["aes128gcm", "chacha20"])
def test_master_and_record_keys_agree_with_openssl_capture(name: str) -> None:
    """The keylog master secret of a real OpenSSL session, re-derived from the captured
    transcript, then its first server record decrypted with our key block."""
    v = json.loads((VECTORS / f"openssl-3.0-dtls12-psk-{name}.json").read_text())
    info = dc.SUITES[dc.CipherSuite[v["suite"]]]
    cr, sr = bytes.fromhex(v["client_random"]), bytes.fromhex(v["server_random"])
    master = bytes.fromhex(v["master_secret_from_keylog"])
    keys = dc.key_block(info, info.prf_hash, master, cr, sr)
    read = dc.make_protection(info, keys, client_write=False, random=lambda n: b"")
    last = bytes.fromhex(v["server_datagrams"][-1])
    epoch, seq = int.from_bytes(last[3:5], "big"), int.from_bytes(last[5:11], "big")
    plaintext = read.open_untrusted(epoch << 48 | seq, last[0], 0xFEFD, last[13:])
    assert plaintext.decode() == v["server_app_data"]


@pytest.mark.parametrize(
    "prot",
    [
        dc.GcmProtection(b"k" * 16, b"salt"),
        dc.ChaChaProtection(b"k" * 32, b"i" * 12),
        dc.CbcSha1Protection(b"k" * 16, b"m" * 20, random=lambda n: b"\x01" * n),
    ],
    ids=["gcm", "chacha", "cbc"],
)
def test_seal_records_is_seal_and_the_header_in_a_loop(prot: dc.RecordProtection) -> None:
    plaintexts = [b"", b"\x00\x45one", bytes(range(256)) * 5]
    first = 1 << 48 | 0xFFFFFFFE  # crosses a 32-bit boundary
    records = prot.seal_records(first, 23, 0xFEFD, plaintexts)
    bodies = [prot.seal(first + i, 23, 0xFEFD, p) for i, p in enumerate(plaintexts)]
    seqs = [(first + i) & (2**48 - 1) for i in range(len(plaintexts))]
    assert records == [
        encode_record(23, 0xFEFD, 1, q, b) for q, b in zip(seqs, bodies, strict=True)
    ]
    assert [
        prot.open_untrusted(first + i, 23, 0xFEFD, r[HEADER.size :]) for i, r in enumerate(records)
    ] == plaintexts
    with_prefix = prot.seal_records(first, 23, 0xFEFD, plaintexts, b"\x00")
    assert [
        prot.open_untrusted(first + i, 23, 0xFEFD, r[HEADER.size :])
        for i, r in enumerate(with_prefix)
    ] == [b"\x00" + p for p in plaintexts]
