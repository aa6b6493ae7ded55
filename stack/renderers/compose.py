"""docker-compose.yml: the whole stack as containers, for the ``compose`` target.

Pure: ``render(spec, topology)`` builds the compose file as a dict. Hosts, ports and paths come
from the topology; images from ``image_for`` (pinned in stack/data/versions.yaml). The ``local``
target runs native processes instead (``obsgen up``), so it renders no compose file.

The file is written for the Compose Specification without ``version`` or ``name`` keys, so that
both Compose v2 (``docker compose``) and docker-compose 1.29 (``docker-compose config``) accept it.
Its one network has a fixed name (``<project>-obsgen``, from the topology), so another compose
project can join it as an external network.

Services. Built-in ones are built from this repository with a load generator each; image ones run
the spec's image with the OTLP variables set (``_image_service``); external ones are only scraped
(Prometheus gets ``host.docker.internal:host-gateway`` when one is on the Docker host). The alert
sink (``instrumented_server.alert_sink``, from the server image) runs when a webhook names it.

Secrets. Alertmanager reads notification credentials, Grafana its admin password and the built-in
server its token-signing key from files under /run/secrets. One short-lived ``secrets`` service
(run as root, no network) stages every one of them into the ``secrets`` volume, owned by the user
of the one container that reads it (mode 0600), and exits; the readers mount that volume read-only
at /run/secrets and start only after it succeeded. File references are compose ``secrets:`` given
to that service; environment references are passed to it as ``${VAR}`` (docker-compose 1.29 refuses
the ``environment:`` secret source, and a compose secret bind-mounts the host file with its host
owner, which a non-root reader often cannot open). A missing variable stops the stack at start with
a message naming it.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

import yaml

from stack.renderers import commands
from stack.spec import EnvSecret, FileSecret, Service, Spec, image_for, runs_in_compose, uses_alert_sink
from stack.ports import CONFIG_DIRS, DOCKER_HOST_NAME, HOST_ROOT, PUBLISHED
from stack.renderers.wiring import (
    GRAFANA_PASSWORD_SECRET,
    JAEGER_HEALTH_PATH,
    JWT_SECRET,
    probes,
    resource_attributes,
    staged_secrets,
)
from stack.topology import Topology

PATH = "docker-compose.yml"
HEADER = (
    "# docker-compose.yml rendered by obsgen from the project spec; edit the spec, not this file.\n"
    "# Run from this directory: docker compose up -d\n"
)

# The user each image runs as: the owner of the secrets staged for it.
UIDS = {"alertmanager": 65534, "grafana": 472, "server": 10001}  # server: see the repo's Dockerfile
SECRETS_VOLUME = "secrets"
SECRETS_SERVICE = "secrets"
STAGED = "/staged"  # where the secrets service sees the volume
# The built-in server is built from this repository's Dockerfile. The default assumes the bundle
# was rendered into a directory directly inside the clone (obsgen render --out out).
BUILD_CONTEXT = "${OBSGEN_SOURCE_DIR:-..}"
DATA_VOLUMES = ("prometheus", "alertmanager", "loki", "grafana")
RESTART = "unless-stopped"
LOADGEN_RUN_SECONDS = 3600
HEALTH_TIMING = {"interval": "10s", "timeout": "5s", "retries": 5, "start_period": "20s"}


# ---------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------


def service_variables(spec: Spec) -> list[tuple[str, str]]:
    """(variable, what reads it) for every {env: NAME} in an image service's environment.

    Compose passes them as ``${NAME:-}`` (so ``docker compose config`` works without them); the
    secrets service checks that each is set, and the services wait for it, so a missing one stops
    the stack at start with a message naming it instead of starting a service with an empty value.
    """
    found: dict[str, str] = {}
    for service in spec.services:
        for key, value in service.environment.items():
            if isinstance(value, EnvSecret):
                found.setdefault(value.env, f"{key} of service {service.name}")
    return sorted(found.items())


def _stage_script(secrets: list[tuple[str, FileSecret | EnvSecret | None, str]],
                  variables: list[tuple[str, str]] = ()) -> str:
    """Shell run by the secrets service. Values never appear here: only names and variables."""
    lines = ["set -eu", "umask 077"]
    for variable, reader in variables:
        message = shlex.quote(f"obsgen: set the environment variable {variable} ({reader})")
        lines.append(f'[ -n "${{{variable}:-}}" ] || {{ echo {message} >&2; exit 1; }}')
    for name, ref, reader in secrets:
        target = shlex.quote(f"{STAGED}/{name}")
        temp = shlex.quote(f"{STAGED}/.{name}.tmp")
        if ref is None:
            # Generated on first start and kept: running servers and load generators share it.
            lines.append(f"[ -s {target} ] || {{ head -c 32 /dev/urandom | base64 > {temp} && mv {temp} {target}; }}")
        elif isinstance(ref, FileSecret):
            lines.append(f"cp /run/secrets/{shlex.quote(name)} {temp}")
            lines.append(f"mv {temp} {target}")
        else:
            variable = ref.env
            message = shlex.quote(f"obsgen: set the environment variable {variable} (secret {name} for {reader})")
            lines.append(f'[ -n "${{{variable}:-}}" ] || {{ echo {message} >&2; exit 1; }}')
            lines.append(f"printf '%s' \"${variable}\" > {temp}")
            lines.append(f"mv {temp} {target}")
        lines.append(f"chown {UIDS[reader]} {target}")
    lines.append("echo obsgen: secrets staged")
    # Compose interpolates $VAR in the file itself: $$ leaves a literal $ for the shell.
    return "\n".join(lines).replace("$", "$$")


def _secrets_service(spec: Spec, secrets) -> dict:
    files = [name for name, ref, _ in secrets if isinstance(ref, FileSecret)]
    checked = service_variables(spec)
    variables = sorted({ref.env for _, ref, _ in secrets if isinstance(ref, EnvSecret)} | {v for v, _ in checked})
    service: dict = {
        # The alertmanager image: pinned, pulled anyway, with a busybox shell (sh, cp, chown, base64).
        "image": image_for(spec, "alertmanager"),
        "user": "0",
        "entrypoint": ["/bin/sh", "-c", _stage_script(secrets, checked)],
        "network_mode": "none",
        "restart": "no",
        "volumes": [f"{SECRETS_VOLUME}:{STAGED}"],
    }
    if variables:
        # ${VAR:-}: `docker compose config` works without the variable; the script refuses to go on.
        service["environment"] = {variable: f"${{{variable}:-}}" for variable in variables}
    if files:
        service["secrets"] = files
    return service


# ---------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------


def _builtin_services(spec: Spec) -> list[Service]:
    return [service for service in spec.services if service.builtin]


def _published(spec: Spec, topology: Topology, component: str) -> list[str]:
    bind = spec.publish.bind
    return [f"{bind}:{port}:{port}" for port in (topology.port(component, name) for name in PUBLISHED.get(component, ()))]


def _limits(spec: Spec, component: str) -> dict:
    resources = getattr(spec.components, component).resources
    limits = {}
    if resources.memory:
        limits["memory"] = resources.memory
    if resources.cpus:
        limits["cpus"] = str(resources.cpus)
    return {"deploy": {"resources": {"limits": limits}}} if limits else {}


def _config_mount(component: str) -> str:
    return f"./{component}:{CONFIG_DIRS[component]}:ro"


def _http_check(url: str) -> dict:
    # busybox wget: in the Prometheus, Alertmanager and Jaeger images.
    return {"test": ["CMD", "wget", "-q", "--spider", url], **HEALTH_TIMING}


def _service(spec: Spec, component: str, **fields) -> dict:
    return {"image": image_for(spec, component), **fields, "restart": RESTART, **_limits(spec, component)}


def _started(*names: str) -> dict:
    return {name: {"condition": "service_started"} for name in names}


def _healthy(*names: str) -> dict:
    return {name: {"condition": "service_healthy"} for name in names}


def _staged() -> dict:
    return {SECRETS_SERVICE: {"condition": "service_completed_successfully"}}


def _collector(spec: Spec, topology: Topology) -> dict:
    return _service(
        spec, "collector",
        command=commands.collector(spec, topology),
        volumes=[_config_mount("collector")],
        ports=_published(spec, topology, "collector"),
        # The image has no shell: no healthcheck; its dependants wait for it to start.
        depends_on=_healthy("jaeger", "loki"),
    )


def _docker_host(hosts) -> dict:
    """``host.docker.internal`` for a container that dials the Docker host (Docker Desktop has it;
    Linux engines 20.10+ map it to the host's gateway address only when asked)."""
    return {"extra_hosts": [f"{DOCKER_HOST_NAME}:host-gateway"]} if DOCKER_HOST_NAME in hosts else {}


def _prometheus(spec: Spec, topology: Topology) -> dict:
    scraped = {topology.service_host(service) for service in spec.services if not runs_in_compose(service)}
    return _service(
        spec, "prometheus",
        command=commands.prometheus(spec, topology),
        volumes=[_config_mount("prometheus"), f"prometheus:{topology.data_dir('prometheus')}"],
        ports=_published(spec, topology, "prometheus"),
        healthcheck=_http_check(f"http://localhost:{topology.port('prometheus', 'http')}/-/ready"),
        depends_on={**_started("collector"), **_healthy("alertmanager")},
        **_docker_host(scraped),
    )


def _alertmanager(spec: Spec, topology: Topology) -> dict:
    webhooks = {urlsplit(r.url).hostname for r in spec.notifications.receivers if getattr(r, "url", None)}
    depends_on = _staged()
    if uses_alert_sink(spec):
        depends_on.update(_started(topology.host("alert_sink")))
    return _service(
        spec, "alertmanager",
        command=commands.alertmanager(spec, topology),
        volumes=[
            _config_mount("alertmanager"),
            f"alertmanager:{topology.data_dir('alertmanager')}",
            f"{SECRETS_VOLUME}:/run/secrets:ro",
        ],
        ports=_published(spec, topology, "alertmanager"),
        healthcheck=_http_check(f"http://localhost:{topology.port('alertmanager', 'http')}/-/ready"),
        depends_on=depends_on,
        **_docker_host(webhooks),
    )


def _loki(spec: Spec, topology: Topology) -> dict:
    ready = f"http://localhost:{topology.port('loki', 'http')}/ready"
    return _service(
        spec, "loki",
        command=commands.loki(spec, topology),
        volumes=[_config_mount("loki"), f"loki:{topology.data_dir('loki')}"],
        ports=_published(spec, topology, "loki"),
        # The image is distroless; Loki 3.7 checks itself (`loki -health`) without a shell.
        healthcheck={"test": ["CMD", "/usr/bin/loki", "-health", f"-health.url={ready}"], **HEALTH_TIMING},
    )


def _jaeger(spec: Spec, topology: Topology) -> dict:

    return _service(
        spec, "jaeger",
        command=commands.jaeger(spec, topology),
        volumes=[_config_mount("jaeger")],
        ports=_published(spec, topology, "jaeger"),
        healthcheck=_http_check(f"http://localhost:{topology.port('jaeger', 'health')}{JAEGER_HEALTH_PATH}"),
    )


def _grafana(spec: Spec, topology: Topology) -> dict:
    settings = spec.components.grafana
    return _service(
        spec, "grafana",
        environment={
            "GF_SERVER_HTTP_ADDR": topology.listen_host,
            "GF_SERVER_HTTP_PORT": str(topology.port("grafana", "http")),
            "GF_SECURITY_ADMIN_USER": settings.admin_user,
            "GF_SECURITY_ADMIN_PASSWORD__FILE": f"/run/secrets/{GRAFANA_PASSWORD_SECRET}",
            "GF_AUTH_ANONYMOUS_ENABLED": "false",
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
        },
        volumes=[
            f"./grafana/provisioning:{CONFIG_DIRS['grafana']}:ro",
            f"grafana:{topology.data_dir('grafana')}",
            f"./grafana/dashboards:{topology.data_dir('grafana')}/dashboards:ro",
            # Runbooks are served by Grafana itself, at /public/runbooks/<AlertName>.md.
            "./runbooks:/usr/share/grafana/public/runbooks:ro",
            f"{SECRETS_VOLUME}:/run/secrets:ro",
        ],
        ports=_published(spec, topology, "grafana"),
        healthcheck={
            "test": ["CMD", "curl", "-fsS", "-o", "/dev/null", f"http://localhost:{topology.port('grafana', 'http')}/api/health"],
            **HEALTH_TIMING,
        },
        depends_on={**_healthy("prometheus", "loki", "jaeger"), **_staged()},
    )


def _node_exporter(spec: Spec, topology: Topology) -> dict:
    """Host metrics from inside a container: the host's /proc, /sys and / mounted read-only, and
    the host's PID namespace so process counts are the host's. Network counters are those of the
    container's own namespace (as in every stack that keeps it on the compose network)."""
    return _service(
        spec, "node_exporter",
        command=commands.node_exporter(spec, topology),
        volumes=[f"/proc:{HOST_ROOT}/proc:ro", f"/sys:{HOST_ROOT}/sys:ro", f"/:{HOST_ROOT}:ro,rslave"],
        pid="host",
    )


def _blackbox(spec: Spec, topology: Topology) -> dict:
    return _service(
        spec, "blackbox",
        command=commands.blackbox(spec, topology),
        volumes=[_config_mount("blackbox")],
        healthcheck=_http_check(f"http://localhost:{topology.port('blackbox', 'http')}/-/healthy"),
    )


def _redis(spec: Spec, topology: Topology) -> dict:
    port = topology.port("redis", "redis")
    return _service(
        spec, "redis",
        command=["redis-server", *commands.redis(spec, topology)],
        healthcheck={"test": ["CMD", "redis-cli", "-p", str(port), "ping"], **HEALTH_TIMING},
    )


def _server_port(service: Service) -> int:
    # WebSocket, /metrics, /healthz and /readyz share one port (the spec refuses two different ones).
    return service.metrics.port


def _server_build(spec: Spec) -> dict:
    return {"build": {"context": BUILD_CONTEXT, "dockerfile": "Dockerfile"}, "image": image_for(spec, "server")}


def _server_instances(spec: Spec, topology: Topology, service: Service) -> dict[str, dict]:
    """The built-in server: one container per instance, all in the first one's network namespace,
    so Prometheus reaches instance i at <name>:<metrics.port + i> as the topology says."""
    redis = spec.components.redis.enabled
    base_port = _server_port(service)
    result = {}
    for instance in range(service.instances):
        port = base_port + instance
        environment = commands.server_environment(
            topology, service, port, f"/run/secrets/{JWT_SECRET}",
            f"redis://{topology.address('redis', 'redis')}/0" if redis else None)
        depends_on = {**_started("collector"), **_staged()}
        if redis:
            depends_on.update(_healthy("redis"))
        container = {
            **_server_build(spec),
            "environment": environment,
            "volumes": [f"{SECRETS_VOLUME}:/run/secrets:ro"],
            "healthcheck": {
                "test": ["CMD", "python", "-c",
                         f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=3)"],
                **HEALTH_TIMING,
            },
            "depends_on": depends_on,
            "restart": RESTART,
        }
        if instance == 0:
            ports = [base_port + i for i in range(service.instances)]
            if service.port is not None:
                container["ports"] = [f"{spec.publish.bind}:{p}:{p}" for p in ports]
            name = service.name
        else:
            container["network_mode"] = f"service:{service.name}"
            container["depends_on"] = {**depends_on, **_started(service.name)}
            name = f"{service.name}-{instance}"
        result[name] = container
    return result


def _loadgen(spec: Spec, topology: Topology, service: Service) -> dict:
    host = topology.service_host(service)
    port = _server_port(service)
    return {
        **_server_build(spec),
        # Steady load at the load generator's default rate; it prints a report every hour and
        # is started again, so the dashboards always have traffic to show.
        "command": [
            "python", "-m", "instrumented_server.loadgen",
            "--url", f"ws://{host}:{port}/",
            "--jwt-secret-file", f"/run/secrets/{JWT_SECRET}",
            "--duration", str(LOADGEN_RUN_SECONDS),
        ],
        "volumes": [f"{SECRETS_VOLUME}:/run/secrets:ro"],
        "depends_on": _healthy(service.name),
        "restart": RESTART,
    }


def _python_check(url: str) -> dict:
    # The server image has Python, no curl or wget.
    return {"test": ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=3)"],
            **HEALTH_TIMING}


