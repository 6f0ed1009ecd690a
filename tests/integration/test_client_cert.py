"""Client certificates (-c/--certificate, -k/--sslkey, the key's password) against ocserv:
every file form, certificate alone and with a password, the group from the certificate,
and where the key goes (read as root by the launcher, carried in memory to the worker,
never opened by the worker, never logged)."""

from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_connect import AUTH_FAILED, USAGE, Client, _status, _title

from lab import Lab, OcservOptions, descendants

pytestmark = [pytest.mark.root, pytest.mark.netns]

CERT_ONLY = OcservOptions(auth=("certificate",))
KEY_PASSWORD = "k3y pass-phrase"


def _openssl(lab: Lab, *argv: str) -> None:
    lab.run_in(lab.client_ns, "openssl", *argv)


def _private(path: str) -> str:
    os.chmod(path, 0o600)
    return path


def _user_of(lab: Lab) -> dict[str, Any]:
    users = json.loads(lab.occtl("-j", "show", "users"))
    assert len(users) == 1, users
    return dict(users[0])


def _connects(lab: Lab, *args: str, password: str | None = None, user: str = "") -> Client:
    client = Client(lab, *args, user=user, password=password)
    client.wait_connected()
    return client


def _forms(lab: Lab) -> dict[str, tuple[list[str], str | None]]:
    """Each file form openconnect takes: the options and what stdin carries first."""
    w = lab.workdir
    ec_cert, ec_key = lab.make_client_cert("ec")  # certtool: PEM, SEC1 key
    rsa_cert, rsa_key = lab.make_client_cert("rsa", key_type="rsa")  # PEM, PKCS#1 key
    _openssl(lab, "x509", "-in", ec_cert, "-outform", "DER", "-out", f"{w}/ec-cert.der")
    _openssl(lab, "pkey", "-in", ec_key, "-outform", "DER", "-out", f"{w}/ec-key.der")
    _openssl(
        lab, "pkcs8", "-topk8", "-in", rsa_key, "-v2", "aes-256-cbc",
        "-passout", f"pass:{KEY_PASSWORD}", "-out", f"{w}/rsa-key.p8.pem",
    )  # fmt: skip
    _openssl(
        lab, "pkcs8", "-topk8", "-in", ec_key, "-v2", "aes-128-cbc", "-outform", "DER",
        "-passout", f"pass:{KEY_PASSWORD}", "-out", f"{w}/ec-key.p8.der",
    )  # fmt: skip
    _openssl(
        lab, "pkcs12", "-export", "-in", rsa_cert, "-inkey", rsa_key, "-certfile", lab.ca_file,
        "-passout", f"pass:{KEY_PASSWORD}", "-out", f"{w}/rsa.p12",
    )  # fmt: skip
    Path(w, "ec-bundle.pem").write_bytes(Path(ec_cert).read_bytes() + Path(ec_key).read_bytes())
    password_file = Path(w, "key-password")
    password_file.write_text(KEY_PASSWORD + "\n")
    for name in ("ec-key.der", "rsa-key.p8.pem", "ec-key.p8.der", "rsa.p12", "ec-bundle.pem"):
        _private(f"{w}/{name}")
    _private(str(password_file))
    return {
        "PEM, EC key (SEC1)": (["-c", ec_cert, "-k", ec_key], None),
        "PEM, RSA key (PKCS#1)": (["-c", rsa_cert, "-k", rsa_key], None),
        "DER, PKCS#8": (["-c", f"{w}/ec-cert.der", "-k", f"{w}/ec-key.der"], None),
        "PKCS#8 encrypted, --key-password": (
            ["-c", rsa_cert, "-k", f"{w}/rsa-key.p8.pem", "--key-password", KEY_PASSWORD],
            None,
        ),
        "PKCS#8 encrypted DER, --key-password-file": (
            ["-c", ec_cert, "-k", f"{w}/ec-key.p8.der", "--key-password-file", str(password_file)],
            None,
        ),
        "PKCS#12, --key-password-on-stdin": (
            ["-c", f"{w}/rsa.p12", "--key-password-on-stdin"],
            KEY_PASSWORD,
        ),
        "PEM certificate and key in one file": (["-c", f"{w}/ec-bundle.pem"], None),
    }


