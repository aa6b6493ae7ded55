"""Where every component lives for a target: hosts, named ports, paths.

``compose`` and ``local`` differ only here. Compose: containers reach each other by service
name, listen on 0.0.0.0 inside their network, and read configs from fixed container paths.
Local: native binaries on 127.0.0.1, each on its own port (the collector's and Jaeger's OTLP
ports would clash), run by ``obsgen up`` with the bundle root as working directory so that
relative paths in the bundle resolve the same way they do in containers' mounts.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from stack.spec import Service, Spec, WebhookReceiver

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
}

# Components whose compose service (and host name) is not their spec key.
COMPOSE_NAMES: dict[str, str] = {"alert_sink": "alert-sink"}

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


@dataclass(frozen=True)
class Topology:
    spec: Spec

    @property
    def target(self) -> str:
        return self.spec.target

    @property
    def local(self) -> bool:
        return self.spec.target == "local"

    @property
    def listen_host(self) -> str:
        """Address servers bind to: every interface inside a container, loopback natively."""
        return "127.0.0.1" if self.local else "0.0.0.0"

    @property
    def network(self) -> str:
        """The compose network's name: fixed, so another compose project can join it (external: true)."""
        return f"{self.spec.project}-obsgen"

    @property
    def kubernetes(self) -> bool:
        return self.spec.target == "kubernetes"

    def host(self, component: str) -> str:
        """How other components reach ``component``."""
        if self.kubernetes:
            return self.spec.kubernetes.hosts.get(component) or KUBERNETES_HOSTS[component]
        return "127.0.0.1" if self.local else COMPOSE_NAMES.get(component, component)

    def port(self, component: str, name: str) -> int:
        """A named port: the spec's override, else the target's default."""
        settings = getattr(self.spec.components, component, None)
        override = (getattr(settings, "ports", None) or {}).get(name)
        if override is not None:
            return override
        compose_port, local_port = PORTS[component][name]
        return local_port if self.local else compose_port

    def address(self, component: str, name: str) -> str:
        """host:port another component dials."""
        return f"{self.host(component)}:{self.port(component, name)}"

    def listen(self, component: str, name: str) -> str:
        """host:port ``component`` binds for its named port."""
        return f"{self.listen_host}:{self.port(component, name)}"

    def url(self, component: str, name: str, path: str = "") -> str:
        return f"http://{self.address(component, name)}{path}"

    def config_dir(self, component: str) -> str:
        """Where a component's files are, as the component sees them."""
        return component if self.local else CONFIG_DIRS[component]

    def data_dir(self, component: str) -> str:
        """Where a component keeps its data: a named volume in compose, ./data/<c> locally."""
        return f"data/{component}" if self.local else DATA_DIRS.get(component, f"/var/lib/{component}")

    def service_host(self, service: Service) -> str:
        if service.host:
            return service.host
        return "127.0.0.1" if self.local else service.name

    def service_metrics_targets(self, service: Service) -> list[str]:
        """host:port of every instance's metrics endpoint (instances count up from metrics.port)."""
        host = self.service_host(service)
        return [f"{host}:{service.metrics.port + i}" for i in range(service.instances)]

    def webhook_url(self, url: str) -> str:
        """Where Alertmanager posts a webhook: the spec's URL, with the alert sink's host resolved."""
        parts = urlsplit(url)
        if parts.hostname != ALERT_SINK_HOST:
            return url
        return urlunsplit(parts._replace(netloc=self.address("alert_sink", "http")))

    def secret_path(self, name: str) -> str:
        """Where a component reads the secret ``name``: compose secrets, or secrets/ locally.

        Locally, ``obsgen up`` materialises each secret from its file or environment reference
        into ``secrets/<name>`` (mode 0600) before starting anything; the rendered bundle itself
        never holds a secret value.
        """
        return f"secrets/{name}" if self.local else f"/run/secrets/{name}"


# ---------------------------------------------------------------------------------------
# Port conflicts: checked on the spec, so a clash is a located spec error, not a stack that
# fails to start.
# ---------------------------------------------------------------------------------------

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _component_runs(spec: Spec, component: str) -> bool:
    if component == "alert_sink":
        return uses_alert_sink(spec)
    settings = getattr(spec.components, component, None)
    return getattr(settings, "enabled", True)


def alert_sink_receivers(spec: Spec) -> list[int]:
    """Indexes of the webhook receivers whose URL names the bundled alert sink."""
    return [
        index for index, receiver in enumerate(spec.notifications.receivers)
        if isinstance(receiver, WebhookReceiver) and receiver.url is not None
        and urlsplit(receiver.url).hostname == ALERT_SINK_HOST
    ]


