"""A hostile VPN server against the real worker (issue 13, F13): after the login and
the CONNECT it sends DPD requests of 16 KiB as fast as it can and never reads. The
worker answers each one; its memory must stay bounded (it stops reading while its
answers cannot leave) and it must stay up until the session is stopped."""

from __future__ import annotations

import ipaddress
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_connect import VENV, Client, _title

from lab import Lab, descendants

pytestmark = [pytest.mark.root, pytest.mark.netns]

FLOOD_CAP = 256 << 20  # the server gives up there: the worker read it all

DPD_FLOOD_SERVER = r"""
import socket, ssl, sys

AUTH_REQUEST = b'''<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request"><version who="sg">0.1(1)</version>
<auth id="main"><message>Please enter your username.</message>
<form method="post" action="/auth">
<input type="text" name="username" label="Username:" />
<input type="password" name="password" label="Password:" />
</form></auth></config-auth>'''
SUCCESS = b'''<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="complete"><version who="sg">0.1(1)</version>
<auth id="success"><title>SSL VPN Service</title></auth></config-auth>'''

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
cap = int(sys.argv[3])
address, netmask = sys.argv[4].encode(), sys.argv[5].encode()  # from the lab's pool
CONNECTED = (
    b"HTTP/1.1 200 CONNECTED\r\nX-CSTP-Version: 1\r\nX-CSTP-Address: " + address
    + b"\r\nX-CSTP-Netmask: " + netmask + b"\r\nX-CSTP-MTU: 1400\r\n\r\n"
)
srv = socket.create_server(("198.18.1.1", 4443))
print("ready", flush=True)
conn, _ = srv.accept()
tls = ctx.wrap_socket(conn, server_side=True)
buf = b""

def request():
    global buf
    while b"\r\n\r\n" not in buf:
        buf += tls.recv(65536)
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        buf += tls.recv(65536)
    buf = buf[length:]

def answer(body, cookie):
    tls.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nSet-Cookie: " + cookie
        + b"; Secure\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

request()
answer(AUTH_REQUEST, b"webvpncontext=0123456789")
request()
answer(SUCCESS, b"webvpn=ABCDEF0123456789")
request()  # CONNECT
tls.sendall(CONNECTED)
print("connected", flush=True)
sys.stdin.readline()  # the tunnel is up: the worker's data path reads from now on
frame = b"STF\x01\x40\x00\x03\x00" + bytes(16384)  # DPD-REQ, 16 KiB of payload
tls.settimeout(3.0)
sent = 0
try:
    while sent < cap:
        tls.sendall(frame)
        sent += len(frame)
    print(f"sent {sent}", flush=True)
except TimeoutError:
    print(f"blocked {sent}", flush=True)  # the worker stopped reading
sys.stdin.read()  # never read from the worker; end when the test says so
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _worker(client: Client) -> int:
    for pid in descendants(client.proc.pid):
        try:
            if _title(pid) == "sepconnect: worker":
                return pid
        except FileNotFoundError:
            continue
    raise AssertionError("no worker")


def _line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    ready = select.select([proc.stdout], [], [], timeout)[0]
    assert ready, f"no word from the server within {timeout} s"
    return proc.stdout.readline().decode().strip()


def test_dpd_flood_from_a_server_that_never_reads(lab: Lab) -> None:
    script = Path(lab.workdir, "dpd_flood_server.py")
    script.write_text(DPD_FLOOD_SERVER)
    cert, key = Path(lab.workdir, "server-cert.pem"), Path(lab.workdir, "server-key.pem")
    pool = ipaddress.ip_network(lab.pool4)
    server = lab.popen_in(
        lab.server_ns, f"{VENV}/bin/python", str(script), str(cert), str(key), str(FLOOD_CAP),
        str(pool[250]), str(pool.netmask), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert _line(server, 10) == "ready"
        client = Client(lab, "--no-dtls", "https://198.18.1.1:4443/")
        assert _line(server, 15) == "connected"
        client.wait_connected()
        worker = _worker(client)
        before = _rss_kib(worker)
        assert server.stdin is not None
        server.stdin.write(b"go\n")
        server.stdin.flush()
        word, _, sent = _line(server, 60).partition(" ")
        time.sleep(1)
        grown = _rss_kib(worker) - before
        assert word == "blocked", f"the worker read all {sent} bytes sent (RSS +{grown} KiB)"
        # Its answers: a full backlog (128 frames of 16 KiB), the TLS stream's queue,
        # OpenSSL's buffers; nowhere near what the server sent.
        assert grown < 16 * 1024, f"worker RSS grew by {grown} KiB"
        assert _worker(client) == worker  # alive: no DPD on this server, nothing ends it
        assert client.stop(signal.SIGINT) == 0, client.stderr
        assert "Traceback" not in client.stderr
    finally:
        server.kill()
        server.wait()
