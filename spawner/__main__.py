"""``python3 -I -m sepconnect.spawner``: see :mod:`sepconnect.spawner.boot`."""

from __future__ import annotations

import sys

from sepconnect.spawner.boot import main

if __name__ == "__main__":
    sys.exit(main())
