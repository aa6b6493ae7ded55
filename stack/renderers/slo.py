"""SLOs -> recording rules per window and multi-window multi-burn-rate alerts (pure).

For an SLO named ``x`` (windows and factors from alerts/slo.yaml):

    slo:sli_error:ratio_rate<w>{slo="x"}   bad/all over each window w (5m ... 3d), and over the SLO's
                                            own window as the average of the shortest window's ratios
    slo:objective:ratio, slo:error_budget:ratio, slo:error_budget_remaining:ratio   for dashboards
    <X>ErrorBudgetBurn   severity=page_severity, slo_alert=page:   1h&5m or 6h&30m burn too fast
                         severity=ticket_severity, slo_alert=ticket: 1d&2h or 3d&6h burn too fast
    <X>SLIAbsent         the SLI has no value (no series, or the queries select nothing)

Zero traffic: a window with no events records 0, not NaN (the division only happens where the
total is above zero), so burn-rate alerts stay silent; a missing metric leaves the ratio absent,
and <X>SLIAbsent fires. The same alertname at two severities lets the default inhibition mute
the ticket while the page fires.

Latency SLIs count the catalog histogram's bucket ``le=<threshold>`` as good events. The
``le`` matcher accepts both spellings of the bound (see promtext.le_matcher), so the rule selects
the same bucket on Prometheus 2.x and 3.x.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

from alerts.pack import BurnAlert, load_slo_settings, slo_alert_names
from exporter.catalog import metric as catalog_metric
from stack.renderers.promtext import expand_template, le_matcher, openmetrics_float, series
from stack.slos import (
    BUDGET,
    BUDGET_REMAINING,
    ERROR_RATIO,
    OBJECTIVE,
    budget,
    burn_factor,
    decimal_text,
    percent,
    record,
    slo_selector,
    windows_for,
)
from stack.spec import SLO, Spec, parse_duration
from stack.topology import Topology

RECORDING_FILE = "slo-recording.yml"
ALERTS_FILE = "slo-alerts.yml"
TEST_INTERVAL = "1m"


def sli_error_ratio(slo: SLO, window: str) -> str:
    """PromQL for the SLO's bad/all ratio over ``window``; 0 at zero traffic, absent without data."""
    if slo.events is not None:
        bad = slo.events.error_query.replace("$window", window)
        total = slo.events.total_query.replace("$window", window)
        # No error series at all (a labelled counter that never counted) means no errors.
        return (
            "(\n"
            f"  ({bad})\n"
            "  or\n"
            f"  0 * ({total})\n"
            ")\n"
            "/\n"
            f"(({total}) > 0)\n"
            "or\n"
            f"0 * ({total})"
        )
    latency = slo.latency
    matchers = ",".join(m for m in (latency.selector,) if m)
    count = f"{latency.metric}_count{{{matchers}}}" if matchers else f"{latency.metric}_count"
    good_matchers = ",".join(m for m in (latency.selector, le_matcher(latency.threshold_seconds)) if m)
    total = f"sum(rate({count}[{window}]))"
    good = f"sum(rate({latency.metric}_bucket{{{good_matchers}}}[{window}]))"
    # Without the bucket (a wrong bound) the ratio stays absent rather than reading as perfect.
    return (
        f"(\n  {total}\n  -\n  {good}\n)\n"
        "/\n"
        f"({total} > 0)\n"
        "or\n"
        f"0 * {good}"
    )


def recording_group(slo: SLO) -> dict:
    labels = {"slo": slo.name}
    windows, own = windows_for(slo)
    rules = [{"record": record(w), "expr": sli_error_ratio(slo, w), "labels": labels} for w in windows]
    whole = slo.window if own is None else own
    if own is not None:
        rules.append({
            "record": record(own),
            # Averaging the shortest window's ratios avoids a rate() over raw samples of the whole window.
            "expr": f"avg_over_time({record(windows[0])}{slo_selector(slo)}[{own}])",
            "labels": labels,
        })
    rules += [
        {"record": OBJECTIVE, "expr": f"vector({decimal_text(Decimal(str(slo.objective)) / 100)})", "labels": labels},
        {"record": BUDGET, "expr": f"vector({decimal_text(budget(slo))})", "labels": labels},
        {
            "record": BUDGET_REMAINING,
            "expr": f"1 - {record(whole)}{slo_selector(slo)} / {decimal_text(budget(slo))}",
            "labels": labels,
        },
    ]
    return {"name": f"slo-{slo.name}-recording", "rules": rules}


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


