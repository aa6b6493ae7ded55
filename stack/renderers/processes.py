"""local/processes.yaml: what `obsgen up` starts for the ``local`` target, in order.

Each entry names the candidate binaries (project-built tools first, then PATH), the arguments
(shared with the compose file through ``stack.renderers.commands``), the directories to create,
the addresses it listens on and how to tell it is ready. Secrets are listed by name and
reference only; `obsgen up` materialises them under secrets/ at start, never in the bundle.

Pure: ``render(spec, topology)``; the compose target renders nothing here.
"""

from __future__ import annotations

import yaml

from stack.renderers import commands
from stack.spec import EnvSecret, FileSecret, Service, Spec
from stack.renderers.wiring import GRAFANA_PASSWORD_SECRET, JAEGER_HEALTH_PATH, JWT_SECRET, probes, staged_secrets
from stack.renderers.alerting import RUNBOOKS_DIRECTORY
from stack.spec import serves_runbooks, uses_alert_sink
from stack.topology import Topology

PATH = "local/processes.yaml"
# The spec this bundle was rendered from (secret references only, never values): `obsgen up`
# re-renders the bundle from it without the components whose binaries are not installed.
SPEC_PATH = "local/spec.yaml"
SPEC_HEADER = (
    "# The spec this bundle was rendered from, as obsgen read it (secrets are references, never values).\n"
    "# `obsgen up` re-renders the bundle from it, leaving out what is not installed; edit your own spec, not this.\n"
)
HEADER = (
    "# Native processes for the local target, rendered by obsgen; run them with `obsgen up <this bundle>`.\n"
)


def _entry(name: str, binary: list[str], args: list[str], ready: dict, listens: list[str], **extra) -> dict:
    return {"name": name, "binary": binary, "args": args, "ready": ready, "listens": listens, **extra}


def _http(topology: Topology, component: str, port_name: str, path: str) -> dict:
    return {"http": topology.url(component, port_name, path)}


def _server(spec: Spec, topology: Topology, service: Service, instance: int) -> dict:
    port = service.metrics.port + instance
    args = [
        "-m", "instrumented_server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--jwt-secret-file", f"secrets/{JWT_SECRET}",
        "--service-name", service.name,
    ]
    if spec.components.redis.enabled:
        args += ["--broker", "redis", "--redis-url", f"redis://{topology.address('redis', 'redis')}/0"]
    extra = {}
    if service.otlp:
        # A signal whose backend is left out is not sent: the collector has no pipeline for it.
        logs = "otlp" if spec.components.loki.enabled else "none"
        args += ["--otlp-endpoint", topology.url("collector", "otlp_http"), "--logs", logs]
        if not spec.components.jaeger.enabled:
            extra["env"] = {"OTEL_TRACES_EXPORTER": "none"}
    name = service.name if instance == 0 else f"{service.name}-{instance}"
    return _entry(
        name, ["{python}"], args, {"http": f"http://127.0.0.1:{port}/readyz"}, [f"ws://127.0.0.1:{port}/"],
        required=True, reader="server", **extra,
    )


