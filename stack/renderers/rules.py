"""Prometheus rule files and their promtool unit tests: the alert pack, SLOs, custom alerts.

Pure: ``render(spec, topology)`` returns

    prometheus/rules/websocket.yml      the WebSocket alert pack (alerts/pack.yaml, group websocket)
    prometheus/rules/stack.yml          self-monitoring of the stack (group stack)
    prometheus/rules/slo-<name>-recording.yml  an SLO's error ratios and budget (stack/renderers/slo.py)
    prometheus/rules/slo-<name>-alerts.yml     its multi-window multi-burn-rate and absent-SLI alerts
    prometheus/rules/custom.yml         the spec's own alerts, as given
    prometheus/tests/<same names>.yml   promtool unit tests: every alert fires on crafted input
                                        with its exact labels and annotations, and stays silent
                                        below its threshold and at zero traffic; the SLOs' also
                                        slo-<name>-detection[-long].yml, driven from counters

A file is written only when it has rules. Expressions read metric names from the catalog
(exporter/catalog.py) through the pack's data; ratios divide only by a denominator that is above
zero and quantiles are taken only where there were observations, so nothing is NaN and nothing
fires at zero traffic. The unit tests' expected values come from the same numbers that build
their input series, so a test can only pass if the rule does what its words say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterable

from alerts.pack import Knobs, MetricRef, Pack, PackAlert, knobs, load_pack
from exporter.catalog import CATALOG, Metric
from stack.renderers import slo as slo_rules
from stack.renderers.alerting import (
    AlertCase,
    AlertRule,
    ExpectedAlert,
    RunbookPage,
    TestFile,
    minutes,
    runbook_url,
)
from stack.renderers.alerting import parse_matchers as _matchers
from stack.renderers.alerting import satisfies as _satisfies
from stack.promtext import (
    dump_yaml,
    expand_template,
    humanize,
    humanize_duration,
    humanize_percentage,
    number,
    openmetrics_float,
    series,
)
from stack.spec import CustomAlert, Spec
from stack.topology import Topology
from stack.renderers.wiring import PROBE_JOB, PROBE_LABEL, SERVICE_LABEL, STACK_JOBS, probes, stack_job_address

RULES_DIR = "prometheus/rules"
TESTS_DIR = "prometheus/tests"
HEADER = "Rendered by obsgen from the project spec; edit the spec, not this file."
TEST_HEADER = (
    "promtool unit tests rendered by obsgen: run `promtool test rules prometheus/tests/*.yml`\n"
    "from the bundle root. Rule files are named relative to this file."
)
# Slack between a condition holding for `for` and the moment a test looks.
TEST_MARGIN_MINUTES = 3


# ---------------------------------------------------------------------------------------
# Rules and test cases as plain data
# ---------------------------------------------------------------------------------------


def rule_file(groups: list[dict], notes: str = "") -> str:
    """A rule file; ``notes`` are comment lines after the header (pint reads its directives there)."""
    return dump_yaml({"groups": groups}, header=f"{HEADER}\n{notes}" if notes else HEADER)


def test_file(test: TestFile) -> str:
    data: dict = {
        "rule_files": [f"../rules/{name}" for name in test.rule_files],
        "evaluation_interval": test.evaluation_interval,
    }
    if test.group_eval_order:
        data["group_eval_order"] = list(test.group_eval_order)
    data["tests"] = [case.to_dict() for case in test.cases]
    return dump_yaml(data, header=TEST_HEADER)


def rate_window_for(spec: Spec) -> str:
    """The range of the pack's rate() and quantile windows: the spec's, else the pack's default."""
    return spec.alerts.rate_window or load_pack().rate_window


def window_for(alert: PackAlert, rate_window: str) -> str:
    """The range an alert's expression looks back over: its own (predict_linear, changes) or the rate window."""
    return alert.range or rate_window


def fires_below(alert: PackAlert) -> bool:
    """Whether the alert fires when its measure is below the threshold (memory available, time to full)."""
    return alert.below or alert.kind == "predict_linear"


def beyond(alert: PackAlert, measure: float, threshold: float) -> bool:
    """The measure is past the threshold, in the alert's direction."""
    return measure < threshold if fires_below(alert) else measure > threshold


# ---------------------------------------------------------------------------------------
# The pack: effective levels and expressions
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    severity: str
    threshold: float | None  # None: a fixed condition
    upper: float | None  # the next level's threshold (a warning level below its critical)


