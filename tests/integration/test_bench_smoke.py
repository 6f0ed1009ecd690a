"""Smoke run of the side-by-side benchmark (bench/compare.py) with tiny durations, so
that it does not rot. Asserts that it produces its table and valid JSON, never timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "compare.py"


def test_compare_quick(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeat", "1", "--seconds", "1",
         "--pings", "5", "--json", str(out), "--png", str(tmp_path / "compare.png")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sepconnect vs openconnect" in r.stdout
    for label in ("DTLS iperf3 up", "TLS iperf3 down", "connect", "RSS total"):
        assert label in r.stdout
    doc = json.loads(out.read_text())
    for kind in ("sepconnect", "openconnect"):
        for key in ("dtls_up_mbps", "tls_down_mbps", "connect_s", "rss_total_mb"):
            assert doc["raw"][kind][key], (kind, key)
