"""prometheus/prometheus.yml: global intervals, rule files, Alertmanager, and every scrape job.

Pure: ``render(spec, topology)`` builds the config as a dict, for Prometheus 3 (3.11 or later):
the TSDB retention is the config file's ``storage.tsdb.retention.time`` (3.8 deprecated the
``--storage.tsdb.retention.*`` flags; before 3.11 the file's value was misread by a factor of a
million), which Prometheus 2.x refuses. Every target sends a proper Content-Type, so no
``fallback_scrape_protocol`` is needed; the default scrape protocols ask for OpenMetrics first,
which is how the server's exemplars arrive. OTLP metrics reach Prometheus through the collector's
``prometheus`` exporter, scraped like any target, so both targets take the same path.

``rule_files`` is relative to this file: compose mounts prometheus/ at /etc/prometheus, and
``obsgen up`` passes ``--config.file=prometheus/prometheus.yml`` from the bundle root, so
``rules/*.yml`` resolves to the bundle's prometheus/rules either way.
"""

from __future__ import annotations

from stack.promtext import dump_yaml
from stack.spec import Spec
from stack.topology import Topology
from stack.renderers.wiring import (
    PROBE_JOB,
    PROBE_LABEL,
    PROBE_SERVICE_LABEL,
    SERVICE_LABEL,
    STACK_JOBS,
    probes,
    stack_job_address,
    stack_job_names,
)

PATH = "prometheus/prometheus.yml"
RULE_FILES = "rules/*.yml"
HEADER = "Prometheus config rendered by obsgen from the project spec; edit the spec, not this file."

def service_jobs(spec: Spec, topology: Topology) -> list[dict]:
    jobs = []
    for service in spec.services:
        job: dict = {"job_name": service.name, "metrics_path": service.metrics.path}
        if service.metrics.scrape_interval:
            job["scrape_interval"] = service.metrics.scrape_interval
        job["static_configs"] = [
            {"targets": topology.service_metrics_targets(service), "labels": {SERVICE_LABEL: service.name}}
        ]
        jobs.append(job)
    return jobs


def stack_jobs(spec: Spec, topology: Topology) -> list[dict]:
    jobs = []
    for name in stack_job_names(spec):
        _component, _port, path, honor_labels = STACK_JOBS[name]
        job: dict = {"job_name": name}
        if honor_labels:
            job["honor_labels"] = True
        job["metrics_path"] = path
        job["static_configs"] = [{"targets": [stack_job_address(topology, name)]}]
        jobs.append(job)
    return jobs


def probe_jobs(spec: Spec, topology: Topology) -> list[dict]:
    """One job for every blackbox probe: Prometheus asks blackbox_exporter's /probe for each target.

    Each target is its own static config carrying its module (``__param_module``), the probe's
    kind and service, and ``instance`` = the probed WebSocket endpoint (host:port), which for a
    built-in server is the instance its /metrics is scraped as. The service name reaches the
    probe's samples as ``service`` through metric relabeling only: the job's own ``up`` (is
    blackbox_exporter answering?) must not look like a service's.
    """
    found = probes(spec, topology)
    if not found:
        return []
    job: dict = {"job_name": PROBE_JOB, "metrics_path": "/probe"}
    if spec.components.blackbox.interval:
        job["scrape_interval"] = spec.components.blackbox.interval
    job["static_configs"] = [
        {"targets": [probe.target], "labels": {
            "__param_module": probe.module, "instance": probe.instance,
            PROBE_LABEL: probe.probe, PROBE_SERVICE_LABEL: probe.service,
        }}
        for probe in found
    ]
    job["relabel_configs"] = [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"target_label": "__address__", "replacement": topology.address("blackbox", "http")},
    ]
    job["metric_relabel_configs"] = [
        {"source_labels": [PROBE_SERVICE_LABEL], "target_label": SERVICE_LABEL},
        {"action": "labeldrop", "regex": PROBE_SERVICE_LABEL},
    ]
    return [job]


def config(spec: Spec, topology: Topology) -> dict:
    settings = spec.components.prometheus
    return {
        "global": {
            "scrape_interval": settings.scrape_interval,
            "evaluation_interval": settings.evaluation_interval,
            "external_labels": {"project": spec.project},
        },
        "storage": {"tsdb": {"retention": {"time": settings.retention}}},
        "rule_files": [RULE_FILES],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [topology.address("alertmanager", "http")]}]}
            ]
        },
        "scrape_configs": [*service_jobs(spec, topology), *stack_jobs(spec, topology), *probe_jobs(spec, topology)],
    }


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    return {PATH: dump_yaml(config(spec, topology), header=HEADER)}
