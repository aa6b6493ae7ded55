"""A custom alert's metric names against what the spec's services and the stack expose:
by value, then through `obsgen render` (a warning) and `obsgen check` (a failure)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from stack.check import check_custom_alert_metrics
from stack.cli import main, spec_json_schema
from stack.metric_names import (
    PATH,
    expression_metric_names,
    known_metrics,
    recorded_names,
    unknown_name_problems,
)
from stack.spec import Spec


def spec_with(expr: str, **service) -> Spec:
    return Spec.model_validate({
        "version": 1, "project": "demo",
        "services": [{"name": "api", **service}],
        "alerts": {"pack": False, "custom": [
            {"name": "Mine", "expr": expr, "summary": "Something is off.", "description": "Value {{ $value }}."}]},
    })


def problems(expr: str, recorded: set[str] = frozenset(), **service) -> list[str]:
    spec = spec_with(expr, **service)
    return unknown_name_problems([("alert", expr)], known_metrics(spec), set(recorded))


def test_every_selected_name_is_found_and_regex_names_are_not():
    expr = ('sum(rate(a_total{job="x"}[5m])) / on() group_left count(b) > bool c offset 5m '
            'or absent({__name__="d"}) unless max_over_time(e[10m:1m]) and {__name__=~"f.*"} '
            'and histogram_quantile(0.9, sum by (le) (rate(g_bucket[5m]))) and -(h) and topk(1, i)')
    assert expression_metric_names(expr) == {"a_total", "b", "c", "d", "e", "g_bucket", "h", "i"}


def test_a_builtin_or_exporter_service_exposes_the_catalog():
    expr = "sum(rate(websocket_messages_received_total[5m])) == 0"
    assert problems(expr, builtin=True) == []
    assert problems(expr, metrics={"exporter": True}) == []
    assert problems(expr, metrics={"names": ["websocket_messages_received_total"]}) == []


def test_a_misspelled_catalog_name_fails_with_did_you_mean():
    found = problems("sum(rate(websocket_mesages_received_total[5m])) == 0", builtin=True)
    assert found == [
        "alert: metric 'websocket_mesages_received_total' is exposed by no service of the spec nor the stack; "
        "did you mean 'websocket_messages_received_total'?"
    ]


def test_declared_names_cover_histogram_and_counter_series():
    declared = {"metrics": {"names": ["http_request_duration_seconds", "http_requests_total"]}}
    for name in ("http_request_duration_seconds_bucket", "http_request_duration_seconds_sum",
                 "http_request_duration_seconds_count", "http_requests_total", "http_requests_created"):
        assert problems(f"{name} > 0", **declared) == [], name
    [problem] = problems("http_request_total > 0", **declared)
    assert "did you mean 'http_requests_total'?" in problem


def test_the_stack_own_series_are_allowed():
    for expr in ('up{job="api"} == 0', 'ALERTS{alertstate="firing"} > 0',
                 "rate(otelcol_exporter_send_failed_spans[5m]) > 0", "prometheus_tsdb_head_series > 1e6",
                 "scrape_duration_seconds > 10", "process_resident_memory_bytes > 1e9"):
        assert problems(expr, builtin=True) == [], expr


def test_a_recording_rule_name_must_be_recorded():
    rules = {"groups": [{"name": "g", "rules": [{"record": "job:requests:rate5m", "expr": "sum(rate(x[5m]))"}]}]}
    recorded = recorded_names([rules])
    assert recorded == {"job:requests:rate5m"}
    assert problems("job:requests:rate5m > 1", recorded, builtin=True) == []
    [problem] = problems("job:request:rate5m > 1", recorded, builtin=True)
    assert "not recorded by any rule of the bundle" in problem
    assert "did you mean 'job:requests:rate5m'?" in problem


def test_a_service_that_declares_nothing_is_named_in_the_message():
    [problem] = problems("http_requests_totl > 0")
    assert "services api declare no metrics.names" in problem


def test_schema_documents_the_new_fields():
    endpoint = spec_json_schema()["$defs"]["MetricsEndpoint"]["properties"]
    assert "checked" in endpoint["names"]["description"]
    assert "exporter library" in endpoint["exporter"]["description"]


# ---------------------------------------------------------------------------------------
# Through the command line
# ---------------------------------------------------------------------------------------

SPEC = """\
version: 1
project: demo
services:
  - name: ws
    builtin: true
    metrics: {port: 9100}
  - name: checkout
    metrics: {port: 9200, names: [checkout_orders_total]}
alerts:
  custom:
    - name: NoOrders
      expr: sum(rate(checkout_orders_total[15m])) == 0
      summary: No orders were placed for 15 minutes.
      description: Orders per second {{ $value }}.
    - name: NoMessages
      expr: sum(rate(%s[5m])) == 0
      summary: No messages arrived for 5 minutes.
      description: Messages per second {{ $value }}.
"""


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


@pytest.mark.parametrize("target", ["compose", "local"])
def test_render_warns_and_check_fails_on_a_misspelled_name(tmp_path, target):
    spec = tmp_path / "obsgen.yaml"
    spec.write_text(SPEC % "websocket_messages_recieved_total")
    code, _, stderr = run("render", str(spec), "--out", str(tmp_path / "b"), "--target", target)
    assert code == 0
    assert stderr == (
        "obsgen: warning: alerts.custom[1].expr (NoMessages): metric 'websocket_messages_recieved_total' is exposed "
        "by no service of the spec nor the stack; did you mean 'websocket_messages_received_total'?\n")
    assert yaml.safe_load((tmp_path / "b" / PATH).read_text())["services"]["checkout"] == ["checkout_orders_total"]
    result = check_custom_alert_metrics(tmp_path / "b")
    assert result.status == "failed"
    assert "NoMessages: metric 'websocket_messages_recieved_total'" in result.detail
    assert "did you mean 'websocket_messages_received_total'?" in result.detail
    code, stdout, _ = run("check", str(tmp_path / "b"))
    assert code == 1 and "FAILED   custom alert metric names" in stdout


def test_render_is_quiet_and_check_passes_on_known_names(tmp_path):
    spec = tmp_path / "obsgen.yaml"
    spec.write_text(SPEC % "websocket_messages_received_total")
    code, _, stderr = run("render", str(spec), "--out", str(tmp_path / "b"))
    assert (code, stderr) == (0, "")
    result = check_custom_alert_metrics(tmp_path / "b")
    assert (result.status, result.subject) == ("passed", "2 custom alert(s)")


def test_check_of_a_bundle_without_custom_alerts_skips_with_a_reason(tmp_path):
    assert run("render", "--out", str(tmp_path / "b"))[0] == 0
    result = check_custom_alert_metrics(tmp_path / "b")
    assert (result.status, result.detail) == ("skipped", "the bundle has no custom alerts")
    assert not (tmp_path / "b" / PATH).exists()


def test_check_fails_when_the_names_file_is_missing(tmp_path):
    spec = tmp_path / "obsgen.yaml"
    spec.write_text(SPEC % "websocket_messages_received_total")
    assert run("render", str(spec), "--out", str(tmp_path / "b"))[0] == 0
    (tmp_path / "b" / PATH).unlink()
    result = check_custom_alert_metrics(Path(tmp_path / "b"))
    assert result.status == "failed" and "render it again" in result.detail
