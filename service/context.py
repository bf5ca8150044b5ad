"""Client context for anomaly checks: the caller's address, network and user agent."""

from __future__ import annotations

import functools
import ipaddress

from aiohttp import web

from service.store import ClientContext

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_of(ip: str) -> str:
    """Return the IPv4 /24 or IPv6 /48 containing ip, as text; '' if ip is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def client_address(peer: str, forwarded: str, trusted_proxies: tuple[Network, ...]) -> str:
    """Return the direct peer, or the first X-Forwarded-For address when the
    peer is a trusted proxy; '' when neither is a valid address."""
    try:
        peer_address = ipaddress.ip_address(peer)
    except ValueError:
        return ""
    if not any(peer_address in network for network in trusted_proxies):
        return peer
    first = forwarded.split(",", 1)[0].strip()
    try:
        return str(ipaddress.ip_address(first))
    except ValueError:
        return peer


# Parsing addresses costs more than the rest of a validation's Python work,
# and a gateway sends the same few peers and client addresses again and again.
@functools.lru_cache(maxsize=65536)
def _client_network(peer: str, forwarded: str, trusted_proxies: tuple[Network, ...]) -> str:
    return network_of(client_address(peer, forwarded, trusted_proxies))


def client_context(request: web.Request, trusted_proxies: tuple[Network, ...]) -> ClientContext:
    headers = request.headers
    forwarded = headers.get("X-Forwarded-For", "")
    network = _client_network(request.remote or "", forwarded[:256], trusted_proxies)
    # Only the first 512 characters count, as at sign-in.
    return ClientContext(network=network, user_agent=headers.get("User-Agent", "")[:512])
