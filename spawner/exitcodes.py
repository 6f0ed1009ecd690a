"""The spawner's exit statuses (one module, so that spawner/boot.py can use them before
the codec's imports; no ``Final``, whose typing import would delay the first worker)."""

from __future__ import annotations

EXIT_OK = 0  # the supervisor closed its channel
EXIT_REFUSED = 1  # a request from another uid, or a broken channel
EXIT_USAGE = 2  # bad command line, or refused to start (spawner/boot.py)
