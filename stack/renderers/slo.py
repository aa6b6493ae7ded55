"""SLOs -> recording rules, multi-window multi-burn-rate alerts and their promtool tests (pure).

For an SLO named ``x`` (windows, factors and intervals from alerts/slo.yaml; series names in
stack/slos.py):

    group slo-x-recording (the spec's evaluation interval)
        slo:sli_errors:rate5m, slo:sli_total:rate5m   bad and all events per second over 5m, from
                                                       the service's own series (the only rules
                                                       that read them)
        slo:sli_error:ratio_rate<w>                    every window, a ratio of sums: summed 5m
                                                       rates for the short windows, summed hourly
                                                       sums for the long ones and the SLO window
        slo:objective:ratio, slo:error_budget:ratio, slo:error_budget_remaining:ratio,
        slo:error_budget_consumed:ratio, slo:error_budget_exhaustion:seconds
    group slo-x-hourly (interval: 1h)
        slo:sli_errors:rate5m_sum1h, slo:sli_total:rate5m_sum1h   the last hour's 5m rates, summed
    <X>ErrorBudgetBurn   severity=page_severity, slo_alert=page:   1h&5m or 6h&30m burn too fast
                         severity=ticket_severity, slo_alert=ticket: 1d&2h or 3d&6h burn too fast
    <X>SLIAbsent         the SLI has no value (no series, or the queries select nothing)

Zero traffic: a window with no events records 0, not NaN (the division only happens where the
total is above zero), so burn-rate alerts stay silent; a missing metric leaves the ratios absent,
and <X>SLIAbsent fires. The same alertname at two severities lets the default inhibition mute
the ticket while the page fires.

Latency SLIs read any classic histogram: requests above the bucket ``le=<threshold>`` are bad.
The ``le`` matcher accepts both spellings of the bound (see promtext.le_matcher), so the rule
selects the same bucket on Prometheus 2.x and 3.x; a bound the histogram does not have leaves
the SLI absent (never perfect).

Files, one set per SLO (a test then loads only the rules it needs, so test time grows with the
number of SLOs, not with its square):

    prometheus/rules/slo-x-recording.yml     the two recording groups
    prometheus/rules/slo-x-alerts.yml        the alerts
    prometheus/tests/slo-x-alerts.yml        each alert condition on recorded ratios fed in
                                             directly: exact labels and annotations, each
                                             condition alone, its long window alone
    prometheus/tests/slo-x-recording.yml     latency SLIs: zero at zero traffic, exact under load
                                             in both le spellings, absent without the bucket
    prometheus/tests/slo-x-detection.yml     from counters (series built to satisfy the SLI's own
    prometheus/tests/slo-x-detection-long.yml  queries), every 1m, and every 5m for what takes
                                             hours or days: how soon a 100 %-error outage and
                                             steady burns page or ticket (and not sooner), that
                                             the page resolves after the errors stop, that 0.9x
                                             never fires, that the budget is exact under uneven
                                             traffic. Every bound comes from stack.slos.Detection.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Callable

from alerts.pack import BurnAlert, load_slo_settings, slo_alert_names
from exporter.catalog import BY_NAME as CATALOG_BY_NAME
from stack import slos
from stack.renderers.alerting import (
    AlertCase,
    AlertRule,
    ExpectedAlert,
    RunbookPage,
    TestFile,
    minutes,
    parse_matchers,
    runbook_url,
    satisfies,
)
from stack.promtext import expand_template, go_float, le_matcher, number, openmetrics_float, series
from stack.slos import (
    BUDGET,
    BUDGET_CONSUMED,
    BUDGET_REMAINING,
    ERROR_RATIO,
    OBJECTIVE,
    TIME_TO_EXHAUSTION,
    budget,
    burn_factor,
    decimal_text,
    percent,
    rate_record,
    record,
    slo_selector,
    sum_record,
    windows_for,
)
from stack.spec import SLO, Spec, parse_duration
from stack.topology import Topology
from stack.renderers.wiring import SERVICE_LABEL

# The promtool cadences of the detection tests: input series every minute (the scrapes),
# every group evaluated every minute, or every 5 minutes for the cases that take days.
DETECTION_CADENCE = slos.Cadence(scrape=60, evaluation=60)
LONG_CADENCE = slos.Cadence(scrape=60, evaluation=300)
# Events per minute in the tests: 100 per second.
TEST_TRAFFIC = 6000.0


# pint (the rule linter) checks that these rules break on purpose, each for a reason:
PINT_NOTES = """\
pint file/disable group/interval
  The hourly group writes a sample an hour: its series are read only through sum_over_time over
  whole hours, never by an instant selector (which would find nothing 5 minutes after a write).
