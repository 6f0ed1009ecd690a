"""Benchmark (not a test): several sepconnect installations and openconnect, in turn, in
one lab: the A/B pairs of docs/performance.md ("Noise"), e.g. the data path with and
without the compiled accelerator.

    sudo python bench/compare_builds.py [--repeat 3] [--seconds 3] [--pin] VENV... [openconnect]

Each VENV is a virtualenv with sepconnect installed (``scripts/bootstrap.sh`` with
``SEPCONNECT_VENV=...``; ``SEPCONNECT_NO_ACCEL=1`` builds one without the accelerator);
``openconnect`` adds openconnect. Every repetition runs each of them through
bench/compare.py's DTLS and TLS runs (iperf3 up and down), the order reversed every
other repetition. Prints the medians [ranges] of client CPU per GB and throughput, and
each installation's CPU per GB as a ratio to openconnect's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (bench/compare.py)
import dtls_lab  # noqa: E402  (tests/dtls_lab.py)

from lab import Lab, OcservOptions  # noqa: E402

OPENCONNECT = "openconnect"
KEYS = [
    f"{channel}_{direction}_{figure}"
    for figure in ("cpu_s_per_gb", "mbps")
    for channel in ("dtls", "tls")
    for direction in ("up", "down")
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="iperf3 duration (<= 10)")
    parser.add_argument("--pin", action="store_true", help="as bench/compare.py --pin")
    parser.add_argument("clients", nargs="+", metavar="VENV|openconnect")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    if args.pin and (refused := compare.pin_refused()):
        print(refused, file=sys.stderr)
        return 2
    for client in args.clients:
        if client != OPENCONNECT and not Path(client, "bin", "sepconnect").exists():
            print(f"{client}: no bin/sepconnect there", file=sys.stderr)
            return 2
    results: dict[str, dict[str, list[float]]] = {c: {} for c in args.clients}
    with Lab(OcservOptions(dtls=True, dpd=10)) as lab:
        bench = compare.Bench(
            lab,
            seconds=min(args.seconds, 10.0),
            pings=5,
            udp_rates=(),
            udp_seconds=3.0,
            pinned=args.pin,
        )
        for rep in range(args.repeat):
            for client in args.clients if rep % 2 == 0 else args.clients[::-1]:
                print(f"run {rep + 1}/{args.repeat}: {client} ...", file=sys.stderr, flush=True)
                kind = OPENCONNECT if client == OPENCONNECT else "sepconnect"
                if kind == "sepconnect":
                    dtls_lab.SEPCONNECT = str(Path(client, "bin", "sepconnect"))
                figures = bench.run_dtls(kind)
                figures.update(bench.run_tls(kind))
                for key, value in figures.items():
                    results[client].setdefault(key, []).append(value)
    print(f"{'metric':24}" + "".join(f" {Path(c).name:>26}" for c in args.clients))
    for key in KEYS:
        cells = []
        for client in args.clients:
            values = results[client][key]
            cells.append(f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]")
        print(f"{key:24}" + "".join(f" {cell:>26}" for cell in cells))
    if OPENCONNECT in args.clients:
        reference = results[OPENCONNECT]
        for client in args.clients:
            if client == OPENCONNECT:
                continue
            ratios = [
                statistics.median(results[client][key]) / statistics.median(reference[key])
                for key in KEYS[:4]
            ]
            print(f"CPU/GB ratio to openconnect, {Path(client).name}: "
                  + " ".join(f"{k.removesuffix('_cpu_s_per_gb')} {r:.2f}"
                             for k, r in zip(KEYS[:4], ratios, strict=True)))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
