"""The trusted base, counted from the real processes (issue 13, item 9; DESIGN.md §1).

A real `sepconnect connect` in the lab, under `strace -f` (only ``openat``, ``execve``,
``setresuid`` and the fork-like calls are traced): the modules of the package each
process loads are the bytecode files it opens (tests/codelines.py). Two numbers for a
default connect (no ``--script``, no ``--fail-closed``, ``--dns-backend none``): the
code lines the helper process loads (its serving stage: what it runs after its last
exec, for the session's life), and those of everything that ever runs with uid 0 or a
capability, counted across execs (the launcher until it drops root, every child it
forks while root until that one drops, and the helper's two stages). The helper's start
stage gets a row of its own: what it loads beyond the serving stage's modules. A second
connect with both optional privileged processes (``--fail-closed --dns-backend file``:
the nft runner and the root runner) measures them; the optional helper modules no
connect here loads (the resolved client, the vpnc-script's runs, crash recovery) are
counted from their files.
docs/security.md lists every number; this test keeps it honest.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from codelines import TRACED, Process, code_lines, module_name, total, trace_session
from test_connect import SEPCONNECT, Client

from sepconnect import privhelper

from lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
HELPER_BUDGET = 900
PRIVILEGED_BUDGET = 1500
HELPER_PROGRAMS = ("sepconnect-privhelper", "sepconnect.privhelper")
SERVING_STAGE = ("sepconnect-privhelper-serve", "sepconnect.privhelper.serve")
OPTIONAL = (
    "sepconnect.privhelper.dns",
    "sepconnect.privhelper.firewall",
    "sepconnect.privhelper.nft",
    "sepconnect.privhelper.options_helper",
    "sepconnect.privhelper.recovery",
    "sepconnect.privhelper.script",
    "sepconnect.privhelper.selftest",
    "sepconnect.privhelper.serve_options",
    "sepconnect.process.runner",
    "sepconnect.rootrunner",
)


def traced(lab: Lab, *args: str) -> dict[int, Process]:
    """One connect and disconnect under strace; every process of it."""
    trace = Path(lab.workdir, f"trace-{len(list(Path(lab.workdir).glob('trace-*')))}")
    strace = ("strace", "-f", "-qq", "-s", "400", "-e", "signal=none")
    strace += ("-e", f"trace={TRACED}", "-o", str(trace))
    client = Client(lab, *args, prefix=strace)
    try:
        client.wait_connected(timeout=60)
        assert lab.run_in(lab.client_ns, SEPCONNECT, "disconnect", "--socket", client.control)
        assert client.finish(timeout=60) == 0, client.stderr
    finally:
        if client.proc.poll() is None:
            client.proc.send_signal(signal.SIGKILL)  # strace: the one process we started
            client.proc.wait()
    if "SEPCONNECT_TEST_KEEP_TRACES" in os.environ:  # a directory, for `codelines.py TRACE`
        shutil.copy(trace, Path(os.environ["SEPCONNECT_TEST_KEEP_TRACES"], trace.name))
    return trace_session(trace.read_text())


def one(processes: dict[int, Process], *programs: str) -> Process:
    (found,) = [p for p in processes.values() if p.program in programs]
    return found


@pytest.fixture(scope="module")
def sessions() -> Iterator[tuple[dict[int, Process], dict[int, Process]]]:
    with Lab() as lab:
        yield (
            traced(lab, "--dns-backend", "none"),
            traced(lab, "--dns-backend", "file", "--fail-closed"),
        )


def start_stage(helper: Process) -> list[Path]:
    """What the helper's start stage loaded (before it executed the serving stage)."""
    (modules,) = [m for program, m in helper.stages if program in HELPER_PROGRAMS]
    return modules


def measured(sessions: tuple[dict[int, Process], dict[int, Process]]) -> dict[str, int]:
    default, full = sessions
    helper = one(default, *SERVING_STAGE)
    helper_full = one(full, *SERVING_STAGE)
    return {
        "the helper process in a default connect": total(helper.modules),
        "the helper's start stage": total(set(start_stage(helper)) - set(helper.modules)),
        "everything with uid 0 or a capability in a default connect": total(
            {m for p in default.values() for m in p.privileged}
        ),
        "the launcher's root phase": total(one(default, "sepconnect").privileged),
        "what the helper adds for the options": total(
            set(helper_full.privileged) - set(helper.privileged)
        ),
        "the nft runner process": total(one(full, "sepconnect-nft-runner").modules),
        "the root runner process": total(one(full, "sepconnect-rootrunner").modules),
    }


def test_a_default_connect_loads_no_optional_part(
    sessions: tuple[dict[int, Process], dict[int, Process]],
) -> None:
    default, full = sessions
    names = {p.program for p in default.values() if p.program}
    assert "sepconnect-rootrunner" not in names
    assert "sepconnect-nft-runner" not in names
    serving = one(default, *SERVING_STAGE)
    helper = [module_name(m) for m in serving.privileged]
    assert not [m for m in helper if m.startswith(OPTIONAL)], helper
    # The trace sees the helper's code, the start stage's too, across the exec ...
    assert "sepconnect.privhelper.policy" in [module_name(m) for m in serving.modules]
    assert "sepconnect.privhelper.main" in [module_name(m) for m in start_stage(serving)]
    assert "sepconnect.privhelper.main" not in [module_name(m) for m in serving.modules]
    # ... and with the options, their parts are loaded (so the first check can fail).
    with_options = [module_name(m) for m in one(full, *SERVING_STAGE).privileged]
    assert "sepconnect.privhelper.firewall" in with_options
    assert one(full, "sepconnect-rootrunner").modules
    launcher = [module_name(m) for m in one(default, "sepconnect").privileged]
    assert "sepconnect.rootstage" in launcher
    assert not [m for m in launcher if m.startswith("sepconnect.supervisor")], launcher


def test_docs_list_the_measured_sizes(
    sessions: tuple[dict[int, Process], dict[int, Process]],
) -> None:
    text = DOCS.read_text()
    numbers = measured(sessions)
    # The parts no traced connect loads (the second one runs no script, recovers nothing).
    for part, module in (
        ("the systemd-resolved client (`privhelper/dns.py`)", "dns.py"),
        ("the vpnc-script's runs (`privhelper/script.py`)", "script.py"),
        ("crash recovery (`privhelper/recovery.py`)", "recovery.py"),
    ):
        numbers[part] = code_lines(Path(privhelper.__file__).parent / module)
    wrong = {}
    for part, lines in numbers.items():
        row = re.search(rf"^\| {re.escape(part)} \|[^|]*\| ([\d,]+) \|", text, re.M)
        assert row, f"docs/security.md has no row for {part!r} ({lines} code lines)"
        if int(row.group(1).replace(",", "")) != lines:
            wrong[part] = lines
    assert not wrong, f"docs/security.md should say: {wrong}"


@pytest.mark.xfail(
    strict=True,
    reason="issue 13, item 9 is open: the numbers are in docs/security.md, "
    "'The trusted base, counted'",
)
def test_the_trusted_base_is_within_its_budget(
    sessions: tuple[dict[int, Process], dict[int, Process]],
) -> None:
    numbers = measured(sessions)
    assert numbers["the helper process in a default connect"] <= HELPER_BUDGET
    assert (
        numbers["everything with uid 0 or a capability in a default connect"] <= PRIVILEGED_BUDGET
    )
