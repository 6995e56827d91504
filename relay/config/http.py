"""The HTTP server's sections: where it listens, its limits, the proxies it trusts (``http``),
and the origins a browser may call it from (``cors``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from relay.config.fields import Duration, PositiveDuration, Section, Size


def parse_network(value: Any) -> Any:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(
            f'expected an IP address or CIDR like "10.0.0.0/8", got "{value}"'
        ) from None


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(parse_network)]


class ListenAddress(Section):
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


def parse_listen(value: Any) -> Any:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) to a :class:`ListenAddress`."""
    if isinstance(value, ListenAddress | dict):
        return value
    text = str(value)
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError(f'expected HOST:PORT like "127.0.0.1:8080", got "{text}"')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    return {"host": host, "port": port}


Listen = Annotated[ListenAddress, BeforeValidator(parse_listen)]


class HttpConfig(Section):
    listen: Listen = ListenAddress(host="127.0.0.1", port=8080)
    heartbeat: PositiveDuration = 15.0
    retry: Duration = 3.0
    max_clients: int = Field(default=20_000, ge=1)
    client_buffer: Size = 64 * 1024
    shutdown_timeout: Duration = 5.0
    public_url: str | None = None
    # Per client address (behind a proxy: from X-Forwarded-For of a trusted proxy); off if null.
    max_clients_per_address: int | None = Field(default=None, ge=1)
    trusted_proxies: tuple[Network, ...] = ()
    max_header_size: Size = 8190
    # A connection that has not completed a request (or sits idle between requests) for this
    # long is closed: idle and slow sockets do not hold file descriptors for an hour.
    idle_timeout: PositiveDuration = 15.0
    # File descriptors kept free below the open-file limit for the database connections,
    # webhooks, static files and health checks: past limit - fd_reserve, new connections
    # serve only /healthz, /readyz and /metrics (docs/sockets.md).
    fd_reserve: int = Field(default=64, ge=16, le=65_536)


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d+)?$|^https?://\[[0-9A-Fa-f:]+\](:\d+)?$")


class CorsConfig(Section):
    allow_origins: tuple[str, ...] = ()

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f'expected origins like "https://app.example" (no path, no "*"), got "{origin}"'
                )
        return value
