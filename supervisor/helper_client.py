"""The unprivileged side's stubs for talking to the helper (cf. OpenSSH monitor_wrap.c).

Each call sends one request, waits (with a timeout) for the one reply, and
checks it: same ``seq``, exactly the expected type, an fd only on
``TunCreated``. ``Refused`` raises :class:`HelperRefused`; anything else
unexpected raises :class:`WireError`, after which the channel is not used
again (the helper treats the session as over too).
"""

from __future__ import annotations

import os
import select
import socket
from typing import Literal, TypeVar

from sepconnect.ipc.fields import IpAddress
from sepconnect.ipc.helper_messages import (
    REPLY_TYPES,
    REQUEST_TYPES,
    CreateTun,
    Done,
    Hello,
    LeftOut,
    NetApplied,
    NetConfig,
    Refused,
    ScriptEvent,
    Teardown,
    TunCreated,
)
from sepconnect.ipc.netconfig import NetworkConfig
from sepconnect.ipc.wire import PROTO_VERSION, Channel, Codec, Message, WireError

REQUESTS = Codec(*REQUEST_TYPES)
"""The helper channel's requests, as the supervisor encodes them."""
REPLIES = Codec(*REPLY_TYPES)
"""The helper's replies, as the supervisor decodes them."""
FD_REPLIES = frozenset({TunCreated.op})
"""The one reply that carries an fd (the tun)."""

DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for a reply; the helper answers in milliseconds."""

SCRIPT_TIMEOUT = 70.0
"""Seconds to wait when the reply may wait for a vpnc-script (the runner kills it at 60 s)."""

_R = TypeVar("_R", Done, NetApplied, TunCreated)


class HelperRefused(Exception):
    """The helper refused the request and changed nothing; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HelperClient:
    """Blocking calls to the privileged helper over our end of its socketpair."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.channel = Channel(sock, REPLIES, FD_REPLIES, send_codec=REQUESTS, send_fd_ops=())
        # The kernel attaches our credentials to a message only if one of the two
        # ends has SO_PASSCRED when it is *sent*; the helper may not have set it
        # yet when our Hello goes out, so we set it on our end too.
        self.channel.pass_credentials()
        self.timeout = timeout
        self._seq = 0

    def fileno(self) -> int:
        return self.channel.fileno()

    def close(self) -> None:
        self.channel.sock.close()

    def hello(self, gateway: IpAddress) -> None:
        """Open the session; ``gateway``, the VPN server's address, is fixed from now on."""
        hello = Hello(seq=self._next_seq(), proto=PROTO_VERSION, role="supervisor", gateway=gateway)
        self._call(hello, Done)

    def create_tun(self, mtu: int, *, vnet_hdr: bool = False) -> tuple[str, int, int]:
        """Have the helper create the tun; return (ifname, ifindex, fd). The fd is ours to close."""
        request = CreateTun(seq=self._next_seq(), mtu=mtu, vnet_hdr=vnet_hdr)
        reply, fd = self._call(request, TunCreated, SCRIPT_TIMEOUT)
        if fd is None:  # the Channel guarantees one; this only keeps the types honest
            raise WireError("tun_created: no fd")
        return reply.ifname, reply.ifindex, fd

    def net_config(self, net: NetworkConfig) -> tuple[LeftOut, ...]:
        """Make the tunnel's whole network state ``net`` (declarative: repeat freely);
        return the excludes left out because the host has no path for them."""
        reply, _ = self._call(NetConfig(seq=self._next_seq(), net=net), NetApplied, SCRIPT_TIMEOUT)
        return reply.left_out

    def script_event(self, reason: Literal["attempt-reconnect", "reconnect"]) -> None:
        """Tell the helper's vpnc-script (``--script``) that the worker is about to reconnect
        (``attempt-reconnect``: call before starting a replacement worker or a new CSTP
        connection while the tun stays up) or has reconnected (``reconnect``: call once
        the new worker reported its tunnel and got the tun). The helper runs the script
        as root for that reason, with the environment of the current connection, and
        answers when it has finished (the runner gives it at most 60 s: use a timeout of
        at least that, see ``SCRIPT_TIMEOUT``). Without ``--script`` it is a no-op. A
        ``reconnect`` run that fails raises HelperRefused: the session must end."""
        self._call(ScriptEvent(seq=self._next_seq(), reason=reason), Done, SCRIPT_TIMEOUT)

    def teardown(self) -> None:
        """Have the helper remove everything it installed and exit."""
        self._call(Teardown(seq=self._next_seq()), Done, SCRIPT_TIMEOUT)

    def _next_seq(self) -> int:
        self._seq = self._seq % (2**31 - 1) + 1
        return self._seq

    def _call(
        self,
        request: Hello | CreateTun | NetConfig | ScriptEvent | Teardown,
        expect: type[_R],
        script_timeout: float = 0.0,
    ) -> tuple[_R, int | None]:
        """``script_timeout``: the request may wait for a vpnc-script (``--script``)."""
        timeout = max(self.timeout, script_timeout)
        self.channel.send(request)
        poller = select.poll()
        poller.register(self.channel.fileno(), select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            raise WireError(f"{request.op}: no reply from the helper within {timeout:g} s")
        reply, fd = self.channel.recv()
        try:
            return self._check(request, reply, expect), fd
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    @staticmethod
    def _check(
        request: Hello | CreateTun | NetConfig | ScriptEvent | Teardown,
        reply: Message,
        expect: type[_R],
    ) -> _R:
        if not isinstance(reply, Done | NetApplied | TunCreated | Refused):
            raise WireError(f"{request.op}: unexpected reply {reply.op!r}")
        if reply.seq != request.seq:
            raise WireError(f"{request.op}: reply seq {reply.seq}, expected {request.seq}")
        if isinstance(reply, Refused):
            raise HelperRefused(reply.reason)
        if not isinstance(reply, expect):
            raise WireError(f"{request.op}: expected {expect.op!r}, got {reply.op!r}")
        return reply