def levels(alert: PackAlert, knob: Knobs) -> list[Level]:
    if not alert.tunable:
        return [Level(knob.severity, None, None)]
    if alert.paired:
        return [Level(knob.severity, knob.threshold, knob.critical), Level("critical", knob.critical, None)]
    return [Level(knob.severity, knob.threshold, None)]


def _by(labels: Iterable[str]) -> str:
    return ", ".join(labels)


def catalog_name_regex() -> str:
    """Every sample name the exporter exposes (histograms as their _bucket/_count/_sum series)."""
    names = []
    for metric in CATALOG:
        if metric.type == "histogram":
            names += [f"{metric.name}_bucket", f"{metric.name}_count", f"{metric.name}_sum"]
        else:
            names.append(metric.name)
    return "|".join(sorted(names))


# Where a name-regex selector keeps each series' metric name through rate() (see _rate).
NAME_LABEL = "metric_name"


def _rate(ref: MetricRef, rate_window: str, suffix: str = "") -> str:
    """rate() of a metric reference over the window.

    rate() drops the metric name, so two names a ``name_regex`` matches with otherwise equal
    labels (a receiver refusing both spans and log records) would become one labelset twice and
    the whole rule would fail to evaluate. For those, the name is copied into a label first and
    the rate is taken over a subquery.
    """
    selector = ref.selector(suffix)
    if ref.name_regex is None:
        return f"rate({selector}[{rate_window}])"
    return f'rate(label_replace({selector}, "{NAME_LABEL}", "$1", "__name__", "(.+)")[{rate_window}:])'


def pack_value_expr(alert: PackAlert, rate_window: str) -> str:
    """The PromQL a pack alert compares with its threshold (or fixed condition)."""
    by = _by(alert.by)
    if alert.kind == "up":
        return f"up{{{alert.match}}}"
    if alert.kind == "missing_metrics":
        # Up, but not one sample of the catalog: wrong path, wrong port, or not instrumented.
        return (
            f'up{{{SERVICE_LABEL}!=""}} == 1\n'
            "unless on (job, instance)\n"
            f'  group by (job, instance) ({{__name__=~"{catalog_name_regex()}"}})'
        )
    if alert.kind == "ratio":

        def term(ref: MetricRef) -> str:
            inner = _rate(ref, rate_window) if alert.function == "rate" else ref.selector()
            return f"sum by ({by}) ({inner})"

        # Divide only where the denominator is above zero: no NaN at zero traffic.
        return f"(\n  {term(alert.numerator)}\n/\n  ({term(alert.denominator)} > 0)\n)"
    if alert.kind == "quantile":
        ref = alert.metric
        # A quantile only where there were observations: histogram_quantile of all-zero buckets is NaN.
        return (
            "(\n"
            f"  histogram_quantile({number(alert.quantile)}, "
            f"sum by ({by}, le) ({_rate(ref, rate_window, '_bucket')}))\n"
            f"  and on ({by})\n"
            f"  sum by ({by}) ({_rate(ref, rate_window, '_count')}) > 0\n"
            ")"
        )
    if alert.kind == "gauge":
        inner = alert.metric.selector()
        return f"{alert.aggregate} by ({by}) ({inner})" if alert.by else inner
    if alert.kind == "rate":
        return f"sum by ({by}) ({_rate(alert.metric, rate_window)})"
    if alert.kind == "busy":
        # The share of time the CPUs were not idle, averaged over a host's CPUs.
        return f"1 - avg by ({by}) ({_rate(alert.metric, rate_window)})"
    if alert.kind == "predict_linear":
        # Free space expected [[threshold]] from now, from the trend over the alert's range.
        return f"predict_linear({alert.metric.selector()}[{alert.range}], {number(alert.threshold)})"
    if alert.kind == "changes":
        return f"changes({alert.metric.selector()}[{alert.range}])"
    if alert.kind == "probe":
        # Failing from outside while the instance's own scrape is not down: when `up` is 0,
        # WebSocketTargetDown speaks for the instance (built-in servers are probed on the address
        # they are scraped at, so the two share service and instance).
        return (
            f'probe_success{{job="{PROBE_JOB}"}}\n'
            f"unless on ({SERVICE_LABEL}, instance)\n"
            f'  up{{{SERVICE_LABEL}!=""}} == 0'
        )
    raise ValueError(f"unknown kind {alert.kind!r}")  # the loader refuses unknown kinds first


