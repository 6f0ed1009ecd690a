"""Smoke run of the side-by-side benchmark (bench/compare.py) with tiny durations, so
that it does not rot. Asserts that it produces its tables, valid JSON with every kind of
figure, and (with --pin) the affinities it promises; never timing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "compare.py"
KINDS = ("sepconnect", "openconnect")


def test_compare_quick(tmp_path: Path) -> None:
    out, png = tmp_path / "compare.json", tmp_path / "compare.png"
    pin = {0, 1} <= os.sched_getaffinity(0)
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeat", "1", "--seconds", "1",
         "--pings", "5", "--udp-rates", "2000,10000", "--udp-seconds", "1",
         *(["--pin"] if pin else []), "--json", str(out), "--png", str(png)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sepconnect vs openconnect" in r.stdout
    for label in ("DTLS iperf3 up", "TLS iperf3 down", "connect", "RSS total",
                  "ocserv CPU/GB DTLS up", "UDP up: max rate", "UDP over DTLS"):  # fmt: skip
        assert label in r.stdout, label
    doc = json.loads(out.read_text())
    for kind in KINDS:
        raw = doc["raw"][kind]
        for key in ("dtls_up_mbps", "tls_down_mbps", "connect_s", "rss_total_mb",
                    "udp_up_max_pps", "udp_down_max_pps"):  # fmt: skip
            assert raw[key], (kind, key)
        # ocserv works for every byte: its CPU is counted (not only its idle main process)
        for key in ("dtls_up_ocserv_cpu_s_per_gb", "tls_down_ocserv_cpu_s_per_gb"):
            assert raw[key][0] > 0, (kind, key, raw[key])
        for direction in ("up", "down"):
            for name in ("delivered_pps", "cpu_pct", "cpu_us_per_pkt", "loss_pct",
                         "lost_client_pct", "ocserv_cpu_us_per_pkt"):  # fmt: skip
                key = f"udp_{direction}_2000_{name}"
                assert key in raw, (kind, key)
            assert raw[f"udp_{direction}_2000_delivered_pps"][0] > 0, (kind, direction)
            assert raw[f"udp_{direction}_2000_cpu_us_per_pkt"][0] > 0, (kind, direction)
    if pin:
        assert doc["meta"]["pin"] == {"client_cpu": 0, "server_cpu": 1}
        # read back from /proc on every thread of every process, after each run
        assert doc["meta"]["affinity_seen"] == {
            "sepconnect": ["0"], "openconnect": ["0"], "ocserv": ["1"], "iperf3 -s": ["1"],
        }  # fmt: skip
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.stat().st_size > 0
    else:
        assert "no chart" in r.stderr
