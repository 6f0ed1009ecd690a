"""The spawner's exit statuses (one module, so that spawner/boot.py can use them before
the codec's imports)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself would delay the first worker (process/privileges.py)
if TYPE_CHECKING:
    from typing import Final

EXIT_OK: Final = 0  # the supervisor closed its channel
EXIT_REFUSED: Final = 1  # a request from another uid, or a broken channel
EXIT_USAGE: Final = 2  # bad command line, or refused to start (spawner/boot.py)
