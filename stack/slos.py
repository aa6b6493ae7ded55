"""SLO arithmetic and the names of the series SLO rules record (pure).

Shared by the renderers that need them: the rules renderer records these series, the dashboards
renderer draws them, the runbooks explain them. Keeping them here (below every renderer) means no
renderer imports another for a name or a factor.

For an SLO named ``x``:

    slo:sli_error:ratio_rate<w>{slo="x"}          bad/all over window w (every burn-rate window and
                                                   the SLO's own window), a ratio of sums
    slo:objective:ratio{slo="x"}                   the objective as a ratio (99.9 -> 0.999)
    slo:error_budget:ratio{slo="x"}                the budget as a ratio (99.9 -> 0.001)
    slo:error_budget_remaining:ratio{slo="x"}      1 - (bad/all over the SLO window) / budget
    slo:error_budget_consumed:ratio{slo="x"}       (bad/all over the SLO window) / budget
    slo:error_budget_exhaustion:seconds{slo="x"}   time until the budget is spent at the current 1h
                                                   burn: 0 once spent, +Inf while nothing burns

and the sums they are built from (see ``plan``):

    slo:sli_errors:rate5m{slo="x"}, slo:sli_total:rate5m{slo="x"}
        bad and all events per second over the shortest window, from the service's own series
    slo:sli_errors:rate5m_sum1h{slo="x"}, slo:sli_total:rate5m_sum1h{slo="x"}
        the sum of those rates' samples over the last hour, recorded once an hour; read only
        through range functions (an instant selector would find nothing 5 minutes after a write)

Also here: how many samples each ratio reads per evaluation, and a model of when the burn-rate
alerts fire and resolve for a given burn (``Detection``), which the generated promtool tests and
docs/alerts.md take their bounds from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Callable, Literal

from alerts.pack import BurnAlert, SLOSettings, load_slo_settings, slo_alert_names
from stack.spec import SLO, parse_duration

ERROR_RATIO = "slo:sli_error:ratio_rate"
OBJECTIVE = "slo:objective:ratio"
BUDGET = "slo:error_budget:ratio"
BUDGET_REMAINING = "slo:error_budget_remaining:ratio"
BUDGET_CONSUMED = "slo:error_budget_consumed:ratio"
TIME_TO_EXHAUSTION = "slo:error_budget_exhaustion:seconds"
ERRORS = "slo:sli_errors"
TOTAL = "slo:sli_total"

__all__ = [
    "BUDGET", "BUDGET_CONSUMED", "BUDGET_REMAINING", "ERRORS", "ERROR_RATIO", "OBJECTIVE", "RATIO_READS",
    "TIME_TO_EXHAUSTION", "TOTAL",
    "BurnWindow", "Cadence", "Detection", "Plan", "Window", "base_window", "budget", "burn_factor",
    "burn_windows", "decimal_text", "percent", "plan", "rate_record", "record", "settings",
    "slo_alert_names", "slo_selector", "sorted_windows", "sum_record", "windows_for",
]


def settings() -> SLOSettings:
    """The burn-rate windows and factors (alerts/slo.yaml, checked on load)."""
    return load_slo_settings()


def decimal_text(value: Decimal) -> str:
    """A Decimal as PromQL reads it: no exponent, no trailing zeros, at most 10 significant digits."""
    value = Decimal(f"{value:.10g}")
    return format(value.normalize(), "f")


def budget(slo: SLO) -> Decimal:
    """The error budget as a ratio: 99.9 -> 0.001 (exactly, from the decimal text of the objective)."""
    return (Decimal(100) - Decimal(str(slo.objective))) / Decimal(100)


def percent(slo: SLO) -> str:
    """The objective as people write it: 99.9%."""
    return f"{decimal_text(Decimal(str(slo.objective)))}%"


def burn_factor(slo: SLO, long_window: str, budget_percent: Decimal) -> Decimal:
    """How many times faster than sustainable spends ``budget_percent`` of the budget within ``long_window``."""
    ratio = Decimal(int(parse_duration(slo.window))) / Decimal(int(parse_duration(long_window)))
    return Decimal(decimal_text(budget_percent / Decimal(100) * ratio))


def record(window: str) -> str:
    """The recorded error ratio over ``window``: slo:sli_error:ratio_rate5m."""
    return f"{ERROR_RATIO}{window}"


def slo_selector(slo: SLO) -> str:
    return f'{{slo="{slo.name}"}}'


def sorted_windows() -> list[str]:
    """The burn-rate windows, shortest first."""
    return list(_sorted_windows(settings().windows))


@lru_cache(maxsize=4)
def _sorted_windows(windows: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(windows, key=parse_duration))


def windows_for(slo: SLO) -> tuple[list[str], str | None]:
    """(the burn-rate windows, the SLO window when it is not among them)."""
    windows = sorted_windows()
    own = None if any(parse_duration(w) == parse_duration(slo.window) for w in windows) else slo.window
    return windows, own


@dataclass(frozen=True)
class BurnWindow:
    """One condition of a burn-rate alert: both windows above ``factor`` times the sustainable burn."""

    alert: str  # "page" or "ticket"
    severity: str
    long: str
    short: str
    factor: Decimal
    budget_percent: Decimal
    for_: str


def burn_windows(slo: SLO) -> list[BurnWindow]:
    """Every condition of the SLO's page and ticket alerts, with its factor, page first."""
    result = []
    burn_alerts: tuple[BurnAlert, ...] = (settings().page, settings().ticket)
    for burn in burn_alerts:
        severity = slo.page_severity if burn.name == "page" else slo.ticket_severity
        for condition in burn.conditions:
            result.append(BurnWindow(
                burn.name, severity, condition.long, condition.short,
                burn_factor(slo, condition.long, condition.budget_percent), condition.budget_percent, burn.for_,
            ))
    return result


