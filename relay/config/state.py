"""The state stage's sections: the details answers (``details``), the long polls
(``wait``), the busy periods kept (``history``) and the signals (``signals``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from relay.config.fields import Duration, PositiveDuration, Section


class DetailsConfig(Section):
    # Requests within this window and one state share one answer (and one round of queries).
    cache: Duration = 1.0
    statement_timeout: PositiveDuration = 5.0
    pool_size: int = Field(default=2, ge=1, le=20)
    # Rows listed per activity (each also reports its total): the answer's size is bounded.
    max_items: int = Field(default=100, ge=1, le=10_000)


class WaitConfig(Section):
    # GET /api/system-status/wait (and the CLI's `wait`): long polls at once; more get 429.
    max_waiters: int = Field(default=1000, ge=1, le=100_000)
    # ...of which one client address may hold this many (behind a proxy listed in
    # http.trusted_proxies: per X-Forwarded-For client); more get 429. Off if null.
    max_waiters_per_address: int | None = Field(default=100, ge=1)
    max_timeout: PositiveDuration = 3600.0
    # While the condition holds, it is re-read fresh at least this often.
    recheck: PositiveDuration = 5.0
    # Concurrent fresh reads wait in line behind one read; more than this get 503.
    max_fresh_waiting: int = Field(default=10_000, ge=1)


class HistoryConfig(Section):
    # Busy periods older than this are deleted as new ones are written (README "History").
    retention: PositiveDuration = 90 * 86400.0


class SignalsConfig(Section):
    """Stalled, overdue, depth and lag (relay/state/signals.py; README "Signals")."""

    # While any activity is active, its signals are read this often (one statement for all
    # of them, shared by every scrape and details request); an overdue bound is noticed at
    # its time, without a read.
    interval: PositiveDuration = 15.0
    # The statement's bound: past it the read fails and the gauges say NaN until the next.
    read_timeout: PositiveDuration = 5.0
    # Depth and stalled rows are counted exactly up to this, then read as depth_cap + 1.
    depth_cap: int = Field(default=10_000, ge=1, le=1_000_000)
    # An activity without overdue_after is overdue past overdue_factor x the 90th percentile
    # of its busy periods in the history (the last 7 days), once there are overdue_min_periods
    # of them, and never sooner than overdue_min_bound after it began.
    overdue_factor: float = Field(default=3.0, ge=1.0, le=1000.0)
    overdue_min_periods: int = Field(default=5, ge=1, le=10_000)
    overdue_min_bound: PositiveDuration = 300.0

    @model_validator(mode="after")
    def _read_within_interval(self) -> SignalsConfig:
        if self.read_timeout >= self.interval:
            raise ValueError(
                f"read_timeout ({self.read_timeout:g}s) must be shorter than interval "
                f"({self.interval:g}s): one read at a time, each within its interval"
            )
        return self
