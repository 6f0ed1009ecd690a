"""openconnect's option names and forms against the lab's ocserv, and against openconnect
9.01 itself where both can be run the same way (issue 14, item 6).

What the server sees is read from ocserv: its ``-d 4`` log has every request line and
header it reads (``HTTP POST /VPN``, ``HTTP processing: User-Agent: …``), and ``occtl
show users`` the session's user agent and X-CSTP-Hostname. ``--cookieonly`` (sepconnect)
and ``--authenticate`` (openconnect) log in without a tunnel, so the login-side options
are compared cheaply; the tunnel-side ones with a real session.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_connect import AUTH_FAILED, CERT_INVALID, PROTOCOL, SEPCONNECT, USAGE, Client

from lab import Lab, OcservOptions

pytestmark = [pytest.mark.root, pytest.mark.netns]

needs_openconnect = pytest.mark.skipif(
    shutil.which("openconnect") is None, reason="needs openconnect (the reference client)"
)
STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "


def _state(lab: Lab) -> list[str]:
    """Each run its own helper state, control socket and logs in the lab."""
    run = f"{time.monotonic_ns()}"
    w = lab.workdir
    return [
        "--state-dir", f"{w}/state-{run}", "--control-socket", f"{w}/ctl-{run}/control.sock",
        "--audit-log", f"{w}/audit-{run}.jsonl", "--session-log", f"{w}/session-{run}.jsonl",
    ]  # fmt: skip


def cookieonly(
    lab: Lab, *args: str, server: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``sepconnect connect --cookieonly`` as user test (password on stdin)."""
    if not any(a.startswith("--servercert") for a in args):
        args = ("--servercert", lab.server_cert_pin, *args)
    return lab.run_in(
        lab.client_ns, SEPCONNECT, "connect", *_state(lab), "--cookieonly", "--passwd-on-stdin",
        "-u", "test", *args, server or lab.url,
        input=f"{lab.users['test']}\n".encode(), check=False,
    )  # fmt: skip