pint file/disable rule/dependency
  By design the hourly group sums the 5m rates the first group records, and the first group sums
  the hourly sums: over ranges of an hour and more, one evaluation of lag changes nothing. Every
  SLO records the same series names, told apart by the slo label, which this check ignores."""


def group_names(slo: SLO) -> tuple[str, str, str]:
    """(recording, hourly sums, alerts) group names of an SLO."""
    return f"slo-{slo.name}-recording", f"slo-{slo.name}-hourly", f"slo-{slo.name}-alerts"


# ---------------------------------------------------------------------------------------
# Recording rules
# ---------------------------------------------------------------------------------------


def service_rates(slo: SLO, window: str) -> tuple[str, str]:
    """PromQL for the SLO's (bad, all) events per second over ``window``, from the service's series.

    Bad is 0 where the error query selects nothing but the total query does (a labelled counter
    that never counted); without the total's series every ratio is absent. For a latency SLI both
    are absent when the threshold bucket is missing, so a wrong bound leaves the SLI absent.
    """
    if slo.events is not None:
        bad = slo.events.error_query.replace("$window", window)
        total = slo.events.total_query.replace("$window", window)
        return f"(\n  {bad}\n)\nor\n0 * (\n  {total}\n)", total
    latency = slo.latency
    count = f"{latency.metric}_count{{{latency.selector}}}" if latency.selector else f"{latency.metric}_count"
    good_matchers = ",".join(m for m in (latency.selector, le_matcher(latency.threshold_seconds)) if m)
    total = f"sum(rate({count}[{window}]))"
    good = f"sum(rate({latency.metric}_bucket{{{good_matchers}}}[{window}]))"
    # The bucket never counts more than _count; clamp_min keeps rate extrapolation from going below 0.
    # Both are absent without the threshold bucket, so the ratios are too (never 0 for "perfect").
    return f"clamp_min(\n  {total}\n  -\n  {good},\n  0\n)", f"{total}\nand\n{good}"


def sli_error_ratio(slo: SLO, window: str) -> str:
    """PromQL for the SLO's bad/all ratio over ``window`` straight from the service's series.

    What the recorded 5m ratio equals; the runbooks show it to read the SLI without the rules.
    """
    bad, total = service_rates(slo, window)
    return f"(\n{bad}\n)\n/\n(({total}) > 0)\nor\n0 * ({total})"


def _ratio_of(bad: str, total: str) -> str:
    # Divide only where there was traffic; 0 where there was none; absent without series.
    return f"{bad}\n/\n({total} > 0)\nor\n0 * {total}"


def window_ratio(slo: SLO, plan: slos.Plan, window: slos.Window) -> str:
    """PromQL for the recorded ratio over ``window``: always bad events / all events over it."""
    selector = slo_selector(slo)
    if window.source == "service":
        return _ratio_of(f"{rate_record('errors')}{selector}", f"{rate_record('total')}{selector}")
    if window.source == "rates":
        return _ratio_of(f"sum_over_time({rate_record('errors')}{selector}[{window.duration}])",
                         f"sum_over_time({rate_record('total')}{selector}[{window.duration}])")
    ratio = _ratio_of(f"sum_over_time({sum_record('errors')}{selector}[{window.duration}])",
                      f"sum_over_time({sum_record('total')}{selector}[{window.duration}])")
    # Before the first hourly sum exists (the first hour after the rules load) all the recorded
    # history fits in one sum interval: its ratio is the whole window's.
    return f"(\n{_indent(ratio)}\n)\nor\n{_fallback(slo, plan)}"


def _fallback(slo: SLO, plan: slos.Plan) -> str:
    interval = parse_duration(plan.sum_interval)
    recorded = next((w for w in plan.windows if w.seconds == interval and w.source == "rates"), None)
    if recorded is not None:
        return f"{record(recorded.duration)}{slo_selector(slo)}"
    selector = slo_selector(slo)
    inline = _ratio_of(f"sum_over_time({rate_record('errors')}{selector}[{plan.sum_interval}])",
                       f"sum_over_time({rate_record('total')}{selector}[{plan.sum_interval}])")
    return f"(\n{_indent(inline)}\n)"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def exhaustion_window() -> str:
    """The burn that time-to-exhaustion assumes continues: the page's shortest long window (1h)."""
    return min((c.long for c in load_slo_settings().page.conditions), key=parse_duration)


def recording_groups(slo: SLO, plan: slos.Plan) -> list[dict]:
    labels = {"slo": slo.name}
    selector = slo_selector(slo)
    spent = decimal_text(budget(slo))
    bad, total = service_rates(slo, plan.windows[0].duration)
    rules = [
        {"record": rate_record("errors"), "expr": bad, "labels": labels},
        {"record": rate_record("total"), "expr": total, "labels": labels},
    ]
    rules += [{"record": record(w.duration), "expr": window_ratio(slo, plan, w), "labels": labels}
              for w in plan.windows]
    whole = record(plan.slo_window.duration) + selector
    burn = f"{record(exhaustion_window())}{selector} / {spent}"
    rules += [
        {"record": OBJECTIVE, "expr": f"vector({decimal_text(Decimal(str(slo.objective)) / 100)})", "labels": labels},
        {"record": BUDGET, "expr": f"vector({spent})", "labels": labels},
        {"record": BUDGET_REMAINING, "expr": f"1 - {whole} / {spent}", "labels": labels},
        {"record": BUDGET_CONSUMED, "expr": f"{whole} / {spent}", "labels": labels},
        {
            "record": TIME_TO_EXHAUSTION,
            # Spent: 0 (clamp_min turns what is left, <= 0, into 0). Otherwise what is left, at the
            # current burn: +Inf while nothing burns (a positive number over 0).
            "expr": (
                f"clamp_min({BUDGET_REMAINING}{selector} <= 0, 0)\n"
                "or\n"
                f"{BUDGET_REMAINING}{selector} * {int(plan.slo_window.seconds)} / ({burn})"
            ),
            "labels": labels,
        },
    ]
    fast, hourly, _ = group_names(slo)
    groups = [{"name": fast, "rules": rules}]
    if any(w.source == "sums" for w in plan.windows):
        sums = [
            {"record": sum_record(kind), "expr": f"sum_over_time({rate_record(kind)}{selector}[{plan.sum_interval}])",
             "labels": labels}
            for kind in ("errors", "total")
        ]
        groups.append({"name": hourly, "interval": plan.sum_interval, "rules": sums})
    return groups


# ---------------------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------------------


def burn_expr(slo: SLO, burn: BurnAlert) -> str:
    selector, spent = slo_selector(slo), decimal_text(budget(slo))
    branches = []
    for condition in burn.conditions:
        factor = decimal_text(burn_factor(slo, condition.long, condition.budget_percent))
        branches.append(
            "(\n"
            f"  {record(condition.long)}{selector} / {spent} > {factor}\n"
            "  and\n"
            f"  {record(condition.short)}{selector} / {spent} > {factor}\n"
            ")"
        )
    return "\nor\n".join(branches)


