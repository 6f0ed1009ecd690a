"""Benchmark (not a test): sepconnect next to openconnect, same lab, same ocserv, same run.

    sudo /opt/sepconnect-venv/bin/python bench/compare.py [--quick] [--repeat N]
        [--seconds S] [--pin] [--udp-rates PPS,...] [--udp-seconds S]
        [--json FILE] [--png FILE]

One lab (throwaway namespaces, real ocserv 1.1.6 with DTLS, dpd 10). For each
repetition both clients run in turn, the order alternating between repetitions:

- over DTLS: connect time (process start → tun up with its address → first ping
  through the tunnel answered, polled with ``ping -c1 -W 0.01``), ping RTT (50 pings
  at 20 ms, minus the raw RTT client → server outside the tunnel), iperf3 TCP up and
  down, CPU seconds per GB moved (utime+stime from /proc over each iperf3 run) of the
  client's processes and, beside it, of ocserv's (main, sec-mod, workers), RSS of each
  client process and their sum;
- packet rate, in the same DTLS session: iperf3 UDP with 100-byte datagrams at each
  offered rate of ``--udp-rates``, up and down: datagrams delivered per second, loss,
  where datagrams were dropped (the client's tun queue or DTLS socket, ocserv's socket
  or tun queue, the receiving iperf3's socket), client CPU (% of one CPU) and CPU µs
  per packet of the client and of ocserv; the highest offered rate with < 1% loss;
- over TLS (both clients with ``--no-dtls``): iperf3 up and down, CPU per GB;
- unless ``--quick``: DTLS failover/return (bench/dtls_failover.py) and recovery after
  faults (bench/recovery.py), once per client.

``--pin`` puts the client side on CPU 0 and the server side on CPU 1: the client is
started under ``taskset``, so its processes and all they start later (sepconnect's
helper and every worker) inherit CPU 0, as does ``iperf3 -c``; ocserv's processes and
``iperf3 -s`` are pinned to CPU 1 by pid before each run (workers ocserv forks later
inherit it). The affinities are read back from /proc after every run, recorded in the
JSON and, with ``--pin``, checked. Failover and recovery run unpinned clients.

Prints one table with medians, ranges and the ratio sepconnect/openconnect (ratios
from the same run are what count: the machine is noisy) and a packet-rate table,
writes JSON, and draws a PNG when matplotlib is installed (``pip install
sepconnect[bench]``; without it the chart is skipped with a message). CI runs it with
tiny durations as a smoke test (tests/integration/test_bench_smoke.py) and asserts
nothing about timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import recovery  # noqa: E402  (bench/recovery.py)
from dtls_lab import UdpFilter, VpnClient, measure_failover  # noqa: E402

from lab import Lab, OcservOptions, descendants  # noqa: E402

KINDS = ("sepconnect", "openconnect")
DTLS_UP = {
    "sepconnect": r"data channel: DTLS",
    "openconnect": r"Established DTLS connection|DTLS connected",
}
_TICK = os.sysconf("SC_CLK_TCK")

# --pin: the client machine's CPU (the client, all it starts, iperf3 -c) and the
# server side's (ocserv, iperf3 -s)
CLIENT_CPU = 0
SERVER_CPU = 1

UDP_PAYLOAD = 100  # bytes of iperf3 payload per datagram (128-byte IPv4 packets)
UDP_RATES = (10_000, 20_000, 50_000, 100_000)  # offered datagrams per second, default
UDP_LOSS_LIMIT = 1.0  # % loss under which a rate counts as carried
DIRECTIONS = ("up", "down")

# metric key -> (label, unit, better: "higher"/"lower", target text)
METRICS: dict[str, tuple[str, str, str, str]] = {
    "dtls_up_mbps": ("DTLS iperf3 up", "Mbit/s", "higher", ">= 1.2x"),
    "dtls_down_mbps": ("DTLS iperf3 down", "Mbit/s", "higher", ">= 1.2x"),
    "tls_up_mbps": ("TLS iperf3 up", "Mbit/s", "higher", ">= 1.0x"),
    "tls_down_mbps": ("TLS iperf3 down", "Mbit/s", "higher", ">= 1.0x"),
    "dtls_up_cpu_s_per_gb": ("client CPU/GB DTLS up", "s", "lower", "<= 0.7x"),
    "dtls_down_cpu_s_per_gb": ("client CPU/GB DTLS down", "s", "lower", "<= 0.7x"),
    "tls_up_cpu_s_per_gb": ("client CPU/GB TLS up", "s", "lower", "<= 0.7x"),
    "tls_down_cpu_s_per_gb": ("client CPU/GB TLS down", "s", "lower", "<= 0.7x"),
    "dtls_up_ocserv_cpu_s_per_gb": ("ocserv CPU/GB DTLS up", "s", "lower", ""),
    "dtls_down_ocserv_cpu_s_per_gb": ("ocserv CPU/GB DTLS down", "s", "lower", ""),
    "tls_up_ocserv_cpu_s_per_gb": ("ocserv CPU/GB TLS up", "s", "lower", ""),
    "tls_down_ocserv_cpu_s_per_gb": ("ocserv CPU/GB TLS down", "s", "lower", ""),
    "udp_up_max_pps": ("UDP up: max rate <1% loss", "pkt/s", "higher", ""),
    "udp_down_max_pps": ("UDP down: max rate <1% loss", "pkt/s", "higher", ""),
    "rtt_ms": ("ping RTT (DTLS)", "ms", "lower", ""),
    "added_rtt_ms": ("added RTT vs raw", "ms", "lower", "<= oc + 0.1"),
    "connect_s": ("connect → 1st ping", "s", "lower", "<= 0.3 s"),
    "rss_total_mb": ("RSS total", "MB", "lower", "<= 60 MB"),
    "pss_total_mb": ("PSS total (shared split)", "MB", "lower", ""),
    "rss_supervisor_mb": ("RSS supervisor", "MB", "lower", ""),
    "rss_helper_mb": ("RSS helper", "MB", "lower", ""),
    "rss_spawner_mb": ("RSS spawner", "MB", "lower", ""),
    "rss_worker_mb": ("RSS worker", "MB", "lower", ""),
    "failover_s": ("DTLS failover (UDP cut)", "s", "lower", ""),
    "back_s": ("back on DTLS", "s", "lower", ""),
    "recovery_worker_kill_s": ("recovery: worker SIGKILL", "s", "lower", ""),
    "recovery_tcp_reset_s": ("recovery: TCP reset", "s", "lower", ""),
    "recovery_server_crash_s": ("recovery: server crash", "s", "lower", ""),
}

# figures of one UDP rate, key suffix -> column heading of the packet-rate table
UDP_FIELDS: dict[str, tuple[str, int]] = {  # heading, digits
    "delivered_pps": ("delivered", 0),
    "loss_pct": ("loss%", 2),
    "lost_client_pct": ("client%", 2),
    "lost_server_pct": ("server%", 2),
    "lost_receiver_pct": ("recv%", 2),
    "cpu_pct": ("CPU%", 0),
    "cpu_us_per_pkt": ("µs/pkt", 1),
    "ocserv_cpu_us_per_pkt": ("ocserv µs", 1),
}


def udp_key(direction: str, rate: int, name: str) -> str:
    """Result key of one figure of one offered rate, e.g. ``udp_up_20000_loss_pct``."""
    return f"udp_{direction}_{rate}_{name}"


# ---------------------------------------------------------------------- /proc helpers


def tree(pid: int | None) -> list[int]:
    """``pid`` and all its descendants ([] for None)."""
    return [] if pid is None else [pid, *descendants(pid)]


def client_pids(client: VpnClient) -> dict[str, int]:
    """Role → pid of every long-lived process of the client."""
    assert client.proc is not None
    root = client.proc.pid
    if client.kind == "openconnect":
        return {"openconnect": root}
    pids = {"supervisor": root}
    for pid in descendants(root):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
        except FileNotFoundError:
            continue
        if b"worker" in title:
            pids["worker"] = pid
        elif b"helper" in title:
            pids["helper"] = pid
        elif b"spawner" in title:
            pids["spawner"] = pid
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


def rss_mb(pid: int) -> float:
    """VmRSS: every resident page mapped, shared ones (python, libcrypto) counted in full."""
    return _kb_field(f"/proc/{pid}/status", "VmRSS") / 1024


def pss_mb(pid: int) -> float:
    """Pss: shared pages divided among the processes that map them."""
    return _kb_field(f"/proc/{pid}/smaps_rollup", "Pss") / 1024


def _kb_field(path: str, name: str) -> float:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return 0.0
    m = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0.0


def threads(pids: list[int]) -> Iterator[int]:
    """Every thread id of ``pids`` (affinity is a property of each thread)."""
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                yield int(task.name)


def pin(pids: list[int], cpu: int) -> None:
    """Restrict every thread of ``pids`` to ``cpu``; what they start later inherits it."""
    for tid in threads(pids):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, {cpu})


def cpus_allowed(pids: list[int]) -> set[str]:
    """The Cpus_allowed_list values (e.g. "0", "0-1") seen on the threads of ``pids``."""
    seen: set[str] = set()
    for tid in threads(pids):
        try:
            status = Path(f"/proc/{tid}/status").read_text()
        except FileNotFoundError:
            continue
        m = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)
        if m:
            seen.add(m.group(1))
    return seen


# ---------------------------------------------------------------------- measurements


def ping_until_answered(lab: Lab, started: float, limit: float = 30.0) -> float:
    """Seconds from ``started`` to the first ping answered through the tunnel."""
    if recovery.wait_ping(lab, limit - (time.monotonic() - started)) is None:
        raise AssertionError(f"no ping answered through the tunnel within {limit} s")
    return time.monotonic() - started


def ping_avg_ms(lab: Lab, target: str, count: int) -> float:
    out = lab.run_in(lab.client_ns, "ping", "-q", "-n", "-c", str(count), "-i", "0.02",
                     "-W", "1", target, timeout=count + 10).stdout.decode()  # fmt: skip
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert m is not None, out
    return float(m.group(1))


def run_iperf3(
    lab: Lab, prefix: tuple[str, ...], *args: str, seconds: float, timeout: float | None = None
) -> tuple[dict[str, Any], float]:
    """One ``iperf3 -c`` run to the target from the client namespace (tests/lab.py
    Lab.iperf): its JSON report, and how long the run took."""
    return lab.iperf(*args, seconds=seconds, prefix=prefix, timeout=timeout)


@dataclass(frozen=True)
class Side:
    """The processes whose CPU time is counted: the client's and ocserv's."""

    client: list[int]
    ocserv: list[int]

    def cpu(self) -> tuple[float, float]:
        return cpu_seconds(self.client), cpu_seconds(self.ocserv)


def iperf_tcp(
    lab: Lab, side: Side, prefix: tuple[str, ...], *, reverse: bool, seconds: float
) -> tuple[float, float, float]:
    """(Mbit/s, client CPU s per GB, ocserv CPU s per GB) of one iperf3 TCP run."""
    client0, ocserv0 = side.cpu()
    result, _ = run_iperf3(lab, prefix, *(["-R"] if reverse else []), seconds=seconds)
    client1, ocserv1 = side.cpu()
    end = result["end"]["sum_received"]
    gigabytes = max(1e-9, float(end["bytes"]) / 1e9)
    mbps = float(end["bits_per_second"]) / 1e6
    return mbps, (client1 - client0) / gigabytes, (ocserv1 - ocserv0) / gigabytes


def netns_udp_errors(pid: int | None) -> int:
    """RcvbufErrors of UDP (datagrams dropped for a full socket buffer) in the network
    namespace of ``pid`` (/proc/<pid>/net is that namespace's)."""
    if pid is None:
        return 0
    rows = [line.split()[1:] for line in _read(f"/proc/{pid}/net/snmp") if line.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"]) if len(rows) == 2 else 0


def netns_devices(pid: int | None) -> dict[str, list[int]]:
    """Device name → the 16 counters of /proc/<pid>/net/dev (rx: bytes packets errs
    drop …, then tx: bytes packets errs drop …) in the namespace of ``pid``."""
    out: dict[str, list[int]] = {}
    for line in _read(f"/proc/{pid}/net/dev")[2:] if pid is not None else []:
        name, _, counters = line.partition(":")
        out[name.strip()] = [int(v) for v in counters.split()]
    return out


def udp_socket_drops(pid: int | None, peer: str, port: int) -> int:
    """Drops of the UDP sockets connected to ``peer``:``port`` in the namespace of ``pid``."""
    a, b, c, d = (int(x) for x in peer.split("."))
    remote = f"{d:02X}{c:02X}{b:02X}{a:02X}:{port:04X}"  # /proc/net/udp's little-endian form
    drops = 0
    for line in _read(f"/proc/{pid}/net/udp")[1:] if pid is not None else []:
        fields = line.split()
        if len(fields) >= 13 and fields[2] == remote:
            drops += int(fields[12])
    return drops


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


RX_PACKETS, TX_PACKETS, TX_DROP = 1, 9, 11  # columns of /proc/net/dev


@dataclass(frozen=True)
class PacketCounters:
    """What is read before and after a UDP run: CPU seconds, the packets that went
    through the client's tun, and where datagrams were dropped."""

    client_cpu: float
    ocserv_cpu: float
    tun_rx: int  # packets the client wrote to its tun (download)
    tun_tx: int  # packets the client read from its tun (upload)
    tun_tx_dropped: int  # the tun's queue was full: the client did not read them in time
    dtls_socket_drops: int  # the client's UDP socket to the server was full
    client_rcvbuf_errors: int  # full UDP sockets in the client namespace (DTLS, iperf3 -c)
    server_drops: int  # ocserv's: its UDP socket full, or its tuns' queues
    target_rcvbuf_errors: int  # iperf3 -s's socket full


def packet_counters(lab: Lab, side: Side, client_root: int, tun: str) -> PacketCounters:
    client_cpu, ocserv_cpu = side.cpu()
    ocserv, target = lab.ocserv_pid, lab.iperf_pid
    tun_counters = netns_devices(client_root).get(tun, [0] * 16)
    ocserv_tuns = [c for name, c in netns_devices(ocserv).items() if name.startswith("vpns")]
    return PacketCounters(
        client_cpu=client_cpu,
        ocserv_cpu=ocserv_cpu,
        tun_rx=tun_counters[RX_PACKETS],
        tun_tx=tun_counters[TX_PACKETS],
        tun_tx_dropped=tun_counters[TX_DROP],
        dtls_socket_drops=udp_socket_drops(client_root, lab.server_ip, lab.port),
        client_rcvbuf_errors=netns_udp_errors(client_root),
        server_drops=netns_udp_errors(ocserv) + sum(c[TX_DROP] for c in ocserv_tuns),
        target_rcvbuf_errors=netns_udp_errors(target),
    )


def udp_rate(
    lab: Lab,
    side: Side,
    client_root: int,
    prefix: tuple[str, ...],
    rate: int,
    *,
    reverse: bool,
    seconds: float,
) -> dict[str, float]:
    """Figures of one iperf3 UDP run at ``rate`` datagrams per second offered. A run
    that gives no report within ``seconds`` + 10 s counts as 100% loss (``timed_out``)."""
    tun = lab.client_tun()
    assert tun is not None, "no tun"
    before = packet_counters(lab, side, client_root, tun["ifname"])
    result: dict[str, Any] | None = None
    try:
        result, wall = run_iperf3(
            lab, prefix, "-u", "-l", str(UDP_PAYLOAD), "-b", str(rate * UDP_PAYLOAD * 8),
            *(["-R"] if reverse else []), seconds=seconds, timeout=seconds + 10,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        wall = seconds + 10
    after = packet_counters(lab, side, client_root, tun["ifname"])
    client_cpu = after.client_cpu - before.client_cpu
    # packets that went through the client: read from its tun going up, written to it
    # going down
    through = after.tun_rx - before.tun_rx if reverse else after.tun_tx - before.tun_tx
    r = {
        # over the whole iperf3 run, its ~0.1 s of set-up included
        "cpu_pct": 100.0 * client_cpu / wall,
        "cpu_us_per_pkt": 1e6 * client_cpu / max(1, through),
    }
    if result is None:
        return {**r, "delivered_pps": 0.0, "loss_pct": 100.0, "timed_out": 1.0}
    sent, received = result["end"]["sum_sent"], result["end"]["sum_received"]
    # the receiver's "packets" is the highest sequence number it saw, lost ones included
    sent_packets = max(1, int(sent["packets"]))
    delivered = int(received["packets"]) - int(received["lost_packets"])
    dtls_drops = after.dtls_socket_drops - before.dtls_socket_drops
    at_client = after.tun_tx_dropped - before.tun_tx_dropped + dtls_drops
    at_server = after.server_drops - before.server_drops
    if reverse:  # the receiver is iperf3 -c, beside the client
        at_receiver = max(0, after.client_rcvbuf_errors - before.client_rcvbuf_errors - dtls_drops)
    else:
        at_receiver = after.target_rcvbuf_errors - before.target_rcvbuf_errors
    return {
        **r,
        "sent_pps": sent_packets / max(1e-9, float(sent["seconds"])),
        "delivered_pps": delivered / max(1e-9, float(received["seconds"])),
        # what never reached the receiver while it listened; iperf3's own figure counts
        # only gaps before the highest sequence number seen, so a client still working
        # through a backlog when the test ends looked almost lossless
        "loss_pct": 100.0 * max(0, sent_packets - delivered) / sent_packets,
        "iperf3_lost_pct": float(received["lost_percent"]),
        "lost_client_pct": 100.0 * at_client / sent_packets,
        "lost_server_pct": 100.0 * at_server / sent_packets,
        "lost_receiver_pct": 100.0 * at_receiver / sent_packets,
        "ocserv_cpu_us_per_pkt": 1e6 * (after.ocserv_cpu - before.ocserv_cpu) / max(1, delivered),
    }


SEPCONNECT_EXTRA: list[str] = []  # --sepconnect-arg: e.g. --no-tun-offload, for A/B runs


def start(lab: Lab, kind: str, *args: str, cpu: int | None = None) -> tuple[VpnClient, float]:
    """Start a client (on ``cpu`` only, if given); returns it and its connect time
    (start → first answered ping)."""
    if kind == "sepconnect":
        args = (*args, *SEPCONNECT_EXTRA)
    t0 = time.monotonic()
    client = VpnClient(lab, kind, args, cpu=cpu).start()
    try:
        connect = ping_until_answered(lab, t0)
    except AssertionError:
        client.stop()
        raise AssertionError(f"{kind} never passed traffic:\n{client.text}") from None
    return client, connect


def stop(lab: Lab, client: VpnClient) -> None:
    client.stop()
    lab.wait_for("the tun to go", lambda: True if lab.client_tun() is None else None, 15)


@dataclass
class Bench:
    """One lab and the settings of the throughput and packet-rate runs."""

    lab: Lab
    seconds: float
    pings: int
    udp_rates: tuple[int, ...]
    udp_seconds: float
    pinned: bool
    # Cpus_allowed_list values seen, by process group ("sepconnect", "ocserv", ...)
    affinity: dict[str, set[str]] = field(default_factory=dict)

    @property
    def client_cpu(self) -> int | None:
        return CLIENT_CPU if self.pinned else None

    @property
    def prefix(self) -> tuple[str, ...]:
        """What runs iperf3 -c on the client's CPU."""
        return ("taskset", "-c", str(CLIENT_CPU)) if self.pinned else ()

    def server_pids(self) -> dict[str, list[int]]:
        return {"ocserv": tree(self.lab.ocserv_pid), "iperf3 -s": tree(self.lab.iperf_pid)}

    def pin_server(self) -> None:
        """ocserv and iperf3 -s on the server's CPU, again before every run: ocserv may
        have been restarted (bench/recovery.py's server crash)."""
        if self.pinned:
            for pids in self.server_pids().values():
                pin(pids, SERVER_CPU)

    def check_affinity(self, client: VpnClient) -> None:
        """Record where every process of the run may run; with --pin, insist that the
        client side is on CPU 0 only and the server side on CPU 1 only (a worker that
        sepconnect started during the run is in the client's tree too)."""
        assert client.proc is not None
        groups = {client.kind: tree(client.proc.pid), **self.server_pids()}
        for name, pids in groups.items():
            seen = cpus_allowed(pids)
            self.affinity.setdefault(name, set()).update(seen)
            want = str(CLIENT_CPU if name == client.kind else SERVER_CPU)
            if self.pinned and seen != {want}:
                raise AssertionError(f"--pin: {name} may run on CPUs {sorted(seen)}, not {want}")

    def side(self, client: VpnClient) -> Side:
        return Side(list(client_pids(client).values()), tree(self.lab.ocserv_pid))

    def run_dtls(self, kind: str) -> dict[str, float]:
        lab = self.lab
        self.pin_server()
        client, connect = start(lab, kind, cpu=self.client_cpu)
        try:
            client.wait_for_line(DTLS_UP[kind], timeout=30)
            time.sleep(0.5)
            roles = client_pids(client)
            pids = list(roles.values())
            side = self.side(client)
            raw = ping_avg_ms(lab, lab.server_ip, self.pings)
            rtt = ping_avg_ms(lab, lab.target_ip, self.pings)
            r: dict[str, float] = {
                "connect_s": connect,
                "rtt_ms": rtt,
                "raw_rtt_ms": raw,
                "added_rtt_ms": rtt - raw,
            }
            for direction in DIRECTIONS:
                mbps, cpu, ocserv_cpu = iperf_tcp(
                    lab, side, self.prefix, reverse=direction == "down", seconds=self.seconds
                )
                r[f"dtls_{direction}_mbps"] = mbps
                r[f"dtls_{direction}_cpu_s_per_gb"] = cpu
                r[f"dtls_{direction}_ocserv_cpu_s_per_gb"] = ocserv_cpu
            for role, pid in roles.items():
                if kind == "sepconnect":
                    r[f"rss_{role}_mb"] = rss_mb(pid)
            r["rss_total_mb"] = sum(rss_mb(pid) for pid in pids)
            r["pss_total_mb"] = sum(pss_mb(pid) for pid in pids)
            r.update(self.packet_rates(client, side))
            self.check_affinity(client)
            return r
        finally:
            stop(lab, client)

    def packet_rates(self, client: VpnClient, side: Side) -> dict[str, float]:
        """The UDP ladder, up then down, lowest rate first. After a rate that timed out
        the higher ones are left out, and the ladder ends if the tunnel does not pass a
        ping again within 30 s."""
        assert client.proc is not None
        r: dict[str, float] = {}
        for direction in DIRECTIONS if self.udp_rates else ():
            carried, timed_out = 0, False
            for rate in self.udp_rates:
                figures = udp_rate(
                    self.lab, side, client.proc.pid, self.prefix, rate,
                    reverse=direction == "down", seconds=self.udp_seconds,
                )  # fmt: skip
                for name, value in figures.items():
                    r[udp_key(direction, rate, name)] = value
                if figures["loss_pct"] < UDP_LOSS_LIMIT:
                    carried = max(carried, rate)
                timed_out = "timed_out" in figures
                if timed_out:
                    print(f"  {client.kind}: UDP {direction} at {rate} datagrams/s gave no "
                          "report in time", file=sys.stderr, flush=True)  # fmt: skip
                    break
            r[f"udp_{direction}_max_pps"] = carried
            if timed_out and recovery.wait_ping(self.lab, 30.0) is None:
                break
        return r

    def run_tls(self, kind: str) -> dict[str, float]:
        lab = self.lab
        self.pin_server()
        client, _ = start(lab, kind, "--no-dtls", cpu=self.client_cpu)
        try:
            side = self.side(client)
            r: dict[str, float] = {}
            for direction in DIRECTIONS:
                mbps, cpu, ocserv_cpu = iperf_tcp(
                    lab, side, self.prefix, reverse=direction == "down", seconds=self.seconds
                )
                r[f"tls_{direction}_mbps"] = mbps
                r[f"tls_{direction}_cpu_s_per_gb"] = cpu
                r[f"tls_{direction}_ocserv_cpu_s_per_gb"] = ocserv_cpu
            self.check_affinity(client)
            return r
        finally:
            stop(lab, client)


def run_failover(lab: Lab, udp: UdpFilter, kind: str, blocked: float) -> dict[str, float]:
    client, _ = start(lab, kind)
    try:
        client.wait_for_line(DTLS_UP[kind], timeout=30)
        time.sleep(1)
        f = measure_failover(lab, udp, blocked_for=blocked, return_wait=blocked + 30)
    finally:
        stop(lab, client)
    r = {"failover_s": f.failover}
    if f.back is not None:
        r["back_s"] = f.back
    return r


def run_recovery(lab: Lab, kind: str) -> dict[str, float]:
    names = {
        "worker SIGKILL": "recovery_worker_kill_s",
        "TCP reset": "recovery_tcp_reset_s",
        "server crash": "recovery_server_crash_s",
    }
    r: dict[str, float] = {}
    for fault, key in names.items():
        seconds = recovery.measure(lab, kind, fault).get("seconds")
        if seconds is not None:
            r[key] = seconds
    return r


# ---------------------------------------------------------------------- report


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def median(results: dict[str, dict[str, list[float]]], kind: str, key: str) -> float | None:
    s = summary(results[kind].get(key, []))
    return None if s is None else s["median"]


def fmt_cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    digits = 0 if abs(med) >= 100 else 2 if abs(med) < 10 else 1
    if lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def table(results: dict[str, dict[str, list[float]]], meta: dict[str, Any]) -> str:
    pinned = (
        f"client on CPU {CLIENT_CPU}, ocserv on CPU {SERVER_CPU}" if meta["pin"] else "unpinned"
    )
    lines = [
        f"sepconnect vs openconnect — ocserv {meta['ocserv']}, {meta['repeat']} run(s), "
        f"iperf3 {meta['seconds']:g} s, {meta['cpus']} CPUs, {pinned}; median [range]; "
        "ratio = sepconnect/openconnect",
        f"{'metric':<28}{'unit':>7}  {'sepconnect':>24}  {'openconnect':>24}  {'ratio':>6}  target",
    ]
    for key, (label, unit, _, target) in METRICS.items():
        sep = summary(results["sepconnect"].get(key, []))
        oc = summary(results["openconnect"].get(key, []))
        if sep is None and oc is None:
            continue
        ratio = (
            f"{sep['median'] / oc['median']:.2f}"
            if sep is not None and oc is not None and oc["median"] not in (0, 0.0)
            else "-"
        )
        lines.append(
            f"{label:<28}{unit:>7}  {fmt_cell(sep):>24}  {fmt_cell(oc):>24}  {ratio:>6}  {target}"
        )
    return "\n".join(lines)


def has_packet_rates(results: dict[str, dict[str, list[float]]], rates: list[int]) -> bool:
    return any(
        udp_key(d, r, "cpu_pct") in results[k] for k in KINDS for d in DIRECTIONS for r in rates
    )


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def packet_table(results: dict[str, dict[str, list[float]]], meta: dict[str, Any]) -> str:
    """Medians of every offered rate, one line per client."""
    rates: list[int] = meta["udp_rates"]
    if not has_packet_rates(results, rates):
        return ""
    lines = [
        f"UDP over DTLS, {UDP_PAYLOAD}-byte datagrams, {meta['udp_seconds']:g} s per rate; "
        "median. delivered: datagrams/s at the receiver; loss%: sent but not received; "
        "dropped at the client (its tun queue, its DTLS socket), at ocserv (its socket, its "
        "tun queue), at the receiving iperf3's socket: % of sent; CPU%: the client's, of "
        "one CPU; µs/pkt: client CPU per packet through its tun; ocserv µs: ocserv CPU per "
        "delivered datagram",
        f"{'dir':<5}{'offered':>8}  {'client':<12}"
        + "".join(f"{heading:>10}" for heading, _ in UDP_FIELDS.values()),
    ]
    for direction in DIRECTIONS:
        for rate in rates:
            for kind in KINDS:
                if udp_key(direction, rate, "cpu_pct") not in results[kind]:
                    continue
                cells = "".join(
                    f"{_num(median(results, kind, udp_key(direction, rate, name)), digits):>10}"
                    for name, (_, digits) in UDP_FIELDS.items()
                )
                timeouts = len(results[kind].get(udp_key(direction, rate, "timed_out"), []))
                note = f"  ({timeouts} run(s) timed out: 100% loss)" if timeouts else ""
                lines.append(f"{direction:<5}{rate:>8}  {kind:<12}{cells}{note}")
    return "\n".join(lines)


def chart(results: dict[str, dict[str, list[float]]], meta: dict[str, Any], path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install 'sepconnect[bench]'): no chart"
    groups = [
        ("Throughput (Mbit/s, higher is better)",
         ["dtls_up_mbps", "dtls_down_mbps", "tls_up_mbps", "tls_down_mbps"]),
        ("Client CPU s per GB (lower is better)",
         ["dtls_up_cpu_s_per_gb", "dtls_down_cpu_s_per_gb", "tls_up_cpu_s_per_gb",
          "tls_down_cpu_s_per_gb"]),
        ("ocserv CPU s per GB (lower is better)",
         ["dtls_up_ocserv_cpu_s_per_gb", "dtls_down_ocserv_cpu_s_per_gb",
          "tls_up_ocserv_cpu_s_per_gb", "tls_down_ocserv_cpu_s_per_gb"]),
        ("Latency (ms) and connect (s)", ["rtt_ms", "added_rtt_ms", "connect_s"]),
        ("Memory (MB)", ["rss_total_mb", "pss_total_mb"]),
    ]  # fmt: skip
    rates: list[int] = meta["udp_rates"]
    udp = has_packet_rates(results, rates)
    fig = plt.figure(figsize=(22, 10 if udp else 5))
    grid = fig.add_gridspec(2 if udp else 1, 2 * len(groups))
    for n, (title, keys) in enumerate(groups):
        ax = fig.add_subplot(grid[0, 2 * n : 2 * n + 2])
        x = range(len(keys))
        for i, kind in enumerate(KINDS):
            meds, errs_lo, errs_hi = [], [], []
            for key in keys:
                s = summary(results[kind].get(key, []))
                m = s["median"] if s else 0.0
                meds.append(m)
                errs_lo.append(m - (s["min"] if s else 0.0))
                errs_hi.append((s["max"] if s else 0.0) - m)
            ax.bar([v + (i - 0.5) * 0.38 for v in x], meds, 0.38, label=kind,
                   yerr=[errs_lo, errs_hi], capsize=3)  # fmt: skip
        ax.set_xticks(list(x))
        ax.set_xticklabels([METRICS[k][0] for k in keys], rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    if udp:
        half = len(groups)
        plots = [
            ("cpu_pct", "Client CPU (% of one CPU) vs offered load, UDP 100 B", "client CPU %"),
            ("delivered_pps", "Delivered vs offered, UDP 100 B", "delivered datagrams/s"),
        ]
        for n, (name, title, ylabel) in enumerate(plots):
            ax = fig.add_subplot(grid[1, n * half : (n + 1) * half])
            for colour, kind in zip(("C0", "C1"), KINDS, strict=True):  # as in the bars
                for direction, style in (("up", "-o"), ("down", "--s")):
                    points = [
                        (r, median(results, kind, udp_key(direction, r, name))) for r in rates
                    ]
                    xs = [r for r, v in points if v is not None]
                    ys = [v for _, v in points if v is not None]
                    if xs:
                        ax.plot(xs, ys, style, color=colour, label=f"{kind} {direction}")
            if name == "delivered_pps":
                ax.plot(rates, rates, ":", color="grey", label="offered")
            ax.set_xlabel("offered datagrams/s")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    pinned = f", client on CPU {CLIENT_CPU}, ocserv on CPU {SERVER_CPU}" if meta["pin"] else ""
    fig.suptitle(f"sepconnect vs openconnect — {meta['repeat']} run(s){pinned}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return f"chart written to {path}"


def ocserv_version() -> str:
    r = subprocess.run(["ocserv", "--version"], capture_output=True, check=False)
    m = re.search(rb"(\d+\.\d+\.\d+)", r.stdout + r.stderr)
    return m.group(1).decode() if m else "?"


def rates_arg(text: str) -> tuple[int, ...]:
    """``--udp-rates``: comma-separated datagrams per second, '' for none."""
    try:
        rates = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if any(not 1 <= rate <= 1_000_000 for rate in rates):
        raise argparse.ArgumentTypeError("each rate must be 1..1000000 datagrams per second")
    return rates


def pin_refused() -> str | None:
    """Why --pin cannot be honoured here, or None."""
    usable = os.sched_getaffinity(0)
    if not {CLIENT_CPU, SERVER_CPU} <= usable or shutil.which("taskset") is None:
        return (f"--pin needs CPUs {CLIENT_CPU} and {SERVER_CPU} (this process may use "
                f"{sorted(usable)}) and taskset (util-linux)")  # fmt: skip
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip failover and recovery")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration (<= 10)")
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--blocked", type=float, default=20.0, help="seconds UDP stays cut")
    parser.add_argument("--clients", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument(
        "--pin",
        action="store_true",
        help=f"client side on CPU {CLIENT_CPU}, ocserv and iperf3 -s on CPU {SERVER_CPU}",
    )
    parser.add_argument(
        "--udp-rates",
        type=rates_arg,
        default=UDP_RATES,
        metavar="PPS,...",
        help="offered rates of the UDP packet-rate runs ('' skips them; default "
        + ",".join(map(str, UDP_RATES))
        + ")",
    )
    parser.add_argument(
        "--udp-seconds", type=float, default=3.0, help="duration of each UDP rate (<= 10)"
    )
    parser.add_argument(
        "--sepconnect-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to every sepconnect run (repeatable): --sepconnect-arg=--no-tun-offload",
    )
    parser.add_argument("--json", metavar="FILE", default="bench-compare.json")
    parser.add_argument("--png", metavar="FILE", default="bench-compare.png")
    args = parser.parse_args()
    SEPCONNECT_EXTRA.extend(args.sepconnect_arg)
    if os.geteuid() != 0:
        print("run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    if args.pin and (refused := pin_refused()):
        print(refused, file=sys.stderr)
        return 2
    seconds = min(args.seconds, 10.0)
    results: dict[str, dict[str, list[float]]] = {k: {} for k in KINDS}

    def record(kind: str, step: Callable[[], dict[str, float]]) -> None:
        for key, value in step().items():
            results[kind].setdefault(key, []).append(value)

    with Lab(OcservOptions(dtls=True, dpd=10)) as lab:
        bench = Bench(
            lab,
            seconds=seconds,
            pings=args.pings,
            udp_rates=args.udp_rates,
            udp_seconds=min(args.udp_seconds, 10.0),
            pinned=args.pin,
        )
        for rep in range(args.repeat):
            order = args.clients if rep % 2 == 0 else list(reversed(args.clients))
            for kind in order:
                print(f"run {rep + 1}/{args.repeat}: {kind} ...", file=sys.stderr, flush=True)
                record(kind, lambda k=kind: bench.run_dtls(k))
                record(kind, lambda k=kind: bench.run_tls(k))
        if not args.quick:
            udp = UdpFilter(lab)
            for kind in args.clients:
                print(f"failover and recovery: {kind} ...", file=sys.stderr, flush=True)
                record(kind, lambda k=kind: run_failover(lab, udp, k, args.blocked))
                record(kind, lambda k=kind: run_recovery(lab, k))
    meta = {
        "ocserv": ocserv_version(),
        "repeat": args.repeat,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "pin": {"client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU} if args.pin else None,
        # Cpus_allowed_list values seen on every thread, read back after every run
        "affinity_seen": {name: sorted(seen) for name, seen in bench.affinity.items()},
        "udp_rates": list(bench.udp_rates),
        "udp_seconds": bench.udp_seconds,
        "udp_payload_bytes": UDP_PAYLOAD,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = table(results, meta)
    packets = packet_table(results, meta)
    if packets:
        text += "\n\n" + packets
    print(text)
    doc = {
        "meta": meta,
        "raw": results,
        "summary": {
            kind: {key: summary(vals) for key, vals in by.items()} for kind, by in results.items()
        },
        "table": text,
    }
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results written to {args.json}", file=sys.stderr)
    if args.png:
        print(chart(results, meta, args.png), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