def authenticate(
    lab: Lab, *args: str, server: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``openconnect --authenticate``: openconnect's login without a tunnel."""
    if not any(a.startswith("--servercert") for a in args):
        args = ("--servercert", lab.server_cert_pin, *args)
    return lab.run_in(
        lab.client_ns, "openconnect", "--authenticate", "--non-inter", "--passwd-on-stdin",
        "-u", "test", *args, server or lab.url,
        input=f"{lab.users['test']}\n".encode(), check=False,
    )  # fmt: skip


def ocserv_lines(lab: Lab, since: int, pattern: str) -> list[str]:
    """The ocserv log lines after offset ``since`` that match, without the pid prefix."""
    found = []
    for line in lab.ocserv_log()[since:].splitlines():
        text = line.split(f"{lab.client_ip} ", 1)[-1]
        if re.search(pattern, text):
            found.append(text)
    return found


# --------------------------------------------------------------------------- --servercert


def _fingerprints(lab: Lab) -> dict[str, str]:
    pem = Path(lab.workdir, "server-cert.pem").read_bytes()
    spki = subprocess.run(
        ["bash", "-c", "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der"],
        input=pem, check=True, capture_output=True,
    ).stdout  # fmt: skip
    der = subprocess.run(
        ["openssl", "x509", "-outform", "der"], input=pem, check=True, capture_output=True
    ).stdout
    return {
        "spki-sha256": hashlib.sha256(spki).hexdigest(),
        "spki-sha1": hashlib.sha1(spki).hexdigest(),
        "cert-sha1": hashlib.sha1(der).hexdigest(),
        "cert-sha256": hashlib.sha256(der).hexdigest(),
    }


@needs_openconnect
def test_every_servercert_form_is_openconnects(lab: Lab) -> None:
    f = _fingerprints(lab)
    accepted = [
        lab.server_cert_pin,
        "sha256:" + f["spki-sha256"].upper(),  # of the public key, hex in either case
        "sha1:" + f["spki-sha1"],
        f["cert-sha1"].upper(),  # no type: SHA-1 of the whole certificate
        "sha256:" + f["spki-sha256"][:8],  # prefixes of 4 characters or more
        lab.server_cert_pin[: len("pin-sha256:") + 6],
        f["cert-sha1"][:4],
    ]
    refused = [
        "sha256:" + f["cert-sha256"],  # sha256: is of the public key, not the certificate
        "sha1:" + f["cert-sha1"],
        "sha256:" + ("0" if f["spki-sha256"][0] != "0" else "1") + f["spki-sha256"][1:8],
        lab.server_cert_pin.swapcase().replace("PIN-SHA256", "pin-sha256"),  # base64 is exact
    ]
    for pin in accepted:
        ours, theirs = cookieonly(lab, "--servercert", pin), authenticate(lab, "--servercert", pin)
        assert (ours.returncode, theirs.returncode) == (0, 0), (pin, ours.stderr, theirs.stderr)
        assert re.fullmatch(rb"[A-Za-z0-9+/=]{20,}\n", ours.stdout), ours.stdout
        warned = b"only a prefix" in ours.stderr
        assert warned == (pin in accepted[4:]), (pin, ours.stderr)
    for pin in refused:
        ours, theirs = cookieonly(lab, "--servercert", pin), authenticate(lab, "--servercert", pin)
        assert ours.returncode == CERT_INVALID, (pin, ours.stderr)
        assert theirs.returncode != 0, pin
        assert f"server has {lab.server_cert_pin}".encode() in ours.stderr
    # several pins, of any forms: one must match
    both = cookieonly(lab, "--servercert", refused[0], "--servercert", accepted[3])
    assert both.returncode == 0, both.stderr


# --------------------------------------------------------------------------- the server


def test_usergroup_is_the_url_path_as_openconnect(lab_factory: object) -> None:
    lab = lab_factory(OcservOptions(debug=4))  # type: ignore[operator]
    since = len(lab.ocserv_log())
    ok = cookieonly(lab, "-g", "VPN", server=lab.server_ip)  # a bare host name, too
    assert ok.returncode == 0, ok.stderr
    # the login starts at the path; the server's form then says where to post (/auth)
    assert ocserv_lines(lab, since, r"^HTTP POST /")[0] == "HTTP POST /VPN"
    # ocserv has no /red: a 404 for the POST and for the GET after it, as openconnect
    since = len(lab.ocserv_log())
    refused = cookieonly(lab, "--usergroup", "red", server=lab.server_ip)
    assert refused.returncode == PROTOCOL, refused.stderr
    assert b"HTTP 404" in refused.stderr
    assert ocserv_lines(lab, since, r"^HTTP (POST|GET) /") == ["HTTP POST /red", "HTTP GET /red"]
    if shutil.which("openconnect"):
        since = len(lab.ocserv_log())
        assert authenticate(lab, "-g", "red", server=lab.server_ip).returncode != 0
        assert ocserv_lines(lab, since, r"^HTTP (POST|GET) /") == [
            "HTTP POST /red",
            "HTTP GET /red",
        ]
    # a path in the URL wins, with a warning
    since = len(lab.ocserv_log())
    kept = cookieonly(lab, "-g", "red", server=f"https://{lab.server_ip}/VPN")
    assert kept.returncode == 0, kept.stderr
    assert b"-g/--usergroup red: ignored, the URL has a path already" in kept.stderr
    assert ocserv_lines(lab, since, r"^HTTP POST /")[0] == "HTTP POST /VPN"


def test_only_https(lab: Lab) -> None:
    result = cookieonly(lab, server=f"http://{lab.server_ip}/")
    assert result.returncode == USAGE
    assert result.stderr.decode().strip() == (
        f"sepconnect: the server URL must be https:// (or a bare host name), got "
        f"'http://{lab.server_ip}/'"
    )


# --------------------------------------------------------------------------- identity


@needs_openconnect
@pytest.mark.parametrize("platform", ["win", "android"])
def test_useragent_and_os_reach_the_server_as_openconnects(
    lab_factory: object, platform: str
) -> None:
    lab = lab_factory(OcservOptions(debug=4))  # type: ignore[operator]
    options = ("--useragent", "AnyConnect Windows 4.10.05095", "--version-string", "4.10.05095")
    options += ("--os", platform)
    seen = r"^HTTP processing: (User-Agent|X-AnyConnect-(?!STRAP))|^Platform:|^Device-type:"
    since = len(lab.ocserv_log())
    ours = cookieonly(lab, *options)
    assert ours.returncode == 0, ours.stderr
    ours_seen = ocserv_lines(lab, since, seen)
    since = len(lab.ocserv_log())
    assert authenticate(lab, *options).returncode == 0
    theirs_seen = ocserv_lines(lab, since, seen)
    assert ours_seen == theirs_seen
    assert "HTTP processing: User-Agent: AnyConnect Windows 4.10.05095" in ours_seen
    mobile = [line for line in ours_seen if "Identifier" in line]
    if platform == "android":
        assert "Platform: 'android' (mobile)" in ours_seen
        assert "HTTP processing: X-AnyConnect-Identifier-ClientVersion: 4.10.05095" in mobile
    else:
        assert mobile == []


def test_cookieonly_then_cookie_makes_the_tunnel(lab_factory: object) -> None:
    lab = lab_factory(OcservOptions(debug=4))  # type: ignore[operator]
    login = cookieonly(lab, "--useragent", "AnyConnect Darwin_i386 4.10.05095")
    assert login.returncode == 0, login.stderr
    cookie = login.stdout.decode().strip()
    assert login.stderr == b""
    # openconnect 9 prints its cookie so: the webvpn value is taken
    given = f"openconnect_strapkey=MHcCAQEE+/=; webvpn={cookie}"
    since = len(lab.ocserv_log())
    client = Client(
        lab, "-C", given, "--local-hostname", "mybox", "--os", "android", user="",
        passwd_on_stdin=False, server=lab.server_ip,
    )  # fmt: skip
    client.wait_connected()
    # the cookie was on the command line: it is not there any more
    assert cookie.encode() not in Path(f"/proc/{client.proc.pid}/cmdline").read_bytes()
    ping = lab.run_in(lab.client_ns, "ping", "-c", "1", "-W", "2", lab.target_ip, check=False)
    assert ping.returncode == 0
    users = [u for u in _occtl_users(lab) if u["State"] == "connected"]
    assert [(u["Hostname"], u["User-Agent"]) for u in users] == [
        ("mybox", "AnyConnect Darwin_i386 4.10.05095")  # the login's user agent
    ]
    connect = ocserv_lines(
        lab, since, r"^HTTP processing: X-(CSTP-Hostname|AnyConnect-Identifier-Platform):"
    )
    assert connect == [
        "HTTP processing: X-CSTP-Hostname: mybox",
        "HTTP processing: X-AnyConnect-Identifier-Platform: android",
    ]
    assert client.stop() == 0, client.stderr


def test_a_refused_cookie_without_a_password(lab: Lab) -> None:
    cookie = "AKJJ7m7IQ66gObeYIhTX9dS2pqbPVuOuSJinCvz4YxM="
    client = Client(lab, "-C", cookie, user="", passwd_on_stdin=False)
    assert client.finish() == 11, client.stderr  # COOKIE_REJECTED, no password to log in
    assert "rejected the session cookie" in client.stderr


def test_after_the_given_cookie_dies_a_kept_password_logs_in(lab: Lab) -> None:
    """-C is for the first connection: when the server forgets the session (a crash),
    the login that follows uses the password, not the same dead cookie again."""
    login = cookieonly(lab)
    assert login.returncode == 0, login.stderr
    client = Client(lab, "-C", login.stdout.decode().strip())  # and the password on stdin
    tun = client.wait_connected()
    lab.restart_ocserv(crash=True)

    def pings() -> bool | None:
        ping = ["ping", "-c", "1", "-W", "1", lab.target_ip]
        return lab.run_in(lab.client_ns, *ping, check=False).returncode == 0 or None

    lab.wait_for("a new login", pings, timeout=20)
    now = lab.client_tun()
    assert now is not None
    assert now["ifname"] == tun["ifname"]  # the same tun, kept through the new login
    assert client.stop() == 0, client.stderr
    assert "cookie was rejected" in client.stderr, client.stderr


def _occtl_users(lab: Lab) -> list[dict[str, object]]:
    import json

    return list(json.loads(lab.occtl("-j", "show", "users")))


# --------------------------------------------------------------------------- -s with arguments

SCRIPT = """#!/bin/sh
{{
  echo "reason=$reason uid=$(id -u) argc=$#"
  for arg in "$@"; do echo "arg=[$arg]"; done
}} >> {log}
"""


def test_script_with_arguments(lab: Lab) -> None:
    work = Path(lab.workdir)
    log, script = work / "script.log", work / "fake-vpn-slice"
    script.write_text(SCRIPT.format(log=log))
    script.chmod(0o755)
    command = f"{script} --verbose 'two words' 10.0.0.0/8 host=198.18.2.2 ''"
    proc = lab.popen_in(
        lab.client_ns, SEPCONNECT, "connect", *_state(lab), "--passwd-on-stdin", "-u", "test",
        "--servercert", lab.server_cert_pin, "-s", command, lab.url,
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(f"{lab.users['test']}\n".encode())
    proc.stdin.close()
    proc.stdin = None

    def reasons() -> list[str]:
        text = log.read_text() if log.exists() else ""
        return re.findall(r"^reason=(\S+)", text, re.M)

    lab.wait_for("the script's connect", lambda: reasons() == ["pre-init", "connect"] or None)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert reasons() == ["pre-init", "connect", "disconnect"]
    runs = log.read_text().split("reason=")[1:]
    for run in runs:  # every run: root, and the arguments exactly as a shell splits them
        lines = run.splitlines()
        assert lines[0].split()[1:] == ["uid=0", "argc=5"], run
        assert lines[1:] == [
            "arg=[--verbose]", "arg=[two words]", "arg=[10.0.0.0/8]", "arg=[host=198.18.2.2]",
            "arg=[]",
        ]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("{script} $(touch /tmp/sepconnect-pwned)", "'$' '(' ')' is shell syntax"),
        ("{script} 10.0.0.0/8; id", "';' is shell syntax"),
        ("no-such-vpn-slice 10.0.0.0/8", "no program 'no-such-vpn-slice' in /usr/local/sbin:"),
    ],
)
def test_script_command_lines_that_need_a_shell_are_refused(
    lab: Lab, command: str, message: str
) -> None:
    script = Path(lab.workdir, "fake-vpn-slice")
    script.write_text("#!/bin/sh\ntouch /tmp/sepconnect-pwned\n")
    script.chmod(0o755)
    result = lab.run_in(
        lab.client_ns, SEPCONNECT, "connect", *_state(lab), "-s", command.format(script=script),
        lab.url, check=False,
    )  # fmt: skip
    assert result.returncode == USAGE
    assert message in result.stderr.decode()
    assert not Path("/tmp/sepconnect-pwned").exists()


