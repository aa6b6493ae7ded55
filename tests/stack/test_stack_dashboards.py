"""Dashboards by value: every query parses, names only catalog metrics and labels, layout is sound."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import promql_parser
import pytest
import yaml

from exporter import catalog
from stack import check, dashboard_ids
from stack.renderers import dashboards as dash
from stack.renderers import grafana, runbooks
from stack.spec import Spec, grafana_promql_for_parsing
from stack.topology import Topology
from tests.conftest import free_port, require_binary, wait_for_port

SPEC = {
    "version": 1,
    "project": "demo",
    "services": [{"name": "chat", "builtin": True}, {"name": "edge", "otlp": False}],
}
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance"}
KNOWN_PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "logs", "alertlist"}


def render_models(**extra) -> dict[str, dict]:
    spec = Spec.model_validate({**SPEC, **extra})
    return grafana.dashboards(spec)


def builtin_models() -> dict[str, dict]:
    return render_models()


def by_title(models: dict[str, dict], title: str) -> dict:
    (model,) = [m for m in models.values() if m["title"] == title]
    return model


def prometheus_targets(model: dict):
    """(panel, target) for every Prometheus query of a dashboard."""
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            if target["datasource"]["type"] == "prometheus":
                yield panel, target


def variable_selectors(model: dict):
    """The series selector inside each label_values(selector, label) variable query."""
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"])
            assert match, variable["query"]
            yield variable, match.group(1)


def vector_selectors(expr: str) -> list:
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(grafana_promql_for_parsing(expr)), visit)
    return found


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)

    promql_parser.walk(promql_parser.parse(grafana_promql_for_parsing(expr)), visit)
    return labels


def catalog_metric(series: str) -> tuple[catalog.Metric | None, str]:
    """The catalog metric a series name belongs to, and the series suffix (_bucket, ...)."""
    if series in catalog.BY_NAME:
        return catalog.BY_NAME[series], ""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and base in catalog.BY_NAME and catalog.BY_NAME[base].type == "histogram":
            return catalog.BY_NAME[base], suffix
    return None, ""


# ---------------------------------------------------------------------------------------
# One source of truth: metric names, labels and label values come from the catalog
# ---------------------------------------------------------------------------------------


def test_every_query_parses_as_promql():
    count = 0
    for model in builtin_models().values():
        for panel, target in prometheus_targets(model):
            promql_parser.parse(grafana_promql_for_parsing(target["expr"]))
            count += 1
        for _, selector in variable_selectors(model):
            promql_parser.parse(grafana_promql_for_parsing(selector))
    assert count > 30


def test_websocket_dashboard_names_only_catalog_metrics_and_uses_all_of_them():
    model = by_title(builtin_models(), "WebSocket overview")
    used: set[str] = set()
    exprs = [t["expr"] for _, t in prometheus_targets(model)] + [s for _, s in variable_selectors(model)]
    for expr in exprs:
        for selector in vector_selectors(expr):
            metric, suffix = catalog_metric(selector.name)
            assert metric is not None, f"{selector.name} (in {expr}) is not in exporter/catalog.py"
            if metric.type == "histogram":
                assert suffix, f"{selector.name} is a histogram: query a _bucket/_sum/_count series"
            used.add(metric.name)
    assert used == set(catalog.BY_NAME), f"catalog metrics missing from the dashboard: {set(catalog.BY_NAME) - used}"


def test_stack_health_dashboard_names_only_declared_metrics():
    model = by_title(builtin_models(), "Observability stack health")
    (definition,) = [d for d in dash.builtin_definitions() if d.title == "Observability stack health"]
    declared = set(definition.metrics.values())
    for _, target in prometheus_targets(model):
        for selector in vector_selectors(target["expr"]):
            assert selector.name in declared | set(catalog.BY_NAME), selector.name


def test_labels_and_label_values_exist_in_the_catalog():
    model = by_title(builtin_models(), "WebSocket overview")
    for panel, target in prometheus_targets(model):
        expr = target["expr"]
        known_labels = set(TARGET_LABELS)
        for selector in vector_selectors(expr):
            metric, suffix = catalog_metric(selector.name)
            allowed = TARGET_LABELS | set(metric.labels) | ({"le"} if suffix == "_bucket" else set())
            known_labels |= allowed
            for matcher in selector.matchers.matchers:
                assert matcher.name in allowed, f"{panel['title']}: {metric.name} has no label {matcher.name!r}"
                values = metric.label_values.get(matcher.name)
                if values and not matcher.value.startswith("$"):
                    # a literal value or a plain alternation a|b|c: each must be a documented value
                    for value in matcher.value.split("|"):
                        assert value in values, f"{panel['title']}: {matcher.name}={value!r} not in {values}"
        unknown = grouping_labels(expr) - known_labels
        assert not unknown, f"{panel['title']}: grouping by labels no metric has: {unknown}"
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))
        assert legend_labels <= grouping_labels(expr) | TARGET_LABELS, (panel["title"], legend_labels)


def test_rates_use_rate_interval_and_quantiles_group_by_le():
    for model in builtin_models().values():
        for panel, target in prometheus_targets(model):
            expr = target["expr"]
            for function, rng in re.findall(r"\b(rate|increase|irate)\(.*?\[([^\]]+)\]", expr):
                assert rng == "$__rate_interval", f"{panel['title']}: {function} over [{rng}]"
            if "histogram_quantile" in expr:
                assert "le" in grouping_labels(expr), panel["title"]


def test_variable_queries_and_selector_carry_job_and_instance():
    model = by_title(builtin_models(), "WebSocket overview")
    names = [v["name"] for v in model["templating"]["list"]]
    assert names == ["datasource", "job", "instance", "service"]
    for _, target in prometheus_targets(model):
        for selector in vector_selectors(target["expr"]):
            matchers = {(m.name, m.value) for m in selector.matchers.matchers}
            assert {("job", "grafana_variable"), ("instance", "grafana_variable")} <= matchers, target["expr"]


# ---------------------------------------------------------------------------------------
# What the WebSocket dashboard shows
# ---------------------------------------------------------------------------------------


def panels_using(model: dict, metric: catalog.Metric) -> list[dict]:
    return [p for p, t in prometheus_targets(model) if re.search(rf"\b{metric.name}(_bucket)?\b", t["expr"])]


@pytest.mark.parametrize(
    "metric, grouped_by",
    [
        (catalog.ACTIVE_CONNECTIONS, None),
        (catalog.CONNECTIONS_TOTAL, "status"),
        (catalog.DISCONNECTIONS_TOTAL, "code"),
        (catalog.MESSAGES_RECEIVED_TOTAL, "type"),
        (catalog.MESSAGES_SENT_TOTAL, "type"),
        (catalog.ERRORS_TOTAL, "reason"),
        (catalog.RATE_LIMITED_TOTAL, "scope"),
        (catalog.SUBSCRIPTIONS, "namespace"),
        (catalog.FANOUT_MESSAGES_TOTAL, None),
        (catalog.BROKER_LAG_SECONDS, "broker"),
    ],
)
def test_websocket_dashboard_shows(metric, grouped_by):
    model = by_title(builtin_models(), "WebSocket overview")
    panels = panels_using(model, metric)
    assert panels, f"no panel shows {metric.name}"
    if grouped_by:
        exprs = [t["expr"] for p in panels for t in p["targets"]]
        assert any(grouped_by in grouping_labels(e) for e in exprs), f"{metric.name} never split by {grouped_by}"


def test_latency_panel_has_three_quantiles_with_exemplars():
    model = by_title(builtin_models(), "WebSocket overview")
    (panel,) = [p for p in model["panels"] if p["title"] == "Message latency p50 / p95 / p99"]
    quantiles = [re.match(r"histogram_quantile\(([\d.]+),", t["expr"]).group(1) for t in panel["targets"]]
    assert [float(q) for q in quantiles] == [0.5, 0.95, 0.99]
    assert all(t["exemplar"] for t in panel["targets"])
    assert all(catalog.MESSAGE_DURATION_SECONDS.name + "_bucket" in t["expr"] for t in panel["targets"])
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"
    broker = [p for p in model["panels"] if p["title"] == "Broker lag p99"][0]
    assert broker["targets"][0]["exemplar"] is True


def test_logs_traces_and_alert_panels():
    model = by_title(builtin_models(), "WebSocket overview")
    types = {p["title"]: p for p in model["panels"]}
    logs = types["Logs"]
    assert logs["type"] == "logs" and logs["datasource"] == {"type": "loki", "uid": "loki"}
    assert logs["targets"][0]["expr"] == '{service_name="$service"}'
    traces = types["Recent traces"]
    assert traces["datasource"] == {"type": "jaeger", "uid": "jaeger"}
    assert traces["targets"][0]["queryType"] == "search" and traces["targets"][0]["service"] == "$service"
    alerts = types["Firing alerts"]
    assert alerts["type"] == "alertlist" and alerts["options"]["datasource"] == "Prometheus"
    # logs and traces follow the services that send OTLP; a service without OTLP is not offered
    (service,) = [v for v in model["templating"]["list"] if v["name"] == "service"]
    assert service["query"] == "chat" and service["current"]["value"] == "chat"


# ---------------------------------------------------------------------------------------
# Structure Grafana needs (Grafana cannot run here: check the JSON model as strictly as we can)
# ---------------------------------------------------------------------------------------


def all_models() -> dict[str, dict]:
    custom = {
        "dashboards": {
            "custom": [
                {
                    "title": "Business",
                    "panels": [
                        {"title": "Orders", "expr": "sum(rate(orders_total[$__rate_interval]))", "width": 16},
                        {"title": "Queue", "expr": "max(queue_depth)", "type": "stat", "width": 8},
                        {"title": "Top", "expr": "topk(5, sum by (route) (rate(http_total[5m])))", "type": "table"},
                    ],
                }
            ]
        }
    }
    return render_models(**custom)


def test_dashboard_models_have_the_required_shape():
    for uid, model in all_models().items():
        for key in ("uid", "title", "panels", "schemaVersion", "templating", "time", "tags", "annotations"):
            assert key in model, (uid, key)
        assert model["uid"] == uid and len(uid) <= dash.MAX_UID_LENGTH
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", uid)
        assert model["schemaVersion"] >= 39
        assert "id" not in model  # Grafana assigns ids; a fixed id would clash across instances
        ids = [p["id"] for p in model["panels"]]
        assert ids == list(range(1, len(ids) + 1))
        for panel in model["panels"]:
            assert panel["type"] in KNOWN_PANEL_TYPES, panel["type"]
            assert panel["title"]
            if panel["type"] not in ("row", "alertlist"):
                assert panel["targets"] and panel["datasource"]
                ref_ids = [t["refId"] for t in panel["targets"]]
                assert len(set(ref_ids)) == len(ref_ids)


def test_grid_positions_fit_and_do_not_overlap():
    for model in all_models().values():
        taken: set[tuple[int, int]] = set()
        for panel in model["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] >= 1 and pos["h"] >= 1
            assert pos["x"] + pos["w"] <= dash.GRID_COLUMNS, panel["title"]
            if panel["type"] == "row":
                assert pos["w"] == dash.GRID_COLUMNS and pos["x"] == 0
            cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
            assert not cells & taken, f"{model['title']}: {panel['title']} overlaps another panel"
            taken |= cells


def test_panel_datasources_exist_in_the_datasource_file():
    spec = Spec.model_validate(SPEC)
    provisioned = grafana.datasources(Topology(spec))["datasources"]
    uids = {d["uid"]: d for d in provisioned}
    names = {d["name"] for d in provisioned}
    for model in all_models().values():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        refs = []
        for panel in model["panels"]:
            refs += [panel["datasource"]] if "datasource" in panel else []
            refs += [t["datasource"] for t in panel.get("targets", [])]
            if panel["type"] == "alertlist":
                assert panel["options"]["datasource"] in names
        refs += [v["datasource"] for v in variables.values() if "datasource" in v]
        for ref in refs:
            uid = ref["uid"]
            variable = re.fullmatch(r"\$\{(\w+)\}", uid)
            if variable:
                chosen = variables[variable.group(1)]
                assert chosen["type"] == "datasource" and chosen["query"] == ref["type"]
                uid = chosen["current"]["value"]
            assert uid in uids, f"{model['title']}: datasource uid {uid!r} is not provisioned"
            assert uids[uid]["type"] == ref["type"]


# ---------------------------------------------------------------------------------------
# uids, custom dashboards, refusals
# ---------------------------------------------------------------------------------------


def test_uid_is_stable_short_and_derived_from_project_and_title():
    uid = dashboard_ids.dashboard_uid("demo", "WebSocket overview")
    assert uid == dashboard_ids.dashboard_uid("demo", "WebSocket overview")
    assert re.fullmatch(r"demo-websocket-overview-[0-9a-f]{8}", uid)
    assert dashboard_ids.dashboard_uid("other", "WebSocket overview").startswith("other-websocket-overview-")
    assert dashboard_ids.dashboard_uid("demo", "A") != dashboard_ids.dashboard_uid("demo", "a")  # same slugs
    # "a-b" + "c" and "a" + "b-c" give the same words; the hash tells them apart
    assert dashboard_ids.dashboard_uid("a-b", "c") != dashboard_ids.dashboard_uid("a", "b c")
    assert re.fullmatch(r"demo-[0-9a-f]{8}", dashboard_ids.dashboard_uid("demo", "☃"))


@pytest.mark.parametrize("project, title, expected", [
    # both fit: all of both
    ("obsgen-demo", "WebSocket overview", "obsgen-demo-websocket-overview"),
    # a long title after a short project keeps the whole project
    ("demo", "Observability stack health and more", "demo-observability-stack-health"),
    # both long: each keeps at least 15 characters
    ("a-very-long-project-name-indeed", "Observability stack health", "a-very-long-pro-observability-s"),
    ("obsgen-demo", "Observability stack health", "obsgen-demo-observability-stack"),
])
def test_uid_keeps_both_names_readable_within_40_characters(project, title, expected):
    uid = dashboard_ids.dashboard_uid(project, title)
    assert len(uid) <= dashboard_ids.MAX_UID_LENGTH and re.fullmatch(dashboard_ids.UID_PATTERN, uid)
    assert uid.rsplit("-", 1)[0] == expected


def test_two_projects_in_one_grafana_get_distinct_uids():
    custom = {"custom": [{"title": "Mine", "panels": [{"title": "p", "expr": "up"}]}]}
    first = render_models(project="shop", dashboards=custom)
    second = render_models(project="shop-eu", dashboards=custom)
    assert len(first) == len(second) == 3  # two built-in, one custom
    assert not set(first) & set(second)
    longest = "x" * 63  # the longest project name the spec accepts
    third = render_models(project=longest)
    for uid in [*first, *second, *third]:
        assert len(uid) <= dashboard_ids.MAX_UID_LENGTH and re.fullmatch(dashboard_ids.UID_PATTERN, uid), uid
    assert check.dashboard_uid_problems({f"{u}.json": {"uid": u} for u in [*first, *second, *third]}) == []


def test_runbooks_link_every_provisioned_dashboard_by_its_uid():
    spec = Spec.model_validate({**SPEC, "dashboards": {"custom": [
        {"title": "Mine", "panels": [{"title": "p", "expr": "up"}]},
        {"title": "Fixed", "uid": "fixed-uid", "panels": [{"title": "p", "expr": "up"}]}]}})
    models = grafana.dashboards(spec)
    links = runbooks.links(spec, Topology(spec))["dashboards"]
    grafana_url = f"http://localhost:{Topology(spec).port('grafana', 'http')}/d/"
    assert [(title, url.removeprefix(grafana_url)) for title, url in links] == [
        (m["title"], uid) for uid, m in models.items()
    ]
    assert [title for title, _ in links] == ["Observability stack health", "WebSocket overview", "Mine", "Fixed"]


def test_builtin_titles_are_read_like_the_renderer_reads_them():
    assert dashboard_ids.builtin_titles() == tuple(d.title for d in dash.builtin_definitions())
    assert all(d.uid is None for d in dash.builtin_definitions())  # derived per project, never fixed


def test_custom_dashboard_is_rendered_with_its_queries_as_written():
    models = all_models()
    custom = by_title(models, "Business")
    assert custom["uid"] == dashboard_ids.dashboard_uid("demo", "Business")
    exprs = [t["expr"] for _, t in prometheus_targets(custom)]
    assert exprs == [
        "sum(rate(orders_total[$__rate_interval]))",
        "max(queue_depth)",
        "topk(5, sum by (route) (rate(http_total[5m])))",
    ]
    table = [p for p in custom["panels"] if p["title"] == "Top"][0]
    assert table["targets"][0]["instant"] is True and table["targets"][0]["format"] == "table"
    assert [p["gridPos"]["w"] for p in custom["panels"]] == [16, 8, 12]
    assert [p["gridPos"]["y"] for p in custom["panels"]] == [0, 0, 8]


def test_custom_dashboard_keeps_the_promql_at_modifier():
    models = render_models(
        dashboards={"custom": [{"title": "At", "uid": "at", "panels": [{"title": "p", "expr": "up @ 1700000000"}]}]}
    )
    assert models["at"]["panels"][0]["targets"][0]["expr"] == "up @ 1700000000"


def test_builtin_dashboards_can_be_turned_off():
    models = render_models(
        dashboards={"builtin": False, "custom": [{"title": "Only", "panels": [{"title": "p", "expr": "up"}]}]}
    )
    assert [m["title"] for m in models.values()] == ["Only"]


@pytest.mark.parametrize(
    "custom, message",
    [
        ({"title": "x", "uid": "u" * 41, "panels": [{"title": "p", "expr": "up"}]}, r"\{1,40\}"),
        ({"title": "WebSocket overview", "panels": [{"title": "p", "expr": "up"}]}, "taken by the built-in"),
        ({"title": "x", "panels": [{"title": "p", "expr": "rate(up[$__rate_interval]"}]}, "does not parse"),
        ({"title": "x", "panels": [{"title": "p", "expr": "up", "width": 25}]}, "less than or equal to 24"),
    ],
)
def test_bad_custom_dashboards_are_refused_by_the_spec(custom, message):
    with pytest.raises(ValueError, match=message):
        Spec.model_validate({**SPEC, "dashboards": {"custom": [custom]}})


def test_duplicate_custom_uids_are_refused():
    panels = [{"title": "p", "expr": "up"}]
    with pytest.raises(ValueError, match="duplicate uid 'same'"):
        Spec.model_validate(
            {**SPEC, "dashboards": {"custom": [{"title": "a", "uid": "same", "panels": panels},
                                               {"title": "b", "uid": "same", "panels": panels}]}}
        )


def test_renderer_refuses_a_uid_clash_the_spec_did_not_see():
    # builtin: false lets the spec accept the title; the renderer still checks every uid it writes
    spec = Spec.model_validate(
        {**SPEC, "dashboards": {"builtin": False, "custom": [
            {"title": "a", "uid": "same-uid", "panels": [{"title": "p", "expr": "up"}]},
            {"title": "b", "panels": [{"title": "p", "expr": "up"}]},
        ]}}
    )
    object.__setattr__(spec.dashboards.custom[1], "uid", "same-uid")  # as if validation had been skipped
    with pytest.raises(dash.DashboardDefinitionError, match=r"dashboards.custom\[1\].*same-uid"):
        grafana.dashboards(spec)


# ---------------------------------------------------------------------------------------
# The definition format: @NAME references and checks on load
# ---------------------------------------------------------------------------------------


def test_metric_references_expand_to_catalog_names_with_the_selector():
    expanded = dash.expand_metric_refs(
        'sum(rate(@CONNECTIONS_TOTAL{status!="accepted"}[$__rate_interval])) / @MESSAGE_DURATION_SECONDS_count',
        'job=~"$job"',
    )
    assert expanded == (
        f'sum(rate({catalog.CONNECTIONS_TOTAL.name}{{job=~"$job",status!="accepted"}}[$__rate_interval]))'
        f' / {catalog.MESSAGE_DURATION_SECONDS.name}_count{{job=~"$job"}}'
    )
    assert dash.expand_metric_refs("@UP == 0", "", {"UP": "up"}) == "up == 0"


@pytest.mark.parametrize(
    "expr, message",
    [
        ("sum(@NOT_A_METRIC)", "neither a Metric"),
        ("sum(@MESSAGE_DURATION_SECONDS)", "is a histogram"),
        ("sum(@ACTIVE_CONNECTIONS_bucket)", "has no _bucket"),
        ("@UP_count", "declare the full series name"),
    ],
)
def test_bad_metric_references_are_refused(expr, message):
    with pytest.raises(dash.DashboardDefinitionError, match=message):
        dash.expand_metric_refs(expr, "", {"UP": "up"})


def test_definition_format_is_checked_on_load():
    base = {"title": "t", "rows": [{"panels": [{"title": "p", "expr": "up"}]}]}
    dash.DashboardDef.model_validate(base)
    with pytest.raises(ValueError, match="Extra inputs"):
        dash.DashboardDef.model_validate({**base, "colour": "red"})
    with pytest.raises(ValueError, match="needs expr or queries"):
        dash.DashboardDef.model_validate({"title": "t", "rows": [{"panels": [{"title": "p"}]}]})
    with pytest.raises(ValueError, match="shadow"):
        dash.DashboardDef.model_validate({**base, "metrics": {"ACTIVE_CONNECTIONS": "x"}})
    broken = dash.DashboardDef.model_validate(
        {"title": "t", "rows": [{"panels": [{"title": "p", "expr": "sum(@ACTIVE_CONNECTIONS"}]}]}
    )
    with pytest.raises(dash.DashboardDefinitionError, match="panel 'p', query A: query does not parse"):
        dash.build_dashboard(broken, [], "demo")


# ---------------------------------------------------------------------------------------
# Third-party names (stack health) checked against the running components
# ---------------------------------------------------------------------------------------


def declared_stack_metrics(prefixes: tuple[str, ...]) -> set[str]:
    (definition,) = [d for d in dash.builtin_definitions() if d.title == "Observability stack health"]
    names = {name for name in definition.metrics.values() if name.startswith(prefixes)}
    assert names
    return names


def poll(fetch, done, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def http_get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


def http_post_json(url: str, body: dict) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.mark.e2e
def test_collector_metric_names_exist_on_a_running_collector(tmp_path, processes):
    otelcol = require_binary("otelcol")
    otlp_port, metrics_port, closed_port = free_port(), free_port(), free_port()
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{otlp_port}"}}}},
        # debug succeeds (sent), otlp_http to a closed port fails (send_failed) through its queue
        "exporters": {
            "debug": {},
            "otlp_http": {"endpoint": f"http://127.0.0.1:{closed_port}", "retry_on_failure": {"enabled": False}},
        },
        "service": {
            "telemetry": {
                "metrics": {
                    "readers": [
                        {"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics_port}}}}
                    ]
                }
            },
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": ["debug", "otlp_http"]},
                "logs": {"receivers": ["otlp"], "exporters": ["debug", "otlp_http"]},
            },
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = processes.start([otelcol, "--config", str(tmp_path / "config.yaml")])
    wait_for_port(otlp_port, proc=proc)
    wait_for_port(metrics_port, proc=proc)
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "probe"}}]}
    span = {
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "00f067aa0ba902b7", "name": "probe", "kind": 1,
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
    }
    log = {"timeUnixNano": "1700000000000000000", "body": {"stringValue": "probe"}}
    http_post_json(
        f"http://127.0.0.1:{otlp_port}/v1/traces",
        {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]},
    )
    http_post_json(
        f"http://127.0.0.1:{otlp_port}/v1/logs",
        {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": [log]}]}]},
    )
    expected = declared_stack_metrics(("otelcol_",))

    def exposed(text: str) -> set[str]:
        return set(re.findall(r"^# TYPE (\w+) ", text, re.M))

    text = poll(lambda: http_get(f"http://127.0.0.1:{metrics_port}/metrics"), lambda t: expected <= exposed(t))
    assert expected <= exposed(text), f"not exposed by otelcol: {sorted(expected - exposed(text))}"


@pytest.mark.e2e
def test_prometheus_and_alertmanager_metric_names_exist_in_a_running_prometheus(tmp_path, processes):
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager")
    prom_port, am_port, am_cluster = free_port(), free_port(), free_port()
    (tmp_path / "am.yml").write_text(yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
    am = processes.start([
        alertmanager, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am'}",
        f"--web.listen-address=127.0.0.1:{am_port}", f"--cluster.listen-address=127.0.0.1:{am_cluster}",
    ])
    wait_for_port(am_port, proc=am)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "probe", "rules": [{"alert": "Probe", "expr": "vector(1)"}]}]}
    ))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]},
            {"job_name": "alertmanager", "static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]},
        ],
    }))
    prom = processes.start([
        prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ])
    wait_for_port(prom_port, proc=prom)
    expected = declared_stack_metrics(("prometheus_", "alertmanager_", "up"))

    def stored() -> set[str]:
        text = http_get(f"http://127.0.0.1:{prom_port}/api/v1/label/__name__/values")
        return set(json.loads(text)["data"]) if text else set()

    names = poll(stored, lambda n: expected <= n)
    assert expected <= names, f"not stored by Prometheus: {sorted(expected - names)}"
