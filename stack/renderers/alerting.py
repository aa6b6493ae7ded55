"""What the rules, SLO and runbooks renderers share: rules, unit-test cases and runbook pages as
plain data, where a runbook lives, and label-matcher helpers (pure).

It sits below those three renderers so that the import graph stays a ladder:

    alerting  <-  slo  <-  rules  <-  runbooks

``rules`` builds every rule (the pack's and custom ones itself, the SLOs' through ``slo``) with
its unit tests and runbook pages; ``runbooks`` renders the pages ``rules`` built. Nothing here
imports another renderer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stack.spec import CustomAlert, Spec, parse_duration
from stack.topology import Topology

if TYPE_CHECKING:  # the pack's types are only annotations here
    from alerts.pack import Knobs, PackAlert
    from stack.spec import SLO

TEST_INTERVAL = "1m"

# ---------------------------------------------------------------------------------------
# Runbook locations
# ---------------------------------------------------------------------------------------

RUNBOOKS_DIRECTORY = "runbooks"
GRAFANA_PUBLIC_PATH = "/public/runbooks"


def runbook_base_url(spec: Spec, topology: Topology) -> str:
    if spec.alerts.runbook_base_url:
        return spec.alerts.runbook_base_url.rstrip("/")
    if topology.local:  # `obsgen up` serves runbooks/ itself (local/processes.yaml: runbooks)
        return topology.url("runbooks", "http")
    return f"http://localhost:{topology.port('grafana', 'http')}{GRAFANA_PUBLIC_PATH}"


def runbook_url(spec: Spec, topology: Topology, alertname: str) -> str:
    return f"{runbook_base_url(spec, topology)}/{alertname}.md"


def runbook_path(alertname: str) -> str:
    """Where the page for ``alertname`` lives in the bundle."""
    return f"{RUNBOOKS_DIRECTORY}/{alertname}.md"


# ---------------------------------------------------------------------------------------
# Rules, test cases and runbook pages as plain data
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_: str | None
    labels: dict[str, str]
    annotations: dict[str, str]

    def to_dict(self) -> dict:
        rule: dict = {"alert": self.name, "expr": self.expr}
        if self.for_:
            rule["for"] = self.for_
        rule["labels"] = dict(sorted(self.labels.items()))
        rule["annotations"] = self.annotations
        return rule


@dataclass(frozen=True)
class ExpectedAlert:
    labels: dict[str, str]
    annotations: dict[str, str]

    def to_dict(self) -> dict:
        return {"exp_labels": dict(sorted(self.labels.items())), "exp_annotations": self.annotations}


@dataclass(frozen=True)
class AlertCase:
    """One promtool test group: input series, then what one alertname shows at eval_time.

    ``more_checks`` holds further (eval_time, alertname, expected alerts) checks, for cases that
    follow an alert through time (fires by one bound, resolves by another).
    """

    title: str
    input: dict[str, str]  # series -> values
    eval_time: str
    checks: tuple[tuple[str, tuple[ExpectedAlert, ...]], ...]  # (alertname, expected alerts)
    interval: str = TEST_INTERVAL
    promql_checks: tuple[dict, ...] = ()
    more_checks: tuple[tuple[str, str, tuple[ExpectedAlert, ...]], ...] = ()

    def to_dict(self) -> dict:
        group: dict = {
            "name": self.title,
            "interval": self.interval,
            "input_series": [{"series": s, "values": v} for s, v in sorted(self.input.items())],
        }
        alert_tests = [(self.eval_time, name, expected) for name, expected in self.checks] + list(self.more_checks)
        if alert_tests:
            group["alert_rule_test"] = [
                {"eval_time": when, "alertname": name, "exp_alerts": [e.to_dict() for e in expected]}
                for when, name, expected in alert_tests
            ]
        if self.promql_checks:
            group["promql_expr_test"] = list(self.promql_checks)
        return group


@dataclass(frozen=True)
class TestFile:
    """One prometheus/tests/<name>.yml: the rule files it loads and its cases.

    ``group_eval_order`` fixes the order in which promtool evaluates the groups at each step
    (promtool sorts unlisted groups in no stable order); ``evaluation_interval`` is how often it
    evaluates every group, whatever a group's own ``interval`` says.
    """

    __test__ = False  # not a pytest class

    rule_files: tuple[str, ...]
    cases: tuple[AlertCase, ...]
    evaluation_interval: str = TEST_INTERVAL
    group_eval_order: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunbookPage:
    """What a runbook template gets to say about one alert."""

    name: str
    source: str  # pack | slo_burn | slo_absent | custom
    summary: str
    description: str
    rules: tuple[AlertRule, ...]
    key: str = ""
    group: str = ""
    unit: str | None = None
    knobs: Knobs | None = None
    pack_alert: PackAlert | None = None
    slo: SLO | None = None
    custom: CustomAlert | None = None
    rate_window: str = ""
    metric_names: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


def minutes(duration: str) -> int:
    return math.ceil(parse_duration(duration) / 60)


# ---------------------------------------------------------------------------------------
# Label matchers
# ---------------------------------------------------------------------------------------


def parse_matchers(text: str) -> list[tuple[str, str, str]]:
    """(name, op, value) of a matcher list such as code!~"1000|1001"."""
    if not text:
        return []
    import promql_parser

    parsed = promql_parser.parse(f"x{{{text}}}")
    ops = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
    return [(m.name, ops[str(m.op).split(".")[-1]], m.value) for m in parsed.matchers.matchers]


def satisfies(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    """Whether a series with ``labels`` is selected by ``matchers`` (regexes anchored, as in PromQL)."""
    for name, op, value in matchers:
        actual = labels.get(name, "")
        if op == "=" and actual != value:
            return False
        if op == "!=" and actual == value:
            return False
        if op == "=~" and not re.fullmatch(value, actual):
            return False
        if op == "!~" and re.fullmatch(value, actual):
            return False
    return True
