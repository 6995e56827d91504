"""The signals' lifecycle at the unit level: they end with their activity, not with a spell
of unknown, and a new busy period is never timed from the previous one's start."""

from __future__ import annotations

from relay.config import DatabaseConfig, DetailsConfig, SignalsConfig
from relay.config.activities import Activity
from relay.metrics import Metrics
from relay.state.readpool import ReadPool
from relay.state.signals import SignalsReader
from relay.state.stability import Stability, State, iso_timestamp

ACTIVITY = Activity.model_validate(
    {
        "name": "importing",
        "label": "Importing data",
        "table": "public.job",
        "active_states": ["running"],
        "overdue_after": "10m",
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_signals_outlive_a_spell_of_unknown_and_end_with_their_activity() -> None:
    clock = Clock()
    stability = Stability({"importing": "Importing data"}, clock=clock)
    stability.update(State.PROCESSING, [("importing", True)])
    assert stability.update_signals({"importing": clock.now - 60}, {})
    stalled = stability.current.stalled
    stability.update(State.UNKNOWN)  # the database is gone: no news of the work
    assert stability.current.stalled == stalled
    assert not stability.update_signals({"importing": clock.now - 60}, {})
    stability.update(State.PROCESSING, [("importing", True)])  # back, the same work
    assert stability.current.stalled == stalled
    stability.update(State.STABLE, [("importing", False)])
    assert stability.current.stalled == ()


def test_a_new_busy_period_is_not_timed_from_the_previous_one() -> None:
    clock = Clock()
    stability = Stability({"importing": "Importing data"}, clock=clock)
    never = ReadPool(DatabaseConfig(), DetailsConfig())  # not started: nothing is read
    reader = SignalsReader([ACTIVITY], SignalsConfig(), stability, never, Metrics(), clock)
    stability.subscribe(reader.on_change)
    first = clock.now
    stability.update(State.PROCESSING, [("importing", True)])
    # A read during the first period: the history has it open since its start.
    reader._typical = {"importing": {"open_since": iso_timestamp(first - 5)}}
    assert reader._busy_since("importing") == first - 5
    clock.now += 3600
    stability.update(State.STABLE, [("importing", False)])
    clock.now += 1
    stability.update(State.PROCESSING, [("importing", True)])  # before any new read
    assert reader._busy_since("importing") == clock.now
