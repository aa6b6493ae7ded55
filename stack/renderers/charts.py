"""Target kubernetes: one values file per upstream chart the bundle expects in the cluster.

    charts/kube-prometheus-stack-values.yaml   Prometheus, Alertmanager, Grafana, the Operator
    charts/loki-values.yaml                    Loki, single binary, Service loki:3100
    charts/jaeger-values.yaml                  Jaeger v2 running obsgen's own Jaeger config

Each holds only the settings obsgen's objects depend on, each with the reason in the file's
header; the chart versions are pinned in stack/data/versions.yaml (``kubernetes.charts``), and
`obsgen check` compares every key with that chart version's defaults. Where a chart passes a block
through to the component's own config (Loki's schema, limits and compactor; Jaeger's whole config)
the block is the compose target's, so both targets run the same settings.

Pure: ``render(spec, topology)`` returns the files; kustomize never sees them (not resources).
"""

from __future__ import annotations

import posixpath
import textwrap

import yaml

from stack.chart_pins import chart_pins, values_path
from stack.renderers import alertmanager, jaeger, loki
from stack.renderers.wiring import kubernetes_namespace
from stack.spec import Spec, pinned_versions
from stack.topology import Topology

# (dotted key path, value, why obsgen's output needs it). Paths split on "." only: no chart key
# obsgen sets contains a dot (a label key could: it is always a value here, never a path).
Setting = tuple[str, object, str]


def _sidecar_label(kind: str, labels: dict[str, str], spec_key: str) -> list[Setting]:
    # The Grafana sidecars watch one label; the ConfigMaps carry all the spec's labels, so any one
    # selects them. No labels in the spec: the chart's own (which the ConfigMaps then lack) stay.
    if not labels:
        return []
    label, value = next(iter(labels.items()))
    return [(f"grafana.sidecar.{kind}.label", label, spec_key), (f"grafana.sidecar.{kind}.labelValue", value, spec_key)]


def kube_prometheus_stack(spec: Spec, topology: Topology) -> list[Setting]:
    prometheus = spec.components.prometheus

    def selector() -> dict:  # a fresh dict each time: YAML would otherwise write anchors and aliases
        return {"matchLabels": dict(spec.kubernetes.selector_labels)}

    template = posixpath.basename(alertmanager.TEMPLATE_PATH)
    return [
        ("prometheus.prometheusSpec.enableFeatures", ["exemplar-storage"],
         "exemplars (trace ids) on the dashboards: Prometheus drops scraped exemplars without it"),
        ("prometheus.prometheusSpec.scrapeInterval", prometheus.scrape_interval,
         "components.prometheus.scrape_interval: the rules' rate windows and the SLO tests assume it"),
        ("prometheus.prometheusSpec.evaluationInterval", prometheus.evaluation_interval,
         "components.prometheus.evaluation_interval, as in the compose target"),
        ("prometheus.prometheusSpec.retention", prometheus.retention,
         "components.prometheus.retention: the SLO windows and dashboards read that far back"),
        ("prometheus.prometheusSpec.ruleSelector", selector(),
         "selects the PrometheusRule objects by kubernetes.selector_labels"),
        ("prometheus.prometheusSpec.serviceMonitorSelector", selector(),
         "selects the ServiceMonitor objects by kubernetes.selector_labels"),
        ("alertmanager.alertmanagerSpec.alertmanagerConfigSelector", selector(),
         "selects the AlertmanagerConfig by kubernetes.selector_labels"),
        ("alertmanager.alertmanagerSpec.alertmanagerConfigMatcherStrategy", {"type": "None"},
         "the default (OnNamespace) adds namespace=<ns> to the AlertmanagerConfig's routes and inhibitions; "
         "obsgen's alerts aggregate that label away, so nothing would be routed"),
        ("alertmanager.templateFiles", {template: alertmanager.notification_template()},
         'the receivers use {{ template "obsgen.title" . }} and its siblings'),
        ("grafana.sidecar.datasources.defaultDatasourceEnabled", False,
         "obsgen's datasources ConfigMap brings Prometheus with uid prometheus, which the dashboards use; "
         "the chart's own would take that uid"),
        ("grafana.sidecar.datasources.alertmanager.enabled", False,
         "likewise for uid alertmanager"),
        *_sidecar_label("datasources", spec.kubernetes.datasource_labels, "kubernetes.datasource_labels"),
        *_sidecar_label("dashboards", spec.kubernetes.dashboard_labels, "kubernetes.dashboard_labels"),
    ]


