"""A small sans-I/O HTTP/1.1 client over h11, for the auth exchange and CONNECT.

One :class:`HttpClient` per TLS connection. The driver writes what
:meth:`HttpClient.request` returns, feeds everything it reads to
:meth:`HttpClient.receive_data_untrusted` until that returns a response, and
calls :meth:`HttpClient.connection_closed` when the server ends the stream.

After a successful (2xx) CONNECT the TLS stream belongs to CSTP: h11 stops
parsing, and :attr:`HttpClient.trailing_data` holds whatever CSTP bytes arrived
in the same read as the response head.

Limits: the response head may be at most ``max_header`` bytes (h11's
``max_incomplete_event_size``) and the body at most ``max_body`` bytes; both
raise :class:`ProtocolError` when exceeded, as does anything h11 considers
malformed.

ocserv quirks handled here: its ``401 Cookie is not acceptable`` and
``503 … X-Reason`` answers to CONNECT carry no Content-Length, so their (empty)
body is delimited by the connection close; :meth:`connection_closed` returns
the response that the close completed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Final

import h11

from sepconnect.worker.proto.errors import ProtocolError

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_MAX_HEADER", "HttpClient", "HttpResponse"]

DEFAULT_MAX_BODY: Final = 1 << 20
#: Cap on the response head. ocserv's CONNECT answer grows with the number of
#: routes (one ~50-byte header line each); 64 KiB leaves room for about a
#: thousand while still bounding what a hostile server can make us buffer.
DEFAULT_MAX_HEADER: Final = 64 * 1024
#: 1xx responses we tolerate before the real one (ocserv sends none).
_MAX_INFORMATIONAL: Final = 8


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete HTTP response. Header names are lowercased; order is kept."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or None."""
        key = name.lower()
        for k, v in self.headers:
            if k == key:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        """Every value of header *name* (case-insensitive), in order."""
        key = name.lower()
        return [v for k, v in self.headers if k == key]


def _text(raw: bytes) -> str:
    # h11 has already restricted header values and the reason phrase to
    # visible ASCII, spaces and obs-text (0x80-0xff); latin-1 maps every byte.
    return raw.decode("latin-1")


