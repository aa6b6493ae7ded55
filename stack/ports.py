"""Named ports, host names and container paths of every stack component: pure data.

Below the spec model, so the spec can check a port override or a host name against these tables
without importing the topology (which reads the spec). ``stack.topology`` turns them into the
hosts, ports and URLs one target uses.
"""

from __future__ import annotations

from typing import Mapping

# Named ports per component: (compose, local). Container ports are the images' defaults.
PORTS: dict[str, dict[str, tuple[int, int]]] = {
    "collector": {
        "otlp_grpc": (4317, 4317),
        "otlp_http": (4318, 4318),
        "metrics": (8888, 8888),        # the collector's own telemetry
        "prometheus": (8889, 8889),     # the prometheus exporter Prometheus scrapes
        "health": (13133, 13133),
    },
    "prometheus": {"http": (9090, 9090)},
    "alertmanager": {"http": (9093, 9093), "cluster": (9094, 9094)},
    "loki": {"http": (3100, 3100), "grpc": (9095, 9095)},
    "jaeger": {
        "query": (16686, 16686),        # UI and HTTP query API
        "query_grpc": (16685, 16685),   # gRPC query API (binds all interfaces unless told otherwise)
        "otlp_grpc": (4317, 14317),
        "otlp_http": (4318, 14318),
        "health": (13133, 13134),
        "metrics": (8888, 18888),
    },
    "grafana": {"http": (3000, 3000)},
    "redis": {"redis": (6379, 6379)},
    # The alert sink (python -m instrumented_server.alert_sink): runs when a webhook receiver names it.
    "alert_sink": {"http": (5001, 5001)},
    # The runbook server `obsgen up` starts for the local target (python -m http.server on the
    # bundle's runbooks/). Compose has none: Grafana serves runbooks/ from its public folder.
    "runbooks": {"http": (3001, 3001)},
    # Host metrics (node_exporter) and outside-in probes of the services (blackbox_exporter).
    "node_exporter": {"http": (9100, 9100)},
    "blackbox": {"http": (9115, 9115)},
}

# Components whose compose service (and host name) is not their spec key.
COMPOSE_NAMES: dict[str, str] = {"alert_sink": "alert-sink", "node_exporter": "node-exporter"}

# A webhook URL with this host means the bundled alert sink, on either target: in compose it is
# the sink's service name; locally the topology turns it into 127.0.0.1.
ALERT_SINK_HOST = COMPOSE_NAMES["alert_sink"]

# What a container uses to reach the Docker host: compose maps it to the host's gateway address
# (extra_hosts: host-gateway, Docker Engine 20.10+) wherever a scrape target names it.
DOCKER_HOST_NAME = "host.docker.internal"

# Kubernetes target: in-cluster Service names, in the bundle's namespace. The collector and Redis
# are obsgen's own Services; the others are the upstream charts' Services for the release names
# docs/kubernetes.md installs them under (spec: kubernetes.hosts overrides any of them).
KUBERNETES_HOSTS: dict[str, str] = {
    "collector": "collector",
    "redis": "redis",
    "prometheus": "kube-prometheus-stack-prometheus",
    "alertmanager": "kube-prometheus-stack-alertmanager",
    "grafana": "kube-prometheus-stack-grafana",
    "loki": "loki",
    "jaeger": "jaeger",
    "alert_sink": "alert-sink",
    # The chart's node exporter (prometheus-node-exporter subchart, a DaemonSet), release kube-prometheus-stack.
    "node_exporter": "kube-prometheus-stack-prometheus-node-exporter",
}

# Ports published on the host in the compose target (what a person opens or a client reaches).
PUBLISHED: dict[str, tuple[str, ...]] = {
    "collector": ("otlp_grpc", "otlp_http"),
    "prometheus": ("http",),
    "alertmanager": ("http",),
    "loki": ("http",),
    "jaeger": ("query",),
    "grafana": ("http",),
}

# Container paths where each component's configuration is mounted (compose target).
CONFIG_DIRS: dict[str, str] = {
    "collector": "/etc/otelcol",
    "prometheus": "/etc/prometheus",
    "alertmanager": "/etc/alertmanager",
    "loki": "/etc/loki",
    "jaeger": "/etc/jaeger",
    "grafana": "/etc/grafana/provisioning",
    "blackbox": "/etc/blackbox",
}


# Where each component keeps its data in its container: the directory its image creates and
# owns for its non-root user, so a named volume mounted there inherits that ownership (a volume
# on a path the image lacks is created root-owned and the component cannot write to it).
DATA_DIRS: dict[str, str] = {
    "prometheus": "/prometheus",
    "alertmanager": "/alertmanager",
    "loki": "/loki",
    "grafana": "/var/lib/grafana",
}

# Where the compose node_exporter container sees the host's root filesystem (--path.rootfs).
HOST_ROOT = "/host"

# Names compose gives its own containers (besides the components in PORTS).
RESERVED_SERVICE_NAMES = ("secrets", *COMPOSE_NAMES.values())


def named_port(component: str, name: str, *, local: bool, overrides: Mapping[str, int] | None = None) -> int:
    """A component's named port: the spec's override, else the target's default."""
    override = (overrides or {}).get(name)
    if override is not None:
        return override
    compose_port, local_port = PORTS[component][name]
    return local_port if local else compose_port

