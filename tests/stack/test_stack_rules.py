"""Rule files, SLO burn rates, promtool unit tests and runbooks: by value, then through promtool.

The real-tool tests render whole rule sets into a temporary bundle and run the very commands
`obsgen check` runs: `promtool check rules` and `promtool test rules`. They also break a rendered
rule on purpose and expect the unit tests to catch it, so a test that cannot fail would show.
"""

from __future__ import annotations

import re
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from alerts import pack as pack_module
from alerts.pack import PackError, load_pack, load_slo_settings, slo_alert_names
from exporter import catalog
from stack.load import load_spec_file
from stack.renderers import rules, runbooks, slo
from stack.promtext import (
    expand_template,
    go_float,
    humanize,
    humanize_duration,
    humanize_percentage,
    le_matcher,
    openmetrics_float,
)
from stack.spec import Spec
from stack.topology import Topology
from tests.conftest import require_binary

SPECS = Path(__file__).parent / "specs"
PACK_KEYS = [a.key for a in load_pack().alerts]


def make_spec(**fields) -> Spec:
    return Spec.model_validate({"version": 1, "project": "demo", "services": [{"name": "api"}], **fields})


def render(spec: Spec) -> dict[str, str]:
    return rules.render(spec, Topology(spec))


def rule_groups(files: dict[str, str], name: str) -> list[dict]:
    return yaml.safe_load(files[f"prometheus/rules/{name}"])["groups"]


def alerts_in(files: dict[str, str], name: str) -> list[dict]:
    return [rule for group in rule_groups(files, name) for rule in group["rules"] if "alert" in rule]


def write(files: dict[str, str], root: Path) -> Path:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return root


def promtool(root: Path, *args: str) -> subprocess.CompletedProcess:
    tool = require_binary("promtool")
    return subprocess.run([tool, *args], cwd=root, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------
# Prometheus' template functions and the le matcher
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "value", "expected"),
    [
        (humanize, 0, "0"),
        (humanize, 1234567, "1.235M"),
        (humanize, 11000, "11k"),
        (humanize, 12.5, "12.5"),
        (humanize, 0.001, "1m"),
        (humanize_percentage, 0.1234, "12.34%"),
        (humanize_percentage, 0.05, "5%"),
        (humanize_duration, 0, "0s"),
        (humanize_duration, 0.25, "250ms"),
        (humanize_duration, 0.0001, "100us"),
        (humanize_duration, 2.485, "2.485s"),
        (humanize_duration, 75, "1m 15s"),
        (humanize_duration, 3600, "1h 0m 0s"),
        (humanize_duration, 90061, "1d 1h 1m 1s"),
    ],
)
def test_template_functions_format_like_prometheus(function, value, expected):
    assert function(value) == expected


def test_expand_template_fills_labels_and_value_and_refuses_what_it_cannot_predict():
    text = "{{ $labels.service }} at {{ $value | humanizePercentage }}"
    assert expand_template(text, {"service": "api"}, 0.125) == "api at 12.5%"
    with pytest.raises(ValueError, match="cannot predict"):
        expand_template("{{ $value }}", {}, 1)
    with pytest.raises(ValueError, match="cannot predict"):
        expand_template("{{ $labels.x | toUpper }}", {"x": "y"}, 1)


@pytest.mark.parametrize(
    ("bound", "go", "openmetrics"),
    [(0.25, "0.25", "0.25"), (1.0, "1", "1.0"), (5.0, "5", "5.0"), (0.0005, "0.0005", "0.0005"),
     (1048576.0, "1.048576e+06", "1.048576e+06"), (100000.0, "100000", "100000.0")],
)
def test_bucket_bounds_are_spelled_as_go_clients_and_prometheus_3_spell_them(bound, go, openmetrics):
    from prometheus_client.utils import floatToGoString

    assert go_float(bound) == go
    assert openmetrics_float(bound) == openmetrics
    assert floatToGoString(bound) == openmetrics  # what this project's exporter writes


def _le_accepts(matcher: str, value: str) -> bool:
    name, op, pattern = re.match(r'(\w+)(=~|=)"(.*)"', matcher).groups()
    return value == pattern if op == "=" else re.fullmatch(pattern, value) is not None


