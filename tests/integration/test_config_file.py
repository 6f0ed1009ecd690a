"""`sepconnect connect --config FILE` against ocserv, as the all-in-one unit starts it
(issue 14, item 5): options from the file take effect, options after it on the command
line win, and a bad line stops the launcher before anything starts. The split units'
case: test_split_units.py::test_the_session_unit_from_a_config_file_and_a_systemd_credential."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_connect import SEPCONNECT, Client

from lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.netns]


def _config(lab: Lab, text: str) -> str:
    path = Path(lab.workdir, f"kiosk-{time.monotonic_ns()}.conf")
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def test_a_session_takes_its_options_from_the_config_file(lab: Lab) -> None:
    credential = Path(lab.workdir, "kiosk.cred")
    credential.write_text(lab.users["test"] + "\n")
    credential.chmod(0o600)
    conf = _config(
        lab,
        f"# as openconnect writes it\nuser nobody-here\nno-dtls\ncredentials-file={credential}\n",
    )
    # the command line's --user, after --config, wins: the login works
    client = Client(lab, "--config", conf, "--user", "test", user="", passwd_on_stdin=False)
    client.wait_connected()
    time.sleep(2)  # DTLS, were it allowed, is up within a second in the lab (test_dtls.py)
    status = json.loads(
        lab.run_in(lab.client_ns, SEPCONNECT, "status", "--json", "--socket", client.control).stdout
    )
    assert status["channel"] == "tls"  # no-dtls, from the file
    assert client.stop() == 0, client.stderr


def test_a_bad_line_stops_the_launcher_before_anything_starts(lab: Lab) -> None:
    conf = _config(lab, "user test\nno-dtls yes\n")
    client = Client(lab, "--config", conf, user="")
    assert client.finish() == 2
    assert client.stderr == f"sepconnect: {conf}:2: no-dtls takes no value\n"
    assert lab.client_tun() is None