def _windows_text(burn: BurnAlert) -> str:
    return " or ".join(f"{c.long} and {c.short}" for c in burn.conditions)


def burn_rule(spec: Spec, topology: Topology, slo: SLO, burn: BurnAlert) -> AlertRule:
    name, _ = slo_alert_names(slo.name)
    severity = slo.page_severity if burn.name == "page" else slo.ticket_severity
    pace = "fast enough to page" if burn.name == "page" else "fast enough to need attention today"
    return AlertRule(
        name=name,
        expr=burn_expr(slo, burn),
        for_=burn.for_,
        labels={"severity": severity, "slo": slo.name, "slo_alert": burn.name},
        annotations={
            "summary": f"The {slo.name} SLO is burning its error budget {pace}.",
            "description": (
                f"The {{{{ $labels.slo }}}} SLO ({percent(slo)} over {slo.window}) is spending its error budget "
                f"{{{{ $value | humanize }}}} times faster than sustainable, measured over {_windows_text(burn)}."
            ),
            "runbook_url": runbook_url(spec, topology, name),
        },
    )


def absent_rule(spec: Spec, topology: Topology, slo: SLO) -> AlertRule:
    _, name = slo_alert_names(slo.name)
    settings = load_slo_settings()
    return AlertRule(
        name=name,
        expr=f"absent({record(slos.base_window())}{slo_selector(slo)})",
        for_=settings.absent_for,
        labels={"severity": slo.ticket_severity, "slo": slo.name},
        annotations={
            "summary": f"The {slo.name} SLO has no data, so its burn-rate alerts cannot fire.",
            "description": (
                "The SLI of the {{ $labels.slo }} SLO has had no value for "
                f"{settings.absent_for}: its metrics are missing or its queries select nothing."
            ),
            "runbook_url": runbook_url(spec, topology, name),
        },
    )


# ---------------------------------------------------------------------------------------
# Unit tests of the alert expressions, on recorded ratios fed in directly
# ---------------------------------------------------------------------------------------


def _round3(value: Decimal) -> Decimal:
    return Decimal(f"{value:.3g}")


def alert_cases(slo: SLO, rules: list[AlertRule]) -> list[AlertCase]:
    settings = load_slo_settings()
    burn_name, absent_name = slo_alert_names(slo.name)
    page_rule, ticket_rule, absent = rules
    page_factors = [burn_factor(slo, c.long, c.budget_percent) for c in settings.page.conditions]
    ticket_factors = [burn_factor(slo, c.long, c.budget_percent) for c in settings.ticket.conditions]
    look = max(minutes(settings.page.for_), minutes(settings.ticket.for_), minutes(settings.absent_for)) + 5
    eval_time, samples = f"{look}m", look + 5
    windows = slos.sorted_windows()

    def data(burn: Decimal, only: tuple[str, ...] | None = None) -> dict[str, str]:
        """Every window's recorded ratio: ``burn`` times the budget (only in ``only``, else 0)."""
        ratio = decimal_text(burn * budget(slo))
        return {
            series(record(w), {"slo": slo.name}): f"{ratio if only is None or w in only else 0}x{samples}"
            for w in windows
        }

    def expected(rule: AlertRule, burn: Decimal) -> ExpectedAlert:
        labels = dict(rule.labels)
        annotations = dict(rule.annotations)
        annotations["description"] = expand_template(annotations["description"], labels, float(burn))
        return ExpectedAlert(labels, annotations)

    cases = []
    # Each condition on its own: both of its windows burning fire the alert; the long window alone
    # (the burn has stopped, the short window recovered) does not.
    for rule, burn_alert in ((page_rule, settings.page), (ticket_rule, settings.ticket)):
        for condition in burn_alert.conditions:
            rate = _round3(burn_factor(slo, condition.long, condition.budget_percent) * Decimal("1.25"))
            windows_pair = (condition.long, condition.short)
            cases.append(AlertCase(
                f"{burn_name} ({burn_alert.name}) fires when {condition.long} and {condition.short} burn at "
                f"{decimal_text(rate)}x", data(rate, windows_pair), eval_time,
                ((burn_name, (expected(rule, rate),)),)))
            cases.append(AlertCase(
                f"{burn_name} ({burn_alert.name}) stays silent when only {condition.long} burns at "
                f"{decimal_text(rate)}x", data(rate, (condition.long,)), eval_time, ((burn_name, ()),)))

    fast = _round3(max(page_factors) * Decimal("1.25"))
    low_page = min(page_factors)
    high_ticket = max(ticket_factors) if max(ticket_factors) < low_page else min(ticket_factors)
    steady = _round3((high_ticket + low_page) / 2)
    if not (min(ticket_factors) < steady < low_page):
        steady = (high_ticket + low_page) / 2
    slow = _round3(min(ticket_factors) / 2)
    absent_labels = dict(absent.labels)
    absent_annotations = dict(absent.annotations)
    absent_annotations["description"] = expand_template(absent_annotations["description"], absent_labels, 1.0)
    absent_expected = ExpectedAlert(absent_labels, absent_annotations)
    return cases + [
        AlertCase(f"{burn_name} pages and tickets at {decimal_text(fast)}x burn on every window", data(fast),
                  eval_time,
                  ((burn_name, (expected(page_rule, fast), expected(ticket_rule, fast))), (absent_name, ()))),
        AlertCase(f"{burn_name} tickets but does not page at {decimal_text(steady)}x burn", data(steady), eval_time,
                  ((burn_name, (expected(ticket_rule, steady),)),)),
        AlertCase(f"{burn_name} stays silent at {decimal_text(slow)}x burn", data(slow), eval_time,
                  ((burn_name, ()),)),
        AlertCase(f"{slo.name}: nothing fires at zero traffic", data(Decimal(0)), eval_time,
                  ((burn_name, ()), (absent_name, ()))),
        AlertCase(f"{absent_name} fires when the SLI has no data", {}, eval_time,
                  ((absent_name, (absent_expected,)), (burn_name, ()))),
    ]


