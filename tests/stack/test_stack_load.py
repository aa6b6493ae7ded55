"""stack.load: a spec's every mistake, located at file:line:column with its key path."""

from __future__ import annotations

import re
import textwrap

import pytest

from exporter.catalog import BY_NAME
from stack.errors import SpecError, SpecIssue, format_key_path
from stack.load import default_spec_text, load_default_spec, load_spec, load_spec_file

VALID = """\
version: 1
project: demo
services:
  - name: ws
    port: 8765
    metrics: {port: 9100}
"""


def issues_of(text: str, filename: str = "obsgen.yaml") -> list[SpecIssue]:
    with pytest.raises(SpecError) as caught:
        load_spec(textwrap.dedent(text), filename)
    return caught.value.issues


def only_issue(text: str) -> SpecIssue:
    issues = issues_of(text)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


# Each case: a spec, then where the (single) problem must be reported and what it must say.
ERROR_CASES = [
    pytest.param(
        VALID + "  - name: [ws\n",
        8, 1, "(yaml)", "invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 7, column 11)",
        id="invalid-yaml",
    ),
    pytest.param(
        VALID.replace("    port: 8765\n", "    prot: 8765\n"),
        5, 5, "services[0].prot", "unknown key 'prot'; did you mean 'port'?",
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        VALID + "servces: []\n",
        7, 1, "servces", "did you mean 'services'?",
        id="unknown-top-level-key",
    ),
    pytest.param(
        VALID + "frobnicate: 1\n",
        7, 1, "frobnicate", "unknown key 'frobnicate'; expected one of: version, project, target, services",
        id="unknown-key-lists-known",
    ),
    pytest.param(
        VALID.replace("port: 8765", "port: eighty"),
        5, 11, "services[0].port", "valid integer",
        id="wrong-type",
    ),
    pytest.param(
        VALID + "components:\n  prometheus:\n    retention: 15 days\n",
        9, 16, "components.prometheus.retention", "not a duration: expected a Prometheus duration",
        id="bad-duration",
    ),
    pytest.param(
        VALID + textwrap.dedent("""\
            alerts:
              custom:
                - name: Broken
                  expr: sum(rate(x[5m])
                  summary: s
                  description: d
            """),
        10, 13, "alerts.custom[0].expr", "PromQL expression does not parse",
        id="promql-does-not-parse",
    ),
    pytest.param(
        VALID + "  - name: api\n  - name: ws\n",
        8, 11, "services[2].name", "duplicate name 'ws': already used by services[0]",
        id="duplicate-name",
    ),
    pytest.param(
        VALID + textwrap.dedent("""\
            notifications:
              receivers:
                - type: slack
                  name: team
                  channel: "#alerts"
                  api_url: https://hooks.slack.com/services/T0/B0/secretvalue
            """),
        12, 16, "notifications.receivers[0].api_url", "secrets are never written inline",
        id="inline-secret",
    ),
    pytest.param(
        VALID.replace("version: 1", "version: 2"),
        1, 10, "version", "unsupported spec version 2: this obsgen reads version 1",
        id="wrong-version",
    ),
    pytest.param(
        VALID.replace("version: 1\n", ""),
        1, 1, "version", "missing: the first line should be `version: 1`",
        id="missing-version",
    ),
    pytest.param(
        VALID + "project: other\n",
        7, 1, "project", "duplicate key 'project': already given at line 2",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        VALID + "notifications:\n  receivers:\n    - type: sms\n      name: x\n",
        9, 13, "notifications.receivers[0].type", "unknown type 'sms'; expected one of: slack, pagerduty, webhook, email",
        id="unknown-receiver-type",
    ),
    pytest.param(
        VALID + "notifications:\n  receivers:\n    - type: slack\n      name: x\n      api_url: {env: SLACK}\n",
        9, 7, "notifications.receivers[0].channel", "missing required key 'channel'",
        id="missing-key-in-tagged-union",
    ),
    pytest.param(
        VALID + "notifications:\n  receivers:\n    - {type: webhook, name: w, url: 'http://x/'}\n"
        "  route:\n    receiver: w\n    routes:\n      - receiver: nobody\n",
        13, 19, "notifications.route.routes[0].receiver", "receiver 'nobody' is not defined",
        id="undefined-route-receiver",
    ),
    pytest.param(
        VALID + "components:\n  prometheus:\n    ports: {htp: 9091}\n",
        9, 13, "components.prometheus.ports.htp", "unknown port 'htp'; known: http",
        id="unknown-port-model-validator",
    ),
    pytest.param(
        VALID + "notifications:\n  receivers:\n    - type: webhook\n      name: w\n      url: https://u:p@x.example/\n",
        11, 12, "notifications.receivers[0].url", "carries credentials",
        id="credentials-in-webhook-url",
    ),
    pytest.param(
        VALID + "alerts:\n  custom:\n    - {name: X, expr: up, summary: s, description: d, labels: {bad-key: v}}\n",
        9, 64, "alerts.custom[0].labels.bad-key", "expected a Prometheus label name",
        id="bad-dict-key",
    ),
    pytest.param(
        VALID + "slos:\n  - name: avail\n    objective: 99\n    events:\n"
        "      error_query: sum(rate(errors_total[5m]))\n      total_query: sum(rate(total[$window]))\n",
        11, 20, "slos[0].events.error_query", "must use [$window]",
        id="slo-query-without-window",
    ),
    pytest.param(
        "",
        1, 1, "(top level)", "the spec is empty",
        id="empty-file",
    ),
    pytest.param(
        "- just\n- a list\n",
        1, 1, "(top level)", "the spec is a list",
        id="not-a-mapping",
    ),
    pytest.param(
        VALID + "---\nversion: 1\n",
        7, 1, "(yaml)", "expected a single YAML document",
        id="two-documents",
    ),
]