def burn_rule(spec: Spec, topology: Topology, slo: SLO, burn: BurnAlert) -> dict:
    from stack.renderers.runbooks import runbook_url

    name, _ = slo_alert_names(slo.name)
    severity = slo.page_severity if burn.name == "page" else slo.ticket_severity
    pace = "fast enough to page" if burn.name == "page" else "fast enough to need attention today"
    return {
        "alert": name,
        "expr": burn_expr(slo, burn),
        "for": burn.for_,
        "labels": {"severity": severity, "slo": slo.name, "slo_alert": burn.name},
        "annotations": {
            "summary": f"The {slo.name} SLO is burning its error budget {pace}.",
            "description": (
                f"The {{{{ $labels.slo }}}} SLO ({percent(slo)} over {slo.window}) is spending its error budget "
                f"{{{{ $value | humanize }}}} times faster than sustainable, measured over {_windows_text(burn)}."
            ),
            "runbook_url": runbook_url(spec, topology, name),
        },
    }


def absent_rule(spec: Spec, topology: Topology, slo: SLO) -> dict:
    from stack.renderers.runbooks import runbook_url

    _, name = slo_alert_names(slo.name)
    settings = load_slo_settings()
    shortest = sorted(settings.windows, key=parse_duration)[0]
    return {
        "alert": name,
        "expr": f"absent({record(shortest)}{slo_selector(slo)})",
        "for": settings.absent_for,
        "labels": {"severity": slo.ticket_severity, "slo": slo.name},
        "annotations": {
            "summary": f"The {slo.name} SLO has no data, so its burn-rate alerts cannot fire.",
            "description": (
                "The SLI of the {{ $labels.slo }} SLO has had no value for "
                f"{settings.absent_for}: its metrics are missing or its queries select nothing."
            ),
            "runbook_url": runbook_url(spec, topology, name),
        },
    }


# ---------------------------------------------------------------------------------------
# Unit tests
# ---------------------------------------------------------------------------------------


def _round3(value: Decimal) -> Decimal:
    return Decimal(f"{value:.3g}")


def alert_cases(spec: Spec, topology: Topology, slo: SLO, rules: list[dict]):
    from stack.renderers.rules import AlertCase, ExpectedAlert, minutes

    settings = load_slo_settings()
    burn_name, absent_name = slo_alert_names(slo.name)
    page_rule, ticket_rule, absent = rules
    page_factors = [burn_factor(slo, c.long, c.budget_percent) for c in settings.page.conditions]
    ticket_factors = [burn_factor(slo, c.long, c.budget_percent) for c in settings.ticket.conditions]
    look = max(minutes(settings.page.for_), minutes(settings.ticket.for_), minutes(settings.absent_for)) + 5
    eval_time, samples = f"{look}m", look + 5
    windows = sorted(settings.windows, key=parse_duration)

    def data(burn: Decimal, only: tuple[str, ...] | None = None) -> dict[str, str]:
        """Every window's recorded ratio: ``burn`` times the budget (only in ``only``, else 0)."""
        ratio = decimal_text(burn * budget(slo))
        return {
            series(record(w), {"slo": slo.name}): f"{ratio if only is None or w in only else 0}x{samples}"
            for w in windows
        }

    def expected(rule: dict, burn: Decimal) -> ExpectedAlert:
        labels = dict(rule["labels"])
        annotations = dict(rule["annotations"])
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
    absent_labels = dict(absent["labels"])
    absent_annotations = dict(absent["annotations"])
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


