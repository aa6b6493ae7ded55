"""alertmanager/alertmanager.yml, its notification templates, and route test cases.

Pure: ``render(spec, topology)`` returns

    alertmanager/alertmanager.yml       route tree, receivers, inhibitions, timings
    alertmanager/templates/obsgen.tmpl  titles and texts carrying summary, description, runbook link
    alertmanager/route-tests.yaml       [{labels: {...}, receivers: [...]}] reaching every route;
                                        ``obsgen check`` runs ``amtool config routes test
                                        --verify.receivers`` on each

Secrets never appear: every credential is a ``*_file`` field (``api_url_file``,
``routing_key_file``, ``url_file``, ``auth_password_file``) naming ``topology.secret_path(name)``,
with ``name`` from ``secret_name`` (``alertmanager_<receiver>_<field>``). ``secret_files(spec)``
lists them for the compose renderer (compose secrets) and ``obsgen up`` (files under secrets/).
Alertmanager reads these files when it notifies, so ``amtool check-config`` passes without them:
``obsgen check`` verifies that they exist.

Only ``matchers`` (never the deprecated ``match``/``match_re``). Receivers need Alertmanager 0.25+
(``*_file`` fields); a webhook ``url_file`` needs a newer release than Debian's 0.25 (compose
pins 0.34).
"""

from __future__ import annotations

import re
from importlib import resources

from stack.promtext import dump_yaml
from stack.spec import (
    EmailReceiver,
    Inhibition,
    PagerDutyReceiver,
    Route,
    SlackReceiver,
    Spec,
    WebhookReceiver,
)
from stack.topology import Topology
from stack.renderers.wiring import secret_name

PATH = "alertmanager/alertmanager.yml"
TEMPLATE_PATH = "alertmanager/templates/obsgen.tmpl"
ROUTE_TESTS_PATH = "alertmanager/route-tests.yaml"
TEMPLATES_GLOB = "templates/*.tmpl"  # relative to alertmanager.yml, as Alertmanager resolves it
NULL_RECEIVER = "null"
HEADER = "Alertmanager config rendered by obsgen from the project spec; edit the spec, not this file."
ROUTE_TESTS_HEADER = (
    "Where alerts must land: `obsgen check` runs, for each case,\n"
    "amtool config routes test --config.file=alertmanager/alertmanager.yml --verify.receivers=<receivers> <labels>"
)

# The templates of alerts/notifications.tmpl each receiver type fills its fields with.
TITLE = '{{ template "obsgen.title" . }}'
TEXT = '{{ template "obsgen.text" . }}'
RUNBOOK = '{{ template "obsgen.runbook" . }}'
EMAIL_HTML = '{{ template "obsgen.email.html" . }}'




# ---------------------------------------------------------------------------------------
# Receivers
# ---------------------------------------------------------------------------------------


def receiver_config(receiver, topology: Topology) -> dict:
    def secret(part: str) -> str:
        return topology.secret_path(secret_name(receiver.name, part))

    if isinstance(receiver, SlackReceiver):
        return {"name": receiver.name, "slack_configs": [{
            "api_url_file": secret("api_url"),
            "channel": receiver.channel,
            "send_resolved": receiver.send_resolved,
            "title": TITLE,
            "title_link": RUNBOOK,  # the title opens the first alert's runbook
            "text": TEXT,
        }]}
    if isinstance(receiver, PagerDutyReceiver):
        return {"name": receiver.name, "pagerduty_configs": [{
            "routing_key_file": secret("routing_key"),
            "send_resolved": receiver.send_resolved,
            "description": TITLE,
            "details": {"alerts": TEXT},
            "links": [{"href": RUNBOOK, "text": "Runbook"}],
        }]}
    if isinstance(receiver, WebhookReceiver):
        # A URL naming the bundled alert sink (http://alert-sink:5001/...) resolves per target.
        webhook: dict = ({"url": topology.webhook_url(receiver.url)} if receiver.url is not None
                         else {"url_file": secret("url")})
        webhook["send_resolved"] = receiver.send_resolved
        if receiver.max_alerts:
            webhook["max_alerts"] = receiver.max_alerts
        return {"name": receiver.name, "webhook_configs": [webhook]}
    if isinstance(receiver, EmailReceiver):
        email: dict = {"to": receiver.to, "from": receiver.sender, "smarthost": receiver.smarthost}
        if receiver.auth_username:
            email["auth_username"] = receiver.auth_username
        if receiver.auth_password is not None:
            email["auth_password_file"] = secret("auth_password")
        email.update({
            "require_tls": receiver.require_tls,
            "send_resolved": receiver.send_resolved,
            "headers": {"Subject": TITLE},
            "html": EMAIL_HTML,
            "text": TEXT,
        })
        return {"name": receiver.name, "email_configs": [email]}
    raise TypeError(f"unknown receiver type {type(receiver).__name__}")  # the spec's union is closed