# ---------------------------------------------------------------------------------------
# How each window's ratio is built, and what it costs
# ---------------------------------------------------------------------------------------

# A window's ratio reads its sums three times: bad / (all > 0) or 0 * all (0 at zero traffic).
RATIO_READS = 3

Source = Literal["service", "rates", "sums"]


def base_window() -> str:
    """The shortest window: the only one whose rates are taken from the service's own series."""
    return sorted_windows()[0]


def rate_record(kind: Literal["errors", "total"]) -> str:
    """slo:sli_errors:rate5m / slo:sli_total:rate5m: bad and all events per second over the shortest window."""
    return f"{ERRORS if kind == 'errors' else TOTAL}:rate{base_window()}"


def sum_record(kind: Literal["errors", "total"]) -> str:
    """slo:sli_errors:rate5m_sum1h: the samples of the 5m rate summed over one sum interval."""
    return f"{rate_record(kind)}_sum{settings().sum_interval}"


@dataclass(frozen=True)
class Window:
    """One recorded error ratio: its duration, where its sums come from and what it reads.

    ``service``: the shortest window, rates of the service's own series (their count is the
    service's: see docs/alerts.md); ``rates``: sums of the recorded 5m rates, one sample per
    evaluation; ``sums``: sums of the hourly sums, one sample per sum interval.
    """

    duration: str
    seconds: float
    source: Source
    samples: int  # samples read per evaluation from recorded series (0 for the service's own)

    @property
    def lag(self) -> float:
        """How old, at most, the newest data in this ratio is (seconds), beyond one evaluation."""
        return parse_duration(settings().sum_interval) if self.source == "sums" else 0.0


@dataclass(frozen=True)
class Plan:
    """Every ratio an SLO records, shortest first; the SLO window's among them."""

    windows: tuple[Window, ...]
    slo_window: Window
    evaluation_interval: float
    sum_interval: str

    def window(self, duration: str) -> Window:
        seconds = parse_duration(duration)
        return next(w for w in self.windows if w.seconds == seconds)

    @property
    def sum_samples(self) -> int:
        """Samples one hourly-sum rule reads per evaluation (one sum interval of 5m rates)."""
        return math.ceil(parse_duration(self.sum_interval) / self.evaluation_interval)