# ---------------------------------------------------------------------------------------
# Counters that make an SLI read a chosen error ratio
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """``seconds`` of traffic: ``total`` events per minute, ``ratio`` of them bad."""

    seconds: float
    total: float
    ratio: float


def _float_text(value: float) -> str:
    """A float as the shortest text that parses back to it exactly (Python's repr, Go's ParseFloat)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def counter_values(per_minute: list[tuple[float, float]]) -> str:
    """promtool's expanding notation for a counter: (minutes, increase per minute) segments, from 0.

    promtool expands ``a+bxn`` by adding b n times, in float64. Each segment starts from where that
    arithmetic left the last one (not from the exact sum, which can be a hair lower: rate() would
    read the dip as a counter reset and count the whole counter again).
    """
    parts, value, first = [], 0.0, True
    for count, step in per_minute:
        count, step = int(round(count)), float(f"{step:.12g}")  # 6000 * 0.001 * 18 is 108, not 108.00000000000001
        if count <= 0:
            continue
        if first:
            start, repeats, first = 0.0, count, False
        else:
            start, repeats = value + step, count - 1
        parts.append(f"{_float_text(start)}+{_float_text(step)}x{repeats}" if repeats else _float_text(start))
        value = _after(start, step, repeats)
    return " ".join(parts) if parts else "0"


@lru_cache(maxsize=1024)
def _after(start: float, step: float, repeats: int) -> float:
    """``start`` plus ``step`` added ``repeats`` times, one at a time in float64, as promtool does."""
    value = start
    for _ in range(repeats):
        value += step
    return value


@dataclass(frozen=True)
class _Selector:
    labels_matchers: tuple[tuple[str, str, str], ...]  # __name__ included


@dataclass(frozen=True)
class _Query:
    terms: tuple[_Selector, ...]
    function: str  # rate | increase


def _query_terms(text: str) -> _Query | None:
    """The selectors of a query that is a sum of rate()/increase() of plain selectors, else None.

    That shape (sum(rate(x[$window])), and sums of such) is what the tests can drive: its value
    is the sum of the rates of the series each selector selects.
    """
    import promql_parser

    try:
        expr = promql_parser.parse(text)
    except Exception:  # noqa: BLE001 - the spec validated it; anything odd is simply not driven
        return None
    functions: set[str] = set()
    terms: list[_Selector] = []

    def inner(node) -> bool:
        while isinstance(node, promql_parser.ParenExpr):
            node = node.expr
        if not isinstance(node, promql_parser.Call) or node.func.name not in ("rate", "increase"):
            return False
        argument = node.args[0]
        if not isinstance(argument, promql_parser.MatrixSelector):
            return False
        selector = argument.vector_selector
        if selector.offset is not None or selector.at is not None or selector.matchers.or_matchers:
            return False
        ops = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
        matchers = [(m.name, ops[str(m.op).split(".")[-1]], m.value) for m in selector.matchers.matchers]
        if selector.name:
            matchers.append(("__name__", "=", selector.name))
        functions.add(node.func.name)
        terms.append(_Selector(tuple(matchers)))
        return True

    def outer(node) -> bool:
        while isinstance(node, promql_parser.ParenExpr):
            node = node.expr
        if isinstance(node, promql_parser.BinaryExpr):
            return str(node.op) == "+" and node.modifier is None and outer(node.lhs) and outer(node.rhs)
        if isinstance(node, promql_parser.AggregateExpr):
            grouped = node.modifier is not None and (str(node.modifier.type).endswith("Without") or node.modifier.labels)
            return str(node.op) == "sum" and not grouped and inner(node.expr)
        return False

    if not outer(expr) or len(functions) != 1:
        return None
    return _Query(tuple(terms), functions.pop())


_FILLERS = ("", "x", "other", "0", "200", "500", "internal")


def _candidates(name: str, selectors: list[_Selector]) -> list[str]:
    values: list[str] = []
    for selector in selectors:
        for label, op, value in selector.labels_matchers:
            if label != name:
                continue
            if op in ("=", "!="):
                values.append(value)
            else:
                values += [piece for piece in value.split("|") if re.fullmatch(r"[\w.:/-]*", piece)]
    values += [v for v in _FILLERS if name != "__name__" or v]
    # Absent first: the first labels found carry no label their own selector does not ask for.
    return sorted(dict.fromkeys(values), key=lambda v: v != "")


def _selects(selector: _Selector, labels: dict[str, str]) -> bool:
    try:
        return satisfies(labels, list(selector.labels_matchers))
    except re.error:
        raise _CannotDrive from None


class _CannotDrive(Exception):
    pass


def _solve(selectors: list[_Selector], want: Callable[[dict[str, str]], bool]) -> dict[str, str] | None:
    """Labels (with __name__) of one series that ``want`` accepts, from values the matchers suggest."""
    names = sorted({label for s in selectors for label, _, _ in s.labels_matchers})
    choices = [_candidates(name, selectors) for name in names]
    if math.prod(len(c) for c in choices) > 50000:
        return None
    for values in itertools.product(*choices):
        labels = {name: value for name, value in zip(names, values) if value}
        if labels.get("__name__") and want(labels):
            return labels
    return None


@dataclass(frozen=True)
class EventSeries:
    """Two series that drive an events SLI: ``bad`` (selected by the error query) and ``good``
    (selected by the total query only), each counted ``*_in_*`` times by each query."""

    bad: dict[str, str]
    good: dict[str, str] | None
    bad_in_errors: int
    bad_in_total: int
    good_in_total: int


def event_series(slo: SLO) -> EventSeries | None:
    base = slos.base_window()
    errors = _query_terms(slo.events.error_query.replace("$window", base))
    total = _query_terms(slo.events.total_query.replace("$window", base))
    if errors is None or total is None or errors.function != total.function:
        return None
    every = list(errors.terms) + list(total.terms)

    def count(query: _Query, labels: dict[str, str]) -> int:
        return sum(_selects(term, labels) for term in query.terms)

    try:
        bad = _solve(every, lambda labels: count(errors, labels) == 1 and count(total, labels) <= 1)
        good = _solve(every, lambda labels: count(errors, labels) == 0 and count(total, labels) == 1)
    except _CannotDrive:
        return None
    if bad is None or good is None:
        return None
    return EventSeries(bad, good, 1, count(total, bad), 1)


def _target_labels(spec: Spec, topology: Topology) -> dict[str, str]:
    service = spec.services[0]
    return {"job": service.name, "instance": topology.service_metrics_targets(service)[0], SERVICE_LABEL: service.name}


def _with_target(labels: dict[str, str], target: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(metric name, labels): the scrape target's labels where the matchers say nothing of them."""
    name = labels["__name__"]
    rest = {k: v for k, v in labels.items() if k != "__name__"}
    return name, {**{k: v for k, v in target.items() if k not in labels}, **rest}


