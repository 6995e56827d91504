"""relay/backoff.py on its own: the delays' bounds and jitter, the reset after a healthy
session, the brief retry, and what counts as a short session (its public behaviour only)."""

from __future__ import annotations

import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.backoff import BRIEF_RETRY, STUCK_AFTER, Backoff


def bound(initial: float, cap: float, n: int) -> float:
    """The documented bound of the n-th delay (from 0) since the last reset."""
    return min(cap, initial * 2**n)


@settings(max_examples=300, deadline=None)
@given(
    initial=st.floats(min_value=0.001, max_value=10),
    cap=st.floats(min_value=0.001, max_value=120),
    draws=st.integers(min_value=1, max_value=80),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_delay_is_within_its_climbing_bound(
    initial: float, cap: float, draws: int, seed: int
) -> None:
    backoff = Backoff(initial, cap, 60.0, rng=random.Random(seed))
    for n in range(draws):
        delay = backoff.delay()
        assert 0 <= delay <= bound(initial, cap, n), (n, delay)
        assert delay <= cap


def test_the_jitter_is_full_from_zero_to_the_bound() -> None:
    """Thousands of seeded draws at each step spread over the whole of [0, bound]."""
    for step in range(6):
        draws = []
        for seed in range(2000):
            backoff = Backoff(0.5, 30.0, 60.0, rng=random.Random(seed))
            for _ in range(step):
                backoff.delay()
            draws.append(backoff.delay())
        top = bound(0.5, 30.0, step)
        assert min(draws) >= 0 and max(draws) <= top
        assert min(draws) < 0.01 * top, "draws reach down to 0"
        assert max(draws) > 0.99 * top, "draws reach up to the bound"
        mean = sum(draws) / len(draws)
        assert 0.45 * top < mean < 0.55 * top, "uniform: the mean is half the bound"


def test_the_bound_doubles_to_the_cap_and_stays_there() -> None:
    backoff = Backoff(0.25, 3.0, 60.0, rng=random.Random(1))
    tops = []
    for n in range(8):
        backoff.delay()
        tops.append(bound(0.25, 3.0, n))
    assert tops == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert backoff.attempt == 8


def test_thousands_of_failures_never_overflow_or_pass_the_cap() -> None:
    backoff = Backoff(0.5, 30.0, 60.0, rng=random.Random(2))
    delays = [backoff.delay() for _ in range(5000)]
    assert max(delays) <= 30.0
    assert max(delays[-1000:]) > 25.0, "still jittered over the whole capped range"


def test_without_an_rng_of_its_own_delays_are_still_bounded() -> None:
    backoff = Backoff(0.1, 1.0, 60.0)
    assert all(0 <= backoff.delay() <= 1.0 for _ in range(200))


def test_a_session_that_held_for_reset_after_starts_again_from_initial() -> None:
    backoff = Backoff(1.0, 100.0, 0.05, rng=random.Random(3))
    for _ in range(5):
        backoff.delay()
    backoff.healthy()
    time.sleep(0.06)
    assert backoff.delay() <= 1.0, "back to the first bound"
    assert backoff.attempt == 1
    assert backoff.short_sessions == 0
    assert backoff.last_session_s is not None and backoff.last_session_s >= 0.05


def test_a_short_session_does_not_reset_the_climb() -> None:
    backoff = Backoff(1.0, 100.0, 3600.0, rng=random.Random(4))
    for _ in range(4):
        backoff.delay()
    backoff.healthy()
    backoff.delay()  # the session ended at once
    assert backoff.attempt == 5
    assert backoff.short_sessions == 1
    assert backoff.last_session_s is not None and backoff.last_session_s < 3600


def test_failed_attempts_without_a_session_are_not_short_sessions() -> None:
    backoff = Backoff(1.0, 100.0, 3600.0, rng=random.Random(5))
    for _ in range(20):
        backoff.delay()
    assert backoff.short_sessions == 0 and not backoff.stuck
    assert backoff.last_session_s is None


def test_short_sessions_in_a_row_make_it_stuck_once_per_streak() -> None:
    backoff = Backoff(0.01, 0.02, 0.05, rng=random.Random(6))
    for i in range(STUCK_AFTER + 3):
        backoff.healthy()
        backoff.delay()
        assert backoff.short_sessions == i + 1
        assert backoff.stuck is (i + 1 >= STUCK_AFTER)
    assert backoff.stuck_total == 1
    backoff.healthy()  # one session that holds ends the streak
    time.sleep(0.06)
    backoff.delay()
    assert backoff.short_sessions == 0 and not backoff.stuck
    for _ in range(STUCK_AFTER):
        backoff.healthy()
        backoff.delay()
    assert backoff.stuck and backoff.stuck_total == 2


@settings(max_examples=200, deadline=None)
@given(
    cap=st.floats(min_value=0.001, max_value=120),
    climbed=st.integers(min_value=0, max_value=10),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_the_brief_retry_is_short_and_does_not_climb(cap: float, climbed: int, seed: int) -> None:
    backoff = Backoff(0.5, cap, 60.0, rng=random.Random(seed))
    for _ in range(climbed):
        backoff.delay()
    top = min(cap, BRIEF_RETRY)
    for _ in range(20):
        assert top / 2 <= backoff.brief() <= top
    assert backoff.attempt == climbed


def test_the_brief_retry_ends_a_session_like_a_delay() -> None:
    backoff = Backoff(0.5, 30.0, 3600.0, rng=random.Random(7))
    backoff.healthy()
    backoff.brief()
    assert backoff.short_sessions == 1
    assert backoff.last_session_s is not None


def test_the_jitter_never_draws_from_the_global_random() -> None:
    """Its own Random: the process's global one stays untouched (Hypothesis fails a test whose
    global random state changes while it draws, and a relay may share a process with one)."""
    before = random.getstate()
    backoff = Backoff(0.1, 5.0, 60.0)
    for _ in range(50):
        backoff.delay()
        backoff.brief()
    assert random.getstate() == before