def pack_expr(alert: PackAlert, threshold: float | None, rate_window: str) -> str:
    """The PromQL of one level of a pack alert."""
    if alert.kind == "predict_linear":
        alert = _with_threshold(alert, threshold)
    value = pack_value_expr(alert, rate_window)
    if alert.kind == "missing_metrics":
        return value
    if alert.kind == "predict_linear":
        return f"{value} < 0"
    if alert.kind == "probe":
        # The comparison binds tighter than `unless`: compare the probe, then drop the down instances.
        first, _, rest = value.partition("\n")
        return f"{first} {alert.condition}\n{rest}"
    if threshold is None:
        compare = alert.condition
    else:
        compare = f"{'<' if fires_below(alert) else '>'} {number(threshold)}"
    return f"{value} {compare}"


def _with_threshold(alert: PackAlert, threshold: float | None) -> PackAlert:
    """The alert with a spec's threshold, where the threshold is part of the expression (predict_linear)."""
    return alert if threshold is None else replace(alert, threshold=threshold)


def format_threshold(unit: str | None, value: float) -> str:
    if unit == "ratio":
        return humanize_percentage(value)
    if unit == "seconds":
        return humanize_duration(value)
    return humanize(value)


def format_value(unit: str | None, value: float) -> str:
    """A value for a test's title, with its unit."""
    return format_threshold(unit, value) + ("/s" if unit == "per_second" else "")


def description_for(alert: PackAlert, level: Level, knob: Knobs, rate_window: str) -> str:
    text = alert.description.replace("[[for]]", knob.for_).replace("[[window]]", window_for(alert, rate_window))
    if level.threshold is not None:
        text = text.replace("[[threshold]]", format_threshold(alert.unit, level.threshold))
    return text


def enabled_pack_alerts(spec: Spec, topology: Topology | None = None) -> list[tuple[PackAlert, Knobs]]:
    pack = load_pack()
    requires = {group.name: group.requires for group in pack.groups}
    present = {
        "node_exporter": spec.components.node_exporter.enabled,
        "blackbox": bool(probes(spec, topology or Topology(spec))),
    }
    chosen = []
    for alert in pack.alerts:
        if alert.in_pack and not spec.alerts.pack:
            continue
        if requires.get(alert.group) and not present[requires[alert.group]]:
            continue
        knob = knobs(alert, spec.alerts.thresholds.get(alert.key))
        if knob.enabled:
            chosen.append((alert, knob))
    return chosen


def pack_rules(spec: Spec, topology: Topology, alert: PackAlert, knob: Knobs) -> list[AlertRule]:
    rate_window = rate_window_for(spec)
    rules = []
    for level in levels(alert, knob):
        rules.append(AlertRule(
            name=alert.alert,
            expr=pack_expr(alert, level.threshold, rate_window),
            for_=knob.for_,
            labels={"severity": level.severity},
            annotations={
                "summary": alert.summary,
                "description": description_for(alert, level, knob, rate_window),
                "runbook_url": runbook_url(spec, topology, alert.alert),
            },
        ))
    return rules


# ---------------------------------------------------------------------------------------
# The pack: unit-test scenarios (input series built from the value they must produce)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    input: dict[str, str]
    value: float  # what the rule's expression evaluates to ($value)
    labels: dict[str, str]  # the alert's labels from its expression
    measure: float | None = None  # what the threshold is compared with, where it is not $value

    @property
    def compared(self) -> float:
        return self.value if self.measure is None else self.measure


