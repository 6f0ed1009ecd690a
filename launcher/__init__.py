"""sepconnect: a privilege-separated AnyConnect/OpenConnect VPN client."""

from __future__ import annotations

__version__ = "0.1.0"
