"""Prometheus metrics, on a private registry served by ``prometheus_client``'s aiohttp handler.

The registry alone: every metric is declared here, and this module imports no stage. Gauges
that mirror live state are computed at scrape time from the components themselves (the state's
own by ``relay/fanout/gauges.py``); counters are incremented where things happen.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric the relay exports. One instance per relay, with its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.system_stable = Gauge(
            "relay_system_stable",
            "1 while the system is stable, 0 while processing, NaN while unknown "
            "(no database connection: see relay_database_connected).",
            registry=r,
        )
        self.activity_active = Gauge(
            "relay_activity_active",
            "1 while the activity is active, 0 while not, NaN while unknown.",
            ["activity"],
            registry=r,
        )
        self.database_connected = Gauge(
            "relay_database_connected",
            "1 while the listener's PostgreSQL connection is up and the state is known.",
            registry=r,
        )
        self.database_refused = Gauge(
            "relay_database_refused",
            "1 while the relay refuses the server it reached: kind=pooler (a transaction "
            "pooler, where LISTEN cannot work) or kind=standby (read-only); see /readyz.",
            ["kind"],
            registry=r,
        )
        self.database_pooled = Gauge(
            "relay_database_pooled",
            "1 when a pooler sits between the relay and PostgreSQL (session pooling works), "
            "0 when not, NaN before the first connection.",
            registry=r,
        )
        self.backoff_stuck = Gauge(
            "relay_reconnect_backoff_stuck",
            "1 while sessions keep ending before database.reconnect_reset_after (the backoff "
            "never resets: an idle or proxy timeout, or a job ending the relay's sessions).",
            registry=r,
        )
        self.backoff_stuck_streaks = Counter(
            "relay_reconnect_backoff_stuck_streaks",
            "Streaks of short sessions detected (each logged once as reconnect_backoff_stuck).",
            registry=r,
        )
        self.sse_clients = Gauge(
            "relay_sse_clients", "Connected Server-Sent Events clients.", registry=r
        )
        self.sse_takeover = Gauge(
            "relay_sse_takeover",
            "1 when open streams are taken over from aiohttp (the fast path), 0 when they stay "
            "in their handlers (the public path: an untested aiohttp, or RELAY_SSE_TAKEOVER=off).",
            registry=r,
        )
        self.sse_clients_limit = Gauge(
            "relay_sse_clients_limit",
            "The configured http.max_clients (for alerts on relay_sse_clients near it).",
            registry=r,
        )
        self.notifications = Counter(
            "relay_notifications",
            "NOTIFY messages received, by channel.",
            ["channel"],
            registry=r,
        )
        self.notifications_dropped = Counter(
            "relay_notifications_dropped",
            "NOTIFY messages dropped (bad payload), by channel and reason.",
            ["channel", "reason"],
            registry=r,
        )
        self.reconnects = Counter(
            "relay_reconnects",
            "Listener (re)connection attempts after the first.",
            registry=r,
        )
        self.truth_queries = Counter(
            "relay_stability_queries",
            "Reads of the activities (after hints, on connect, and on reconcile).",
            registry=r,
        )
        self.polling = Gauge(
            "relay_polling",
            "1 while the listener polls because of a hold (writers send no hints), else 0.",
            registry=r,
        )
        self.drain_waiting = Gauge(
            "relay_drain_waiting",
            "Transactions the end of a hold waits for; a long one keeps the relay polling.",
            registry=r,
        )
        self.hold_changes = Counter(
            "relay_hold_changes",
            "Holds this relay took or released (writers skip hints while one is held).",
            ["action"],
            registry=r,
        )
        self.transitions = Counter(
            "relay_state_transitions",
            "Stability transitions, by the state entered.",
            ["state"],
            registry=r,
        )
        self.state_since = Gauge(
            "relay_state_since_timestamp_seconds",
            "Unix time at which the current stability state began.",
            registry=r,
        )
        self.notify_queue_usage = Gauge(
            "relay_notify_queue_usage_ratio",
            "pg_notification_queue_usage() at the last heartbeat (0..1).",
            registry=r,
        )
        self.sse_dropped = Counter(
            "relay_sse_clients_dropped",
            "SSE clients disconnected because they fell behind (unsent buffer full).",
            registry=r,
        )
        self.sse_refused = Counter(
            "relay_sse_clients_refused",
            "SSE connections refused because the client limit was reached.",
            registry=r,
        )
        self.feed_clients = Gauge(
            "relay_feed_clients", "Connected clients, per feed.", ["feed"], registry=r
        )
        self.feed_events = Counter(
            "relay_feed_events",
            "Payloads relayed, per feed (each one written to its matching clients).",
            ["feed"],
            registry=r,
        )
        self.feed_dropped = Counter(
            "relay_feed_dropped",
            "Payloads on a feed's channels dropped as unrelayable (not JSON, too large).",
            ["feed"],
            registry=r,
        )
        self.feed_coalesced = Counter(
            "relay_feed_coalesced",
            "Payloads replaced by a later one within a feed's coalescing window, or merged "
            "with an identical one waiting for enrichment.",
            ["feed"],
            registry=r,
        )
        self.feed_enrich_calls = Counter(
            "relay_feed_enrich_calls",
            "Calls of a feed's enrich function (one per batch of payloads).",
            ["feed"],
            registry=r,
        )
        self.feed_enrich_failures = Counter(
            "relay_feed_enrich_failures",
            "Calls of a feed's enrich function that failed or timed out (nothing was sent for "
            "their payloads; the feed's clients were told to resync).",
            ["feed"],
            registry=r,
        )
        self.feed_enrich_dropped = Counter(
            "relay_feed_enrich_dropped",
            "Payloads dropped because a feed's line to its enrich function was full.",
            ["feed"],
            registry=r,
        )
        self.feed_replayed = Counter(
            "relay_feed_replayed",
            "Events sent again to clients that reconnected with Last-Event-ID.",
            ["feed"],
            registry=r,
        )
        self.feed_resyncs = Counter(
            "relay_feed_resyncs",
            "Times a feed told clients to re-read (reason: reconnected, too_old, other_run, "
            "enrich_failed, enrich_overflow).",
            ["feed", "reason"],
            registry=r,
        )
        self.processing_duration = Histogram(
            "relay_processing_duration_seconds",
            "How long each processing period lasted (from processing to stable).",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
            registry=r,
        )
        self.loop_errors = Counter(
            "relay_loop_errors",
            "Errors the event loop reported on its own (e.g. accept() at the open-file limit).",
            ["kind"],
            registry=r,
        )
        self.http_connections = Gauge(
            "relay_http_connections",
            "Open HTTP connections of every kind (streams, keep-alive, idle, refused ones "
            "still closing), as the relay's own accept counts them.",
            registry=r,
        )
        self.http_refused = Counter(
            "relay_http_connections_refused",
            "Connections refused when accepted: per_address (http.max_clients_per_address "
            "reached) or fd_limit (open descriptors within http.fd_reserve of the limit).",
            ["reason"],
            registry=r,
        )
        self.accept_paused = Counter(
            "relay_http_accept_paused",
            "Times accepting paused because accept() failed for want of descriptors or memory.",
            registry=r,
        )
        self.open_fds = Gauge(
            "relay_open_fds",
            "File descriptors open in the relay (its connections counted, the rest sampled).",
            registry=r,
        )
        self.open_fds_limit = Gauge(
            "relay_open_fds_limit", "The open-file limit (soft RLIMIT_NOFILE).", registry=r
        )
        self.fresh_reads = Counter(
            "relay_fresh_reads",
            "Fresh reads of the activities (?fresh=1 and waits), shared by the requests in line.",
            registry=r,
        )
        self.waiters = Gauge(
            "relay_waiters", "Open long polls on /api/system-status/wait.", registry=r
        )
        self.details_queries = Counter(
            "relay_details_queries",
            "Rounds of details queries sent to the database (cache misses).",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "relay_webhook_deliveries",
            "Webhook delivery attempts, by target and outcome.",
            ["webhook", "outcome"],
            registry=r,
        )
        self.webhook_duration = Histogram(
            "relay_webhook_delivery_duration_seconds",
            "Time from sending a webhook request to its answer.",
            ["webhook"],
            registry=r,
        )
        self.webhook_leader = Gauge(
            "relay_webhook_leader",
            "1 on the relay elected to send webhooks (one per database), else 0.",
            registry=r,
        )
        self.activity_depth = Gauge(
            "relay_activity_depth",
            "The activity's rows (its active rows; an expression activity's details rows), "
            "exact up to signals.depth_cap, depth_cap + 1 beyond it; 0 while not active "
            "(without a read); NaN while unknown or when the latest signals read failed.",
            ["activity"],
            registry=r,
        )
        self.activity_oldest_age = Gauge(
            "relay_activity_oldest_age_seconds",
            "Age of the activity's oldest row (its age_column) at the latest signals read; "
            "0 while not active; NaN while unknown or when the read failed. Only activities "
            "with an age_column.",
            ["activity"],
            registry=r,
        )
        self.activity_stalled = Gauge(
            "relay_activity_stalled",
            "The activity's rows meeting its stalled condition (0 without one), capped like "
            "the depth; NaN while unknown or when the latest signals read failed.",
            ["activity"],
            registry=r,
        )
        self.activity_overdue = Gauge(
            "relay_activity_overdue",
            "1 while the activity's busy period has run past its bound (overdue_after, or "
            "signals.overdue_factor x the p90 of its history), else 0; NaN while unknown.",
            ["activity"],
            registry=r,
        )
        self.signals_reads = Counter(
            "relay_signals_reads",
            "Signals reads (depth, oldest age, stalled rows), by outcome: ok, failed (error or "
            "past signals.read_timeout) or refused (a signals function of another config).",
            ["outcome"],
            registry=r,
        )
        self.signals_read_duration = Histogram(
            "relay_signals_read_duration_seconds",
            "Time a signals read took, whatever its outcome.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.signals_refused = Gauge(
            "relay_signals_refused",
            "1 while the installed signals function was generated from another definition of "
            "the activities (run db install with this config), else 0.",
            registry=r,
        )
        for outcome in ("ok", "failed", "refused"):
            self.signals_reads.labels(outcome)
        self.webhook_pending = Gauge(
            "relay_webhook_pending",
            "Transitions waiting to be delivered, by target.",
            ["webhook"],
            registry=r,
        )

    def watch_database(
        self,
        refusal_kind: Callable[[], str | None],
        pooled: Callable[[], bool | None],
        stuck: Callable[[], bool],
    ) -> None:
        """The listener's view of the server it reached, computed at scrape time."""
        for kind in REFUSAL_KINDS:
            self.database_refused.labels(kind).set_function(
                functools.partial(lambda k: 1.0 if refusal_kind() == k else 0.0, kind)
            )
        self.database_pooled.set_function(lambda: _flag(pooled()))
        self.backoff_stuck.set_function(lambda: 1.0 if stuck() else 0.0)

    def watch_signals(
        self,
        value: Callable[[str, str], float],
        activities: Sequence[tuple[str, bool]],
        refused: Callable[[], bool],
    ) -> None:
        """The signals' gauges at scrape time, for every activity from the start (zero-filled):
        ``value(kind, name)`` with kind depth, oldest_age_s, stalled or overdue; ``activities``
        are (name, has an age column) pairs."""
        for name, has_age in activities:
            self.activity_depth.labels(name).set_function(functools.partial(value, "depth", name))
            self.activity_stalled.labels(name).set_function(
                functools.partial(value, "stalled", name)
            )
            self.activity_overdue.labels(name).set_function(
                functools.partial(value, "overdue", name)
            )
            if has_age:
                self.activity_oldest_age.labels(name).set_function(
                    functools.partial(value, "oldest_age_s", name)
                )
        self.signals_refused.set_function(lambda: 1.0 if refused() else 0.0)


REFUSAL_KINDS = ("pooler", "standby")


def _flag(value: bool | None) -> float:
    return math.nan if value is None else 1.0 if value else 0.0
