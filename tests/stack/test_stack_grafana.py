"""Grafana renderer by value: datasources and their cross-links, provisioning, files, determinism."""

from __future__ import annotations

import json
import re

import yaml

from stack.renderers import RENDERERS, grafana
from stack.spec import Spec
from stack.topology import Topology

SPEC = {"version": 1, "project": "demo", "services": [{"name": "chat", "builtin": True}]}


def render(**extra) -> dict[str, str]:
    spec = Spec.model_validate({**SPEC, **extra})
    return grafana.render(spec, Topology(spec))


def unescape(value):
    """What Grafana reads after expanding a provisioning file: $$ becomes $."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape(v) for v in value]
    return value


def datasources(files: dict[str, str]) -> dict[str, dict]:
    document = unescape(yaml.safe_load(files[grafana.DATASOURCES_PATH]))
    assert document["apiVersion"] == 1
    return {d["uid"]: d for d in document["datasources"]}


def test_renders_provisioning_and_one_file_per_dashboard():
    files = render()
    dashboards = sorted(p for p in files if p.startswith("grafana/dashboards/"))
    assert grafana.DATASOURCES_PATH in files and grafana.DASHBOARD_PROVIDERS_PATH in files
    assert len(files) == 2 + len(dashboards) and len(dashboards) == 2
    for path in dashboards:
        model = json.loads(files[path])
        assert path == f"grafana/dashboards/{model['uid']}.json"


def test_a_spec_with_slos_gets_the_slo_dashboard_file_too():
    files = render(slos=[{"name": "avail", "objective": 99.5, "events": {
        "error_query": "sum(rate(errors_total[$window]))", "total_query": "sum(rate(requests_total[$window]))"}}])
    models = [json.loads(text) for path, text in files.items() if path.startswith(f"{grafana.DASHBOARDS_DIR}/")]
    assert sorted(m["title"] for m in models) == ["Observability stack health", "SLOs", "WebSocket overview"]
    assert all(m["uid"].startswith("demo-") for m in models)


def test_two_projects_can_share_one_dashboards_folder():
    """Dashboard files are named by uid and uids carry the project: a second bundle's files land
    beside the first's in one Grafana instead of replacing them."""
    first = {p for p in render() if p.startswith(grafana.DASHBOARDS_DIR)}
    second = {p for p in render(project="demo-two") if p.startswith(grafana.DASHBOARDS_DIR)}
    assert len(first) == len(second) == 2 and not first & second


def test_datasources_have_fixed_uids_and_compose_urls():
    by_uid = datasources(render())
    assert {uid: d["type"] for uid, d in by_uid.items()} == {
        "prometheus": "prometheus",
        "loki": "loki",
        "jaeger": "jaeger",
        "alertmanager": "alertmanager",
    }
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["loki"]["url"] == "http://loki:3100"
    assert by_uid["jaeger"]["url"] == "http://jaeger:16686"
    assert by_uid["alertmanager"]["url"] == "http://alertmanager:9093"
    assert [uid for uid, d in by_uid.items() if d.get("isDefault")] == ["prometheus"]
    assert len({d["name"] for d in by_uid.values()}) == len(by_uid)


def test_local_target_and_port_overrides_change_the_urls():
    by_uid = datasources(render(target="local", components={"prometheus": {"ports": {"http": 9091}}}))
    assert by_uid["prometheus"]["url"] == "http://127.0.0.1:9091"
    assert by_uid["jaeger"]["url"] == "http://127.0.0.1:16686"
    assert by_uid["loki"]["url"] == "http://127.0.0.1:3100"


def test_every_dollar_in_provisioning_files_is_escaped():
    files = render()
    for path in (grafana.DATASOURCES_PATH, grafana.DASHBOARD_PROVIDERS_PATH):
        lone = re.findall(r"(?<!\$)\$(?!\$)", files[path].replace("$$", ""))
        assert not lone, f"{path} has an unescaped $ that Grafana would expand"
    assert "$${__value.raw}" in files[grafana.DATASOURCES_PATH]


def test_exemplars_open_traces_in_jaeger():
    prometheus = datasources(render())["prometheus"]
    (destination,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    # the exporter's exemplar label (exporter/instrument.py observes with {"trace_id": ...})
    assert destination["name"] == "trace_id" and destination["datasourceUid"] == "jaeger"
    assert prometheus["jsonData"]["alertmanagerUid"] == "alertmanager"


def test_loki_trace_ids_link_to_jaeger_from_labels_and_json_lines():
    loki = datasources(render())["loki"]
    fields = loki["jsonData"]["derivedFields"]
    assert all(f["datasourceUid"] == "jaeger" and f["url"] == "${__value.raw}" for f in fields)
    (label,) = [f for f in fields if f["matcherType"] == "label"]
    assert label["matcherRegex"] == "trace_id"
    (regex,) = [f for f in fields if f["matcherType"] == "regex"]
    line = json.dumps({"message": "published", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f0"})
    match = re.search(regex["matcherRegex"], line)
    assert match and match.group(1) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert re.search(regex["matcherRegex"], json.dumps({"trace_id": None})) is None


def test_jaeger_spans_open_logs_of_their_service_and_trace():
    jaeger = datasources(render())["jaeger"]
    links = jaeger["jsonData"]["tracesToLogsV2"]
    assert links["datasourceUid"] == "loki"
    assert {"key": "service.name", "value": "service_name"} in links["tags"]
    assert links["filterByTraceID"] is True
    assert links["query"] == '{${__tags}} | trace_id="${__trace.traceId}"'


def test_dashboard_provider_points_where_dashboards_are_mounted():
    provider = yaml.safe_load(render()[grafana.DASHBOARD_PROVIDERS_PATH])["providers"][0]
    assert provider["type"] == "file" and provider["folder"] == "demo"
    assert provider["options"]["path"] == grafana.CONTAINER_DASHBOARDS_DIR
    assert provider["allowUiUpdates"] is False
    local = yaml.safe_load(render(target="local")[grafana.DASHBOARD_PROVIDERS_PATH])["providers"][0]
    assert local["options"]["path"] == grafana.DASHBOARDS_DIR  # relative to the bundle root


def test_render_is_deterministic():
    custom = {"custom": [{"title": "Mine", "panels": [{"title": "up", "expr": "up"}]}]}
    first, second = render(dashboards=custom), render(dashboards=custom)
    assert first == second
    assert list(first) == sorted(first)
    assert all(text.endswith("\n") for text in first.values())


def test_output_carries_no_timestamps():
    files = render()
    for path, text in files.items():
        assert not re.search(r"\b20\d\d-\d\d-\d\dT", text), path


def test_grafana_is_a_registered_renderer():
    assert "grafana" in RENDERERS