def metric_labels(ref: MetricRef, base: dict[str, str], example: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """Labels of a test series of ``ref``: the target's, then values that satisfy the ref's matchers."""
    matchers = _matchers(ref.match)
    labels = dict(base)
    wanted = dict(example)
    wanted.update(ref.example)
    wanted.update(extra or {})
    names = list(ref.metric.labels) if ref.metric is not None else []
    names += [n for n in wanted if n not in names]
    names += [n for n, op, _ in matchers if op == "=" and n not in names]
    for name in names:
        if name in labels:
            continue
        equal = [v for n, op, v in matchers if n == name and op == "="]
        if name in wanted:
            labels[name] = wanted[name]
        elif equal:
            labels[name] = equal[0]
        else:
            candidates = ref.metric.label_values.get(name, ()) if ref.metric is not None else ()
            fitting = [c for c in candidates if _satisfies({name: c}, [m for m in matchers if m[0] == name])]
            labels[name] = fitting[0] if fitting else "example"
    return labels


class ScenarioBuilder:
    """Input series for one pack alert, for a target value of its expression (None: idle)."""

    def __init__(self, alert: PackAlert, target: dict[str, str], samples: int, hold_minutes: int = 0):
        self.alert = alert
        self.target = target
        self.samples = samples
        self.hold_minutes = hold_minutes  # the alert's `for`, in minutes

    def counter(self, per_minute: float) -> str:
        return f"0+{number(per_minute)}x{self.samples}"

    def gauge(self, value: float) -> str:
        return f"{number(value)}x{self.samples}"

    def expected_labels(self, labels: dict[str, str]) -> dict[str, str]:
        if self.alert.kind in ("up", "missing_metrics", "probe") or not self.alert.by:
            return {k: v for k, v in labels.items() if k != "__name__"}
        return {name: labels.get(name, "") for name in self.alert.by}

    def build(self, value: float | None) -> Scenario:
        return getattr(self, f"_{self.alert.kind}")(value)

    def _up(self, value: float | None) -> Scenario:
        fire = value is not None
        up = _fixed_value(self.alert.condition) if fire else 1.0
        return Scenario({series("up", self.target): self.gauge(up)}, up, dict(self.target))

    def _missing_metrics(self, value: float | None) -> Scenario:
        data = {series("up", self.target): self.gauge(1)}
        if value is None:  # idle: the service exposes its catalog metrics (at zero traffic)
            metric = CATALOG[0]
            ref = MetricRef(metric=metric)
            data[series(metric.name, metric_labels(ref, self.target, {}))] = self.counter(0)
        return Scenario(data, 1.0, dict(self.target))

    def _ratio(self, value: float | None) -> Scenario:
        alert = self.alert
        denominator = 1000
        if value:
            while value * denominator < 100:
                denominator *= 10
        numerator = round((value if value is not None else alert.idle) * denominator)
        num_labels = metric_labels(alert.numerator, self.target, alert.example)
        den_labels = metric_labels(alert.denominator, self.target, alert.example)
        if alert.function == "rate":
            data = {
                series(alert.numerator.concrete_name, num_labels): self.counter(numerator),
                series(alert.denominator.concrete_name, den_labels): self.counter(denominator if value else 0),
            }
        else:  # gauges: the denominator (a capacity) stays when idle
            data = {
                series(alert.numerator.concrete_name, num_labels): self.gauge(numerator),
                series(alert.denominator.concrete_name, den_labels): self.gauge(denominator),
            }
        if alert.numerator.decoy:
            # Series the numerator's matchers must exclude, ten times larger: a broken matcher shows.
            decoy = metric_labels(alert.numerator, self.target, alert.example, alert.numerator.decoy)
            decoy.update(alert.numerator.decoy)
            data[series(alert.numerator.concrete_name, decoy)] = (
                self.counter(10 * denominator if value else 0) if alert.function == "rate" else self.gauge(0)
            )
        return Scenario(data, numerator / denominator, self.expected_labels(num_labels))

    def _quantile(self, value: float | None) -> Scenario:
        alert = self.alert
        metric: Metric = alert.metric.metric
        bounds = metric.buckets
        labels = metric_labels(alert.metric, self.target, alert.example)
        total = 100000  # observations per minute
        if value is None:
            cumulative = [0] * len(bounds)
            total = 0
            result = float("nan")
        else:
            cumulative, result = _quantile_buckets(bounds, alert.quantile, value, total)
        data = {}
        for bound, count in zip(bounds, cumulative):
            data[series(f"{metric.name}_bucket", {**labels, "le": openmetrics_float(bound)})] = self.counter(count)
        data[series(f"{metric.name}_bucket", {**labels, "le": "+Inf"})] = self.counter(total)
        data[series(f"{metric.name}_count", labels)] = self.counter(total)
        return Scenario(data, result, self.expected_labels(labels))

    def _gauge(self, value: float | None) -> Scenario:
        alert = self.alert
        labels = metric_labels(alert.metric, self.target, alert.example)
        if value is None:
            value = alert.idle
        elif not alert.tunable:
            value = _fixed_value(alert.condition)
        return Scenario({series(alert.metric.concrete_name, labels): self.gauge(value)}, value,
                        self.expected_labels(labels))

    def _rate(self, value: float | None) -> Scenario:
        alert = self.alert
        labels = metric_labels(alert.metric, self.target, alert.example)
        per_second = value or 0.0
        return Scenario({series(alert.metric.concrete_name, labels): self.counter(per_second * 60)}, per_second,
                        self.expected_labels(labels))

    def _busy(self, value: float | None) -> Scenario:
        """One CPU, idle (1 - value) of every second; idle: a wholly idle CPU."""
        alert = self.alert
        labels = metric_labels(alert.metric, self.target, alert.example)
        busy = value or 0.0
        idle_per_minute = (1 - busy) * 60
        return Scenario({series(alert.metric.concrete_name, labels): self.counter(idle_per_minute)},
                        1 - idle_per_minute / 60, self.expected_labels(labels))

    def _predict_linear(self, value: float | None) -> Scenario:
        """Free space falling linearly so that it runs out ``value`` seconds after the test looks.

        The test looks at minute ``samples - 5``; the prediction (and $value) is the free space
        ``threshold`` seconds later. Idle: constant free space.
        """
        alert = self.alert
        labels = metric_labels(alert.metric, self.target, alert.example)
        start = 100 * 2**30  # 100 GiB free at minute 0
        look = self.samples - 5
        if value is None:
            return Scenario({series(alert.metric.concrete_name, labels): self.gauge(start)}, float(start),
                            self.expected_labels(labels), measure=float("inf"))
        per_minute = start / (look + value / 60)
        horizon_minutes = alert.threshold / 60
        predicted = start - per_minute * (look + horizon_minutes)
        return Scenario({series(alert.metric.concrete_name, labels): f"{number(start)}-{number(per_minute)}x{self.samples}"},
                        predicted, self.expected_labels(labels), measure=value)

    def _changes(self, value: float | None) -> Scenario:
        """The start time moves once, a minute before the condition must have held for `for`."""
        alert = self.alert
        labels = metric_labels(alert.metric, self.target, alert.example)
        first = 1_700_000_000
        if value is None:
            return Scenario({series(alert.metric.concrete_name, labels): self.gauge(first)}, 0.0,
                            self.expected_labels(labels))
        change_at = self.samples - 5 - self.hold_minutes - 1
        values = f"{first}x{change_at - 1} {first + 3600}x{self.samples - change_at}"
        return Scenario({series(alert.metric.concrete_name, labels): values}, 1.0, self.expected_labels(labels))

    def _probe(self, value: float | None) -> Scenario:
        """A probe of the first probed instance, with the scrape of that instance up."""
        probe_labels = dict(self.target)
        service = probe_labels[SERVICE_LABEL]
        up_labels = {"job": service, "instance": probe_labels["instance"], SERVICE_LABEL: service}
        success = 0 if value is not None else 1
        return Scenario({
            series("probe_success", probe_labels): self.gauge(success),
            series("up", up_labels): self.gauge(1),
        }, float(success), probe_labels)


def _fixed_value(condition: str | None) -> float:
    """A value that meets a fixed condition such as '== 0'."""
    op, operand = condition.split()
    operand = float(operand)
    return {"==": operand, ">": operand + 1, ">=": operand, "<": operand - 1, "<=": operand, "!=": operand + 1}[op]


def _quantile_buckets(bounds: tuple[float, ...], q: float, value: float, total: int) -> tuple[list[int], float]:
    """Cumulative bucket counts whose q-quantile (as histogram_quantile interpolates it) is about ``value``.

    Observations go into two buckets: k into the bucket (lo, hi] holding ``value``, the rest into
    the first bucket; k is chosen so that the quantile's rank falls at ``value`` inside (lo, hi].
    Returns the counts and the quantile they really give.
    """
    index = next(i for i, bound in enumerate(bounds) if value <= bound)
    if index == 0:  # everything in the first bucket: the quantile is q of its bound
        return [total] * len(bounds), q * bounds[0]
    low, high = bounds[index - 1], bounds[index]
    fraction = min((value - low) / (high - low), q)
    inside = min(total, max(1, round((1 - q) * total / (1 - fraction))))
    cumulative = [total - inside if i < index else total for i in range(len(bounds))]
    rank = q * total - (total - inside)
    return cumulative, low + (high - low) * rank / inside


def _round3(value: float) -> float:
    return float(f"{value:.3g}")


def firing_value(alert: PackAlert, level: Level) -> float | None:
    """A value above the level (below the next one), as round as possible; below it for alerts that fire below."""
    if level.threshold is None:
        return 0.0  # any: fixed conditions ignore it
    if fires_below(alert):
        return _round3(level.threshold / 2)
    low, high = level.threshold, level.upper
    if alert.kind == "quantile":
        top = alert.metric.metric.buckets[-1]
        high = top if high is None else min(high, top)
    if high is not None:
        target = (low + high) / 2
    else:
        if alert.unit == "ratio":
            target = (low + 1) / 2 if low < 1 else low * 1.5
        else:
            target = low * 1.5 if low > 0 else 1.0
    rounded = _round3(target)
    return rounded if low < rounded and (high is None or rounded < high) else target


def silent_value(alert: PackAlert, level: Level) -> float | None:
    """A value below the lowest level, or None when only idle is below it."""
    if level.threshold is None or level.threshold <= 0:
        return None
    if fires_below(alert):
        return _round3((level.threshold + 1) / 2) if alert.unit == "ratio" else level.threshold * 2
    if alert.kind == "quantile":
        return alert.metric.metric.buckets[0] / 2
    return _round3(level.threshold / 2)


def pack_target(spec: Spec, topology: Topology, alert: PackAlert) -> dict[str, str]:
    """The labels Prometheus attaches to series of the alert's test target."""
    if alert.test_target == "service":
        service = spec.services[0]
        return {
            "job": service.name,
            "instance": topology.service_metrics_targets(service)[0],
            SERVICE_LABEL: service.name,
        }
    if alert.test_target == "probe":
        found = probes(spec, topology)
        if not found:
            raise ValueError(f"alerts/pack.yaml alert {alert.key}: test_target probe, but nothing is probed")
        probe = found[0]
        return {"job": PROBE_JOB, "instance": probe.instance, PROBE_LABEL: probe.probe, SERVICE_LABEL: probe.service}
    if alert.test_target not in STACK_JOBS:
        raise ValueError(f"alerts/pack.yaml alert {alert.key}: test_target {alert.test_target!r} is neither "
                         f"'service' nor a stack job of prometheus.yml ({', '.join(STACK_JOBS)})")
    return {"job": alert.test_target, "instance": stack_job_address(topology, alert.test_target)}


def expected_alerts(
    alert: PackAlert, knob: Knobs, rules: list[AlertRule], scenario: Scenario, rate_window: str
) -> tuple[ExpectedAlert, ...]:
    expected = []
    for level, rule in zip(levels(alert, knob), rules):
        if level.threshold is not None and not beyond(alert, scenario.compared, level.threshold):
            continue
        labels = {**scenario.labels, **rule.labels}
        text = description_for(alert, level, knob, rate_window)
        annotations = {
            "summary": rule.annotations["summary"],
            "description": expand_template(text, labels, scenario.value),
            "runbook_url": rule.annotations["runbook_url"],
        }
        expected.append(ExpectedAlert(labels, annotations))
    return tuple(expected)


def pack_cases(spec: Spec, topology: Topology, alert: PackAlert, knob: Knobs, rules: list[AlertRule]) -> list[AlertCase]:
    rate_window = rate_window_for(spec)
    look = minutes(window_for(alert, rate_window)) + minutes(knob.for_) + TEST_MARGIN_MINUTES
    eval_time = f"{look}m"
    builder = ScenarioBuilder(alert, pack_target(spec, topology, alert), samples=look + 5,
                              hold_minutes=minutes(knob.for_))
    alert_levels = levels(alert, knob)
    cases = []
    for level in reversed(alert_levels):
        scenario = builder.build(firing_value(alert, level))
        expected = expected_alerts(alert, knob, rules, scenario, rate_window)
        firing_levels = [lv for lv in alert_levels if lv.threshold is None or beyond(alert, scenario.compared, lv.threshold)]
        if level not in firing_levels or (level.upper is not None and scenario.compared >= level.upper):
            raise AssertionError(f"{alert.alert}: test input gives {scenario.compared}, not within {level}")
        what = f"at {format_value(alert.unit, scenario.compared)}" if level.threshold is not None else "when its condition holds"
        cases.append(AlertCase(
            f"{alert.alert} fires ({level.severity}) {what}", scenario.input, eval_time, ((alert.alert, expected),)
        ))
    below = silent_value(alert, alert_levels[0])
    if below is not None:
        scenario = builder.build(below)
        if beyond(alert, scenario.compared, alert_levels[0].threshold) or scenario.compared == alert_levels[0].threshold:
            raise AssertionError(f"{alert.alert}: silent input gives {scenario.compared}")
        side = "above" if fires_below(alert) else "below"
        cases.append(AlertCase(
            f"{alert.alert} stays silent {side} its threshold (at {format_value(alert.unit, scenario.compared)})",
            scenario.input, eval_time, ((alert.alert, ()),),
        ))
    if alert.kind == "probe":
        # The case only WebSocketTargetDown should speak for: the probe fails because the instance is down.
        down = builder.build(0.0)
        data = {name: (builder.gauge(0) if name.startswith("up{") else values) for name, values in down.input.items()}
        cases.append(AlertCase(f"{alert.alert} stays silent while the instance's scrape is down too",
                               data, eval_time, ((alert.alert, ()),)))
    idle = builder.build(None)
    no_nan: tuple[dict, ...] = ()
    if alert.kind in ("ratio", "quantile"):
        # Below any threshold is not enough: the value itself must be absent (or a real 0), not NaN.
        samples = [{"labels": series("", idle.labels), "value": number_or_int(idle.value)}] if alert.function == "none" else []
        no_nan = ({"expr": pack_value_expr(alert, rate_window), "eval_time": eval_time, "exp_samples": samples},)
    cases.append(AlertCase(f"{alert.alert} {IDLE_TITLES.get(alert.kind, 'stays silent at zero traffic')}",
                           idle.input, eval_time, ((alert.alert, ()),), promql_checks=no_nan))
    return cases


IDLE_TITLES = {
    "up": "stays silent while the target is up",
    "missing_metrics": "stays silent while the service exposes its metrics, at zero traffic",
    "busy": "stays silent while the CPU is idle",
    "predict_linear": "stays silent while free space holds steady",
    "changes": "stays silent while the process keeps running",
    "probe": "stays silent while the probe succeeds",
}


def number_or_int(value: float) -> float | int:
    """A whole number as an int, so an expected sample reads 0, not 0.0."""
    return int(value) if float(value).is_integer() else value


def idle_case(title: str, alerts: list[tuple[PackAlert, Knobs]], spec: Spec, topology: Topology) -> AlertCase:
    """Every alert of a file at once, over the union of their idle inputs: none may fire."""
    rate_window = rate_window_for(spec)
    look = max(minutes(window_for(a, rate_window)) + minutes(k.for_) for a, k in alerts) + TEST_MARGIN_MINUTES
    data: dict[str, str] = {}
    for alert, _ in alerts:
        idle = ScenarioBuilder(alert, pack_target(spec, topology, alert), samples=look + 5).build(None)
        for name, values in idle.input.items():
            if data.get(name, values) != values:
                raise AssertionError(f"idle inputs disagree on {name}")
            data[name] = values
    names = sorted({alert.alert for alert, _ in alerts})
    return AlertCase(title, data, f"{look}m", tuple((name, ()) for name in names))


# ---------------------------------------------------------------------------------------
# Custom alerts
# ---------------------------------------------------------------------------------------


def custom_rule(spec: Spec, topology: Topology, alert: CustomAlert) -> AlertRule:
    return AlertRule(
        name=alert.name,
        expr=alert.expr,
        for_=alert.for_,
        labels={**alert.labels, "severity": alert.severity},
        annotations={
            "summary": alert.summary,
            "description": alert.description,
            "runbook_url": runbook_url(spec, topology, alert.name),
        },
    )


def custom_cases(alert: CustomAlert, rule: AlertRule) -> list[AlertCase]:
    if alert.tests is None:
        if re.search(r"\babsent(_over_time)?\s*\(", alert.expr):
            return []  # fires without data by design; only the spec's own tests can say when it is silent
        look = f"{minutes(alert.for_) + TEST_MARGIN_MINUTES + 5}m"
        return [AlertCase(f"{alert.name} stays silent with no data", {}, look, ((alert.name, ()),))]
    test = alert.tests
    labels = {**test.labels, **rule.labels}
    annotations = {
        "summary": alert.summary,
        "description": test.description if test.description is not None else alert.description,
        "runbook_url": rule.annotations["runbook_url"],
    }
    firing = {item.series: item.values for item in test.input}
    silent = {item.series: item.values for item in test.silent_input}
    return [
        AlertCase(f"{alert.name} fires on the spec's test input", firing, test.eval_time,
                  ((alert.name, (ExpectedAlert(labels, annotations),)),), interval=test.interval),
        AlertCase(f"{alert.name} stays silent on the spec's silent input" if silent
                  else f"{alert.name} stays silent with no data",
                  silent, test.eval_time, ((alert.name, ()),), interval=test.interval),
    ]


# ---------------------------------------------------------------------------------------
# Everything together
# ---------------------------------------------------------------------------------------


@dataclass
class RuleSet:
    """Rule files and test files of one bundle, plus a runbook page per alert."""

    rules: dict[str, list[dict]] = field(default_factory=dict)  # file name -> groups
    notes: dict[str, str] = field(default_factory=dict)  # file name -> comment lines for its header
    tests: dict[str, TestFile] = field(default_factory=dict)
    pages: list[RunbookPage] = field(default_factory=list)


def build(spec: Spec, topology: Topology) -> RuleSet:
    pack: Pack = load_pack()
    result = RuleSet()
    chosen = enabled_pack_alerts(spec, topology)
    for group in pack.groups:
        members = [(a, k) for a, k in chosen if a.group == group.name]
        if not members:
            continue
        file = f"{group.name}.yml"
        rules_out, cases = [], []
        for alert, knob in members:
            rules = pack_rules(spec, topology, alert, knob)
            rules_out += [r.to_dict() for r in rules]
            cases += pack_cases(spec, topology, alert, knob, rules)
            result.pages.append(RunbookPage(
                name=alert.alert, source="pack", summary=alert.summary, description=rules[0].annotations["description"],
                rules=tuple(rules), key=alert.key, group=group.title, unit=alert.unit, knobs=knob, pack_alert=alert,
                rate_window=rate_window_for(spec), metric_names=_metric_names(alert),
                extra={
                    "value_expr": pack_value_expr(alert, rate_window_for(spec)),
                    "levels": [
                        (level.severity, None if level.threshold is None else format_threshold(alert.unit, level.threshold))
                        for level in levels(alert, knob)
                    ],
                },
            ))
        cases.append(idle_case(f"{group.title}: no alert fires at zero traffic", members, spec, topology))
        result.rules[file] = [{"name": f"{group.name}-alerts", "rules": rules_out}]
        result.tests[file] = TestFile((file,), tuple(cases))

    if spec.slos:
        built = slo_rules.build(spec, topology)
        result.rules.update(built.rule_files)
        result.notes.update(built.rule_notes)
        result.tests.update(built.test_files)
        result.pages += built.pages

    if spec.alerts.custom:
        rules_out, cases = [], []
        for alert in spec.alerts.custom:
            rule = custom_rule(spec, topology, alert)
            rules_out.append(rule.to_dict())
            cases += custom_cases(alert, rule)
            result.pages.append(RunbookPage(
                name=alert.name, source="custom", summary=alert.summary, description=alert.description,
                rules=(rule,), custom=alert,
            ))
        result.rules["custom.yml"] = [{"name": "custom-alerts", "rules": rules_out}]
        if cases:
            result.tests["custom.yml"] = TestFile(("custom.yml",), tuple(cases))
    return result


def _metric_names(alert: PackAlert) -> tuple[str, ...]:
    refs = [alert.metric, alert.numerator, alert.denominator]
    names = []
    for ref in refs:
        if ref is None:
            continue
        names.append(f'{{__name__=~"{ref.name_regex}"}}' if ref.name_regex else ref.concrete_name)
    if alert.kind in ("up", "missing_metrics"):
        names.append("up")
    if alert.kind == "probe":
        names += ["probe_success", "up"]
    return tuple(names)


_last_build: tuple[Spec, RuleSet] | None = None


def build_once(spec: Spec, topology: Topology) -> RuleSet:
    """``build``, shared by the rules and runbooks renderers of one render (same spec object).

    Safe because ``build`` is pure and the spec is frozen; the memo holds one entry.
    """
    global _last_build
    if _last_build is None or _last_build[0] is not spec:
        _last_build = (spec, build(spec, topology))
    return _last_build[1]


def runbook_pages(spec: Spec, topology: Topology) -> list[RunbookPage]:
    return build_once(spec, topology).pages


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    built = build_once(spec, topology)
    files = {f"{RULES_DIR}/{name}": rule_file(groups, built.notes.get(name, "")) for name, groups in built.rules.items()}
    for name, test in built.tests.items():
        files[f"{TESTS_DIR}/{name}"] = test_file(test)
    return files