def processes(spec: Spec, topology: Topology) -> dict:
    entries = []
    if uses_alert_sink(spec):  # where webhooks to http://alert-sink:<port>/... land; logs/alert-sink.log
        entries.append(_entry(
            "alert-sink", ["{python}"],
            ["-m", "instrumented_server.alert_sink", "--host", "127.0.0.1", "--port", str(topology.port("alert_sink", "http"))],
            _http(topology, "alert_sink", "http", "/healthz"), [topology.url("alert_sink", "http")],
        ))
    if serves_runbooks(spec):  # the runbook_url of every alert points here
        entries.append(_entry(
            "runbooks", ["{python}"],
            ["-m", "http.server", "--bind", "127.0.0.1", "--directory", RUNBOOKS_DIRECTORY,
             str(topology.port("runbooks", "http"))],
            _http(topology, "runbooks", "http", "/"), [topology.url("runbooks", "http")],
            dirs=[RUNBOOKS_DIRECTORY],
        ))
    if spec.components.redis.enabled:
        entries.append(_entry(
            "redis", ["redis-server"], commands.redis(spec, topology),
            {"tcp": topology.address("redis", "redis")}, [topology.address("redis", "redis")],
        ))
    if spec.components.loki.enabled:
        entries.append(_entry("loki", ["loki"], commands.loki(spec, topology), _http(topology, "loki", "http", "/ready"),
                              [topology.url("loki", "http")], dirs=[topology.data_dir("loki")]))
    if spec.components.jaeger.enabled:
        entries.append(_entry("jaeger", ["jaeger"], commands.jaeger(spec, topology),
                              _http(topology, "jaeger", "health", JAEGER_HEALTH_PATH), [topology.url("jaeger", "query")]))
    entries += [
        _entry("collector", ["otelcol", "otelcol-contrib"], commands.collector(spec, topology),
               _http(topology, "collector", "health", "/"),
               [topology.address("collector", "otlp_grpc"), topology.url("collector", "otlp_http")], required=True),
        _entry("alertmanager", ["alertmanager", "prometheus-alertmanager"], commands.alertmanager(spec, topology),
               _http(topology, "alertmanager", "http", "/-/ready"), [topology.url("alertmanager", "http")],
               dirs=[topology.data_dir("alertmanager")], required=True, reader="alertmanager"),
        _entry("prometheus", ["prometheus"], commands.prometheus(spec, topology),
               _http(topology, "prometheus", "http", "/-/ready"), [topology.url("prometheus", "http")],
               dirs=[topology.data_dir("prometheus")], required=True),
    ]
    if spec.components.grafana.enabled:
        entries.append(_entry("grafana", ["grafana"], ["server", "--homepath", "/usr/share/grafana"],
               _http(topology, "grafana", "http", "/api/health"), [topology.url("grafana", "http")],
               dirs=[topology.data_dir("grafana")], reader="grafana",
               env={
                   "GF_PATHS_PROVISIONING": "grafana/provisioning",
                   "GF_PATHS_DATA": topology.data_dir("grafana"),
                   "GF_SERVER_HTTP_ADDR": "127.0.0.1",
                   "GF_SERVER_HTTP_PORT": str(topology.port("grafana", "http")),
                   "GF_AUTH_ANONYMOUS_ENABLED": "false",
                   "GF_SECURITY_ADMIN_PASSWORD__FILE": f"secrets/{GRAFANA_PASSWORD_SECRET}",
               }))
    if spec.components.node_exporter.enabled:
        entries.append(_entry("node-exporter", ["node_exporter", "prometheus-node-exporter"],
                              commands.node_exporter(spec, topology),
                              _http(topology, "node_exporter", "http", "/metrics"), [topology.url("node_exporter", "http")]))
    if probes(spec, topology):
        entries.append(_entry("blackbox", ["blackbox_exporter", "prometheus-blackbox-exporter"],
                              commands.blackbox(spec, topology),
                              _http(topology, "blackbox", "http", "/-/healthy"), [topology.url("blackbox", "http")]))
    for service in spec.services:
        if service.builtin:
            entries += [_server(spec, topology, service, i) for i in range(service.instances)]
    secrets = []
    for name, ref, reader in staged_secrets(spec):
        secret: dict = {"name": name, "for": reader}
        if isinstance(ref, FileSecret):
            secret["file"] = ref.file
        elif isinstance(ref, EnvSecret):
            secret["env"] = ref.env
        else:
            secret["generate"] = True
        secrets.append(secret)
    return {"processes": entries, "secrets": secrets}


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    if not topology.local:
        return {}
    return {
        PATH: HEADER + yaml.safe_dump(processes(spec, topology), sort_keys=False, width=120),
        SPEC_PATH: SPEC_HEADER + stored_spec(spec),
    }


def stored_spec(spec: Spec) -> str:
    """The spec as data that loads back to the same model (defaults left out)."""
    data = spec.model_dump(mode="json", exclude_defaults=True, by_alias=True)
    return yaml.safe_dump({"version": spec.version, **data}, sort_keys=False, width=120)
