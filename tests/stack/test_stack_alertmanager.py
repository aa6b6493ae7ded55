"""alertmanager.yml, notification templates and route cases: by value, then through amtool
(check-config, config routes test, template render) and a real Alertmanager."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stack.load import load_default_spec, load_spec_file
from stack.renderers import alertmanager
from stack.renderers.alertmanager import NULL_RECEIVER, resolve, route_cases
from stack.renderers.wiring import secret_files
from stack.spec import EnvSecret, FileSecret, Route, Spec
from stack.topology import Topology
from tests.conftest import free_port, require_binary, wait_for_port

SPECS = Path(__file__).parent / "specs"
SLACK = {"type": "slack", "name": "team-slack", "channel": "#alerts", "api_url": {"file": "secrets/slack"}}
PAGER = {"type": "pagerduty", "name": "pager", "routing_key": {"env": "PD_KEY"}}
HOOK = {"type": "webhook", "name": "hook", "url": "http://127.0.0.1:5001/alerts"}


def make_spec(**fields) -> Spec:
    return Spec.model_validate({"version": 1, "project": "demo", "services": [{"name": "api"}], **fields})


def rendered(spec: Spec) -> tuple[dict, str, list]:
    files = alertmanager.render(spec, Topology(spec))
    assert set(files) == {"alertmanager/alertmanager.yml", "alertmanager/templates/obsgen.tmpl",
                          "alertmanager/route-tests.yaml"}
    return (yaml.safe_load(files["alertmanager/alertmanager.yml"]), files["alertmanager/templates/obsgen.tmpl"],
            yaml.safe_load(files["alertmanager/route-tests.yaml"]))


def keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in keys(v)}
    return set()


# ---------------------------------------------------------------------------------------
# Receivers and secrets
# ---------------------------------------------------------------------------------------


def test_every_receiver_type_reads_its_secret_from_a_file():
    spec = load_spec_file(SPECS / "all-receivers.yaml")
    cfg, _, _ = rendered(spec)
    receivers = {r["name"]: r for r in cfg["receivers"]}
    slack = receivers["team-slack"]["slack_configs"][0]
    assert slack["api_url_file"] == "/run/secrets/alertmanager_team-slack_api_url"
    assert slack["channel"] == "#ws-alerts"
    assert receivers["pager"]["pagerduty_configs"][0]["routing_key_file"] == "/run/secrets/alertmanager_pager_routing_key"
    assert receivers["audit"]["webhook_configs"] == [
        {"url": "http://127.0.0.1:5001/audit", "send_resolved": True, "max_alerts": 20}]
    assert receivers["chatops"]["webhook_configs"] == [
        {"url_file": "/run/secrets/alertmanager_chatops_url", "send_resolved": False}]
    email = receivers["mail"]["email_configs"][0]
    assert email["auth_password_file"] == "/run/secrets/alertmanager_mail_auth_password"
    assert (email["to"], email["from"], email["smarthost"]) == (
        "oncall@example.com", "alertmanager@example.com", "smtp.example.com:587")
    inline = {"api_url", "routing_key", "service_key", "auth_password", "password"}
    assert not keys(cfg) & inline


def test_secret_files_names_every_secret_once_for_compose_and_obsgen_up():
    spec = load_spec_file(SPECS / "all-receivers.yaml")
    found = secret_files(spec)
    assert list(found) == [
        "alertmanager_chatops_url", "alertmanager_mail_auth_password",
        "alertmanager_pager_routing_key", "alertmanager_team-slack_api_url",
    ]
    assert found["alertmanager_pager_routing_key"] == EnvSecret(env="PAGERDUTY_ROUTING_KEY")
    assert isinstance(found["alertmanager_team-slack_api_url"], FileSecret)
    assert secret_files(make_spec(notifications={"receivers": [HOOK]})) == {}


def test_local_target_reads_secrets_under_the_bundle():
    spec = make_spec(target="local", notifications={"receivers": [SLACK]})
    cfg, _, _ = rendered(spec)
    assert cfg["receivers"][0]["slack_configs"][0]["api_url_file"] == "secrets/alertmanager_team-slack_api_url"


def test_notifications_carry_summary_description_and_runbook():
    cfg, template, _ = rendered(load_spec_file(SPECS / "all-receivers.yaml"))
    for name in ("obsgen.title", "obsgen.text", "obsgen.runbook", "obsgen.email.html"):
        assert f'define "{name}"' in template
    for field in ("summary", "description", "runbook_url"):
        assert f".Annotations.{field}" in template
    assert cfg["templates"] == ["templates/*.tmpl"]
    slack = cfg["receivers"][0]["slack_configs"][0]
    assert slack["text"] == '{{ template "obsgen.text" . }}'


# ---------------------------------------------------------------------------------------
# Routes and inhibitions
# ---------------------------------------------------------------------------------------


def test_default_route_pages_critical_and_sends_the_rest_to_the_first_other_receiver():
    cfg, _, cases = rendered(make_spec(notifications={"receivers": [PAGER, SLACK, HOOK]}))
    assert cfg["route"]["receiver"] == "team-slack"
    assert cfg["route"]["routes"] == [{"receiver": "pager", "matchers": ['severity="critical"']}]
    assert {c["labels"].get("severity"): c["receivers"] for c in cases} == {
        "critical": ["pager"], "warning": ["team-slack"], "info": ["team-slack"]}


def test_default_route_without_a_pager_sends_everything_to_the_first_receiver():
    cfg, _, _ = rendered(make_spec(notifications={"receivers": [HOOK, SLACK]}))
    assert cfg["route"]["receiver"] == "hook" and "routes" not in cfg["route"]
    cfg, _, _ = rendered(make_spec(notifications={"receivers": [PAGER]}))
    assert cfg["route"]["receiver"] == "pager" and "routes" not in cfg["route"]


def test_without_receivers_everything_goes_to_a_null_receiver():
    cfg, _, cases = rendered(make_spec())
    assert cfg["receivers"] == [{"name": NULL_RECEIVER}]
    assert cfg["route"]["receiver"] == NULL_RECEIVER
    assert {tuple(c["receivers"]) for c in cases} == {(NULL_RECEIVER,)}


def test_grouping_timings_and_the_default_inhibition():
    spec = make_spec(notifications={"receivers": [HOOK], "group_by": ["alertname"], "group_wait": "10s",
                                    "group_interval": "1m", "repeat_interval": "2h", "resolve_timeout": "3m"})
    cfg, _, _ = rendered(spec)
    assert cfg["global"] == {"resolve_timeout": "3m"}
    assert cfg["route"] == {"receiver": "hook", "group_by": ["alertname"], "group_wait": "10s",
                            "group_interval": "1m", "repeat_interval": "2h"}
    assert cfg["inhibit_rules"] == [{"source_matchers": ['severity="critical"'],
                                     "target_matchers": ['severity="warning"'], "equal": ["alertname", "service"]}]


def test_the_spec_route_tree_is_rendered_with_matchers_only():
    cfg, _, _ = rendered(load_spec_file(SPECS / "all-receivers.yaml"))
    assert not keys(cfg) & {"match", "match_re", "source_match", "target_match", "source_match_re", "target_match_re"}
    audit, pager, mail = cfg["route"]["routes"]
    assert audit == {"receiver": "audit", "matchers": ['severity=~".+"'], "continue": True}
    assert pager["group_wait"] == "10s" and pager["repeat_interval"] == "1h"
    assert pager["routes"] == [{"receiver": "chatops", "matchers": ['service="ws"', 'alertname=~"SLO.*"']}]
    assert cfg["route"]["group_by"] == ["alertname", "service"]  # the route's own, over notifications.group_by
    assert cfg["inhibit_rules"][0]["target_matchers"] == ['severity=~"warning|info"']


def test_resolve_follows_alertmanager_routing():
    tree = Route(receiver="root", routes=[
        Route(receiver="all", matchers=['severity=~".+"'], continue_=True),
        Route(receiver="crit", matchers=['severity="critical"'], routes=[
            Route(receiver="db", matchers=['team="db"']),
        ]),
        Route(receiver="never", matchers=['severity="critical"']),  # shadowed by crit
        Route(receiver="notdb", matchers=['team!="db"', 'severity=~"warn"']),
    ])

    def ends(**labels) -> list[str]:
        return [r.receiver for r in resolve(tree, labels)]

    assert ends(severity="critical", team="db") == ["all", "db"]
    assert ends(severity="critical") == ["all", "crit"]
    assert ends(severity="warning") == ["all"]  # regexes are anchored: "warn" is not "warning"
    assert ends(severity="warn") == ["all", "notdb"]
    assert ends() == ["root"]


def test_route_cases_reach_every_reachable_route():
    spec = load_spec_file(SPECS / "all-receivers.yaml")
    _, _, cases = rendered(spec)
    assert cases == [
        {"labels": {"alertname": "WebSocketHighErrorRate", "service": "ws", "severity": "critical"},
         "receivers": ["audit", "pager"]},
        {"labels": {"alertname": "WebSocketHighErrorRate", "service": "ws", "severity": "warning"},
         "receivers": ["audit"]},
        {"labels": {"alertname": "WebSocketHighErrorRate", "service": "ws", "severity": "info"},
         "receivers": ["audit", "mail"]},
        {"labels": {"alertname": "WebSocketHighErrorRate", "service": "ws"}, "receivers": ["team-slack"]},
        {"labels": {"alertname": "SLOx", "service": "ws", "severity": "critical"}, "receivers": ["audit", "chatops"]},
    ]
    reached = {receiver for case in cases for receiver in case["receivers"]}
    assert reached == {r.name for r in spec.notifications.receivers}


def test_default_spec_route_cases_cover_its_catch_all_root():
    cases = route_cases(load_default_spec())
    assert ["team"] in [c["receivers"] for c in cases if "severity" not in c["labels"]]


@pytest.mark.parametrize(
    ("notifications", "message"),
    [
        ({"receivers": [HOOK], "route": {"receiver": "hook", "matchers": ['severity="critical"']}}, "cannot have matchers"),
        ({"receivers": [HOOK], "route": {"receiver": "hook", "continue": True}}, "cannot have continue"),
        ({"receivers": [HOOK], "route": {"receiver": "nobody"}}, "not defined in notifications.receivers"),
        ({"receivers": [{**SLACK, "api_url": "https://hooks.slack.com/services/T0/B0/x"}]}, "never written inline"),
        ({"receivers": [{**HOOK, "url": "https://x.example.com/hook?token=abc"}]}, "carries credentials"),
    ],
)
def test_bad_notification_settings_are_refused(notifications, message):
    with pytest.raises(ValidationError) as error:
        make_spec(notifications=notifications)
    assert message in str(error.value)


def test_rendering_is_deterministic():
    spec = load_spec_file(SPECS / "all-receivers.yaml")
    assert alertmanager.render(spec, Topology(spec)) == alertmanager.render(spec, Topology(spec))


# ---------------------------------------------------------------------------------------
# The real tools
# ---------------------------------------------------------------------------------------


def amtool_version(tool: str) -> tuple[int, ...]:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    return tuple(int(x) for x in match.groups()) if match else (0,)


def write(spec: Spec, root: Path) -> Path:
    for path, text in alertmanager.render(spec, Topology(spec)).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return root


def amtool(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("amtool"), *args], cwd=root, capture_output=True, text=True, timeout=60)


AMTOOL_SPECS = {
    "default": load_default_spec,
    "no-receivers": lambda: make_spec(),
    "default-route": lambda: make_spec(notifications={"receivers": [PAGER, SLACK, HOOK]}),
    "local": lambda: make_spec(target="local", notifications={"receivers": [SLACK, PAGER]}),
    "all-receivers": lambda: load_spec_file(SPECS / "all-receivers.yaml"),
}


@pytest.mark.parametrize("case", sorted(AMTOOL_SPECS))
def test_amtool_accepts_the_config_and_every_route_case(case, tmp_path):
    tool = require_binary("amtool")
    spec = AMTOOL_SPECS[case]()
    root = write(spec, tmp_path)
    cfg = yaml.safe_load((root / "alertmanager/alertmanager.yml").read_text())
    webhook_url_file = any("url_file" in w for r in cfg["receivers"] for w in r.get("webhook_configs", []))
    if webhook_url_file and amtool_version(tool) < (0, 26):  # 0.25 refuses it, 0.26+ accepts it
        pytest.skip(f"amtool {'.'.join(map(str, amtool_version(tool)))} does not know the webhook url_file field "
                    "(Debian's 0.25); compose pins Alertmanager 0.35: scripts/install-tools.sh builds amtool 0.35 to check it")
    checked = amtool(root, "check-config", "alertmanager/alertmanager.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 templates" in checked.stdout
    cases = yaml.safe_load((root / "alertmanager/route-tests.yaml").read_text())
    assert cases
    for item in cases:
        result = amtool(root, "config", "routes", "test", "--config.file=alertmanager/alertmanager.yml",
                        f"--verify.receivers={','.join(item['receivers'])}",
                        *(f"{k}={v}" for k, v in item["labels"].items()))
        assert result.returncode == 0, f"{item}: {result.stdout}{result.stderr}"


def test_amtool_route_verification_fails_on_a_wrong_receiver(tmp_path):
    root = write(make_spec(notifications={"receivers": [PAGER, SLACK]}), tmp_path)
    result = amtool(root, "config", "routes", "test", "--config.file=alertmanager/alertmanager.yml",
                    "--verify.receivers=team-slack", "severity=critical")
    assert result.returncode != 0


def test_amtool_renders_the_notification_with_summary_description_and_runbook(tmp_path):
    root = write(load_default_spec(), tmp_path)
    data = {
        "receiver": "team", "status": "firing", "externalURL": "http://alertmanager:9093",
        "groupLabels": {"alertname": "WebSocketHighErrorRate"},
        "commonLabels": {"alertname": "WebSocketHighErrorRate", "service": "ws", "severity": "critical"},
        "commonAnnotations": {},
        "alerts": [{
            "status": "firing", "fingerprint": "1", "generatorURL": "http://prometheus:9090/graph",
            "startsAt": "2024-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "labels": {"alertname": "WebSocketHighErrorRate", "service": "ws", "severity": "critical"},
            "annotations": {"summary": "A WebSocket service fails to handle many of the messages it receives.",
                            "description": "Errors on ws amount to 7% of the messages it received.",
                            "runbook_url": "http://localhost:3000/public/runbooks/WebSocketHighErrorRate.md"},
        }],
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    result = amtool(root, "template", "render", "--template.glob=alertmanager/templates/*.tmpl",
                    f"--template.data={tmp_path / 'data.json'}",
                    '--template.text={{ template "obsgen.title" . }}\n{{ template "obsgen.text" . }}\n'
                    '{{ template "obsgen.email.html" . }}')
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("[FIRING:1] WebSocketHighErrorRate on ws [critical]")
    assert "A WebSocket service fails to handle many of the messages it receives." in out
    assert "Errors on ws amount to 7% of the messages it received." in out
    assert "Runbook: http://localhost:3000/public/runbooks/WebSocketHighErrorRate.md" in out
    assert '<a href="http://localhost:3000/public/runbooks/WebSocketHighErrorRate.md">Runbook</a>' in out


RUNBOOK_URL = "http://127.0.0.1:3001/WebSocketHighErrorRate.md"
ERROR_ALERT = {
    "labels": {"alertname": "WebSocketHighErrorRate", "service": "ws", "severity": "critical"},
    "annotations": {"summary": "A WebSocket service fails to handle many of the messages it receives.",
                    "description": "Errors on ws amount to 7% of the messages it received.",
                    "runbook_url": RUNBOOK_URL},
}


def notification_data(status: str) -> dict:
    """Alertmanager's template data (template.Data) for one group of WebSocketHighErrorRate:
    firing = one alert firing and a second one (another instance) already resolved."""
    def alert(state: str, instance: str) -> dict:
        return {"status": state, "fingerprint": instance, "generatorURL": "http://prometheus:9090/graph",
                "startsAt": "2026-12-06T10:00:00Z",
                "endsAt": "2026-12-06T10:12:00Z" if state == "resolved" else "0001-01-01T00:00:00Z",
                "labels": {**ERROR_ALERT["labels"], "instance": instance},
                "annotations": dict(ERROR_ALERT["annotations"])}
    alerts = ([alert("firing", "ws-1:8765"), alert("resolved", "ws-2:8765")] if status == "firing"
              else [alert("resolved", "ws-1:8765")])
    return {"receiver": "team", "status": status, "externalURL": "http://alertmanager:9093",
            "groupLabels": {"alertname": "WebSocketHighErrorRate", "service": "ws"},
            "commonLabels": ERROR_ALERT["labels"], "commonAnnotations": {}, "alerts": alerts}


def _alert_text(instance: str) -> str:
    return (f"- {ERROR_ALERT['annotations']['summary']}\n{ERROR_ALERT['annotations']['description']}\n"
            f"Runbook: {RUNBOOK_URL}\n"
            f"Labels: alertname=WebSocketHighErrorRate instance={instance} service=ws severity=critical\n")


EXPECTED_NOTIFICATION = {
    "firing": {
        "title": "[FIRING:1] WebSocketHighErrorRate on ws [critical]",
        "text": "Firing:\n" + _alert_text("ws-1:8765") + "Resolved:\n" + _alert_text("ws-2:8765"),
    },
    "resolved": {
        "title": "[RESOLVED] WebSocketHighErrorRate on ws [critical]",
        "text": "Resolved:\n" + _alert_text("ws-1:8765"),
    },
}


def templated_fields(receiver: dict) -> dict[str, str]:
    """Every templated string of a receiver config, by its key path (``slack_configs.title``)."""
    found: dict[str, str] = {}

    def walk(value, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            for item in value:
                walk(item, path)
        elif isinstance(value, str) and "{{" in value:
            found[path] = value

    walk({k: v for k, v in receiver.items() if k != "name"}, "")
    return found


@pytest.mark.parametrize("status", ["firing", "resolved"])
def test_slack_email_and_pagerduty_fields_render_through_amtool(tmp_path, status):
    """Each templated field of the rendered Slack, PagerDuty and email receivers, rendered by the
    pinned amtool from the bundle's template file, on a firing and on a resolved group."""
    spec = load_spec_file(SPECS / "all-receivers.yaml")
    root = write(spec, tmp_path)
    cfg = yaml.safe_load((root / "alertmanager/alertmanager.yml").read_text())
    (tmp_path / "data.json").write_text(json.dumps(notification_data(status)))
    receivers = {r["name"]: r for r in cfg["receivers"]}

    def render(field: str) -> str:
        html = field.endswith(".html")
        result = amtool(root, "template", "render", "--template.glob=alertmanager/templates/*.tmpl",
                        f"--template.data={tmp_path / 'data.json'}", f"--template.type={'html' if html else 'text'}",
                        f"--template.text={fields[field]}")
        assert result.returncode == 0, (field, result.stdout + result.stderr)
        return result.stdout.removesuffix("\n")

    expected = EXPECTED_NOTIFICATION[status]
    title, text = expected["title"], expected["text"].removesuffix("\n")
    fields = templated_fields(receivers["team-slack"])
    assert {name: render(name) for name in fields} == {
        "slack_configs.title": title, "slack_configs.title_link": RUNBOOK_URL, "slack_configs.text": text}
    fields = templated_fields(receivers["pager"])
    assert {name: render(name) for name in fields} == {
        "pagerduty_configs.description": title, "pagerduty_configs.details.alerts": text,
        "pagerduty_configs.links.href": RUNBOOK_URL}
    fields = templated_fields(receivers["mail"])
    rendered_mail = {name: render(name) for name in fields}
    assert set(rendered_mail) == {"email_configs.headers.Subject", "email_configs.html", "email_configs.text"}
    assert rendered_mail["email_configs.headers.Subject"] == title
    assert rendered_mail["email_configs.text"] == text
    html = rendered_mail["email_configs.html"]
    assert html.startswith(f"<h2>{title}</h2>")
    states = ["FIRING", "RESOLVED"] if status == "firing" else ["RESOLVED"]
    assert re.findall(r"<h3>(\w+): ", html) == states
    assert html.count(f'<p><a href="{RUNBOOK_URL}">Runbook</a></p>') == len(states)
    assert "<li>severity: critical</li>" in html and "7% of the messages" in html


