from __future__ import annotations

import sys

from sepconnect.worker.main import main

sys.exit(main())