class Traffic:
    """Input series that make one SLO's SLI read each segment's error ratio."""

    def __init__(self, spec: Spec, topology: Topology, slo: SLO):
        self.slo = slo
        self.target = _target_labels(spec, topology)
        self.events = event_series(slo) if slo.events is not None else None
        self.labels: dict[str, str] | None = None
        if slo.latency is not None:
            matchers = parse_matchers(slo.latency.selector)
            selector = _Selector(tuple(matchers) + (("__name__", "=", slo.latency.metric),))
            try:
                found = _solve([selector], lambda labels: _selects(selector, labels))
            except _CannotDrive:
                found = None
            self.labels = None if found is None else _with_target(found, self.target)[1]

    @property
    def drivable(self) -> bool:
        return self.events is not None or self.labels is not None

    def input(self, segments: list[Segment]) -> dict[str, str]:
        if self.events is not None:
            return self._events(segments)
        return self._histogram(segments)

    def _events(self, segments: list[Segment]) -> dict[str, str]:
        drive = self.events
        bad, good = [], []
        for segment in segments:
            errors = segment.total * segment.ratio
            bad_rate = errors / drive.bad_in_errors
            good_rate = (segment.total - bad_rate * drive.bad_in_total) / drive.good_in_total
            if good_rate < -1e-9:
                raise ValueError("cannot drive this burn: the bad series counts more in the total than in the errors")
            bad.append((segment.seconds / 60, bad_rate))
            good.append((segment.seconds / 60, max(good_rate, 0.0)))
        data = {}
        for labels, steps in ((drive.bad, bad), (drive.good, good)):
            name, labelset = _with_target(labels, self.target)
            data[series(name, labelset)] = counter_values(steps)
        return data

    def _histogram(self, segments: list[Segment], spelling=openmetrics_float, bounds: tuple[float, ...] | None = None
                   ) -> dict[str, str]:
        latency = self.slo.latency
        threshold = latency.threshold_seconds
        if bounds is None:
            metric = CATALOG_BY_NAME.get(latency.metric)
            bounds = metric.buckets if metric is not None else (threshold,)
        data = {}
        for bound in bounds:
            steps = [(s.seconds / 60, 0.0 if bound < threshold else s.total * (1 - s.ratio) if bound == threshold
                      else s.total) for s in segments]
            data[series(f"{latency.metric}_bucket", {**self.labels, "le": spelling(bound)})] = counter_values(steps)
        totals = [(s.seconds / 60, s.total) for s in segments]
        data[series(f"{latency.metric}_bucket", {**self.labels, "le": "+Inf"})] = counter_values(totals)
        data[series(f"{latency.metric}_count", self.labels)] = counter_values(totals)
        return data


# ---------------------------------------------------------------------------------------
# Latency SLIs: the recorded ratio from histogram buckets
# ---------------------------------------------------------------------------------------


def recording_cases(spec: Spec, topology: Topology, slo: SLO) -> list[AlertCase]:
    """promql tests of a latency SLI: zero at zero traffic, exact under load in both le spellings,
    absent when the histogram lacks the bucket."""
    if slo.latency is None:
        return []  # events SLIs: the detection tests drive their queries
    traffic = Traffic(spec, topology, slo)
    if not traffic.drivable:
        return []
    threshold = slo.latency.threshold_seconds
    shortest = slos.base_window()
    expression = f"{record(shortest)}{slo_selector(slo)}"

    def check(value: float | None) -> tuple[dict, ...]:
        samples = [] if value is None else [{"labels": f'{record(shortest)}{{slo="{slo.name}"}}', "value": value}]
        return ({"expr": expression, "eval_time": "10m", "exp_samples": samples},)

    def load(ratio: float, total: float, spelling=openmetrics_float, bounds=None) -> dict[str, str]:
        return traffic._histogram([Segment(15 * 60, total, ratio)], spelling, bounds)

    other = threshold * 2  # a bound the SLI does not ask for
    cases = [
        AlertCase(f"{slo.name}: the SLI is 0 at zero traffic", load(0, 0), "10m", (), promql_checks=check(0)),
        AlertCase(f"{slo.name}: 1% slower than {go_float(threshold)}s (le as Prometheus 3 stores it)",
                  load(0.01, TEST_TRAFFIC), "10m", (), promql_checks=check(0.01)),
        AlertCase(f"{slo.name}: no SLI when the histogram has no {go_float(threshold)}s bucket",
                  load(0.01, TEST_TRAFFIC, bounds=(other,)), "10m", (), promql_checks=check(None)),
    ]
    if go_float(threshold) != openmetrics_float(threshold):
        cases.append(AlertCase(
            f"{slo.name}: 1% slower than {go_float(threshold)}s (le as a Go client writes it)",
            load(0.01, TEST_TRAFFIC, go_float), "10m", (), promql_checks=check(0.01),
        ))
    return cases


