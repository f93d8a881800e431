"""The circuit breaker: failures open it, time half-opens it, one trial at a time closes it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.breaker import Breaker, BreakerState, BreakerStatus

OPEN_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(b: Breaker) -> BreakerState:
    # A function, not the property inline: mypy would narrow the property across calls.
    return b.state


def breaker(threshold: int = 3) -> tuple[Breaker, Clock]:
    clock = Clock()
    return Breaker(threshold, OPEN_S, clock), clock


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    b, _ = breaker(3)
    b.failed()
    b.failed()
    b.succeeded()
    b.failed()
    b.failed()
    assert state(b) is BreakerState.CLOSED
    assert b.allows()
    b.failed()
    assert state(b) is BreakerState.OPEN
    assert not b.allows()


def test_after_the_pause_one_trial_goes_out_and_its_verdict_decides() -> None:
    b, clock = breaker(1)
    b.failed()
    clock.now += OPEN_S - 0.001
    assert not b.allows()
    clock.now += 0.001
    assert state(b) is BreakerState.HALF_OPEN
    assert b.allows()
    assert not b.allows()  # the trial is out
    b.failed()  # the trial failed: open again, for a whole new pause
    assert state(b) is BreakerState.OPEN
    clock.now += OPEN_S - 0.001
    assert not b.allows()
    clock.now += 0.001
    assert b.allows()
    b.succeeded()
    assert state(b) is BreakerState.CLOSED
    assert b.allows()
    assert b.allows()


def test_an_abandoned_trial_lets_the_next_caller_try() -> None:
    b, clock = breaker(1)
    b.failed()
    clock.now += OPEN_S
    assert b.allows()
    assert not b.allows()
    b.abandoned()
    assert state(b) is BreakerState.HALF_OPEN
    assert b.allows()
    assert not b.allows()


def test_abandoning_outside_half_open_changes_nothing() -> None:
    b, _ = breaker(1)
    b.abandoned()
    assert state(b) is BreakerState.CLOSED
    b.failed()
    b.abandoned()
    assert state(b) is BreakerState.OPEN
    assert not b.allows()


def test_a_late_failure_while_open_does_not_extend_the_pause() -> None:
    b, clock = breaker(1)
    b.failed()
    clock.now += OPEN_S / 2
    b.failed()  # a request sent before it opened
    clock.now += OPEN_S / 2
    assert b.allows()


def test_status_shows_state_failures_and_time_to_the_trial() -> None:
    b, clock = breaker(2)
    b.failed()
    assert b.status() == BreakerStatus("closed", 1, None)
    b.failed()
    clock.now += 4.0
    assert b.status() == BreakerStatus("open", 2, OPEN_S - 4.0)
    clock.now += OPEN_S
    assert b.status() == BreakerStatus("half_open", 2, None)
    b.succeeded()
    assert b.status() == BreakerStatus("closed", 0, None)


@pytest.mark.parametrize(("threshold", "open_s"), [(0, 1.0), (1, -1.0)])
def test_nonsense_settings_are_refused(threshold: int, open_s: float) -> None:
    with pytest.raises(ValueError, match="must"):
        Breaker(threshold, open_s, Clock())


# One step of a random history: a new request asks, time passes, or an outstanding request ends
# (the number picks which one, or how long to wait).
_step = st.tuples(
    st.sampled_from(["ask", "ask", "ask", "wait", "wait", "ok", "fail", "fail", "gone"]),
    st.integers(0, 20),
)
_WAITS = (0.5, 3.0, OPEN_S / 2, OPEN_S)


@given(threshold=st.integers(1, 4), steps=st.lists(_step, min_size=10, max_size=100))
def test_random_histories_keep_the_breaker_honest(
    threshold: int, steps: list[tuple[str, int]]
) -> None:
    b, clock = breaker(threshold)
    out: list[tuple[bool, int]] = []  # outstanding requests: (was a trial, the half-open period)
    period = 0  # counts half-open periods, so a trial of an old period is not taken as current
    opened_at: float | None = None
    streak = 0  # consecutive failures reported since the last success
    before = state(b)
    for verb, pick in steps:
        ended = False
        if verb == "ask":
            if b.allows():
                # Never while open (`before` is current: the pause over means half-open), and
                # never a second trial while one is out.
                assert before is not BreakerState.OPEN
                trial = before is BreakerState.HALF_OPEN
                if trial:
                    assert not any(t and p == period for t, p in out)
                out.append((trial, period))
            else:
                assert before is not BreakerState.CLOSED
        elif verb == "wait":
            clock.now += _WAITS[pick % len(_WAITS)]
        elif ended := bool(out):
            trial, trial_period = out.pop(pick % len(out))
            if verb == "ok":
                b.succeeded()
                streak = 0
            elif verb == "fail":
                b.failed()
                streak += 1
            elif trial and trial_period == period and state(b) is BreakerState.HALF_OPEN:
                b.abandoned()  # only the current trial reports leaving without a verdict
        after = state(b)
        if verb == "ok" and ended:
            assert after is BreakerState.CLOSED
        if verb == "fail" and ended and (before is BreakerState.HALF_OPEN or streak >= threshold):
            assert after is BreakerState.OPEN  # a failed trial, or one failure too many
        if after is BreakerState.CLOSED and before is not BreakerState.CLOSED:
            assert verb == "ok"  # it closes only on a success
        if after is BreakerState.OPEN and before is not BreakerState.OPEN:
            assert verb == "fail"
            assert before is BreakerState.HALF_OPEN or streak >= threshold
            opened_at = clock.now
        if after is BreakerState.OPEN:
            assert opened_at is not None
            assert clock.now - opened_at < OPEN_S  # the pause over means half-open
        if after is BreakerState.HALF_OPEN and before is not BreakerState.HALF_OPEN:
            assert opened_at is not None
            assert clock.now - opened_at >= OPEN_S
            period += 1
        before = after