@pytest.mark.parametrize("bound", [*catalog.LATENCY_BUCKETS, *catalog.SIZE_BUCKETS])
def test_le_matcher_selects_both_spellings_of_its_bound_and_nothing_else(bound):
    matcher = le_matcher(bound)
    assert _le_accepts(matcher, go_float(bound)) and _le_accepts(matcher, openmetrics_float(bound))
    others = [b for b in (*catalog.LATENCY_BUCKETS, *catalog.SIZE_BUCKETS) if b != bound]
    for other in others:
        assert not _le_accepts(matcher, go_float(other)) and not _le_accepts(matcher, openmetrics_float(other))
    assert not _le_accepts(matcher, go_float(bound) + "0x")
    assert not _le_accepts(matcher, "+Inf")


def test_le_matcher_never_uses_an_unescaped_dot():
    assert le_matcher(1.0) == 'le=~"1|1[.]0"'
    assert le_matcher(0.25) == 'le="0.25"'


# ---------------------------------------------------------------------------------------
# The pack as data
# ---------------------------------------------------------------------------------------


def test_pack_alerts_are_actionable_by_construction():
    pack = load_pack()
    assert {"target_down", "connection_drop_rate", "p99_latency", "active_connections", "error_rate",
            "rate_limited", "metrics_missing"} <= set(PACK_KEYS)
    for alert in pack.alerts:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", alert.alert)
        assert alert.severity in ("critical", "warning", "info")
        assert alert.summary.endswith(".") and "{{" not in alert.summary
        assert "{{" in alert.description  # templated with the alert's labels or value
        template = Path(pack_module.__file__).parent / "runbooks" / f"{alert.alert}.md.j2"
        assert template.is_file(), f"no runbook template for {alert.alert}"
    assert sum(a.paired for a in pack.alerts) >= 2


def test_pack_metric_references_resolve_to_catalog_constants():
    for alert in load_pack().alerts:
        for ref in (alert.metric, alert.numerator, alert.denominator):
            if ref is not None and ref.metric is not None:
                assert ref.metric is catalog.BY_NAME[ref.metric.name]


def _broken(monkeypatch, edit) -> None:
    original = pack_module._read

    def read(name: str):
        data = original(name)
        if name == "pack.yaml":
            edit(data)
        return data

    monkeypatch.setattr(pack_module, "_read", read)
    load_pack.cache_clear()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["groups"]["websocket"]["alerts"][2]["numerator"].update(metric="NOT_IN_CATALOG"),
         "not a Metric constant"),
        (lambda d: d["groups"]["websocket"]["alerts"][0].update(summary="Down on {{ $labels.instance }}."),
         "one static sentence"),
        (lambda d: d["groups"]["websocket"]["alerts"][3].update(kind="histogram"), "kind must be one of"),
        (lambda d: d["groups"]["websocket"]["alerts"][3].update(metric="ACTIVE_CONNECTIONS"),
         "needs a catalog histogram"),
        (lambda d: d["groups"]["websocket"]["alerts"][4].update(description="{{ $value }} open"),
         "cannot test"),
        (lambda d: d["groups"]["websocket"]["alerts"][1].update(alert="websocketMissing"), "not CamelCase"),
        (lambda d: d["groups"]["stack"]["alerts"][0].update(key="target_down"), "duplicate key"),
    ],
)
def test_a_broken_pack_is_refused_with_the_entry_named(monkeypatch, edit, message):
    _broken(monkeypatch, edit)
    try:
        with pytest.raises(PackError, match=message):
            load_pack()
    finally:
        monkeypatch.undo()
        load_pack.cache_clear()


def test_every_pack_test_target_is_a_scrape_job():
    from stack.renderers.wiring import STACK_JOBS

    for alert in load_pack().alerts:
        assert alert.test_target in ("service", "probe") or alert.test_target in STACK_JOBS


