"""The built-in alert pack (alerts/pack.yaml) and the SLO alert windows (alerts/slo.yaml).

Both are data, checked when loaded: a mistake in them is a RuntimeError naming the entry, raised
the first time obsgen needs them (and by the test suite), never a silently wrong rule.
The spec model uses ``check_overrides`` to validate ``alerts.thresholds`` against this data;
the rules renderer uses ``knobs`` for the effective values.

No I/O beyond reading these package data files; no third-party imports beyond PyYAML.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from exporter import catalog
from exporter.catalog import Metric
from stack.durations import parse_duration
from stack.promtext import load_yaml, template_problems

KINDS = ("up", "missing_metrics", "ratio", "quantile", "gauge", "rate", "busy", "predict_linear", "changes", "probe")
# Components a group of alerts needs (pack.yaml `requires`): without them, the group is left out.
REQUIRES = ("node_exporter", "blackbox")
UNITS = ("ratio", "seconds", "count", "per_second")
SEVERITIES = ("critical", "warning", "info")
ALERT_NAME = re.compile(r"^[A-Z][A-Za-z0-9]{0,127}$")
SERVICE_TARGET = "service"

# Suffixes of the alerts every SLO produces; custom alerts may not use them.
SLO_BURN_SUFFIX = "ErrorBudgetBurn"
SLO_ABSENT_SUFFIX = "SLIAbsent"


class PackError(RuntimeError):
    """alerts/pack.yaml or alerts/slo.yaml is inconsistent (a bug in obsgen's data, not in a spec)."""


# ---------------------------------------------------------------------------------------
# Model of the pack
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricRef:
    """A metric an alert reads: from the catalog, by literal name, or by a name regex."""

    metric: Metric | None = None
    name: str | None = None
    name_regex: str | None = None
    example_name: str | None = None
    match: str = ""
    example: Mapping[str, str] = field(default_factory=dict)
    decoy: Mapping[str, str] = field(default_factory=dict)

    @property
    def concrete_name(self) -> str:
        """The name a test series carries."""
        if self.metric is not None:
            return self.metric.name
        return self.name or self.example_name or ""

    @property
    def type(self) -> str | None:
        return self.metric.type if self.metric is not None else None

    def selector(self, suffix: str = "", extra: tuple[str, ...] = ()) -> str:
        """PromQL selector text for this metric (``suffix`` such as _bucket for histograms)."""
        matchers = [m for m in (self.match, *extra) if m]
        if self.name_regex is not None:
            regex = self.name_regex + suffix
            return "{" + ",".join([f'__name__=~"{regex}"', *matchers]) + "}"
        name = self.concrete_name + suffix
        return f"{name}{{{','.join(matchers)}}}" if matchers else name


@dataclass(frozen=True)
class PackAlert:
    key: str
    alert: str
    group: str
    in_pack: bool
    kind: str
    severity: str
    for_: str
    summary: str
    description: str
    test_target: str
    unit: str | None = None
    threshold: float | None = None
    critical: float | None = None
    condition: str | None = None
    match: str = ""
    metric: MetricRef | None = None
    numerator: MetricRef | None = None
    denominator: MetricRef | None = None
    function: str = "rate"
    quantile: float | None = None
    aggregate: str = "sum"
    by: tuple[str, ...] = ()
    example: Mapping[str, str] = field(default_factory=dict)
    idle: float = 0.0
    below: bool = False  # fires below the threshold (memory available) instead of above
    range: str | None = None  # the alert's own range (predict_linear, changes) instead of the rate window

    @property
    def tunable(self) -> bool:
        """Whether the alert has a threshold a spec may change (else it fires on a fixed condition)."""
        return self.threshold is not None

    @property
    def paired(self) -> bool:
        return self.critical is not None

    @property
    def condition_text(self) -> str:
        if self.kind == "missing_metrics":
            return "a service is up but exposes no catalog metric"
        if self.kind == "probe":
            return "a probe fails while the scrape of its instance is not down"
        return f"value {self.condition}"


@dataclass(frozen=True)
class PackGroup:
    name: str
    title: str
    in_pack: bool
    requires: str | None = None  # a component (REQUIRES) the group's metrics come from


@dataclass(frozen=True)
class Pack:
    rate_window: str
    groups: tuple[PackGroup, ...]
    alerts: tuple[PackAlert, ...]

    def by_key(self) -> dict[str, PackAlert]:
        return {a.key: a for a in self.alerts}

    def alert_names(self) -> set[str]:
        return {a.alert for a in self.alerts}


@dataclass(frozen=True)
class BurnCondition:
    long: str
    short: str
    budget_percent: Decimal


@dataclass(frozen=True)
class BurnAlert:
    name: str  # page | ticket
    for_: str
    conditions: tuple[BurnCondition, ...]


@dataclass(frozen=True)
class SLOSettings:
    windows: tuple[str, ...]
    min_slo_window: str
    page: BurnAlert
    ticket: BurnAlert
    absent_for: str
    sum_interval: str  # the interval of the group recording hourly sums
    max_samples: int  # samples one ratio rule may read per evaluation from the recorded rates
    test_burn: Decimal  # the generated tests burn at this many times each factor
    quiet_burn: Decimal  # ... and check that this many times the lowest factor never fires


# ---------------------------------------------------------------------------------------
# Effective knobs: pack defaults merged with a spec's override
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knobs:
    enabled: bool
    threshold: float | None
    critical: float | None
    for_: str
    severity: str


def knobs(alert: PackAlert, override: Any | None) -> Knobs:
    """The pack's defaults for ``alert`` with the set fields of ``override`` (a spec Threshold)."""

    def pick(name: str, default):
        value = getattr(override, name, None) if override is not None else None
        return default if value is None else value

    return Knobs(
        enabled=pick("enabled", True),
        threshold=pick("threshold", alert.threshold),
        critical=pick("critical", alert.critical),
        for_=pick("for_", alert.for_),
        severity=pick("severity", alert.severity),
    )


def threshold_bounds(alert: PackAlert) -> tuple[float | None, float | None]:
    """(lowest allowed, exclusive highest allowed) for the alert's levels."""
    if alert.kind == "quantile":
        buckets = alert.metric.metric.buckets
        # A quantile above the largest finite bucket is reported as that bound: it can never exceed it.
        return buckets[0], buckets[-1]
    if alert.unit in ("ratio", "per_second", "seconds", "count"):
        return 0.0, None
    return None, None


def check_overrides(overrides: Mapping[str, Any]) -> list[str]:
    """Problems with a spec's ``alerts.thresholds``, each naming its key, all at once."""
    pack = load_pack()
    known = pack.by_key()
    problems: list[str] = []
    for key in overrides:
        override = overrides[key]
        alert = known.get(key)
        if alert is None:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{key}: not a built-in alert{hint} (known: {', '.join(sorted(known))})")
            continue
        if getattr(override, "threshold", None) is not None and not alert.tunable:
            problems.append(f"{key}: {alert.alert} has no threshold; it fires on a fixed condition "
                            f"({alert.condition_text})")
        if getattr(override, "critical", None) is not None and not alert.paired:
            problems.append(f"{key}: {alert.alert} has a single level; `critical` applies only to "
                            f"{', '.join(a.key for a in pack.alerts if a.paired)}")
        if alert.kind == "changes" and getattr(override, "for_", None) is not None and \
                duration_seconds(override.for_) + 180 >= duration_seconds(alert.range):
            problems.append(f"{key}.for: {override.for_} is too long: {alert.alert} looks back {alert.range}, "
                            "so `for` must be shorter than that by more than 3m")
        if not alert.tunable:
            continue
        merged = knobs(alert, override)
        low, high = threshold_bounds(alert)
        for name, value in (("threshold", merged.threshold), ("critical", merged.critical)):
            if value is None:
                continue
            if low is not None and value < low:
                problems.append(f"{key}.{name}: {value:g} is below the lowest meaningful value {low:g}")
            if high is not None and value >= high:
                problems.append(
                    f"{key}.{name}: {value:g} must be below {high:g}, the largest bucket bound of "
                    f"{alert.metric.metric.name} (a quantile above it cannot be measured)"
                )
        if alert.paired and merged.critical <= merged.threshold:
            problems.append(
                f"{key}: critical ({merged.critical:g}) must be above threshold ({merged.threshold:g})"
            )
        if alert.paired and merged.severity == "critical":
            problems.append(
                f"{key}: the lower level of a warning+critical pair cannot be critical; "
                "lower `critical` instead"
            )
    return problems


# ---------------------------------------------------------------------------------------
# Loading and checking
# ---------------------------------------------------------------------------------------

_DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
_TOKENS = {"threshold", "for", "window"}


def _read(name: str) -> dict:
    text = resources.files("alerts").joinpath(name).read_text(encoding="utf-8")
    data = load_yaml(text)
    if not isinstance(data, dict):
        raise PackError(f"alerts/{name}: expected a mapping at the top")
    return data


def _duration(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value or not _DURATION.match(value):
        raise PackError(f"{where}: {value!r} is not a Prometheus duration")
    return value


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration (already checked)."""
    return parse_duration(text)


def _parse_matchers(where: str, text: str) -> None:
    import promql_parser

    if not text:
        return
    try:
        promql_parser.parse(f"x{{{text}}}")
    except Exception as exc:  # noqa: BLE001 - the parser's own error type
        raise PackError(f"{where}: matchers {text!r} do not parse: {exc}") from None


def _metric_ref(where: str, raw: Any) -> MetricRef:
    if not isinstance(raw, dict):
        raise PackError(f"{where}: expected a mapping with metric, name or name_regex")
    allowed = {"metric", "name", "name_regex", "example_name", "match", "example", "decoy"}
    unknown = set(raw) - allowed
    if unknown:
        raise PackError(f"{where}: unknown fields {sorted(unknown)}")
    sources = [k for k in ("metric", "name", "name_regex") if raw.get(k)]
    if len(sources) != 1:
        raise PackError(f"{where}: give exactly one of metric (a catalog constant), name or name_regex")
    metric = None
    if raw.get("metric"):
        metric = getattr(catalog, raw["metric"], None)
        if not isinstance(metric, Metric):
            raise PackError(f"{where}: {raw['metric']!r} is not a Metric constant of exporter/catalog.py")
    if raw.get("name_regex"):
        example_name = raw.get("example_name")
        if not example_name or not re.fullmatch(raw["name_regex"], example_name):
            raise PackError(f"{where}: example_name must be a name that name_regex matches")
    match = raw.get("match", "") or ""
    _parse_matchers(where, match)
    return MetricRef(
        metric=metric,
        name=raw.get("name"),
        name_regex=raw.get("name_regex"),
        example_name=raw.get("example_name"),
        match=match,
        example=dict(raw.get("example") or {}),
        decoy=dict(raw.get("decoy") or {}),
    )


_REQUIRED = {
    "up": ("match", "condition"),
    "missing_metrics": (),
    "ratio": ("numerator", "denominator", "by", "unit", "threshold"),
    "quantile": ("metric", "quantile", "by", "unit", "threshold"),
    "gauge": ("by",),
    "rate": ("by",),
    "busy": ("by", "unit", "threshold"),
    "predict_linear": ("unit", "threshold", "range"),
    "changes": ("condition", "range"),
    "probe": ("condition",),
}
_FIELDS = {
    "key", "alert", "kind", "severity", "for", "summary", "description", "test_target", "unit",
    "threshold", "critical", "condition", "match", "metric", "name", "name_regex", "example_name",
    "numerator", "denominator", "function", "quantile", "aggregate", "by", "example", "idle", "below", "range",
}


def _alert(group: str, in_pack: bool, raw: Any, index: int) -> PackAlert:
    where = f"alerts/pack.yaml groups.{group}.alerts[{index}]"
    if not isinstance(raw, dict):
        raise PackError(f"{where}: expected a mapping")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise PackError(f"{where}: unknown fields {sorted(unknown)}")
    key = raw.get("key")
    if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
        raise PackError(f"{where}: key must be snake_case")
    where = f"alerts/pack.yaml alert {key}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise PackError(f"{where}: kind must be one of {', '.join(KINDS)}")
    for name in ("alert", "severity", "for", "summary", "description", "test_target", *_REQUIRED[kind]):
        if raw.get(name) in (None, "", []):
            raise PackError(f"{where}: {name} is required for kind {kind}")
    if not ALERT_NAME.match(raw["alert"]):
        raise PackError(f"{where}: alert name {raw['alert']!r} is not CamelCase")
    if raw["severity"] not in SEVERITIES:
        raise PackError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
    if raw.get("unit") is not None and raw["unit"] not in UNITS:
        raise PackError(f"{where}: unit must be one of {', '.join(UNITS)}")
    if (raw.get("threshold") is None) == (raw.get("condition") is None) and kind != "missing_metrics":
        raise PackError(f"{where}: give a threshold (tunable) or a fixed condition, not both or neither")
    if raw.get("condition") is not None and not re.fullmatch(r"(==|!=|<|>|<=|>=) -?\d+(\.\d+)?", raw["condition"]):
        raise PackError(f"{where}: condition must look like '== 0'")
    if raw.get("critical") is not None and raw.get("threshold") is None:
        raise PackError(f"{where}: critical needs a threshold")
    summary = raw["summary"]
    if "{{" in summary or not summary.endswith(".") or summary.count(". ") > 0:
        raise PackError(f"{where}: summary must be one static sentence ending with a period")
    description = raw["description"]
    problems = template_problems(description)
    if problems:
        raise PackError(f"{where}: description uses template actions obsgen cannot test: {problems}")
    for token in re.findall(r"\[\[(\w+)\]\]", description):
        if token not in _TOKENS:
            raise PackError(f"{where}: unknown token [[{token}]] (known: {sorted(_TOKENS)})")
    if "[[threshold]]" in description and raw.get("threshold") is None:
        raise PackError(f"{where}: [[threshold]] in a description of an alert without threshold")

    if raw.get("below") and (raw.get("critical") is not None or raw.get("threshold") is None):
        raise PackError(f"{where}: an alert that fires below its threshold has one level (no critical)")
    if raw.get("range") is not None:
        _duration(f"{where}.range", raw["range"])
    if kind == "changes" and duration_seconds(raw["for"]) + 180 >= duration_seconds(raw["range"]):
        raise PackError(f"{where}: for must be shorter than range by more than 3m (the unit tests look inside it)")
    metric = None
    if kind in ("quantile", "gauge", "rate", "busy", "predict_linear", "changes"):
        metric = _metric_ref(where, {k: raw[k] for k in ("metric", "name", "name_regex", "example_name", "match") if k in raw})
        if kind == "quantile" and metric.type != "histogram":
            raise PackError(f"{where}: a quantile alert needs a catalog histogram")
        if kind in ("rate", "busy") and metric.type not in (None, "counter"):
            raise PackError(f"{where}: a rate alert needs a counter")
        if kind == "gauge" and metric.type not in (None, "gauge"):
            raise PackError(f"{where}: a gauge alert needs a gauge")
    numerator = denominator = None
    function = raw.get("function", "rate")
    if kind == "ratio":
        if function not in ("rate", "none"):
            raise PackError(f"{where}: function must be rate (counters) or none (gauges)")
        numerator = _metric_ref(f"{where}.numerator", raw["numerator"])
        denominator = _metric_ref(f"{where}.denominator", raw["denominator"])
        wanted = "counter" if function == "rate" else "gauge"
        for ref in (numerator, denominator):
            if ref.type not in (None, wanted):
                raise PackError(f"{where}: function {function} needs {wanted}s")
    if kind == "up":
        _parse_matchers(where, raw["match"])
    quantile = raw.get("quantile")
    if kind == "quantile" and not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise PackError(f"{where}: quantile must be between 0 and 1")
    aggregate = raw.get("aggregate", "sum")
    if aggregate not in ("sum", "max", "min", "avg"):
        raise PackError(f"{where}: aggregate must be sum, max, min or avg")
    return PackAlert(
        key=key,
        alert=raw["alert"],
        group=group,
        in_pack=in_pack,
        kind=kind,
        severity=raw["severity"],
        for_=_duration(f"{where}.for", raw["for"]),
        summary=summary,
        description=" ".join(description.split()),
        test_target=raw["test_target"],
        unit=raw.get("unit"),
        threshold=None if raw.get("threshold") is None else float(raw["threshold"]),
        critical=None if raw.get("critical") is None else float(raw["critical"]),
        condition=raw.get("condition"),
        match=raw.get("match", "") or "",
        metric=metric,
        numerator=numerator,
        denominator=denominator,
        function=function,
        quantile=None if quantile is None else float(quantile),
        aggregate=aggregate,
        by=tuple(raw.get("by") or ()),
        example=dict(raw.get("example") or {}),
        idle=float(raw.get("idle", 0)),
        below=bool(raw.get("below", False)),
        range=raw.get("range"),
    )


@lru_cache(maxsize=1)
def load_pack() -> Pack:
    """alerts/pack.yaml, checked; raises PackError naming the first bad entry."""
    raw = _read("pack.yaml")
    rate_window = _duration("alerts/pack.yaml rate_window", raw.get("rate_window"))
    groups: list[PackGroup] = []
    alerts: list[PackAlert] = []
    for group_name, group in (raw.get("groups") or {}).items():
        if not isinstance(group, dict) or not isinstance(group.get("alerts"), list):
            raise PackError(f"alerts/pack.yaml groups.{group_name}: expected title, in_pack and alerts")
        in_pack = bool(group.get("in_pack", False))
        requires = group.get("requires")
        if requires is not None and requires not in REQUIRES:
            raise PackError(f"alerts/pack.yaml groups.{group_name}.requires: one of {', '.join(REQUIRES)}")
        groups.append(PackGroup(group_name, str(group.get("title", group_name)), in_pack, requires))
        alerts.extend(_alert(group_name, in_pack, item, i) for i, item in enumerate(group["alerts"]))
    for attribute in ("key", "alert"):
        seen: set[str] = set()
        for alert in alerts:
            value = getattr(alert, attribute)
            if value in seen:
                raise PackError(f"alerts/pack.yaml: duplicate {attribute} {value!r}")
            seen.add(value)
    for alert in alerts:
        if alert.alert.endswith((SLO_BURN_SUFFIX, SLO_ABSENT_SUFFIX)):
            raise PackError(f"alerts/pack.yaml: {alert.alert} uses a suffix reserved for SLO alerts")
    return Pack(rate_window=rate_window, groups=tuple(groups), alerts=tuple(alerts))


@lru_cache(maxsize=1)
def load_slo_settings() -> SLOSettings:
    """alerts/slo.yaml, checked."""
    raw = _read("slo.yaml")
    windows = tuple(_duration("alerts/slo.yaml windows", w) for w in raw.get("windows") or ())
    if not windows:
        raise PackError("alerts/slo.yaml: windows is empty")

    def burn(name: str) -> BurnAlert:
        entry = (raw.get("alerts") or {}).get(name)
        if not isinstance(entry, dict) or not entry.get("conditions"):
            raise PackError(f"alerts/slo.yaml alerts.{name}: expected for and conditions")
        conditions = []
        for i, cond in enumerate(entry["conditions"]):
            where = f"alerts/slo.yaml alerts.{name}.conditions[{i}]"
            long, short = _duration(where, cond.get("long")), _duration(where, cond.get("short"))
            if long not in windows or short not in windows:
                raise PackError(f"{where}: long and short must be among windows {list(windows)}")
            if duration_seconds(short) >= duration_seconds(long):
                raise PackError(f"{where}: the short window must be shorter than the long one")
            percent = Decimal(str(cond.get("budget_percent")))
            if not 0 < percent <= 100:
                raise PackError(f"{where}: budget_percent must be in (0, 100]")
            conditions.append(BurnCondition(long, short, percent))
        return BurnAlert(name, _duration(f"alerts/slo.yaml alerts.{name}.for", entry.get("for")), tuple(conditions))

    tests = raw.get("tests") or {}

    def factor(key: str, low: str, high: str) -> Decimal:
        value = tests.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not Decimal(low) < Decimal(str(value)) < Decimal(high):
            raise PackError(f"alerts/slo.yaml tests.{key}: expected a number between {low} and {high}, not {value!r}")
        return Decimal(str(value))

    max_samples = raw.get("max_samples")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 100:
        raise PackError(f"alerts/slo.yaml max_samples: expected a whole number of at least 100, not {max_samples!r}")
    settings = SLOSettings(
        windows=windows,
        min_slo_window=_duration("alerts/slo.yaml min_slo_window", raw.get("min_slo_window")),
        page=burn("page"),
        ticket=burn("ticket"),
        absent_for=_duration("alerts/slo.yaml absent_for", raw.get("absent_for")),
        sum_interval=_duration("alerts/slo.yaml sum_interval", raw.get("sum_interval")),
        max_samples=max_samples,
        test_burn=factor("burn", "1", "2"),
        quiet_burn=factor("quiet_burn", "0", "1"),
    )
    seconds = sorted(duration_seconds(w) for w in windows)
    if duration_seconds(settings.min_slo_window) <= seconds[-1]:
        raise PackError("alerts/slo.yaml: min_slo_window must be longer than every alert window")
    if len(set(seconds)) != len(seconds):
        raise PackError("alerts/slo.yaml: windows repeat a duration")
    # Every longer window is built from the shortest window's recorded rates; a window that is
    # not a whole number of sum intervals could not be summed from the hourly sums exactly.
    interval = duration_seconds(settings.sum_interval)
    if not seconds[0] <= interval <= duration_seconds(settings.min_slo_window) or interval % seconds[0]:
        raise PackError("alerts/slo.yaml: sum_interval must be a multiple of the shortest window, "
                        "and no longer than min_slo_window")
    if duration_seconds(settings.min_slo_window) % interval:
        raise PackError("alerts/slo.yaml: min_slo_window must be a whole number of sum_interval")
    return settings


def camel(name: str) -> str:
    """An SLO or receiver name (lowercase, hyphens) as CamelCase: api-availability -> ApiAvailability."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("-") if part)


def slo_alert_names(slo_name: str) -> tuple[str, str]:
    """(burn-rate alert, absent alert) names of an SLO."""
    base = camel(slo_name)
    return f"{base}{SLO_BURN_SUFFIX}", f"{base}{SLO_ABSENT_SUFFIX}"
