"""The state's Prometheus gauges: an observer of :class:`~relay.state.stability.Stability`.

The metrics themselves are declared in ``relay/metrics.py`` (the registry, plumbing that
imports no stage); this fills them from the state: the live gauges are computed at scrape time,
the transitions and the processing periods are counted as they happen.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from relay.metrics import Metrics
from relay.state.stability import Snapshot, Stability, State


class StateGauges:
    """Built once per relay; :meth:`on_transition` is subscribed to the stability."""

    def __init__(
        self,
        metrics: Metrics,
        stability: Stability,
        clients: Callable[[], int],
        connected: Callable[[], bool],
    ) -> None:
        self._metrics = metrics
        self._previous: Snapshot | None = None
        metrics.system_stable.set_function(lambda: _stable_value(stability.current))
        metrics.database_connected.set_function(lambda: 1.0 if connected() else 0.0)
        metrics.state_since.set_function(lambda: stability.current.since)
        metrics.sse_clients.set_function(lambda: float(clients()))
        for name, _active in stability.current.activities:
            metrics.activity_active.labels(name).set_function(
                functools.partial(_activity_value, stability, name)
            )

    def on_transition(self, snapshot: Snapshot) -> None:
        if not snapshot.new_state:
            return
        self._metrics.transitions.labels(snapshot.state.value).inc()
        previous, self._previous = self._previous, snapshot
        if snapshot.state is State.STABLE and previous and previous.state is State.PROCESSING:
            self._metrics.processing_duration.observe(max(0.0, snapshot.since - previous.since))


def _activity_value(stability: Stability, name: str) -> float:
    active = dict(stability.current.activities).get(name)
    if active is None:
        return math.nan
    return 1.0 if active else 0.0


def _stable_value(snapshot: Snapshot) -> float:
    if snapshot.stable is None:
        return math.nan
    return 1.0 if snapshot.stable else 0.0