def loki_settings(spec: Spec, topology: Topology) -> list[Setting]:
    compose = loki.config(spec, topology)
    compactor = {key: compose["compactor"][key] for key in ("retention_enabled", "delete_request_store")}
    return [
        ("deploymentMode", "SingleBinary",
         "one Loki behind Service loki:3100, which the collector's exporter and the datasource name"),
        ("singleBinary.replicas", 1, "the single binary runs (the chart's default mode runs none)"),
        ("read.replicas", 0, "no simple-scalable read path"),
        ("write.replicas", 0, "no simple-scalable write path"),
        ("backend.replicas", 0, "no simple-scalable backend"),
        ("loki.auth_enabled", compose["auth_enabled"],
         "the collector and Grafana send no X-Scope-OrgID (one tenant), as in the compose target"),
        ("loki.commonConfig.replication_factor", compose["common"]["replication_factor"], "one instance"),
        ("loki.storage.type", "filesystem", "the compose target's object store (the chart's default needs buckets)"),
        ("loki.schemaConfig", compose["schema_config"],
         "tsdb, schema v13: structured metadata, where OTLP attributes such as trace_id land"),
        ("loki.limits_config", compose["limits_config"],
         "OTLP ingestion keeps structured metadata; components.loki.retention"),
        ("loki.compactor", compactor, "applies the retention"),
    ]


def jaeger_settings(spec: Spec, topology: Topology) -> list[Setting]:
    return [
        ("jaeger.image.tag", pinned_versions()["jaeger"].version,
         "the Jaeger version the config below is validated with (`obsgen check` runs jaeger validate on it)"),
        ("userconfig", jaeger.config(spec, topology),
         "the compose target's Jaeger config: OTLP gRPC on 4317 (the collector's exporter), query API on "
         "16686 (the datasource), health on 13133 (the chart's probes), in-memory store of "
         "components.jaeger.max_traces"),
    ]


SETTINGS = {"kube-prometheus-stack": kube_prometheus_stack, "loki": loki_settings, "jaeger": jaeger_settings}


def nested(settings: list[Setting]) -> dict:
    values: dict = {}
    for path, value, _why in settings:
        *parents, leaf = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return values


def header(spec: Spec, chart: str, settings: list[Setting]) -> str:
    pin = chart_pins()[chart]
    reasons = [line for path, _value, why in settings
               for line in textwrap.wrap(f"{path}: {why}", 100, initial_indent="  ", subsequent_indent="      ")]
    lines = [
        f"Values for the Helm chart {chart} {pin.version}, rendered by obsgen from the project spec (target",
        "kubernetes); edit the spec, not this file. Only the settings obsgen's objects depend on:",
        *reasons,
        "Install before `kubectl apply -k` (docs/kubernetes.md):",
        f"  helm repo add {pin.repo_name} {pin.repository}",
        f"  helm upgrade --install {pin.release} {pin.repo_name}/{chart} --version {pin.version} \\",
        f"    --namespace {kubernetes_namespace(spec)} --create-namespace -f {values_path(chart)}",
    ]
    return "".join(f"# {line}\n" for line in lines)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the notification template) as literal blocks, readable in review."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    files = {}
    for chart, settings_of in SETTINGS.items():
        settings = settings_of(spec, topology)
        files[values_path(chart)] = header(spec, chart, settings) + yaml.dump(
            nested(settings), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return files
