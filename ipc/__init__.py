"""The IPC codec, every message schema of both channels, and the limits they share."""

from __future__ import annotations
