"""NetworkConfig values for tests, written as text and parsed by the real codec."""

from __future__ import annotations

from typing import Any

import msgpack

from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.wire import Codec

_CODEC = Codec(NetworkConfig)

DEFAULTS: dict[str, Any] = {
    "gateway": "198.18.1.1",
    "mtu": 1400,
    "ipv4": "198.18.100.2/24",
    "ipv6": "2001:2:0:100::2/64",
    "routes": ["198.18.2.0/24", "2001:2:0:2::/64"],
    "exclude": [],
    "dns": [],
    "domains": [],
    "split_dns": [],
    "dns_default": False,
    "banner": None,
    "idle_timeout": None,
}


def network_config(**fields: Any) -> NetworkConfig:
    """DEFAULTS with ``fields`` over them, through the codec (WireError if malformed)."""
    body = {"op": NetworkConfig.op, **DEFAULTS, **fields}
    body = {k: list(v) if isinstance(v, tuple) else v for k, v in body.items()}
    msg = _CODEC.decode_untrusted(msgpack.packb(body, use_bin_type=True))
    assert isinstance(msg, NetworkConfig)
    return msg


def texts(values: Any) -> Any:
    """Addresses and prefixes back to text, for comparing with literals."""
    if isinstance(values, tuple | list):
        return tuple(str(v) for v in values)
    return None if values is None else str(values)