# ---------------------------------------------------------------------------------------
# Detection from counters
# ---------------------------------------------------------------------------------------


def _duration_text(seconds: float) -> str:
    """Whole minutes as Prometheus writes them: 90m -> 1h30m."""
    total = int(round(seconds / 60))
    days, rest = divmod(total, 1440)
    hours, mins = divmod(rest, 60)
    text = (f"{days}d" if days else "") + (f"{hours}h" if hours else "") + (f"{mins}m" if mins else "")
    return text or "0m"


def _alerts_selector(name: str, alert: str | None = None) -> str:
    extra = f',slo_alert="{alert}"' if alert else ""
    return f'ALERTS{{alertname="{name}",alertstate="firing"{extra}}}'


class DetectionCases:
    """promtool cases that drive one SLO from counters and check its alerts against the model."""

    def __init__(self, spec: Spec, topology: Topology, slo: SLO, rules: list[AlertRule]):
        self.slo, self.rules = slo, {r.labels.get("slo_alert", "absent"): r for r in rules}
        self.plan = slos.plan(slo, spec.components.prometheus.evaluation_interval)
        self.traffic = Traffic(spec, topology, slo)
        self.burn_name, self.absent_name = slo_alert_names(slo.name)
        self.budget = float(budget(slo))
        self.settings = load_slo_settings()

    # -- helpers ---------------------------------------------------------------------

    def detection(self, cadence: slos.Cadence, changes: list[tuple[float, float]]) -> slos.Detection:
        return slos.Detection.of(self.slo, self.plan, cadence, slos.Profile(tuple(changes)))

    def fired(self, alert: str, when: float) -> dict:
        rule = self.rules[alert]
        labels = ",".join(f'{k}="{v}"' for k, v in sorted({**rule.labels, "alertname": rule.name,
                                                            "alertstate": "firing"}.items()))
        return {"expr": _alerts_selector(self.burn_name, alert), "eval_time": _duration_text(when),
                "exp_samples": [{"labels": f"ALERTS{{{labels}}}", "value": 1}]}

    def quiet(self, alert: str | None, when: float, name: str | None = None) -> dict:
        """No firing sample at any evaluation up to ``when``."""
        return {"expr": f"count_over_time({_alerts_selector(name or self.burn_name, alert)}[{_duration_text(when)}])",
                "eval_time": _duration_text(when), "exp_samples": []}

    def resolved(self, alert: str, when: float) -> dict:
        return {"expr": _alerts_selector(self.burn_name, alert), "eval_time": _duration_text(when), "exp_samples": []}

    def near(self, expr: str, value: float, when: float, tolerance: float) -> dict:
        """``expr`` within ``tolerance`` (relative) of ``value`` at ``when``."""
        value, margin = float(f"{value:.12g}"), float(f"{abs(value) * tolerance:.12g}")  # 0.0009, not 0.0009000000000000001
        return {"expr": f"abs({expr} - {number(value)}) <= bool {number(margin)}",
                "eval_time": _duration_text(when), "exp_samples": [{"labels": f'{{slo="{self.slo.name}"}}', "value": 1}]}

    def sli_reads(self, burn: float, when: float) -> dict:
        return self.near(f"{record(slos.base_window())}{slo_selector(self.slo)}", burn * self.budget, when, 1e-6)

    def possible(self, burn: float) -> bool:
        return burn * self.budget <= 1 + 1e-12

    # -- cases -----------------------------------------------------------------------

    def steady_burn(self, alert: str, factor: Decimal, cadence: slos.Cadence) -> AlertCase | None:
        burn = float(factor * self.settings.test_burn)
        if not self.possible(burn):
            return None
        probe = self.detection(cadence, [(0, 0.0)])
        history = slos.history_for(probe, alert, burn)
        model = self.detection(cadence, [(0, 0.0), (history, burn)])
        times = slos.time_to_fire(model, alert, history, 6 * max(w.seconds for w in self.plan.windows))
        if times.by is None:
            raise AssertionError(f"{self.slo.name}: the model never fires {alert} at {burn}x")
        end = history + times.by
        checks = [self.fired(alert, end), self.sli_reads(burn, end)]
        if times.earliest - cadence.evaluation >= cadence.evaluation:
            checks.insert(0, self.quiet(alert, history + times.earliest - cadence.evaluation))
        factor_text = decimal_text(factor)
        return AlertCase(
            f"{self.burn_name}: a steady {decimal_text(Decimal(str(burn)))}x burn ({self.settings.test_burn} x the "
            f"{factor_text}x factor) after {_duration_text(history)} of health raises the {alert} within "
            f"{_duration_text(times.by)}, not before {_duration_text(times.earliest)}",
            self.traffic.input([Segment(history, TEST_TRAFFIC, 0), Segment(times.by, TEST_TRAFFIC, burn * self.budget)]),
            _duration_text(end), (), interval=_duration_text(cadence.scrape), promql_checks=tuple(checks),
        )

    def outage(self, cadence: slos.Cadence) -> AlertCase | None:
        burn = 1 / self.budget
        probe = self.detection(cadence, [(0, 0.0)])
        history = slos.history_for(probe, "page", burn)
        model = self.detection(cadence, [(0, 0.0), (history, burn)])
        longest = max(parse_duration(c.long) for c in self.settings.page.conditions)
        fire = slos.time_to_fire(model, "page", history, 6 * longest)
        if fire.by is None:
            return None  # so low an objective that even 100 % errors stay under every page factor
        stop = history + fire.by + cadence.evaluation
        after = self.detection(cadence, [(0, 0.0), (history, burn), (stop, 0.0)])
        resolve = slos.time_to_resolve(after, "page", stop, 2 * longest)
        if resolve.by is None:
            raise AssertionError(f"{self.slo.name}: the model never resolves the page after an outage")
        end = stop + resolve.by
        checks = [self.fired("page", history + fire.by), self.resolved("page", end),
                  self.quiet(None, end, self.absent_name)]
        if fire.earliest - cadence.evaluation >= cadence.evaluation:
            checks.insert(0, self.quiet("page", history + fire.earliest - cadence.evaluation))
        if resolve.earliest - cadence.evaluation >= cadence.evaluation:
            checks.append({**self.fired("page", stop + resolve.earliest - cadence.evaluation)})
        return AlertCase(
            f"{self.burn_name}: a 100% error outage pages within {_duration_text(fire.by)} (not before "
            f"{_duration_text(fire.earliest)}); after the errors stop the page resolves within "
            f"{_duration_text(resolve.by)} (not before {_duration_text(resolve.earliest)})",
            self.traffic.input([Segment(history, TEST_TRAFFIC, 0), Segment(stop - history, TEST_TRAFFIC, 1.0),
                                Segment(resolve.by, TEST_TRAFFIC, 0)]),
            _duration_text(end), (), interval=_duration_text(cadence.scrape), promql_checks=tuple(checks),
        )

    def quiet_burn(self, cadence: slos.Cadence) -> AlertCase | None:
        lowest = min(w.factor for w in slos.burn_windows(self.slo))
        burn = float(lowest * self.settings.quiet_burn)
        if not self.possible(burn):
            return None  # more errors than events: every factor is out of reach
        model = self.detection(cadence, [(0, burn)])
        longest = max((model.windows[d] for c in model.conditions.values() for long, short, _ in c
                       for d in (long, short)), key=lambda m: m.seconds)
        hold = max(parse_duration(self.settings.page.for_), parse_duration(self.settings.ticket.for_))
        end = model.step(longest.longest + longest.shift + hold)
        # A steady burn from the start reads the same on every window at every time: look at a few.
        for alert in ("page", "ticket"):
            if any(model.firing(alert, model.step(end * part / 4)) is not False for part in range(1, 5)):
                raise AssertionError(f"{self.slo.name}: the model says {alert} may fire at {burn}x")
        return AlertCase(
            f"{self.burn_name}: a steady {decimal_text(Decimal(str(burn)))}x burn ({self.settings.quiet_burn} x the "
            f"lowest factor) never fires in {_duration_text(end)}",
            self.traffic.input([Segment(end, TEST_TRAFFIC, burn * self.budget)]),
            _duration_text(end), (), interval=_duration_text(cadence.scrape),
            promql_checks=(self.quiet(None, end), self.sli_reads(burn, end)),
        )

    def zero_traffic(self) -> AlertCase:
        end = 3600.0
        selector = slo_selector(self.slo)

        def value(name: str, expected: float) -> dict:
            return {"expr": f"{name}{selector}", "eval_time": _duration_text(end),
                    "exp_samples": [{"labels": f'{name}{{slo="{self.slo.name}"}}', "value": expected}]}

        return AlertCase(
            f"{self.slo.name}: at zero traffic every ratio is 0, the budget untouched, and nothing fires",
            self.traffic.input([Segment(end, 0, 0)]), _duration_text(end), (),
            promql_checks=tuple(
                [value(record(w.duration), 0) for w in self.plan.windows]
                + [value(BUDGET_REMAINING, 1), value(BUDGET_CONSUMED, 0), value(TIME_TO_EXHAUSTION, math.inf)]
                + [self.quiet(None, end), self.quiet(None, end, self.absent_name)]
            ),
        )

    def uneven_traffic(self, cadence: slos.Cadence) -> AlertCase | None:
        """The budget is a ratio of sums: 20h busy with few errors, 4h quiet with many, then idle."""
        busy, quiet = Segment(20 * 3600, TEST_TRAFFIC, 0.0005), Segment(4 * 3600, TEST_TRAFFIC / 100, 0.01)
        if max(s.ratio for s in (busy, quiet)) > 1:
            return None
        bad = sum(s.seconds * s.total * s.ratio for s in (busy, quiet))
        ratio = bad / sum(s.seconds * s.total for s in (busy, quiet))
        remaining = 1 - ratio / self.budget
        # Once every hourly sum holding the data is written: one sum interval and one 5m window on.
        settled = busy.seconds + quiet.seconds + parse_duration(self.plan.sum_interval) + 2 * parse_duration(
            slos.base_window())
        settled = math.ceil(settled / cadence.evaluation) * cadence.evaluation
        end_of_data = busy.seconds + quiet.seconds
        selector = slo_selector(self.slo)
        burn = quiet.ratio / self.budget
        checks = [
            self.near(f"{record(self.plan.slo_window.duration)}{selector}", ratio, settled, 0.01),
            self.near(f"{BUDGET_REMAINING}{selector}", remaining, settled, 0.01),
            self.near(f"{BUDGET_CONSUMED}{selector}", 1 - remaining, settled, 0.01),
        ]
        if remaining > 0.05:
            # When the data ends the last hour burns at the quiet hours' rate: the time left is what
            # remains over that burn (what remains then may still lack the last hour of data).
            checks.append({
                "expr": f"abs({TIME_TO_EXHAUSTION}{selector} - {BUDGET_REMAINING}{selector} * "
                        f"{number(self.plan.slo_window.seconds)} / {number(burn)}) <= bool 0.01 * "
                        f"{TIME_TO_EXHAUSTION}{selector}",
                "eval_time": _duration_text(end_of_data),
                "exp_samples": [{"labels": f'{{slo="{self.slo.name}"}}', "value": 1}]})
        elif remaining < -0.05:  # spent: no time left
            checks.append({"expr": f"{TIME_TO_EXHAUSTION}{selector}", "eval_time": _duration_text(end_of_data),
                           "exp_samples": [{"labels": f'{TIME_TO_EXHAUSTION}{{slo="{self.slo.name}"}}', "value": 0}]})
        return AlertCase(
            f"{self.slo.name}: budget after 20h at 100/s with 0.05% errors then 4h at 1/s with 1% errors: "
            f"{number(round(remaining, 6))} left (bad/all over the window = {number(round(ratio, 9))})",
            self.traffic.input([busy, quiet, Segment(settled - end_of_data, 0, 0)]),
            _duration_text(settled), (), interval=_duration_text(cadence.scrape), promql_checks=tuple(checks),
        )

    def build(self) -> tuple[list[AlertCase], list[AlertCase]]:
        """(cases for the 1m file, cases for the 5m file); empty when the SLI cannot be driven."""
        if not self.traffic.drivable:
            return [], []
        fast: list[AlertCase | None] = [self.outage(DETECTION_CADENCE), self.zero_traffic()]
        long: list[AlertCase | None] = [self.quiet_burn(LONG_CADENCE)]
        for window in slos.burn_windows(self.slo):
            # Every minute while the burn takes at most an hour to show; every 5 minutes beyond.
            if window.alert == "page" and parse_duration(window.long) <= 3600:
                fast.append(self.steady_burn("page", window.factor, DETECTION_CADENCE))
            else:
                long.append(self.steady_burn(window.alert, window.factor, LONG_CADENCE))
        long.append(self.uneven_traffic(LONG_CADENCE))
        return [c for c in fast if c is not None], [c for c in long if c is not None]


