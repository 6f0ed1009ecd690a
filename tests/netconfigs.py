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


def largest_script_config(
    *, ifname: str, vpnpid: int, log_level: int = 0, gateway: str = DEFAULTS["gateway"]
) -> NetworkConfig:
    """A configuration the helper's policy accepts whose vpnc-script environment is
    exactly the runner's limit (MAX_SCRIPT_ENV bytes) for its longest run: 256 routes,
    as many IPv6 excludes as fit, then a banner filling the rest byte for byte (one more
    banner character is one byte too many; an exclude is less than a banner's 2000)."""
    from sepconnect.ipc.runner_messages import MAX_SCRIPT_ENV
    from sepconnect.privhelper.policy import check_net_config
    from sepconnect.privhelper.script import SESSION_REASONS, encode_env, script_env

    def config(excludes: int, banner: str) -> NetworkConfig:
        return network_config(
            gateway=gateway,
            routes=[f"198.19.{i}.0/24" for i in range(256)],
            exclude=[f"2001:db8:{i:x}::/48" for i in range(excludes)],
            banner=banner,
        )

    def size(net: NetworkConfig) -> int:
        wanted = check_net_config(net)
        return max(
            len(encode_env(script_env(r, ifname=ifname, vpnpid=vpnpid, log_level=log_level,
                                      wanted=wanted)))
            for r in SESSION_REASONS
        )  # fmt: skip

    low, high = 0, 256  # the most excludes that fit with a one-character banner
    while low < high:
        middle = (low + high + 1) // 2
        if size(config(middle, "x")) <= MAX_SCRIPT_ENV:
            low = middle
        else:
            high = middle - 1
    net = config(low, "x" * (1 + MAX_SCRIPT_ENV - size(config(low, "x"))))
    assert size(net) == MAX_SCRIPT_ENV
    return net
