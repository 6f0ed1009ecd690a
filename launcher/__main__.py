from __future__ import annotations

import sys

from sepconnect.cli import main

sys.exit(main())
