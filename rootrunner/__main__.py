"""``python3 -I -m sepconnect.rootrunner``: see :mod:`sepconnect.rootrunner.main`."""

from __future__ import annotations

import sys

from sepconnect.rootrunner.main import main

if __name__ == "__main__":
    sys.exit(main())
