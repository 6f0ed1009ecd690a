"""From the CONNECT exchange to a DTLS plan: what to offer, what the server chose,
and the tunnel MTU. Sans-I/O and pure.

Offer (CONNECT headers, PROTOCOL.md §2.1, §4.2):

- ``X-DTLS-CipherSuite``: ``PSK-NEGOTIATE`` first, then the legacy DTLS 1.2 names we
  implement (:data:`DEFAULT_CIPHERS`). The Cisco DTLS 0.9 names (AES-CBC with
  HMAC-SHA1 and the TLS 1.0 PRF, :data:`DTLS09_NAMES`) are implemented but offered
  only when a ``--dtls-ciphers`` list names them (issue 13, F16);
- ``X-DTLS12-CipherSuite``: the Cisco DTLS 1.2 names we implement
  (:data:`DEFAULT_CIPHERS12`).

Server choice (CONNECT answer): ``X-DTLS-CipherSuite: PSK-NEGOTIATE`` plus
``X-DTLS-App-ID`` selects PSK mode (the PSK is the CSTP session's TLS exporter);
otherwise ``X-DTLS-Session-ID`` plus a suite name selects the legacy resumed session
with our X-DTLS-Master-Secret. A name we did not offer or don't implement, a missing
port, id or secret means no DTLS (CSTP only) with a one-line reason.

MTU (openconnect ``dtls_try_handshake``/``calculate_dtls_mtu``): the largest
payload one record of the suite can carry in a datagram of X-CSTP-Base-MTU minus
the IP and UDP headers, minus the 1-byte type header; the tunnel MTU is the smaller
of that and the server's MTU (legacy: max(X-CSTP-MTU, X-DTLS-MTU)), never below
1280 when IPv6 is configured (Linux would disable IPv6 on the tun; larger packets
then go over CSTP). In PSK mode the suite is not known before the handshake, so
the largest overhead of the suites offered is used (AES-GCM: 24 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sepconnect.ipc.limits import IPV6_MIN_MTU, MIN_MTU
from sepconnect.worker.proto.dtls_crypto import (
    DTLS1_2,
    DTLS_BAD_VER,
    PSK_SUITES,
    SUITES,
    Aead,
    CipherSuite,
    SuiteInfo,
)
from sepconnect.worker.proto.dtls_params import DtlsParams, Mode
from sepconnect.worker.proto.dtls_records import HEADER
from sepconnect.worker.proto.tunnel import TunnelConfig

__all__ = [
    "DEFAULT_CIPHERS",
    "DEFAULT_CIPHERS12",
    "DTLS09_NAMES",
    "LEGACY_NAMES",
    "LEGACY_NAMES12",
    "PSK_NEGOTIATE",
    "DtlsPlan",
    "NoDtls",
    "max_payload",
    "plan_dtls",
]

PSK_NEGOTIATE: Final = "PSK-NEGOTIATE"

#: X-DTLS-CipherSuite names (legacy): version and suite
LEGACY_NAMES: Final[dict[str, tuple[int, CipherSuite]]] = {
    "OC-DTLS1_2-AES256-GCM": (DTLS1_2, CipherSuite.RSA_AES_256_GCM_SHA384),
    "OC-DTLS1_2-AES128-GCM": (DTLS1_2, CipherSuite.RSA_AES_128_GCM_SHA256),
    "AES256-SHA": (DTLS_BAD_VER, CipherSuite.RSA_AES_256_CBC_SHA),
    "AES128-SHA": (DTLS_BAD_VER, CipherSuite.RSA_AES_128_CBC_SHA),
}
#: X-DTLS12-CipherSuite names (Cisco DTLS 1.2): all DTLS 1.2
LEGACY_NAMES12: Final[dict[str, CipherSuite]] = {
    "AES256-GCM-SHA384": CipherSuite.RSA_AES_256_GCM_SHA384,
    "AES128-GCM-SHA256": CipherSuite.RSA_AES_128_GCM_SHA256,
    "ECDHE-RSA-AES256-GCM-SHA384": CipherSuite.ECDHE_RSA_AES_256_GCM_SHA384,
    "ECDHE-RSA-AES128-GCM-SHA256": CipherSuite.ECDHE_RSA_AES_128_GCM_SHA256,
}
#: Legacy names of Cisco's DTLS 0.9: offered only when the user's list names them
DTLS09_NAMES: Final = frozenset(n for n, (v, _) in LEGACY_NAMES.items() if v == DTLS_BAD_VER)
DEFAULT_CIPHERS: Final = ":".join(
    [PSK_NEGOTIATE, *(n for n in LEGACY_NAMES if n not in DTLS09_NAMES)]
)
DEFAULT_CIPHERS12: Final = ":".join(LEGACY_NAMES12)


@dataclass(frozen=True, slots=True)
class DtlsPlan:
    params: DtlsParams
    mtu: int  # tunnel MTU to configure
    max_packet: int  # largest IP packet one DTLS record carries on this path
    description: str  # e.g. "PSK-NEGOTIATE" or "legacy OC-DTLS1_2-AES128-GCM"


@dataclass(frozen=True, slots=True)
class NoDtls:
    """No DTLS for this session. *offered*: the server offered it, we could not use it
    (worth a log line); False when the server has no DTLS at all."""

    reason: str
    offered: bool = True


def max_payload(suite: SuiteInfo, datagram: int) -> int:
    """Largest record plaintext that fits a *datagram*-byte UDP payload."""
    room = datagram - HEADER.size
    if suite.aead is Aead.AES_CBC_SHA1:
        # explicit IV + whole blocks holding plaintext + MAC + at least one padding byte
        return ((room - 16) // 16) * 16 - suite.mac_len - 1
    return room - suite.overhead


def plan_dtls(
    config: TunnelConfig,
    *,
    psk: bytes | None,
    master_secret: bytes | None,
    base_mtu: int,
    ipv6_peer: bool,
    offered: str,
    offered12: str,
) -> DtlsPlan | NoDtls:
    """Decide DTLS from the server's answer. *psk*: the exporter output (None if it
    could not be had); *base_mtu*: what we sent as X-CSTP-Base-MTU; *offered* and
    *offered12*: what we sent as X-DTLS-CipherSuite and X-DTLS12-CipherSuite."""
    if config.dtls_port is None:
        return NoDtls("the server offers no DTLS (no X-DTLS-Port)", offered=False)
    name = config.dtls_cipher
    if name is not None and name not in (offered12 if config.dtls12 else offered).split(":"):
        return NoDtls(f"the server chose DTLS cipher {name}, which we did not offer")
    params: DtlsParams
    if name == PSK_NEGOTIATE:
        if config.dtls_app_id is None or not 1 <= len(config.dtls_app_id) <= 32:
            return NoDtls("PSK-NEGOTIATE without a usable X-DTLS-App-ID")
        if psk is None:
            return NoDtls("no TLS exporter for the DTLS PSK")
        params = DtlsParams(
            mode=Mode.PSK, session_id=config.dtls_app_id, suites=PSK_SUITES, psk=psk
        )
        description = PSK_NEGOTIATE
    elif name is None:
        return NoDtls("the server chose no DTLS cipher")
    else:
        if config.dtls12:
            suite12 = LEGACY_NAMES12.get(name)
            chosen = None if suite12 is None else (DTLS1_2, suite12)
        else:
            chosen = LEGACY_NAMES.get(name)
        if chosen is None:
            return NoDtls(f"the server chose DTLS cipher {name}, which we do not implement")
        if config.dtls_session_id is None:
            return NoDtls("legacy DTLS without X-DTLS-Session-ID")
        if master_secret is None:
            return NoDtls("legacy DTLS without our master secret")
        version, suite = chosen
        params = DtlsParams(
            mode=Mode.RESUME,
            session_id=config.dtls_session_id,
            suites=(suite,),
            version=version,
            master_secret=master_secret,
        )
        description = f"legacy {name}"
    base = config.base_mtu or base_mtu
    datagram = base - (40 if ipv6_peer else 20) - 8
    payload = min(max_payload(SUITES[s], datagram) for s in params.suites) - 1
    server_mtu = config.net.mtu
    if params.mode is Mode.RESUME and config.dtls_mtu is not None:
        server_mtu = max(server_mtu, config.dtls_mtu)
    floor = IPV6_MIN_MTU if config.net.ipv6 is not None else MIN_MTU
    if payload < MIN_MTU:
        return NoDtls(f"path MTU {base} too small for DTLS")
    mtu = max(min(server_mtu, payload), min(floor, server_mtu))
    return DtlsPlan(params=params, mtu=mtu, max_packet=payload, description=description)
