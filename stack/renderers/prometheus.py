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
from stack.spec import Spec, component_runs
from stack.topology import Topology
from stack.renderers.wiring import stack_job_address, SERVICE_LABEL, STACK_JOBS

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


def stack_jobs(topology: Topology) -> list[dict]:
    jobs = []
    for name, (component, _port, path, honor_labels) in STACK_JOBS.items():
        if not component_runs(topology.spec, component):
            continue  # left out of the stack: a target nobody serves would only read as down
        job: dict = {"job_name": name}
        if honor_labels:
            job["honor_labels"] = True
        job["metrics_path"] = path
        job["static_configs"] = [{"targets": [stack_job_address(topology, name)]}]
        jobs.append(job)
    return jobs


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
        "scrape_configs": [*service_jobs(spec, topology), *stack_jobs(topology)],
    }


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    return {PATH: dump_yaml(config(spec, topology), header=HEADER)}
