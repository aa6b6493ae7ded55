"""stack.check: the pure logic by value, and each tool adapter against the real tool."""

from __future__ import annotations

import http.server
import json
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

import stack.check as check
from stack.check import (
    CheckResult,
    RouteCase,
    dashboard_expressions,
    dashboard_uid_problems,
    format_report,
    parse_route_tests,
    parse_version,
    promql_problems,
    rule_expressions,
    rule_runbook_urls,
    run_checks,
    runbook_problems,
    runbook_target,
    secret_file_problems,
)
from stack.spec import pinned_versions
from stack.tools import not_found_message
from tests.conftest import require_binary

# ---------------------------------------------------------------------------------------
# Pure logic
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("output, version", [
    ("promtool, version 2.42.0+ds (branch: debian/sid, revision: 2.42.0+ds-5+deb12u1)", "2.42.0+ds"),
    ("amtool, version 0.25.0 (branch: debian/sid)", "0.25.0"),
    ("otelcol version 0.159.0", "0.159.0"),
    ("docker-compose version 1.29.2, build unknown", "1.29.2"),
    ("loki, version 3.7.0 (branch: HEAD, revision: abc)", "3.7.0"),
    ("promtool, version 3.16.0 (branch: v3.16.0, revision: v0.316.0)", "3.16.0"),
    ('{"gitCommit":"","gitVersion":"v2.12.0","buildDate":""}', "2.12.0"),
    ("5.6.0", "5.6.0"),
    ("no digits here", None),
])
def test_parse_version(output, version):
    assert parse_version(output) == version


def test_route_cases_parse_and_become_amtool_arguments():
    cases = parse_route_tests([
        {"labels": {"severity": "critical", "alertname": 'Say "hi"'}, "receivers": ["oncall"]},
        {"labels": {"severity": "warning"}, "receivers": ["team", "audit"]},
    ])
    assert cases[0] == RouteCase((("alertname", 'Say "hi"'), ("severity", "critical")), ("oncall",))
    assert cases[0].matcher_args() == ['alertname="Say \\"hi\\""', 'severity="critical"']
    assert cases[1].describe() == "{severity=warning} -> team,audit"
    assert parse_route_tests(None) == []


@pytest.mark.parametrize("data, message", [
    ({"labels": {}}, "expected a list"),
    ([{"receivers": ["a"]}], "case 0: expected labels"),
    ([{"labels": {"a": "b"}, "receivers": []}], "case 0: expected receivers"),
    ([{"labels": {"a": "b"}, "receivers": "team"}], "case 0: expected receivers"),
])
def test_malformed_route_cases_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        parse_route_tests(data)


RULES = {
    "prometheus/rules/ws.yml": {"groups": [{"name": "ws", "rules": [
        {"record": "job:x:rate5m", "expr": "sum(rate(x_total[5m]))"},
        {"alert": "HighErrors", "expr": "job:x:rate5m > 1",
         "annotations": {"runbook_url": "http://127.0.0.1:3000/public/runbooks/HighErrors.md"}},
        {"alert": "NoRunbook", "expr": "up == 0", "annotations": {}},
    ]}]},
}


def test_rule_expressions_and_runbook_urls():
    assert rule_expressions(RULES) == [
        ("prometheus/rules/ws.yml: ws/job:x:rate5m", "sum(rate(x_total[5m]))"),
        ("prometheus/rules/ws.yml: ws/HighErrors", "job:x:rate5m > 1"),
        ("prometheus/rules/ws.yml: ws/NoRunbook", "up == 0"),
    ]
    assert rule_runbook_urls(RULES) == [
        ("prometheus/rules/ws.yml: HighErrors", "http://127.0.0.1:3000/public/runbooks/HighErrors.md"),
        ("prometheus/rules/ws.yml: NoRunbook", ""),
    ]


