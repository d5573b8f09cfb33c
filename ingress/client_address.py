"""The client's address: the peer's, or behind a trusted proxy, what X-Forwarded-For says."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from schemas.sources import IPNetwork


def client_address(request: web.Request, trusted_proxies: Iterable[IPNetwork]) -> str:
    """The peer address, or, behind a trusted proxy, the last X-Forwarded-For hop that is
    not itself a trusted proxy."""
    peer = request.remote or ""
    proxies = tuple(trusted_proxies)
    if not proxies or not _within(peer, proxies):
        return peer
    # Every header line, in order: a proxy that adds its own line (HAProxy's `option
    # forwardfor`) leaves the client's line first, and the client writes what it likes there.
    lines = request.headers.getall("X-Forwarded-For", [])
    hops = [hop.strip() for line in lines for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _within(hop, proxies):
            return hop
    return peer


def _within(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
