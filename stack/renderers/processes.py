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
from stack.spec import uses_alert_sink
from stack.topology import Topology

PATH = "local/processes.yaml"
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
    if service.otlp:
        args += ["--otlp-endpoint", topology.url("collector", "otlp_http"), "--logs", "otlp"]
    name = service.name if instance == 0 else f"{service.name}-{instance}"
    return _entry(
        name, ["{python}"], args, {"http": f"http://127.0.0.1:{port}/readyz"}, [f"ws://127.0.0.1:{port}/"],
        required=True, reader="server",
    )


def processes(spec: Spec, topology: Topology) -> dict:
    entries = []
    if uses_alert_sink(spec):  # where webhooks to http://alert-sink:<port>/... land; logs/alert-sink.log
        entries.append(_entry(
            "alert-sink", ["{python}"],
            ["-m", "instrumented_server.alert_sink", "--host", "127.0.0.1", "--port", str(topology.port("alert_sink", "http"))],
            _http(topology, "alert_sink", "http", "/healthz"), [topology.url("alert_sink", "http")],
        ))
    if spec.components.redis.enabled:
        entries.append(_entry(
            "redis", ["redis-server"], commands.redis(spec, topology),
            {"tcp": topology.address("redis", "redis")}, [topology.address("redis", "redis")],
        ))
    entries += [
        _entry("loki", ["loki"], commands.loki(spec, topology), _http(topology, "loki", "http", "/ready"),
               [topology.url("loki", "http")], dirs=[topology.data_dir("loki")]),
        _entry("jaeger", ["jaeger"], commands.jaeger(spec, topology),
               _http(topology, "jaeger", "health", JAEGER_HEALTH_PATH), [topology.url("jaeger", "query")]),
        _entry("collector", ["otelcol", "otelcol-contrib"], commands.collector(spec, topology),
               _http(topology, "collector", "health", "/"),
               [topology.address("collector", "otlp_grpc"), topology.url("collector", "otlp_http")], required=True),
        _entry("alertmanager", ["alertmanager", "prometheus-alertmanager"], commands.alertmanager(spec, topology),
               _http(topology, "alertmanager", "http", "/-/ready"), [topology.url("alertmanager", "http")],
               dirs=[topology.data_dir("alertmanager")], required=True, reader="alertmanager"),
        _entry("prometheus", ["prometheus"], commands.prometheus(spec, topology),
               _http(topology, "prometheus", "http", "/-/ready"), [topology.url("prometheus", "http")],
               dirs=[topology.data_dir("prometheus")], required=True),
        _entry("grafana", ["grafana"], ["server", "--homepath", "/usr/share/grafana"],
               _http(topology, "grafana", "http", "/api/health"), [topology.url("grafana", "http")],
               dirs=[topology.data_dir("grafana")], reader="grafana",
               env={
                   "GF_PATHS_PROVISIONING": "grafana/provisioning",
                   "GF_PATHS_DATA": topology.data_dir("grafana"),
                   "GF_SERVER_HTTP_ADDR": "127.0.0.1",
                   "GF_SERVER_HTTP_PORT": str(topology.port("grafana", "http")),
                   "GF_AUTH_ANONYMOUS_ENABLED": "false",
                   "GF_SECURITY_ADMIN_PASSWORD__FILE": f"secrets/{GRAFANA_PASSWORD_SECRET}",
               }),
    ]
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
    return {PATH: HEADER + yaml.safe_dump(processes(spec, topology), sort_keys=False, width=120)}
