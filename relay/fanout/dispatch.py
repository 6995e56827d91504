"""What the listener hears, told to those who need it: the listener's one subscriber.

    truth        → the stability state, the long polls (a read answers ``fresh`` ones), and
                   after a gap the feeds (their clients are told to resync)
    disconnected → ``unknown``, and a gap: notifications may be missed until the next truth
    notification → ``relay/source/channels.py`` (validated) → the hub's named events and the
                   feeds; a payload dropped there is also counted for each feed of its channel

The listener (``relay/source/listener.py``) calls these on its own task, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from relay.fanout.feeds import Feeds
from relay.fanout.sse import Hub
from relay.metrics import Metrics
from relay.source.channels import ChannelRelay
from relay.state.stability import Stability, State
from relay.state.waits import Waits


class Dispatch:
    """Implements ``relay.source.listener.ListenerEvents``."""

    def __init__(
        self,
        stability: Stability,
        waits: Waits,
        hub: Hub,
        feeds: Feeds,
        metrics: Metrics,
        *,
        hub_channels: Iterable[str],
    ) -> None:
        self._stability = stability
        self._waits = waits
        self._hub = hub
        self._feeds = feeds
        self._metrics = metrics
        self._hub_channels = frozenset(hub_channels)
        self._relay_channel = ChannelRelay(self._publish, metrics, on_dropped=self._dropped)
        # Notifications may have been missed: at start and after every disconnect, the feeds
        # tell their clients once the truth is read again.
        self._gap = True

    def on_truth(self, activities: Mapping[str, bool]) -> None:
        self._stability.update_truth(activities)
        self._waits.on_read()
        if self._gap:
            self._gap = False
            self._feeds.resync()

    def on_disconnected(self) -> None:
        self._gap = True
        self._stability.update(State.UNKNOWN)

    def on_notification(self, channel: str, payload: str) -> None:
        self._relay_channel(channel, payload)

    def _publish(self, channel: str, data: str, payload: Mapping[str, Any]) -> None:
        if channel in self._hub_channels:
            self._hub.publish_event(channel, data)
        self._feeds.publish(channel, data, payload)

    def _dropped(self, channel: str) -> None:
        for feed in self._feeds.feeds:
            if channel in feed.config.channels:
                self._metrics.feed_dropped.labels(feed.config.path).inc()
