"""Instructions per packet in the worker's data path, counted by callgrind.

Timings on the shared 2-CPU machine move by ±20% between runs; instruction counts
move by ~0.5%. This drives a real DataPath one wakeup at a time (``DataPath._turn``):
the real DtlsLink, DtlsChannel and DtlsConnection over the real UdpLink on loopback,
against tests/unit/dtls_peer.py's server (PSK-AES256-GCM-SHA384, ocserv's choice);
a real TlsStream against an in-process OpenSSL server for CSTP; and a fake tun (a
datagram socketpair, read and written as TunIO does without a vnet header). The
clock is frozen, so no DPD or loss timer fires however slowly valgrind runs.

Scenarios: ``{dtls,tls}_{up,down}{1,64}``: lone 84-byte packets (one per wakeup, an
interactive flow) or bursts of 64 packets of 1400 bytes, from the tun to the server
(up) or back (down). Each is run with N and 3N packets; the difference divided by 2N
is the figure, so start-up, the handshake and preparing what the server sends cancel
out. The harness's own work per
packet (feeding and draining the sockets) is included, the same in every run.

    python bench/datapath_instructions.py [--count N] [--pythonpath DIR ...] [SCENARIO ...]

Each ``--pythonpath`` is a tree holding a ``sepconnect`` package (``pip install
--no-deps --target DIR <checkout>``); several give one column each, measured
alternately. Without it the installed package is measured. Needs valgrind; no root.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = [f"{c}_{d}{n}" for c in ("dtls", "tls") for d in ("up", "down") for n in (1, 64)]


class FakeTun:
    """TunIO without a vnet header, on a socketpair end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def read_packets(self, budget: int) -> list[bytes]:
        packets: list[bytes] = []
        read, fd = os.read, self.fd
        for _ in range(budget):
            try:
                packet = read(fd, 65535)
            except BlockingIOError:
                break
            if packet:
                packets.append(packet)
        return packets

    def write_packets(self, packets: list[bytes]) -> None:
        try:
            for packet in packets:
                os.writev(self.fd, (packet,))
        except BlockingIOError:
            return  # the queue is full: the rest are dropped, as TunIO drops them


class IdleStream:
    """The TLS stream of the DTLS scenarios: never carries anything."""

    cipher = "TLSv1.3 (idle)"
    has_output = may_have_output = reading_blocked = False

    def __init__(self) -> None:
        self.sock, self._peer = socket.socketpair()

    def pending(self) -> int:
        return 0

    def recv_nowait(self) -> bytes | None:
        return None

    def flush_nowait(self) -> bool:
        return True

    def close(self) -> None:
        pass


class IdleChannel:
    """The supervisor channel: never readable; status reports are dropped."""

    def __init__(self) -> None:
        self.sock, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: object) -> None:
        pass


def _tls_pair() -> tuple[Any, Any, socket.socket]:
    """A TlsStream and the OpenSSL server at the other end of a socketpair."""
    from tls_pair import tls_pair  # tests/unit, on sys.path in main()

    stream, server, theirs = tls_pair(socket_buffer=4 << 20)
    theirs.setblocking(False)
    return stream, server, theirs


# The harness catches its exceptions in short functions: a traceback entry costs
# more in a long one (the line number is found by scanning its line table).


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(65535)
        except BlockingIOError:
            return n
        n += 1


def _drain_tls(sock: socket.socket, server: Any, decoder: Any) -> int:
    """CSTP packets the server received (what its socket has, decrypted and decoded)."""
    from OpenSSL import SSL

    while True:
        try:
            server.bio_write(sock.recv(65536))
        except BlockingIOError:
            break
    n = 0
    try:
        while True:
            n += len(decoder.feed_pairs_untrusted(server.recv(65536)))
    except SSL.WantReadError:
        return n


