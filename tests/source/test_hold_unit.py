"""relay/source/hold.py on its own: when a relay polls, when it ends a hold, and what a drain
waits for.

No database: ``Hold`` is bookkeeping fed what each read saw. The scenarios follow the module's
docstring; the properties check its two promises over random sequences of reads: a hold is
ended only after the state held still for ``release_after`` (and always then), and a drain
lasts exactly until none of the transactions it waits for is running.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.source.hold import HOLD_ANNOUNCED, Hold, Step

R = 2.0  # release_after in these tests


def ids(*xids: int) -> frozenset[str]:
    """Transaction ids as the listener passes them (text, from pg_snapshot_xip())."""
    return frozenset(str(x) for x in xids)


def read(
    hold: Hold, now: float, *, stable: bool = True, held: bool, running: frozenset[str] = ids()
) -> Step:
    return hold.after_read(stable=stable, held=held, running=running, now=now)


def test_the_announcement_is_what_the_sql_sends() -> None:
    assert HOLD_ANNOUNCED == '{"hold":true}'


def test_a_session_starts_polling_unless_told_otherwise() -> None:
    assert Hold(R, 0.0).active and Hold(R, 0.0).polling
    quiet = Hold(R, 0.0, polling=False)
    assert not quiet.active and not quiet.polling and not quiet.drain_starting
    assert quiet.waiting == 0


def test_a_clear_flag_after_polling_starts_a_drain_then_stops_polling() -> None:
    hold = Hold(R, 0.0)
    assert read(hold, 0.1, held=False, running=ids(5)) is Step.NONE
    assert not hold.polling
    assert hold.drain_starting, "the next read must follow a committed id of the listener's"
    assert hold.active
    hold.drain_below(10)
    read(hold, 0.2, held=False, running=ids(5, 7))
    assert not hold.drain_starting
    assert hold.waiting == 2 and hold.active
    read(hold, 0.3, held=False, running=ids(7, 11))  # 5 ended; 11 began after: not waited for
    assert hold.waiting == 1 and hold.active
    read(hold, 0.4, held=False, running=ids(11, 12))
    assert hold.waiting == 0
    assert not hold.active


def test_a_drain_with_nothing_running_ends_at_its_first_read() -> None:
    hold = Hold(R, 0.0)
    read(hold, 0.1, held=False)
    hold.drain_below(3)
    read(hold, 0.2, held=False, running=ids(3, 4))  # at or above the committed id: newer
    assert not hold.active and hold.waiting == 0


def test_without_the_committed_id_a_drain_waits_for_everything_running() -> None:
    hold = Hold(R, 0.0)
    read(hold, 0.1, held=False)
    read(hold, 0.2, held=False, running=ids(1, 100, 10_000))
    assert hold.waiting == 3


def test_a_flag_seen_clear_while_not_polling_starts_no_drain() -> None:
    hold = Hold(R, 0.0, polling=False)
    read(hold, 0.1, held=False, running=ids(1, 2))
    assert not hold.drain_starting and not hold.active and hold.waiting == 0


def test_a_held_flag_makes_a_quiet_relay_poll() -> None:
    hold = Hold(R, 0.0, polling=False)
    assert read(hold, 0.1, held=True) is Step.NONE
    assert hold.polling and hold.active


def test_a_hold_is_released_after_the_state_held_still_for_the_quiet_period() -> None:
    hold = Hold(R, 0.0)
    assert read(hold, 0.5, held=True, stable=True) is Step.NONE  # first read: a change
    assert read(hold, 1.0, held=True, stable=False) is Step.NONE  # changed: the clock restarts
    assert read(hold, 2.9, held=True, stable=False) is Step.NONE  # 1.9 s still
    assert read(hold, 3.0, held=True, stable=False) is Step.RELEASE  # 2.0 s still
    # A hold that comes straight back (the release lost a race) gets a full period again.
    assert read(hold, 3.1, held=True, stable=False) is Step.NONE
    assert read(hold, 4.9, held=True, stable=False) is Step.NONE
    assert read(hold, 5.0, held=True, stable=False) is Step.RELEASE


@pytest.mark.parametrize("how", ["announced", "taken"])
def test_a_new_hold_gets_a_full_quiet_period_however_long_the_relay_was_idle(how: str) -> None:
    hold = Hold(R, 0.0, polling=False)
    read(hold, 0.1, held=False)
    getattr(hold, how)(100.0)  # idle for long, then a hold
    assert hold.polling and hold.active
    assert read(hold, 100.1, held=True) is Step.NONE
    assert read(hold, 101.9, held=True) is Step.NONE
    assert read(hold, 102.0, held=True) is Step.RELEASE


def test_a_hold_seen_again_during_a_drain_polls_and_keeps_draining() -> None:
    hold = Hold(R, 0.0)
    read(hold, 0.1, held=False)
    hold.drain_below(50)
    read(hold, 0.2, held=False, running=ids(7))
    assert hold.waiting == 1
    read(hold, 0.3, held=True, running=ids(7))
    assert hold.polling and hold.active and hold.waiting == 1
    read(hold, 0.4, held=True, running=ids())
    assert hold.waiting == 0 and hold.active, "still held: polling"
    read(hold, 0.5, held=False)
    assert hold.drain_starting, "the end of the second hold is drained afresh"


# Properties over random sequences of what the listener does.


@dataclass
class Model:
    """What the docstring promises, kept apart from the implementation."""

    polling: bool
    quiet_since: float
    last_stable: bool | None = None
    drain_due: bool = False
    bound: int | None = None
    waiting_for: set[int] | None = field(default=None)


reads_steps = st.tuples(
    st.sampled_from(["read", "read", "read", "read", "announced", "taken"]),
    st.floats(min_value=0.0, max_value=1.5),  # time since the previous step
    st.booleans(),  # stable
    st.booleans(),  # held
    st.frozensets(st.integers(min_value=1, max_value=12), max_size=6),  # running
    st.integers(min_value=1, max_value=14),  # the id the listener commits before a drain
)


@settings(max_examples=400, deadline=None)
@given(
    polling=st.booleans(),
    release_after=st.sampled_from([0.1, 0.5, 2.0]),
    steps=st.lists(reads_steps, max_size=60),
)
def test_releases_and_drains_follow_the_protocol(
    polling: bool,
    release_after: float,
    steps: list[tuple[str, float, bool, bool, frozenset[int], int]],
) -> None:
    now = 0.0
    hold = Hold(release_after, now, polling=polling)
    model = Model(polling=polling, quiet_since=now)
    for kind, dt, stable, held, running, bound in steps:
        now += dt
        if kind != "read":
            getattr(hold, kind)(now)
            model.polling, model.quiet_since = True, now
        else:
            if hold.drain_starting:  # as the listener does, before the drain's first read
                hold.drain_below(bound)
                model.bound = bound
            step = hold.after_read(stable=stable, held=held, running=ids(*running), now=now)
            # The drain: a snapshot taken after the clear was seen names what to wait for.
            if model.drain_due:
                model.drain_due = False
                model.waiting_for = {x for x in running if model.bound is None or x < model.bound}
            elif model.waiting_for is not None:
                model.waiting_for &= running
            if not model.waiting_for:
                model.waiting_for = None
            # The hold: released once the state held still for release_after while held.
            changed = stable != model.last_stable
            model.last_stable = stable
            expected = Step.NONE
            if not held:
                if model.polling:
                    model.polling, model.drain_due = False, True
            else:
                if changed or not model.polling:
                    model.quiet_since = now
                model.polling = True
                if now - model.quiet_since >= release_after:
                    expected, model.quiet_since = Step.RELEASE, now
            assert step is expected
            assert step is Step.NONE or held, "a hold is only ended while it is held"
        assert hold.polling is model.polling
        assert hold.drain_starting is model.drain_due
        assert hold.waiting == len(model.waiting_for or ())
        # Never stop polling while a transaction that may have skipped its hint runs.
        assert hold.active is (model.polling or model.drain_due or model.waiting_for is not None)


@settings(max_examples=300, deadline=None)
@given(
    first=st.frozensets(st.integers(min_value=1, max_value=30), max_size=8),
    later=st.lists(st.frozensets(st.integers(min_value=1, max_value=40), max_size=8), max_size=20),
    bound=st.integers(min_value=1, max_value=31),
)
def test_a_drain_lasts_exactly_until_none_of_its_transactions_runs(
    first: frozenset[int], later: list[frozenset[int]], bound: int
) -> None:
    hold = Hold(R, 0.0)
    read(hold, 0.0, held=False)
    hold.drain_below(bound)
    read(hold, 0.0, held=False, running=ids(*first))
    still = {x for x in first if x < bound}
    assert hold.active is bool(still)
    for running in later:
        was_draining = hold.active
        read(hold, 0.0, held=False, running=ids(*running))
        still &= running
        if was_draining:
            assert hold.active is bool(still), (still, running)
        else:
            assert not hold.active, "an ended drain never starts again without a hold"
            still = set()
