"""Grafana dashboards from data: definition files in ``dashboards/`` and custom spec panels.

A definition (``dashboards/*.yaml``) says what to show: rows of panels with their queries.
This module decides how Grafana gets it: panel ids, grid positions, datasources, variables and
the JSON shape of the pinned Grafana. Plain dicts are built here rather than with
grafana-foundation-sdk: its newest build targets Grafana 11.6 (pip's default pick targets 10.1,
schemaVersion 36) while the stack pins Grafana 13, and the few shapes needed are easier to read
and to check as data than through typed builders.

Metric names come from ``exporter/catalog.py``: a definition writes ``@ACTIVE_CONNECTIONS``
(a Metric constant) and this module writes the constant's exposition name. Pure: the
definition files are package data, read once.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exporter import catalog
from stack.dashboard_ids import MAX_UID_LENGTH, UID_PATTERN, builtin_titles, uid_for
from stack.spec import CustomDashboard, grafana_promql_for_parsing

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

PanelType = Literal["timeseries", "stat", "gauge", "bargauge", "table", "logs", "traces", "alertlist"]
METRIC_PANELS = ("timeseries", "stat", "gauge", "bargauge", "table")


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
    panels: list[PanelDef] = Field(min_length=1)


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
            definition = DashboardDef.model_validate(yaml.safe_load(entry.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as exc:
            raise DashboardDefinitionError(f"{where}: {exc}") from None
        if definition.uid is not None:
            # A fixed uid would be the same in every project: two bundles in one Grafana would collide.
            raise DashboardDefinitionError(f"{where}: a built-in dashboard takes no uid (it is derived per project)")
        definitions.append(definition)
    if tuple(d.title for d in definitions) != builtin_titles():
        raise DashboardDefinitionError("dashboards/: titles differ from what stack.dashboard_ids read")
    return tuple(definitions)


# What stack/spec.py imports for its check of custom dashboards against the built-in ones
# (Dashboards._unique_uids). That check runs before the project is known, so it compares uids
# as they would be in a project named "": the same title gives the same uid in any one project,
# so every clash by title is found. A custom uid equal to a project's derived uid is refused by
# grafana.dashboards() when rendering.
def dashboard_uid(title: str) -> str:
    return uid_for("", title)


def builtin_uids() -> dict[str, str]:
    """uid -> title of every dashboard obsgen writes (see above: in a project named "")."""
    return {uid_for("", title): title for title in builtin_titles()}


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
                "alertInstanceLabelFilter": "",
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
        options: dict = {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.type == "table":
        options = {"cellHeight": "sm", "showHeader": True}
    else:  # stat, gauge, bargauge: one number per series
        defaults |= {
            "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
        }
        options = {
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        }
        if panel.type == "stat":
            options |= {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto"}
    return {
        "datasource": _ref(panel.source),
        "targets": _metric_targets(panel, definition, where),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


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
    y = 0
    for row in definition.rows:
        if row.title is not None:
            panels.append(
                {
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y},
                    "id": len(panels) + 1,
                    "panels": [],
                    "title": row.title,
                    "type": "row",
                }
            )
            y += 1
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
                "id": len(panels) + 1,
                "title": panel.title,
                "type": grafana_type,
                **body,
            }
            if panel.description:
                entry["description"] = panel.description
            panels.append(entry)
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
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