def run(scenario: str, count: int, prepare: int) -> None:
    """One measured run (what valgrind executes): *count* packets, after preparing
    what the server sends for *prepare* (the same in both runs of a figure)."""
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from dtls_peer import FakeServer, ServerConfig

    from sepconnect.worker import datapath
    from sepconnect.worker.proto import dtls_crypto as dc
    from sepconnect.worker.proto.cstp import CstpDecoder, encode_data
    from sepconnect.worker.proto.dtls_params import DtlsParams, Mode
    from sepconnect.worker.proto.dtls_setup import DtlsPlan

    suite = dc.CipherSuite.PSK_AES_256_GCM_SHA384
    dtls = scenario.startswith("dtls")
    udp_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_server.bind(("127.0.0.1", 0))
    udp_server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    udp_server.setblocking(False)
    tls_server = tls_sock = None
    if dtls:
        stream: Any = IdleStream()
        params = DtlsParams(
            mode=Mode.PSK, session_id=b"\x33" * 32, suites=(suite,), psk=b"\x11" * 32
        )
        plan: DtlsPlan | None = DtlsPlan(params, 1400, 1400, "PSK-NEGOTIATE")
    else:
        stream, tls_server, tls_sock = _tls_pair()
        plan = None
    tunnel = SimpleNamespace(
        server=SimpleNamespace(address="127.0.0.1"),
        stream=stream,
        config=SimpleNamespace(
            dpd=None,
            keepalive=None,
            dtls_port=udp_server.getsockname()[1],
            dtls_dpd=None,
            dtls_keepalive=None,
            dtls_rekey_time=None,
            dtls_rekey_method=None,
        ),
        leftover=b"",
        dtls=plan,
    )
    tun_end, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (tun_end, tun):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tun.setblocking(False)
    frozen = time.monotonic()
    datapath.time = SimpleNamespace(monotonic=itertools.repeat(frozen).__next__)  # type: ignore[attr-defined]
    ipc = IdleChannel()
    try:
        path = datapath.DataPath(tunnel, tun_end.fileno(), ipc, tun=FakeTun(tun_end.fileno()))  # type: ignore[arg-type, call-arg]
    except TypeError:  # a checkout from before the tun seam (A/B runs)
        datapath.TunIO = FakeTun  # type: ignore[attr-defined, misc]
        path = datapath.DataPath(tunnel, tun_end.fileno(), ipc)  # type: ignore[arg-type]
    path.selector.register(stream.sock.fileno(), "tls")
    path.selector.register(tun_end.fileno(), "tun")
    path.selector.register(ipc.fileno(), "ipc")
    turn = path._turn
    server = FakeServer(ServerConfig("psk", suites=(suite,)))
    if dtls:
        assert path.dtls is not None
        client = None
        deadline = time.monotonic() + 10
        while not path.dtls.usable:
            assert time.monotonic() < deadline, "no DTLS handshake"
            turn()
            while True:
                try:
                    datagram, client = udp_server.recvfrom(65535)
                except BlockingIOError:
                    break
                server.receive(datagram)
            for datagram in server.datagrams():
                udp_server.sendto(datagram, client)
        udp_server.connect(client)
    burst = 64 if scenario.endswith("64") else 1
    packet = b"\x45" + bytes((1400 if burst > 1 else 84) - 1)
    down = "_down" in scenario
    prepared: list[bytes] = []  # what the server sends
    if down:
        for _ in range(prepare):
            if dtls:
                prepared.append(server.app_datagram(b"\x00" + packet))
            else:
                assert tls_server is not None
                tls_server.send(encode_data(packet))
                prepared.append(tls_server.bio_read(65536))
    decoder = CstpDecoder()
    moved = i = 0
    for _ in range(count // burst):
        if down and dtls:
            for _ in range(burst):
                udp_server.send(prepared[i])
                i += 1
        elif down:
            assert tls_sock is not None
            tls_sock.send(b"".join(prepared[i : i + burst]))
            i += burst
        else:
            for _ in range(burst):
                tun.send(packet)
        turn()
        if down:
            moved += _drain(tun)
        elif dtls:
            moved += _drain(udp_server)
        else:
            assert tls_sock is not None
            moved += _drain_tls(tls_sock, tls_server, decoder)
    assert moved == count, f"{scenario}: {moved} of {count} packets arrived"


def _instructions(scenario: str, count: int, prepare: int, pythonpath: str | None) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, __file__, "--run", scenario, str(count), str(prepare)]
    subprocess.run(cmd, env=env, check=True)  # warm: byte-compiled, and it works
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    assert found, proc.stderr[-2000:]
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", default=SCENARIOS)
    parser.add_argument("--count", type=int, default=1024, help="N (a multiple of 64)")
    parser.add_argument("--pythonpath", action="append", default=[])
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run(args.run[0], int(args.run[1]), int(args.run[2]))
        return 0
    columns = args.pythonpath or [None]
    print("scenario      " + "".join(f"{(c or 'installed')[-24:]:>26}" for c in columns))
    for scenario in args.scenarios:
        row = []
        for column in columns:
            low = _instructions(scenario, args.count, 3 * args.count, column)
            high = _instructions(scenario, 3 * args.count, 3 * args.count, column)
            row.append((high - low) // (2 * args.count))
        print(f"{scenario:<14}" + "".join(f"{n:>26,}" for n in row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
