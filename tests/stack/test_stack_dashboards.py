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
from stack import slos as slo_series
from stack.renderers import dashboards as dash
from stack.renderers import grafana, runbooks
from stack.spec import Spec, grafana_promql_for_parsing, parse_duration
from stack.topology import Topology
from tests.conftest import free_port, require_binary, wait_for_port

SPEC = {
    "version": 1,
    "project": "demo",
    "services": [{"name": "chat", "builtin": True}, {"name": "edge", "otlp": False}],
}
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance"}
KNOWN_PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "logs", "alertlist"}
# SLOs of several shapes: a ratio with a description, a latency SLO on a catalog histogram with its own
# window (28d), and a 7d window (other burn factors: 7d / 1h * 2% = 3.36, not 14.4).
SLOS = [
    {"name": "availability", "objective": 99.9, "description": "Messages handled without a server error.",
     "events": {"error_query": 'sum(rate(websocket_errors_total{reason="internal"}[$window]))',
                "total_query": "sum(rate(websocket_messages_received_total[$window]))"}},
    {"name": "publish-latency", "objective": 99, "window": "28d",
     "latency": {"metric": "websocket_message_duration_seconds", "threshold_seconds": 0.1,
                 "selector": 'type="publish"'}},
    {"name": "weekly", "objective": 95.25, "window": "7d", "page_severity": "warning",
     "events": {"error_query": 'sum(rate(websocket_connections_total{status="error"}[$window]))',
                "total_query": "sum(rate(websocket_connections_total[$window]))"}},
]


def render_models(**extra) -> dict[str, dict]:
    spec = Spec.model_validate({**SPEC, **extra})
    return grafana.dashboards(spec)


def builtin_models() -> dict[str, dict]:
    return render_models()


def by_title(models: dict[str, dict], title: str) -> dict:
    (model,) = [m for m in models.values() if m["title"] == title]
    return model


def all_panels(model: dict):
    """Every panel, those inside collapsed rows too."""
    for panel in model["panels"]:
        yield panel
        yield from panel.get("panels", [])


def prometheus_targets(model: dict):
    """(panel, target) for every Prometheus query of a dashboard."""
    for panel in all_panels(model):
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


# The catalog's metrics and the Socket.IO-only ones (kept out of CATALOG: a `websockets` service has none).
DASHBOARD_METRICS: dict[str, catalog.Metric] = {**catalog.BY_NAME, **{m.name: m for m in catalog.SOCKETIO_CATALOG}}


def catalog_metric(series: str) -> tuple[catalog.Metric | None, str]:
    """The catalog metric a series name belongs to, and the series suffix (_bucket, ...)."""
    if series in DASHBOARD_METRICS:
        return DASHBOARD_METRICS[series], ""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and base in DASHBOARD_METRICS and DASHBOARD_METRICS[base].type == "histogram":
            return DASHBOARD_METRICS[base], suffix
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


# Series of other jobs the WebSocket dashboard shows in its own rows: host metrics (node_exporter)
# and the outside-in probes (blackbox_exporter). They carry their own matchers, not the selector.
FOREIGN_PREFIXES = ("node_", "probe_")


def websocket_definition():
    (definition,) = [d for d in dash.builtin_definitions() if d.title == "WebSocket overview"]
    return definition


