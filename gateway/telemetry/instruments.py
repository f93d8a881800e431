"""The metric instruments, made once per meter, and the gauges read through callbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from gateway.telemetry import names as n
from gateway.telemetry.histograms import Histogram
from gateway.telemetry.spans import Attributes

log = logging.getLogger(__name__)


class Recorder(Protocol):
    def record(self, amount: float, attributes: Attributes | None = None) -> None: ...


HISTOGRAMS = (
    (n.REQUEST_DURATION, n.DURATION_BUCKETS_S),
    (n.TOKEN_USAGE, n.TOKEN_BUCKETS),
    (n.TIME_TO_FIRST_TOKEN, n.TTFT_BUCKETS_S),
)


def own_histograms() -> list[Histogram]:
    """The request path's histograms, aggregated by the gateway (`histograms.py`)."""
    return [Histogram(instrument, boundaries) for instrument, boundaries in HISTOGRAMS]


class Instruments:
    """Every instrument of `names.INSTRUMENTS`; observed values come from registered functions.

    The histograms are `own` when given (in the order of `HISTOGRAMS`), else the meter's.
    """

    def __init__(self, meter: Meter, own: Sequence[Histogram] | None = None) -> None:
        histograms: Sequence[Recorder] = (
            own
            if own
            else [
                meter.create_histogram(
                    instrument.name,
                    instrument.unit,
                    instrument.description,
                    explicit_bucket_boundaries_advisory=boundaries,
                )
                for instrument, boundaries in HISTOGRAMS
            ]
        )
        self.duration, self.tokens, self.ttft = histograms
        # Counted in a plain dict and observed at export: two SDK records per request saved.
        self.in_flight: dict[str, int] = {}
        meter.create_observable_up_down_counter(
            n.STREAMS_IN_FLIGHT.name,
            [self._observe_in_flight],
            n.STREAMS_IN_FLIGHT.unit,
            n.STREAMS_IN_FLIGHT.description,
        )
        self.denials = meter.create_counter(n.DENIALS.name, n.DENIALS.unit, n.DENIALS.description)
        self.audit_depth: list[Callable[[], int]] = []
        self.breakers: list[Callable[[], Mapping[str, str]]] = []
        meter.create_observable_gauge(
            n.AUDIT_DEPTH.name,
            [self._observe_audit],
            n.AUDIT_DEPTH.unit,
            n.AUDIT_DEPTH.description,
        )
        meter.create_observable_gauge(
            n.BREAKER_STATE.name,
            [self._observe_breakers],
            n.BREAKER_STATE.unit,
            n.BREAKER_STATE.description,
        )

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        # A copy: the request path may add a backend while the export thread reads.
        return [
            Observation(count, {n.BACKEND: name}) for name, count in dict(self.in_flight).items()
        ]

    def _observe_audit(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(fn()) for fn in self.audit_depth]

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for fn in self.breakers:
            for backend, state in fn().items():
                value = n.BREAKER_VALUES.get(state)
                if value is None:
                    log.warning("telemetry: unknown breaker state %r of %s", state, backend)
                    continue
                observations.append(Observation(value, {n.BACKEND: backend}))
        return observations
