"""Benchmark (not a test): connect time and memory of each process, next to openconnect.

    sudo /opt/sepconnect-venv/bin/python bench/startup.py [--repeat N]

One lab (bench/compare.py's: ocserv with DTLS). Each repetition starts both clients in
turn, the order alternating: connect time (process start → first ping answered through
the tunnel), then, once DTLS is up and the client idle for half a second, RSS and PSS
(/proc/PID/smaps_rollup) of each process. No iperf3 runs, so the figures are those of
an idle session (bench/compare.py reads them after its throughput runs, with the
buffers they grew). Prints medians and ranges.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from compare import DTLS_UP, KINDS, client_pids, pss_mb, rss_mb, start, stop

from lab import Lab, OcservOptions


def one(lab: Lab, kind: str) -> dict[str, float]:
    client, connect = start(lab, kind)
    try:
        client.wait_for_line(DTLS_UP[kind], timeout=30)
        time.sleep(0.5)
        r = {"connect_s": connect}
        roles = client_pids(client)
        for role, pid in roles.items():
            r[f"rss_{role}"] = rss_mb(pid)
            r[f"pss_{role}"] = pss_mb(pid)
        r["rss_total"] = sum(rss_mb(pid) for pid in roles.values())
        r["pss_total"] = sum(pss_mb(pid) for pid in roles.values())
        return r
    finally:
        stop(lab, client)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", nargs="*", default=list(KINDS), choices=KINDS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {k: {} for k in args.clients}
    with Lab(OcservOptions(dtls=True, dpd=10)) as lab:
        for rep in range(args.repeat):
            order = args.clients if rep % 2 == 0 else list(reversed(args.clients))
            for kind in order:
                for key, value in one(lab, kind).items():
                    results[kind].setdefault(key, []).append(value)
    for kind, by in results.items():
        print(kind)
        for key, values in by.items():
            unit = "s" if key.endswith("_s") else "MB"
            print(f"  {key:18} {statistics.median(values):7.3f} {unit}"
                  f"  ({min(values):.3f}–{max(values):.3f}, n={len(values)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