# ---------------------------------------------------------------------------------------
# Spec validation of alert settings (failing cases)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alerts": {"thresholds": {"p99_latncy": {"threshold": 0.5}}}}, "did you mean 'p99_latency'"),
        ({"alerts": {"thresholds": {"error_rate": {"critical": 0.001}}}}, "critical (0.001) must be above threshold"),
        ({"alerts": {"thresholds": {"target_down": {"threshold": 1}}}}, "has no threshold"),
        ({"alerts": {"thresholds": {"active_connections": {"critical": 20000}}}}, "single level"),
        ({"alerts": {"thresholds": {"p99_latency": {"threshold": 5, "critical": 6}}}}, "largest bucket bound"),
        ({"alerts": {"thresholds": {"error_rate": {"severity": "critical"}}}}, "cannot be critical"),
        ({"alerts": {"custom": [{"name": "WebSocketTargetDown", "expr": "up == 0", "summary": "s.",
                                 "description": "d"}]}}, "built-in alert"),
        ({"alerts": {"custom": [{"name": "MyErrorBudgetBurn", "expr": "up == 0", "summary": "s.",
                                 "description": "d"}]}}, "kept for SLO alerts"),
        ({"slos": [{"name": "x", "objective": 99, "latency": {"threshold_seconds": 0.3}}]},
         "not a bucket bound of websocket_message_duration_seconds"),
        ({"slos": [{"name": "x", "objective": 99, "latency": {"threshold_seconds": 0.25,
                                                               "metric": "websocket_active_connections"}}]},
         "is a gauge of the metric catalog, not a histogram"),
        ({"slos": [{"name": "x", "objective": 99, "latency": {"threshold_seconds": 0.25,
                                                               "metric": "http_request_duration_seconds_bucket"}}]},
         "without _bucket: 'http_request_duration_seconds'"),
        ({"slos": [{"name": "x", "objective": 99, "window": "7d12m",
                    "events": {"error_query": "sum(rate(a[$window]))", "total_query": "sum(rate(b[$window]))"}}]},
         "not a whole number of 1h"),
        ({"slos": [{"name": "x", "objective": 99, "latency": {"threshold_seconds": 0.25, "selector": 'le="1"'}}]},
         "leave it out"),
        ({"slos": [{"name": "x", "objective": 99, "window": "1d",
                    "events": {"error_query": "sum(rate(a[$window]))", "total_query": "sum(rate(b[$window]))"}}]},
         "shorter than 7d"),
        ({"alerts": {"custom": [{"name": "Custom", "expr": "up == 0", "summary": "s.", "description": "{{ $value }}",
                                 "tests": {"input": [{"series": "up", "values": "0x10"}]}}]}},
         "description is templated"),
    ],
)
def test_bad_alert_settings_are_refused_with_a_clear_message(fields, message):
    with pytest.raises(ValidationError) as error:
        make_spec(**fields)
    assert message in str(error.value)


# ---------------------------------------------------------------------------------------
# Rule files by value
# ---------------------------------------------------------------------------------------


def test_every_pack_alert_renders_with_severity_summary_description_and_runbook():
    spec = make_spec(services=[{"name": "api", "builtin": True}])  # a built-in server is probed
    files = render(spec)
    rendered = [rule for group in ("websocket", "stack", "host", "process", "probe")
                for rule in alerts_in(files, f"{group}.yml")]
    assert {r["alert"] for r in rendered} == {a.alert for a in load_pack().alerts}
    for rule in rendered:
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        assert rule["annotations"]["runbook_url"] == f"http://localhost:3000/public/runbooks/{rule['alert']}.md"
        assert "[[" not in rule["annotations"]["description"]


def test_pairs_render_warning_and_critical_under_one_alertname():
    rendered = alerts_in(render(make_spec()), "websocket.yml")
    drop = [r for r in rendered if r["alert"] == "WebSocketHighConnectionDropRate"]
    assert [(r["labels"]["severity"], r["expr"].rsplit(" ", 1)[1]) for r in drop] == [("warning", "0.05"), ("critical", "0.2")]
    assert "above the 5% threshold" in drop[0]["annotations"]["description"]
    assert "above the 20% threshold" in drop[1]["annotations"]["description"]


def test_expressions_read_metric_names_from_the_catalog_and_guard_their_denominators():
    exprs = {r["alert"] + r["labels"]["severity"]: r["expr"] for r in alerts_in(render(make_spec()), "websocket.yml")}
    drop = exprs["WebSocketHighConnectionDropRatewarning"]
    assert catalog.DISCONNECTIONS_TOTAL.name + '{code!~"1000|1001"}' in drop
    assert f"(sum by (service) (rate({catalog.CONNECTIONS_TOTAL.name}{{status=\"accepted\"}}[5m])) > 0)" in drop
    latency = exprs["WebSocketHighMessageLatencywarning"]
    assert f"{catalog.MESSAGE_DURATION_SECONDS.name}_bucket" in latency
    assert f"rate({catalog.MESSAGE_DURATION_SECONDS.name}_count[5m])) > 0" in latency
    assert exprs["WebSocketTargetDowncritical"] == 'up{service!=""} == 0'