# --------------------------------------------------------------------------- -b, --pid-file


def _start_background(lab: Lab, *args: str, password: str | None = None) -> tuple[int, str]:
    """``sepconnect connect -b``; returns its exit code and what it wrote. Its output goes
    to a file: a pipe would stay open in the background session."""
    out = Path(lab.workdir, f"out-{time.monotonic_ns()}")
    with out.open("wb") as f:
        proc = lab.popen_in(
            lab.client_ns, SEPCONNECT, "connect", *_state(lab), "-b", "--passwd-on-stdin",
            "-u", "test", "--servercert", lab.server_cert_pin, *args, lab.url,
            stdin=subprocess.PIPE, stdout=f, stderr=f,
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(f"{password or lab.users['test']}\n".encode())
        proc.stdin.close()
        code = proc.wait(30)
    return code, out.read_text()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _status(pid: int) -> dict[str, str]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {k: v.strip() for k, v in fields.items()}


def test_background_returns_once_the_tunnel_is_up(lab: Lab) -> None:
    pid_file = Path(lab.workdir, "sepconnect.pid")
    code, output = _start_background(lab, "--pid-file", str(pid_file))
    assert code == 0, output
    tun = lab.client_tun()  # up, with its routes, when the command returns
    assert tun is not None
    assert "UP" in tun["flags"]
    routes = lab.ip_json(lab.client_ns, "route", "show", "dev", tun["ifname"])
    assert any(r.get("protocol") != "kernel" for r in routes)
    pid = int(pid_file.read_text())
    assert f"continuing in background; pid {pid}" in output
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sepconnect: supervisor")
    assert os.getsid(pid) == pid  # its own session: no terminal
    assert _status(pid)["Uid"].split()[0] != "0"
    ping = lab.run_in(lab.client_ns, "ping", "-c", "1", "-W", "2", lab.target_ip, check=False)
    assert ping.returncode == 0
    os.kill(pid, signal.SIGTERM)  # the PID file names the process to signal
    lab.wait_for("the session to end", lambda: not Path(f"/proc/{pid}").exists() or None)
    lab.wait_for("the tun to go", lambda: lab.client_tun() is None or None)
    assert pid_file.read_text() == ""  # emptied: it names no process any more


def test_background_failure_is_reported_by_the_command(lab: Lab) -> None:
    pid_file = Path(lab.workdir, "sepconnect.pid")
    code, output = _start_background(lab, "--pid-file", str(pid_file), password="wrong")
    assert code == AUTH_FAILED, output
    assert "Login rejected by server" in output
    assert "continuing in background" not in output
    assert not pid_file.exists()


# --------------------------------------------------------------------------- output


def test_timestamp_stamps_every_process_and_quiet_keeps_failures(lab: Lab) -> None:
    client = Client(lab, "--timestamp", "-v")
    client.wait_connected()
    relays = [
        pid
        for pid in _children(client.proc.pid)
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sepconnect: output relay")
    ]
    assert len(relays) == 1
    status = _status(relays[0])  # the service account, for good, with nothing more
    assert "0" not in status["Uid"].split() + status["Gid"].split(), status
    assert {status[c] for c in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0" * 16}
    assert status["NoNewPrivs"] == "1"
    assert client.stop() == 0
    lines = client.stderr.splitlines()
    assert lines, client.stderr
    assert all(re.match(STAMP, line) for line in lines), client.stderr
    # the worker's own lines (its sandbox at -v) went through the relay too
    assert any(re.match(STAMP + "sepconnect worker: ", line) for line in lines), client.stderr
    quiet = Client(lab, "-q")
    quiet.wait_connected()
    assert quiet.stop() == 0
    assert quiet.stderr == ""
    failed = Client(lab, "-q", password="wrong")
    assert failed.finish() == AUTH_FAILED
    assert failed.stderr.startswith("sepconnect: Login rejected by server"), failed.stderr


COLLECTOR = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("/dev/log")
os.chmod("/dev/log", 0o666)  # as syslogd's: writable by every account
sock.settimeout(0.2)
parent = os.getppid()
with open(sys.argv[1], "ab", buffering=0) as out:
    while os.getppid() == parent:
        try:
            out.write(sock.recv(65536) + b"\\n")
        except TimeoutError:
            pass
"""


def test_syslog_once_the_tunnel_is_up(lab: Lab) -> None:
    """In the client's mount namespace, /dev is an overlay with a /dev/log of the test's
    own (the host's /dev is not touched): a collector stands in for syslogd."""
    work = Path(lab.workdir)
    for name in ("dev-upper", "dev-work"):
        (work / name).mkdir()
    (work / "collector.py").write_text(COLLECTOR)
    received, stderr = work / "syslog.txt", work / "stderr.txt"
    argv = " ".join(
        [SEPCONNECT, "connect", *_state(lab), "--syslog", "-v", "--passwd-on-stdin", "-u", "test",
         "--servercert", lab.server_cert_pin, lab.url]
    )  # fmt: skip
    shell = (
        f"mount -t overlay overlay -o lowerdir=/dev,upperdir={work}/dev-upper,"
        f"workdir={work}/dev-work /dev && "
        f"{{ python3 -I {work}/collector.py {received} & }} && "
        "while [ ! -S /dev/log ]; do sleep 0.05; done && "
        f"exec {argv} 2> {stderr}"
    )
    proc = lab.popen_in(lab.client_ns, "sh", "-c", shell, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(f"{lab.users['test']}\n".encode())
    proc.stdin.close()
    proc.stdin = None
    lab.wait_for("the tunnel", lambda: lab.client_tun() is not None or None, timeout=15)
    lab.wait_for("syslog", lambda: received.exists() and received.stat().st_size or None)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    lab.wait_for("the last record", lambda: b"session closed" in received.read_bytes() or None)
    records = received.read_text().splitlines()
    # daemon.info, the supervisor's pid, every process's lines
    assert all(re.match(rf"<30>\w{{3}} [ \d]\d [\d:]{{8}} sepconnect\[{proc.pid}\]: ", r)
               for r in records), records  # fmt: skip
    text = stderr.read_text()
    assert "sepconnect: worker 1 started" in text  # before the tunnel: standard error
    assert "session closed" not in text
    assert "SIGINT: disconnecting" not in text
    assert any("SIGINT: disconnecting" in r for r in records)
