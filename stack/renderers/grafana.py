"""Grafana: datasource and dashboard provisioning, and the dashboards themselves.

Datasources have fixed uids (``prometheus``, ``loki``, ``jaeger``, ``alertmanager``) that the
dashboards use, and are linked both ways: a Prometheus exemplar opens its trace in Jaeger, a
Loki log line's trace_id opens its trace, a Jaeger span opens the logs of its service and trace.

Grafana expands environment variables in provisioning files, so every literal ``$`` in them is
written ``$$``. Dashboard JSON files are not expanded and keep single ``$``.
"""

from __future__ import annotations

import yaml

from stack.renderers.dashboards import (
    ALERTMANAGER,
    JAEGER,
    LOKI,
    PROMETHEUS,
    DashboardDef,
    DashboardDefinitionError,
    build_dashboard,
    builtin_definitions,
    custom_definition,
    slo_definition,
)
from stack.jsondump import dump_json
from stack.renderers.wiring import probes
from stack.spec import Spec
from stack.topology import Topology

DATASOURCES_PATH = "grafana/provisioning/datasources/datasources.yaml"
DASHBOARD_PROVIDERS_PATH = "grafana/provisioning/dashboards/dashboards.yaml"
DASHBOARDS_DIR = "grafana/dashboards"
# Where compose mounts DASHBOARDS_DIR inside the Grafana container.
CONTAINER_DASHBOARDS_DIR = "/var/lib/grafana/dashboards"

TRACE_ID = "trace_id"  # exemplar label set by the exporter; OTLP log attribute Loki keeps as structured metadata


def _escape(value: object) -> object:
    """Write every literal ``$`` as ``$$`` so Grafana's env expansion leaves it alone."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {key: _escape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escape(item) for item in value]
    return value


def datasources(topology: Topology) -> dict:
    """The datasource provisioning document (before ``$`` escaping)."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": PROMETHEUS["name"],
                "type": PROMETHEUS["type"],
                "uid": PROMETHEUS["uid"],
                "access": "proxy",
                "url": topology.url("prometheus", "http"),
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "httpMethod": "POST",
                    "timeInterval": topology.spec.components.prometheus.scrape_interval,
                    "alertmanagerUid": ALERTMANAGER["uid"],
                    "exemplarTraceIdDestinations": [
                        {"name": TRACE_ID, "datasourceUid": JAEGER["uid"], "urlDisplayLabel": "Open trace"},
                    ],
                },
            },
            {
                "name": LOKI["name"],
                "type": LOKI["type"],
                "uid": LOKI["uid"],
                "access": "proxy",
                "url": topology.url("loki", "http"),
                "editable": False,
                "jsonData": {
                    "maxLines": "1000",
                    "derivedFields": [
                        # OTLP logs: the collector sends trace_id, Loki keeps it as structured metadata.
                        {
                            "name": TRACE_ID,
                            "matcherType": "label",
                            "matcherRegex": TRACE_ID,
                            "datasourceUid": JAEGER["uid"],
                            "url": "${__value.raw}",
                            "urlDisplayLabel": "Open trace",
                        },
                        # JSON log lines pushed without OTLP: "trace_id":"<hex>" in the line itself.
                        {
                            "name": "TraceID",
                            "matcherType": "regex",
                            "matcherRegex": r'"trace_id"\s*:\s*"([0-9a-fA-F]+)"',
                            "datasourceUid": JAEGER["uid"],
                            "url": "${__value.raw}",
                            "urlDisplayLabel": "Open trace",
                        },
                    ],
                },
            },
            {
                "name": JAEGER["name"],
                "type": JAEGER["type"],
                "uid": JAEGER["uid"],
                "access": "proxy",
                "url": topology.url("jaeger", "query"),
                "editable": False,
                "jsonData": {
                    "nodeGraph": {"enabled": True},
                    "tracesToLogsV2": {
                        "datasourceUid": LOKI["uid"],
                        # Loki's OTLP ingestion turns the resource attribute service.name into the
                        # index label service_name.
                        "tags": [{"key": "service.name", "value": "service_name"}],
                        "filterByTraceID": True,
                        "filterBySpanID": False,
                        "spanStartTimeShift": "-5m",
                        "spanEndTimeShift": "5m",
                        # trace_id is structured metadata, not text in the line: filter on it as a label.
                        "customQuery": True,
                        "query": '{${__tags}} | trace_id="${__trace.traceId}"',
                    },
                },
            },
            {
                "name": ALERTMANAGER["name"],
                "type": ALERTMANAGER["type"],
                "uid": ALERTMANAGER["uid"],
                "access": "proxy",
                "url": topology.url("alertmanager", "http"),
                "editable": False,
                "jsonData": {"implementation": "prometheus", "handleGrafanaManagedAlerts": False},
            },
        ],
    }


def dashboard_providers(spec: Spec, topology: Topology) -> dict:
    """The dashboard provider: Grafana loads every JSON file of the dashboards folder."""
    path = DASHBOARDS_DIR if topology.local else CONTAINER_DASHBOARDS_DIR
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "obsgen",
                "orgId": 1,
                "folder": spec.project,
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": path, "foldersFromFilesStructure": False},
            }
        ],
    }


def dashboards(spec: Spec) -> dict[str, dict]:
    """uid -> dashboard JSON model: the built-in ones (unless turned off), the SLO dashboard (when the
    spec has SLOs) and the spec's custom ones, in that order (the order of dashboard_ids.provisioned_dashboards)."""
    services = [s.name for s in spec.services if s.otlp] or [s.name for s in spec.services]
    sources: list[tuple[str, DashboardDef]] = []
    if spec.dashboards.builtin:
        sources += [("dashboards/", definition) for definition in builtin_definitions()]
    if spec.slos:
        sources.append(("slos", slo_definition(spec)))
    sources += [(f"dashboards.custom[{index}]", custom_definition(custom))
                for index, custom in enumerate(spec.dashboards.custom)]
    found = probes(spec, Topology(spec))
    present = {None: True, "node_exporter": spec.components.node_exporter.enabled, "blackbox": bool(found),
               "blackbox_tls": any(probe.tls for probe in found)}
    models: dict[str, dict] = {}
    for where, definition in sources:
        rows = [row for row in definition.rows if present[row.requires]]
        if rows != list(definition.rows):
            definition = definition.model_copy(update={"rows": rows})
        model = build_dashboard(definition, services, spec.project)
        uid = model["uid"]
        if uid in models:
            raise DashboardDefinitionError(
                f"{where}: dashboard {definition.title!r} has uid {uid!r}, "
                f"already used by {models[uid]['title']!r}; give it another uid"
            )
        models[uid] = model
    return models


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    files = {
        DATASOURCES_PATH: yaml.safe_dump(_escape(datasources(topology)), sort_keys=False, allow_unicode=True),
        DASHBOARD_PROVIDERS_PATH: yaml.safe_dump(dashboard_providers(spec, topology), sort_keys=False),
    }
    for uid, model in dashboards(spec).items():
        files[f"{DASHBOARDS_DIR}/{uid}.json"] = dump_json(model) + "\n"  # = json.dumps(indent=2, sort_keys=True)
    return dict(sorted(files.items()))


__all__ = ["render", "datasources", "dashboard_providers", "dashboards"]