def test_overrides_change_threshold_for_severity_and_can_disable():
    spec = make_spec(alerts={"thresholds": {
        "error_rate": {"threshold": 0.02, "critical": 0.1, "for": "10m"},
        "active_connections": {"threshold": 500, "severity": "critical"},
        "rate_limited": {"enabled": False},
        "component_down": {"enabled": False},
    }})
    files = render(spec)
    rendered = alerts_in(files, "websocket.yml")
    errors = [r for r in rendered if r["alert"] == "WebSocketHighErrorRate"]
    assert [r["expr"].rsplit(" ", 1)[1] for r in errors] == ["0.02", "0.1"]
    assert {r["for"] for r in errors} == {"10m"}
    assert "above the 2% threshold" in errors[0]["annotations"]["description"]
    connections = next(r for r in rendered if r["alert"] == "WebSocketTooManyConnections")
    assert connections["labels"]["severity"] == "critical" and connections["expr"].endswith("> 500")
    names = {r["alert"] for r in rendered + alerts_in(files, "stack.yml")}
    assert "WebSocketRateLimiting" not in names and "ObservabilityComponentDown" not in names
    tests_text = files["prometheus/tests/websocket.yml"] + files["prometheus/tests/stack.yml"]
    assert "WebSocketRateLimiting" not in tests_text and "ObservabilityComponentDown" not in tests_text
    pages = runbooks.render(spec, Topology(spec))
    assert "runbooks/WebSocketRateLimiting.md" not in pages


def test_rate_window_override_reaches_expressions_descriptions_and_unit_tests(tmp_path):
    spec = make_spec(alerts={"rate_window": "2m"})
    files = render(spec)
    rendered = alerts_in(files, "websocket.yml")
    windows = {w for r in rendered for w in re.findall(r"\[(\w+):?\]", r["expr"])}
    assert windows == {"2m"}, windows
    drops = next(r for r in rendered if r["alert"] == "WebSocketHighConnectionDropRate")
    assert "over the last 2m" in drops["annotations"]["description"]
    root = write(files, tmp_path)
    result = promtool(root, "test", "rules", *sorted(p for p in files if p.startswith("prometheus/tests/")))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("window", "scrape"), [("30s", "15s"), ("1m", "30s")])
def test_a_rate_window_shorter_than_a_minute_or_four_scrapes_is_refused(window, scrape):
    with pytest.raises(ValidationError, match="too short"):
        make_spec(alerts={"rate_window": window}, components={"prometheus": {"scrape_interval": scrape}})


def test_pack_false_drops_the_websocket_group_but_keeps_stack_self_monitoring():
    files = render(make_spec(alerts={"pack": False}))
    assert "prometheus/rules/websocket.yml" not in files and "prometheus/tests/websocket.yml" not in files
    assert "ObservabilityComponentDown" in {r["alert"] for r in alerts_in(files, "stack.yml")}


def test_runbook_base_url_is_used_for_every_alert():
    files = render(make_spec(alerts={"runbook_base_url": "https://wiki.example.com/runbooks/"}))
    for rule in alerts_in(files, "websocket.yml"):
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example.com/runbooks/{rule['alert']}.md"


def test_rendering_is_deterministic():
    spec = load_spec_file(SPECS / "slos-only.yaml")
    assert render(spec) == render(spec)


# ---------------------------------------------------------------------------------------
# SLOs by value
# ---------------------------------------------------------------------------------------


def _slo_spec(window: str = "30d", objective: float = 99.9) -> Spec:
    return make_spec(slos=[
        {"name": "api-availability", "objective": objective, "window": window,
         "events": {"error_query": 'sum(rate(websocket_errors_total{reason="internal"}[$window]))',
                    "total_query": "sum(rate(websocket_messages_received_total[$window]))"}},
        {"name": "fast-publish", "objective": 99, "window": window,
         "latency": {"threshold_seconds": 1.0, "selector": 'type="publish"'}},
    ])


def test_burn_factors_follow_the_sre_workbook_for_30d_and_scale_with_the_window():
    spec = _slo_spec()
    settings = load_slo_settings()
    factors = [slo.burn_factor(spec.slos[0], c.long, c.budget_percent)
               for c in (*settings.page.conditions, *settings.ticket.conditions)]
    assert factors == [Decimal("14.4"), Decimal("6"), Decimal("3"), Decimal("1")]
    spec28 = _slo_spec(window="28d")
    assert slo.burn_factor(spec28.slos[0], "1h", Decimal(2)) == Decimal("13.44")


