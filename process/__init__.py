"""Process plumbing shared by the three programs: titles, prctl, the seccomp builder, the tun
ioctls, exit codes, audit-log files."""

from __future__ import annotations