@pytest.mark.parametrize("text, line, column, path, message", ERROR_CASES)
def test_each_mistake_is_located(text, line, column, path, message):
    issue = only_issue(text)
    assert issue.file == "obsgen.yaml"
    assert issue.line == line, str(issue)
    if column is not None:
        assert issue.column == column, str(issue)
    assert issue.path == path, str(issue)
    assert message in issue.message, str(issue)
    assert str(issue).startswith(f"obsgen.yaml:{line}:")


def test_every_field_error_is_reported_at_once():
    issues = issues_of("""\
        version: 1
        project: Demo
        target: nomad
        services:
          - name: ws
            metrics: {port: 0}
        components:
          loki: {retention: forever}
        """)
    assert [(i.line, i.path) for i in issues] == [
        (2, "project"),
        (3, "target"),
        (6, "services[0].metrics.port"),
        (8, "components.loki.retention"),
    ]


def test_every_duplicate_is_reported_not_only_the_first():
    issues = issues_of(VALID + "  - name: ws\n  - name: ws\n")
    assert [(i.line, i.path) for i in issues] == [(7, "services[1].name"), (8, "services[2].name")]


def test_inline_secret_value_is_never_echoed():
    secret = "xoxb-123456-very-secret-token"
    issues = issues_of(VALID + textwrap.dedent(f"""\
        notifications:
          receivers:
            - type: pagerduty
              name: pager
              routing_key: {secret}
            - type: slack
              name: team
              channel: "#a"
              api_url: [{secret}]
        """))
    text = "\n".join(map(str, issues))
    assert len(issues) == 2
    assert secret not in text


def test_spec_relative_secret_files_resolve_against_the_spec_directory(tmp_path):
    spec_dir = tmp_path / "config"
    spec_dir.mkdir()
    path = spec_dir / "obsgen.yaml"
    path.write_text(VALID + textwrap.dedent("""\
        notifications:
          receivers:
            - type: slack
              name: team
              channel: "#a"
              api_url: {file: secrets/slack-url}
            - type: pagerduty
              name: pager
              routing_key: {file: /etc/obsgen/pd-key}
        """))
    spec = load_spec_file(path)
    slack, pager = spec.notifications.receivers
    assert slack.api_url.file == str(spec_dir / "secrets" / "slack-url")
    assert pager.routing_key.file == "/etc/obsgen/pd-key"


def test_a_missing_spec_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as caught:
        load_spec_file(tmp_path / "nope.yaml")
    assert "no such file" in str(caught.value)


def test_key_path_formatting():
    assert format_key_path(("notifications", "receivers", 0, "api_url")) == "notifications.receivers[0].api_url"
    assert format_key_path(()) == "(top level)"


def test_the_embedded_default_describes_the_instrumented_server():
    spec = load_default_spec()
    assert spec.project == "obsgen-demo"
    (server,) = spec.services
    assert (server.name, server.builtin, server.port, server.metrics.port, server.metrics.path) == (
        "ws-server", True, 8765, 8765, "/metrics"
    )
    assert server.otlp
    assert {slo.name for slo in spec.slos} == {"message-availability", "publish-latency"}
    assert {r.type for r in spec.notifications.receivers} == {"webhook"}
    assert spec.notifications.route is not None and spec.notifications.route.routes