def test_every_certificate_form_logs_in_alone(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    # auth = "certificate": no user name, no password; ocserv takes the user from the UID.
    lab = lab_factory(CERT_ONLY)
    for form, (args, stdin_first) in _forms(lab).items():
        client = _connects(lab, *args, password=stdin_first)
        user = _user_of(lab)
        assert user["Username"] == "test", (form, user)
        assert client.stop() == 0, (form, client.stderr)
        lab.wait_for(
            "ocserv to drop the session",
            lambda: json.loads(lab.occtl("-j", "show", "users")) == [] or None,
        )


def test_without_a_certificate_a_certificate_server_refuses(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    lab = lab_factory(CERT_ONLY)
    client = Client(lab, user="")
    rc = client.finish()
    assert rc == AUTH_FAILED, (rc, client.stderr)
    assert "Traceback" not in client.stderr


def test_certificate_and_password_both_required(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    # auth = "certificate" and auth = "plain[...]": both must succeed.
    lab = lab_factory(OcservOptions(auth=("certificate", "plain")))
    cert, key = lab.make_client_cert("both")
    client = _connects(lab, "-c", cert, "-k", key, user="test")
    assert _user_of(lab)["Username"] == "test"
    assert client.stop() == 0, client.stderr
    wrong = Client(lab, "-c", cert, "-k", key, user="test", password="not-the-password")
    assert wrong.finish() == AUTH_FAILED, wrong.stderr
    no_cert = Client(lab, user="test")
    assert no_cert.finish() == AUTH_FAILED, no_cert.stderr


def test_certificate_alone_where_it_is_an_alternative(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    # auth = "plain[...]" with enable-auth = "certificate": the certificate is enough.
    lab = lab_factory(OcservOptions(auth=("plain",), enable_auth=("certificate",)))
    cert, key = lab.make_client_cert("alt")
    client = _connects(lab, "-c", cert, "-k", key)
    assert _user_of(lab)["Username"] == "test"
    assert client.stop() == 0, client.stderr


def test_group_from_the_certificate(lab_factory: Callable[[OcservOptions], Lab]) -> None:
    # cert-group-oid = OU: ocserv asks which of the certificate's groups; with one, that
    # one; with several, --authgroup chooses among them.
    lab = lab_factory(OcservOptions(auth=("certificate",), cert_groups=True))
    cert, key = lab.make_client_cert("one", groups=("engineering",))
    client = _connects(lab, "-c", cert, "-k", key)
    assert _user_of(lab)["Groupname"] == "engineering"
    assert client.stop() == 0, client.stderr
    lab.wait_for(
        "ocserv to drop the session",
        lambda: json.loads(lab.occtl("-j", "show", "users")) == [] or None,
    )
    cert, key = lab.make_client_cert("two", groups=("engineering", "sales"))
    client = _connects(lab, "-c", cert, "-k", key, "--authgroup", "sales")
    assert _user_of(lab)["Groupname"] == "sales"
    assert client.stop() == 0, client.stderr


# --------------------------------------------------------------------------- refusals


def _refused(lab: Lab, *args: str, pattern: str, code: int = USAGE) -> str:
    client = Client(lab, *args, user="")
    rc = client.finish()
    assert rc == code, (rc, client.stderr)
    lines = client.stderr.strip().splitlines()
    assert len(lines) == 1, client.stderr  # one line, no traceback
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_a_key_file_others_can_read_or_own_is_refused(lab: Lab) -> None:
    cert, key = lab.make_client_cert("loose")
    os.chmod(key, 0o640)
    _refused(lab, "-c", cert, "-k", key, pattern=r"^sepconnect: -k/--sslkey .*mode 0600.*0640")
    os.chmod(key, 0o600)
    os.chown(key, 65534, 65534)
    _refused(lab, "-c", cert, "-k", key, pattern=r"owned by root.*uid 65534")
    bundle = Path(lab.workdir, "loose-bundle.pem")
    bundle.write_bytes(Path(cert).read_bytes() + Path(key).read_bytes())
    bundle.chmod(0o644)
    _refused(lab, "-c", str(bundle), pattern=r"^sepconnect: -c/--certificate .*private key")
    link = Path(lab.workdir, "key-link.pem")
    os.chown(key, 0, 0)
    link.symlink_to(key)
    _refused(lab, "-c", cert, "-k", str(link), pattern=r"-k/--sslkey .*symbolic links")


def test_wrong_or_missing_key_password(lab_factory: Callable[[OcservOptions], Lab]) -> None:
    lab = lab_factory(CERT_ONLY)
    cert, key = lab.make_client_cert("enc")
    encrypted = f"{lab.workdir}/enc.p8.pem"
    _openssl(
        lab, "pkcs8", "-topk8", "-in", key, "-v2", "aes-256-cbc",
        "-passout", f"pass:{KEY_PASSWORD}", "-out", encrypted,
    )  # fmt: skip
    os.chmod(encrypted, 0o600)
    wrong = Client(lab, "-c", cert, "-k", encrypted, "--key-password", "nope", user="")
    assert wrong.finish() == USAGE, wrong.stderr
    assert "client certificate: the key password is wrong" in wrong.stderr
    missing = Client(lab, "-c", cert, "-k", encrypted, user="")
    assert missing.finish() == USAGE, missing.stderr
    assert "the key is encrypted: give its password" in missing.stderr
    assert "Traceback" not in wrong.stderr + missing.stderr


def test_a_pkcs11_uri_is_refused_with_the_reason(lab: Lab) -> None:
    _refused(
        lab, "-c", "pkcs11:token=lab;object=client", pattern=r"PKCS#11 tokens are not supported"
    )


# --------------------------------------------------------------------------- where the key goes

IN_OPEN, IN_NONBLOCK = 0x20, 0o4000
_LIBC = ctypes.CDLL(None, use_errno=True)


def _watch_opens(path: str) -> int:
    """An inotify fd that records every open(2) of ``path``, by anyone."""
    fd = int(_LIBC.inotify_init1(IN_NONBLOCK))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    assert _LIBC.inotify_add_watch(fd, path.encode(), IN_OPEN) >= 0
    return fd


def _opens(fd: int) -> int:
    count = 0
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return 0
    pos = 0
    while pos < len(data):
        _, mask, _, length = struct.unpack_from("iIII", data, pos)
        count += bool(mask & IN_OPEN)
        pos += 16 + length
    return count


def test_the_key_reaches_the_worker_only_in_memory(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    lab = lab_factory(CERT_ONLY)
    cert, key = lab.make_client_cert("mem", key_type="rsa")
    encrypted = f"{lab.workdir}/mem.p8.pem"
    _openssl(
        lab, "pkcs8", "-topk8", "-in", key, "-v2", "aes-256-cbc",
        "-passout", f"pass:{KEY_PASSWORD}", "-out", encrypted,
    )  # fmt: skip
    os.chmod(encrypted, 0o600)
    # the base64 lines of both keys' PEM blocks (certtool writes a description before its own)
    pem_lines = [
        line.encode()
        for path in (key, encrypted)
        for line in re.findall(r"(?m)^[A-Za-z0-9+/=]{40,}$", Path(path).read_text())
    ]
    assert len(pem_lines) > 20
    watch = _watch_opens(encrypted)
    try:
        client = Client(
            lab, "-c", cert, "-k", encrypted, "--key-password-on-stdin", "-vvvv",
            user="", password=KEY_PASSWORD,
        )  # fmt: skip
        client.wait_connected()
        workers = [p for p in descendants(client.proc.pid) if "worker" in _title(p)]
        assert len(workers) == 1
        worker = workers[0]
        # The worker's uid could not read the file even if its sandbox let it try.
        uid = int(_status(worker)["Uid"].split()[0])
        assert uid != 0
        opened_by_worker_uid = os.fork()
        if opened_by_worker_uid == 0:  # child: become the worker's uid and try
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                os.open(encrypted, os.O_RDONLY)
                os._exit(1)
            except PermissionError:
                os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(opened_by_worker_uid, 0)[1]) == 0
        # Neither its command line nor its environment names the key or carries it.
        cmdline = Path(f"/proc/{worker}/cmdline").read_bytes()
        environ = Path(f"/proc/{worker}/environ").read_bytes()
        for blob in (cmdline, environ):
            assert encrypted.encode() not in blob
            assert key.encode() not in blob
            assert KEY_PASSWORD.encode() not in blob
            assert not [line for line in pem_lines if line in blob]
        assert client.stop() == 0, client.stderr
    finally:
        opens = _opens(watch)
        os.close(watch)
    # One open of the key file in the whole run: the launcher's, as root.
    assert opens == 1, opens
    logs = client.stderr.encode() + Path(client.session_log).read_bytes()
    logs += Path(client.audit_log).read_bytes()
    assert KEY_PASSWORD.encode() not in logs
    assert not [line for line in pem_lines if line in logs]
    assert encrypted.encode() not in logs


# --------------------------------------------------------------------------- PKCS#11

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PKCS11_ATTEMPT = Path(__file__).parent.parent / "pkcs11_attempt.py"


def test_a_key_in_a_pkcs11_token_works_with_gnutls_not_with_our_tls_library(
    lab_factory: Callable[[OcservOptions], Lab],
) -> None:
    """The evidence for docs/usage.md: a SoftHSM2 token (as openconnect's own tests use)
    holding the lab client's key and certificate. openconnect, which does TLS with GnuTLS
    and reaches tokens through p11-kit, logs in with it; sepconnect refuses the URI. The
    OpenSSL that pyOpenSSL uses is cryptography's own (4.x): no ENGINE API (gone in
    OpenSSL 4), and neither OSSL_PROVIDER_load nor the OSSL_STORE calls in its bindings;
    the key loaded by the system's OpenSSL 3 with the pkcs11 engine is a structure of
    another library, which its SSL_CTX_use_PrivateKey refuses."""
    lab = lab_factory(CERT_ONLY)
    cert, key = lab.make_client_cert("token")
    tokens = Path(lab.workdir, "tokens")
    tokens.mkdir()
    conf = Path(lab.workdir, "softhsm2.conf")
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}

    def run(*argv: str) -> str:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
        return result.stdout

    run("softhsm2-util", "--init-token", "--free", "--label", "lab", "--so-pin", "12345678",
        "--pin", "1234")  # fmt: skip
    pkcs8 = str(Path(lab.workdir, "token-key.p8.pem"))
    run("openssl", "pkey", "-in", key, "-out", pkcs8)
    run("softhsm2-util", "--import", pkcs8, "--token", "lab", "--label", "client", "--id", "01",
        "--pin", "1234")  # fmt: skip
    der = str(Path(lab.workdir, "token-cert.der"))
    run("openssl", "x509", "-in", cert, "-outform", "DER", "-out", der)
    run("pkcs11-tool", "--module", SOFTHSM_MODULE, "--login", "--pin", "1234",
        "--write-object", der, "--type", "cert", "--id", "01", "--label", "client")  # fmt: skip
    uri = "pkcs11:token=lab;object=client"
    os.unlink(pkcs8)  # from here on the key is only in the token

    reference = lab.popen_in(
        lab.client_ns, "openconnect", "--non-inter", "--servercert", lab.server_cert_pin,
        "--script", lab.vpnc_script, "-c", f"{uri};pin-value=1234", lab.url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    lab.wait_for("openconnect's tunnel with the token's key", lab.client_tun, timeout=20)
    assert _user_of(lab)["Username"] == "test"
    reference.terminate()
    reference.communicate(timeout=20)

    _refused(lab, "-c", uri, pattern=r"PKCS#11 tokens are not supported")

    venv_python = Path(os.environ.get("SEPCONNECT_VENV", "/opt/sepconnect-venv"), "bin/python")
    facts = run(str(venv_python), str(PKCS11_ATTEMPT), f"{uri};type=private", cert, SOFTHSM_MODULE)
    assert re.search(r"TLS library: OpenSSL [4-9]\.", facts), facts
    for name in ("ENGINE_by_id", "OSSL_PROVIDER_load", "OSSL_STORE_open", "OSSL_STORE_load"):
        assert f"{name} in its bindings: False" in facts, facts
    assert re.search(r"key from the token \(EVP_PKEY of the system libcrypto\): 0x[1-9a-f]", facts)
    assert "SSL_CTX_use_PrivateKey returned 0" in facts, facts