# ---------------------------------------------------------------------------------------
# Everything for the spec's SLOs
# ---------------------------------------------------------------------------------------


@dataclass
class Built:
    rule_files: dict[str, list[dict]] = field(default_factory=dict)  # file name -> groups
    rule_notes: dict[str, str] = field(default_factory=dict)  # file name -> header comments
    test_files: dict[str, TestFile] = field(default_factory=dict)
    pages: list[RunbookPage] = field(default_factory=list)


def file_names(slo: SLO) -> dict[str, str]:
    """The rule and test files of one SLO (a file per SLO keeps each test to the rules it needs)."""
    return {kind: f"slo-{slo.name}-{kind}.yml" for kind in ("recording", "alerts", "detection", "detection-long")}


def build(spec: Spec, topology: Topology) -> Built:
    settings = load_slo_settings()
    evaluation = spec.components.prometheus.evaluation_interval
    built = Built()
    for slo in spec.slos:
        plan = slos.plan(slo, evaluation)
        files = file_names(slo)
        recording = recording_groups(slo, plan)
        rules = [burn_rule(spec, topology, slo, settings.page), burn_rule(spec, topology, slo, settings.ticket),
                 absent_rule(spec, topology, slo)]
        alerting = [{"name": group_names(slo)[2], "rules": [r.to_dict() for r in rules]}]
        built.rule_files[files["recording"]] = recording
        built.rule_notes[files["recording"]] = PINT_NOTES
        built.rule_files[files["alerts"]] = alerting
        # The alert tests feed recorded ratios in: they load the alert rules alone.
        built.test_files[files["alerts"]] = TestFile((files["alerts"],), tuple(alert_cases(slo, rules)))
        recording_order = tuple(group["name"] for group in recording)
        checks = recording_cases(spec, topology, slo)
        if checks:
            built.test_files[files["recording"]] = TestFile((files["recording"],), tuple(checks),
                                                            group_eval_order=recording_order)
        fast, long = DetectionCases(spec, topology, slo, rules).build()
        both, order = (files["recording"], files["alerts"]), recording_order + (alerting[0]["name"],)
        if fast:
            built.test_files[files["detection"]] = TestFile(
                both, tuple(fast), _duration_text(DETECTION_CADENCE.evaluation), order)
        if long:
            built.test_files[files["detection-long"]] = TestFile(
                both, tuple(long), _duration_text(LONG_CADENCE.evaluation), order)
        built.pages += runbook_pages(slo, plan, rules)
    return built