def test_websocket_dashboard_names_only_catalog_metrics_and_uses_all_of_them():
    model = by_title(builtin_models(), "WebSocket overview")
    declared = set(websocket_definition().metrics.values())  # the standard process metrics
    used: set[str] = set()
    exprs = [t["expr"] for _, t in prometheus_targets(model)] + [s for _, s in variable_selectors(model)]
    for expr in exprs:
        for selector in vector_selectors(expr):
            if selector.name in declared or selector.name.startswith(FOREIGN_PREFIXES):
                continue
            metric, suffix = catalog_metric(selector.name)
            assert metric is not None, f"{selector.name} (in {expr}) is not in exporter/catalog.py"
            if metric.type == "histogram":
                assert suffix, f"{selector.name} is a histogram: query a _bucket/_sum/_count series"
            used.add(metric.name)
    assert used == set(DASHBOARD_METRICS), f"catalog metrics missing from the dashboard: {set(DASHBOARD_METRICS) - used}"


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
        selectors = vector_selectors(expr)
        if any(sel.name.startswith(FOREIGN_PREFIXES) or sel.name in websocket_definition().metrics.values()
               for sel in selectors):
            continue  # other programs' metrics: their names are checked against running exporters end to end
        for selector in selectors:
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
            if selector.name.startswith("node_"):
                continue  # the host's: every host of the stack
            if selector.name.startswith("probe_"):
                # the probes of the chosen service (job = service name for a service's job)
                assert {("job", "blackbox"), ("service", "grafana_variable")} <= matchers, target["expr"]
                continue
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
        (catalog.SOCKETIO_DISCONNECTIONS_TOTAL, "reason"),
        # WebSocket and SSE apart where the transport matters
        (catalog.ACTIVE_CONNECTIONS, "transport"),
        (catalog.CONNECTIONS_TOTAL, "transport"),
        (catalog.DISCONNECTIONS_TOTAL, "transport"),
        (catalog.MESSAGES_SENT_TOTAL, "transport"),
        (catalog.FANOUT_MESSAGES_TOTAL, "transport"),
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
    """The built-in, SLO and custom dashboards, and an SLO dashboard of another project with its
    rows collapsed (more SLOs than dash.EXPANDED_SLO_ROWS)."""
    many = [{**SLOS[0], "name": f"slo-{index}"} for index in range(dash.EXPANDED_SLO_ROWS + 1)]
    collapsed = render_models(project="many", slos=many, dashboards={"builtin": False})
    custom = {
        "slos": SLOS,
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
        },
    }
    return {**render_models(**custom), **collapsed}


def test_dashboard_models_have_the_required_shape():
    for uid, model in all_models().items():
        for key in ("uid", "title", "panels", "schemaVersion", "templating", "time", "tags", "annotations"):
            assert key in model, (uid, key)
        assert model["uid"] == uid and len(uid) <= dash.MAX_UID_LENGTH
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", uid)
        assert model["schemaVersion"] >= 39
        assert "id" not in model  # Grafana assigns ids; a fixed id would clash across instances
        ids = [p["id"] for p in all_panels(model)]
        assert ids == list(range(1, len(ids) + 1))
        for panel in all_panels(model):
            assert panel["type"] in KNOWN_PANEL_TYPES, panel["type"]
            assert panel["title"]
            if panel["type"] not in ("row", "alertlist"):
                assert panel["targets"] and panel["datasource"]
                ref_ids = [t["refId"] for t in panel["targets"]]
                assert len(set(ref_ids)) == len(ref_ids)


def assert_no_overlap(title: str, panels: list[dict]) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] >= 1 and pos["h"] >= 1
        assert pos["x"] + pos["w"] <= dash.GRID_COLUMNS, panel["title"]
        if panel["type"] == "row":
            assert pos["w"] == dash.GRID_COLUMNS and pos["x"] == 0
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & taken, f"{title}: {panel['title']} overlaps another panel"
        taken |= cells


def test_grid_positions_fit_and_do_not_overlap():
    collapsed_rows = 0
    for model in all_models().values():
        assert_no_overlap(model["title"], model["panels"])  # what shows when the dashboard opens
        for row in (p for p in model["panels"] if p["type"] == "row"):
            # A collapsed row keeps its panels laid out below it, as Grafana places them when opened.
            assert row["collapsed"] == bool(row["panels"])
            if row["panels"]:
                collapsed_rows += 1
                assert min(p["gridPos"]["y"] for p in row["panels"]) == row["gridPos"]["y"] + 1
                assert_no_overlap(f"{model['title']} / {row['title']}", row["panels"])
    assert collapsed_rows == dash.EXPANDED_SLO_ROWS + 1


def test_panel_datasources_exist_in_the_datasource_file():
    spec = Spec.model_validate(SPEC)
    provisioned = grafana.datasources(Topology(spec))["datasources"]
    uids = {d["uid"]: d for d in provisioned}
    names = {d["name"] for d in provisioned}
    for model in all_models().values():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        refs = []
        for panel in all_panels(model):
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
    first = render_models(project="shop", slos=SLOS, dashboards={"custom": [{"title": "Mine", "panels": [
        {"title": "p", "expr": "up"}]}]})
    second = render_models(project="shop-eu", slos=SLOS, dashboards={"custom": [{"title": "Mine", "panels": [
        {"title": "p", "expr": "up"}]}]})
    assert len(first) == len(second) == 4  # two built-in, the SLO dashboard, one custom
    assert not set(first) & set(second)
    longest = "x" * 63  # the longest project name the spec accepts
    third = render_models(project=longest, slos=SLOS)
    for uid in [*first, *second, *third]:
        assert len(uid) <= dashboard_ids.MAX_UID_LENGTH and re.fullmatch(dashboard_ids.UID_PATTERN, uid), uid
    assert check.dashboard_uid_problems({f"{u}.json": {"uid": u} for u in [*first, *second, *third]}) == []


