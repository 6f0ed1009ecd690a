"""What the client tells the server about itself: User-Agent, version, platform.

As openconnect 9.01 sends them (seen on the wire with ``--dump-http-traffic`` and in
ocserv's log at ``-d 4``; cstp.c ``append_mobile_headers``, auth.c
``xmlpost_new_query``, main.c ``--os``):

- every request carries ``User-Agent``; the login's XML ``<version who="vpn">`` and
  ``<device-id>`` name the version and the platform (no header names the platform);
- with ``--os android`` or ``apple-ios``, openconnect's generic mobile identifiers
  follow ``X-Aggregate-Auth`` on every login request and ``X-CSTP-Hostname`` on the
  CONNECT (``X-AnyConnect-Identifier-*``: client version, platform, platform version
  1.0, device type = the platform, a unique id of 40 "A"), and the ``<device-id>``
  element carries them as attributes. ocserv reads ``X-AnyConnect-Identifier-Platform``
  and ``-DeviceType`` and treats such a client as a mobile one.

ocserv classifies clients by the User-Agent's start (worker-http.c): ours starts
"AnyConnect-compatible OpenConnect", which it treats as openconnect (IPv6 and split
DNS as openconnect gets them); a Cisco ASA may want another (``--useragent``), and
ocserv then treats the client as Cisco's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["CLIENT_VERSION", "DEFAULT_PLATFORM", "USER_AGENT", "ClientIdentity"]

USER_AGENT: Final = "AnyConnect-compatible OpenConnect VPN Agent sepconnect/0.1"
#: Sent as ``<version who="vpn">``; ocserv ignores it.
CLIENT_VERSION: Final = "sepconnect-0.1"
#: As openconnect on 64-bit Linux.
DEFAULT_PLATFORM: Final = "linux-64"

_MOBILE: Final = frozenset({"android", "apple-ios"})
_MOBILE_PLATFORM_VERSION: Final = "1.0"
_MOBILE_UNIQUE_ID: Final = "A" * 40


def _xml_attr(value: str) -> str:
    # the values are printable ASCII (session_limits.USER_AGENT, VERSION_STRING, REPORTED_OS)
    return '"' + value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;") + '"'


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    user_agent: str = USER_AGENT
    version: str = CLIENT_VERSION
    platform: str = DEFAULT_PLATFORM

    @property
    def mobile(self) -> bool:
        return self.platform in _MOBILE

    def mobile_headers(self) -> list[tuple[str, str]]:
        """openconnect's ``append_mobile_headers``: only for a mobile platform."""
        if not self.mobile:
            return []
        return [
            ("X-AnyConnect-Identifier-ClientVersion", self.version),
            ("X-AnyConnect-Identifier-Platform", self.platform),
            ("X-AnyConnect-Identifier-PlatformVersion", _MOBILE_PLATFORM_VERSION),
            ("X-AnyConnect-Identifier-DeviceType", self.platform),
            ("X-AnyConnect-Identifier-Device-UniqueID", _MOBILE_UNIQUE_ID),
        ]

    def xml(self) -> str:
        """``<version>`` and ``<device-id>`` of every login document."""
        attrs = ""
        if self.mobile:
            attrs = (
                f" platform-version={_xml_attr(_MOBILE_PLATFORM_VERSION)}"
                f" device-type={_xml_attr(self.platform)}"
                f" unique-id={_xml_attr(_MOBILE_UNIQUE_ID)}"
            )
        return (
            f'<version who="vpn">{_xml_text(self.version)}</version>'
            f"<device-id{attrs}>{_xml_text(self.platform)}</device-id>"
        )