@pytest.mark.parametrize("url, target", [
    ("http://127.0.0.1:3000/public/runbooks/HighErrors.md", "runbooks/HighErrors.md"),
    ("https://wiki.example.com/ops/runbooks/ws/HighErrors.md#fix", "runbooks/ws/HighErrors.md"),
    ("runbooks/HighErrors.md", "runbooks/HighErrors.md"),
    ("https://wiki.example.com/HighErrors.md", "runbooks/HighErrors.md"),
    ("https://wiki.example.com/runbooks/", None),
])
def test_runbook_target(url, target):
    assert runbook_target(url) == target


def test_runbook_problems():
    files = {"runbooks/HighErrors.md"}
    urls = rule_runbook_urls(RULES) + [("x.yml: Gone", "http://grafana/public/runbooks/Gone.md")]
    assert runbook_problems(urls, files) == [
        "prometheus/rules/ws.yml: NoRunbook: no runbook_url annotation",
        "x.yml: Gone: runbook_url http://grafana/public/runbooks/Gone.md does not resolve to a file in the "
        "bundle (looked for runbooks/Gone.md)",
    ]


def test_dashboard_uid_problems():
    dashboards = {
        "a.json": {"uid": "websocket-overview"},
        "b.json": {"uid": "websocket-overview"},
        "c.json": {"uid": "x" * 41},
        "d.json": {"title": "no uid"},
    }
    assert dashboard_uid_problems(dashboards) == [
        "b.json: uid 'websocket-overview' is also used by a.json",
        f"c.json: uid '{'x' * 41}' is 41 characters; Grafana allows 40",
        "d.json: no uid (Grafana would invent one, and links to it would break)",
    ]
    assert dashboard_uid_problems({"a.json": {"uid": "y" * 40}}) == []


def test_dashboard_expressions_include_rows_and_skip_logql():
    dashboard = {"panels": [
        {"title": "top", "targets": [{"expr": "up"}]},
        {"title": "row", "type": "row", "panels": [
            {"title": "nested", "targets": [{"expr": "rate(x_total[$__rate_interval])",
                                              "datasource": {"type": "prometheus", "uid": "prometheus"}}]},
        ]},
        {"title": "logs", "targets": [{"expr": '{service_name="ws"} |= "error"',
                                        "datasource": {"type": "loki", "uid": "loki"}}]},
    ]}
    assert dashboard_expressions({"d.json": dashboard}) == [
        ("d.json: top", "up"),
        ("d.json: nested", "rate(x_total[$__rate_interval])"),
    ]


def test_promql_problems_substitute_grafana_variables_first():
    good = [("p", 'sum by (le) (rate(x_bucket{job=~"$job"}[$__rate_interval]))'), ("q", "up[${__range}]")]
    assert promql_problems(good, grafana=True) == []
    bad = promql_problems([("r", "sum(rate(x[5m])")], grafana=False)
    assert len(bad) == 1 and bad[0].startswith("r: 'sum(rate(x[5m])' does not parse")


def test_secret_file_problems():
    present = {"secrets-src/slack", "/abs/pd"}
    compose = {"secrets": {"slack": {"file": "secrets-src/slack"}, "smtp": {"file": "secrets-src/smtp"},
                           "gf": {"environment": "GF_PASSWORD"}}}
    processes = {"secrets": [{"name": "pd", "file": "/abs/pd"}, {"name": "hook", "env": "HOOK_URL"}]}
    alertmanager = {"receivers": [
        {"name": "a", "slack_configs": [{"api_url_file": "/run/secrets/slack"}]},
        {"name": "b", "pagerduty_configs": [{"routing_key_file": "secrets/pd"}]},
        {"name": "c", "webhook_configs": [{"url_file": "secrets/hook"}]},
        {"name": "d", "email_configs": [{"auth_password_file": "secrets/nowhere"}]},
    ]}
    problems, checked = secret_file_problems(compose, processes, alertmanager, present.__contains__)
    assert checked == 6
    assert problems == [
        "docker-compose.yml: secret 'smtp' reads secrets-src/smtp, which does not exist",
        "alertmanager/alertmanager.yml: auth_password_file secrets/nowhere is neither provided by "
        "local/processes.yaml nor present",
    ]
    assert secret_file_problems(None, None, None, present.__contains__) == ([], 0)