# ---------------------------------------------------------------------------------------
# Route tree
# ---------------------------------------------------------------------------------------


def default_route(spec: Spec) -> Route:
    """Critical alerts to the first PagerDuty receiver; everything else to the first other receiver."""
    receivers = spec.notifications.receivers
    if not receivers:
        return Route(receiver=NULL_RECEIVER)
    pagers = [r for r in receivers if isinstance(r, PagerDutyReceiver)]
    others = [r for r in receivers if not isinstance(r, PagerDutyReceiver)]
    fallback = (others or receivers)[0]
    if pagers and pagers[0].name != fallback.name:
        return Route(receiver=fallback.name, routes=[Route(receiver=pagers[0].name, matchers=['severity="critical"'])])
    return Route(receiver=fallback.name)


def effective_route(spec: Spec) -> Route:
    return spec.notifications.route or default_route(spec)


def route_config(route: Route, spec: Spec, root: bool = False) -> dict:
    notifications = spec.notifications
    config: dict = {"receiver": route.receiver}
    if route.matchers:
        config["matchers"] = list(route.matchers)
    group_by = route.group_by if route.group_by is not None else (notifications.group_by if root else None)
    if group_by is not None:
        config["group_by"] = list(group_by)
    for name in ("group_wait", "group_interval", "repeat_interval"):
        value = getattr(route, name) or (getattr(notifications, name) if root else None)
        if value:
            config[name] = value
    if route.continue_:
        config["continue"] = True
    if route.routes:
        config["routes"] = [route_config(child, spec) for child in route.routes]
    return config


def inhibitions(spec: Spec) -> list[Inhibition]:
    if spec.notifications.inhibit is not None:
        return list(spec.notifications.inhibit)
    # A critical alert mutes the warning of the same alert on the same service (pack pairs, SLO burns).
    return [Inhibition(source_matchers=['severity="critical"'], target_matchers=['severity="warning"'],
                       equal=["alertname", "service"])]


def config(spec: Spec, topology: Topology) -> dict:
    receivers = [receiver_config(r, topology) for r in spec.notifications.receivers] or [{"name": NULL_RECEIVER}]
    return {
        "global": {"resolve_timeout": spec.notifications.resolve_timeout},
        "templates": [TEMPLATES_GLOB],
        "route": route_config(effective_route(spec), spec, root=True),
        "inhibit_rules": [
            {"source_matchers": list(i.source_matchers), "target_matchers": list(i.target_matchers), "equal": list(i.equal)}
            for i in inhibitions(spec)
        ],
        "receivers": receivers,
    }


# ---------------------------------------------------------------------------------------
# Route test cases: labels that reach every route, and where Alertmanager sends them
# ---------------------------------------------------------------------------------------

_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')


