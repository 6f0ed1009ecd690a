"""Start-up helpers that replace third-party or stdlib conveniences to save memory:
process titles (process/title.py), the help formatter (process/helpformat.py),
the worker's command line (worker/main.py) and its first module (worker/boot.py), the
helper's netlink client (privhelper/network.py: pyroute2's messages without its package)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from sepconnect.process.helpformat import HelpFormatter
from sepconnect.worker.main import _parse_argv


def _in_child(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-I", "-c", code], check=True, capture_output=True, text=True
    ).stdout


def test_title_shows_in_cmdline_and_comm() -> None:
    out = _in_child(
        "from sepconnect.process.title import set_title\n"
        "set_title('sepconnect: worker')\n"
        "print(repr(open('/proc/self/cmdline', 'rb').read()))\n"
        "print(open('/proc/self/comm').read().strip())\n"
    )
    cmdline, comm = out.splitlines()
    raw = eval(cmdline)  # noqa: S307 - our own child's repr of a bytes object
    assert raw.startswith(b"sepconnect: worker\0")
    assert raw.strip(b"\0") == b"sepconnect: worker"  # the rest of the area is padding
    assert comm == "sepconnect: wor"  # PR_SET_NAME keeps 15 bytes


def test_title_longer_than_argv_is_cut_inside_the_area() -> None:
    out = _in_child(
        "from sepconnect.process.title import _argv_area, set_title\n"
        "start, end = _argv_area()\n"
        "set_title('x' * 10000)\n"
        "raw = open('/proc/self/cmdline', 'rb').read()\n"
        "print(end - start, len(raw.rstrip(b'\\0')))\n"
    )
    size, shown = map(int, out.split())
    assert shown == size - 1  # never past arg_end, and the last byte stays NUL


def test_no_setproctitle_or_shutil_at_start() -> None:
    out = _in_child(
        "import sys\n"
        "import sepconnect.cli, sepconnect.worker.main, sepconnect.privhelper.main as helper\n"
        "sepconnect.cli._parser().parse_args(['connect', 'https://vpn.example/'])\n"
        "helper.parse_args(['--fd', '3', '--peer-uid', '1'])\n"
        "print(sorted(m for m in ('setproctitle', 'shutil', 'bz2', 'lzma') if m in sys.modules))\n"
    )
    assert out.strip() == "[]"


def test_the_helpers_start_stage_loads_no_optional_part() -> None:
    """What only options or a crashed session need (runners, reading crashed state), and
    the worker's part of the seccomp binding, are not imported with the start stage
    (docs/security.md, "The trusted base, counted")."""
    out = _in_child(
        "import sys\n"
        "import sepconnect.privhelper.main\n"
        "print(sorted(m for m in ('sepconnect.privhelper.runners', 'sepconnect.process.statedir',"
        " 'sepconnect.process.seccomp', 'sepconnect.process.privileges') if m in sys.modules))\n"
    )
    assert out.strip() == "[]"


PYROUTE2_HEAVY = ("asyncio", "sqlite3", "ssl", "multiprocessing", "ctypes", "pyroute2.ndb")


@pytest.mark.parametrize(("imported", "heavy"), [("pyroute2", True), ("", False)])
def test_the_helper_loads_pyroute2_messages_without_the_package_init(
    imported: str, heavy: bool
) -> None:
    """``import pyroute2`` runs its __init__ (NDB, asyncio, sqlite3, ...: ~24 MB, ~110 ms);
    network.py registers the package without it and uses only the message classes. The
    first case (the whole package, imported first) shows what the check would see."""
    out = _in_child(
        "import sys\n"
        + (f"import {imported}\n" if imported else "")
        + "from sepconnect.privhelper import network\n"
        "msg = network._rt.rtmsg()\n"
        "msg['family'] = 2\n"
        "msg.encode()\n"
        f"print(sorted(m for m in {PYROUTE2_HEAVY!r} if m in sys.modules))\n"
    )
    assert (out.strip() != "[]") is heavy, out


@pytest.mark.parametrize("columns", ["50", "123"])
def test_help_formatter_width_as_argparse(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    ours = HelpFormatter("prog")
    theirs = argparse.HelpFormatter("prog")
    assert ours._width == theirs._width
    assert ours._max_help_position == theirs._max_help_position


def test_worker_argv() -> None:
    assert _parse_argv(["--fd", "7"]) == (7, False)
    assert _parse_argv(["--fd=7", "--allow-weak-sandbox"]) == (7, True)
    assert _parse_argv(["--allow-weak-sandbox", "--fd", "3"]) == (3, True)
    for bad in ([], ["--fd"], ["--fd", "x"], ["--fd", "-1"], ["--fd", "3", "--other"], ["3"]):
        with pytest.raises(ValueError, match="fd|argument"):
            _parse_argv(bad)


def test_worker_program_maps_the_system_libcrypto_only_for_the_accelerator() -> None:
    # hashlib never loads it (_hashlib is blocked); the compiled accelerator links it
    # for AES-GCM (worker/_accel.c), so only with the accelerator is it mapped.
    out = _in_child(
        "import sys\n"
        "sys.argv = ['sepconnect-worker', '--fd', 'bad']\n"
        "from sepconnect.worker import boot\n"
        "assert boot.main() == 2\n"
        "import hashlib\n"
        "print(hashlib.sha1(b'abc').hexdigest())\n"
        "print(sys.modules['_hashlib'])\n"
        "from sepconnect.worker import accel\n"
        "print(accel.IMPLEMENTATION)\n"
        "print('libcrypto.so' in open('/proc/self/maps').read())\n"
    )
    digest, hashlib_backend, implementation, mapped = out.split()
    assert digest == "a9993e364706816aba3e25717850c26c9cd0d89d"  # FIPS 180-2 "abc"
    assert hashlib_backend == "None"
    assert mapped == str(implementation == "compiled")


def test_spawner_starts_its_first_worker_before_typing_re_or_subprocess() -> None:
    # spawner/boot.py forks the first worker after these imports only: each module here
    # delays the worker, the longest item of the connect time
    out = _in_child(
        "import sys\n"
        "import sepconnect.spawner.boot\n"
        "print(sorted(m for m in ('typing', 're', 'subprocess', 'socket', 'dataclasses',\n"
        "                         'msgpack') if m in sys.modules))\n"
    )
    assert out.strip() == "[]"
