"""Trusted proxies (``http.trusted_proxies``): one check, used by the socket gate
(``relay/http/gate.py``) and by the per-client limits of ``relay/http/access.py``."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TrustedProxies:
    """``http.trusted_proxies``: the networks whose connections are proxies'. Their own
    connections are not counted per address; their clients are, by ``X-Forwarded-For``
    (``relay/http/access.py``)."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self._hosts: dict[str, bool] = {}  # per peer host as accept() gave it; bounded

    def __contains__(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def trusts_host(self, host: str) -> bool:
        """Whether ``host`` (a peer's address as text) is in a trusted network; remembered."""
        trusted = self._hosts.get(host)
        if trusted is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                trusted = False
            else:
                trusted = address in self
            if len(self._hosts) > 10_000:
                self._hosts.clear()
            self._hosts[host] = trusted
        return trusted
