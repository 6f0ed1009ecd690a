"""From the CONNECT answer to a DTLS plan: mode, suite, refusals and the tunnel MTU."""

from __future__ import annotations

import pytest
from test_tunnel import parse, replaced, response, without

from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto.dtls_connection import Mode
from sepconnect.worker.proto.dtls_setup import (
    DEFAULT_CIPHERS,
    DEFAULT_CIPHERS12,
    DTLS09_NAMES,
    DtlsPlan,
    NoDtls,
    max_payload,
    plan_dtls,
)
from sepconnect.worker.proto.tunnel import build_connect_request

PSK = b"\x11" * 32
SECRET = b"\x22" * 48


def plan(headers: list[tuple[str, str]], **kw: object) -> DtlsPlan | NoDtls:
    cfg = parse(response(headers))
    args: dict[str, object] = {
        "psk": PSK,
        "master_secret": SECRET,
        "base_mtu": 1500,
        "ipv6_peer": False,
        "offered": f"{DEFAULT_CIPHERS}:AES128-SHA:AES256-SHA",  # as --dtls-ciphers would
        "offered12": DEFAULT_CIPHERS12,
    }
    args.update(kw)
    return plan_dtls(cfg, **args)  # type: ignore[arg-type]


def legacy(cipher: str, *, twelve: bool = False) -> list[tuple[str, str]]:
    hdrs = without("X-DTLS-App-ID", "X-DTLS-CipherSuite")
    name = "X-DTLS12-CipherSuite" if twelve else "X-DTLS-CipherSuite"
    return [*hdrs, ("X-DTLS-Session-ID", "ab" * 32), (name, cipher), ("X-DTLS-MTU", "1300")]


def test_psk_negotiate_plan_and_mtu() -> None:
    p = plan(replaced("X-CSTP-MTU", "1500"))
    assert isinstance(p, DtlsPlan)
    assert p.params.mode is Mode.PSK
    assert p.params.suites == dc.PSK_SUITES
    # X-CSTP-Base-MTU 1406 - IPv4 20 - UDP 8 - record header 13 - AES-GCM 24 - type byte 1
    assert p.max_packet == 1406 - 20 - 8 - 13 - 24 - 1 == p.mtu
    p6 = plan(replaced("X-CSTP-MTU", "1500"), ipv6_peer=True)
    assert isinstance(p6, DtlsPlan)
    assert p6.mtu == p.mtu - 20
    # the server's smaller MTU wins
    p2 = plan(replaced("X-CSTP-MTU", "1300"))
    assert isinstance(p2, DtlsPlan)
    assert p2.mtu == 1300


@pytest.mark.parametrize(
    ("cipher", "twelve", "version", "suite"),
    [
        ("OC-DTLS1_2-AES128-GCM", False, dc.DTLS1_2, dc.CipherSuite.RSA_AES_128_GCM_SHA256),
        ("OC-DTLS1_2-AES256-GCM", False, dc.DTLS1_2, dc.CipherSuite.RSA_AES_256_GCM_SHA384),
        ("AES128-SHA", False, dc.DTLS_BAD_VER, dc.CipherSuite.RSA_AES_128_CBC_SHA),
        ("AES256-SHA", False, dc.DTLS_BAD_VER, dc.CipherSuite.RSA_AES_256_CBC_SHA),
        ("AES128-GCM-SHA256", True, dc.DTLS1_2, dc.CipherSuite.RSA_AES_128_GCM_SHA256),
        ("AES256-GCM-SHA384", True, dc.DTLS1_2, dc.CipherSuite.RSA_AES_256_GCM_SHA384),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            True,
            dc.DTLS1_2,
            dc.CipherSuite.ECDHE_RSA_AES_256_GCM_SHA384,
        ),
    ],
)
def test_legacy_names(cipher: str, twelve: bool, version: int, suite: dc.CipherSuite) -> None:
    p = plan(legacy(cipher, twelve=twelve))
    assert isinstance(p, DtlsPlan)
    assert p.params.mode is Mode.RESUME
    assert (p.params.version, p.params.suites) == (version, (suite,))
    assert p.params.session_id == b"\xab" * 32
    assert p.params.master_secret == SECRET
    # legacy: max(X-CSTP-MTU, X-DTLS-MTU) capped by what one record carries
    assert p.mtu == min(1318, p.max_packet)


