"""A minimal DTLS *server* for the in-memory harness (tests only).

It speaks just enough of the AnyConnect server side to exercise the client: the
plain-PSK full handshake (optionally with a HelloVerifyRequest cookie and the
extended master secret) and the legacy resumed session (DTLS 1.2 AES-GCM and Cisco
DTLS 0.9 AES-CBC-SHA1). Built from the same codecs and primitives as the client,
so interop with independent implementations is covered elsewhere (the
OpenSSL-captured vectors, tests/integration/test_dtls.py against ocserv and
`openssl s_server`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from sepconnect.worker.proto import dtls_crypto as dc
from sepconnect.worker.proto import dtls_handshake as hs
from sepconnect.worker.proto.dtls_connection import (
    EXT_EXTENDED_MASTER_SECRET,
    EXT_RENEGOTIATION_INFO,
)
from sepconnect.worker.proto.dtls_records import ContentType, encode_record, records_untrusted


def encode_fragment(msg_type: int, length: int, seq: int, offset: int, data: bytes) -> bytes:
    """One handshake fragment: the 12-byte header (RFC 6347 §4.2.2) and *data*."""
    return (
        bytes((msg_type,))
        + length.to_bytes(3, "big")
        + seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + len(data).to_bytes(3, "big")
        + data
    )


@dataclass
class ServerConfig:
    mode: str  # "psk" or "resume"
    psk: bytes = b"\x11" * 32
    master_secret: bytes = b"\x22" * 48
    session_id: bytes = b"\x33" * 32
    version: int = dc.DTLS1_2
    suites: tuple[int, ...] = (dc.CipherSuite.PSK_AES_128_GCM_SHA256,)  # server preference
    hello_verify: bool = False
    ems: bool = True
    echo_session_id: bool = True  # resume: False = pretend a full handshake
    choose_suite: int | None = None  # force a (maybe unoffered) suite
    bad_finished: bool = False  # send a wrong verify_data (under the right keys)
    extra_messages: list[tuple[int, bytes]] = field(default_factory=list)  # after ServerHello
    random: Callable[[int], bytes] = os.urandom


class FakeServer:
    def __init__(self, config: ServerConfig) -> None:
        self.c = config
        self.out: list[bytes] = []
        self.established = False
        self.received: list[bytes] = []  # application payloads
        self.alerts: list[bytes] = []
        self.transcript = dc.Transcript()
        self.suite: dc.SuiteInfo | None = None
        self.version = config.version
        self.write_epoch = 0
        self.write_seq = [0, 0]
        self.write_prot: list[dc.RecordProtection | None] = [None, None]
        self.read_prot: dc.RecordProtection | None = None
        self.pending_read: dc.RecordProtection | None = None
        self.msg_seq = 0
        self.flight: list[tuple[int, int, bytes]] = []
        self.cookie = b"c" * 20
        self.ems = False
        self.client_random = b""
        self.server_random = config.random(32)
        self.master = b""
        self.hellos = 0

    # -- helpers ---------------------------------------------------------------------

    @property
    def prf(self) -> dc.PrfHash:
        if self.version == dc.DTLS_BAD_VER or self.suite is None:
            return dc.PrfHash.MD5_SHA1
        return self.suite.prf_hash

    def _hash_add(self, msg_type: int, seq: int, body: bytes) -> None:
        if self.version == dc.DTLS_BAD_VER:
            self.transcript.add(body)
        else:
            self.transcript.add(hs.encode_handshake(msg_type, seq, body))

    def _msg(self, msg_type: int, body: bytes, *, hashed: bool = True) -> bytes:
        seq = self.msg_seq
        self.msg_seq += 1
        if hashed:
            self._hash_add(msg_type, seq, body)
        return hs.encode_handshake(msg_type, seq, body)

    def _record(self, ctype: int, epoch: int, plaintext: bytes) -> bytes:
        seq = self.write_seq[epoch]
        self.write_seq[epoch] += 1
        prot = self.write_prot[epoch]
        version = self.version
        body = (
            plaintext if prot is None else prot.seal(epoch << 48 | seq, ctype, version, plaintext)
        )
        return encode_record(ctype, version, epoch, seq, body)

    def send_flight(self) -> None:
        self.out.append(b"".join(self._record(ct, ep, pt) for ct, ep, pt in self.flight))

    def send_app(self, payload: bytes) -> None:
        self.out.append(self._record(ContentType.APPLICATION_DATA, 1, payload))

    def app_datagram(self, payload: bytes) -> bytes:
        return self._record(ContentType.APPLICATION_DATA, 1, payload)

    def send_alert(self, description: int, *, epoch: int = 0) -> None:
        self.out.append(self._record(ContentType.ALERT, epoch, bytes((2, description))))

    def datagrams(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def _ccs(self) -> bytes:
        if self.version == dc.DTLS_BAD_VER:
            body = b"\x01" + self.msg_seq.to_bytes(2, "big")
            self.msg_seq += 1
            return body
        return b"\x01"

    def _keys(self) -> None:
        assert self.suite is not None
        keys = dc.key_block(
            self.suite, self.prf, self.master, self.client_random, self.server_random
        )
        self.write_prot[1] = dc.make_protection(
            self.suite, keys, client_write=False, random=self.c.random
        )
        self.pending_read = dc.make_protection(
            self.suite, keys, client_write=True, random=self.c.random
        )

    def _finished(self, label: bytes) -> bytes:
        data = dc.verify_data(self.prf, self.master, label, self.transcript.digest(self.prf))
        if self.c.bad_finished and label == b"server finished":
            data = bytes([data[0] ^ 1]) + data[1:]
        return data

    # -- input -----------------------------------------------------------------------

    def receive(self, datagram: bytes) -> None:
        for rec in records_untrusted(datagram):
            if rec.epoch == 1:
                if self.read_prot is None:
                    continue
                try:
                    plaintext = self.read_prot.open_untrusted(
                        rec.seq64, rec.ctype, rec.version, rec.body
                    )
                except dc.BadRecordMac:
                    continue
            else:
                plaintext = rec.body
            if rec.ctype == ContentType.HANDSHAKE:
                for frag in hs.fragments_untrusted(plaintext):
                    self._on_message(frag.msg_type, frag.message_seq, frag.data)
            elif rec.ctype == ContentType.CHANGE_CIPHER_SPEC:
                self.read_prot = self.pending_read
            elif rec.ctype == ContentType.ALERT:
                self.alerts.append(plaintext)
            elif rec.ctype == ContentType.APPLICATION_DATA and rec.epoch == 1:
                self.received.append(plaintext)
                if plaintext[:1] == b"\x03":  # DPD-REQ -> DPD-RESP
                    self.send_app(b"\x04")

    def _on_message(self, msg_type: int, seq: int, body: bytes) -> None:
        if msg_type == hs.HandshakeType.CLIENT_HELLO:
            self._on_client_hello(seq, body)
        elif msg_type == hs.HandshakeType.CLIENT_KEY_EXCHANGE:
            if self.established or self.master:
                self.send_flight()  # retransmitted client flight: repeat ours
                return
            self._hash_add(msg_type, seq, body)
            premaster = dc.psk_premaster(self.c.psk)
            if self.ems:
                self.master = dc.extended_master_secret(
                    self.prf, premaster, self.transcript.digest(self.prf)
                )
            else:
                self.master = dc.master_secret(
                    self.prf, premaster, self.client_random, self.server_random
                )
            self._keys()
        elif msg_type == hs.HandshakeType.FINISHED:
            if self.established:
                return
            expected = self._finished(b"client finished")
            if body != expected:
                self.send_alert(hs.AlertDescription.DECRYPT_ERROR)
                return
            self._hash_add(msg_type, seq, body)
            if self.c.mode == "psk":
                ccs = self._ccs()
                self.write_epoch = 1
                fin = self._msg(hs.HandshakeType.FINISHED, self._finished(b"server finished"))
                self.flight = [
                    (ContentType.CHANGE_CIPHER_SPEC, 0, ccs),
                    (ContentType.HANDSHAKE, 1, fin),
                ]
                self.send_flight()
            self.established = True

    def _on_client_hello(self, seq: int, body: bytes) -> None:
        ch = hs.pull_client_hello_untrusted(body)
        self.hellos += 1
        if self.suite is not None:  # retransmitted ClientHello: repeat our flight
            self.send_flight()
            return
        if self.c.hello_verify and ch.cookie != self.cookie:
            self.msg_seq = seq
            hvr = self._msg(
                hs.HandshakeType.HELLO_VERIFY_REQUEST,
                hs.push_hello_verify_request(hs.HelloVerifyRequest(dc.DTLS1_0, self.cookie)),
                hashed=False,
            )
            self.out.append(self._record(ContentType.HANDSHAKE, 0, hvr))
            return
        self.msg_seq = seq
        self._hash_add(hs.HandshakeType.CLIENT_HELLO, seq, body)
        self.client_random = ch.random
        suite = self.c.choose_suite
        if suite is None:
            suite = next(s for s in self.c.suites if s in ch.cipher_suites)
        self.suite = next((info for s, info in dc.SUITES.items() if int(s) == suite), None)
        offered = {t for t, _ in ch.extensions or ()}
        extensions: list[tuple[int, bytes]] = []
        if self.c.mode == "psk":
            if EXT_RENEGOTIATION_INFO in offered:
                extensions.append((EXT_RENEGOTIATION_INFO, b"\x00"))
            if self.c.ems and EXT_EXTENDED_MASTER_SECRET in offered:
                extensions.append((EXT_EXTENDED_MASTER_SECRET, b""))
                self.ems = True
        session_id = self.c.session_id if self.c.echo_session_id else b"\x44" * 32
        sh = hs.ServerHello(
            self.version, self.server_random, session_id, suite, 0, tuple(extensions) or None
        )
        flight: list[tuple[int, int, bytes]] = [
            (
                ContentType.HANDSHAKE,
                0,
                self._msg(hs.HandshakeType.SERVER_HELLO, hs.push_server_hello(sh)),
            )
        ]
        for msg_type, msg_body in self.c.extra_messages:
            flight.append((ContentType.HANDSHAKE, 0, self._msg(msg_type, msg_body)))
        if self.c.mode == "psk":
            flight.append(
                (ContentType.HANDSHAKE, 0, self._msg(hs.HandshakeType.SERVER_HELLO_DONE, b""))
            )
        else:
            self.master = self.c.master_secret
            self._keys()
            ccs = self._ccs()
            self.write_epoch = 1
            fin = self._msg(hs.HandshakeType.FINISHED, self._finished(b"server finished"))
            flight += [(ContentType.CHANGE_CIPHER_SPEC, 0, ccs), (ContentType.HANDSHAKE, 1, fin)]
        self.flight = flight
        self.send_flight()
