"""The shared patterns of ipc/limits.py, and that every place checking a value agrees.

An interface name is checked by the launcher (--interface), the helper (its argv) and
both channels' schemas (TunCreated, TunHandoff); a DTLS cipher list by the launcher,
the Start schema and the CONNECT request builder. Each uses the one pattern.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import pytest

from sepconnect import cli
from sepconnect.ipc.helper_args import check_ifname
from sepconnect.ipc.helper_messages import TunCreated
from sepconnect.ipc.limits import IFNAME
from sepconnect.ipc.session_limits import CIPHER_LIST, MAX_CIPHER_LIST, MAX_CIPHERS
from sepconnect.ipc.wire import WireError
from sepconnect.ipc.worker_messages import TO_WORKER, Start, TunHandoff
from sepconnect.supervisor.helper_client import REPLIES
from sepconnect.worker.proto.dtls_setup import DEFAULT_CIPHERS, DEFAULT_CIPHERS12
from sepconnect.worker.proto.tunnel import build_connect_request

IFNAMES = {
    "sepc0": True,
    "vpn_0": True,
    "a.b-c": True,
    "x" * 15: True,
    "...": True,
    "": False,
    ".": False,
    "..": False,
    "x" * 16: False,
    "sepc%d": False,
    "a b": False,
    "eth0/1": False,
    "tun\n": False,
    "é": False,
    "a:b": False,
}

NAME = "E" * 64
CIPHER_LISTS = {
    "PSK-NEGOTIATE": True,
    DEFAULT_CIPHERS: True,
    DEFAULT_CIPHERS12: True,
    ":".join(["A"] * MAX_CIPHERS): True,
    ":".join([NAME] * 7): True,  # 454 characters
    ":".join(["A"] * (MAX_CIPHERS + 1)): False,
    ":".join([NAME] * 8): False,  # 519 characters: over MAX_CIPHER_LIST
    "E" * 65: False,
    "A:": False,
    ":A": False,
    "A B": False,
    "A\n": False,
}


def _accepts(action: Callable[[], object]) -> bool:
    """False if ``action`` refuses its value (each checker's own exception), else True."""
    try:
        action()
    except (ValueError, WireError, cli.UsageError):
        return False
    return True


def test_cipher_list_bounds_are_consistent() -> None:
    assert len(":".join([NAME] * 8)) > MAX_CIPHER_LIST >= len(":".join([NAME] * 7))


@pytest.mark.parametrize(("name", "ok"), IFNAMES.items())
def test_every_interface_name_check_agrees(name: str, ok: bool) -> None:
    args = cli._parser().parse_args(["connect", "https://vpn.example/", "--interface", name])
    tun_created = TunCreated(seq=1, ifname=name, ifindex=3)
    assert [
        re.fullmatch(IFNAME, name) is not None,
        _accepts(lambda: check_ifname(name)),
        _accepts(lambda: cli._check_args(args)),
        _accepts(lambda: REPLIES.decode_untrusted(REPLIES.encode(tun_created))),
        _accepts(lambda: TO_WORKER.decode_untrusted(TO_WORKER.encode(TunHandoff(ifname=name)))),
    ] == [ok] * 5


@pytest.mark.parametrize(("ciphers", "ok"), CIPHER_LISTS.items())
def test_every_cipher_list_check_agrees(ciphers: str, ok: bool) -> None:
    args = cli._parser().parse_args(["connect", "https://vpn.example/", "--dtls-ciphers", ciphers])
    start = Start(
        proto=1,
        url="https://vpn.example/",
        server_address=ipaddress.ip_address("198.18.1.1"),
        cafile_pem=None,
        base_mtu=None,
        mtu=None,
        disable_ipv6=False,
        hostname="client",
        verbose=0,
        dtls_ciphers=ciphers,
        dtls12_ciphers=ciphers,
    )
    assert [
        re.fullmatch(CIPHER_LIST, ciphers) is not None,
        _accepts(lambda: cli._check_args(args)),
        _accepts(lambda: TO_WORKER.decode_untrusted(TO_WORKER.encode(start))),
        _accepts(
            lambda: build_connect_request(
                host="vpn.example",
                port=443,
                cookie="c",
                hostname="client",
                base_mtu=1500,
                mtu=0,
                dtls_master_secret=bytes(48),
                dtls_ciphers=ciphers,
                dtls12_ciphers=ciphers,
            )
        ),
    ] == [ok] * 4
