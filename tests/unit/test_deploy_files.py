"""The compose stack's files parse, keep the model server unreachable, and the dashboard asks
only for metrics and labels that the telemetry module emits (as the collector renames them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Settings
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


def final_stage(containerfile: str) -> list[str]:
    """The instructions of the image's last stage, continuation lines joined, comments gone."""
    joined = re.sub(r"\\\n", " ", containerfile)
    lines = [line.strip() for line in joined.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")]
    assert len(starts) >= 2, "a multi-stage build"
    return instructions[starts[-1] :]


@pytest.fixture(scope="module")
def containerfile() -> str:
    return (ROOT / "Containerfile").read_text()


def test_the_image_runs_as_an_unprivileged_user_without_installers_or_compilers(
    containerfile: str,
) -> None:
    final = final_stage(containerfile)
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage names its user"
    uid, _, gid = users[-1].partition(":")
    assert int(uid) > 0
    assert int(gid) > 0
    run = " ".join(line for line in final if line.upper().startswith("RUN "))
    # Nothing is installed in the final stage, and what could install anything is removed.
    assert not re.search(r"apt-get install|apt install|pip install|build-essential|gcc", run)
    assert re.search(r"pip uninstall --yes pip setuptools", run)
    for path in ("ensurepip", "/usr/local/bin/pip*", "/usr/bin/apt*", "/usr/bin/dpkg*",
                 "/var/lib/dpkg", "/var/lib/apt"):  # fmt: skip
        assert path in run, path
    copies = [line for line in final if line.upper().startswith("COPY ")]
    assert copies == ["COPY --from=builder /opt/venv /opt/venv"]


def test_the_image_installs_the_hashed_runtime_lock(containerfile: str) -> None:
    assert "COPY requirements/runtime.lock" in containerfile
    assert "--require-hashes --no-deps -r requirements/runtime.lock" in containerfile
    lock = (ROOT / "requirements" / "runtime.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9][\w.-]*)==", lock, re.MULTILINE)
    assert pins
    assert lock.count("--hash=sha256:") >= len(pins)
    assert "pytest" not in pins  # the runtime set, not the dev one


@pytest.mark.parametrize("service", ["gateway", "migrate"])
def test_compose_runs_the_gateway_read_only_unprivileged_and_without_capabilities(
    compose: Any, containerfile: str, service: str
) -> None:
    spec = compose["services"][service]
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]
    assert "cap_add" not in spec
    assert "no-new-privileges:true" in spec["security_opt"]
    assert spec.get("privileged", False) is False
    uid, _, gid = str(spec["user"]).partition(":")
    assert int(uid) > 0
    assert int(gid) > 0
    # The same user the image declares, so file ownership inside it holds.
    assert f"USER {spec['user']}" in final_stage(containerfile)
    # Only tmpfs is writable, and nothing on it may be executed.
    for mount in spec["tmpfs"]:
        assert {"noexec", "nosuid"} <= set(mount.partition(":")[2].split(",")), mount
    assert "volumes" not in spec


def test_compose_gives_the_gateway_time_to_finish_streams_and_flush_audit_on_stop(
    compose: Any,
) -> None:
    grace = compose["services"]["gateway"]["stop_grace_period"]
    assert grace.endswith("s")
    # Docker kills after this; the gateway needs SHUTDOWN_GRACE_S plus up to 10 s of flushing.
    assert float(grace[:-1]) > Settings().shutdown_grace_s + 10
