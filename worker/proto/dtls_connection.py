"""A DTLS client connection: the two AnyConnect handshakes and the record layer. Sans-I/O.

API after aioquic's connection (STYLE.md §1.4): :meth:`DtlsConnection.connect`,
:meth:`receive_datagrams_untrusted` (a burst of datagrams in; the application-data
payloads it authenticated out), :meth:`seal_data` (a burst of payloads in, one
datagram each out: the hot path), :meth:`datagrams_to_send` (the handshake's and the
alerts' datagrams), :meth:`get_timer` / :meth:`handle_timer` and :meth:`next_event`.
A single datagram or payload is a burst of one. Time comes in as ``now``; randomness
through *random*.

Handshakes (PROTOCOL.md §4.1, §4.2)::

  PSK-NEGOTIATE (full, DTLS 1.2, plain PSK):
    ClientHello(session_id = App-ID)  ->
                                      <-  [HelloVerifyRequest]  (then ClientHello + cookie)
                                      <-  ServerHello [ServerKeyExchange] ServerHelloDone
    ClientKeyExchange("psk") CCS Finished  ->
                                      <-  CCS Finished

  legacy resumed session (DTLS 1.2 AES-GCM, or Cisco DTLS 0.9 AES-CBC-SHA1):
    ClientHello(session_id = X-DTLS-Session-ID, the one chosen suite)  ->
                                      <-  [HelloVerifyRequest]
                                      <-  ServerHello(same session id) CCS Finished
    CCS Finished  ->

DTLS 0.9 (0x0100, OpenSSL's DTLS1_BAD_VER) differs from DTLS 1.0: the
ChangeCipherSpec body carries the 2-byte message sequence number it consumes, and
the handshake hash covers message bodies only (no DTLS handshake header).

Which message may arrive in which state is the table :data:`_TRANSITIONS`; anything
else is :class:`UnexpectedMessage`. Every failure ends the connection with a
:class:`ConnectionClosed` event naming the error (each its own class); the caller
falls back to CSTP. Nothing here raises to the caller on peer input.

Loss: the client retransmits its last flight on a timer (initial ``rto``, doubling
up to ``max_rto``) until the server's next flight arrives, and gives up after
``handshake_timeout``. In the resumed handshake the client sends the last flight;
when the server retransmits its flight (ours was lost), ours is sent again.
Records of the current read epoch pass a 64-record replay window after they
authenticate; duplicates, replays and forgeries are dropped and counted. One routine
does that for every record (:meth:`DtlsConnection._open`), whichever way it came in. A
fatal alert or close_notify in plaintext (epoch 0) during the handshake does not end it:
it fails with :class:`PeerAlert` only if the handshake has not completed by its deadline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from sepconnect.worker.proto.dtls_crypto import (
    DTLS1_0,
    DTLS1_2,
    DTLS_BAD_VER,
    SUITES,
    BadRecordMac,
    CipherSuite,
    PrfHash,
    RecordProtection,
    SuiteInfo,
    Transcript,
    extended_master_secret,
    key_block,
    make_protection,
    master_secret,
    psk_premaster,
    split_plaintext,
    verify_data,
)
from sepconnect.worker.proto.dtls_handshake import (
    AlertDescription,
    ClientHello,
    ClientKeyExchange,
    DtlsError,
    Finished,
    HandshakeType,
    MessageAssembler,
    alert_name,
    encode_handshake,
    fragments_untrusted,
    pull_finished_untrusted,
    pull_hello_verify_request_untrusted,
    pull_server_hello_untrusted,
    pull_server_key_exchange_untrusted,
    push_client_hello,
    push_client_key_exchange,
    push_finished,
)
from sepconnect.worker.proto.dtls_params import DtlsParams, Mode
from sepconnect.worker.proto.dtls_records import (
    HEADER,
    ContentType,
    ReplayWindow,
    encode_record,
    records_untrusted,
)

__all__ = [
    "ConnectionClosed",
    "DtlsConnection",
    "DtlsParams",
    "FinishedMismatch",
    "HandshakeComplete",
    "HandshakeTimeout",
    "IllegalParameter",
    "Mode",
    "NotResumed",
    "PeerAlert",
    "State",
    "UnexpectedMessage",
]

EXT_EXTENDED_MASTER_SECRET: Final = 0x0017
EXT_RENEGOTIATION_INFO: Final = 0xFF01
_MAX_HELLO_VERIFY: Final = 2
_MAX_COOKIE: Final = 255
_APP: Final = int(ContentType.APPLICATION_DATA)
# DtlsParams and Mode live in dtls_params.py (the CONNECT exchange needs them without
# this module: issue #6, connect time); they are re-exported here.


# --------------------------------------------------------------------------- errors


class UnexpectedMessage(DtlsError):
    """A handshake message or record the state machine does not allow now."""

    alert = AlertDescription.UNEXPECTED_MESSAGE


class IllegalParameter(DtlsError):
    """The server chose something we did not offer."""

    alert = AlertDescription.ILLEGAL_PARAMETER


class FinishedMismatch(DtlsError):
    """The server's Finished did not verify (wrong key, or a tampered handshake)."""

    alert = AlertDescription.DECRYPT_ERROR


