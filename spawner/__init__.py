"""The worker spawner: starts, signals and reaps workers under the worker's uid, for the
supervisor (docs/architecture.md, "Processes")."""

from __future__ import annotations
