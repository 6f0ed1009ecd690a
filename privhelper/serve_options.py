"""What the serving stage does at its start only when an option or a test asks for it.

Imported by privhelper/serve.py only then, so that a default session never loads it:
the program runners the start stage started (the root runner for ``--script`` and a
DNS backend other than ``none``, the nft runner for ``--fail-closed``), the recovery
of crashed sessions' state, and the test-only self-test. docs/security.md lists its size
with the optional parts of the trusted base.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sepconnect.privhelper.audit import Audit
    from sepconnect.privhelper.network import Netlink
    from sepconnect.process.runner import RunnerClient


def adopt_runners(settings: dict[str, Any]) -> tuple[RunnerClient | None, RunnerClient | None]:
    """The clients of the root runner and the nft runner the start stage started (before
    the filter: it sets their fds close-on-exec)."""
    from sepconnect.ipc.runner_messages import NFT_REQUESTS, ROOT_REQUESTS
    from sepconnect.process.runner import RunnerClient

    root, nft = settings["root"], settings["nft"]
    return (
        None if root is None else RunnerClient.adopt(ROOT_REQUESTS, *root),
        None if nft is None else RunnerClient.adopt(NFT_REQUESTS, *nft),
    )


def before_serving(
    settings: dict[str, Any],
    netlink: Netlink,
    nft: RunnerClient | None,
    audit: Audit,
    selftest_spec: str | None,
) -> None:
    """Once the sandbox is complete: the self-test ``selftest_spec`` names, if a test
    asked for one (tests/integration/test_helper_hostile.py), then the recovery of what
    crashed sessions left installed."""
    if selftest_spec is not None:
        from sepconnect.privhelper import selftest

        selftest.run(selftest_spec, settings["options"]["state_dir"])
    if settings["stale"]:
        from sepconnect.privhelper.recovery import recover

        recover([(p, d) for p, d in settings["stale"]], netlink, nft, audit)
