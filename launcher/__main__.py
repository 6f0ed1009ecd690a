from __future__ import annotations

import sys

from sepconnect.rootstage import main

sys.exit(main())