def plan(slo: SLO, evaluation_interval: str) -> Plan:
    """Which sums each window's ratio is built from, at the spec's evaluation interval.

    A window sums the recorded 5m rates when that reads at most ``max_samples`` samples per
    evaluation; otherwise (when it is a whole number of sum intervals) the hourly sums.
    """
    config = settings()
    every = parse_duration(evaluation_interval)
    interval = parse_duration(config.sum_interval)
    burn, own = windows_for(slo)
    durations = burn + ([own] if own else [])
    result = []
    for duration in durations:
        seconds = parse_duration(duration)
        if duration == burn[0]:
            result.append(Window(duration, seconds, "service", 0))
            continue
        from_rates = RATIO_READS * math.ceil(seconds / every)
        if from_rates <= config.max_samples or seconds % interval:
            result.append(Window(duration, seconds, "rates", from_rates))
        else:
            result.append(Window(duration, seconds, "sums", RATIO_READS * math.ceil(seconds / interval)))
    windows = tuple(sorted(result, key=lambda w: w.seconds))
    slo_seconds = parse_duration(slo.window)
    return Plan(windows, next(w for w in windows if w.seconds == slo_seconds), every, config.sum_interval)


# ---------------------------------------------------------------------------------------
# When the burn-rate alerts fire and resolve: a conservative model
# ---------------------------------------------------------------------------------------
#
# Traffic is steady; the error ratio, in units of the budget (the burn), follows a profile:
# burn b(x) from each change point on, data from time 0. A window w of duration d, read at time
# t, would ideally give the mean burn over (t - d, t]. What Prometheus computes differs within
# known limits, and the model keeps every value those limits allow:
#
# - rates: a 5m rate covers the span between its first and last sample (one scrape less than
#   5m), and summing them over d smooths the window with a 5m box: the same as a mean of windows
#   ending up to 5m earlier;
# - the sum of d / interval samples holds one more on Prometheus 2 (closed ranges);
# - a window built from hourly sums ends at the last hourly evaluation: up to one sum interval
#   earlier (promtool, which evaluates every group at every step, sees the mean over that lag);
# - the alerts read the ratios recorded up to one evaluation earlier, and see the scrapes up to
#   one scrape interval late.
#
# So the window reads the mean over (v - d', v] for some v in [t - shift, t] and d' in
# [d - scrape, d + longer]: the bounds below are the least and the greatest such mean. A condition
# holds for sure when both of its windows are surely above the factor, and surely not when one
# of them surely is not; the alert fires for sure at t when its condition held for sure at every
# evaluation of the last `for`.


@dataclass(frozen=True)
class Cadence:
    """How often the series are scraped and every rule group is evaluated (seconds)."""

    scrape: float
    evaluation: float


@dataclass(frozen=True)
class Profile:
    """The burn (error ratio / budget) from each change point on, data starting at 0."""

    changes: tuple[tuple[float, float], ...]  # (time, burn), first at 0, times increasing

    def burn_at(self, x: float) -> float:
        burn = 0.0
        for time, value in self.changes:
            if time > x:
                break
            burn = value
        return burn

    def integral(self, x: float) -> float:
        """The burn integrated over (0, x]."""
        total, points = 0.0, [*self.changes, (math.inf, 0.0)]
        for (start, burn), (end, _) in zip(points, points[1:]):
            if x <= start:
                break
            total += burn * (min(x, end) - start)
        return total

    def mean(self, end: float, duration: float) -> float | None:
        """The mean burn over (end - duration, end] where there is data; None before any."""
        start = max(0.0, end - duration)
        if end <= 0 or end <= start:
            return None
        return (self.integral(end) - self.integral(start)) / (end - start)


@dataclass(frozen=True)
class WindowModel:
    seconds: float
    shortest: float
    longest: float
    shift: float  # how much earlier than the evaluation the window may end


def window_model(window: Window, cadence: Cadence) -> WindowModel:
    base = parse_duration(base_window())
    d, scrape, every = window.seconds, cadence.scrape, cadence.evaluation
    if window.source == "service":
        return WindowModel(d, d - scrape, d, scrape + every)
    if window.source == "rates":
        return WindowModel(d, d - scrape, d + every, base + scrape + every)
    interval = parse_duration(settings().sum_interval)
    return WindowModel(d, d - scrape, d + interval, base + scrape + interval + every)