def test_report_names_every_check_and_why():
    text = format_report([
        CheckResult("promtool check config", "passed", "prometheus/prometheus.yml", "/usr/bin/promtool", "2.42.0"),
        CheckResult("loki -verify-config", "skipped", "loki/config.yaml", detail="loki not found on PATH"),
        CheckResult("dashboard uids", "failed", "2 dashboard(s)", detail="a.json: no uid\nb.json: no uid"),
    ])
    assert text.splitlines() == [
        "PASSED   promtool check config  prometheus/prometheus.yml  [promtool 2.42.0]",
        "SKIPPED  loki -verify-config  loki/config.yaml",
        "         loki not found on PATH",
        "FAILED   dashboard uids  2 dashboard(s)",
        "         a.json: no uid",
        "         b.json: no uid",
        "1 passed, 1 failed, 1 skipped",
    ]


# ---------------------------------------------------------------------------------------
# Adapters against the real tools
# ---------------------------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return root


PROMETHEUS_OK = {
    "prometheus/prometheus.yml": """\
        global: {scrape_interval: 15s}
        rule_files: [rules/*.yml]
        scrape_configs:
          - job_name: ws
            static_configs: [{targets: ["127.0.0.1:9100"]}]
        """,
    "prometheus/rules/ws.yml": """\
        groups:
          - name: ws
            rules:
              - alert: Down
                expr: up == 0
                for: 1m
                labels: {severity: critical}
                annotations: {summary: Down., runbook_url: "http://grafana/public/runbooks/Down.md"}
        """,
    "prometheus/tests/ws.yml": """\
        rule_files: [../rules/ws.yml]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - {series: 'up{job="ws"}', values: "0x5"}
            alert_rule_test:
              - eval_time: 3m
                alertname: Down
                exp_alerts:
                  - exp_labels: {severity: critical, job: ws}
                    exp_annotations: {summary: Down., runbook_url: "http://grafana/public/runbooks/Down.md"}
        """,
    "runbooks/Down.md": "# Down\n",
}


def by_name(results: list[CheckResult]) -> dict[str, list[CheckResult]]:
    grouped: dict[str, list[CheckResult]] = {}
    for result in results:
        grouped.setdefault(result.name, []).append(result)
    return grouped


def test_promtool_checks_pass_on_good_files_and_fail_on_bad(tmp_path):
    require_binary("promtool")
    bundle = write(tmp_path / "ok", PROMETHEUS_OK)
    results = by_name(run_checks(bundle))
    for name in ("promtool check config", "promtool check rules", "promtool test rules"):
        (result,) = results[name]
        assert result.status == "passed", result
        assert result.version and result.tool.endswith("promtool")
    assert results["runbook links resolve"][0].status == "passed"
    assert results["PromQL parses"][0].status == "passed"

    broken = dict(PROMETHEUS_OK)
    broken["prometheus/rules/ws.yml"] = broken["prometheus/rules/ws.yml"].replace("for: 1m", "for: soon")
    results = by_name(run_checks(write(tmp_path / "bad", broken)))
    (rules,) = results["promtool check rules"]
    assert rules.status == "failed"
    assert "soon" in rules.detail


def test_amtool_checks_each_route_case(tmp_path):
    require_binary("amtool")
    bundle = write(tmp_path, {
        "alertmanager/alertmanager.yml": """\
            route:
              receiver: team
              routes:
                - receiver: oncall
                  matchers: ['severity="critical"']
            receivers: [{name: team}, {name: oncall}]
            """,
        "alertmanager/route-tests.yaml": yaml.safe_dump([
            {"labels": {"severity": "critical", "alertname": "Down"}, "receivers": ["oncall"]},
            {"labels": {"severity": "warning"}, "receivers": ["team"]},
            {"labels": {"severity": "warning"}, "receivers": ["oncall"]},  # wrong on purpose
        ]),
    })
    results = by_name(run_checks(bundle))
    assert results["amtool check-config"][0].status == "passed"
    routes = results["amtool config routes test"]
    assert [r.status for r in routes] == ["passed", "passed", "failed"]
    assert routes[0].subject == "{alertname=Down,severity=critical} -> oncall"
    assert "team" in routes[2].detail


