"""What several renderers agree on: names of secrets and scrape jobs, health paths, resource attributes.

Renderers share these through this module, never by importing one another, so each component's
renderer can change on its own. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from stack.errors import RenderError
from stack.spec import (
    EmailReceiver,
    EnvSecret,
    FileSecret,
    PagerDutyReceiver,
    SecretRef,
    Service,
    SlackReceiver,
    Spec,
    WebhookReceiver,
    component_runs,
)
from stack.topology import Topology

# ---------------------------------------------------------------------------------------
# Scrape jobs (Prometheus writes them; the rules and SLO renderers select by them)
# ---------------------------------------------------------------------------------------

# Scrape jobs for the stack's own components: job name -> (component, named port, metrics path,
# honor_labels). A service's job carries the target label `service`; these never do, which is how
# the alert rules tell the two apart (up{service!=""} vs up{service=""}). Job names cannot clash with
# a service's: the spec refuses services named after a component, and service names have no "_".
STACK_JOBS: dict[str, tuple[str, str, str, bool]] = {
    "prometheus": ("prometheus", "http", "/metrics", False),
    "alertmanager": ("alertmanager", "http", "/metrics", False),
    # The collector's own telemetry (receivers, processors, exporters, queues).
    "collector": ("collector", "metrics", "/metrics", False),
    # OTLP metrics the collector received, re-exposed by its prometheus exporter. Their job and
    # instance come from the sender's resource (service.name, service.instance.id): keep them.
    "collector_exporter": ("collector", "prometheus", "/metrics", True),
    "jaeger": ("jaeger", "metrics", "/metrics", False),
    "loki": ("loki", "http", "/metrics", False),
    "grafana": ("grafana", "http", "/metrics", False),
    # Host metrics, and the blackbox exporter's own metrics (its probes are the job PROBE_JOB).
    "node_exporter": ("node_exporter", "http", "/metrics", False),
    "blackbox_exporter": ("blackbox", "http", "/metrics", False),
}
SERVICE_LABEL = "service"


def stack_job_names(spec: Spec) -> list[str]:
    """The stack jobs this spec's Prometheus scrapes: those of the components that run (switched off or
    left out by `obsgen up`: a target nobody serves would only read as down), blackbox_exporter only
    with something to probe."""
    return [job for job, (component, _port, _path, _honor) in STACK_JOBS.items()
            if component_runs(spec, component) and (component != "blackbox" or probes(spec, Topology(spec)))]


def stack_job_address(topology: Topology, job: str) -> str:
    component, port, _path, _honor = STACK_JOBS[job]
    return topology.address(component, port)


# ---------------------------------------------------------------------------------------
# Outside-in probes (blackbox_exporter probes; Prometheus scrapes them as job PROBE_JOB)
# ---------------------------------------------------------------------------------------

PROBE_JOB = "blackbox"
PROBE_LABEL = "probe"  # upgrade | ready
# The target label naming the probed service; copied into `service` on the probe's samples only
# (metric relabeling), so the job's own `up` has no `service` and the service alerts ignore it.
PROBE_SERVICE_LABEL = "probe_service"
READY_MODULE = "http_ready"


@dataclass(frozen=True)
class Probe:
    service: str
    probe: str  # upgrade | ready
    module: str  # blackbox module name
    target: str  # what blackbox dials: host:port (tcp) or a URL (http)
    instance: str  # host:port of the WebSocket endpoint: the scrape target's instance for built-in servers
    tls: bool = False  # over TLS (wss:// and https://): the probe also records the certificate's expiry


def upgrade_module(path: str, tls: bool) -> str:
    """Name of the TCP module that sends a WebSocket upgrade for ``path`` (over TLS for wss://)."""
    suffix = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
    return "websocket_upgrade" + ("_tls" if tls else "") + (f"_{suffix}" if suffix else "")


def probes(spec: Spec, topology: Topology) -> list[Probe]:
    """Every probe of this spec: the upgrade of each WebSocket endpoint, and /readyz where served.

    Built-in servers are probed per instance (WebSocket and /readyz on metrics.port + i); other
    services when they give their WebSocket ``port``. None when blackbox is turned off.
    """
    if not spec.components.blackbox.enabled or topology.kubernetes:
        return []  # kubernetes: no blackbox_exporter is rendered there (docs/kubernetes.md)
    found = []
    for service in spec.services:
        settings = service.probe
        if not settings.enabled:
            continue
        host = topology.service_host(service)
        if service.builtin:
            ports = [service.metrics.port + i for i in range(service.instances)]
        elif service.port is not None:
            ports = [service.port]
        else:
            continue
        ready_path = settings.ready_path if settings.ready_path is not None else (
            "/readyz" if service.builtin else None)
        scheme = "https" if settings.tls else "http"
        for port in ports:
            address = f"{host}:{port}"
            found.append(Probe(service.name, "upgrade", upgrade_module(settings.path, settings.tls), address, address,
                               settings.tls))
            if ready_path:
                found.append(Probe(service.name, "ready", READY_MODULE, f"{scheme}://{address}{ready_path}", address,
                                   settings.tls))
    return found


# ---------------------------------------------------------------------------------------
# Secrets (Alertmanager reads them; compose, obsgen up and kubernetes stage them)
# ---------------------------------------------------------------------------------------

GRAFANA_PASSWORD_SECRET = "grafana_admin_password"
GRAFANA_PASSWORD_ENV = "GRAFANA_ADMIN_PASSWORD"  # used when the spec names no admin password
JWT_SECRET = "server_jwt_secret"  # signs the built-in server's client tokens; generated once

# Secret-bearing fields per receiver type: spec field -> the name part of its secret.
SECRET_FIELDS: dict[type, dict[str, str]] = {
    SlackReceiver: {"api_url": "api_url"},
    PagerDutyReceiver: {"routing_key": "routing_key"},
    WebhookReceiver: {"url_secret": "url"},
    EmailReceiver: {"auth_password": "auth_password"},
}


def secret_name(receiver_name: str, field: str) -> str:
    """The stable name of a receiver's secret. Receiver names have no underscore, so this is unique."""
    return f"alertmanager_{receiver_name}_{field}"


def secret_files(spec: Spec) -> dict[str, SecretRef]:
    """Every notification secret by the name Alertmanager reads it under, with its spec reference."""
    found: dict[str, SecretRef] = {}
    for receiver in spec.notifications.receivers:
        for attribute, part in SECRET_FIELDS[type(receiver)].items():
            reference = getattr(receiver, attribute)
            if reference is not None:
                found[secret_name(receiver.name, part)] = reference
    return dict(sorted(found.items()))


def staged_secrets(spec: Spec) -> list[tuple[str, FileSecret | EnvSecret | None, str]]:
    """(name, reference, reader) for every secret the stack reads; reference None: generated."""
    secrets = [(name, ref, "alertmanager") for name, ref in secret_files(spec).items()]
    password = spec.components.grafana.admin_password or EnvSecret(env=GRAFANA_PASSWORD_ENV)
    secrets.append((GRAFANA_PASSWORD_SECRET, password, "grafana"))
    if any(service.builtin for service in spec.services):
        secrets.append((JWT_SECRET, None, "server"))
    names = [name for name, _, _ in secrets]
    if len(set(names)) != len(names):
        raise RenderError(f"two secrets share a name: {sorted(names)}")
    return secrets


# ---------------------------------------------------------------------------------------
# Health paths and resource attributes
# ---------------------------------------------------------------------------------------

JAEGER_HEALTH_PATH = "/status"  # Jaeger v2's healthcheckv2 HTTP status path


def resource_attributes(spec: Spec, topology: Topology, service: Service) -> str:
    """OTEL_RESOURCE_ATTRIBUTES: key=value pairs, values percent-encoded as the SDKs decode them.

    ``service.instance.id`` is the address Prometheus scrapes, so the collector's re-exposed OTLP
    metrics and the scraped ones carry the same ``instance``. No ``service.namespace``: the
    collector's Prometheus exporter would prefix the job with it, and the job is the service name.
    """
    target = topology.service_metrics_targets(service)[0]
    attributes = {"service.instance.id": target, **service.resource_attributes}
    return ",".join(f"{key}={quote(value, safe='-._~:/@')}" for key, value in sorted(attributes.items()))


# ---------------------------------------------------------------------------------------
# Target kubernetes (the bundle's objects and the chart values files agree on these)
# ---------------------------------------------------------------------------------------


def kubernetes_namespace(spec: Spec) -> str:
    return spec.kubernetes.namespace or spec.project