def test_the_default_spec_only_names_catalog_metrics():
    names = set(re.findall(r"\bwebsocket_[a-z_]+", default_spec_text()))
    assert names, "the default spec should query the catalog's metrics"
    for name in names:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in BY_NAME or base in BY_NAME, f"{name} is not in exporter/catalog.py"


def test_the_default_specs_commented_receivers_are_valid_when_switched_on():
    text = re.sub(r"(?m)^(\s*)# (\s*(?:- type:|[a-z_]+:).*)$", r"\1\2", default_spec_text())
    spec = load_spec(text, "default-with-examples.yaml")
    assert {r.type for r in spec.notifications.receivers} == {"webhook", "slack", "pagerduty", "email"}


# ---------------------------------------------------------------------------------------
# The user's own services (image or external) and the alert sink
# ---------------------------------------------------------------------------------------

IMAGE_SERVICE = """\
version: 1
project: demo
services:
  - name: api
    image: ghcr.io/acme/api:1.0
    metrics: {port: 9464}
"""
SINK_HOOK = "notifications:\n  receivers:\n    - {{type: webhook, name: w, url: '{url}'}}\n"

SERVICE_CASES = [
    pytest.param(IMAGE_SERVICE + "    builtin: true\n", 5, "services[0].image", "either builtin", id="image-and-builtin"),
    pytest.param(IMAGE_SERVICE.replace("ghcr.io/acme/api:1.0", "ghcr.io/Acme/API:1.0"), 5, "services[0].image",
                 "not an image reference: expected [registry/]name[:tag][@sha256:digest] with a lowercase name",
                 id="uppercase-image"),
    pytest.param(IMAGE_SERVICE.replace("ghcr.io/acme/api:1.0", "'acme/api:${TAG}'"), 5, "services[0].image",
                 "not an image reference", id="image-with-variable"),
    pytest.param(IMAGE_SERVICE.replace("ghcr.io/acme/api:1.0", "acme/api:1.0 --rm"), 5, "services[0].image",
                 "not an image reference", id="image-with-space"),
    pytest.param(IMAGE_SERVICE + "    host: api.internal\n", 7, "services[0].host", "host is for a service compose does not run",
                 id="image-with-host"),
    pytest.param(IMAGE_SERVICE + "    instances: 2\n", 7, "services[0].instances", "one container of an image service",
                 id="image-with-instances"),
    pytest.param(VALID + "    environment: {LOG_LEVEL: info}\n", 7, "services[0].environment",
                 "environment is for a service with an image", id="environment-without-image"),
    pytest.param(VALID + "    command: [serve]\n", 7, "services[0].command", "command is for a service with an image",
                 id="command-without-image"),
    pytest.param(IMAGE_SERVICE + "    environment:\n      OTEL_SERVICE_NAME: other\n", 8,
                 "services[0].environment.OTEL_SERVICE_NAME", "obsgen sets OTEL_SERVICE_NAME: the service's name is `name`",
                 id="own-service-name"),
    pytest.param(IMAGE_SERVICE + "    environment:\n      OTEL_RESOURCE_ATTRIBUTES: a=b\n", 8,
                 "services[0].environment.OTEL_RESOURCE_ATTRIBUTES", "resource_attributes: {key: value}",
                 id="own-resource-attributes"),
    pytest.param(IMAGE_SERVICE + "    environment:\n      DB_PASSWORD: hunter2\n", 8,
                 "services[0].environment.DB_PASSWORD", "looks like a secret: give {env: NAME}", id="literal-secret"),
    pytest.param(IMAGE_SERVICE + "    environment:\n      TOKEN: {file: token.txt}\n", 8,
                 "services[0].environment.TOKEN", "a file secret cannot become an environment variable",
                 id="file-secret-in-environment"),
    pytest.param(IMAGE_SERVICE + "    environment:\n      bad-name: x\n", 8,
                 "services[0].environment.bad-name", "an environment variable name", id="bad-variable-name"),
    pytest.param(IMAGE_SERVICE + "    environment:\n      LEVEL: [a]\n", 8,
                 "services[0].environment.LEVEL", "expected text (a string, number or true/false) or {env: NAME}",
                 id="list-as-variable"),
    pytest.param(IMAGE_SERVICE + "    resource_attributes: {service.name: x}\n", 7,
                 "services[0].resource_attributes.service.name", "the service's name is `name`",
                 id="resource-attribute-service-name"),
    pytest.param(VALID.replace("name: ws", "name: alert-sink"), 4, "services[0].name", "is the name of a stack component",
                 id="service-named-like-the-sink"),
    pytest.param(VALID + SINK_HOOK.format(url="http://alert-sink:8080/alerts"), 9, "notifications.receivers[0].url",
                 "the alert sink listens on plain HTTP, port 5001: write http://alert-sink:5001/alerts", id="sink-wrong-port"),
    pytest.param(VALID + SINK_HOOK.format(url="https://alert-sink:5001/alerts"), 9, "notifications.receivers[0].url",
                 "the alert sink listens on plain HTTP", id="sink-over-https"),
    pytest.param(VALID + SINK_HOOK.format(url="http://alert-sink/alerts"), 9, "notifications.receivers[0].url",
                 "write http://alert-sink:5001/alerts", id="sink-without-port"),
    pytest.param(VALID + "components:\n  alert_sink:\n    ports: {http: 5002}\n" + SINK_HOOK.format(url="http://alert-sink:5001/a"),
                 12, "notifications.receivers[0].url", "port 5002: write http://alert-sink:5002/a", id="sink-moved"),
    pytest.param(VALID + "components:\n  alert_sink:\n    image: 'Not An Image'\n", 9, "components.alert_sink.image",
                 "not an image reference", id="sink-image"),
    pytest.param(VALID.replace("project: demo", "project: demo\ntarget: local").replace("port: 9100", "port: 5001")
                 + SINK_HOOK.format(url="http://alert-sink:5001/a"),
                 7, "services[0].metrics.port", "port 5001 is used by alert_sink.http, service ws in the local target",
                 id="sink-port-taken-locally"),
]