def test_amtool_routes_skipped_with_a_reason_without_cases(tmp_path):
    bundle = write(tmp_path, {"alertmanager/alertmanager.yml": "route: {receiver: a}\nreceivers: [{name: a}]\n"})
    (routes,) = by_name(run_checks(bundle))["amtool config routes test"]
    assert routes.status == "skipped"
    assert "route-tests.yaml" in routes.detail


def test_docker_compose_config(tmp_path):
    require_binary("docker-compose")
    bundle = write(tmp_path / "ok", {"docker-compose.yml": "version: '3.8'\nservices:\n  a: {image: 'busybox:1'}\n"})
    (result,) = by_name(run_checks(bundle))["docker-compose config"]
    assert result.status == "passed", result.detail
    bundle = write(tmp_path / "bad", {"docker-compose.yml": "version: '3.8'\nservices:\n  a: {imag: busybox}\n"})
    (result,) = by_name(run_checks(bundle))["docker-compose config"]
    assert result.status == "failed"


def test_otelcol_validate(tmp_path):
    require_binary("otelcol")
    good = """\
        receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:4317"}}}}
        exporters: {debug: {}}
        service: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}
        """
    (result,) = by_name(run_checks(write(tmp_path / "ok", {"collector/config.yaml": good})))["otelcol validate"]
    assert result.status == "passed", result.detail
    bad = good.replace("exporters: [debug]", "exporters: [nothing]")
    (result,) = by_name(run_checks(write(tmp_path / "bad", {"collector/config.yaml": bad})))["otelcol validate"]
    assert result.status == "failed"


def test_checks_report_the_pinned_tool_versions(tmp_path):
    # obsgen check runs what the compose file pins: Prometheus 3's promtool, amtool of the pinned Alertmanager.
    for tool in ("promtool", "amtool"):
        require_binary(tool)
    bundle = write(tmp_path, {**PROMETHEUS_OK,
                              "alertmanager/alertmanager.yml": "route: {receiver: a}\nreceivers: [{name: a}]\n"})
    results = by_name(run_checks(bundle))
    assert results["promtool check config"][0].version == pinned_versions()["prometheus"].version
    assert results["amtool check-config"][0].version == pinned_versions()["alertmanager"].version


JAEGER_OK = """\
    extensions:
      jaeger_storage: {backends: {traces: {memory: {max_traces: 1000}}}}
      jaeger_query: {storage: {traces: traces}, http: {endpoint: "127.0.0.1:16686"}}
    receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:4317"}}}}
    exporters: {jaeger_storage_exporter: {trace_storage: traces}}
    service:
      extensions: [jaeger_storage, jaeger_query]
      pipelines: {traces: {receivers: [otlp], exporters: [jaeger_storage_exporter]}}
    """


def test_jaeger_validate(tmp_path):
    require_binary("jaeger")
    (result,) = by_name(run_checks(write(tmp_path / "ok", {"jaeger/config.yaml": JAEGER_OK})))["jaeger validate"]
    assert result.status == "passed", result.detail
    assert result.version == pinned_versions()["jaeger"].version
    bad = JAEGER_OK.replace("memory:", "memroy:")
    (result,) = by_name(run_checks(write(tmp_path / "bad", {"jaeger/config.yaml": bad})))["jaeger validate"]
    assert result.status == "failed"
    assert "memroy" in result.detail


def test_pint_lint_passes_clean_rules_and_fails_on_a_warning(tmp_path):
    require_binary("pint")
    (result,) = by_name(run_checks(write(tmp_path / "ok", PROMETHEUS_OK)))["pint lint"]
    assert result.status == "passed", result.detail
    assert result.subject == "prometheus/rules/ws.yml"
    # An alert without a condition always fires: a pint *warning*, which obsgen check counts as a failure.
    always = dict(PROMETHEUS_OK)
    always["prometheus/rules/ws.yml"] = always["prometheus/rules/ws.yml"].replace("expr: up == 0", "expr: sum(up)")
    (result,) = by_name(run_checks(write(tmp_path / "bad", always)))["pint lint"]
    assert result.status == "failed"
    assert "alerts/comparison" in result.detail
    assert "level=INFO" not in result.detail


