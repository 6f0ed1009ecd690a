"""The vpnc-script's environment: the variables a script may get, each with the values
it may have (PROTOCOL.md §6). The helper checks the environment it builds against these
rules before it accepts a configuration for --script (privhelper/script.py), and the
root runner checks every variable again before each run (rootrunner/script.py).

Also the script's arguments after its path (``-s 'vpn-slice 10.0.0.0/8'``,
:func:`check_script_args`): root gave them, and the launcher, the helper and the root
runner (at its start and before each run) each check them.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from typing import Final

from sepconnect.ipc.limits import IFNAME, MAX_DNS, MAX_DOMAINS, MAX_ROUTES
from sepconnect.ipc.runner_messages import ScriptReason
from sepconnect.ipc.session_limits import MAX_SCRIPT_ARG, MAX_SCRIPT_ARGS, SCRIPT_ARG

REASONS: Final = typing.get_args(ScriptReason)

# The variables a vpnc-script may get (PROTOCOL.md §6), each with the values it may have.
_ADDR = r"[0-9A-Fa-f:.]{2,39}"
# CISCO_CSTP_OPTIONS: a line per MTU, idle timeout, address (3), DNS server, split-DNS
# domain and split route; the longest value is the search domains on one line (253
# characters and a space each).
_MAX_OPTIONS = 5 + MAX_DNS + MAX_DOMAINS + 2 * MAX_ROUTES
_MAX_OPTION_VALUE = MAX_DOMAINS * 254
_ENV_RULES: Final[tuple[tuple[re.Pattern[str], re.Pattern[str]], ...]] = tuple(
    (re.compile(name), re.compile(value))
    for name, value in (
        (r"reason", "|".join(REASONS)),
        (r"VPNGATEWAY", _ADDR),
        (r"TUNDEV", IFNAME),
        (r"VPNPID|LOG_LEVEL|IDLE_TIMEOUT|INTERNAL_IP4_MTU", r"[0-9]{1,10}"),
        (r"INTERNAL_IP4_(ADDRESS|NETMASK|NETADDR)", r"[0-9.]{7,15}"),
        (r"INTERNAL_IP4_NETMASKLEN", r"[0-9]{1,2}"),
        (r"INTERNAL_IP[46]_DNS", rf"{_ADDR}( {_ADDR}){{0,7}}"),
        (r"INTERNAL_IP6_ADDRESS", _ADDR),
        (r"INTERNAL_IP6_NETMASK", rf"{_ADDR}/[0-9]{{1,3}}"),
        (r"CISCO_DEF_DOMAIN", r"[a-z0-9.-]+( [a-z0-9.-]+)*"),
        (r"CISCO_SPLIT_DNS", r"[a-z0-9.-]+(,[a-z0-9.-]+)*"),
        (r"CISCO_BANNER", "[^\x00-\x09\x0b-\x1f\x7f-\x9f]{1,2000}"),
        (r"CISCO_(IPV6_)?SPLIT_(INC|EXC)", r"[0-9]{1,3}"),
        (r"CISCO_(IPV6_)?SPLIT_(INC|EXC)_[0-9]{1,3}_(ADDR|MASK)", _ADDR),
        (r"CISCO_(IPV6_)?SPLIT_(INC|EXC)_[0-9]{1,3}_MASKLEN", r"[0-9]{1,3}"),
        (
            r"CISCO_CSTP_OPTIONS",
            rf"(X-CSTP-[A-Za-z0-9-]{{1,40}}=[A-Za-z0-9 .:/,-]{{0,{_MAX_OPTION_VALUE}}}\n)"
            rf"{{0,{_MAX_OPTIONS}}}",
        ),
    )
)


def check_env(blob: bytes) -> dict[str, str]:
    """The environment for a script: every item must match one rule exactly."""
    env: dict[str, str] = {}
    if not blob:
        return env
    for item in blob.split(b"\0"):
        try:
            text = item.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("an environment item is not UTF-8") from None
        name, eq, value = text.partition("=")
        if not eq or name in env:
            raise ValueError(f"bad or repeated environment item {name[:40]!r}")
        for name_rx, value_rx in _ENV_RULES:
            if name_rx.fullmatch(name):
                if value_rx.fullmatch(value) is None:
                    raise ValueError(f"{name}: value not allowed")
                break
        else:
            raise ValueError(f"{name[:40]!r}: not a vpnc-script variable")
        env[name] = value
    if "reason" not in env:
        raise ValueError("no reason")
    return env


def check_script_args(args: Sequence[str]) -> tuple[str, ...]:
    """The vpnc-script's arguments after its path: at most MAX_SCRIPT_ARGS, each one
    printable line (session_limits.SCRIPT_ARG); ValueError otherwise."""
    if len(args) > MAX_SCRIPT_ARGS:
        raise ValueError(f"more than {MAX_SCRIPT_ARGS} arguments")
    for arg in args:
        if re.fullmatch(SCRIPT_ARG, arg) is None:
            raise ValueError(
                f"argument {arg[:40]!r}: not one printable line of at most {MAX_SCRIPT_ARG}"
            )
    return tuple(args)
