"""Worker messages for tests, with the fields a test does not care about filled in."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from sepconnect.ipc.worker_messages import Start


def _address_of(url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The URL's host if it is an address (as the launcher would resolve it), else a lab one."""
    try:
        return ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        return ipaddress.ip_address("198.18.1.1")


def start_message(url: str, **fields: Any) -> Start:
    """A Start for ``url``: no pin, default MTUs, unless ``fields`` say."""
    defaults: dict[str, Any] = {
        "proto": 1,
        "server_address": _address_of(url),
        "cafile_pem": None,
        "base_mtu": None,
        "mtu": None,
        "disable_ipv6": False,
        "hostname": "probe",
        "verbose": 0,
    }
    return Start(url=url, **{**defaults, **fields})