def _alert_sink(spec: Spec, topology: Topology) -> dict:
    """The webhook receiver that logs every notification (instrumented_server/alert_sink.py)."""
    from instrumented_server.alert_sink import HEALTH_PATH

    port = topology.port("alert_sink", "http")
    image = spec.components.alert_sink.image
    return {
        **({"image": image} if image else _server_build(spec)),
        "command": ["python", "-m", "instrumented_server.alert_sink", "--host", topology.listen_host, "--port", str(port)],
        "healthcheck": _python_check(f"http://127.0.0.1:{port}{HEALTH_PATH}"),
        "restart": RESTART,
        **_limits(spec, "alert_sink"),
    }


def _literal(text: str) -> str:
    """Compose interpolates ${VAR} and $VAR in the file: $$ keeps a spec's $ as written."""
    return text.replace("$", "$$")


def _image_service(spec: Spec, topology: Topology, service: Service) -> dict:
    """A user's image on the stack's network: named OTLP settings, scraped at <name>:<metrics.port>."""
    environment: dict[str, str] = {}
    if service.otlp:
        # OTLP/HTTP: the SDKs' default protocol; a gRPC-only SDK overrides both in the spec's environment.
        environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = topology.url("collector", "otlp_http")
        environment["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    environment["OTEL_SERVICE_NAME"] = service.name
    environment["OTEL_RESOURCE_ATTRIBUTES"] = _literal(resource_attributes(spec, topology, service))
    for key, value in service.environment.items():
        environment[key] = f"${{{value.env}:-}}" if isinstance(value, EnvSecret) else _literal(value)
    container: dict = {"image": service.image}
    if service.command is not None:
        container["command"] = [_literal(argument) for argument in service.command]
    container["environment"] = environment
    if service.port is not None:
        container["ports"] = [f"{spec.publish.bind}:{service.port}:{service.port}"]
    depends_on = _started("collector") if service.otlp else {}
    if any(isinstance(value, EnvSecret) for value in service.environment.values()):
        depends_on.update(_staged())  # the secrets service checks the variables are set
    if depends_on:
        container["depends_on"] = depends_on
    container["restart"] = RESTART
    return container


def compose(spec: Spec, topology: Topology) -> dict:
    secrets = staged_secrets(spec)
    services = {
        "collector": _collector(spec, topology),
        "prometheus": _prometheus(spec, topology),
        "alertmanager": _alertmanager(spec, topology),
        "loki": _loki(spec, topology),
        "jaeger": _jaeger(spec, topology),
        "grafana": _grafana(spec, topology),
    }
    if spec.components.redis.enabled:
        services["redis"] = _redis(spec, topology)
    if spec.components.node_exporter.enabled:
        services[topology.host("node_exporter")] = _node_exporter(spec, topology)
    if probes(spec, topology):
        services[topology.host("blackbox")] = _blackbox(spec, topology)
    services[SECRETS_SERVICE] = _secrets_service(spec, secrets)
    if uses_alert_sink(spec):
        services[topology.host("alert_sink")] = _alert_sink(spec, topology)
    for service in spec.services:
        if service.builtin:
            services.update(_server_instances(spec, topology, service))
            services[f"{service.name}-loadgen"] = _loadgen(spec, topology, service)
        elif service.image is not None:
            services[service.name] = _image_service(spec, topology, service)
    document: dict = {
        "services": services,
        # Named, not <directory>_default: another compose project joins it as an external network.
        "networks": {"default": {"name": topology.network}},
        "volumes": {name: {} for name in (*DATA_VOLUMES, SECRETS_VOLUME)},
    }
    files = {name: {"file": ref.file} for name, ref, _ in secrets if isinstance(ref, FileSecret)}
    if files:
        document["secrets"] = files
    return document


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the secrets script) as literal blocks, readable as written."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    if topology.local:
        return {}  # native processes: local/processes.yaml, run by `obsgen up`
    text = yaml.dump(compose(spec, topology), Dumper=_Dumper, sort_keys=False, width=120)
    return {PATH: HEADER + text}
