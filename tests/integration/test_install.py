"""The install step (scripts/install-system.sh) into a scratch root (issue 14, item 7):
the programs where the units expect them, the accounts, directories and helper.env; then
systemd's own `systemd-analyze verify` of every unit against that root (which fails on a
program the unit names that is not there)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from test_connect import VENV
from test_routes_dns import ACCOUNT_FILES, REPO, account

pytestmark = [pytest.mark.root]

PROGRAMS = ("sepconnect", "sepconnect-privhelper", "sepconnect-privhelper-serve",
            "sepconnect-spawner", "sepconnect-worker", "sepconnect-rootrunner",
            "sepconnect-nft-runner")  # fmt: skip
INSTALL = str(REPO / "scripts" / "install-system.sh")


def install(prefix: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INSTALL, "--prefix", str(prefix), "--venv", VENV, *args],
        capture_output=True, text=True, check=check, timeout=60,
    )  # fmt: skip


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ACCOUNT_FILES:
        shutil.copy2(Path("/etc", name), root / "etc" / name)
    return root


def verify(prefix: Path, unit: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify --root=PREFIX UNIT`, in a private mount namespace where
    PREFIX has the venv at its real path (the links name it) and this host's own units
    (sysinit.target and the rest that every service depends on)."""
    script = (
        'set -e; mkdir -p "$1$2" "$1/usr/lib/systemd/system"; '
        'mount --bind "$2" "$1$2"; mount --bind /lib/systemd/system "$1/usr/lib/systemd/system"; '
        'exec systemd-analyze verify --man=no --root="$1" "$3"'
    )
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
         str(prefix), VENV, unit],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_install_step_puts_programs_accounts_and_files_where_the_units_expect_them(
    prefix: Path,
) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (scripts/bootstrap.sh installs systemd)")
    before = {unit: verify(prefix, unit) for unit in ("sepconnect@kiosk.service",)}
    assert before["sepconnect@kiosk.service"].returncode != 0  # nothing installed yet
    out = install(prefix).stdout
    assert f"/usr/bin/sepconnect* -> {VENV}/bin/" in out
    for program in PROGRAMS:
        link = prefix / "usr" / "bin" / program
        assert os.readlink(link) == f"{VENV}/bin/{program}"
        assert os.access(link, os.X_OK)
    uid, _ = account(prefix, "sepconnect")
    for name in ("sepconnect-worker", "sepconnect-helper"):
        account(prefix, name)  # KeyError if missing
    assert (prefix / "etc/sepconnect/helper.env").read_text() == f"SEPCONNECT_UID={uid}\n"
    for directory, mode in (("etc/sepconnect", 0o755), ("var/log/sepconnect", 0o700)):
        st = (prefix / directory).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), directory
    shipped = {p.name for p in (REPO / "systemd").iterdir() if p.suffix in (".service", ".socket")}
    assert {p.name for p in (prefix / "etc/systemd/system").iterdir()} == shipped
    tmpfiles = (prefix / "etc/tmpfiles.d/sepconnect.conf").read_text()
    assert "\nd /run/sepconnect 0755 root root -\n" in tmpfiles
    assert (prefix / "usr/share/doc/sepconnect/security.md").is_file()  # Documentation=
    for unit in ("sepconnect@kiosk.service", "sepconnect-session@kiosk.service",
                 "sepconnect-helper@0.service", "sepconnect-spawner@0.service",
                 "sepconnect-helper.socket", "sepconnect-spawner.socket"):  # fmt: skip
        result = verify(prefix, unit)
        assert result.returncode == 0, (unit, result.stdout + result.stderr)
    # Idempotent; and a program that is a file of someone else's is never replaced.
    install(prefix)
    assert os.readlink(prefix / "usr/bin/sepconnect") == f"{VENV}/bin/sepconnect"
    (prefix / "usr/bin/sepconnect-worker").unlink()
    (prefix / "usr/bin/sepconnect-worker").write_text("#!/bin/sh\n")
    refused = install(prefix, check=False)
    assert refused.returncode == 2
    assert "sepconnect-worker exists and is not our link; not replaced" in refused.stderr


def test_install_step_needs_the_venvs_programs(prefix: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [INSTALL, "--prefix", str(prefix), "--venv", str(tmp_path / "none")],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{tmp_path}/none/bin/sepconnect is missing" in result.stderr
