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

from stack.ports import ALERT_SINK_HOST, COMPOSE_NAMES, CONFIG_DIRS, DATA_DIRS, KUBERNETES_HOSTS, named_port
from stack.spec import Service, Spec

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
        return named_port(component, name, local=self.local, overrides=getattr(settings, "ports", None))

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
