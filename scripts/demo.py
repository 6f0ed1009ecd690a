"""The demo behind ./demo: lab up, sepconnect connect, ping through the tunnel, disconnect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lab import Lab, OcservOptions  # noqa: E402

SEPCONNECT = str(Path(sys.executable).parent / "sepconnect")


def show(title: str, lab: Lab, *argv: str) -> None:
    print(f"\n$ {title}", flush=True)
    result = lab.run_in(lab.client_ns, *argv, check=False)
    sys.stdout.write(result.stdout.decode() + result.stderr.decode())
    sys.stdout.flush()


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (sudo ./demo)", file=sys.stderr)
        return 2
    print("Building the lab: client, server (ocserv) and target namespaces ...", flush=True)
    with Lab(OcservOptions(dtls=True)) as lab:
        print(f"ocserv is up at {lab.url} (pin {lab.server_cert_pin}); target {lab.target_ip}")
        show(f"ping -c 1 {lab.target_ip}   # before connecting: no way there", lab,
             "ping", "-c", "1", "-W", "1", lab.target_ip)  # fmt: skip
        argv = [SEPCONNECT, "connect", "--user", "test", "--passwd-on-stdin",
                "--servercert", lab.server_cert_pin,
                "--audit-log", str(Path(lab.workdir, "audit.jsonl")),
                "--session-log", str(Path(lab.workdir, "session.jsonl")),
                "--control-socket", str(Path(lab.workdir, "ctl", "control.sock")),
                "--state-dir", str(Path(lab.workdir, "helper-state")),
                lab.url]  # fmt: skip
        print(f"\n$ echo ... | {' '.join(argv)}", flush=True)
        started = time.monotonic()
        client = lab.popen_in(lab.client_ns, *argv, stdin=subprocess.PIPE)
        assert client.stdin is not None
        client.stdin.write(b"test123\n")
        client.stdin.close()
        tun = lab.wait_for("the tunnel", lab.client_tun, timeout=20)
        print(f"(tunnel up in {time.monotonic() - started:.2f} s)", flush=True)
        show(f"ip addr show dev {tun['ifname']}", lab, "ip", "addr", "show", "dev", tun["ifname"])
        show("ip route", lab, "ip", "route")
        show(f"ping -c 3 {lab.target_ip}   # through the tunnel", lab,
             "ping", "-c", "3", "-i", "0.2", lab.target_ip)  # fmt: skip
        show(f"ping -c 3 {lab.target_ip6}", lab, "ping", "-c", "3", "-i", "0.2", lab.target_ip6)
        pids = f"{client.pid}"
        show("ps  # three processes; only the helper is root", lab,
             "ps", "-o", "pid,user,args", "--ppid", pids, "-p", pids)  # fmt: skip
        show("sepconnect status", lab, SEPCONNECT, "status", "--socket",
             str(Path(lab.workdir, "ctl", "control.sock")))  # fmt: skip
        print("\nSending SIGINT (log off) ...", flush=True)
        client.send_signal(signal.SIGINT)
        code = client.wait(timeout=20)
        print(f"sepconnect exited with {code}")
        show("ip route   # after disconnecting: back as it was", lab, "ip", "route")
        print("\nRemoving the lab ...")
    print("Done.")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
