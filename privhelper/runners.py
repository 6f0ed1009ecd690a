"""What only root's options or a crashed session need at the helper's start, loaded only
then (main.py): the checks of ``--script-arg``, the DNS backend, the crashed sessions'
state, and the runners (process/runner.py).

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
from typing import TYPE_CHECKING, Any, Final

from sepconnect.ipc.runner_messages import NFT_REQUESTS, ROOT_REQUESTS
from sepconnect.privhelper.main import KEEP, ambient_net_admin
from sepconnect.privhelper.network import STATE_PREFIX
from sepconnect.privhelper.nft import PROGRAM as NFT_PROGRAM
from sepconnect.process import capabilities, privatedir, programs, statedir
from sepconnect.process.runner import RunnerClient

if TYPE_CHECKING:
    from sepconnect.privhelper.dns import BackendName

ROOT_PROGRAM: Final = "sepconnect-rootrunner"
Stale = list[tuple[str, dict[str, Any]]]


def before_the_drop(
    args: argparse.Namespace, root_dir: str | None, log_fd: int | None, uid: int
) -> tuple[Stale, BackendName, RunnerClient | None, bool]:
    """While we are root: check ``--script-arg``, read the crashed sessions' state
    (:data:`STATE_PREFIX` files), choose the DNS backend, and start the root runner where
    an option or a crashed root runner's state needs it. (state, backend, root runner,
    whether the nft runner is needed: start it with :func:`nft_runner` after the drop);
    ValueError or OSError with a one-line reason."""
    if args.script_arg:  # -s with arguments (imported only then)
        from sepconnect.ipc.script_env import check_script_args

        if args.script is None:
            raise ValueError("--script-arg without --script")
        try:
            check_script_args(args.script_arg)
        except ValueError as exc:
            raise ValueError(f"--script-arg: {exc}") from None
    stale: Stale = []
    if args.state_dir is not None:
        try:
            stale = list(statedir.stale(args.state_dir, STATE_PREFIX))
        except OSError as exc:
            raise OSError(f"--state-dir: {exc}") from None
    # A vpnc-script does the DNS itself, as under openconnect.
    backend: BackendName = "none"
    if args.script is None and args.dns_backend != "none":
        from sepconnect.privhelper.dns import choose

        backend = choose(args.dns_backend)
    needs_root = args.script is not None or backend in ("file", "resolvconf")
    needs_nft = args.fail_closed or any(data.get("firewall") for _, data in stale)
    stale_root = root_dir is not None and os.getuid() == 0 and privatedir.has_files(root_dir)
    root = None
    if needs_root or needs_nft or stale_root:
        root = root_runner(args, root_dir, needs_root, stale_root, backend, log_fd, uid)
    return stale, backend, root, needs_nft


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


def nft_runner() -> RunnerClient:
    """The nft runner, as our own uid with CAP_NET_ADMIN ambient while it starts."""
    nft = programs.installed(programs.NFT)
    if nft is None:
        raise OSError(f"no {programs.NFT[0]} (Debian package nftables)")
    ambient_net_admin()
    try:
        module = "sepconnect.privhelper.nft"
        return RunnerClient(NFT_PROGRAM, module, ["--nft", nft], NFT_REQUESTS, os.getuid())
    finally:
        capabilities.keep_only_capabilities(KEEP)
