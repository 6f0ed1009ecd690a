"""Benchmark (not a test): sepconnect next to openconnect, same lab, same ocserv, same run.

    sudo /opt/sepconnect-venv/bin/python bench/compare.py [--quick] [--repeat N]
        [--seconds S] [--json FILE] [--png FILE]

One lab (throwaway namespaces, real ocserv 1.1.6 with DTLS, dpd 10). For each
repetition both clients run in turn, the order alternating between repetitions:

- over DTLS: connect time (process start → tun up with its address → first ping
  through the tunnel answered, polled with ``ping -c1 -W 0.01``), ping RTT (50 pings
  at 20 ms, minus the raw RTT client → server outside the tunnel), iperf3 TCP up and
  down, client CPU seconds per GB moved (utime+stime of every client process from
  /proc over each iperf3 run), RSS of each client process and their sum;
- over TLS (both clients with ``--no-dtls``): iperf3 up and down, CPU per GB;
- unless ``--quick``: DTLS failover/return (bench/dtls_failover.py) and recovery after
  faults (bench/recovery.py), once per client.

Prints one table with medians, ranges and the ratio sepconnect/openconnect (ratios
from the same run are what count: the machine is noisy), writes JSON, and draws a
PNG when matplotlib is installed (``pip install sepconnect[bench]``; without it the
chart is skipped with a message). CI runs it with tiny durations as a smoke test
(tests/integration/test_bench_smoke.py) and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import recovery  # noqa: E402  (bench/recovery.py)
from dtls_lab import UdpFilter, VpnClient, measure_failover  # noqa: E402

from lab import Lab, OcservOptions  # noqa: E402

KINDS = ("sepconnect", "openconnect")
DTLS_UP = {
    "sepconnect": r"data channel: DTLS",
    "openconnect": r"Established DTLS connection|DTLS connected",
}
_TICK = os.sysconf("SC_CLK_TCK")

# metric key -> (label, unit, better: "higher"/"lower", target text)
METRICS: dict[str, tuple[str, str, str, str]] = {
    "dtls_up_mbps": ("DTLS iperf3 up", "Mbit/s", "higher", ">= 1.2x"),
    "dtls_down_mbps": ("DTLS iperf3 down", "Mbit/s", "higher", ">= 1.2x"),
    "tls_up_mbps": ("TLS iperf3 up", "Mbit/s", "higher", ">= 1.0x"),
    "tls_down_mbps": ("TLS iperf3 down", "Mbit/s", "higher", ">= 1.0x"),
    "dtls_up_cpu_s_per_gb": ("CPU/GB DTLS up", "s", "lower", "<= 1.0x"),
    "dtls_down_cpu_s_per_gb": ("CPU/GB DTLS down", "s", "lower", "<= 1.0x"),
    "tls_up_cpu_s_per_gb": ("CPU/GB TLS up", "s", "lower", "<= 1.0x"),
    "tls_down_cpu_s_per_gb": ("CPU/GB TLS down", "s", "lower", "<= 1.0x"),
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


# ---------------------------------------------------------------------- /proc helpers


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            out.append(int(child))
            out.extend(descendants(int(child)))
    return out


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


def iperf(lab: Lab, pids: list[int], *, reverse: bool, seconds: float) -> tuple[float, float]:
    """(Mbit/s, client CPU seconds per GB moved) of one iperf3 TCP run."""
    for _ in range(10):
        cpu0 = cpu_seconds(pids)
        out = lab.run_in(
            lab.client_ns, "iperf3", "-c", lab.target_ip, "-t", f"{seconds:g}", "-J",
            "--connect-timeout", "3000", *(["-R"] if reverse else []),
            timeout=seconds + 30, check=False,
        )  # fmt: skip
        cpu = cpu_seconds(pids) - cpu0
        result = json.loads(out.stdout)
        if "busy" not in result.get("error", ""):
            break
        time.sleep(1)  # the server still winds down an earlier test (lab.py: --idle-timeout)
    if "error" in result:
        raise AssertionError(f"iperf3 {'-R ' if reverse else ''}failed: {result['error']}")
    end = result["end"]["sum_received"]
    gigabytes = max(1e-9, float(end["bytes"]) / 1e9)
    return float(end["bits_per_second"]) / 1e6, cpu / gigabytes


SEPCONNECT_EXTRA: list[str] = []  # --sepconnect-arg: e.g. --no-tun-offload, for A/B runs


def start(lab: Lab, kind: str, *args: str) -> tuple[VpnClient, float]:
    """Start a client; returns it and its connect time (start → first answered ping)."""
    if kind == "sepconnect":
        args = (*args, *SEPCONNECT_EXTRA)
    t0 = time.monotonic()
    client = VpnClient(lab, kind, args).start()
    try:
        connect = ping_until_answered(lab, t0)
    except AssertionError:
        client.stop()
        raise AssertionError(f"{kind} never passed traffic:\n{client.text}") from None
    return client, connect


def stop(lab: Lab, client: VpnClient) -> None:
    client.stop()
    lab.wait_for("the tun to go", lambda: True if lab.client_tun() is None else None, 15)


def run_dtls(lab: Lab, kind: str, seconds: float, pings: int) -> dict[str, float]:
    client, connect = start(lab, kind)
    try:
        client.wait_for_line(DTLS_UP[kind], timeout=30)
        time.sleep(0.5)
        roles = client_pids(client)
        pids = list(roles.values())
        raw = ping_avg_ms(lab, lab.server_ip, pings)
        rtt = ping_avg_ms(lab, lab.target_ip, pings)
        up, up_cpu = iperf(lab, pids, reverse=False, seconds=seconds)
        down, down_cpu = iperf(lab, pids, reverse=True, seconds=seconds)
        r: dict[str, float] = {
            "connect_s": connect,
            "rtt_ms": rtt,
            "raw_rtt_ms": raw,
            "added_rtt_ms": rtt - raw,
            "dtls_up_mbps": up,
            "dtls_down_mbps": down,
            "dtls_up_cpu_s_per_gb": up_cpu,
            "dtls_down_cpu_s_per_gb": down_cpu,
        }
        for role, pid in roles.items():
            if kind == "sepconnect":
                r[f"rss_{role}_mb"] = rss_mb(pid)
        r["rss_total_mb"] = sum(rss_mb(pid) for pid in pids)
        r["pss_total_mb"] = sum(pss_mb(pid) for pid in pids)
        return r
    finally:
        stop(lab, client)


def run_tls(lab: Lab, kind: str, seconds: float) -> dict[str, float]:
    client, _ = start(lab, kind, "--no-dtls")
    try:
        pids = list(client_pids(client).values())
        up, up_cpu = iperf(lab, pids, reverse=False, seconds=seconds)
        down, down_cpu = iperf(lab, pids, reverse=True, seconds=seconds)
        return {
            "tls_up_mbps": up,
            "tls_down_mbps": down,
            "tls_up_cpu_s_per_gb": up_cpu,
            "tls_down_cpu_s_per_gb": down_cpu,
        }
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


def fmt_cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    digits = 0 if abs(med) >= 100 else 2 if abs(med) < 10 else 1
    if lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def table(results: dict[str, dict[str, list[float]]], meta: dict[str, Any]) -> str:
    lines = [
        f"sepconnect vs openconnect — ocserv {meta['ocserv']}, {meta['repeat']} run(s), "
        f"iperf3 {meta['seconds']:g} s, {meta['cpus']} CPUs; median [range]; "
        "ratio = sepconnect/openconnect",
        f"{'metric':<26}{'unit':>7}  {'sepconnect':>24}  {'openconnect':>24}  {'ratio':>6}  target",
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
            f"{label:<26}{unit:>7}  {fmt_cell(sep):>24}  {fmt_cell(oc):>24}  {ratio:>6}  {target}"
        )
    return "\n".join(lines)


def chart(results: dict[str, dict[str, list[float]]], path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install 'sepconnect[bench]'): no chart"
    groups = [
        ("Throughput (Mbit/s, higher is better)",
         ["dtls_up_mbps", "dtls_down_mbps", "tls_up_mbps", "tls_down_mbps"]),
        ("CPU s per GB (lower is better)",
         ["dtls_up_cpu_s_per_gb", "dtls_down_cpu_s_per_gb", "tls_up_cpu_s_per_gb",
          "tls_down_cpu_s_per_gb"]),
        ("Latency (ms) and connect (s)", ["rtt_ms", "added_rtt_ms", "connect_s"]),
        ("Memory (MB)", ["rss_total_mb", "pss_total_mb"]),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, len(groups), figsize=(18, 4.5))
    for ax, (title, keys) in zip(axes, groups, strict=True):
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return f"chart written to {path}"


def ocserv_version() -> str:
    r = subprocess.run(["ocserv", "--version"], capture_output=True, check=False)
    m = re.search(rb"(\d+\.\d+\.\d+)", r.stdout + r.stderr)
    return m.group(1).decode() if m else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip failover and recovery")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration (<= 10)")
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--blocked", type=float, default=20.0, help="seconds UDP stays cut")
    parser.add_argument("--clients", nargs="*", default=list(KINDS), choices=KINDS)
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
    seconds = min(args.seconds, 10.0)
    results: dict[str, dict[str, list[float]]] = {k: {} for k in KINDS}

    def record(kind: str, step: Callable[[], dict[str, float]]) -> None:
        for key, value in step().items():
            results[kind].setdefault(key, []).append(value)

    with Lab(OcservOptions(dtls=True, dpd=10)) as lab:
        for rep in range(args.repeat):
            order = args.clients if rep % 2 == 0 else list(reversed(args.clients))
            for kind in order:
                print(f"run {rep + 1}/{args.repeat}: {kind} ...", file=sys.stderr, flush=True)
                record(kind, lambda k=kind: run_dtls(lab, k, seconds, args.pings))
                record(kind, lambda k=kind: run_tls(lab, k, seconds))
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
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = table(results, meta)
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
        print(chart(results, args.png), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
