"""Which servers the worker trusts: --cafile adds to the system store, --no-system-trust
takes the system store away, and every --servercert pin counts.

The system store the worker reads is /etc/ssl/certs/ca-certificates.crt. In the lab's
client namespace it is replaced by one that holds the lab's CA: `ip netns exec`
bind-mounts /etc/netns/<ns>/ssl over /etc/ssl for the commands it runs, so the host's
store is never touched."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_connect import CERT_INVALID, SEPCONNECT, USAGE, Client, _assert_clean_failure

from lab import NETNS_ETC, Lab

pytestmark = [pytest.mark.root, pytest.mark.netns]

WRONG_PIN = "pin-sha256:" + "A" * 43 + "="


def _other_ca(lab: Lab) -> str:
    """A CA that signed nothing the lab serves."""
    key, cert = Path(lab.workdir, "other-ca-key.pem"), Path(lab.workdir, "other-ca.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=other CA", "-days", "2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return str(cert)


@pytest.fixture
def lab_ca_is_a_system_ca(lab: Lab) -> Lab:
    """The lab's CA as the client namespace's whole system store."""
    certs = Path(NETNS_ETC, lab.client_ns, "ssl", "certs")
    certs.mkdir(parents=True)
    shutil.copy(lab.ca_file, certs / "ca-certificates.crt")
    return lab


def _without_pin(lab: Lab, *args: str) -> Client:
    # Client adds the lab's pin unless a --servercert or --cafile is given
    if not any(a.startswith("--cafile") for a in args):
        args = ("--cafile", _other_ca(lab), *args)
    return Client(lab, *args)


def test_cafile_adds_to_the_system_store(lab_ca_is_a_system_ca: Lab) -> None:
    lab = lab_ca_is_a_system_ca
    client = _without_pin(lab, "--cafile", _other_ca(lab))
    client.wait_connected()
    assert client.stop() == 0, client.stderr


def test_no_system_trust_leaves_only_the_cafile(lab_ca_is_a_system_ca: Lab) -> None:
    lab = lab_ca_is_a_system_ca
    refused = _without_pin(lab, "--cafile", _other_ca(lab), "--no-system-trust")
    _assert_clean_failure(lab, refused, CERT_INVALID, r"verification failed")
    client = _without_pin(lab, "--cafile", lab.ca_file, "--no-system-trust")
    client.wait_connected()
    assert client.stop() == 0, client.stderr


def test_no_system_trust_needs_something_to_trust(lab: Lab) -> None:
    result = lab.run_in(
        lab.client_ns, SEPCONNECT, "connect", "--no-system-trust", lab.url, check=False
    )
    assert result.returncode == USAGE
    assert result.stderr.decode().strip() == (
        "sepconnect: --no-system-trust needs --cafile (or --servercert): nothing is trusted"
    )
    pinned = Client(lab, "--no-system-trust", "--servercert", lab.server_cert_pin)
    pinned.wait_connected()  # a pin needs no CA
    assert pinned.stop() == 0, pinned.stderr


@pytest.mark.parametrize("order", ["right first", "right last"])
def test_every_servercert_pin_counts(lab: Lab, order: str) -> None:
    pins = [lab.server_cert_pin, WRONG_PIN]
    if order == "right last":
        pins.reverse()
    client = Client(lab, "--servercert", pins[0], "--servercert", pins[1])
    client.wait_connected()
    assert client.stop() == 0, client.stderr


def test_no_pin_matches(lab: Lab) -> None:
    wrong2 = "sha256:" + "00" * 32
    client = Client(lab, "--servercert", WRONG_PIN, "--servercert", wrong2)
    _assert_clean_failure(lab, client, CERT_INVALID, r"does not match --servercert")
