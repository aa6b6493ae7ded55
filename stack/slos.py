"""SLO arithmetic and the names of the series SLO rules record (pure).

Shared by the renderers that need them: the rules renderer records these series, the dashboards
renderer draws them, the runbooks explain them. Keeping them here (below every renderer) means no
renderer imports another for a name or a factor.

For an SLO named ``x``:

    slo:sli_error:ratio_rate<w>{slo="x"}          bad/all over window w (every burn-rate window and
                                                   the SLO's own window)
    slo:objective:ratio{slo="x"}                   the objective as a ratio (99.9 -> 0.999)
    slo:error_budget:ratio{slo="x"}                the budget as a ratio (99.9 -> 0.001)
    slo:error_budget_remaining:ratio{slo="x"}      1 - (bad/all over the SLO window) / budget
    slo:error_budget_consumed:ratio{slo="x"}       (bad/all over the SLO window) / budget
    slo:error_budget_exhaustion:seconds{slo="x"}   time until the budget is spent at the current 1h burn
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from alerts.pack import BurnAlert, SLOSettings, load_slo_settings, slo_alert_names
from stack.spec import SLO, parse_duration

ERROR_RATIO = "slo:sli_error:ratio_rate"
OBJECTIVE = "slo:objective:ratio"
BUDGET = "slo:error_budget:ratio"
BUDGET_REMAINING = "slo:error_budget_remaining:ratio"
BUDGET_CONSUMED = "slo:error_budget_consumed:ratio"
TIME_TO_EXHAUSTION = "slo:error_budget_exhaustion:seconds"

__all__ = [
    "BUDGET", "BUDGET_CONSUMED", "BUDGET_REMAINING", "ERROR_RATIO", "OBJECTIVE", "TIME_TO_EXHAUSTION",
    "BurnWindow", "budget", "burn_factor", "burn_windows", "decimal_text", "percent", "record",
    "settings", "slo_alert_names", "slo_selector", "sorted_windows", "windows_for",
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
    return sorted(settings().windows, key=parse_duration)


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
