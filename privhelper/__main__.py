"""``python3 -I -m sepconnect.privhelper``: see :mod:`sepconnect.privhelper.main`."""

from __future__ import annotations

import sys

from sepconnect.privhelper.main import main

if __name__ == "__main__":
    sys.exit(main())