def runbook_pages(slo: SLO, plan: slos.Plan, rules: list[AlertRule]) -> list[RunbookPage]:
    settings = load_slo_settings()
    factors = {
        burn.name: [(c.long, c.short, decimal_text(burn_factor(slo, c.long, c.budget_percent)), c.budget_percent)
                    for c in burn.conditions]
        for burn in (settings.page, settings.ticket)
    }
    extra = {
        "objective": percent(slo),
        "budget": decimal_text(budget(slo)),
        "factors": factors,
        "record": ERROR_RATIO,
        "windows": [w.duration for w in plan.windows],
        "long_windows": [w.duration for w in plan.windows if w.source == "sums"],
        "sum_interval": plan.sum_interval,
        "slo_window": plan.slo_window.duration,
        "exhaustion_window": exhaustion_window(),
        "names": {
            "remaining": BUDGET_REMAINING, "consumed": BUDGET_CONSUMED, "exhaustion": TIME_TO_EXHAUSTION,
            "budget": BUDGET, "objective": OBJECTIVE, "errors": rate_record("errors"), "total": rate_record("total"),
        },
        "page_for": settings.page.for_,
        "ticket_for": settings.ticket.for_,
        "absent_for": settings.absent_for,
        "sli_5m": sli_error_ratio(slo, slos.base_window()),
    }
    burn_name, absent_name = slo_alert_names(slo.name)
    page_rule, _, absent = rules
    return [
        RunbookPage(name=burn_name, source="slo_burn", summary=page_rule.annotations["summary"],
                    description=page_rule.annotations["description"], rules=tuple(rules[:2]), slo=slo, extra=extra),
        RunbookPage(name=absent_name, source="slo_absent", summary=absent.annotations["summary"],
                    description=absent.annotations["description"], rules=(absent,), slo=slo, extra=extra),
    ]


__all__ = ["Built", "build", "burn_factor", "file_names", "windows_for"]