class HttpClient:
    """HTTP/1.1 client state for one connection (wraps ``h11.Connection``)."""

    def __init__(
        self, *, max_body: int = DEFAULT_MAX_BODY, max_header: int = DEFAULT_MAX_HEADER
    ) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header)
        self._max_body = max_body
        self._outstanding = False
        self._head: h11.Response | None = None
        self._body = bytearray()
        self._informational = 0
        self._switched = False
        self._trailing = b""

    # -- sending ---------------------------------------------------------

    def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> bytes:
        """Serialise one request; returns the bytes to write.

        Adds ``Content-Length`` when there is a body and the caller did not
        set it (h11 would otherwise choose chunked encoding, which ocserv
        does not accept on requests). Raises RuntimeError if the connection
        cannot carry another request (see :meth:`reuse`) and ValueError if a
        header or the target is not valid HTTP.
        """
        if self._switched:
            raise RuntimeError("connection was handed over to CSTP")
        if self._outstanding:
            raise RuntimeError("a request is already outstanding")
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        if conn.our_state is not h11.IDLE:
            raise RuntimeError("this connection cannot carry another request")
        hdrs = list(headers)
        if body and not any(k.lower() == "content-length" for k, _ in hdrs):
            hdrs.append(("Content-Length", str(len(body))))
        try:
            out = conn.send(h11.Request(method=method, target=target, headers=hdrs))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ValueError(f"invalid HTTP request: {exc}") from None
        self._outstanding = True
        self._head = None
        self._body = bytearray()
        self._informational = 0
        return out

    # -- receiving -------------------------------------------------------

    def receive_data_untrusted(self, data: bytes) -> HttpResponse | None:
        """Feed bytes read from the server.

        Returns the response once it is complete, or None if more bytes are
        needed. Raises ProtocolError on malformed or oversized input, or on
        bytes arriving when no request is outstanding.
        """
        if self._switched:
            raise RuntimeError("connection was handed over to CSTP; feed the CSTP decoder")
        if not data:
            return None
        if not self._outstanding:
            raise ProtocolError("Server sent data without a pending HTTP request")
        try:
            self._conn.receive_data(data)
        except RuntimeError as exc:  # data after h11 saw the server close
            raise ProtocolError(f"Unexpected data from server: {exc}") from None
        return self._pump()

    def connection_closed(self) -> HttpResponse | None:
        """Tell the client the server ended the stream (EOF).

        Returns the response the close completed (a body delimited by the
        connection close, as in ocserv's CONNECT error answers), or None if no
        request was outstanding. Raises ProtocolError if a response was cut
        short.
        """
        if self._switched or not self._outstanding:
            return None
        with contextlib.suppress(RuntimeError):  # h11 already knew
            self._conn.receive_data(b"")
        resp = self._pump()
        if resp is None:
            raise ProtocolError(
                "Server closed the connection before the HTTP response was complete"
            )
        return resp

    def _pump(self) -> HttpResponse | None:
        conn = self._conn
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if conn.their_state is h11.CLOSED:
                        raise ProtocolError(
                            "Server closed the connection before the HTTP response was complete"
                        )
                    return None
                if event is h11.PAUSED:
                    if conn.their_state is h11.SWITCHED_PROTOCOL and self._head is not None:
                        return self._finish_switch()
                    return None
                if isinstance(event, h11.InformationalResponse):
                    self._informational += 1
                    if self._informational > _MAX_INFORMATIONAL:
                        raise ProtocolError("Server sent too many 1xx responses")
                    continue
                if isinstance(event, h11.Response):
                    self._head = event
                    self._check_declared_length(event)
                    continue
                if isinstance(event, h11.Data):
                    if len(self._body) + len(event.data) > self._max_body:
                        raise ProtocolError(f"HTTP response body exceeds {self._max_body} bytes")
                    self._body += event.data
                    continue
                if isinstance(event, h11.EndOfMessage):
                    return self._finish()
                if isinstance(event, h11.ConnectionClosed):
                    raise ProtocolError(
                        "Server closed the connection before the HTTP response was complete"
                    )
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(f"Malformed HTTP response from server: {exc}") from None

    def _check_declared_length(self, head: h11.Response) -> None:
        for name, value in head.headers:
            # h11 has validated Content-Length as digits.
            if name == b"content-length" and int(value) > self._max_body:
                raise ProtocolError(f"HTTP response body exceeds {self._max_body} bytes")

    def _make(self, head: h11.Response, body: bytes) -> HttpResponse:
        headers = tuple((_text(k), _text(v)) for k, v in head.headers)
        return HttpResponse(head.status_code, _text(head.reason), headers, body)

    def _finish(self) -> HttpResponse:
        head = self._head
        if head is None:  # pragma: no cover - h11 never ends a message without a head
            raise ProtocolError("HTTP response without a status line")
        self._outstanding = False
        return self._make(head, bytes(self._body))

    def _finish_switch(self) -> HttpResponse:
        head = self._head
        assert head is not None
        data, _closed = self._conn.trailing_data
        self._trailing = bytes(data)
        self._switched = True
        self._outstanding = False
        return self._make(head, b"")

    # -- state -----------------------------------------------------------

    @property
    def trailing_data(self) -> bytes:
        """After a 2xx CONNECT: bytes already received that belong to CSTP."""
        return self._trailing

    @property
    def switched(self) -> bool:
        """True after a 2xx CONNECT response: the stream now carries CSTP."""
        return self._switched

    def reuse(self) -> bool:
        """Whether this connection may carry another request (keep-alive).

        False while a request is outstanding, after a non-keep-alive exchange,
        after the server closed, and after a 2xx CONNECT (the HttpClient is
        done; the stream is CSTP).
        """
        if self._switched or self._outstanding:
            return False
        conn = self._conn
        if conn.our_state is h11.IDLE and conn.their_state is h11.IDLE:
            return True
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE
