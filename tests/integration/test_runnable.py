"""Issue 14, item 9: a venv the unprivileged accounts cannot read (here: under a 0700
directory, as a venv under /root is) is refused by the launcher, as root, before anything
starts, with one line naming the account and what is in its way; it was a PermissionError
traceback from the first process that had dropped root. The checks ask the kernel as the
real uids (launcher/rootstage.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_connect import VENV

from sepconnect import rootstage

pytestmark = [pytest.mark.root]

WORKER = 65532  # the workers' fixed uid where there is no sepconnect-worker account


@pytest.fixture
def tmp_open() -> Iterator[Path]:
    """A scratch directory every account can enter (pytest's own is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="sepconnect-runnable-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def venv_under(directory: Path) -> Path:
    """The test venv again at DIRECTORY/venv, as a farm of symbolic links: its own
    pyvenv.cfg and bin/python, site-packages a link to the real one's (so every path the
    interpreter reports is under DIRECTORY)."""
    venv = directory / "venv"
    site = venv / "lib" / f"python{sysconfig.get_python_version()}"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    shutil.copy2(Path(VENV) / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "bin" / "python").symlink_to(os.path.realpath(Path(VENV) / "bin" / "python"))
    real_site = Path(VENV) / "lib" / f"python{sysconfig.get_python_version()}" / "site-packages"
    (site / "site-packages").symlink_to(real_site)
    return venv


def launch(venv: Path) -> subprocess.CompletedProcess[str]:
    # An IP literal (no lookup), and the launcher must stop before anything is started
    # or any packet sent.
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "sepconnect", "connect", "--servercert",
         "pin-sha256:xp3scfzy3rOgQEXnfPiYKrUk7D66a8b8O+gEXaMPleE=", "--dns-backend", "none",
         "--passwd-on-stdin", "--user", "u", "https://198.18.0.1/"],
        input="pw\n", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_a_venv_under_a_root_only_directory_is_refused_before_anything_starts(
    tmp_open: Path,
) -> None:
    hidden = tmp_open / "root-only"
    hidden.mkdir(mode=0o700)
    venv = venv_under(hidden)
    result = launch(venv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    worker = "sepconnect-worker" if _has_account("sepconnect-worker") else str(WORKER)
    assert result.stderr.startswith(f"sepconnect: the workers' account {worker} (uid "), (
        result.stderr
    )
    assert f"cannot run the installed programs: {hidden} (mode 0700) cannot be entered; " \
        "install sepconnect where every account can read it, e.g. /opt/sepconnect-venv " \
        "(docs/usage.md)\n" in result.stderr, result.stderr  # fmt: skip
    assert result.stderr.count("\n") == 1


def _has_account(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_the_check_asks_the_kernel_as_the_accounts_uid(tmp_open: Path) -> None:
    """Modes on every directory on the way, and ACLs, count as for the real process."""
    top = tmp_open / "top"
    top.mkdir(mode=0o755)
    program = top / "program"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert rootstage.ask_as(WORKER, WORKER, [(str(program), os.R_OK | os.X_OK)]) is None
    program.chmod(0o700)
    assert rootstage.ask_as(WORKER, WORKER, [(str(program), os.R_OK | os.X_OK)]) == (
        f"{program} (mode 0700) cannot be read and run"
    )
    program.chmod(0o755)
    top.chmod(0o700)
    assert rootstage.ask_as(WORKER, WORKER, [(str(program), os.X_OK)]) == (
        f"{top} (mode 0700) cannot be entered"
    )
    if shutil.which("setfacl") is not None:  # an ACL entry for the uid lets it through
        subprocess.run(["setfacl", "-m", f"u:{WORKER}:x", str(top)], check=True)
        assert rootstage.ask_as(WORKER, WORKER, [(str(program), os.X_OK)]) is None
        assert rootstage.ask_as(WORKER + 1, WORKER + 1, [(str(program), os.X_OK)]) == (
            f"{top} (mode 0710) cannot be entered"  # the mask shows in the group bits
        )