_TIE = 1e-9  # a window exactly at its factor may read either side of it


class Detection:
    """When an SLO's page and ticket fire and resolve for a burn profile, at a cadence.

    Times are seconds from the start of the data; evaluations happen at every multiple of the
    cadence's evaluation interval. States: True (surely firing), False (surely not), None.
    """

    @classmethod
    def of(cls, slo: SLO, plan_: Plan, cadence: Cadence, profile: Profile) -> "Detection":
        """A shared instance: every SLO with the same window behaves the same (the model depends
        on the factors and windows only), so many SLOs cost one model and its memos."""
        key = (slo.window, plan_.windows, plan_.evaluation_interval, cadence, profile)
        if key not in _DETECTIONS:
            if len(_DETECTIONS) > 4096:
                _DETECTIONS.clear()
            _DETECTIONS[key] = cls(slo, plan_, cadence, profile)
        return _DETECTIONS[key]

    def __init__(self, slo: SLO, plan_: Plan, cadence: Cadence, profile: Profile):
        self.slo, self.plan, self.cadence, self.profile = slo, plan_, cadence, profile
        self.searches: dict[tuple, Times] = {}
        self.windows = {w.duration: window_model(w, cadence) for w in plan_.windows}
        self.conditions = {alert: [(w.long, w.short, float(w.factor)) for w in burn_windows(slo) if w.alert == alert]
                           for alert in ("page", "ticket")}
        self.holds = {"page": parse_duration(settings().page.for_), "ticket": parse_duration(settings().ticket.for_)}
        self._expr: dict[tuple[str, float], bool | None] = {}

    def bounds(self, duration: str, t: float) -> tuple[float, float] | None:
        """The least and the greatest burn the window's ratio may read at t (None: no data yet)."""
        model = self.windows[duration]
        times = [time for time, _ in self.profile.changes]
        shifts = {0.0, model.shift}
        lengths = {model.shortest, model.longest}
        for length in (model.shortest, model.longest):
            for time in times:
                for edge in (time, time + length):
                    if 0 <= t - edge <= model.shift:
                        shifts.add(t - edge)
        values = []
        for shift in shifts:
            end = t - shift
            candidates = set(lengths)
            for time in times:
                if model.shortest <= end - time <= model.longest:
                    candidates.add(end - time)
            if model.shortest <= end <= model.longest:
                candidates.add(end)
            for length in candidates:
                mean = self.profile.mean(end, length)
                if mean is not None:
                    values.append(mean)
        return (min(values), max(values)) if values else None

    def condition(self, long: str, short: str, factor: float, t: float) -> bool | None:
        states = []
        for duration in (long, short):
            bounds = self.bounds(duration, t)
            if bounds is None or bounds[1] < factor * (1 - _TIE):
                return False
            states.append(bounds[0] > factor * (1 + _TIE))
        return True if all(states) else None

    def expression(self, alert: str, t: float) -> bool | None:
        """Whether the alert's expression returns its series at evaluation t."""
        key = (alert, t)
        if key not in self._expr:
            states = [self.condition(long, short, factor, t) for long, short, factor in self.conditions[alert]]
            self._expr[key] = True if any(s is True for s in states) else (
                False if all(s is False for s in states) else None)
        return self._expr[key]

    def firing(self, alert: str, t: float) -> bool | None:
        every = self.cadence.evaluation
        hold = self.holds[alert]
        steps = math.ceil(hold / every - 1e-9)
        if t < hold:
            return False
        recent = [t - i * every for i in range(steps + 1)]
        if any(self.expression(alert, s) is False for s in recent if s > t - hold or s == t):
            return False
        return True if all(self.expression(alert, s) is True for s in recent) else None

    # -- searches over evaluations --------------------------------------------------

    def step(self, t: float) -> float:
        """The first evaluation at or after t."""
        every = self.cadence.evaluation
        return math.ceil(t / every - 1e-9) * every

    def first(self, test: Callable[[float], bool], start: float, end: float, monotone: bool = True) -> float | None:
        """The first evaluation in [start, end] that passes ``test`` (binary search when the test,
        once passed, stays passed)."""
        every = self.cadence.evaluation
        low, high = round(self.step(start) / every), math.floor(end / every + 1e-9)
        if low > high:
            return None
        if not monotone:
            return next((i * every for i in range(low, high + 1) if test(i * every)), None)
        if not test(high * every):
            return None
        while low < high:
            middle = (low + high) // 2
            if test(middle * every):
                high = middle
            else:
                low = middle + 1
        return low * every


