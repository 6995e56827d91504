"""What a connection accepted at the descriptor limit may ask for: a complete request head for
``/healthz``, ``/readyz`` or ``/metrics`` (GET or HEAD), which the socket gate
(``relay/http/gate.py``) reads itself before it hands the socket to aiohttp."""

from __future__ import annotations

# What a reserve connection may ask for, and how.
RESERVED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PROBE_METHODS = ("GET", "HEAD")
PROBE_HEAD_MAX = 8192  # a longer request head at the limit is not a probe's
RESERVE_DEADLINE = 2.0  # a socket at the limit without a complete request is closed after this

_PROBE_LINES = tuple(
    f"{method} {path}".encode() for method in PROBE_METHODS for path in sorted(RESERVED_PATHS)
)


def asks_for_reserve(head: bytes) -> bool | None:
    """Whether ``head``, the first bytes of a connection, is a complete request head for a
    reserved path (``True``), cannot become one (``False``), or may yet (``None``)."""
    for line in _PROBE_LINES:
        if len(head) <= len(line):
            if line.startswith(head):
                return None
        elif head.startswith(line) and head[len(line) : len(line) + 1] in (b" ", b"?"):
            if b"\r\n\r\n" in head:
                return True
            return None if len(head) <= PROBE_HEAD_MAX else False
    return False
