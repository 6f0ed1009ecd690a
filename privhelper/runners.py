"""Starting the helper's runners (process/runner.py), only where root's options need them.

* The root runner (rootrunner/), started while the helper is still root: for
  ``--script`` and ``--dns-backend file|resolvconf``, and, with none of them, to undo
  what a crashed root runner left behind (``--recover``: it exits when done; we wait).
* The nft runner (nft.py), started once the helper runs as its own uid, with
  CAP_NET_ADMIN ambient so that it (and nft) keep it: for ``--fail-closed``, and to
  delete a crashed session's table.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Final

from sepconnect.ipc.runner_messages import NFT_REQUESTS, ROOT_REQUESTS
from sepconnect.privhelper.nft import PROGRAM as NFT_PROGRAM
from sepconnect.process import privileges, programs
from sepconnect.process.runner import RunnerClient

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import BackendName

ROOT_PROGRAM: Final = "sepconnect-rootrunner"


def root_runner(
    args: argparse.Namespace,
    state_dir: str | None,
    needed: bool,
    stale: bool,
    backend: BackendName,
    log_fd: int | None,
    uid: int,
) -> RunnerClient | None:
    """The root runner for the session (``needed``), or, for ``stale`` files of a
    crashed one only, one that recovers and exits. Also checks, while we are root, that
    ``--fail-closed`` will find nft."""
    if args.fail_closed and programs.installed(programs.NFT) is None:
        raise OSError(f"--fail-closed needs {programs.NFT[0]} (Debian package nftables)")
    if needed and (state_dir is None or os.getuid() != 0):
        raise OSError(
            "--script and --dns-backend file|resolvconf need --state-dir and the helper "
            "started as root"
        )
    if state_dir is None or not (needed or stale):
        return None
    extra = root_runner_args(args, state_dir, backend, log_fd)
    fds = () if log_fd is None else (log_fd,)
    runner = RunnerClient(
        ROOT_PROGRAM, "sepconnect.rootrunner", extra + ([] if needed else ["--recover"]),
        ROOT_REQUESTS, uid, fds,
    )  # fmt: skip
    if needed:
        return runner
    runner.close()  # --recover: it undoes, then exits; wait for it
    return None


def root_runner_args(
    args: argparse.Namespace, state_dir: str, backend: BackendName, log_fd: int | None
) -> list[str]:
    """The root runner's command line after its channel (rootrunner/main.py parse_args)."""
    extra = ["--state-dir", state_dir]
    if log_fd is not None:
        extra += ["--audit-fd", str(log_fd)]
    if args.script is not None:
        # "=": an argument may start with "-" (argparse would take it for an option)
        extra += ["--script", args.script, *(f"--script-arg={arg}" for arg in args.script_arg)]
    if backend in ("file", "resolvconf"):
        extra += ["--dns-backend", backend]
    return extra


def nft_runner(keep: frozenset[int]) -> RunnerClient:
    """The nft runner, as our own uid with CAP_NET_ADMIN ambient while it starts."""
    nft = programs.installed(programs.NFT)
    if nft is None:
        raise OSError(f"no {programs.NFT[0]} (Debian package nftables)")
    privileges.keep_only_capabilities(keep, inheritable=True)
    privileges.raise_ambient(privileges.CAP_NET_ADMIN)
    try:
        module = "sepconnect.privhelper.nft"
        return RunnerClient(NFT_PROGRAM, module, ["--nft", nft], NFT_REQUESTS, os.getuid())
    finally:
        privileges.keep_only_capabilities(keep)