def test_cbc_payload_math() -> None:
    cbc = dc.SUITES[dc.CipherSuite.RSA_AES_128_CBC_SHA]
    # 1472-byte datagram: 13 header, 16 IV, then 90 blocks = 1440 bytes for data+MAC+pad
    assert max_payload(cbc, 1472) == 1440 - 20 - 1
    prot = dc.CbcSha1Protection(b"k" * 16, b"m" * 20, lambda n: b"\0" * n)
    body = prot.seal(0, 23, dc.DTLS_BAD_VER, b"x" * max_payload(cbc, 1472))
    assert 13 + len(body) <= 1472
    bigger = prot.seal(0, 23, dc.DTLS_BAD_VER, b"x" * (max_payload(cbc, 1472) + 1))
    assert 13 + len(bigger) > 1472


@pytest.mark.parametrize(
    ("headers", "kw", "why"),
    [
        (without("X-DTLS-Port"), {}, "no X-DTLS-Port"),
        (without("X-DTLS-App-ID"), {}, "App-ID"),
        (None, {"psk": None}, "exporter"),
        (legacy("DES-CBC3-SHA"), {}, "DES-CBC3-SHA"),
        (legacy("AES128-SHA"), {"master_secret": None}, "master secret"),
        ([h for h in legacy("AES128-SHA") if h[0] != "X-DTLS-Session-ID"], {}, "Session-ID"),
        (None, {"base_mtu": 600}, "too small"),
    ],
)
def test_no_dtls_reasons(
    headers: list[tuple[str, str]] | None, kw: dict[str, object], why: str
) -> None:
    hdrs = headers if headers is not None else without("X-CSTP-Base-MTU")
    result = plan(hdrs, **kw)
    assert isinstance(result, NoDtls)
    assert why in result.reason


def test_dtls09_is_offered_only_when_asked_for() -> None:
    """Issue 13, F16: by default the CONNECT offers no DTLS 0.9 (CBC-SHA1, TLS 1.0
    PRF) suite, and a server choosing one we did not offer gets no DTLS."""
    offered = DEFAULT_CIPHERS.split(":")
    assert offered[0] == "PSK-NEGOTIATE"
    assert {"OC-DTLS1_2-AES256-GCM", "OC-DTLS1_2-AES128-GCM"} <= set(offered)
    assert {"AES128-SHA", "AES256-SHA"} == DTLS09_NAMES
    assert not DTLS09_NAMES & set(offered)
    for name in DTLS09_NAMES:
        refused = plan(legacy(name), offered=DEFAULT_CIPHERS)
        assert isinstance(refused, NoDtls)
        assert refused.reason == f"the server chose DTLS cipher {name}, which we did not offer"
        asked = plan(legacy(name), offered=name)
        assert isinstance(asked, DtlsPlan)
        assert asked.params.version == dc.DTLS_BAD_VER
    # the same rule for every header: only what we offered
    assert isinstance(plan(legacy("AES128-GCM-SHA256", twelve=True), offered12="NONE"), NoDtls)
    assert isinstance(plan(without(), offered="OC-DTLS1_2-AES128-GCM"), NoDtls)  # PSK-NEGOTIATE


def test_connect_request_offers_both_lists() -> None:
    req = build_connect_request(
        host="vpn.example.com",
        port=443,
        cookie="abc",
        hostname="me",
        base_mtu=1500,
        mtu=1390,
        dtls_master_secret=SECRET,
        dtls_ciphers=DEFAULT_CIPHERS,
        dtls12_ciphers=DEFAULT_CIPHERS12,
    )
    headers = dict(req.headers)
    assert headers["X-DTLS-Master-Secret"] == "22" * 48
    assert headers["X-DTLS-CipherSuite"].split(":")[0] == "PSK-NEGOTIATE"
    assert "OC-DTLS1_2-AES128-GCM" in headers["X-DTLS-CipherSuite"]
    assert "AES128-GCM-SHA256" in headers["X-DTLS12-CipherSuite"]
    names = [k for k, _ in req.headers]
    assert names.index("X-DTLS-CipherSuite") < names.index("X-DTLS12-CipherSuite")
