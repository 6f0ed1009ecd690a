"""The vpnc-script: the checks the root runner makes before it runs one.

The helper builds the script's environment from validated values (privhelper/script.py)
and the root runner checks every variable's name and value once more
(:func:`check_env`), and the script's path and ownership (:func:`check_script`), before
each run.
"""

from __future__ import annotations

import os
import re
import stat
import typing
from typing import Final

from sepconnect.ipc.limits import IFNAME
from sepconnect.ipc.runner_messages import ScriptReason

REASONS: Final = typing.get_args(ScriptReason)

# The variables a vpnc-script may get (PROTOCOL.md §6), each with the values it may have.
_ADDR = r"[0-9A-Fa-f:.]{2,39}"
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
        (r"CISCO_CSTP_OPTIONS", r"(X-CSTP-[A-Za-z0-9-]{1,40}=[A-Za-z0-9 .:/,-]{0,4000}\n){0,600}"),
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


def check_script(path: str) -> str:
    """The vpnc-script root named: absolute, and it and every directory above it
    owned by root and writable by nobody else (no symlink in the last part). The
    launcher checks this, the root runner at its start and again before each run."""
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"{path!r}: not an absolute path")
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"{path}: a symbolic link; give the real path")
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o100:
        raise ValueError(f"{path}: not an executable regular file")
    parts = os.path.dirname(os.path.realpath(path))
    checked = [path]
    while True:
        checked.append(parts)
        if parts == "/":
            break
        parts = os.path.dirname(parts)
    for item in checked:
        st = os.stat(item)
        if st.st_uid != 0:
            raise ValueError(f"{path}: {item} is not owned by root")
        sticky_root_dir = item != path and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky_root_dir:
            raise ValueError(f"{path}: {item} is writable by group or others")
    return path