class NotResumed(DtlsError):
    """Legacy mode: the server did not resume the session the CONNECT set up."""

    alert = AlertDescription.HANDSHAKE_FAILURE


class HandshakeTimeout(DtlsError):
    """No (complete) answer from the server within the handshake timeout."""

    alert = None


class PeerAlert(DtlsError):
    """The server sent a fatal alert or close_notify. *authenticated* False: a plaintext
    alert during the handshake, reported only once the attempt's deadline has passed
    without the handshake completing (see :meth:`DtlsConnection._on_alert`)."""

    alert = None

    def __init__(self, description: int, *, authenticated: bool = True) -> None:
        name = alert_name(description)
        super().__init__(
            f"server sent {name}"
            if authenticated
            else f"server sent {name} (unauthenticated) and no handshake followed"
        )
        self.description = description
        self.authenticated = authenticated


class SequenceExhausted(DtlsError):
    """2^48 records sent in one epoch (needs a new handshake)."""

    alert = None  # no sequence number is left to send it with


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    version: int
    suite: SuiteInfo
    extended_master_secret: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is over. *error* is None after our own close()."""

    reason: str
    error: DtlsError | None


Event = HandshakeComplete | ConnectionClosed


class State(Enum):
    START = "start"
    WAIT_SERVER_HELLO = "wait_server_hello"
    WAIT_SERVER_HELLO_DONE = "wait_server_hello_done"
    WAIT_CCS = "wait_ccs"
    WAIT_FINISHED = "wait_finished"
    ESTABLISHED = "established"
    CLOSED = "closed"


_H = HandshakeType
#: (state, handshake message) -> handler name. Anything missing is UnexpectedMessage.
_TRANSITIONS: Final[dict[tuple[State, int], str]] = {
    (State.WAIT_SERVER_HELLO, _H.HELLO_VERIFY_REQUEST): "_on_hello_verify_request",
    (State.WAIT_SERVER_HELLO, _H.SERVER_HELLO): "_on_server_hello",
    (State.WAIT_SERVER_HELLO_DONE, _H.SERVER_KEY_EXCHANGE): "_on_server_key_exchange",
    (State.WAIT_SERVER_HELLO_DONE, _H.SERVER_HELLO_DONE): "_on_server_hello_done",
    (State.WAIT_FINISHED, _H.FINISHED): "_on_finished",
    (State.ESTABLISHED, _H.HELLO_REQUEST): "_on_hello_request",
}

_Flight = list[tuple[int, int, bytes]]  # (content type, epoch, plaintext)


class DtlsConnection:
    """One DTLS client session over one UDP flow."""

    def __init__(self, params: DtlsParams, *, random: Callable[[int], bytes]) -> None:
        self.params = params
        self._random = random
        self.state = State.START
        self.version = params.version
        self.suite: SuiteInfo | None = None
        self.ems = False
        self._client_random = b""
        self._server_random = b""
        self._cookie = b""
        self._hello_verifies = 0
        self._master = b""
        self._transcript = Transcript()
        self._assembler = MessageAssembler()
        self._send_msg_seq = 0
        # write side: epoch and per-epoch sequence numbers / protections
        self._write_epoch = 0
        self._write_seq = [0, 0]
        self._write_prot: list[RecordProtection | None] = [None, None]
        self._pending_read: RecordProtection | None = None
        self._pending_write: RecordProtection | None = None
        # read side
        self._read_epoch = 0
        self._read_prot: RecordProtection | None = None
        self._replay = ReplayWindow()
        # handshake retransmission
        self._flight: _Flight = []
        self._flight_version = params.version
        self._rto = params.rto
        self._rtx_at: float | None = None
        self._deadline: float | None = None
        self._last_rtx = -1.0
        self._plaintext_alert: int | None = None  # see _on_alert
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        # counters (for the channel and tests)
        self.records_in = 0
        self.replays_dropped = 0
        self.bad_records = 0

    # ------------------------------------------------------------------ properties

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def _prf(self) -> PrfHash:
        if self.version == DTLS_BAD_VER or self.suite is None:
            return PrfHash.MD5_SHA1
        return self.suite.prf_hash

    @property
    def data_overhead(self) -> int:
        """Bytes a data record adds to its payload: header + protection."""
        return HEADER.size + (self.suite.overhead if self.suite else 0)

    # ------------------------------------------------------------------ handshake out

    def connect(self, now: float) -> None:
        """Queue the ClientHello and arm the timers."""
        if self.state is not State.START:
            raise RuntimeError("connect() called twice")
        self._client_random = self._random(32)
        self._deadline = now + self.params.handshake_timeout
        self.state = State.WAIT_SERVER_HELLO
        self._send_client_hello(now)

    def _client_hello(self) -> ClientHello:
        p = self.params
        extensions: tuple[tuple[int, bytes], ...] | None = None
        if p.mode is Mode.PSK:
            ext: list[tuple[int, bytes]] = [(EXT_RENEGOTIATION_INFO, b"\x00")]
            if p.extended_master_secret:
                ext.append((EXT_EXTENDED_MASTER_SECRET, b""))
            extensions = tuple(ext)
        return ClientHello(
            version=p.version,
            random=self._client_random,
            session_id=p.session_id,
            cookie=self._cookie,
            cipher_suites=tuple(int(s) for s in p.suites),
            extensions=extensions,
        )

    def _handshake_message(self, msg_type: int, body: bytes) -> bytes:
        wire = encode_handshake(msg_type, self._send_msg_seq, body)
        self._send_msg_seq += 1
        self._transcript.add(body if self.version == DTLS_BAD_VER else wire)
        return wire

    def _send_client_hello(self, now: float) -> None:
        wire = self._handshake_message(_H.CLIENT_HELLO, push_client_hello(self._client_hello()))
        # RFC 6347 §4.1: a ClientHello may use the DTLS 1.0 record version.
        record_version = DTLS1_0 if self.version == DTLS1_2 else self.version
        self._start_flight([(ContentType.HANDSHAKE, 0, wire)], now, record_version=record_version)

    def _ccs_body(self) -> bytes:
        if self.version == DTLS_BAD_VER:
            body = b"\x01" + self._send_msg_seq.to_bytes(2, "big")
            self._send_msg_seq += 1
            return body
        return b"\x01"

    def _start_flight(
        self, flight: _Flight, now: float, *, record_version: int | None = None
    ) -> None:
        self._flight = flight
        self._flight_version = record_version if record_version is not None else self.version
        self._rto = self.params.rto
        self._rtx_at = now + self._rto
        self._send_flight()

    def _send_flight(self) -> None:
        version = self._flight_version
        datagram = b"".join(self._seal_record(ct, ep, pt, version) for ct, ep, pt in self._flight)
        self._out.append(datagram)

    def _seal_record(self, ctype: int, epoch: int, plaintext: bytes, version: int) -> bytes:
        seq = self._write_seq[epoch]
        self._write_seq[epoch] = seq + 1
        prot = self._write_prot[epoch]
        body = (
            plaintext if prot is None else prot.seal(epoch << 48 | seq, ctype, version, plaintext)
        )
        return encode_record(ctype, version, epoch, seq, body)

    # ------------------------------------------------------------------ data (hot path)

    def seal_data(self, payloads: list[bytes], prefix: bytes = b"") -> list[bytes]:
        """Datagrams carrying *prefix* + each of *payloads* as application data, one
        record each, in order (established only). Fewer come back only when the
        sequence numbers ran out: the connection has then failed
        (:class:`ConnectionClosed`)."""
        prot = self._write_prot[1]
        if self.state is not State.ESTABLISHED or prot is None:
            raise RuntimeError("DTLS connection not established")
        seq = self._write_seq[1]
        count = len(payloads)
        if seq + count > 2**48:
            room = 2**48 - seq
            out = self.seal_data(payloads[:room], prefix) if room else []
            self._fail(SequenceExhausted("DTLS sequence numbers exhausted"))
            return out
        self._write_seq[1] = seq + count
        return prot.seal_records(1 << 48 | seq, _APP, self.version, payloads, prefix)

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def datagrams_to_send(self) -> list[bytes]:
        out = self._out
        self._out = []
        return out

    def close(self) -> None:
        """Send close_notify (if established) and end the connection."""
        if self.state is State.CLOSED:
            return
        if self.state is State.ESTABLISHED:
            self._send_alert(AlertDescription.CLOSE_NOTIFY, warning=True)
        self.state = State.CLOSED
        self._rtx_at = self._deadline = None
        self._events.append(ConnectionClosed("closed by us", None))

    # ------------------------------------------------------------------ input

    def receive_datagrams_untrusted(self, datagrams: list[bytes], now: float) -> list[bytes]:
        """Process a burst of datagrams; returns their authenticated application-data
        payloads in order.

        Datagrams that are exactly one application-data record of the current epoch
        while established, the steady state of the data channel, are opened a run at a
        time by the read protection's :meth:`RecordProtection.open_datagrams_untrusted`
        (in C with the compiled accelerator); everything else goes through
        :meth:`_receive_records` and :meth:`_open`. Both check the same replay window."""
        return self.receive_split_untrusted(datagrams, now, -1)[0]

    def receive_split_untrusted(
        self, datagrams: list[bytes], now: float, split: int
    ) -> tuple[list[bytes], list[bytes]]:
        """As :meth:`receive_datagrams_untrusted`, the payloads sorted by their first
        byte (dtls_crypto.split_plaintext): those that start with *split* without it,
        then the others as they are. A *split* of -1 puts every payload in the first."""
        out: list[bytes] = []
        others: list[bytes] = []
        i, end = 0, len(datagrams)
        while i < end:
            prot = self._read_prot
            if prot is not None and self.state is State.ESTABLISHED:
                i, accepted, replays, bad = prot.open_datagrams_untrusted(
                    datagrams, i, self._read_epoch, self._replay, out, split, others
                )
                self.records_in += accepted
                self.replays_dropped += replays
                self.bad_records += bad
                if i == end:
                    break
            if split < 0:
                self._receive_records(datagrams[i], now, out)  # may change the state
            else:
                payloads: list[bytes] = []
                self._receive_records(datagrams[i], now, payloads)
                for payload in payloads:
                    split_plaintext(payload, split, out, others)
            i += 1
        return out, others

    def _open(
        self,
        prot: RecordProtection,
        ctype: int,
        version: int,
        epoch: int,
        seq: int,
        body: bytes,
    ) -> bytes | None:
        """The one record-decrypt routine: the plaintext of a record of the current read
        epoch (*prot* is its protection), or None when the replay window or the
        authentication drops it. The window is checked before decrypting (cheap
        rejection) and updated after."""
        replay = self._replay
        if not replay.is_fresh(seq):
            self.replays_dropped += 1
            return None
        try:
            plaintext = prot.open_untrusted(epoch << 48 | seq, ctype, version, body)
        except BadRecordMac:
            self.bad_records += 1
            return None
        replay.accept(seq)
        self.records_in += 1
        return plaintext

    def _receive_records(self, data: bytes, now: float, out: list[bytes]) -> None:
        """Every record of one datagram: handshake, alerts, ChangeCipherSpec, and data
        outside the steady state. Application-data payloads are appended to *out*."""
        if self.state is State.CLOSED:
            return
        try:
            for rec in records_untrusted(data):
                prot = self._read_prot
                if rec.epoch == self._read_epoch and prot is not None:
                    plaintext = self._open(
                        prot, rec.ctype, rec.version, rec.epoch, rec.seq, rec.body
                    )
                    if plaintext is None:
                        continue
                    if rec.ctype == _APP:
                        if self.state is State.ESTABLISHED:
                            out.append(plaintext)
                    else:
                        self._on_record(rec.ctype, plaintext, now, authenticated=True)
                elif rec.epoch == 0 and self._read_epoch == 0:
                    self._on_record(rec.ctype, rec.body, now, authenticated=False)
                elif rec.epoch == 0 and rec.ctype == ContentType.HANDSHAKE:
                    self._maybe_peer_retransmitted(rec.body, now)
                # other epochs (or epoch 1 before the server's CCS): dropped
                if self.closed:
                    break
        except DtlsError as exc:
            self._fail(exc)

    def _on_record(self, ctype: int, body: bytes, now: float, *, authenticated: bool) -> None:
        if ctype == ContentType.HANDSHAKE:
            if self.state is State.ESTABLISHED:
                self._maybe_peer_retransmitted(body, now)
                return
            for frag in fragments_untrusted(body):
                for msg_type, seq, msg in self._assembler.add(frag):
                    self._on_handshake_message(msg_type, seq, msg, now)
                    if self.state is State.CLOSED:
                        return
            if self._assembler.retransmissions_seen:
                self._assembler.retransmissions_seen = 0
                self._retransmit_soon(now)
        elif ctype == ContentType.CHANGE_CIPHER_SPEC:
            self._on_change_cipher_spec(body)
        elif ctype == ContentType.ALERT:
            self._on_alert(body, authenticated=authenticated)
        # application data in epoch 0, unknown types: dropped

    def _maybe_peer_retransmitted(self, body: bytes, now: float) -> None:
        """Established: a handshake record from the server means it did not get our
        last flight (resume mode, where we send last). Send it again."""
        if self.params.mode is Mode.RESUME and self._flight:
            self._retransmit_soon(now)

    def _retransmit_soon(self, now: float) -> None:
        if self._flight and now - self._last_rtx >= self.params.rto / 2:
            self._last_rtx = now
            self._send_flight()

    def _on_alert(self, body: bytes, *, authenticated: bool) -> None:
        if len(body) != 2:
            if authenticated:
                raise UnexpectedMessage("malformed alert")
            return
        level, description = body
        if level != 2 and description != AlertDescription.CLOSE_NOTIFY:
            return  # warnings other than close_notify: ignored
        if authenticated:
            raise PeerAlert(description)
        if self.state is not State.ESTABLISHED:
            # Epoch 0: anyone who can send us a datagram can forge it, and ending the
            # attempt on it would let one datagram keep us on TLS (issue 13, F16). As
            # with any invalid record (RFC 6347 §4.1.2.7: silently discarded, since UDP
            # forgery is easy), the attempt goes on; the alert is its reason for failing
            # only if the deadline passes without a handshake (handle_timer).
            self._plaintext_alert = description
        # after the handshake: ignored as well

    def _on_change_cipher_spec(self, body: bytes) -> None:
        expected_len = 3 if self.version == DTLS_BAD_VER else 1
        if self.state is not State.WAIT_CCS:
            return  # early (reordered) or a retransmission: the server will repeat it
        if len(body) != expected_len or body[0] != 1:
            raise UnexpectedMessage("malformed ChangeCipherSpec")
        if self.version == DTLS_BAD_VER:
            # the DTLS 0.9 CCS takes a message sequence number
            self._assembler.skip_to(self._assembler.next_seq + 1)
        assert self._pending_read is not None
        self._read_prot = self._pending_read
        self._read_epoch = 1
        self._replay = ReplayWindow()
        self.state = State.WAIT_FINISHED

    def _on_handshake_message(self, msg_type: int, seq: int, body: bytes, now: float) -> None:
        handler = _TRANSITIONS.get((self.state, msg_type))
        if handler is None:
            try:
                name = HandshakeType(msg_type).name
            except ValueError:
                name = f"type {msg_type}"
            raise UnexpectedMessage(f"unexpected handshake message {name} in {self.state.value}")
        if msg_type not in (_H.HELLO_VERIFY_REQUEST, _H.HELLO_REQUEST, _H.FINISHED):
            self._add_received(msg_type, seq, body)
        getattr(self, handler)(seq, body, now)

    def _add_received(self, msg_type: int, seq: int, body: bytes) -> None:
        if self.version == DTLS_BAD_VER:
            self._transcript.add(body)
        else:
            self._transcript.add(encode_handshake(msg_type, seq, body))

    # ------------------------------------------------------------------ handlers

    def _on_hello_verify_request(self, seq: int, body: bytes, now: float) -> None:
        hvr = pull_hello_verify_request_untrusted(body)
        self._hello_verifies += 1
        if self._hello_verifies > _MAX_HELLO_VERIFY or len(hvr.cookie) > _MAX_COOKIE:
            raise UnexpectedMessage("too many HelloVerifyRequests")
        if hvr.version not in (DTLS1_0, DTLS1_2, DTLS_BAD_VER):
            raise IllegalParameter(f"HelloVerifyRequest version 0x{hvr.version:04x}")
        self._cookie = hvr.cookie
        # RFC 6347 §4.2.1: the first ClientHello and the HelloVerifyRequest are not hashed
        self._transcript.reset()
        self._send_client_hello(now)

    def _on_server_hello(self, seq: int, body: bytes, now: float) -> None:
        p = self.params
        sh = pull_server_hello_untrusted(body)
        if sh.version != p.version:
            raise IllegalParameter(f"server chose version 0x{sh.version:04x}")
        if sh.cipher_suite not in p.suites:
            raise IllegalParameter(f"server chose cipher suite 0x{sh.cipher_suite:04x}")
        if sh.compression_method != 0:
            raise IllegalParameter("server chose compression")
        offered = {t for t, _ in (self._client_hello().extensions or ())}
        for ext_type, ext_data in sh.extensions or ():
            if ext_type not in offered:
                raise IllegalParameter(f"server sent extension {ext_type} we did not offer")
            if ext_type == EXT_RENEGOTIATION_INFO and ext_data != b"\x00":
                raise IllegalParameter("bad renegotiation_info")
            if ext_type == EXT_EXTENDED_MASTER_SECRET:
                if ext_data:
                    raise IllegalParameter("bad extended_master_secret")
                self.ems = True
        self.suite = SUITES[CipherSuite(sh.cipher_suite)]
        self._server_random = sh.random
        if p.mode is Mode.PSK:
            self.state = State.WAIT_SERVER_HELLO_DONE
            return
        if sh.session_id != p.session_id:
            raise NotResumed("the server did not resume the DTLS session (full handshake)")
        assert p.master_secret is not None
        self._master = p.master_secret
        self._derive_keys()
        self._flight = []  # the server's flight answered our ClientHello
        self._rtx_at = None
        self.state = State.WAIT_CCS

    def _on_server_key_exchange(self, seq: int, body: bytes, now: float) -> None:
        pull_server_key_exchange_untrusted(body)  # identity hint: not used

    def _on_server_hello_done(self, seq: int, body: bytes, now: float) -> None:
        if body:
            raise UnexpectedMessage("ServerHelloDone with a body")
        p = self.params
        assert p.psk is not None
        cke = self._handshake_message(
            _H.CLIENT_KEY_EXCHANGE, push_client_key_exchange(ClientKeyExchange(p.psk_identity))
        )
        premaster = psk_premaster(p.psk)
        if self.ems:
            session_hash = self._transcript.digest(self._prf)
            self._master = extended_master_secret(self._prf, premaster, session_hash)
        else:
            self._master = master_secret(
                self._prf, premaster, self._client_random, self._server_random
            )
        self._derive_keys()
        ccs = self._ccs_body()
        self._write_prot[1] = self._pending_write
        finished = self._handshake_message(_H.FINISHED, self._finished_body(b"client finished"))
        self._write_epoch = 1
        self.state = State.WAIT_CCS
        self._start_flight(
            [
                (ContentType.HANDSHAKE, 0, cke),
                (ContentType.CHANGE_CIPHER_SPEC, 0, ccs),
                (ContentType.HANDSHAKE, 1, finished),
            ],
            now,
        )

    def _on_finished(self, seq: int, body: bytes, now: float) -> None:
        fin = pull_finished_untrusted(body)
        expected = self._finished_body(b"server finished")
        if fin.verify_data != expected:
            raise FinishedMismatch("the server's Finished did not verify (wrong key?)")
        self._add_received(_H.FINISHED, seq, body)
        if self.params.mode is Mode.RESUME:
            ccs = self._ccs_body()
            self._write_prot[1] = self._pending_write
            finished = self._handshake_message(_H.FINISHED, self._finished_body(b"client finished"))
            self._write_epoch = 1
            # we send the last flight; keep it to answer server retransmissions
            self._flight = [
                (ContentType.CHANGE_CIPHER_SPEC, 0, ccs),
                (ContentType.HANDSHAKE, 1, finished),
            ]
            self._flight_version = self.version
            self._send_flight()
            self._last_rtx = now
        else:
            self._flight = []
        self._rtx_at = self._deadline = None
        self.state = State.ESTABLISHED
        assert self.suite is not None
        self._events.append(HandshakeComplete(self.version, self.suite, self.ems))

    def _on_hello_request(self, seq: int, body: bytes, now: float) -> None:
        pass  # renegotiation is never done; the server's rekey goes through CSTP

    # ------------------------------------------------------------------ keys

    def _derive_keys(self) -> None:
        assert self.suite is not None
        keys = key_block(
            self.suite, self._prf, self._master, self._client_random, self._server_random
        )
        self._pending_write = make_protection(
            self.suite, keys, client_write=True, random=self._random
        )
        self._pending_read = make_protection(
            self.suite, keys, client_write=False, random=self._random
        )

    def _finished_body(self, label: bytes) -> bytes:
        data = verify_data(self._prf, self._master, label, self._transcript.digest(self._prf))
        return push_finished(Finished(data))

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        if self.state is State.CLOSED or self.state is State.ESTABLISHED:
            return None
        times = [t for t in (self._rtx_at, self._deadline) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED or self.state is State.ESTABLISHED:
            return
        if self._deadline is not None and now >= self._deadline:
            if self._plaintext_alert is not None:
                self._fail(PeerAlert(self._plaintext_alert, authenticated=False))
            else:
                self._fail(HandshakeTimeout("no answer to the DTLS handshake"))
            return
        if self._rtx_at is not None and now >= self._rtx_at and self._flight:
            self._rto = min(self._rto * 2, self.params.max_rto)
            self._rtx_at = now + self._rto
            self._last_rtx = now
            self._send_flight()

    # ------------------------------------------------------------------ failure

    def _send_alert(self, description: int, *, warning: bool = False) -> None:
        body = bytes((1 if warning else 2, description))
        epoch = self._write_epoch
        self._out.append(self._seal_record(ContentType.ALERT, epoch, body, self.version))

    def _fail(self, exc: DtlsError) -> None:
        if self.state is State.CLOSED:
            return
        if exc.alert is not None:
            self._send_alert(exc.alert)
        self.state = State.CLOSED
        self._rtx_at = self._deadline = None
        self._events.append(ConnectionClosed(str(exc) or type(exc).__name__, exc))

    def next_event(self) -> Event | None:
        if self._events:
            return self._events.popleft()
        return None
