"""The metric instruments, made once per meter, and the gauges read through callbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from gateway.telemetry import names as n

log = logging.getLogger(__name__)


class Instruments:
    """Every instrument of `names.INSTRUMENTS`; observed values come from registered functions."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            n.REQUEST_DURATION.name,
            n.REQUEST_DURATION.unit,
            n.REQUEST_DURATION.description,
            explicit_bucket_boundaries_advisory=n.DURATION_BUCKETS_S,
        )
        self.tokens = meter.create_histogram(
            n.TOKEN_USAGE.name,
            n.TOKEN_USAGE.unit,
            n.TOKEN_USAGE.description,
            explicit_bucket_boundaries_advisory=n.TOKEN_BUCKETS,
        )
        self.ttft = meter.create_histogram(
            n.TIME_TO_FIRST_TOKEN.name,
            n.TIME_TO_FIRST_TOKEN.unit,
            n.TIME_TO_FIRST_TOKEN.description,
            explicit_bucket_boundaries_advisory=n.TTFT_BUCKETS_S,
        )
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