def uses_alert_sink(spec: Spec) -> bool:
    return bool(alert_sink_receivers(spec))


def runs_in_compose(service: Service) -> bool:
    """Compose runs builtin services (built here) and image services; external ones only get scraped."""
    return service.builtin or service.image is not None


def port_conflicts(spec: Spec) -> list[tuple[tuple, str]]:
    """(key path, message) for every port two owners would bind on the same host address.

    Local target: every component and every service without its own host listens on 127.0.0.1,
    so all their ports must differ. Compose target: each container has its own address, so only
    the ports published on the host (``publish.bind``) must differ.
    """
    topology = Topology(spec)
    if topology.kubernetes:
        return []  # every pod has its own address and nothing is published on a host
    owners: dict[int, list[tuple[str, tuple]]] = {}

    def claim(port: int, owner: str, path: tuple) -> None:
        entries = owners.setdefault(port, [])
        # One owner may use a port for two names (a server's WebSocket and /metrics on one port).
        if all(existing != owner for existing, _ in entries):
            entries.append((owner, path))

    for component, names in PORTS.items():
        if not _component_runs(spec, component):
            continue
        settings = getattr(spec.components, component)
        # The sink has no section of its own unless its port is moved: point at what runs it.
        default_path = (("notifications", "receivers", alert_sink_receivers(spec)[0], "url")
                        if component == "alert_sink" else ("components", component))
        for name in names:
            if not topology.local and name not in PUBLISHED.get(component, ()):
                continue
            path = ("components", component, "ports", name) if name in settings.ports else default_path
            claim(topology.port(component, name), f"{component}.{name}", path)
    for index, service in enumerate(spec.services):
        if topology.local and (service.host or "127.0.0.1") not in _LOOPBACK:
            continue  # scraped on another host
        if not topology.local and not runs_in_compose(service):
            continue  # runs outside compose: publishes nothing here
        if topology.local:
            for instance in range(service.instances):
                suffix = f"[{instance}]" if service.instances > 1 else ""
                claim(service.metrics.port + instance, f"service {service.name}{suffix}",
                      ("services", index, "metrics", "port"))
        if service.port is not None:
            claim(service.port, f"service {service.name}", ("services", index, "port"))

    where = "the local target (every component listens on 127.0.0.1)" if topology.local else (
        f"the ports compose publishes on {spec.publish.bind}"
    )
    problems = []
    for port, entries in sorted(owners.items()):
        if len(entries) < 2:
            continue
        names = ", ".join(owner for owner, _ in entries)
        for owner, path in entries[1:]:
            problems.append((path, f"port {port} is used by {names} in {where}: give {owner} another port"))
    return problems


# Names compose gives its own containers (besides the components in PORTS).
RESERVED_SERVICE_NAMES = ("secrets", *COMPOSE_NAMES.values())


def service_conflicts(spec: Spec) -> list[tuple[tuple, str]]:
    """(key path, message) for services the topology cannot place as written.

    A service's name is its host in compose, so it may not be a stack component's name. The
    built-in server serves WebSocket and /metrics on one port, so for it the two must be equal.
    """
    taken = {*PORTS, *RESERVED_SERVICE_NAMES}
    builtin = {s.name for s in spec.services if s.builtin}
    problems = []
    for index, service in enumerate(spec.services):
        if service.name in taken:
            problems.append((("services", index, "name"),
                             f"{service.name!r} is the name of a stack component; choose another service name"))
        if service.name.endswith("-loadgen") and service.name[: -len("-loadgen")] in builtin:
            problems.append((("services", index, "name"),
                             f"{service.name!r} is the name compose gives the load generator of "
                             f"{service.name[: -len('-loadgen')]!r}; choose another service name"))
        if service.builtin and service.port is not None and service.port != service.metrics.port:
            problems.append((("services", index, "port"),
                             f"the built-in server serves /metrics on its WebSocket port: port ({service.port}) "
                             f"must equal metrics.port ({service.metrics.port})"))
    return problems


def receiver_conflicts(spec: Spec) -> list[tuple[tuple, str]]:
    """(key path, message) for webhook URLs naming the alert sink other than where it listens."""
    port = Topology(spec).port("alert_sink", "http")
    problems = []
    for index in alert_sink_receivers(spec):
        parts = urlsplit(spec.notifications.receivers[index].url)
        try:
            given = parts.port
        except ValueError:
            given = None  # the spec's URL check reports a bad port
        if parts.scheme != "http" or given != port:
            problems.append((("notifications", "receivers", index, "url"),
                             f"the alert sink listens on plain HTTP, port {port}: write "
                             f"http://{ALERT_SINK_HOST}:{port}{parts.path or '/'}"))
    return problems
