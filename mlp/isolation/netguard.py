"""Outbound requests a user can aim (webhook alerts, git sources) may not reach the platform's
own network: loopback, link-local, private, cloud metadata and other reserved addresses are
refused after DNS resolution, unless an admin allows them (`c.OutboundPolicy.allow_networks`)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from traitlets import List, Unicode, validate
from traitlets.config import LoggingConfigurable

_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>\[[^\]]+\]|[^:/]+):(?!//)")
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")}


class UnsafeURL(ValueError):
    pass


def url_host(url: str) -> tuple[str, str]:
    """(scheme, host) of an URL or of git's scp-like `user@host:path` form."""
    parts = urlsplit(url)
    if parts.scheme and "://" in url:
        return parts.scheme.lower(), parts.hostname or ""
    m = _SCP_LIKE.match(url)
    if m:
        return "ssh", m.group("host").strip("[]")
    return "", ""


def blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
        return "a private or reserved address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "a carrier-grade NAT address"
    return None


class OutboundPolicy(LoggingConfigurable):
    allow_networks = List(
        Unicode(),
        config=True,
        help="""Networks (CIDR, e.g. "10.20.0.0/16" or "127.0.0.1/32") that webhook alerts and
        git sources may reach although they are loopback, link-local or private. Empty: only
        public addresses. Cloud metadata addresses are refused unless listed exactly.""",
    )

    @validate("allow_networks")
    def _check(self, proposal: dict[str, Any]) -> list[str]:
        for net in proposal["value"]:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"OutboundPolicy.allow_networks: {net!r}: {e}") from None
        return list(proposal["value"])

    def _allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        for net in self.allow_networks:
            network = ipaddress.ip_network(net, strict=False)
            if ip in network and (ip not in METADATA or network.num_addresses == 1):
                return True
        return False

    def check_addresses(self, host: str, addresses: list[str], what: str) -> None:
        for addr in addresses:
            ip = ipaddress.ip_address(addr.split("%")[0])
            reason = blocked_reason(ip)
            if reason and not self._allowed(ip):
                raise UnsafeURL(
                    f"{what} host {host} resolves to {ip}, {reason}; the platform does not "
                    "send requests into its own network. An admin can allow it with "
                    "c.OutboundPolicy.allow_networks"
                )

    async def check_url(self, url: str, what: str, schemes: tuple[str, ...]) -> None:
        """Raise UnsafeURL unless `url` uses one of `schemes` and every address of its host
        is public (or allowed)."""
        scheme, host = url_host(url)
        if scheme not in schemes:
            raise UnsafeURL(
                f"{what} {url!r}: only {', '.join(s + '://' for s in schemes)} URLs are allowed"
                + (" (local paths and file:// are refused)" if scheme in ("", "file") else "")
            )
        if not host:
            raise UnsafeURL(f"{what} {url!r} names no host")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as e:
            raise UnsafeURL(f"{what} host {host} cannot be resolved: {e}") from None
        self.check_addresses(host, [str(info[4][0]) for info in infos], what)