@dataclass(frozen=True)
class Times:
    """Seconds from a change in the burn until an alert surely has (``by``) and until it possibly
    has (``earliest``) changed state; None: it never does within the horizon looked at."""

    earliest: float | None
    by: float | None


_DETECTIONS: dict[tuple, Detection] = {}


def time_to_fire(detection: Detection, alert: str, start: float, horizon: float) -> Times:
    """After the burn changes at ``start`` (from healthy to a steady burn), when ``alert`` fires."""
    key = ("fire", alert, start, horizon)
    if key not in detection.searches:
        detection.searches[key] = _time_to_fire(detection, alert, start, horizon)
    return detection.searches[key]


def _time_to_fire(detection: Detection, alert: str, start: float, horizon: float) -> Times:
    possible = detection.first(lambda t: detection.firing(alert, t) is not False, start, start + horizon)
    sure = detection.first(lambda t: detection.firing(alert, t) is True, start, start + horizon)
    return Times(None if possible is None else possible - start, None if sure is None else sure - start)


def time_to_resolve(detection: Detection, alert: str, stop: float, horizon: float) -> Times:
    """After the errors stop at ``stop``, when ``alert`` (firing at ``stop``) stops firing."""
    key = ("resolve", alert, stop, horizon)
    if key not in detection.searches:
        detection.searches[key] = _time_to_resolve(detection, alert, stop, horizon)
    return detection.searches[key]


def _time_to_resolve(detection: Detection, alert: str, stop: float, horizon: float) -> Times:
    possible = detection.first(lambda t: detection.firing(alert, t) is not True, stop, stop + horizon,
                               monotone=False)
    sure = detection.first(lambda t: detection.firing(alert, t) is False, stop, stop + horizon, monotone=False)
    return Times(None if possible is None else possible - stop, None if sure is None else sure - stop)


def history_for(detection: Detection, alert: str, burn: float) -> float:
    """Healthy data enough before a steady ``burn`` for ``alert`` to fire as after endless health.

    A window w of a condition with factor f < burn crosses f after w * f / burn of burning. With
    only H of health before, it reads burn * t / (H + t) until full, which crosses f no sooner if
    H >= w * (1 - f / burn); the model's longest window and latest end add their slack. Windows
    of conditions the burn cannot cross need nothing (their ratio never exceeds the burn).
    """
    needed = 0.0
    for long, short, factor in detection.conditions[alert]:
        if burn <= factor:
            continue
        for duration in (long, short):
            model = detection.windows[duration]
            needed = max(needed, model.longest * (1 - factor / burn) + model.shift)
    return detection.step(needed)


# ---------------------------------------------------------------------------------------
# Samples a rule reads per evaluation
# ---------------------------------------------------------------------------------------


def samples_per_evaluation(expr: str, evaluation_interval: str, scrape_interval: str,
                           series: Callable[[str, list[tuple[str, str, str]]], int]) -> int:
    """The samples one evaluation of ``expr`` reads, as Prometheus 3 counts them.

    Every selector is read on its own (``a / b or 0 * b`` reads b twice). An instant selector
    reads one sample per series; a range selector one per sample in its range: range / scrape
    interval for the service's series, range / evaluation interval for series a rule records at
    every evaluation, range / sum interval for the hourly sums. ``series(name, matchers)`` says how
    many series a selector selects (1 for a recorded SLO series).
    """
    import promql_parser

    ops = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
    total = 0

    def matchers(selector) -> list[tuple[str, str, str]]:
        return [(m.name, ops[str(m.op).split(".")[-1]], m.value) for m in selector.matchers.matchers]

    def every(name: str) -> float:
        if name.startswith(f"{ERRORS}:") or name.startswith(f"{TOTAL}:"):
            if name.endswith(f"_sum{settings().sum_interval}"):
                return parse_duration(settings().sum_interval)
            return parse_duration(evaluation_interval)
        if name.startswith("slo:"):
            return parse_duration(evaluation_interval)
        return parse_duration(scrape_interval)

    def visit(node) -> None:
        nonlocal total
        if isinstance(node, promql_parser.MatrixSelector):
            selector = node.vector_selector
            count = series(selector.name, matchers(selector))
            total += count * math.ceil(node.range.total_seconds() / every(selector.name) - 1e-9)
            return
        if isinstance(node, promql_parser.VectorSelector):
            total += series(node.name, matchers(node))
            return
        for attribute in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attribute, None)
            if isinstance(child, promql_parser.Expr):
                visit(child)
        for child in getattr(node, "args", None) or ():
            visit(child)

    visit(promql_parser.parse(expr))
    return total


