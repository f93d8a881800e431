"""The compose stack's files parse, keep the model server unreachable, and the dashboard asks
only for metrics and labels that the telemetry module emits (as the collector renames them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.telemetry import names
from gateway.telemetry.names import Instrument
from tests.telemetry_support import rig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"
NEVER_PUBLISHED = ("ollama", "postgres", "redis", "otel-collector", "prometheus", "jaeger")
# Labels Prometheus itself adds, or histograms carry.
PROMETHEUS_LABELS = {"le", "instance", "job"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def prometheus_names(instrument: Instrument) -> set[str]:
    """The series the collector's Prometheus exporter makes of an instrument (OTel's
    Prometheus compatibility rules: `.` → `_`, unit suffix, `{…}` units dropped, `_total`)."""
    assert instrument.unit in ("s", "") or instrument.unit.startswith("{"), "add its suffix here"
    base = instrument.name.replace(".", "_") + ("_seconds" if instrument.unit == "s" else "")
    if instrument.kind == "histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    if instrument.kind == "counter":
        return {f"{base}_total"}
    return {base}


SERIES = {series: i for i in names.INSTRUMENTS for series in prometheus_names(i)}


@pytest.fixture(scope="module")
def emitted_labels() -> dict[Instrument, set[str]]:
    """The labels each instrument's series carry, from a request through the real module."""
    with rig() as otel:
        otel.telemetry.observe_audit_depth(lambda: 1)
        otel.telemetry.observe_breakers(lambda: {"b": "open"})
        with otel.telemetry.request("POST", "/api/chat", [], None, "r") as trace:
            trace.set_tenant("t", "acme")
            trace.set_model("m")
            trace.deny("key_rpm")
            with trace.upstream("ollama", "chat", "m", "b") as up:
                up.first_token()
                up.usage(1, 2, ["stop"])
            trace.end(200)
        emitted = otel.metrics()
    by_name = {i.name: i for i in names.INSTRUMENTS}
    assert set(emitted) == set(by_name)
    return {
        by_name[name]: {key.replace(".", "_") for p in points for key in p.attributes}
        for name, points in emitted.items()
    }


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, labels or numbers)."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", "", bare)
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?", bare):
        if match.group(1) is None and match.group(0) not in PROMQL_WORDS:
            found.add(match.group(0))
    return found


def label_names(expr: str) -> set[str]:
    used: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        used.update(label.strip() for label in group.split(",") if label.strip())
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        used.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return used


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert match is not None, variable["definition"]
        metric, label = match.groups()
        queries.append(f'{metric}{{{label}=~".*"}}')
    return queries


def test_the_dashboard_reads_only_metrics_and_labels_the_module_emits_and_shows_them_all(
    emitted_labels: dict[Instrument, set[str]],
) -> None:
    read: set[Instrument] = set()
    for query in dashboard_queries():
        used = metric_names(query)
        assert used, query
        assert used <= set(SERIES), f"{query}: unknown {used - set(SERIES)}"
        instruments = {SERIES[name] for name in used}
        # Every label it groups or filters by is on every series it reads.
        for instrument in instruments:
            unknown = label_names(query) - emitted_labels[instrument] - PROMETHEUS_LABELS
            assert not unknown, f"{query}: {instrument.name} has no {unknown}"
        read.update(instruments)
    assert read == set(names.INSTRUMENTS)


def test_the_dashboard_panels_use_the_provisioned_data_sources() -> None:
    provisioned = load_yaml(
        DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
    )
    uids = {source["uid"] for source in provisioned["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text())
    assert {"prometheus", "jaeger"} <= uids
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids
        assert panel["targets"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    providers = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


@pytest.fixture(scope="module")
def compose() -> Any:
    return load_yaml(ROOT / "compose.yaml")


def test_compose_keeps_the_model_server_and_the_telemetry_stack_unpublished(compose: Any) -> None:
    services = compose["services"]
    for name in NEVER_PUBLISHED:
        assert "ports" not in services[name], name
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    # Grafana (reachable by people) shares no network with the model server or the stores.
    assert not set(services["grafana"]["networks"]) & set(services["ollama"]["networks"])
    assert compose["networks"]["telemetry"] == {"internal": True}


def test_compose_points_the_gateway_at_the_collector_and_mounts_files_that_exist(
    compose: Any,
) -> None:
    services = compose["services"]
    gateway = services["gateway"]
    assert gateway["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(
        "-http://otel-collector:4318}"
    )
    assert set(gateway["networks"]) & set(services["otel-collector"]["networks"])
    for name in ("otel-collector", "prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume


def test_the_collector_receives_otlp_and_feeds_prometheus_and_jaeger() -> None:
    collector = load_yaml(DEPLOY / "otel-collector.yaml")
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    pipelines = collector["service"]["pipelines"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        assert set(pipeline["processors"]) <= set(collector["processors"])
    port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    scrape = load_yaml(DEPLOY / "prometheus.yaml")["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"otel-collector:{port}"]