def test_slo_recording_rules_cover_every_window_and_the_slo_window():
    files = render(_slo_spec())
    fast, hourly = rule_groups(files, "slo-api-availability-recording.yml")
    records = [r["record"] for r in fast["rules"]]
    windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]
    assert records[:2] == ["slo:sli_errors:rate5m", "slo:sli_total:rate5m"]
    assert records[2:10] == [f"slo:sli_error:ratio_rate{w}" for w in windows]
    assert records[10:] == ["slo:objective:ratio", "slo:error_budget:ratio", "slo:error_budget_remaining:ratio",
                            "slo:error_budget_consumed:ratio", "slo:error_budget_exhaustion:seconds"]
    assert all(r["labels"] == {"slo": "api-availability"} for r in fast["rules"] + hourly["rules"])
    # Only the 5m rates read the service's series; everything else sums recorded ones.
    errors = fast["rules"][0]["expr"]
    assert "[$window]" not in errors and "[5m]" in errors
    assert errors.rstrip().endswith("0 * (\n  sum(rate(websocket_messages_received_total[5m]))\n)")
    assert all("websocket_" not in r["expr"] for r in fast["rules"][2:] + hourly["rules"])
    assert "avg_over_time" not in files["prometheus/rules/slo-api-availability-recording.yml"]
    assert hourly["interval"] == "1h"
    assert [r["record"] for r in hourly["rules"]] == ["slo:sli_errors:rate5m_sum1h", "slo:sli_total:rate5m_sum1h"]


def test_latency_sli_counts_the_threshold_bucket_in_both_spellings():
    files = render(_slo_spec())
    errors, total = rule_groups(files, "slo-fast-publish-recording.yml")[0]["rules"][:2]
    metric = catalog.MESSAGE_DURATION_SECONDS.name
    assert f'{metric}_bucket{{type="publish",le=~"1|1[.]0"}}' in errors["expr"]
    assert f'{metric}_count{{type="publish"}}' in errors["expr"]
    # Without the bucket both are absent, so the SLI is absent, not perfect.
    assert f'{metric}_bucket{{type="publish",le=~"1|1[.]0"}}' in total["expr"]


def test_slo_alerts_page_and_ticket_under_one_name_and_alert_when_absent():
    spec = _slo_spec()
    files = render(spec)
    rendered = alerts_in(files, "slo-api-availability-alerts.yml")
    burn, absent = slo_alert_names("api-availability")
    assert (burn, absent) == ("ApiAvailabilityErrorBudgetBurn", "ApiAvailabilitySLIAbsent")
    page, ticket, missing = rendered
    assert all(r["labels"]["slo"] == "api-availability" for r in rendered)
    assert page["alert"] == ticket["alert"] == burn
    assert (page["labels"]["severity"], ticket["labels"]["severity"]) == ("critical", "warning")
    assert 'slo:sli_error:ratio_rate1h{slo="api-availability"} / 0.001 > 14.4' in page["expr"]
    assert 'slo:sli_error:ratio_rate30m{slo="api-availability"} / 0.001 > 6' in page["expr"]
    assert 'slo:sli_error:ratio_rate3d{slo="api-availability"} / 0.001 > 1' in ticket["expr"]
    assert missing["alert"] == absent and missing["expr"] == 'absent(slo:sli_error:ratio_rate5m{slo="api-availability"})'


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    spec = load_spec_file(SPECS / "many-services.yaml").model_copy(update={"slos": _slo_spec().slos})
    files = render(spec)
    names = {r["alert"] for name in files if name.startswith("prometheus/rules/") and "recording" not in name
             for r in alerts_in(files, name.rsplit("/", 1)[1])}
    firing, silent = set(), set()
    for path, text in files.items():
        if not path.startswith("prometheus/tests/"):
            continue
        for test in yaml.safe_load(text)["tests"]:
            for check in test.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    custom = {a.name for a in spec.alerts.custom if a.tests is None}
    assert names - custom <= firing  # custom alerts without `tests` get only the silent case
    assert names <= silent


# ---------------------------------------------------------------------------------------
# Custom alerts
# ---------------------------------------------------------------------------------------

