"""Requests exactly as the supervisor's HelperClient puts them on the wire."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack

from sepconnect.supervisor.helper_client import REQUESTS, HelperClient


class _Captured(Exception):
    pass


def client_request(method: str, *args: Any, seq: int = 1, **kwargs: Any) -> dict[str, Any]:
    """The msgpack map HelperClient.<method>(...) sends (whatever the schema is today)."""
    captured: list[Any] = []

    def capture(request: Any, *_: Any) -> Any:
        captured.append(request)
        raise _Captured

    client = HelperClient.__new__(HelperClient)
    client._seq = seq - 1
    client.__dict__["_call"] = capture
    with contextlib.suppress(_Captured):
        getattr(client, method)(*args, **kwargs)
    wire: dict[str, Any] = msgpack.unpackb(REQUESTS.encode(captured[0]))
    return wire
