"""Relays further NOTIFY channels (``channels:`` in the config) to SSE clients as named events.

A payload must be a JSON object (PostgreSQL already caps it under 8000 bytes) whose every
number is finite; anything else is counted in ``relay_notifications_dropped_total``, logged at
most once per channel per minute, and dropped. Never a crash: the payload comes from whoever
can NOTIFY.

Finite, because what is relayed must come back out as JSON a browser's ``JSON.parse`` takes:
Python reads ``NaN`` and ``Infinity`` (not JSON), and reads ``1e999`` as ``inf``, which
``json.dumps`` would write back as ``Infinity`` when a payload is re-encoded.

Bound: each relayed notification is one broadcast, encoded once; nothing is queued here. A
flood of them is bounded per client by ``http.client_buffer`` (a client that falls behind is
dropped and resyncs) and at the source by PostgreSQL's notification queue.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from relay.logs import get_logger
from relay.metrics import Metrics

log = get_logger("relay.source.channels")

MAX_PAYLOAD_BYTES = 8000
LOG_EVERY_SECONDS = 60.0

Publish = Callable[[str, str, Mapping[str, Any]], None]  # channel, data, the parsed payload


class ChannelRelay:
    """Validates one notification's payload and publishes it as ``event: <channel>``."""

    def __init__(
        self,
        publish: Publish,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        on_dropped: Callable[[str], None] | None = None,
    ) -> None:
        self._publish = publish
        self._metrics = metrics
        self._clock = clock
        self._on_dropped = on_dropped
        self._last_logged: dict[str, float] = {}

    def __call__(self, channel: str, payload: str) -> None:
        reason, data, parsed = _validate(payload)
        if reason is None:
            self._publish(channel, data, parsed)
            return
        self._metrics.notifications_dropped.labels(channel, reason).inc()
        if self._on_dropped is not None:
            self._on_dropped(channel)
        now = self._clock()
        if now - self._last_logged.get(channel, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._last_logged[channel] = now
            log.warning(
                "notification_dropped",
                channel=channel,
                reason=reason,
                payload_bytes=len(payload.encode()),
                note="logged once per channel per minute; see relay_notifications_dropped_total",
            )


class _NotFinite(ValueError):
    """A number literal that overflows a float (``1e999``, ``-1e999``)."""


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")  # Python reads it; JSON.parse does not


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NotFinite(f"{literal[:20]} is not a finite number")
    return value


def _validate(payload: str) -> tuple[str | None, str, dict[str, Any]]:
    """``(None, data, parsed)`` for a relayable payload, else ``(reason, "", {})``."""
    if len(payload.encode()) >= MAX_PAYLOAD_BYTES:
        return "too_large", "", {}
    try:
        parsed = json.loads(payload, parse_constant=_not_json, parse_float=_finite)
    except _NotFinite:
        return "not_finite", "", {}
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        return "not_json", "", {}
    if not isinstance(parsed, dict):
        return "not_an_object", "", {}
    if "\n" in payload or "\r" in payload:
        # An SSE data line cannot hold a line break: re-encode compactly.
        return None, json.dumps(parsed, separators=(",", ":")), parsed
    return None, payload, parsed