CUSTOM = {
    "name": "GatewayTooFewInstances",
    "expr": 'count(up{job="gateway"} == 1) < 2',
    "for": "5m",
    "severity": "critical",
    "summary": "Fewer than two gateway instances are up.",
    "description": "Only {{ $value }} gateway instances answer scrapes.",
    "labels": {"team": "edge"},
    "tests": {
        "input": [{"series": 'up{job="gateway",instance="a"}', "values": "1x20"},
                  {"series": 'up{job="gateway",instance="b"}', "values": "0x20"}],
        "eval_time": "10m",
        "description": "Only 1 gateway instances answer scrapes.",
        "silent_input": [{"series": 'up{job="gateway",instance="a"}', "values": "1x20"},
                         {"series": 'up{job="gateway",instance="b"}', "values": "1x20"}],
    },
}


def test_custom_alerts_are_rendered_as_given_with_their_tests():
    spec = make_spec(alerts={"custom": [CUSTOM]})
    files = render(spec)
    (rule,) = alerts_in(files, "custom.yml")
    assert rule == {
        "alert": "GatewayTooFewInstances", "expr": CUSTOM["expr"], "for": "5m",
        "labels": {"severity": "critical", "team": "edge"},
        "annotations": {"summary": CUSTOM["summary"], "description": CUSTOM["description"],
                        "runbook_url": "http://localhost:3000/public/runbooks/GatewayTooFewInstances.md"},
    }
    tests = yaml.safe_load(files["prometheus/tests/custom.yml"])["tests"]
    fires, silent = tests
    assert fires["alert_rule_test"][0]["exp_alerts"][0]["exp_labels"] == {"severity": "critical", "team": "edge"}
    assert fires["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"]["description"] == CUSTOM["tests"]["description"]
    assert silent["alert_rule_test"][0]["exp_alerts"] == []
    page = runbooks.render(spec, Topology(spec))["runbooks/GatewayTooFewInstances.md"]
    assert "count(up{job=\"gateway\"} == 1) < 2" in page and "add `runbook:`" in page


# ---------------------------------------------------------------------------------------
# Runbooks
# ---------------------------------------------------------------------------------------


def test_every_alert_has_a_runbook_page_with_the_four_sections():
    spec = load_spec_file(SPECS / "many-services.yaml").model_copy(update={"slos": _slo_spec().slos})
    topology = Topology(spec)
    files = render(spec)
    pages = runbooks.render(spec, topology)
    names = {r["alert"] for path in files if path.startswith("prometheus/rules/") and "recording" not in path
             for r in alerts_in(files, path.rsplit("/", 1)[1])}
    assert set(pages) == {f"runbooks/{name}.md" for name in names}
    for path, text in pages.items():
        assert text.startswith(f"# {path[len('runbooks/'):-3]}\n")
        assert "\n\n\n" not in text and text.endswith("\n") and not text.endswith("\n\n")
    for name in names - {a.name for a in spec.alerts.custom}:
        text = pages[f"runbooks/{name}.md"]
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
            assert section in text, f"{name}: no {section}"
        assert "```promql" in text and "service_name=" in text


def test_runbook_template_errors_are_not_silent():
    import jinja2

    page = rules.runbook_pages(make_spec(), Topology(make_spec()))[0]
    environment = runbooks._environment()
    with pytest.raises(jinja2.UndefinedError, match="no_such_field"):
        environment.from_string("{{ page.no_such_field }}").render(page=page)


# ---------------------------------------------------------------------------------------
# The real tool: promtool check rules / test rules
# ---------------------------------------------------------------------------------------