def parse_matcher(text: str) -> tuple[str, str, str]:
    match = _MATCHER.match(text)
    if match is None:
        raise ValueError(f"not a matcher: {text!r}")  # the spec model refuses these first
    value = match.group(3) if match.group(3) is not None else match.group(4)
    return match.group(1), match.group(2), re.sub(r"\\(.)", r"\1", value)


def _match_one(name: str, op: str, value: str, labels: dict[str, str]) -> bool:
    actual = labels.get(name, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    if op == "=~":
        return re.fullmatch(value, actual) is not None
    return re.fullmatch(value, actual) is None  # !~


def matches(route: Route, labels: dict[str, str]) -> bool:
    """Alertmanager's matcher semantics: a missing label is "", regexes are anchored."""
    return all(_match_one(*parse_matcher(m), labels) for m in route.matchers)


def resolve(route: Route, labels: dict[str, str]) -> list[Route]:
    """The routes an alert ends at, in order, as Alertmanager's dispatch.Route.Match finds them."""
    if not matches(route, labels):
        return []
    found: list[Route] = []
    for child in route.routes:
        hits = resolve(child, labels)
        found += hits
        if hits and not child.continue_:
            break
    return found or [route]


def _candidates(op: str, value: str) -> list[str]:
    if op == "=":
        return [value]
    if op == "!=":
        return ["", f"not-{value}"]
    if op == "!~":
        return ["", "obsgen-route-test"]
    pieces = [value, *value.split("|")]
    cleaned = [re.sub(r"\.\*|\.\+", "x", piece.strip("^$()")) for piece in pieces]
    return cleaned + ["x", "obsgen-route-test"]


def _labels_reaching(path: list[Route], base: dict[str, str]) -> dict[str, str] | None:
    """Labels that satisfy every route on ``path`` (root first), or None when none are found."""
    labels = dict(base)
    for route in path:
        for name, op, value in map(parse_matcher, route.matchers):
            if _match_one(name, op, value, labels):
                continue
            for candidate in _candidates(op, value):
                if _match_one(name, op, value, {**labels, name: candidate}):
                    labels = {**labels, name: candidate}
                    break
            else:
                return None
    if not all(matches(route, labels) for route in path):
        return None  # two matchers on one label that no single value satisfies
    return {k: v for k, v in labels.items() if v != ""}


def _walk(route: Route, path: list[Route]):
    yield [*path, route]
    for child in route.routes:
        yield from _walk(child, [*path, route])


def route_cases(spec: Spec) -> list[dict]:
    """A case per reachable route, plus one per severity for a typical alert."""
    root = effective_route(spec)
    service = spec.services[0].name
    base = {"alertname": "WebSocketHighErrorRate", "service": service}
    cases: list[dict] = []
    seen: set[tuple] = set()

    def add(labels: dict[str, str]) -> list[Route]:
        ends = resolve(root, labels)
        key = tuple(sorted(labels.items()))
        if key not in seen:
            seen.add(key)
            cases.append({"labels": dict(sorted(labels.items())), "receivers": [r.receiver for r in ends]})
        return ends

    for severity in ("critical", "warning", "info"):
        add({**base, "severity": severity})
    for path in _walk(root, []):
        target = path[-1]
        if any(target is end for case in cases for end in resolve(root, case["labels"])):
            continue  # already reached by an earlier case
        for extra in ({}, {"severity": "warning"}, {"severity": "info"}, {"severity": "critical"}):
            labels = _labels_reaching(path, {**base, **extra})
            if labels is not None and any(end is target for end in resolve(root, labels)):
                add(labels)
                break
    return cases


def notification_template() -> str:
    return resources.files("alerts").joinpath("notifications.tmpl").read_text(encoding="utf-8")


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    return {
        PATH: dump_yaml(config(spec, topology), header=HEADER),
        TEMPLATE_PATH: notification_template(),
        ROUTE_TESTS_PATH: dump_yaml(route_cases(spec), header=ROUTE_TESTS_HEADER),
    }