def test_webhook_receivers_use_no_template_and_the_template_header_says_so():
    cfg, template, _ = rendered(load_spec_file(SPECS / "all-receivers.yaml"))
    hooks = [r for r in cfg["receivers"] if "webhook_configs" in r]
    assert hooks and all(templated_fields(r) == {} for r in hooks)
    header = template.split("*/}}")[0]
    for line in ("slack      title = obsgen.title, title_link = obsgen.runbook, text = obsgen.text",
                 "email      Subject = obsgen.title, html = obsgen.email.html, text = obsgen.text",
                 "Webhook receivers use none of them"):
        assert line in header
    for name in set(re.findall(r"obsgen\.[a-z.]+", header)) - {"obsgen.tmpl"}:
        assert f'define "{name}"' in template, f"the header names {name}, which the file does not define"


@pytest.mark.e2e
def test_alertmanager_loads_the_config_from_the_bundle_root(tmp_path, processes):
    binary = require_binary("prometheus-alertmanager") if not _which("alertmanager") else _which("alertmanager")
    root = write(make_spec(target="local", notifications={"receivers": [HOOK]}), tmp_path)
    port = free_port()
    proc = processes.start([
        binary, "--config.file=alertmanager/alertmanager.yml", f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.path={tmp_path / 'data'}", "--cluster.listen-address=",
    ], cwd=root)
    wait_for_port(port, timeout=30, proc=proc)
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline and status is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/status", timeout=2) as response:
                status = json.load(response)
        except OSError:
            time.sleep(0.2)
    assert status is not None
    original = status["config"]["original"]
    assert "receiver: hook" in original and "templates/*.tmpl" in original


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)
