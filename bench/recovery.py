"""Recovery benchmark: how long traffic stops after a fault, sepconnect next to openconnect.

    sudo /opt/sepconnect-venv/bin/python bench/recovery.py [--repeat 3] [--json FILE]

One lab (throwaway namespaces, real ocserv), both clients, alternating, same run.
Each fault is followed by a ping every 50 ms through the tunnel; the figure is the
time from the fault to the first answered ping (or "gave up" with what happened):

- worker SIGKILL: sepconnect's network-facing worker is killed; openconnect has no
  worker, so its whole process is killed instead (and the tunnel goes with it);
- TCP reset: `ss -K` on the client's TLS connection;
- server crash: ocserv's process group is SIGKILLed and started again (the session
  and cookie are gone; a client must log in again);
- rekey (sepconnect only): `sepconnect rekey`, counting lost pings at 20 ms.

This is a benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lab import Lab, descendants  # noqa: E402

VENV = os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv")
SEPCONNECT = f"{VENV}/bin/sepconnect"
GIVE_UP = 40.0


class Client:
    """A running VPN client in the lab's client namespace."""

    def __init__(self, lab: Lab, kind: str) -> None:
        self.lab, self.kind = lab, kind
        run = time.monotonic_ns()
        self.control = str(Path(lab.workdir, f"ctl-{run}", "control.sock"))
        self.log = Path(lab.workdir, f"{kind}-{run}.log")
        with self.log.open("wb") as log:  # the child keeps its own copy of the fd
            if kind == "sepconnect":
                argv = [SEPCONNECT, "connect", "--user", "test", "--passwd-on-stdin",
                        "--servercert", lab.server_cert_pin, "--control-socket", self.control,
                        "--audit-log", str(Path(lab.workdir, "audit.jsonl")),
                        "--session-log", str(Path(lab.workdir, "session.jsonl")),
                        "--state-dir", str(Path(lab.workdir, f"state-{run}")),
                        lab.url]  # fmt: skip
                self.proc = lab.popen_in(lab.client_ns, *argv, stdin=subprocess.PIPE,
                                         stderr=log)  # fmt: skip
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"test123\n")
                self.proc.stdin.close()
                self.proc.stdin = None
            else:
                self.proc = lab.openconnect(stderr=log, stdout=log)
        wait_ping(lab, 20.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.lab.wait_for("the tun to go", lambda: True if self.lab.client_tun() is None
                          else None, timeout=15)  # fmt: skip

    def descendant(self, title: str) -> int | None:
        for pid in descendants(self.proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if cmdline.replace(b"\0", b" ").strip() == title.encode():
                return pid
        return None


def wait_ping(lab: Lab, limit: float) -> float | None:
    """Seconds until a ping through the tunnel is answered; None if not within limit.

    A short wait per ping: an answer through the tunnel takes ~0.5 ms, and a late one
    only makes the figure later (the next ping counts). With -W 0.05 the figures
    moved in steps of ~55 ms, a sixth of the 0.3 s connect target."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        r = lab.run_in(lab.client_ns, "ping", "-c", "1", "-W", "0.01", lab.target_ip,
                       check=False, timeout=5)  # fmt: skip
        if r.returncode == 0:
            return time.monotonic() - started
        time.sleep(0.002)
    return None


def _fault_kill_worker(client: Client) -> None:
    if client.kind == "sepconnect":
        pid = client.descendant("sepconnect: worker")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    else:
        os.kill(client.proc.pid, signal.SIGKILL)


def _fault_tcp_reset(client: Client) -> None:
    lab = client.lab
    lab.run_in(lab.client_ns, "ss", "-K", "dst", lab.server_ip, "dport", "=", "443", check=False)


def _fault_server_crash(client: Client) -> None:
    client.lab.restart_ocserv(crash=True)


FAULTS: dict[str, Callable[[Client], None]] = {
    "worker SIGKILL": _fault_kill_worker,
    "TCP reset": _fault_tcp_reset,
    "server crash": _fault_server_crash,
}


def measure(lab: Lab, kind: str, fault: str) -> dict[str, Any]:
    client = Client(lab, kind)
    try:
        started = time.monotonic()
        FAULTS[fault](client)
        recovered = wait_ping(lab, GIVE_UP)
        result: dict[str, Any] = {"seconds": recovered}
        if recovered is None:
            alive = client.proc.poll() is None
            state = "still running" if alive else f"exited {client.proc.returncode}"
            result["outcome"] = f"no traffic within {GIVE_UP:.0f} s (client {state})"
            lines = client.log.read_text(errors="replace").strip().splitlines()
            result["last_words"] = lines[-1] if lines else ""
        else:
            result["seconds"] = time.monotonic() - started
        return result
    finally:
        client.stop()


def measure_rekey(lab: Lab) -> dict[str, Any]:
    client = Client(lab, "sepconnect")
    try:
        pinger = lab.popen_in(lab.client_ns, "ping", "-c", "150", "-i", "0.02", "-W", "1",
                              lab.target_ip, stdout=subprocess.PIPE)  # fmt: skip
        time.sleep(1.0)
        lab.run_in(lab.client_ns, SEPCONNECT, "rekey", "--socket", client.control)
        out, _ = pinger.communicate(timeout=30)
        received = int(out.decode().split(" received")[0].rsplit(" ", 1)[-1])
        return {"lost_pings": 150 - received, "of": 150}
    finally:
        client.stop()


def _fmt(values: list[dict[str, Any]]) -> str:
    seconds = [v["seconds"] for v in values if v.get("seconds") is not None]
    failures = [v["outcome"] for v in values if v.get("seconds") is None]
    if not seconds:
        return failures[0] if failures else "-"
    text = f"{statistics.median(seconds):6.2f} s  (range {min(seconds):.2f}-{max(seconds):.2f})"
    if failures:
        text += f"; {len(failures)} failed: {failures[0]}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--faults", nargs="*", default=list(FAULTS), choices=list(FAULTS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with Lab() as lab:
        for fault in args.faults:
            for _ in range(args.repeat):
                for kind in ("sepconnect", "openconnect"):  # alternating, same run
                    results.setdefault(fault, {}).setdefault(kind, []).append(
                        measure(lab, kind, fault)
                    )
        rekey = [measure_rekey(lab) for _ in range(args.repeat)]
    print(f"\nRecovery: fault → first answered ping through the tunnel ({args.repeat} runs)")
    print(f"{'fault':<16} {'sepconnect':<44} openconnect 9.01")
    for fault, by_kind in results.items():
        print(f"{fault:<16} {_fmt(by_kind['sepconnect']):<44} {_fmt(by_kind['openconnect'])}")
    lost = [r["lost_pings"] for r in rekey]
    print(f"{'rekey':<16} lost pings at 20 ms: median {statistics.median(lost)}, max {max(lost)}"
          f" of 150{'':<6} (openconnect: no make-before-break rekey)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"recovery": results, "rekey": rekey}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
