"""Privileges for all three programs, in one import: capset(2) (process/capabilities.py)
and prctl(2) with the bounding set (process/prctl.py, process/lockdown.py), re-exported;
the drop to another account is process/privdrop.py's.

Stdlib only. No typing import (process/prctl.py says why).
"""

from __future__ import annotations

from sepconnect.process.capabilities import CAP_NET_ADMIN as CAP_NET_ADMIN  # re-exported
from sepconnect.process.capabilities import keep_only_capabilities as keep_only_capabilities
from sepconnect.process.lockdown import PR_SET_NO_NEW_PRIVS as PR_SET_NO_NEW_PRIVS
from sepconnect.process.lockdown import drop_bounding_set as drop_bounding_set
from sepconnect.process.lockdown import no_new_privs_and_undumpable as no_new_privs_and_undumpable
from sepconnect.process.prctl import PR_SET_DUMPABLE as PR_SET_DUMPABLE
from sepconnect.process.prctl import PR_SET_NAME as PR_SET_NAME
from sepconnect.process.prctl import prctl as prctl
