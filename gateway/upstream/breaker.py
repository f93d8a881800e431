"""A circuit breaker for one backend: consecutive failures open it, and after a pause one trial
request at a time decides whether it closes again. Pure: no I/O, the clock is injected."""

from __future__ import annotations

import enum
from collections.abc import Callable

import msgspec


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerStatus(msgspec.Struct, frozen=True):
    """What `/readyz` and `gateway backends list` show about one breaker."""

    state: str
    failures: int  # consecutive failures since the last success
    retry_in_s: float | None  # while open: seconds until a trial request is let through


class Breaker:
    """Counts consecutive failures of one backend and decides whether it may be sent a request.

    Every request that `allows()` lets through ends in exactly one report: `succeeded()`,
    `failed()`, or, for the half-open trial only, `abandoned()` when it ended without a verdict
    (the client left). A request that ends without a verdict while the breaker is closed reports
    nothing: it says nothing about the backend.
    """

    def __init__(self, failure_threshold: int, open_s: float, clock: Callable[[], float]) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if open_s < 0:
            raise ValueError("open_s must not be negative")
        self._threshold = failure_threshold
        self._open_s = open_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        # Time alone turns OPEN into HALF_OPEN, so it is decided whenever someone looks.
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._open_s:
            self._state = BreakerState.HALF_OPEN
            self._trial_out = False
        return self._state

    def allows(self) -> bool:
        """Whether a request may go to the backend now; half-open lets one trial out at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._trial_out:
            return False
        self._trial_out = True
        return True

    def succeeded(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial_out = False

    def failed(self) -> None:
        self._failures += 1
        state = self.state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self._failures >= self._threshold
        ):
            self._open()
        # Already open: a request sent before it opened failed late; the pause is not extended.

    def abandoned(self) -> None:
        """The half-open trial ended without a verdict: the next caller may try instead."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_out = False

    def status(self) -> BreakerStatus:
        state = self.state
        retry_in = None
        if state is BreakerState.OPEN:
            retry_in = max(0.0, self._opened_at + self._open_s - self._clock())
        return BreakerStatus(state.value, self._failures, retry_in)

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._trial_out = False