class RecordingServer:
    """An HTTP server on 127.0.0.1 that answers 503 and records every path asked for."""

    def __init__(self) -> None:
        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                paths.append(self.path)
                self.send_error(503)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_pint_never_queries_a_prometheus(tmp_path):
    # pint reads .pint.hcl from its working directory (the bundle root); one there naming a Prometheus
    # would make it query that server. obsgen check gives pint its own config and --offline instead.
    pint = require_binary("pint")
    bundle = write(tmp_path, PROMETHEUS_OK)
    with RecordingServer() as prometheus:
        (bundle / ".pint.hcl").write_text(f'prometheus "live" {{\n  uri = "{prometheus.url}"\n}}\n')
        # The trap works: pint run plainly in the bundle asks the server.
        subprocess.run([pint, "--no-color", "lint", "prometheus/rules/ws.yml"], cwd=bundle, capture_output=True,
                       timeout=120)
        assert prometheus.paths, "pint did not read .pint.hcl: this test would prove nothing"
        prometheus.paths.clear()
        (result,) = by_name(run_checks(bundle))["pint lint"]
        assert result.status == "passed", result.detail
        assert prometheus.paths == []


def test_absent_tools_are_listed_as_skipped_never_missing(tmp_path, monkeypatch):
    write(tmp_path, {**PROMETHEUS_OK, "docker-compose.yml": "services: {}\n", "loki/config.yaml": "{}\n",
                     "jaeger/config.yaml": "{}\n", "collector/config.yaml": "{}\n",
                     "alertmanager/alertmanager.yml": "route: {receiver: a}\nreceivers: [{name: a}]\n",
                     "alertmanager/route-tests.yaml": "- {labels: {a: b}, receivers: [a]}\n"})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("OBSGEN_TOOLS", str(tmp_path / "no-tools"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    results = run_checks(tmp_path)
    tool_checks = [r for r in results if r.name.split()[0] in
                   ("promtool", "amtool", "otelcol", "jaeger", "loki", "docker-compose", "pint")]
    assert [r.name for r in tool_checks] == [
        "promtool check config", "promtool check rules", "promtool test rules", "amtool check-config",
        "amtool config routes test", "otelcol validate", "jaeger validate", "loki -verify-config",
        "docker-compose config", "pint lint",
    ]
    for result in tool_checks:
        assert result.status == "skipped", result
        tool = result.name.split()[0]
        assert result.detail == not_found_message(check.TOOL_NAMES[tool]), result


def test_a_tool_that_cannot_run_is_a_failure_not_a_crash(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "promtool"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'broken tool' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("OBSGEN_TOOLS", str(tmp_path))
    write(tmp_path / "bundle", PROMETHEUS_OK)
    (result,) = by_name(run_checks(tmp_path / "bundle"))["promtool check config"]
    assert result.status == "failed"
    assert result.detail == "broken tool"


def test_dashboards_in_a_bundle(tmp_path):
    dashboards = {
        "grafana/dashboards/a.json": json.dumps({"uid": "a", "panels": [{"title": "t", "targets": [{"expr": "rate(x[$__rate_interval])"}]}]}),
        "grafana/dashboards/b.json": json.dumps({"uid": "a", "panels": [{"title": "u", "targets": [{"expr": "rate(x[5m]"}]}]}),
    }
    results = by_name(run_checks(write(tmp_path, dashboards)))
    assert results["dashboard uids"][0].status == "failed"
    promql = results["PromQL parses"][0]
    assert promql.status == "failed"
    assert promql.detail.startswith("grafana/dashboards/b.json: u: 'rate(x[5m]' does not parse")