def test_runbooks_link_every_provisioned_dashboard_by_its_uid():
    spec = Spec.model_validate({**SPEC, "slos": SLOS, "dashboards": {"custom": [
        {"title": "Mine", "panels": [{"title": "p", "expr": "up"}]},
        {"title": "Fixed", "uid": "fixed-uid", "panels": [{"title": "p", "expr": "up"}]}]}})
    models = grafana.dashboards(spec)
    links = runbooks.links(spec, Topology(spec))["dashboards"]
    grafana_url = f"http://localhost:{Topology(spec).port('grafana', 'http')}/d/"
    assert [(title, url.removeprefix(grafana_url)) for title, url in links] == [
        (m["title"], uid) for uid, m in models.items()
    ]
    assert [title for title, _ in links] == [
        "Observability stack health", "WebSocket overview", dashboard_ids.SLO_DASHBOARD_TITLE, "Mine", "Fixed"]


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
        ({"title": "WebSocket overview", "panels": [{"title": "p", "expr": "up"}]}, "taken by obsgen's dashboard"),
        ({"title": "x", "panels": [{"title": "p", "expr": "rate(up[$__rate_interval]"}]}, "does not parse"),
        ({"title": "x", "panels": [{"title": "p", "expr": "up", "width": 25}]}, "less than or equal to 24"),
    ],
)
def test_bad_custom_dashboards_are_refused_by_the_spec(custom, message):
    with pytest.raises(ValueError, match=message):
        Spec.model_validate({**SPEC, "dashboards": {"custom": [custom]}})


def test_a_custom_dashboard_may_not_take_a_uid_obsgen_derives_for_this_project():
    from stack.dashboard_ids import dashboard_uid

    panels = [{"title": "p", "expr": "up"}]
    derived = dashboard_uid("demo", "WebSocket overview")
    with pytest.raises(ValueError, match=r"dashboards\.custom\[0\]\.uid: uid '.*' is taken by obsgen's dashboard"):
        Spec.model_validate({**SPEC, "dashboards": {"custom": [{"title": "mine", "uid": derived, "panels": panels}]}})
    # The SLO dashboard is obsgen's whenever there are SLOs, even with the built-in ones off.
    slo = {"name": "avail", "objective": 99.9, "events": {
        "error_query": "sum(rate(e_total[$window]))", "total_query": "sum(rate(t_total[$window]))"}}
    with pytest.raises(ValueError, match=r"dashboards\.custom\[0\]\.title: .* taken by obsgen's dashboard 'SLOs'"):
        Spec.model_validate({**SPEC, "slos": [slo], "dashboards": {"builtin": False, "custom": [
            {"title": "SLOs", "panels": panels}]}})
    # Another project derives other uids: the same custom uid is free there.
    Spec.model_validate({**SPEC, "project": "other", "dashboards": {"custom": [
        {"title": "mine", "uid": derived, "panels": panels}]}})


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
    def panel_with(**fields):
        return {"title": "t", "rows": [{"panels": [{"title": "p", "expr": "up", **fields}]}]}

    dash.DashboardDef.model_validate(panel_with(thresholds=[{"color": "red"}, {"color": "green", "value": 0.99}],
                                                threshold_style="dashed"))
    with pytest.raises(ValueError, match="the first step has no value"):
        dash.DashboardDef.model_validate(panel_with(thresholds=[{"color": "red", "value": 1}]))
    with pytest.raises(ValueError, match="must rise"):
        dash.DashboardDef.model_validate(panel_with(thresholds=[
            {"color": "red"}, {"color": "green", "value": 2}, {"color": "blue", "value": 1}]))
    with pytest.raises(ValueError, match="threshold_style applies to timeseries"):
        dash.DashboardDef.model_validate(panel_with(type="stat", threshold_style="line"))
    with pytest.raises(ValueError, match="only a titled row can be collapsed"):
        dash.DashboardDef.model_validate({"title": "t", "rows": [{"collapsed": True, "panels": [
            {"title": "p", "expr": "up"}]}]})
    broken = dash.DashboardDef.model_validate(
        {"title": "t", "rows": [{"panels": [{"title": "p", "expr": "sum(@ACTIVE_CONNECTIONS"}]}]}
    )
    with pytest.raises(dash.DashboardDefinitionError, match="panel 'p', query A: query does not parse"):
        dash.build_dashboard(broken, [], "demo")