# The default spec and every file in specs/ also go through promtool in test_stack_bundles.py.
SPEC_CASES = {
    "minimal": lambda: make_spec(),
    "overrides": lambda: make_spec(alerts={"thresholds": {
        "connection_drop_rate": {"threshold": 0.1, "critical": 0.5},
        "p99_latency": {"threshold": 0.1, "critical": 0.3},
        "error_rate": {"threshold": 0.001, "critical": 0.002},
        "active_connections": {"threshold": 3},
        "rate_limited": {"threshold": 0.5, "for": "1m"},
        "broker_lag": {"threshold": 0.9},
        "collector_queue_full": {"threshold": 0.95},
    }}),
    "slos": lambda: _slo_spec(),
    "slos-7d": lambda: _slo_spec(window="7d", objective=95),
    "many-services-and-custom": lambda: load_spec_file(SPECS / "many-services.yaml").model_copy(
        update={"alerts": make_spec(alerts={"custom": [CUSTOM]}).alerts}),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_promtool_accepts_the_rules_and_their_unit_tests_pass(case, tmp_path):
    spec = SPEC_CASES[case]()
    root = write(render(spec), tmp_path)
    rule_files = sorted(str(p.relative_to(root)) for p in (root / "prometheus/rules").glob("*.yml"))
    test_files = sorted(str(p.relative_to(root)) for p in (root / "prometheus/tests").glob("*.yml"))
    assert rule_files and test_files
    checked = promtool(root, "check", "rules", *rule_files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool(root, "test", "rules", *test_files)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(test_files)


@pytest.mark.parametrize(
    ("rule_file", "old", "new"),
    [
        ("websocket.yml", 'code!~"1000|1001"', 'code!~"1001"'),  # a normal close counted as a drop
        ("websocket.yml", ") > 0.05", ") > 0.5"),  # a threshold that does not match its words
        ("websocket.yml", "for: 2m", "for: 20m"),  # waits longer than it says
        ("stack.yml", 'service=""', 'service!=""'),  # watches the wrong targets
        ("slo-api-availability-alerts.yml", "/ 0.001 > 14.4", "/ 0.001 > 144"),  # a page that never comes
        ("slo-fast-publish-recording.yml", 'le=~"1|1[.]0"', 'le="1"'),  # misses the bucket as Prometheus 3 stores it
    ],
)
def test_promtool_unit_tests_catch_a_broken_rule(rule_file, old, new, tmp_path):
    root = write(render(_slo_spec()), tmp_path)
    path = root / "prometheus/rules" / rule_file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    tested = promtool(root, "test", "rules", f"prometheus/tests/{rule_file}")
    assert tested.returncode != 0, f"breaking {rule_file} ({old} -> {new}) went unnoticed"


def test_promtool_unit_tests_catch_a_nan_at_zero_traffic(tmp_path):
    root = write(render(make_spec()), tmp_path)
    path = root / "prometheus/tests/websocket.yml"
    path.write_text(path.read_text().replace("[5m])) > 0)\n", "[5m])))\n"))  # drop the denominator guards
    tested = promtool(root, "test", "rules", "prometheus/tests/websocket.yml")
    assert tested.returncode != 0 and "NaN" in tested.stdout + tested.stderr


def test_a_custom_alert_test_with_the_wrong_expectation_fails(tmp_path):
    wrong = {**CUSTOM, "tests": {**CUSTOM["tests"], "description": "Only 2 gateway instances answer scrapes."}}
    root = write(render(make_spec(alerts={"custom": [wrong]})), tmp_path)
    tested = promtool(root, "test", "rules", "prometheus/tests/custom.yml")
    assert tested.returncode != 0


def test_docs_list_every_pack_alert():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text(encoding="utf-8")
    for alert in load_pack().alerts:
        assert f"| `{alert.key}` | {alert.alert} |" in docs, f"docs/alerts.md does not list {alert.key}"


@pytest.mark.parametrize("alert_key", ["collector_refused", "collector_export_failures"])
def test_name_regex_alerts_evaluate_when_two_matched_names_share_their_labels(alert_key, tmp_path):
    """rate() drops the metric name: a receiver refusing spans and log records (same labels) must
    give one summed series, not a "vector cannot contain metrics with the same labelset" error,
    which the end-to-end test met on a real collector."""
    alert = load_pack().by_key()[alert_key]
    labels = {"instance": "collector:8888", "job": "collector", **alert.example}
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    names = {re.sub(r"(spans|log_records)", signal, alert.metric.example_name) for signal in ("spans", "log_records")}
    assert len(names) == 2 and all(re.fullmatch(alert.metric.name_regex, n) for n in names), names
    expected = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k in alert.by)
    root = write(render(make_spec()), tmp_path)
    (root / "regression.yml").write_text(yaml.safe_dump({
        "rule_files": ["prometheus/rules/stack.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": f"{name}{{{text}}}", "values": "0+60x23"} for name in sorted(names)],
            "promql_expr_test": [{"expr": rules.pack_value_expr(alert, load_pack().rate_window), "eval_time": "18m",
                                  "exp_samples": [{"labels": f"{{{expected}}}", "value": 2}]}],
        }],
    }))
    tested = promtool(root, "test", "rules", "regression.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