@pytest.mark.parametrize("text, line, path, message", SERVICE_CASES)
def test_each_mistake_about_own_services_and_the_sink_is_located(text, line, path, message):
    issue = only_issue(text)
    assert (issue.line, issue.path) == (line, path), str(issue)
    assert message in issue.message, str(issue)


def test_a_literal_secret_in_a_service_environment_is_never_echoed():
    issue = only_issue(IMAGE_SERVICE + "    environment:\n      API_TOKEN: s3cr3t-value-123\n")
    assert "s3cr3t-value-123" not in str(issue)


def test_image_services_take_what_compose_needs_to_run_them():
    spec = load_spec(IMAGE_SERVICE + textwrap.indent(textwrap.dedent("""\
        command: [serve, --workers, 4, --debug, true]
        environment: {LOG_LEVEL: info, WORKERS: 4, VERBOSE: false, DB_PASSWORD: {env: API_DB_PASSWORD}, EMPTY: ''}
        resource_attributes: {deployment.environment.name: staging, build: 1234}
        port: 8080
        """), "    "), "obsgen.yaml")
    (api,) = spec.services
    assert api.image == "ghcr.io/acme/api:1.0"
    assert api.command == ["serve", "--workers", "4", "--debug", "true"]
    assert api.environment["WORKERS"] == "4" and api.environment["VERBOSE"] == "false"
    assert api.environment["DB_PASSWORD"].env == "API_DB_PASSWORD"
    assert api.resource_attributes == {"deployment.environment.name": "staging", "build": "1234"}


@pytest.mark.parametrize("image", [
    "redis", "redis:7.4-alpine", "ghcr.io/acme/api:1.0", "localhost:5000/team/app_name:v2",
    "registry.example.com:443/a/b/c", "acme/api@sha256:" + "a" * 64, "acme/api:1.0@sha256:" + "b" * 64,
])
def test_image_references_docker_accepts_are_accepted(image):
    spec = load_spec(IMAGE_SERVICE.replace("ghcr.io/acme/api:1.0", f"'{image}'"), "obsgen.yaml")
    assert spec.services[0].image == image


def test_the_default_spec_pages_the_bundled_alert_sink():
    from stack.spec import uses_alert_sink

    spec = load_default_spec()
    assert uses_alert_sink(spec)
    assert {r.url for r in spec.notifications.receivers} == {
        "http://alert-sink:5001/alerts/oncall", "http://alert-sink:5001/alerts/team"}
