"""The nft runner: ``nft -f -`` for ``--fail-closed`` (firewall.py writes the rulesets).

nftables needs CAP_NET_ADMIN and nothing else, so this runner is not root: the helper
starts it once it runs as its own uid, with CAP_NET_ADMIN as an ambient capability so
that ``nft`` gets it too, before the helper loads its seccomp filter (the helper itself
never executes a program)::

    sepconnect-nft-runner --fd N --peer-uid UID --nft PATH

It answers only the helper (process/runner.py's ``serve``), one ``RunNft`` at a time,
and runs nothing but ``PATH -f -`` with the ruleset on stdin.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from typing import Final

from sepconnect.ipc.runner_messages import NFT_REQUESTS, Ran, RunNft
from sepconnect.ipc.wire import Message
from sepconnect.process.privileges import PR_SET_DUMPABLE, prctl
from sepconnect.process.runner import run_program, runner_channel, serve
from sepconnect.process.title import set_title

PROGRAM: Final = "sepconnect-nft-runner"
PROCESS_TITLE: Final = "sepconnect: nft-runner"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, allow_abbrev=False)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--peer-uid", type=int, required=True)
    parser.add_argument("--nft", required=True)
    args = parser.parse_args(argv)
    set_title(PROCESS_TITLE)
    prctl(PR_SET_DUMPABLE, 0)  # the helper's uid may not ptrace it either
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the helper decides when we end

    def handle(msg: Message) -> Ran:
        if not isinstance(msg, RunNft):  # pragma: no cover - the codec allows nothing else
            return Ran(status=126, note=f"not run: {msg.op}")
        if "include" in msg.ruleset:
            return Ran(status=126, note="not run: include is not allowed")
        return run_program([args.nft, "-f", "-"], {}, msg.ruleset)

    return serve(runner_channel(args.fd, NFT_REQUESTS), handle, args.peer_uid)
