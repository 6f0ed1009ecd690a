"""Benchmark (not a test): sepconnect and openconnect side by side, from one run in the
lab, against the same ocserv (dpd = 10): how long traffic stalls when UDP is
blackholed, how long until data is back on UDP once it is restored, and DTLS
throughput up and down (iperf3).

    sudo /opt/sepconnect-venv/bin/python bench/dtls_failover.py [--blocked 60] [--seconds 5]

The functions are reusable (issue #6 grows a full benchmark): ``run_client`` starts a
client in the lab and waits for DTLS, ``measure`` does the failover/return and the
throughput measurements for one client. Everything runs in throwaway namespaces
(tests/lab.py); UDP is cut with nftables inside them only.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dtls_lab import UdpFilter, VpnClient, iperf_mbps, measure_failover  # noqa: E402

from lab import Lab, OcservOptions  # noqa: E402

# what each client prints once data goes over DTLS
DTLS_UP = {
    "sepconnect": r"data channel: DTLS",
    "openconnect": r"Established DTLS connection|DTLS connected",
}


@dataclass
class Result:
    client: str
    failover: float
    back: float | None
    up_mbps: float
    down_mbps: float
    udp_share: float  # of the bytes received during the throughput runs


def run_client(lab: Lab, kind: str, *args: str) -> VpnClient:
    client = VpnClient(lab, kind, args).start()
    client.wait_tun(timeout=30)
    client.wait_for_line(DTLS_UP[kind], timeout=30)
    time.sleep(1)
    return client


def measure(lab: Lab, udp: UdpFilter, kind: str, *, blocked: float, seconds: int) -> Result:
    client = run_client(lab, kind)
    try:
        before = udp.counters()["in"][1]
        up = iperf_mbps(lab, reverse=False, seconds=seconds)
        down = iperf_mbps(lab, reverse=True, seconds=seconds)
        udp_bytes = udp.counters()["in"][1] - before
        # roughly what came back: the download dominates
        share = min(1.0, udp_bytes / max(1.0, down * 1e6 / 8 * seconds))
        f = measure_failover(lab, udp, blocked_for=blocked, return_wait=blocked + 30)
    finally:
        client.stop()
    return Result(kind, f.failover, f.back, up, down, share)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocked", type=float, default=60.0, help="seconds UDP stays cut")
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration")
    parser.add_argument("--dpd", type=int, default=10, help="ocserv dpd")
    args = parser.parse_args()
    results = []
    with Lab(OcservOptions(dtls=True, dpd=args.dpd)) as lab:
        udp = UdpFilter(lab)
        for kind in ("sepconnect", "openconnect"):
            print(f"measuring {kind} ...", file=sys.stderr, flush=True)
            results.append(measure(lab, udp, kind, blocked=args.blocked, seconds=args.seconds))

    def fmt(v: float | None, unit: str) -> str:
        return "never" if v is None or v == float("inf") else f"{v:.2f} {unit}"

    print(
        f"\nDTLS failover and throughput, ocserv 1.1.6 (dpd {args.dpd}), UDP cut "
        f"{args.blocked:g} s, iperf3 {args.seconds} s\n"
    )
    print(f"{'':34}" + "".join(f"{r.client:>16}" for r in results))
    rows = [
        ("failover to TLS (UDP blackholed)", [fmt(r.failover, "s") for r in results]),
        ("back on DTLS after UDP returns", [fmt(r.back, "s") for r in results]),
        ("DTLS throughput up (Mbit/s)", [f"{r.up_mbps:.0f}" for r in results]),
        ("DTLS throughput down (Mbit/s)", [f"{r.down_mbps:.0f}" for r in results]),
        ("share received over UDP", [f"{r.udp_share:.0%}" for r in results]),
    ]
    for name, values in rows:
        print(f"{name:34}" + "".join(f"{v:>16}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
