"""Grafana dashboards from data: definition files in ``dashboards/`` and custom spec panels.

A definition (``dashboards/*.yaml``) says what to show: rows of panels with their queries.
This module decides how Grafana gets it: panel ids, grid positions, datasources, variables and
the JSON shape of the pinned Grafana. Plain dicts are built here rather than with
grafana-foundation-sdk: no build targets Grafana 13 (the stack's pin; pip's default pick targets
10.1), and the few shapes needed are easier to read and to check as data than through typed
builders. The SDK's models check them instead (stack/grafana_schema.py, `obsgen check`).

Metric names come from ``exporter/catalog.py``: a definition writes ``@ACTIVE_CONNECTIONS``
(a Metric constant) and this module writes the constant's exposition name. Pure: the
definition files are package data, read once.

The SLO dashboard is not a file: ``slo_definition`` builds its definition from the spec's SLOs
(one row per SLO, with that SLO's objective and burn-rate factors as thresholds) and it goes
through the same builder. Dashboard uids come from ``stack.dashboard_ids``, which the runbooks
renderer reads too.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exporter import catalog
from stack import slos as slo_series
from stack.dashboard_ids import MAX_UID_LENGTH, SLO_DASHBOARD_TITLE, UID_PATTERN, builtin_titles, uid_for
from stack.promtext import load_yaml
from stack.spec import SLO, CustomDashboard, Spec, grafana_promql_for_parsing, parse_duration

SCHEMA_VERSION = 41  # Grafana 12's dashboard JSON schema; Grafana 13 still reads and migrates it
GRID_COLUMNS = 24

# Datasource uids and names: the datasource provisioning file (grafana.py) and every panel use
# these, so a link cannot point at a datasource that does not exist.
PROMETHEUS = {"type": "prometheus", "uid": "prometheus", "name": "Prometheus"}
LOKI = {"type": "loki", "uid": "loki", "name": "Loki"}
JAEGER = {"type": "jaeger", "uid": "jaeger", "name": "Jaeger"}
ALERTMANAGER = {"type": "alertmanager", "uid": "alertmanager", "name": "Alertmanager"}
DATASOURCE_VARIABLE = "datasource"  # Prometheus panels query ${datasource}, defaulting to PROMETHEUS
DASHBOARD_TAG = "obsgen"

PanelType = Literal[
    "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "logs", "traces", "alertlist"
]
METRIC_PANELS = ("timeseries", "stat", "gauge", "bargauge", "table", "state-timeline")
ThresholdStyle = Literal["off", "line", "dashed", "area", "line+area", "dashed+area"]


class DashboardDefinitionError(ValueError):
    """A dashboard definition that cannot be rendered; the message names where and why."""


# ---------------------------------------------------------------------------------------
# The definition format (dashboards/*.yaml), checked on load
# ---------------------------------------------------------------------------------------


class _Definition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueryDef(_Definition):
    expr: str = Field(min_length=1)
    legend: str = ""


class ThresholdDef(_Definition):
    """One step: from ``value`` up (the first step has no value: everything below the next)."""

    color: str = Field(min_length=1)
    value: float | None = None


class MappingDef(_Definition):
    """Show ``text`` (in ``color``) instead of the number ``value``."""

    value: float
    text: str = Field(min_length=1)
    color: str | None = None


class PanelDef(_Definition):
    title: str = Field(min_length=1)
    type: PanelType = "timeseries"
    description: str = ""
    width: int = Field(12, ge=1, le=GRID_COLUMNS)
    height: int = Field(8, ge=2, le=40)
    unit: str = "short"
    datasource: Literal["prometheus", "loki"] | None = Field(
        None, description="For metric panels: Prometheus (default) or a LogQL metric query on Loki."
    )
    expr: str | None = None
    legend: str = ""
    queries: list[QueryDef] = []
    exemplars: bool = False
    limit: int = Field(20, ge=1, le=1000, description="Rows for traces and alertlist panels.")
    thresholds: list[ThresholdDef] = Field(
        default_factory=list, description="Steps, lowest first; stat-like panels color by them, timeseries draw them."
    )
    threshold_style: ThresholdStyle = Field("off", description="How a timeseries draws its thresholds.")
    mappings: list[MappingDef] = []
    min: float | None = None
    max: float | None = None
    decimals: int | None = Field(None, ge=0, le=10)
    alert_filter: str = Field("", description="alertlist panels: label matchers the alerts must carry.")
    no_value: str | None = Field(
        None, description="Metric panels: what Grafana shows instead of \"No data\" when the queries return nothing."
    )

    @model_validator(mode="after")
    def _thresholds_rise(self) -> "PanelDef":
        if self.thresholds:
            values = [t.value for t in self.thresholds[1:]]
            if self.thresholds[0].value is not None or any(v is None for v in values):
                raise ValueError("thresholds: the first step has no value, every later step has one")
            if any(b <= a for a, b in zip(values, values[1:])):  # type: ignore[operator]
                raise ValueError("thresholds: values must rise from step to step")
        if self.threshold_style != "off" and self.type != "timeseries":
            raise ValueError("threshold_style applies to timeseries panels")
        if self.alert_filter and self.type != "alertlist":
            raise ValueError("alert_filter applies to alertlist panels")
        if self.no_value is not None and self.type not in METRIC_PANELS:
            raise ValueError("no_value applies to metric panels")
        return self

    @model_validator(mode="after")
    def _queries_fit_type(self) -> "PanelDef":
        if self.expr is not None and self.queries:
            raise ValueError("give either expr (with legend) or queries, not both")
        needs_query = self.type in METRIC_PANELS or self.type == "logs"
        if needs_query and not self.all_queries():
            raise ValueError(f"a {self.type} panel needs expr or queries")
        if not needs_query and self.all_queries():
            raise ValueError(f"a {self.type} panel takes no query")
        if self.type == "logs" and len(self.all_queries()) != 1:
            raise ValueError("a logs panel takes exactly one LogQL query")
        if self.datasource is not None and self.type not in METRIC_PANELS:
            raise ValueError(f"a {self.type} panel has a fixed datasource")
        return self

    def all_queries(self) -> list[QueryDef]:
        if self.expr is not None:
            return [QueryDef(expr=self.expr, legend=self.legend)]
        return list(self.queries)

    @property
    def source(self) -> dict:
        if self.type == "logs" or self.datasource == "loki":
            return LOKI
        if self.type == "traces":
            return JAEGER
        return PROMETHEUS


class VariableDef(_Definition):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    label: str = ""
    query: str | None = Field(None, description="Prometheus label_values(...) query.")
    services: bool = Field(False, description="One option per service of the spec (for logs and traces).")

    @model_validator(mode="after")
    def _one_source(self) -> "VariableDef":
        if (self.query is None) == (not self.services):
            raise ValueError("a variable needs exactly one of query or services: true")
        if self.name == DATASOURCE_VARIABLE:
            raise ValueError(f"${DATASOURCE_VARIABLE} is added to every dashboard; choose another name")
        return self


class RowDef(_Definition):
    title: str | None = None
    collapsed: bool = Field(False, description="Start folded (a titled row only); Grafana opens it on click.")
    requires: Literal["node_exporter", "blackbox", "blackbox_tls"] | None = Field(
        None, description="Shown only when the bundle has it: host metrics, probes, probes over TLS.")
    panels: list[PanelDef] = Field(min_length=1)

    @model_validator(mode="after")
    def _collapsed_needs_title(self) -> "RowDef":
        if self.collapsed and self.title is None:
            raise ValueError("only a titled row can be collapsed")
        return self


class DashboardDef(_Definition):
    title: str = Field(min_length=1)
    uid: str | None = Field(None, pattern=UID_PATTERN)
    description: str = ""
    tags: list[str] = []
    refresh: str = "30s"
    time_from: str = "now-1h"
    selector: str = Field("", description="Matchers every @NAME in a panel query carries.")
    metrics: dict[str, str] = Field(
        default_factory=dict, description="Third-party metrics this dashboard reads, as @NAME: exposition name."
    )
    variables: list[VariableDef] = []
    rows: list[RowDef] = Field(min_length=1)
    # Built-in definitions name metrics by @NAME; custom spec panels are plain PromQL, where @
    # is PromQL's own modifier and must stay as written.
    expand_refs: bool = True

    @model_validator(mode="after")
    def _names(self) -> "DashboardDef":
        clash = sorted(name for name in self.metrics if isinstance(getattr(catalog, name, None), catalog.Metric))
        if clash:
            raise ValueError(f"metrics {', '.join(clash)} would shadow exporter/catalog.py constants")
        names = [v.name for v in self.variables]
        if len(set(names)) != len(names):
            raise ValueError("variable names must be unique")
        return self


# ---------------------------------------------------------------------------------------
# Metric references: @NAME -> the catalog's exposition name (+ selector)
# ---------------------------------------------------------------------------------------

_REF = re.compile(r"@([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)(?:_(bucket|sum|count)\b)?(?:\{([^}]*)\})?")


def expand_metric_refs(expr: str, selector: str = "", metrics: dict[str, str] | None = None) -> str:
    """Replace every @NAME in ``expr`` by its metric name with ``selector`` and its own matchers."""
    metrics = metrics or {}

    def replace(match: re.Match[str]) -> str:
        ref, suffix, own = match.group(1), match.group(2), match.group(3)
        metric = getattr(catalog, ref, None)
        if isinstance(metric, catalog.Metric):
            if metric.type == "histogram" and not suffix:
                raise DashboardDefinitionError(
                    f"@{ref} is a histogram: query @{ref}_bucket (quantiles), _sum or _count"
                )
            if metric.type != "histogram" and suffix:
                raise DashboardDefinitionError(f"@{ref} is a {metric.type}: it has no _{suffix} series")
            name = metric.name + (f"_{suffix}" if suffix else "")
        elif ref in metrics:
            if suffix:
                raise DashboardDefinitionError(f"@{ref}_{suffix}: declare the full series name under metrics")
            name = metrics[ref]
        else:
            known = sorted(n for n, v in vars(catalog).items() if isinstance(v, catalog.Metric)) + sorted(metrics)
            raise DashboardDefinitionError(
                f"@{ref} is neither a Metric in exporter/catalog.py nor declared under metrics; known: {', '.join(known)}"
            )
        matchers = [m.strip() for m in (selector, own or "") if m and m.strip()]
        return name + ("{" + ",".join(matchers) + "}" if matchers else "")

    return _REF.sub(replace, expr)


def _check_promql(expr: str, where: str) -> None:
    import promql_parser

    try:
        promql_parser.parse(grafana_promql_for_parsing(expr))
    except Exception as exc:  # the parser raises ValueError or its own error type
        raise DashboardDefinitionError(f"{where}: query does not parse: {exc}\n  {expr}") from None


# ---------------------------------------------------------------------------------------
# Definitions: built-in files and custom spec dashboards
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def builtin_definitions() -> tuple[DashboardDef, ...]:
    """Every ``dashboards/*.yaml``, in file-name order, checked on load."""
    folder = resources.files("dashboards")
    definitions = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        where = f"dashboards/{entry.name}"
        try:
            definition = DashboardDef.model_validate(load_yaml(entry.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as exc:
            raise DashboardDefinitionError(f"{where}: {exc}") from None
        if definition.uid is not None:
            # A fixed uid would be the same in every project: two bundles in one Grafana would collide.
            raise DashboardDefinitionError(f"{where}: a built-in dashboard takes no uid (it is derived per project)")
        definitions.append(definition)
    if tuple(d.title for d in definitions) != builtin_titles():
        raise DashboardDefinitionError("dashboards/: titles differ from what stack.dashboard_ids read")
    return tuple(definitions)


def custom_definition(custom: CustomDashboard) -> DashboardDef:
    """A spec's custom dashboard as a definition: one untitled row, PromQL as written."""
    panels = [
        PanelDef(
            title=p.title,
            type=p.type,
            description=p.description,
            width=p.width,
            unit=p.unit,
            expr=p.expr,
            legend=p.legend,
        )
        for p in custom.panels
    ]
    return DashboardDef(
        title=custom.title, uid=custom.uid, tags=["custom"], rows=[RowDef(panels=panels)], expand_refs=False
    )


# ---------------------------------------------------------------------------------------
# The SLO dashboard: one row per SLO of the spec, over the series the SLO rules record
# ---------------------------------------------------------------------------------------

EXPANDED_SLO_ROWS = 3  # with more SLOs than this, their rows start collapsed under the overview
ALERT_STATES = (
    MappingDef(value=0, text="OK", color="green"),
    MappingDef(value=1, text="pending", color="orange"),
    MappingDef(value=2, text="firing", color="red"),
)
BURN_UNIT = "suffix:×"  # a burn rate is a multiple of the sustainable rate


def slo_window_record(slo: SLO) -> str:
    """The recorded error ratio over the SLO's own window (slo:sli_error:ratio_rate30d)."""
    windows, own = slo_series.windows_for(slo)
    if own is None:  # the SLO window is one of the burn-rate windows, recorded under that name
        own = next(w for w in windows if parse_duration(w) == parse_duration(slo.window))
    return slo_series.record(own)


def alert_state_query(alertname: str, matchers: str) -> str:
    """2 while the alert fires, 1 while it is pending, else 0: never empty, so "OK" shows as such."""
    selector = f'ALERTS{{alertname="{alertname}",{matchers}'
    return f'max({selector},alertstate="firing"}}) * 2 or max({selector},alertstate="pending"}}) or vector(0)'


def burn_rate_query(slo: SLO, window: str) -> str:
    """The burn rate over ``window`` exactly as the burn-rate alert computes it: error ratio / budget."""
    return f"{slo_series.record(window)}{slo_series.slo_selector(slo)} / {slo_series.decimal_text(slo_series.budget(slo))}"


def exhaustion_query(slo: SLO, burn_window: str) -> str:
    """Time to exhaustion, capped at the SLO window (longer reads as "more than <window>").

    The cap also stands in when the recorded series is absent while nothing burns over
    ``burn_window`` (no error, or no traffic): the budget then lasts longer than any window.
    """
    selector = slo_series.slo_selector(slo)
    cap = int(parse_duration(slo.window))
    # (ratio == 0) + cap is the cap, labelled like the recorded series, so that `or` keeps one series.
    return (f"clamp({slo_series.TIME_TO_EXHAUSTION}{selector}, 0, {cap})"
            f" or on(slo) ({slo_series.record(burn_window)}{selector} == 0) + {cap}")


def _percent_decimals(slo: SLO) -> int:
    """One decimal more than the objective has: 99.9 -> 99.95%, so a miss is visible."""
    exponent = Decimal(str(slo.objective)).normalize().as_tuple().exponent
    return max(0, -int(exponent)) + 1


def _slo_row(slo: SLO, collapsed: bool) -> RowDef:
    selector = slo_series.slo_selector(slo)
    burn_alert, absent_alert = slo_series.slo_alert_names(slo.name)
    burns = slo_series.burn_windows(slo)
    fastest = burns[0]  # the page's 1h & 5m condition: the SLI panel and time to exhaustion use its windows
    objective = float(Decimal(str(slo.objective)) / 100)
    percent, window = slo_series.percent(slo), slo.window
    sli_steps = [ThresholdDef(color="red"), ThresholdDef(color="green", value=objective)]
    decimals = _percent_decimals(slo)
    cap = int(parse_duration(window))
    alert_queries = [
        QueryDef(expr=alert_state_query(burn_alert, f'slo="{slo.name}",slo_alert="page"'), legend="page"),
        QueryDef(expr=alert_state_query(burn_alert, f'slo="{slo.name}",slo_alert="ticket"'), legend="ticket"),
        QueryDef(expr=alert_state_query(absent_alert, f'slo="{slo.name}"'), legend="SLI absent"),
    ]
    panels = [
        PanelDef(
            title=f"SLI against the {percent} objective",
            description=(f"{slo.description} " if slo.description else "")
            + f"The share of good events over the last {fastest.short} and {fastest.long}; the dashed line is "
            f"the objective, {percent}.",
            width=12, unit="percentunit", decimals=decimals,
            queries=[
                QueryDef(expr=f"1 - {slo_series.record(fastest.short)}{selector}", legend=f"SLI over {fastest.short}"),
                QueryDef(expr=f"1 - {slo_series.record(fastest.long)}{selector}", legend=f"SLI over {fastest.long}"),
            ],
            thresholds=sli_steps, threshold_style="dashed",
        ),
        PanelDef(
            title=f"SLI over {window}", type="stat", width=4, unit="percentunit", decimals=decimals,
            description=f"The share of good events over the SLO window ({window}), next to the objective.",
            queries=[
                QueryDef(expr=f"1 - {slo_window_record(slo)}{selector}", legend=f"SLI over {window}"),
                QueryDef(expr=f"{slo_series.OBJECTIVE}{selector}", legend="objective"),
            ],
            thresholds=sli_steps,
        ),
        PanelDef(
            title="Error budget remaining", type="stat", width=4, unit="percentunit", decimals=1,
            description=(f"The share of the {window} error budget not yet spent: 1 - (error ratio over {window}) "
                         "/ budget. Below zero the objective is missed."),
            expr=f"{slo_series.BUDGET_REMAINING}{selector}", legend="remaining",
            thresholds=[ThresholdDef(color="red"), ThresholdDef(color="orange", value=0),
                        ThresholdDef(color="green", value=0.25)],
        ),
        PanelDef(
            title="Error budget consumed", type="stat", width=4, unit="percentunit", decimals=1,
            description=f"The share of the {window} error budget spent: (error ratio over {window}) / budget.",
            expr=f"{slo_series.BUDGET_CONSUMED}{selector}", legend="consumed",
            thresholds=[ThresholdDef(color="green"), ThresholdDef(color="orange", value=0.75),
                        ThresholdDef(color="red", value=1)],
        ),
        PanelDef(
            title="Error budget remaining over time", width=8, unit="percentunit", decimals=1,
            description="Budget left at each moment; the dashed line at 0 is the objective missed over the window.",
            expr=f"{slo_series.BUDGET_REMAINING}{selector}", legend="remaining",
            thresholds=[ThresholdDef(color="red"), ThresholdDef(color="green", value=0)], threshold_style="dashed",
        ),
        PanelDef(
            title=f"Time to exhaustion at the {fastest.long} burn", type="stat", width=4, unit="s",
            description=(f"How long the remaining budget lasts if errors keep coming as over the last "
                         f"{fastest.long}. Shown as \"more than {window}\" when it outlasts the window "
                         "(or nothing burns), \"spent\" when no budget is left."),
            expr=exhaustion_query(slo, fastest.long), legend="time to exhaustion",
            thresholds=[ThresholdDef(color="red"), ThresholdDef(color="orange", value=86400),
                        ThresholdDef(color="green", value=7 * 86400)],
            mappings=[MappingDef(value=0, text="spent", color="red"),
                      MappingDef(value=cap, text=f"more than {window}", color="green")],
        ),
        PanelDef(
            title="Alerts", type="stat", width=4,
            description=(f"{burn_alert} (page and ticket) and {absent_alert}, as Prometheus evaluates them now."),
            queries=alert_queries, mappings=list(ALERT_STATES),
        ),
        PanelDef(
            title="Alert history", type="state-timeline", width=8,
            description="When each of this SLO's alerts was pending (orange) or firing (red).",
            queries=alert_queries, mappings=list(ALERT_STATES),
        ),
    ]
    for burn in burns:
        factor = float(burn.factor)
        panels.append(PanelDef(
            title=f"Burn rate {burn.long} & {burn.short}: {burn.alert} above {slo_series.decimal_text(burn.factor)}×",
            description=(
                f"Error ratio / budget ({slo_series.decimal_text(slo_series.budget(slo))}) over {burn.long} and "
                f"{burn.short}. 1× spends the budget exactly over {window}; when both lines stay above the dashed "
                f"line ({slo_series.decimal_text(burn.factor)}×, {slo_series.decimal_text(burn.budget_percent)}% "
                f"of the budget in {burn.long}) for {burn.for_}, {burn_alert} raises its {burn.alert}."
            ),
            width=max(6, GRID_COLUMNS // len(burns)), unit=BURN_UNIT,
            queries=[QueryDef(expr=burn_rate_query(slo, burn.long), legend=f"over {burn.long}"),
                     QueryDef(expr=burn_rate_query(slo, burn.short), legend=f"over {burn.short}")],
            thresholds=[ThresholdDef(color="green"), ThresholdDef(color="red", value=factor)],
            threshold_style="dashed", min=0,
        ))
    return RowDef(title=f"{slo.name}: {percent} over {window}", collapsed=collapsed, panels=panels)


def slo_definition(spec: Spec) -> DashboardDef:
    """The SLO dashboard of ``spec`` (which has SLOs): an overview, then one row per SLO."""
    names = "|".join(slo.name for slo in spec.slos)  # SLO names are [a-z0-9-]: nothing to escape
    overview = RowDef(title="All SLOs", panels=[
        PanelDef(
            title="Error budget remaining by SLO", type="bargauge", width=12, unit="percentunit", decimals=1,
            description="The share of each SLO's error budget not yet spent over its window.",
            expr=f'{slo_series.BUDGET_REMAINING}{{slo=~"{names}"}}', legend="{{slo}}",
            thresholds=[ThresholdDef(color="red"), ThresholdDef(color="orange", value=0),
                        ThresholdDef(color="green", value=0.25)],
            min=0, max=1,
        ),
        PanelDef(
            title="SLO alerts pending or firing", type="alertlist", width=12,
            description="Burn-rate and SLI-absent alerts of these SLOs, from Prometheus's rules.",
            alert_filter=f'{{slo=~"{names}"}}',
        ),
    ])
    collapsed = len(spec.slos) > EXPANDED_SLO_ROWS
    return DashboardDef(
        title=SLO_DASHBOARD_TITLE,
        description=("Service level objectives of this project: SLIs against their objectives, error budgets, "
                     "burn rates against their alert thresholds, and the SLO alerts."),
        tags=["slo"],
        refresh="1m",
        time_from="now-24h",
        rows=[overview, *(_slo_row(slo, collapsed) for slo in spec.slos)],
        expand_refs=False,  # plain PromQL: slo:... recorded series, no catalog references
    )


# ---------------------------------------------------------------------------------------
# Definition -> Grafana dashboard JSON
# ---------------------------------------------------------------------------------------


def _ref(source: dict) -> dict:
    """A panel's or target's datasource reference (Prometheus goes through $datasource)."""
    if source is PROMETHEUS:
        return {"type": PROMETHEUS["type"], "uid": "${" + DATASOURCE_VARIABLE + "}"}
    return {"type": source["type"], "uid": source["uid"]}


def _metric_targets(panel: PanelDef, definition: DashboardDef, where: str) -> list[dict]:
    targets = []
    for index, query in enumerate(panel.all_queries()):
        ref_id = chr(ord("A") + index)
        if panel.source is LOKI:
            targets.append(
                {
                    "datasource": _ref(LOKI),
                    "editorMode": "code",
                    "expr": query.expr,
                    "legendFormat": query.legend,
                    "queryType": "range",
                    "refId": ref_id,
                }
            )
            continue
        expr = query.expr
        if definition.expand_refs:
            expr = expand_metric_refs(expr, definition.selector, definition.metrics)
        expr = " ".join(expr.split())  # folded YAML leaves runs of spaces; one line reads better
        _check_promql(expr, f"{where}, query {ref_id}")
        instant = panel.type == "table"
        targets.append(
            {
                "datasource": _ref(PROMETHEUS),
                "editorMode": "code",
                "exemplar": panel.exemplars,
                "expr": expr,
                "format": "table" if instant else "time_series",
                "instant": instant,
                "legendFormat": query.legend or "__auto",
                "range": not instant,
                "refId": ref_id,
            }
        )
    return targets


def _panel_body(panel: PanelDef, definition: DashboardDef, where: str) -> dict:
    """Type-specific fields of one panel: datasource, targets, fieldConfig, options."""
    if panel.type == "logs":
        return {
            "datasource": _ref(LOKI),
            "targets": _metric_targets(panel, definition, where),
            "options": {
                "dedupStrategy": "none",
                "enableLogDetails": True,
                "prettifyLogMessage": False,
                "showCommonLabels": False,
                "showLabels": False,
                "showTime": True,
                "sortOrder": "Descending",
                "wrapLogMessage": True,
            },
        }
    if panel.type == "traces":
        # Jaeger search results are a table whose trace ids link to the trace view.
        return {
            "datasource": _ref(JAEGER),
            "targets": [
                {
                    "datasource": _ref(JAEGER),
                    "limit": panel.limit,
                    "queryType": "search",
                    "refId": "A",
                    "service": "$service",
                }
            ],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"cellHeight": "sm", "showHeader": True},
        }
    if panel.type == "alertlist":
        # Rules evaluated by Prometheus (the alert pack), read through its datasource, by name.
        return {
            "options": {
                "alertInstanceLabelFilter": panel.alert_filter,
                "alertName": "",
                "dashboardAlerts": False,
                "datasource": PROMETHEUS["name"],
                "groupBy": [],
                "groupMode": "default",
                "maxItems": panel.limit,
                "showInactiveAlerts": False,
                "sortOrder": 3,  # importance
                "stateFilter": {
                    "error": True,
                    "firing": True,
                    "noData": False,
                    "normal": False,
                    "pending": True,
                    "recovering": True,
                },
                "viewMode": "list",
            },
        }
    defaults: dict = {"unit": panel.unit}
    steps = [{"color": t.color, "value": t.value} for t in panel.thresholds] or [{"color": "green", "value": None}]
    if panel.type == "timeseries":
        defaults |= {
            "color": {"mode": "palette-classic"},
            "custom": {
                "drawStyle": "line",
                "fillOpacity": 10,
                "lineWidth": 1,
                "showPoints": "never",
                "spanNulls": False,
            },
        }
        if panel.thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        if panel.threshold_style != "off":
            defaults["custom"]["thresholdsStyle"] = {"mode": panel.threshold_style}
        options: dict = {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.type == "table":
        options = {"cellHeight": "sm", "showHeader": True}
    elif panel.type == "state-timeline":
        # One lane per series, colored by the value mappings (or the thresholds).
        defaults |= {
            "color": {"mode": "thresholds"},
            "custom": {"fillOpacity": 80, "lineWidth": 0},
            "thresholds": {"mode": "absolute", "steps": steps},
        }
        options = {
            "alignValue": "left",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "mergeValues": True,
            "rowHeight": 0.9,
            "showValue": "never",
            "tooltip": {"mode": "single", "sort": "none"},
        }
    else:  # stat, gauge, bargauge: one number per series
        defaults |= {
            "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute", "steps": steps},
        }
        options = {
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        }
        if panel.type == "stat":
            options |= {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto"}
    if panel.mappings:
        defaults["mappings"] = [_mapping(m, index) for index, m in enumerate(panel.mappings)]
    for key, value in (("min", panel.min), ("max", panel.max), ("decimals", panel.decimals),
                       ("noValue", panel.no_value)):
        if value is not None:
            defaults[key] = value
    return {
        "datasource": _ref(panel.source),
        "targets": _metric_targets(panel, definition, where),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def _mapping(mapping: MappingDef, index: int) -> dict:
    """One Grafana value mapping: a number shown as text."""
    result: dict = {"index": index, "text": mapping.text}
    if mapping.color is not None:
        result["color"] = mapping.color
    return {"options": {_number_text(mapping.value): result}, "type": "value"}


def _number_text(value: float) -> str:
    """A value mapping's key as Grafana compares it with the displayed value: 2, not 2.0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _variables(definition: DashboardDef, services: list[str]) -> list[dict]:
    variables = [
        {
            "current": {"text": PROMETHEUS["name"], "value": PROMETHEUS["uid"]},
            "hide": 0,
            "includeAll": False,
            "label": "Prometheus",
            "multi": False,
            "name": DATASOURCE_VARIABLE,
            "options": [],
            "query": PROMETHEUS["type"],
            "refresh": 1,
            "regex": "",
            "type": "datasource",
        }
    ]
    for variable in definition.variables:
        if variable.services:
            first = services[0] if services else ""
            variables.append(
                {
                    "current": {"text": first, "value": first},
                    "hide": 0,
                    "includeAll": False,
                    "label": variable.label or variable.name,
                    "multi": False,
                    "name": variable.name,
                    "options": [{"selected": s == first, "text": s, "value": s} for s in services],
                    "query": ",".join(services),
                    "type": "custom",
                }
            )
            continue
        query = variable.query or ""
        if definition.expand_refs:
            query = expand_metric_refs(query, "", definition.metrics)
        variables.append(
            {
                "allValue": ".*",
                "current": {"text": ["All"], "value": ["$__all"]},
                "datasource": _ref(PROMETHEUS),
                "definition": query,
                "hide": 0,
                "includeAll": True,
                "label": variable.label or variable.name,
                "multi": True,
                "name": variable.name,
                "options": [],
                "query": query,
                "refresh": 2,  # on time range change: new jobs and instances show up
                "regex": "",
                "sort": 1,
                "type": "query",
            }
        )
    return variables


def build_dashboard(definition: DashboardDef, services: list[str], project: str) -> dict:
    """The Grafana dashboard JSON model for ``definition`` in ``project``; ``services`` feed services variables."""
    uid = uid_for(project, definition.title, definition.uid)
    if len(uid) > MAX_UID_LENGTH:
        raise DashboardDefinitionError(f"dashboard {definition.title!r}: uid {uid!r} is longer than {MAX_UID_LENGTH}")
    panels: list[dict] = []
    next_id = 1
    y = 0
    for row in definition.rows:
        # A collapsed row holds its panels (laid out as if it were open) and takes one grid line.
        into = panels
        if row.title is not None:
            row_panel = {
                "collapsed": row.collapsed,
                "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y},
                "id": next_id,
                "panels": [],
                "title": row.title,
                "type": "row",
            }
            panels.append(row_panel)
            next_id += 1
            y += 1
            if row.collapsed:
                into = row_panel["panels"]
        row_top = y
        # Panels flow left to right and wrap at the grid's width.
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_COLUMNS:
                x, y, line_height = 0, y + line_height, 0
            where = f"dashboard {definition.title!r}, panel {panel.title!r}"
            body = _panel_body(panel, definition, where)
            grafana_type = "table" if panel.type == "traces" else panel.type
            entry = {
                "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
                "id": next_id,
                "title": panel.title,
                "type": grafana_type,
                **body,
            }
            if panel.description:
                entry["description"] = panel.description
            into.append(entry)
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
        if row.collapsed:
            y = row_top
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": definition.description,
        "editable": False,  # provisioned from files: change the definition, not the UI copy
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,  # shared crosshair: one moment lines up across panels
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": [DASHBOARD_TAG],
                "title": "obsgen dashboards",
                "type": "dashboards",
            }
        ],
        "panels": panels,
        "refresh": definition.refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": [DASHBOARD_TAG, *definition.tags],
        "templating": {"list": _variables(definition, services)},
        "time": {"from": definition.time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": definition.title,
        "uid": uid,
        "version": 1,
    }