def recording_cases(spec: Spec, topology: Topology, slo: SLO):
    """promql tests of a latency SLI's recording: zero at zero traffic, exact under load, both le forms."""
    from stack.renderers.rules import AlertCase, _matchers, _satisfies
    from stack.renderers.promtext import go_float

    latency = slo.latency
    if latency is None:
        return []  # events SLIs: arbitrary queries; promtool check rules covers them
    labels = dict(_service_labels(spec, topology))
    matchers = _matchers(latency.selector)
    for name, op, value in matchers:
        if op == "=":
            labels[name] = value
        elif op == "=~":
            candidate = next((c for c in re.split(r"\|", value) if re.fullmatch(value, c)), None)
            if candidate is None:
                return []  # cannot build a series for this selector; check rules still parses it
            labels[name] = candidate
    if not _satisfies(labels, matchers):
        return []
    metric = catalog_metric(latency.metric)
    shortest = sorted(load_slo_settings().windows, key=parse_duration)[0]
    expression = f"{record(shortest)}{slo_selector(slo)}"

    def histogram(total: int, good: int, spelling) -> dict[str, str]:
        data = {}
        for bound in metric.buckets:
            count = good if bound <= latency.threshold_seconds else total
            data[series(f"{metric.name}_bucket", {**labels, "le": spelling(bound)})] = f"0+{count}x15"
        data[series(f"{metric.name}_bucket", {**labels, "le": "+Inf"})] = f"0+{total}x15"
        data[series(f"{metric.name}_count", labels)] = f"0+{total}x15"
        return data

    def check(value: float) -> tuple[dict, ...]:
        return ({"expr": expression, "eval_time": "10m",
                 "exp_samples": [{"labels": f'{record(shortest)}{{slo="{slo.name}"}}', "value": value}]},)

    # 6000 and 5940 per minute: 100/s and 99/s exactly over 5m, so the ratio is exactly 0.01.
    cases = [
        AlertCase(f"{slo.name}: the SLI is 0 at zero traffic", histogram(0, 0, openmetrics_float), "10m", (),
                  promql_checks=check(0)),
        AlertCase(f"{slo.name}: 1% slower than {go_float(latency.threshold_seconds)}s (le as Prometheus 3 stores it)",
                  histogram(6000, 5940, openmetrics_float), "10m", (), promql_checks=check(0.01)),
    ]
    if go_float(latency.threshold_seconds) != openmetrics_float(latency.threshold_seconds):
        cases.append(AlertCase(
            f"{slo.name}: 1% slower than {go_float(latency.threshold_seconds)}s (le as a Go client writes it)",
            histogram(6000, 5940, go_float), "10m", (), promql_checks=check(0.01),
        ))
    return cases


def _service_labels(spec: Spec, topology: Topology) -> dict[str, str]:
    from stack.renderers.prometheus import SERVICE_LABEL

    service = spec.services[0]
    return {"job": service.name, "instance": topology.service_metrics_targets(service)[0], SERVICE_LABEL: service.name}


# ---------------------------------------------------------------------------------------
# Everything for the spec's SLOs
# ---------------------------------------------------------------------------------------


@dataclass
class Built:
    recording_groups: list[dict] = field(default_factory=list)
    alert_groups: list[dict] = field(default_factory=list)
    alert_cases: list = field(default_factory=list)
    recording_cases: list = field(default_factory=list)
    pages: list = field(default_factory=list)


def build(spec: Spec, topology: Topology) -> Built:
    from stack.renderers.rules import AlertRule, RunbookPage

    settings = load_slo_settings()
    built = Built()
    for slo in spec.slos:
        built.recording_groups.append(recording_group(slo))
        rules = [burn_rule(spec, topology, slo, settings.page), burn_rule(spec, topology, slo, settings.ticket),
                 absent_rule(spec, topology, slo)]
        built.alert_groups.append({"name": f"slo-{slo.name}-alerts", "rules": rules})
        built.alert_cases += alert_cases(spec, topology, slo, rules)
        built.recording_cases += recording_cases(spec, topology, slo)
        as_rules = tuple(
            AlertRule(r["alert"], r["expr"], r.get("for"), r["labels"], r["annotations"]) for r in rules
        )
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
            "windows": windows_for(slo)[0],
            "page_for": settings.page.for_,
            "ticket_for": settings.ticket.for_,
            "absent_for": settings.absent_for,
            "sli_5m": sli_error_ratio(slo, "5m"),
        }
        burn_name, absent_name = slo_alert_names(slo.name)
        built.pages.append(RunbookPage(
            name=burn_name, source="slo_burn", summary=rules[0]["annotations"]["summary"],
            description=rules[0]["annotations"]["description"], rules=as_rules[:2], slo=slo, extra=extra,
        ))
        built.pages.append(RunbookPage(
            name=absent_name, source="slo_absent", summary=rules[2]["annotations"]["summary"],
            description=rules[2]["annotations"]["description"], rules=as_rules[2:], slo=slo, extra=extra,
        ))
    return built