# ---------------------------------------------------------------------------------------
# The detection table of docs/alerts.md
# ---------------------------------------------------------------------------------------


def _minutes_text(seconds: float) -> str:
    whole = int(round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    mins, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{mins}m" if mins else "",
             f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


def _span(times: Times | None) -> str:
    if times is None or times.earliest is None:
        return "never"
    if times.by is None:
        return f"not before {_minutes_text(times.earliest)}, not sure to"
    if times.earliest == times.by:
        return _minutes_text(times.by)
    return f"{_minutes_text(times.earliest)} – {_minutes_text(times.by)}"


def detection_rows(slo: SLO, plan_: Plan, cadence: Cadence) -> list[tuple[str, str, str, str, str]]:
    """(burn, page fires, ticket fires, page resolves, ticket resolves) for the docs' table.

    Burns: a 100 % error outage, a 10 % one, each factor times the tests' burn, and the tests'
    quiet burn; each after endless health and steady until every alert it raises surely fired,
    then stopped. Times from the burn's start (fires) or its end (resolves), earliest – surely by.
    """
    config = settings()
    factors = sorted({w.factor for w in burn_windows(slo)}, reverse=True)
    burns: list[tuple[str, float]] = [("100 % errors", 1 / float(budget(slo))), ("10 % errors", 0.1 / float(budget(slo)))]
    burns += [(f"{decimal_text(f * config.test_burn)}x ({config.test_burn} × {decimal_text(f)})",
               float(f * config.test_burn)) for f in factors]
    burns.append((f"{decimal_text(factors[-1] * config.quiet_burn)}x ({config.quiet_burn} × {decimal_text(factors[-1])})",
                  float(factors[-1] * config.quiet_burn)))
    horizon = 6 * max(w.seconds for w in plan_.windows if w.seconds <= 3 * 86400)
    rows = []
    for label, burn in burns:
        if burn * float(budget(slo)) > 1 + 1e-12:
            continue
        start = detection = None
        probe = Detection(slo, plan_, cadence, Profile(((0, 0.0),)))
        start = max(history_for(probe, alert, burn) for alert in ("page", "ticket"))
        detection = Detection(slo, plan_, cadence, Profile(((0, 0.0), (start, burn))))
        fires = {alert: time_to_fire(detection, alert, start, horizon) for alert in ("page", "ticket")}
        raised = [t.by for t in fires.values() if t.by is not None]
        resolves: dict[str, Times | None] = {"page": None, "ticket": None}
        if raised:
            stop = start + max(raised)
            after = Detection(slo, plan_, cadence, Profile(((0, 0.0), (start, burn), (stop, 0.0))))
            for alert, times in fires.items():
                if times.by is not None:
                    resolves[alert] = time_to_resolve(after, alert, stop, horizon)
        rows.append((label, _span(fires["page"]), _span(fires["ticket"]),
                     _span(resolves["page"]) if resolves["page"] else "–",
                     _span(resolves["ticket"]) if resolves["ticket"] else "–"))
    return rows


def detection_table(slo: SLO, plan_: Plan, cadence: Cadence) -> str:
    """The rows as a Markdown table."""
    lines = ["| burn | page fires | ticket fires | page resolves | ticket resolves |",
             "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in detection_rows(slo, plan_, cadence)]
    return "\n".join(lines)
