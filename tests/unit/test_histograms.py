"""The gateway's own histograms against the SDK's: the same points, in every export they reach."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.telemetry import OtelTelemetry
from gateway.telemetry import histograms as h
from gateway.telemetry import names as n
from tests.telemetry_support import rig

BOUNDS = n.DURATION_BUCKETS_S
DELTA = AggregationTemporality.DELTA
CUMULATIVE = AggregationTemporality.CUMULATIVE
RESOURCE = Resource({"service.name": "histogram-test"})
SCOPE = InstrumentationScope("histogram-test", "1")

attribute_sets = st.sampled_from(
    [
        {},
        {n.HTTP_METHOD: "POST", n.HTTP_ROUTE: "/api/chat", n.HTTP_STATUS: 200},
        {n.HTTP_ROUTE: "/api/chat", n.HTTP_METHOD: "POST", n.HTTP_STATUS: 200},  # same set
        {n.HTTP_METHOD: "GET", n.HTTP_STATUS: 404, n.ERROR_TYPE: "model_not_found"},
    ]
)
# Bucket edges exactly, values between them, far beyond the last, and what the SDK drops.
amounts = st.one_of(
    st.sampled_from([0.0, *BOUNDS, BOUNDS[-1] * 10, -1.0, float("nan"), float("inf")]),
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.integers(min_value=0, max_value=10_000),
)
records = st.lists(st.tuples(amounts, attribute_sets), max_size=40)


def sdk_points(recorded: list[tuple[float, dict[str, Any]]]) -> list[HistogramDataPoint]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], exemplar_filter=AlwaysOffExemplarFilter())
    meter = provider.get_meter("sdk")
    histogram = meter.create_histogram("d", "s", explicit_bucket_boundaries_advisory=BOUNDS)
    for amount, attributes in recorded:
        histogram.record(amount, attributes)
    return points(reader.get_metrics_data())


def metrics(data: MetricsData | None) -> list[Metric]:
    """Every metric of an export, whatever its resource and scope."""
    return [
        metric
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
    ]


def points(data: MetricsData | None) -> list[HistogramDataPoint]:
    return [point for metric in metrics(data) for point in metric.data.data_points]


def only_point(metric: Metric | None) -> HistogramDataPoint:
    assert metric is not None
    (point,) = metric.data.data_points
    return point


def attached(*, counter: bool) -> tuple[InMemoryMetricReader, h.Histogram]:
    """A reader of the SDK's (with one counter counted, if asked) that our histogram joins."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    if counter:
        provider.get_meter(SCOPE.name, SCOPE.version).create_counter("c").add(1)
    histogram = h.Histogram(n.REQUEST_DURATION, BOUNDS)
    assert h.HistogramSet([histogram], RESOURCE, SCOPE).attach(reader)
    return reader, histogram


def comparable(found: list[HistogramDataPoint]) -> list[tuple[Any, ...]]:
    """A point without its times (the two clocks differ), in an order of its attributes."""
    return sorted(
        (
            sorted(dict(point.attributes or {}).items()),
            point.count,
            pytest.approx(point.sum),
            tuple(point.bucket_counts),
            tuple(point.explicit_bounds),
            point.min,
            point.max,
        )
        for point in found
    )


@given(records)
@settings(max_examples=60, deadline=None)
def test_the_points_are_the_sdks_for_the_same_records(
    recorded: list[tuple[float, dict[str, Any]]],
) -> None:
    ours = h.Histogram(n.REQUEST_DURATION, BOUNDS)
    for amount, attributes in recorded:
        ours.record(amount, attributes)
    metric = ours.collect(1, CUMULATIVE)
    assert comparable(metric.data.data_points if metric else []) == comparable(sdk_points(recorded))


def test_a_delta_collection_holds_what_came_since_the_last_and_starts_where_it_ended() -> None:
    ours = h.Histogram(n.TOKEN_USAGE, n.TOKEN_BUCKETS)
    ours.record(10, {"a": 1})
    ours.record(20, {"a": 1})
    early = only_point(ours.collect(1_000, DELTA))
    assert ours.collect(2_000, DELTA) is None  # nothing new
    ours.record(30, {"a": 1})
    third = ours.collect(3_000, DELTA)
    late = only_point(third)
    assert (early.count, early.sum, late.count, late.sum) == (2, 30, 1, 30)
    assert (late.start_time_unix_nano, late.time_unix_nano) == (2_000, 3_000)
    assert third is not None
    assert third.data.aggregation_temporality is DELTA


def test_a_cumulative_point_keeps_counting_and_is_not_changed_by_later_records() -> None:
    ours = h.Histogram(n.TOKEN_USAGE, n.TOKEN_BUCKETS)
    ours.record(10, {"a": 1})
    early = only_point(ours.collect(1_000, CUMULATIVE))
    ours.record(5000, {"a": 1})
    late = only_point(ours.collect(2_000, CUMULATIVE))
    assert (early.count, early.max, late.count, late.max) == (1, 10, 2, 5000)
    assert early.start_time_unix_nano == late.start_time_unix_nano


