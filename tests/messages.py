"""Worker messages for tests, with the fields a test does not care about filled in."""

from __future__ import annotations

from typing import Any

from sepconnect.ipc.worker_messages import Start


def start_message(url: str, **fields: Any) -> Start:
    """A Start for ``url``: no pin, default MTUs, unless ``fields`` say."""
    defaults: dict[str, Any] = {
        "proto": 1,
        "servercert": None,
        "cafile_pem": None,
        "base_mtu": None,
        "mtu": None,
        "disable_ipv6": False,
        "hostname": "probe",
        "verbose": 0,
    }
    return Start(url=url, **{**defaults, **fields})
