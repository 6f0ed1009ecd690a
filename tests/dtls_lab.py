"""Lab helpers for the DTLS data channel, shared by tests/integration/test_dtls.py and
bench/dtls_failover.py: run a VPN client (sepconnect or openconnect) in the lab's
client namespace, count and cut UDP with nftables *inside that namespace only*,
measure failover/return times and throughput.

Nothing here touches the host namespace: every nft/ip/ping/iperf3 command runs
through ``ip netns exec <lab namespace>``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import Lab

__all__ = [
    "SEPCONNECT",
    "Failover",
    "UdpFilter",
    "VpnClient",
    "iperf_mbps",
    "measure_failover",
]

VENV = os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv")
SEPCONNECT = f"{VENV}/bin/sepconnect"
_TABLE = "sepconnect_dtls_lab"


@dataclass
class VpnClient:
    """One client process in the lab's client namespace; stderr lines are timestamped
    (time.time()) as they arrive. With ``cpu``, the client is started under ``taskset``:
    it and every process or thread it ever creates run on that CPU only."""

    lab: Lab
    kind: str = "sepconnect"  # or "openconnect"
    args: tuple[str, ...] = ()
    cpu: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self) -> VpnClient:
        lab = self.lab
        # taskset sets the affinity and execs the client: the pid stays the client's
        prefix = () if self.cpu is None else ("taskset", "-c", str(self.cpu))
        if self.kind == "sepconnect":
            audit = str(Path(lab.workdir, f"audit-{time.monotonic_ns()}.jsonl"))
            argv = [
                SEPCONNECT, "connect", "--passwd-on-stdin", "--user", "test",
                "--servercert", lab.server_cert_pin, "--audit-log", audit, "--dns-backend", "none",
                "--session-log", audit.replace("audit-", "session-"),
                "--state-dir", str(Path(lab.workdir, "helper-state")),
                # a session of its own: other sessions may run at the same time
                "--control-socket", str(Path(lab.workdir, f"ctl-{time.monotonic_ns()}", "sock")),
                "--state-dir", str(Path(lab.workdir, f"state-{time.monotonic_ns()}")),
                *self.args, lab.url,
            ]  # fmt: skip
            self.proc = lab.popen_in(
                lab.client_ns, *prefix, *argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{lab.users['test']}\n".encode())
            self.proc.stdin.close()
            self.proc.stdin = None
        else:
            self.proc = lab.openconnect(
                "test", *self.args, prefix=prefix, stderr=subprocess.PIPE, stdout=subprocess.PIPE
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        streams = [s for s in (self.proc.stderr, self.proc.stdout) if s is not None]
        threads = [threading.Thread(target=self._read_one, args=(s,), daemon=True) for s in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _read_one(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first_line_after(self, pattern: str, after: float) -> float | None:
        rx = re.compile(pattern)
        for ts, line in list(self.lines):
            if ts >= after and rx.search(line):
                return ts
        return None

    def wait_for_line(self, pattern: str, timeout: float, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ts = self.first_line_after(pattern, after)
            if ts is not None:
                return ts
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"{self.kind} exited {self.proc.returncode}:\n{self.text}")
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} from {self.kind} within {timeout} s:\n{self.text}")

    def wait_tun(self, timeout: float = 20) -> None:
        def probe() -> bool | None:
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"{self.kind} exited {self.proc.returncode}:\n{self.text}")
            tun = self.lab.client_tun()
            return True if tun is not None and "UP" in tun.get("flags", []) else None

        self.lab.wait_for("the tunnel", probe, timeout=timeout)

    def stop(self) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return proc.returncode


class UdpFilter:
    """nftables counters for UDP between the client and the server's DTLS port (in the
    client namespace), and a switch that loses that UDP *in the network*, so neither
    end gets a local error: the server namespace drops (or rejects with ICMP port
    unreachable, as a firewall would) what the client sends, the client namespace
    drops what the server sends. The inbound counter sits after the drop."""

    def __init__(self, lab: Lab, port: int = 443) -> None:
        self.lab = lab
        self.port = port
        server = lab.server_ip
        self._nft(
            lab.client_ns,
            f"""table inet {_TABLE} {{
  chain out {{ type filter hook output priority 0; ip daddr {server} udp dport {port} counter; }}
  chain block_in {{ type filter hook input priority 10; }}
  chain in {{ type filter hook input priority 20; ip saddr {server} udp sport {port} counter; }}
}}
""",
        )
        self._nft(
            lab.server_ns,
            f"""table inet {_TABLE} {{
  chain block_in {{ type filter hook input priority 10; }}
}}
""",
        )

    def _nft(self, ns: str, script: str) -> None:
        self.lab.run_in(ns, "nft", "-f", "-", input=script.encode())

    def block(self, how: str = "drop") -> None:
        """Lose UDP both ways; *how* = "drop" (silently) or "reject" (ICMP to the client)."""
        server, port = self.lab.server_ip, self.port
        verdict = "reject with icmp type port-unreachable" if how == "reject" else "drop"
        self._nft(
            self.lab.server_ns,
            f"add rule inet {_TABLE} block_in ip daddr {server} udp dport {port} {verdict}\n",
        )
        self._nft(
            self.lab.client_ns,
            f"add rule inet {_TABLE} block_in ip saddr {server} udp sport {port} drop\n",
        )

    def unblock(self) -> None:
        for ns in (self.lab.server_ns, self.lab.client_ns):
            self._nft(ns, f"flush chain inet {_TABLE} block_in\n")

    def counters(self) -> dict[str, tuple[int, int]]:
        """{"out": (packets, bytes), "in": (packets, bytes)} seen by the client."""
        out = self.lab.run_in(self.lab.client_ns, "nft", "-j", "list", "table", "inet", _TABLE)
        result: dict[str, tuple[int, int]] = {}
        for item in json.loads(out.stdout)["nftables"]:
            rule = item.get("rule")
            if not rule or rule["chain"] not in ("out", "in"):
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    c = expr["counter"]
                    result[rule["chain"]] = (c["packets"], c["bytes"])
        return result


@dataclass(frozen=True)
class Failover:
    failover: float  # UDP cut -> pings answered again (over TLS)
    back: float | None  # UDP restored -> bulk traffic over UDP again (None: not within wait)
    replies: int


def _ping_replies(text: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", text, re.M)]


def measure_failover(
    lab: Lab,
    udp: UdpFilter,
    *,
    how: str = "drop",
    settle: float = 2.0,
    blocked_for: float = 6.0,
    return_wait: float = 10.0,
) -> Failover:
    """Ping the target at 20 Hz (1000-byte payload) through the tunnel, cut UDP, then
    restore it. *failover*: from the cut to the first ping answered after it; *back*:
    from the restore to the first 100 ms window with ≥ 2 kB arriving over UDP (ping
    answers, not DPD probes)."""
    total = settle + blocked_for + return_wait + 1
    log = Path(lab.workdir, f"ping-{time.monotonic_ns()}.txt")
    with open(log, "wb") as out_file:  # a file, not a pipe: ping must never block on output
        ping = lab.popen_in(
            lab.client_ns, "ping", "-D", "-n", "-i", "0.05", "-s", "1000", "-W", "1",
            "-w", str(int(total) + 1), lab.target_ip,
            stdout=out_file, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    time.sleep(settle)
    cut = time.time()
    udp.block(how)
    time.sleep(blocked_for)
    restore = time.time()
    udp.unblock()
    back: float | None = None
    window: list[tuple[float, int]] = []
    deadline = time.monotonic() + return_wait
    while time.monotonic() < deadline:
        now = time.time()
        window.append((now, udp.counters()["in"][1]))
        window = [(t, b) for t, b in window if t >= now - 0.1]
        if back is None and window[-1][1] - window[0][1] >= 2000:
            back = now - restore
        time.sleep(0.02)
    ping.send_signal(signal.SIGINT)
    ping.wait(timeout=10)
    replies = _ping_replies(log.read_text(errors="replace"))
    # A reply within 20 ms of the cut was on its way before it (RTT here is < 1 ms):
    # counting it made a client that never failed over look instant.
    after = [t for t in replies if t > cut + 0.02]
    failover = (after[0] - cut) if after else float("inf")
    return Failover(failover=failover, back=back, replies=len(replies))


def iperf_mbps(lab: Lab, *, reverse: bool, seconds: int = 3) -> float:
    """iperf3 TCP throughput through the tunnel (client ns -> target), Mbit/s."""
    out = lab.run_in(
        lab.client_ns, "iperf3", "-c", lab.target_ip, "-t", str(seconds), "-J",
        "--connect-timeout", "3000", *(["-R"] if reverse else []),
        timeout=seconds + 30,
    )  # fmt: skip
    report = json.loads(out.stdout)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