# ---------------------------------------------------------------------------------------
# The SLO dashboard
# ---------------------------------------------------------------------------------------


def slo_spec(**extra) -> Spec:
    return Spec.model_validate({**SPEC, "slos": SLOS, **extra})


def slo_model(spec: Spec | None = None) -> dict:
    spec = spec or slo_spec()
    return grafana.dashboards(spec)[dashboard_ids.dashboard_uid(spec.project, dashboard_ids.SLO_DASHBOARD_TITLE)]


def slo_rows(model: dict) -> dict[str, list[dict]]:
    """Row title -> its panels (open or collapsed)."""
    rows: dict[str, list[dict]] = {}
    current: list[dict] = []
    for panel in model["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], list(panel["panels"]))
        else:
            current.append(panel)
    return rows


def row_of(model: dict, slo) -> list[dict]:
    return slo_rows(model)[f"{slo.name}: {slo_series.percent(slo)} over {slo.window}"]


def panel(panels: list[dict], title: str) -> dict:
    """The panel titled ``title``, else the one panel whose title starts with it."""
    (found,) = [p for p in panels if p["title"] == title] or [p for p in panels if p["title"].startswith(title)]
    return found


def steps(panel_model: dict) -> list[tuple[str, float | None]]:
    return [(s["color"], s["value"]) for s in panel_model["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def test_slo_dashboard_is_rendered_for_every_spec_with_slos_and_only_then():
    assert dashboard_ids.SLO_DASHBOARD_TITLE not in [m["title"] for m in render_models().values()]
    spec = slo_spec(dashboards={"builtin": False})
    models = grafana.dashboards(spec)
    assert [m["title"] for m in models.values()] == [dashboard_ids.SLO_DASHBOARD_TITLE]
    files = grafana.render(spec, Topology(spec))
    (path,) = [p for p in files if p.startswith(f"{grafana.DASHBOARDS_DIR}/")]
    assert path == f"{grafana.DASHBOARDS_DIR}/{dashboard_ids.dashboard_uid('demo', 'SLOs')}.json"
    assert json.loads(files[path]) == slo_model(spec)


def test_every_slo_gets_its_row_with_every_panel():
    spec = slo_spec()
    model = slo_model(spec)
    assert list(slo_rows(model)) == ["All SLOs"] + [
        f"{slo.name}: {slo_series.percent(slo)} over {slo.window}" for slo in spec.slos]
    assert [row["collapsed"] for row in model["panels"] if row["type"] == "row"] == [False] * 4
    for slo in spec.slos:
        panels = row_of(model, slo)
        burns = slo_series.burn_windows(slo)
        assert [p["title"] for p in panels] == [
            f"SLI against the {slo_series.percent(slo)} objective", f"SLI over {slo.window}",
            "Error budget remaining", "Error budget consumed", "Error budget remaining over time",
            "Time to exhaustion at the 1h burn", "Alerts", "Alert history",
        ] + [f"Burn rate {b.long} & {b.short}: {b.alert} above {slo_series.decimal_text(b.factor)}×" for b in burns]
        # every query of the row reads this SLO's series, and no other SLO's
        for p in panels:
            for target in p["targets"]:
                for selector in vector_selectors(target["expr"]):
                    matchers = {(m.name, m.value) for m in selector.matchers.matchers}
                    assert ("slo", slo.name) in matchers, (p["title"], target["expr"])


def test_sli_panels_draw_the_objective_and_read_the_recorded_ratios():
    spec = slo_spec()
    model = slo_model(spec)
    for slo in spec.slos:
        panels = row_of(model, slo)
        objective = slo.objective / 100
        sli = panel(panels, "SLI against")
        assert steps(sli) == [("red", None), ("green", pytest.approx(objective, abs=1e-12))]
        assert sli["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "dashed"}
        assert [t["expr"] for t in sli["targets"]] == [
            f'1 - slo:sli_error:ratio_rate5m{{slo="{slo.name}"}}', f'1 - slo:sli_error:ratio_rate1h{{slo="{slo.name}"}}']
        whole = panel(panels, "SLI over")
        assert [t["expr"] for t in whole["targets"]] == [
            f'1 - slo:sli_error:ratio_rate{slo.window}{{slo="{slo.name}"}}', f'slo:objective:ratio{{slo="{slo.name}"}}']
        assert steps(whole) == steps(sli)
        # 99.9 -> two decimals of a percent (99.95%), 99 -> one, 95.25 -> three
        assert sli["fieldConfig"]["defaults"]["decimals"] == {99.9: 2, 99: 1, 95.25: 3}[slo.objective]


def test_budget_panels_read_the_budget_series():
    spec = slo_spec()
    model = slo_model(spec)
    for slo in spec.slos:
        panels = row_of(model, slo)
        selector = f'{{slo="{slo.name}"}}'
        assert panel(panels, "Error budget remaining")["targets"][0]["expr"] == f"slo:error_budget_remaining:ratio{selector}"
        assert panel(panels, "Error budget consumed")["targets"][0]["expr"] == f"slo:error_budget_consumed:ratio{selector}"
        over_time = panel(panels, "Error budget remaining over time")
        assert over_time["type"] == "timeseries" and steps(over_time) == [("red", None), ("green", 0)]
        exhaustion = panel(panels, "Time to exhaustion")
        window = int(parse_duration(slo.window))
        assert exhaustion["targets"][0]["expr"] == (
            f"clamp(slo:error_budget_exhaustion:seconds{selector}, 0, {window})"
            f" or on(slo) (slo:sli_error:ratio_rate1h{selector} == 0) + {window}")
        assert exhaustion["fieldConfig"]["defaults"]["mappings"] == [
            {"options": {"0": {"color": "red", "index": 0, "text": "spent"}}, "type": "value"},
            {"options": {str(window): {"color": "green", "index": 1, "text": f"more than {slo.window}"}},
             "type": "value"},
        ]


# The SRE workbook's factors for a 30-day SLO, and the same formula (budget % x window / long window)
# worked out by hand for 28 and 7 days.
EXPECTED_FACTORS = {
    "30d": [14.4, 6, 3, 1],
    "28d": [13.44, 5.6, 2.8, 28 / 30],
    "7d": [3.36, 1.4, 0.7, 7 / 30],
}


def test_burn_rate_panels_show_each_alert_window_against_its_factor():
    spec = slo_spec()
    model = slo_model(spec)
    for slo in spec.slos:
        panels = [p for p in row_of(model, slo) if p["title"].startswith("Burn rate")]
        burns = slo_series.burn_windows(slo)
        assert [(b.long, b.short) for b in burns] == [("1h", "5m"), ("6h", "30m"), ("1d", "2h"), ("3d", "6h")]
        budget = slo_series.decimal_text(slo_series.budget(slo))
        for burn_panel, burn, expected in zip(panels, burns, EXPECTED_FACTORS[slo.window], strict=True):
            assert steps(burn_panel) == [("green", None), ("red", pytest.approx(expected, rel=1e-9))]
            assert steps(burn_panel)[1][1] == float(burn.factor)
            assert burn_panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "dashed"}
            assert [(t["expr"], t["legendFormat"]) for t in burn_panel["targets"]] == [
                (f'slo:sli_error:ratio_rate{burn.long}{{slo="{slo.name}"}} / {budget}', f"over {burn.long}"),
                (f'slo:sli_error:ratio_rate{burn.short}{{slo="{slo.name}"}} / {budget}', f"over {burn.short}"),
            ]
            assert burn_panel["fieldConfig"]["defaults"]["min"] == 0


def test_alert_panels_show_the_state_of_each_slo_alert():
    spec = slo_spec()
    model = slo_model(spec)
    for slo in spec.slos:
        burn, absent = slo_series.slo_alert_names(slo.name)
        panels = row_of(model, slo)
        state, history = panel(panels, "Alerts"), panel(panels, "Alert history")
        assert history["type"] == "state-timeline" and state["type"] == "stat"
        assert state["targets"] == history["targets"]
        assert [t["legendFormat"] for t in state["targets"]] == ["page", "ticket", "SLI absent"]
        page = state["targets"][0]["expr"]
        assert page == (
            f'max(ALERTS{{alertname="{burn}",slo="{slo.name}",slo_alert="page",alertstate="firing"}}) * 2'
            f' or max(ALERTS{{alertname="{burn}",slo="{slo.name}",slo_alert="page",alertstate="pending"}})'
            " or vector(0)")
        assert f'alertname="{absent}"' in state["targets"][2]["expr"]
        for p in (state, history):
            mappings = p["fieldConfig"]["defaults"]["mappings"]
            assert [(list(m["options"]), list(m["options"].values())[0]["text"]) for m in mappings] == [
                (["0"], "OK"), (["1"], "pending"), (["2"], "firing")]
    overview = slo_rows(model)["All SLOs"]
    names = "|".join(slo.name for slo in spec.slos)
    assert panel(overview, "SLO alerts")["options"]["alertInstanceLabelFilter"] == f'{{slo=~"{names}"}}'
    assert panel(overview, "Error budget remaining by SLO")["targets"][0]["expr"] == (
        f'slo:error_budget_remaining:ratio{{slo=~"{names}"}}')


def test_slo_queries_read_recorded_series_and_divide_only_by_numbers():
    """No NaN on a healthy stack: ratios are recorded as 0 at zero traffic, and a panel never divides
    by a series (only by the budget, a number), so nothing here can become 0/0."""
    spec = slo_spec()
    recorded = {slo_series.OBJECTIVE, slo_series.BUDGET_REMAINING, slo_series.BUDGET_CONSUMED,
                slo_series.TIME_TO_EXHAUSTION, "ALERTS"}
    for slo in spec.slos:
        recorded |= {slo_series.record(w) for w in slo_series.sorted_windows()} | {slo_series.record(slo.window)}
    divisions = 0
    for p, target in prometheus_targets(slo_model(spec)):
        tree = promql_parser.parse(target["expr"])

        def visit(node):
            nonlocal divisions
            if isinstance(node, promql_parser.VectorSelector):
                assert node.name in recorded, (p["title"], node.name)
            if isinstance(node, promql_parser.BinaryExpr) and str(node.op) == "/":
                divisions += 1
                assert isinstance(node.rhs, promql_parser.NumberLiteral) and node.rhs.val > 0, target["expr"]

        promql_parser.walk(tree, visit)
    assert divisions == len(spec.slos) * 4 * 2  # the burn rates: two windows per alert condition


def test_slo_dashboard_passes_obsgen_checks_and_uses_no_other_variable():
    spec = slo_spec()
    files = grafana.render(spec, Topology(spec))
    dashboards = {path: json.loads(text) for path, text in files.items() if path.endswith(".json")}
    assert check.dashboard_uid_problems(dashboards) == []
    expressions = check.dashboard_expressions(dashboards)
    assert len(expressions) > 3 * 16
    assert check.promql_problems(expressions, grafana=True) == []
    (text,) = [t for p, t in files.items() if p.endswith(f"{slo_model(spec)['uid']}.json")]
    assert set(re.findall(r"\$\{?\w+\}?", text)) == {"${datasource}"}


def test_many_slos_start_collapsed_under_the_overview():
    many = [{**SLOS[0], "name": f"slo-{index}"} for index in range(dash.EXPANDED_SLO_ROWS + 1)]
    model = slo_model(slo_spec(slos=many))
    rows = [p for p in model["panels"] if p["type"] == "row"]
    assert [(r["title"], r["collapsed"]) for r in rows] == [("All SLOs", False)] + [
        (f"slo-{i}: 99.9% over 30d", True) for i in range(len(many))]
    # collapsed rows stack one grid line apart; their panels are inside them
    assert [r["gridPos"]["y"] for r in rows[1:]] == list(range(rows[1]["gridPos"]["y"], rows[1]["gridPos"]["y"] + 4))
    assert all(len(r["panels"]) == 12 for r in rows[1:])


def test_slo_dashboard_is_deterministic():
    assert json.dumps(slo_model(), sort_keys=True) == json.dumps(slo_model(), sort_keys=True)


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


def test_socketio_disconnect_reasons_panel_says_when_no_socketio_service_runs():
    """A `websockets` service never has socketio_disconnections_total: the panel shows a text, not "No data"."""
    model = by_title(builtin_models(), "WebSocket overview")
    (panel,) = panels_using(model, catalog.SOCKETIO_DISCONNECTIONS_TOTAL)
    assert panel["fieldConfig"]["defaults"]["noValue"] == "no Socket.IO service"
    assert {"namespace", "reason"} <= grouping_labels(panel["targets"][0]["expr"])