def test_past_the_cardinality_limit_new_attribute_sets_share_the_overflow_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h, "MAX_POINTS", 3)
    ours = h.Histogram(n.REQUEST_DURATION, BOUNDS)
    for tenant in range(5):
        ours.record(0.1, {n.TENANT_ID: str(tenant)})
    ours.record(0.2, {n.TENANT_ID: "0"})  # an existing set still counts on its own
    metric = ours.collect(1, CUMULATIVE)
    assert metric is not None
    counts = {tuple(sorted(p.attributes.items())): p.count for p in metric.data.data_points}
    assert counts == {
        ((n.TENANT_ID, "0"),): 2,
        ((n.TENANT_ID, "1"),): 1,
        ((n.TENANT_ID, "2"),): 1,
        (("otel.metric.overflow", True),): 2,
    }


def test_the_histograms_reach_a_reader_whose_sdk_side_collected_nothing() -> None:
    reader, histogram = attached(counter=False)
    assert reader.get_metrics_data() is None  # nothing recorded anywhere yet
    histogram.record(0.3, {"a": "b"})
    data = reader.get_metrics_data()
    assert data is not None
    ((resource, scope, metric),) = [
        (r.resource, s.scope, m) for r in data.resource_metrics for s in r.scope_metrics
        for m in s.metrics
    ]  # fmt: skip
    assert (resource, scope, metric.name) == (RESOURCE, SCOPE, n.REQUEST_DURATION.name)


def test_the_histograms_join_the_scope_of_the_sdks_metrics() -> None:
    reader, histogram = attached(counter=True)
    histogram.record(0.3)
    data = reader.get_metrics_data()
    assert data is not None
    ((resource,),) = [data.resource_metrics]
    ((scope,),) = [resource.scope_metrics]
    assert scope.scope == SCOPE
    assert [m.name for m in scope.metrics] == ["c", n.REQUEST_DURATION.name]


def test_the_sdks_metrics_pass_alone_when_the_histograms_have_nothing() -> None:
    reader, _ = attached(counter=True)
    data = reader.get_metrics_data()
    assert data is not None
    assert [metric.name for metric in metrics(data)] == ["c"]


@pytest.fixture
def telemetry_with(request: pytest.FixtureRequest) -> Iterator[InMemoryMetricReader]:
    reader: InMemoryMetricReader = request.param
    telemetry = OtelTelemetry(metric_reader=reader)
    try:
        with telemetry.request("POST", "/api/chat", [], None, "req-1") as trace:
            trace.end(200)
        yield reader
    finally:
        telemetry.close()


def duration_data(reader: InMemoryMetricReader) -> Any:
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [m for m in metrics(data) if m.name == n.REQUEST_DURATION.name]
    return metric.data


@pytest.mark.parametrize(
    "telemetry_with",
    [InMemoryMetricReader(preferred_temporality={Histogram: DELTA})],
    indirect=True,
)
def test_a_reader_that_asks_for_deltas_gets_them(telemetry_with: InMemoryMetricReader) -> None:
    first = duration_data(telemetry_with)
    assert first.aggregation_temporality is DELTA
    assert [p.count for p in first.data_points] == [1]
    assert telemetry_with.get_metrics_data() is None  # the request was exported once


@pytest.mark.parametrize(
    "telemetry_with",
    [
        InMemoryMetricReader(
            preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}
        )
    ],
    indirect=True,
)
def test_a_reader_that_asks_for_exponential_buckets_gets_them_from_the_sdk(
    telemetry_with: InMemoryMetricReader,
) -> None:
    data = duration_data(telemetry_with)
    assert isinstance(data, ExponentialHistogram)
    assert [p.count for p in data.data_points] == [1]


def test_asking_for_exemplars_leaves_the_histograms_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "always_on")
    with rig() as held:
        with held.telemetry.request("POST", "/api/chat", [], None, "req-1") as trace:
            trace.end(200)
        data = held.reader.get_metrics_data()
    assert data is not None
    (metric,) = [m for m in metrics(data) if m.name == n.REQUEST_DURATION.name]
    assert len(only_point(metric).exemplars) == 1


@pytest.mark.parametrize("exemplar_filter", [None, "always_off"])
def test_the_request_path_records_into_the_gateways_own_histograms(
    exemplar_filter: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The points are the same either way (above); what differs is the cost of each record.
    if exemplar_filter is not None:
        monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", exemplar_filter)
    with rig() as held:
        instruments = held.telemetry._instruments
        for histogram in (instruments.duration, instruments.tokens, instruments.ttft):
            assert isinstance(histogram, h.Histogram)
