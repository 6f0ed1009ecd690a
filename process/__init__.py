"""Process plumbing shared by the three programs: titles, prctl, exit codes, audit-log files."""

from __future__ import annotations
