from __future__ import annotations

import sys

from sepconnect.worker.boot import main

sys.exit(main())
