"""Shared pytest setup: privilege markers and the namespace lab fixtures.

- ``@pytest.mark.root``: skipped unless running as root.
- ``@pytest.mark.netns``: skipped unless ``ip netns add`` works here.
- ``lab``: a fresh :class:`lab.Lab` (tests/lab.py) with default :class:`OcservOptions`.
- ``lab_factory``: ``lab_factory(OcservOptions(...))`` or ``lab_factory(dpd=5)`` builds
  more labs; all are torn down after the test.

When a test that used a lab fails, the tail of each lab's ocserv log is added to the
report. Unit tests need none of this and run without root.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests import the lab as the top-level module `lab` (``from lab import Lab``). pytest's
# default "prepend" import mode already puts tests/ on sys.path for this conftest; make
# sure of it for other import modes too, so there is only ever one copy of the module.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from lab import Lab, OcservOptions, netns_unavailable_reason  # noqa: E402

# Hypothesis keeps its example database in the checkout; where that is not writable
# (the unit tests run as an unprivileged user), keep it in memory, said once, here.
if not os.access(Path(__file__).resolve().parent.parent, os.W_OK):
    from hypothesis import settings

    settings.register_profile("read-only-checkout", database=None)
    settings.load_profile("read-only-checkout")

LabFactory = Callable[..., Lab]
_LABS = pytest.StashKey[list[Lab]]()
_LOG_TAIL = 6000


@functools.cache
def _netns_skip_reason() -> str | None:
    return netns_unavailable_reason()


def _skip_without_netns() -> None:
    reason = _netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN)")
    if item.get_closest_marker("netns") is not None:
        _skip_without_netns()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for lab in item.stash.get(_LABS, []):
            report.sections.append((f"ocserv log ({lab.name})", lab.ocserv_log()[-_LOG_TAIL:]))
    return report


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    """Build labs on demand; every lab is torn down at the end of the test."""
    _skip_without_netns()
    labs: list[Lab] = []
    request.node.stash[_LABS] = labs

    def make(options: OcservOptions | None = None, /, **changes: Any) -> Lab:
        opts = options if options is not None else OcservOptions()
        if changes:
            opts = dataclasses.replace(opts, **changes)
        lab = Lab(opts)
        labs.append(lab)
        lab.start()  # on failure start() has already torn down what it built
        return lab

    yield make
    errors: list[Exception] = []
    for lab in reversed(labs):
        try:
            lab.close()
        except Exception as exc:  # close every lab, then report the first failure
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def lab(lab_factory: LabFactory) -> Lab:
    """A lab with the default OcservOptions."""
    return lab_factory()
