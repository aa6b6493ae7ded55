"""The spec model: what one obsgen.yaml says, typed, with defaults merged.

Pure: no file or network I/O here. ``stack.load`` turns YAML text into this model and maps
validation errors back to file:line; renderers read only this model (and the topology). Below it: stack/ports.py (port tables).

Version 1 of the spec. A later version gets its own model module; ``version`` names it.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from functools import lru_cache
from importlib import resources
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from alerts.pack import SLO_ABSENT_SUFFIX, SLO_BURN_SUFFIX, check_overrides, load_pack, load_slo_settings
from exporter.catalog import BY_NAME
from stack.dashboard_ids import generated_dashboards, uid_for
from stack.durations import parse_duration
from stack.errors import KeyPathError
from stack.ports import ALERT_SINK_HOST, KUBERNETES_HOSTS, PORTS, PUBLISHED, RESERVED_SERVICE_NAMES, named_port

SPEC_VERSION = 1

# ---------------------------------------------------------------------------------------
# Scalars with their own rules
# ---------------------------------------------------------------------------------------

def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _promql(value: str) -> str:
    # Imported lazily: promql_parser is a compiled extension and only needed when a spec has queries.
    import promql_parser

    try:
        promql_parser.parse(value)
    except Exception as exc:  # the parser raises ValueError or its own error type
        raise ValueError(f"PromQL expression does not parse: {exc}") from None
    return value


def _windowed_promql(value: str) -> str:
    if "$window" not in value:
        raise ValueError("an SLO query must use [$window] as its range, e.g. sum(rate(x_total[$window]))")
    _promql(value.replace("$window", "5m"))
    return value


_TEMPLATE_BLOCKS = ("if", "range", "with", "define", "block")


def _alert_template(value: str) -> str:
    """Prometheus expands alert annotations and labels as Go templates, and refuses to load rules
    whose template does not parse. Refuse here what its parser refuses by structure: an action that
    is never closed, and an end or else outside a block. (An unknown function is still promtool's to find.)"""
    depth, position = 0, 0
    while (start := value.find("{{", position)) != -1:
        end = value.find("}}", start + 2)
        if end == -1:
            raise ValueError('a template action {{ is never closed with }} (for literal braces write {{ "{{" }})')
        words = value[start + 2:end].strip().strip("-").split()
        if words and words[0] in _TEMPLATE_BLOCKS:
            depth += 1
        elif words and words[0] in ("end", "else") and not depth:
            raise ValueError(f"a template {{{{ {words[0]} }}}} without its {{{{ if }}}}, {{{{ range }}}} or {{{{ with }}}}")
        elif words and words[0] == "end":
            depth -= 1
        position = end + 2
    if depth:
        raise ValueError("a template {{ if }}, {{ range }} or {{ with }} is never closed with {{ end }}")
    return value


def _webhook_url(value: str) -> str:
    """What Alertmanager's URL check accepts (Go's url.Parse, scheme http or https, a host)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host, e.g. http://127.0.0.1:5001/alerts")
    if re.search(r"%(?![0-9A-Fa-f]{2})", parts.netloc + parts.path):
        raise ValueError("not a valid URL: a % that does not start an escape such as %20")
    return value


def _static_text(value: str) -> str:
    if "{{" in value:
        raise ValueError("the summary is static (one sentence, no {{ }}): put {{ $labels.x }} and {{ $value }} "
                         "in the description")
    return value


AlertTemplate = Annotated[str, AfterValidator(_alert_template)]
Duration = Annotated[str, AfterValidator(_duration)]
WindowedPromQL = Annotated[str, StringConstraints(min_length=1), AfterValidator(_windowed_promql)]
PromQL = Annotated[str, StringConstraints(min_length=1), AfterValidator(_promql)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
AlertName = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]{0,127}$")]
LabelName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Severity = Literal["critical", "warning", "info"]


def _duplicates(section: tuple[str, ...], key: str, names: list[str]) -> list[tuple[tuple, str]]:
    """A problem for every repeat of a name, pointing at the repeat and naming the first."""
    first: dict[str, int] = {}
    problems = []
    for index, name in enumerate(names):
        if name is None:
            continue
        if name in first:
            where = ".".join(section)
            problems.append(((*section, index, key), f"duplicate {key} {name!r}: already used by {where}[{first[name]}]"))
        else:
            first[name] = index
    return problems


class Model(BaseModel):
    """Base for every spec section: unknown keys are errors (the loader suggests the nearest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------
# Secrets: only ever a reference to a file or an environment variable
# ---------------------------------------------------------------------------------------


class FileSecret(Model):
    """A secret read from a file on the host running the stack (mounted as a compose secret)."""

    file: str = Field(min_length=1, description="Path to a file holding the secret, relative to the spec.")

    @field_validator("file")
    @classmethod
    def _relative_to_spec(cls, value: str, info: ValidationInfo) -> str:
        # The loader passes the spec's directory: a relative path means "next to the spec".
        if "://" in value:  # a webhook URL given as the "file": the secret itself, never echoed
            raise ValueError("this is a URL, not a file path: put the secret in a file and give that file's path")
        base_dir = (info.context or {}).get("base_dir")
        if base_dir and not posixpath.isabs(value) and not value.startswith("~"):
            return posixpath.normpath(posixpath.join(base_dir, value))
        return value


class EnvSecret(Model):
    """A secret taken from an environment variable when the stack starts."""

    env: str = Field(
        description="Name of the environment variable holding the secret.",
        json_schema_extra={"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
    )

    @field_validator("env")
    @classmethod
    def _variable_name(cls, value: str) -> str:
        # Checked here, not by a pattern: the pattern's error would echo the value, which may be the secret.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("expected the name of an environment variable (letters, digits and '_'), not its value")
        return value


def _secret_kind(value: object) -> str | None:
    if isinstance(value, dict):
        return "FileSecret" if "file" in value else "EnvSecret" if "env" in value else None
    return "FileSecret" if isinstance(value, FileSecret) else "EnvSecret" if isinstance(value, EnvSecret) else None


# Tagged by which key is present, so a mistake is reported once, against the form the user chose.
SecretRef = Annotated[
    Union[Annotated[FileSecret, Tag("FileSecret")], Annotated[EnvSecret, Tag("EnvSecret")]],
    Discriminator(_secret_kind),
]


def _secret_ref(value: object) -> object:
    """Refuse an inline secret with a message that says what to write instead."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        raise ValueError(
            "secrets are never written inline: give {file: path/to/secret} or {env: VARIABLE_NAME}"
        )
    if isinstance(value, dict) and ("file" in value) == ("env" in value):
        raise ValueError("expected exactly one of {file: path/to/secret} or {env: VARIABLE_NAME}")
    if not isinstance(value, (dict, FileSecret, EnvSecret)):
        raise ValueError("expected {file: path/to/secret} or {env: VARIABLE_NAME}")
    return value


Secret = Annotated[
    SecretRef,
    BeforeValidator(_secret_ref),
    Field(description="{file: PATH} or {env: NAME}; never the secret itself."),
]


# ---------------------------------------------------------------------------------------
# Services to observe
# ---------------------------------------------------------------------------------------


class MetricsEndpoint(Model):
    port: Port = 8000
    path: str = Field("/metrics", pattern=r"^/")
    scrape_interval: Duration | None = None
    exporter: bool = Field(
        False, description="The service is instrumented with obsgen's exporter library, so it exposes the metric "
        "catalog of exporter/catalog.py (builtin services always do); custom alerts' names are checked against it.",
    )
    names: list[Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]] = Field(
        default_factory=list,
        description="Metric names this service exposes (a histogram's base name covers its _bucket/_sum/_count); "
        "custom alerts' names are checked against them, the built-in server's catalog and the stack's own.",
    )


class ProbeSettings(Model):
    """How blackbox_exporter checks the service from outside (components.blackbox runs it)."""

    enabled: bool = Field(True, description="Probe this service (its WebSocket upgrade, and ready_path).")
    path: str = Field("/", pattern=r"^/[\x21-\x7e]*$", description="Path of the WebSocket upgrade request.")
    tls: bool = Field(False, description="The endpoint is wss:// (https:// for ready_path): probe over TLS and "
                                         "record the certificate's expiry.")
    ready_path: str | None = Field(
        None, pattern=r"^/[\x21-\x7e]*$",
        description="An HTTP path that answers 2xx when the service is ready; default /readyz for built-in servers, "
        "none for others.")


# A Docker image reference as the engine parses it: [registry[:port]/]path[:tag][@algorithm:digest],
# the path lowercase (github.com/distribution/reference).
_IMAGE_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_IMAGE_RE = re.compile(
    rf"^(?:{_IMAGE_DOMAIN}/)?{_IMAGE_PART}(?:/{_IMAGE_PART})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
    re.ASCII,
)


def _image_reference(value: str) -> str:
    if len(value) > 255 or not _IMAGE_RE.match(value):
        raise ValueError("not an image reference: expected [registry/]name[:tag][@sha256:digest] with a lowercase "
                         "name, e.g. ghcr.io/acme/chat:1.4.2")
    return value


def _scalar_text(value: object) -> object:
    """YAML gives 8080 and true where compose wants text: take scalars as their text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _environment_value(value: object) -> object:
    if isinstance(value, dict) and "file" in value:
        raise ValueError("an environment variable takes text or {env: NAME} (read from the environment of "
                         "`docker compose up`); a file secret cannot become an environment variable")
    value = _scalar_text(value)
    if not isinstance(value, (str, dict, EnvSecret)):
        raise ValueError("expected text (a string, number or true/false) or {env: NAME}")
    return value


ImageReference = Annotated[str, AfterValidator(_image_reference)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[
    Union[Annotated[EnvSecret, Tag("EnvSecret")], Annotated[str, Tag("text")]],
    Discriminator(lambda value: "EnvSecret" if isinstance(value, (dict, EnvSecret)) else "text"),
    BeforeValidator(_environment_value, json_schema_input_type=Union[EnvSecret, str, int, float, bool]),
]
ScalarText = Annotated[str, BeforeValidator(_scalar_text, json_schema_input_type=Union[str, int, float, bool])]
AttributeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,254}$")]

# Variables obsgen sets itself for an image service; the spec names them through other keys.
_OWN_VARIABLES = {
    "OTEL_SERVICE_NAME": "the service's name is `name`",
    "OTEL_RESOURCE_ATTRIBUTES": "give resource attributes as resource_attributes: {key: value}",
}
# A literal value under a name like these belongs in the environment of `docker compose up`.
_SECRET_NAME = re.compile(r"(^|_)(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|APIKEY|PRIVATE_KEY|CREDENTIALS?)$", re.I)


class Service(Model):
    """A service whose metrics Prometheus scrapes and whose OTLP the collector receives.

    Three kinds: ``builtin`` (this project's server, built and run by compose), ``image`` (any
    image, run by compose on the stack's network with the OTLP variables set), or neither: an
    external service that compose does not run, scraped at ``host``.
    """

    name: Name
    metrics: MetricsEndpoint = MetricsEndpoint()
    otlp: bool = Field(True, description="The service sends traces and logs over OTLP to the collector.")
    host: str | None = Field(
        None, description="Where to scrape an external service (neither builtin nor image); defaults to the "
        "service name (compose: a container attached to the stack's network under that name) or 127.0.0.1 (local). "
        "host.docker.internal reaches the Docker host.",
    )
    port: Port | None = Field(
        None, description="Port the service listens on for its own traffic (WebSocket); compose publishes it on "
        "publish.bind for builtin and image services.",
    )
    instances: int = Field(1, ge=1, le=64, description="Replicas to scrape (ports counted up from metrics.port).")
    builtin: bool = Field(
        False, description="This project's instrumented server: compose builds and runs it with a load generator."
    )
    image: ImageReference | None = Field(
        None, description="An image compose runs as this service on the stack's network, with OTEL_SERVICE_NAME, "
        "OTEL_RESOURCE_ATTRIBUTES and (with otlp) OTEL_EXPORTER_OTLP_ENDPOINT set; scraped at <name>:<metrics.port>.",
    )
    command: list[ScalarText] | None = Field(
        None, description="Arguments for an image service (compose `command`, exec form, as a list)."
    )
    environment: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        description="Environment of an image service: text, or {env: NAME} to pass a variable (a secret) from the "
        "environment of `docker compose up`. Overrides the OTEL_EXPORTER_OTLP_* defaults.",
    )
    resource_attributes: dict[AttributeName, ScalarText] = Field(
        default_factory=dict,
        description="OpenTelemetry resource attributes of an image service, added to OTEL_RESOURCE_ATTRIBUTES.",
    )
    probe: ProbeSettings = Field(
        ProbeSettings(), description="Outside-in probes by blackbox_exporter (built-in servers, or services with `port`).")

    @model_validator(mode="after")
    def _kind(self) -> "Service":
        problems: list[tuple[tuple, str]] = []
        if self.image is not None:
            if self.builtin:
                problems.append((("image",), "a service is either builtin (this repository's server, which compose "
                                             "builds) or runs an image, not both"))
            if self.host is not None:
                problems.append((("host",), f"compose runs this image as {self.name!r} on the stack's network and "
                                            f"scrapes it there; host is for a service compose does not run"))
            if self.instances > 1:
                problems.append((("instances",), "compose runs one container of an image service; run replicas "
                                                 "yourself and list them as an external service (no image)"))
        else:
            for key in ("command", "environment", "resource_attributes"):
                if getattr(self, key):
                    problems.append(((key,), f"{key} is for a service with an image, which compose runs; "
                                             "this service runs elsewhere"))
        for variable, why in _OWN_VARIABLES.items():
            if variable in self.environment:
                problems.append((("environment", variable, "[key]"), f"obsgen sets {variable}: {why}"))
        for variable, value in self.environment.items():
            if isinstance(value, str) and value and _SECRET_NAME.search(variable):
                problems.append((("environment", variable), f"{variable} looks like a secret: give {{env: NAME}} so "
                                                            "its value stays out of the spec and the bundle"))
        if "service.name" in self.resource_attributes:
            problems.append((("resource_attributes", "service.name", "[key]"),
                             "the service's name is `name` (obsgen sets OTEL_SERVICE_NAME)"))
        if problems:
            raise KeyPathError(problems)
        return self


# ---------------------------------------------------------------------------------------
# Stack components
# ---------------------------------------------------------------------------------------


class Resources(Model):
    memory: Annotated[str, StringConstraints(pattern=r"^\d+(k|m|g|K|M|G)?$")] | None = Field(
        None, description="Memory limit, e.g. 512m."
    )
    cpus: float | None = Field(None, gt=0, le=64)


class Component(Model):
    image: str | None = Field(None, description="Override the pinned image (stack/data/versions.yaml).")
    ports: dict[str, Port] = Field(
        default_factory=dict,
        description="Override named ports (see `obsgen schema` and stack/ports.py), e.g. {http: 9091}.",
    )
    resources: Resources = Resources()


def memory_mib(text: str) -> float:
    """MiB in a docker memory size ("512m", "1g", "1048576")."""
    scale = {"k": 1 / 1024, "m": 1, "g": 1024}.get(text[-1].lower())
    return int(text[:-1]) * scale if scale else int(text) / (1024 * 1024)


class CollectorSettings(Component):
    memory_limit_mib: int = Field(400, ge=32, description="memory_limiter limit.")
    batch_timeout: Duration = "5s"
    debug: bool = Field(
        False,
        description="Also print a summary of every batch to the collector's log (debug exporter, basic "
        "verbosity): for troubleshooting a pipeline, not for production.",
    )

    @model_validator(mode="after")
    def _limit_below_container(self) -> "CollectorSettings":
        # The limiter must act before the container's OOM killer does.
        if self.resources.memory and self.memory_limit_mib >= memory_mib(self.resources.memory):
            raise KeyPathError([(
                ("memory_limit_mib",),
                f"memory_limit_mib ({self.memory_limit_mib}) must be below the container memory limit "
                f"resources.memory ({self.resources.memory}), or the collector is killed before it sheds load",
            )])
        return self


class PrometheusSettings(Component):
    retention: Duration = "15d"
    scrape_interval: Duration = "15s"
    evaluation_interval: Duration = "15s"


class AlertmanagerSettings(Component):
    pass


class LokiSettings(Component):
    enabled: bool = Field(True, description="Run Loki (logs backend; without it the server ships no logs). Local target only: `obsgen up` turns it off for a bundle when the binary is not installed (docs/e2e.md); compose and kubernetes run the whole stack.")
    retention: Duration = Field("168h", description="How long logs are kept; at least 24h (Loki deletes whole daily index tables).")

    @field_validator("retention")
    @classmethod
    def _whole_days(cls, value: str) -> str:
        if parse_duration(value) < 86400:
            raise ValueError(f"{value!r} is shorter than 24h: Loki applies retention per daily index table")
        return value


class JaegerSettings(Component):
    enabled: bool = Field(True, description="Run Jaeger (traces backend; without it the server samples no traces). Local target only: `obsgen up` turns it off for a bundle when the binary is not installed (docs/e2e.md); compose and kubernetes run the whole stack.")
    max_traces: int = Field(100000, ge=1000, description="Traces kept by the in-memory store.")


class GrafanaSettings(Component):
    enabled: bool = Field(True, description="Run Grafana. Local target only: `obsgen up` turns it off for a bundle when the binary is not installed (docs/e2e.md); compose and kubernetes run the whole stack.")
    admin_user: str = "admin"
    admin_password: Secret | None = Field(
        None,
        description="Grafana admin password. Without one, compose reads it from the environment variable "
        "GRAFANA_ADMIN_PASSWORD when the stack starts (and refuses to start Grafana when it is unset).",
    )


class RedisSettings(Component):
    enabled: bool = Field(True, description="Run Redis as the server's backplane.")


class AlertSinkSettings(Component):
    """The alert sink runs when a webhook receiver's URL names it (http://alert-sink:5001/...)."""

    image: ImageReference | None = Field(
        None, description="An image holding this project's instrumented_server package; default: the server image, "
        "built from this repository's Dockerfile.",
    )


class RunbooksSettings(Component):
    """Local target: `obsgen up` serves the bundle's runbooks/ on this port (unless alerts.runbook_base_url
    points elsewhere); compose serves them from Grafana's public folder instead."""


class NodeExporterSettings(Component):
    """Host metrics: CPU, memory, load, disks, network (node_exporter). Compose mounts the host's
    /proc, /sys and root filesystem read-only; the local target runs the native binary."""

    enabled: bool = Field(True, description="Run node_exporter and scrape it (false leaves host metrics out).")


class BlackboxSettings(Component):
    """Outside-in probes of the services (blackbox_exporter): the WebSocket upgrade and /readyz."""

    enabled: bool = Field(True, description="Run blackbox_exporter and probe every WebSocket service from outside.")
    interval: Duration | None = Field(None, description="Probe interval (default: Prometheus' scrape interval).")
    timeout: Duration = Field("5s", description="How long one probe may take before it counts as failed.")


class Components(Model):
    collector: CollectorSettings = CollectorSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    loki: LokiSettings = LokiSettings()
    jaeger: JaegerSettings = JaegerSettings()
    grafana: GrafanaSettings = GrafanaSettings()
    redis: RedisSettings = RedisSettings()
    alert_sink: AlertSinkSettings = AlertSinkSettings()
    runbooks: RunbooksSettings = RunbooksSettings()
    node_exporter: NodeExporterSettings = NodeExporterSettings()
    blackbox: BlackboxSettings = BlackboxSettings()


class Publish(Model):
    bind: str = Field(
        "127.0.0.1", description="Host IPv4 address published ports bind to; 0.0.0.0 exposes them to the network."
    )

    @field_validator("bind")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        # Written into compose's host:port:port form, where an IPv6 address would need brackets.
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address: expected e.g. 127.0.0.1 or 0.0.0.0") from None
        return value


# ---------------------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------------------


class Threshold(Model):
    """One built-in alert's knobs. Unset fields keep the pack's defaults (alerts/pack.yaml)."""

    enabled: bool = True
    threshold: float | None = Field(None, description="The (warning) level, in the alert's unit (see docs/alerts.md).")
    critical: float | None = Field(
        None, description="The critical level of a warning+critical pair (connection_drop_rate, p99_latency, error_rate)."
    )
    for_: Duration | None = Field(None, alias="for")
    severity: Severity | None = Field(None, description="Severity of the alert (of its lower level, for a pair).")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SeriesInput(Model):
    """One promtool input series."""

    series: str = Field(min_length=1, description='A series, e.g. http_errors_total{job="api"}.')
    values: str = Field(
        pattern=r"^\s*[-+0-9a-zA-Z_. ]+$", description="promtool's expanding notation, e.g. '0+10x30' or '1x20'."
    )

    @field_validator("series")
    @classmethod
    def _series(cls, value: str) -> str:
        _promql(value)
        return value


class CustomAlertTest(Model):
    """A promtool unit test for a custom alert: input under which it fires, and one where it stays silent."""

    interval: Duration = "1m"
    input: list[SeriesInput] = Field(min_length=1, description="Series under which the alert fires.")
    eval_time: Duration = Field("15m", description="When to look; later than `for` after the condition starts.")
    labels: dict[LabelName, str] = Field(
        default_factory=dict,
        description="Labels the firing alert carries from its expression (besides alertname, severity and `labels`).",
    )
    description: str | None = Field(None, description="The description as it renders for the firing alert.")
    silent_input: list[SeriesInput] = Field(
        default_factory=list, description="Series under which it stays silent (default: none, zero traffic)."
    )

class CustomAlert(Model):
    name: AlertName
    expr: PromQL
    for_: Duration = Field("5m", alias="for")
    severity: Severity = "warning"
    summary: Annotated[str, AfterValidator(_static_text)] = Field(min_length=1, description="Static one-sentence summary.")
    description: AlertTemplate = Field(min_length=1, description="May use {{ $labels.x }} and {{ $value }}.")
    runbook: str | None = Field(None, description="Runbook text (Markdown); a page is rendered for it.")
    labels: dict[LabelName, AlertTemplate] = {}
    tests: CustomAlertTest | None = Field(
        None,
        description="Input series under which the alert fires, for its promtool unit test; without it only "
        "the zero-traffic (no series) case is tested.",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _testable_description(self) -> "CustomAlert":
        if self.tests is not None and self.tests.description is None and "{{" in self.description:
            raise KeyPathError([(("tests", "description"),
                                 "the description is templated: give it as it renders for the firing test case")])
        if self.tests is not None:
            # The unit test expects the labels as written; a templated one would render otherwise.
            templated = [(("labels", key), "a templated label cannot be checked by the alert's unit test "
                                           "(tests): give a static value") for key, text in self.labels.items() if "{{" in text]
            if templated:
                raise KeyPathError(templated)
        return self


class Alerts(Model):
    pack: bool = Field(True, description="Render the built-in WebSocket alert pack.")
    thresholds: dict[str, Threshold] = Field(
        default_factory=dict,
        description="Overrides per built-in alert: connection_drop_rate, p99_latency, active_connections, "
        "error_rate, target_down, ...",
    )
    custom: list[CustomAlert] = []
    rate_window: Duration | None = Field(
        None,
        description="Range of the pack's rate and quantile windows (default 5m, alerts/pack.yaml). A shorter "
        "window reacts and resolves sooner and is noisier; at least 1m and at least 4 scrape intervals.",
    )
    runbook_base_url: str | None = Field(
        None,
        description="Where runbooks are served; defaults to the bundle's runbooks/ as Grafana's public folder "
        "serves it (compose, kubernetes) or as `obsgen up` serves it on 127.0.0.1 (local).",
        pattern=r"^https?://\S+$",
    )

    @model_validator(mode="after")
    def _known_alerts(self) -> "Alerts":
        # The pack is component data (alerts/pack.yaml); checking overrides against it is the spec's job.
        problems = []
        for message in check_overrides(self.thresholds):
            key, _, text = message.partition(": ")
            key, _, field = key.partition(".")
            problems.append((("thresholds", key, *([field] if field else ["[key]"])), text))
        builtin = load_pack().alert_names()
        for index, alert in enumerate(self.custom):
            if alert.name in builtin:
                problems.append((("custom", index, "name"), f"{alert.name!r} is a built-in alert; choose another name"))
            elif alert.name.endswith((SLO_BURN_SUFFIX, SLO_ABSENT_SUFFIX)):
                problems.append((("custom", index, "name"),
                                 f"names ending in {SLO_BURN_SUFFIX} or {SLO_ABSENT_SUFFIX} are kept for SLO alerts"))
        if problems:
            raise KeyPathError(problems)
        return self


# ---------------------------------------------------------------------------------------
# SLOs
# ---------------------------------------------------------------------------------------


class EventsSLI(Model):
    """Ratio SLI: bad events over all events, as PromQL rate expressions over [$window]."""

    error_query: WindowedPromQL = Field(
        description="Bad events per second, with [$window] as range: sum(rate(x_errors_total[$window]))."
    )
    total_query: WindowedPromQL = Field(description="All events per second, with [$window] as range.")


_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class LatencySLI(Model):
    """Latency SLI from a classic histogram: requests slower than ``threshold_seconds`` are bad.

    Any histogram of any service: the metric catalog's (exporter/catalog.py), or a service's own,
    such as http_request_duration_seconds with selector job="checkout". For a catalog histogram the
    threshold must be one of its bucket bounds; for any other, a bound the histogram does not have
    leaves the SLI absent at run time, and <Slo>SLIAbsent fires.
    """

    metric: str = Field(
        "websocket_message_duration_seconds",
        description="The histogram's name, without _bucket: a catalog histogram or a service's own "
                    "(e.g. http_request_duration_seconds).",
    )
    threshold_seconds: float = Field(
        gt=0, description="A bucket bound (le) of the histogram: requests slower than it are bad."
    )
    selector: str = Field("", description='Extra label matchers, e.g. job="checkout",handler="/pay".')

    @field_validator("selector")
    @classmethod
    def _bare_matchers(cls, value: str) -> str:
        # The rules append le=... to these matchers: no blank or trailing comma may be left over.
        return value.strip().rstrip(",").rstrip()

    @model_validator(mode="after")
    def _histogram(self) -> "LatencySLI":
        if not _METRIC_NAME.match(self.metric):
            raise KeyPathError([(("metric",), f"{self.metric!r} is not a metric name (letters, digits, _ and :)")])
        suffix = next((s for s in ("_bucket", "_count", "_sum") if self.metric.endswith(s)), None)
        if suffix and self.metric[: -len(suffix)] and BY_NAME.get(self.metric) is None:
            raise KeyPathError([(("metric",), f"give the histogram's name without {suffix}: "
                                              f"{self.metric[: -len(suffix)]!r}")])
        metric = BY_NAME.get(self.metric)
        if metric is not None and metric.type != "histogram":
            histograms = sorted(name for name, m in BY_NAME.items() if m.type == "histogram")
            raise KeyPathError([(("metric",), f"{self.metric!r} is a {metric.type} of the metric catalog, not a "
                                              f"histogram; its histograms are {', '.join(histograms)}")])
        if metric is not None and self.threshold_seconds not in metric.buckets:
            bounds = ", ".join(f"{b:g}" for b in metric.buckets)
            raise KeyPathError([(("threshold_seconds",),
                                 f"{self.threshold_seconds:g} is not a bucket bound of {self.metric}: "
                                 f"the SLI counts requests in the bucket le=<threshold>; choose one of {bounds}")])
        if self.selector:
            try:
                _promql(f"{self.metric}_count{{{self.selector}}}")
            except ValueError as exc:
                raise KeyPathError([(("selector",), f"not label matchers such as type=\"publish\": {exc}")]) from None
            if re.search(r"(^|[,{\s])le\s*(=|!=|=~|!~)", self.selector):
                raise KeyPathError([(("selector",), "the le label is chosen by threshold_seconds; leave it out")])
        return self


class SLO(Model):
    name: Name
    objective: float = Field(gt=0, lt=100, description="Target in percent, e.g. 99.9.")
    window: Duration = "30d"
    description: str = ""
    events: EventsSLI | None = None
    latency: LatencySLI | None = None
    page_severity: Severity = "critical"
    ticket_severity: Severity = "warning"

    @model_validator(mode="after")
    def _one_sli(self) -> "SLO":
        if (self.events is None) == (self.latency is None):
            raise ValueError("an SLO needs exactly one of `events` (error_query, total_query) or `latency`")
        return self

    @model_validator(mode="after")
    def _long_enough(self) -> "SLO":
        # the burn-rate windows are data (alerts/slo.yaml)
        settings = load_slo_settings()
        shortest = settings.min_slo_window
        if parse_duration(self.window) < parse_duration(shortest):
            raise KeyPathError([(("window",), f"{self.window} is shorter than {shortest}: the burn-rate alerts "
                                              "look back up to 3d, so the SLO window must be at least "
                                              f"{shortest}")])
        if parse_duration(self.window) % parse_duration(settings.sum_interval):
            raise KeyPathError([(("window",), f"{self.window} is not a whole number of {settings.sum_interval}: the "
                                              f"budget is summed from {settings.sum_interval} sums "
                                              "(e.g. 7d, 28d, 30d, 90d)")])
        return self


# ---------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------


class SlackReceiver(Model):
    type: Literal["slack"]
    name: Name
    channel: str = Field(pattern=r"^[#@]?[\w.-]+$")
    api_url: Secret
    send_resolved: bool = True


class PagerDutyReceiver(Model):
    type: Literal["pagerduty"]
    name: Name
    routing_key: Secret
    send_resolved: bool = True


class WebhookReceiver(Model):
    type: Literal["webhook"]
    name: Name
    url: Annotated[str, AfterValidator(_webhook_url)] | None = Field(
        None, description="Webhook URL without credentials (e.g. an in-cluster receiver).")
    url_secret: Secret | None = Field(None, description="The URL as a secret, when it carries a token.")
    send_resolved: bool = True
    max_alerts: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_url(self) -> "WebhookReceiver":
        if (self.url is None) == (self.url_secret is None):
            raise ValueError("a webhook receiver needs exactly one of `url` or `url_secret`")
        if self.url is not None and re.search(r"//[^/@]*:[^/@]*@|[?&](token|key|secret|password)=", self.url, re.I):
            raise KeyPathError(
                [(("url",), "this webhook url carries credentials: give it as url_secret: {file: ...} or {env: ...}")]
            )
        return self


class EmailReceiver(Model):
    type: Literal["email"]
    name: Name
    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    sender: str = Field(alias="from", pattern=r"^[^@\s]+@[^@\s]+$")
    smarthost: str = Field(pattern=r"^[^:\s]+:\d+$")
    auth_username: str | None = None
    auth_password: Secret | None = None
    require_tls: bool = True
    send_resolved: bool = True

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Receiver = Annotated[
    Union[SlackReceiver, PagerDutyReceiver, WebhookReceiver, EmailReceiver], Field(discriminator="type")
]


class Route(Model):
    receiver: Name
    matchers: list[str] = Field(
        default_factory=list, description='Alertmanager matchers, e.g. severity="critical".'
    )
    group_by: list[str] | None = None
    continue_: bool = Field(False, alias="continue")
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    routes: list["Route"] = []

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, values: list[str]) -> list[str]:
        problems = [
            ((index,), f"{value!r} is not a matcher: expected name=\"value\" (or !=, =~, !~)")
            for index, value in enumerate(values)
            if not re.match(r'^\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"?[^"]*"?\s*$', value)
        ]
        if problems:
            raise KeyPathError(problems)
        return values


class Inhibition(Model):
    source_matchers: list[str]
    target_matchers: list[str]
    equal: list[str] = ["alertname"]


class Notifications(Model):
    receivers: list[Receiver] = []
    route: Route | None = Field(
        None, description="Route tree; defaults to critical -> first pager, everything else -> first receiver."
    )
    group_by: list[str] = ["alertname", "service", "severity"]
    group_wait: Duration = "30s"
    group_interval: Duration = "5m"
    repeat_interval: Duration = "4h"
    resolve_timeout: Duration = "5m"
    inhibit: list[Inhibition] | None = Field(
        None, description="Inhibitions; default: a critical alert mutes the warning of the same name and service."
    )

    @model_validator(mode="after")
    def _root_route(self) -> "Notifications":
        # Alertmanager refuses matchers and `continue` on the root route: it receives every alert.
        problems = []
        if self.route is not None and self.route.matchers:
            problems.append((("route", "matchers"), "the root route receives every alert and cannot have matchers; "
                                                     "put them on a child route under routes"))
        if self.route is not None and self.route.continue_:
            problems.append((("route", "continue"), "the root route cannot have continue"))
        if problems:
            raise KeyPathError(problems)
        return self


# ---------------------------------------------------------------------------------------
# Dashboards
# ---------------------------------------------------------------------------------------


# Grafana variables a dashboard query may use. The duration ones become a duration, every other
# $name / ${name} / ${name:format} becomes a plain identifier, so the query can be parsed as PromQL.
_GRAFANA_DURATIONS = re.compile(r"\$\{?(__rate_interval|__interval|__range)\}?(?![\w:])")
_GRAFANA_NUMBERS = re.compile(r"\$\{?(__interval_ms|__range_s|__range_ms)\}?(?!\w)")
_GRAFANA_VARIABLE = re.compile(r"\$\{[A-Za-z_]\w*(?::[\w-]+)?\}|\$[A-Za-z_]\w*")


def grafana_promql_for_parsing(expr: str) -> str:
    """A Grafana panel query with its variables replaced by values PromQL accepts."""
    expr = _GRAFANA_DURATIONS.sub("5m", expr)
    expr = _GRAFANA_NUMBERS.sub("60", expr)
    return _GRAFANA_VARIABLE.sub("grafana_variable", expr)


def _grafana_promql(value: str) -> str:
    _promql(grafana_promql_for_parsing(value))
    return value


GrafanaPromQL = Annotated[str, StringConstraints(min_length=1), AfterValidator(_grafana_promql)]
DashboardUid = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,40}$")]


class Panel(Model):
    title: str = Field(min_length=1)
    expr: GrafanaPromQL = Field(
        description="PromQL; may use Grafana variables: $__rate_interval, $__interval, $datasource."
    )
    type: Literal["timeseries", "stat", "gauge", "bargauge", "table"] = "timeseries"
    unit: str = Field("short", description="Grafana unit id, e.g. short, s, ms, bytes, reqps, percentunit.")
    legend: str = Field("", description="Legend format, e.g. {{instance}}.")
    width: int = Field(12, ge=1, le=24, description="Width in grid columns (24 is the full width).")
    description: str = ""


class CustomDashboard(Model):
    title: str = Field(min_length=1)
    uid: DashboardUid | None = Field(
        None, description="Grafana dashboard uid (at most 40 of a-z A-Z 0-9 _ -); derived from the title when unset."
    )
    panels: list[Panel] = Field(min_length=1)


class Dashboards(Model):
    builtin: bool = Field(True, description="Render the built-in WebSocket dashboards.")
    custom: list[CustomDashboard] = []

    @model_validator(mode="after")
    def _unique_uids(self) -> "Dashboards":
        problems = _duplicates(("custom",), "uid", [d.uid for d in self.custom])
        if problems:
            raise KeyPathError(problems)
        return self


# ---------------------------------------------------------------------------------------
# Kubernetes (target kubernetes): packaging only; the components' settings stay where they are
# ---------------------------------------------------------------------------------------

K8sName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
K8sLabelKey = Annotated[str, StringConstraints(pattern=r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")]
K8sLabelValue = Annotated[str, StringConstraints(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")]


class KubernetesSettings(Model):
    """Where the bundle goes and which labels the charts' selectors look for.

    Defaults match kube-prometheus-stack installed as release ``kube-prometheus-stack`` (its
    Prometheus selects PrometheusRule and ServiceMonitor objects labelled release=<release>;
    its Grafana sidecar loads ConfigMaps labelled grafana_dashboard=1 / grafana_datasource=1).
    """

    namespace: K8sName | None = Field(None, description="Namespace of every object; default: the project name.")
    selector_labels: dict[K8sLabelKey, K8sLabelValue] = Field(
        default_factory=lambda: {"release": "kube-prometheus-stack"},
        description="Labels on PrometheusRule, ServiceMonitor and AlertmanagerConfig objects, as the Operator's "
        "ruleSelector / serviceMonitorSelector / alertmanagerConfigSelector expect.",
    )
    dashboard_labels: dict[K8sLabelKey, K8sLabelValue] = Field(
        default_factory=lambda: {"grafana_dashboard": "1"}, description="Labels the Grafana dashboard sidecar watches.")
    datasource_labels: dict[K8sLabelKey, K8sLabelValue] = Field(
        default_factory=lambda: {"grafana_datasource": "1"}, description="Labels the Grafana datasource sidecar watches.")
    hosts: dict[str, str] = Field(
        default_factory=dict,
        description="In-cluster host names of components installed by charts, e.g. {loki: loki.logging.svc}; "
        "defaults in stack/ports.py (KUBERNETES_HOSTS).",
    )
    redis_url: str | None = Field(
        None, pattern=r"^rediss?://\S+$",
        description="An existing Redis for the server's broker; without it a one-replica Redis StatefulSet is rendered.",
    )

    @field_validator("hosts")
    @classmethod
    def _chart_components(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(KUBERNETES_HOSTS))
        if unknown:
            raise ValueError(f"unknown component(s) {', '.join(unknown)}; known: {', '.join(sorted(KUBERNETES_HOSTS))}")
        return value


# ---------------------------------------------------------------------------------------
# The whole spec
# ---------------------------------------------------------------------------------------


class Spec(Model):
    version: Literal[1] = Field(description="Spec format version; this obsgen reads version 1.")
    project: Name
    target: Literal["compose", "local", "kubernetes"] = "compose"
    services: list[Service] = Field(min_length=1)
    components: Components = Components()
    publish: Publish = Publish()
    alerts: Alerts = Alerts()
    slos: list[SLO] = []
    notifications: Notifications = Notifications()
    dashboards: Dashboards = Dashboards()
    kubernetes: KubernetesSettings = KubernetesSettings()

    @model_validator(mode="after")
    def _known_ports(self) -> "Spec":
        problems = []
        for component, known in PORTS.items():
            settings = getattr(self.components, component, None)
            for port_name in getattr(settings, "ports", {}) or {}:
                if port_name not in known:
                    problems.append((
                        ("components", component, "ports", port_name, "[key]"),
                        f"unknown port {port_name!r}; known: {', '.join(sorted(known))}",
                    ))
        if problems:
            raise KeyPathError(problems)
        return self

    @model_validator(mode="after")
    def _whole_stack_outside_local(self) -> "Spec":
        left_out = [name for name in OPTIONAL_BACKENDS if not getattr(self.components, name).enabled]
        if self.target != "local" and left_out:
            raise KeyPathError([(("components", name, "enabled"),
                                 f"only the local target can leave {name} out; {self.target} runs the whole stack")
                                for name in left_out])
        return self

    @model_validator(mode="after")
    def _rate_window_covers_scrapes(self) -> "Spec":
        window = self.alerts.rate_window
        if window is None:
            return self
        scrape = parse_duration(self.components.prometheus.scrape_interval)
        if parse_duration(window) < max(60.0, 4 * scrape):
            raise KeyPathError([(
                ("alerts", "rate_window"),
                f"{window} is too short: a rate needs at least 1m and 4 scrape intervals "
                f"({self.components.prometheus.scrape_interval} here)",
            )])
        return self

    @model_validator(mode="after")
    def _fits_topology(self) -> "Spec":
        # Which ports share an address and which names are hosts: checked here (stack/ports.py has
        # the tables), so a clash is a located spec error, not a stack that fails to start.
        problems = [*service_conflicts(self), *receiver_conflicts(self), *port_conflicts(self)]
        if problems:
            raise KeyPathError(problems)
        return self

    @model_validator(mode="after")
    def _dashboard_uids_free(self) -> "Spec":
        """A custom dashboard may not take the uid of one obsgen writes for this project."""
        taken = {uid: title for title, uid in generated_dashboards(
            self.project, builtin=self.dashboards.builtin, slos=bool(self.slos))}
        problems = []
        for index, dashboard in enumerate(self.dashboards.custom):
            uid = uid_for(self.project, dashboard.title, dashboard.uid)
            if uid in taken:
                key = "uid" if dashboard.uid else "title"
                problems.append((("dashboards", "custom", index, key),
                                 f"uid {uid!r} is taken by obsgen's dashboard {taken[uid]!r}; choose another {key}"))
        if problems:
            raise KeyPathError(problems)
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> "Spec":
        problems = [
            *_duplicates(("services",), "name", [s.name for s in self.services]),
            *_duplicates(("slos",), "name", [s.name for s in self.slos]),
            *_duplicates(("alerts", "custom"), "name", [a.name for a in self.alerts.custom]),
            *_duplicates(("notifications", "receivers"), "name", [r.name for r in self.notifications.receivers]),
            *_duplicates(("dashboards", "custom"), "title", [d.title for d in self.dashboards.custom]),
        ]
        receivers = {r.name for r in self.notifications.receivers}
        for path, route in _routes_with_paths(self.notifications.route, ("notifications", "route")):
            if route.receiver not in receivers:
                problems.append((
                    (*path, "receiver"),
                    f"receiver {route.receiver!r} is not defined in notifications.receivers "
                    f"(defined: {', '.join(sorted(receivers)) or 'none'})",
                ))
        if problems:
            raise KeyPathError(problems)
        return self


def _walk_routes(route: Route | None):
    if route is None:
        return
    yield route
    for child in route.routes:
        yield from _walk_routes(child)


def _routes_with_paths(route: Route | None, path: tuple = ()):
    """Every route in the tree with its key path."""
    if route is None:
        return
    yield path, route
    for index, child in enumerate(route.routes):
        yield from _routes_with_paths(child, (*path, "routes", index))


# ---------------------------------------------------------------------------------------
# Port conflicts: checked on the spec, so a clash is a located spec error, not a stack that
# fails to start.
# ---------------------------------------------------------------------------------------

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _port(spec: Spec, component: str, name: str) -> int:
    settings = getattr(spec.components, component, None)
    return named_port(component, name, local=spec.target == "local", overrides=getattr(settings, "ports", None))


# Components a local bundle can leave out (components.<name>.enabled: false): nothing scrapes,
# exports to or starts them then. `obsgen up` leaves out those whose binary is not installed.
OPTIONAL_BACKENDS = ("loki", "jaeger", "grafana")


def component_runs(spec: Spec, component: str) -> bool:
    """Whether the stack runs ``component`` (a key of stack.ports.PORTS) for this spec."""
    return _component_runs(spec, component)


def _component_runs(spec: Spec, component: str) -> bool:
    if component == "alert_sink":
        return uses_alert_sink(spec)
    if component == "runbooks":
        return serves_runbooks(spec)
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


def serves_runbooks(spec: Spec) -> bool:
    """The local target serves runbooks/ itself, unless the spec's runbook links point elsewhere."""
    return spec.target == "local" and not spec.alerts.runbook_base_url


def runs_in_compose(service: Service) -> bool:
    """Compose runs builtin services (built here) and image services; external ones only get scraped."""
    return service.builtin or service.image is not None


def port_conflicts(spec: Spec) -> list[tuple[tuple, str]]:
    """(key path, message) for every port two owners would bind on the same host address.

    Local target: every component and every service without its own host listens on 127.0.0.1,
    so all their ports must differ. Compose target: each container has its own address, so only
    the ports published on the host (``publish.bind``) must differ.
    """
    if spec.target == "kubernetes":
        return []  # every pod has its own address and nothing is published on a host
    local = spec.target == "local"
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
            if not local and name not in PUBLISHED.get(component, ()):
                continue
            path = ("components", component, "ports", name) if name in settings.ports else default_path
            claim(_port(spec, component, name), f"{component}.{name}", path)
    for index, service in enumerate(spec.services):
        if local and (service.host or "127.0.0.1") not in _LOOPBACK:
            continue  # scraped on another host
        if not local and not runs_in_compose(service):
            continue  # runs outside compose: publishes nothing here
        if local:
            for instance in range(service.instances):
                suffix = f"[{instance}]" if service.instances > 1 else ""
                claim(service.metrics.port + instance, f"service {service.name}{suffix}",
                      ("services", index, "metrics", "port"))
        if service.port is not None:
            claim(service.port, f"service {service.name}", ("services", index, "port"))

    where = "the local target (every component listens on 127.0.0.1)" if local else (
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
    port = _port(spec, "alert_sink", "http")
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


# ---------------------------------------------------------------------------------------
# Pinned versions (data, checked on load)
# ---------------------------------------------------------------------------------------

COMPONENT_NAMES = ("collector", "prometheus", "alertmanager", "loki", "jaeger", "grafana", "redis", "server",
                   "node_exporter", "blackbox")


class Pin(Model):
    image: str = Field(pattern=r"^[\w./-]+:[\w.-]+$")
    version: str


@lru_cache(maxsize=1)
def pinned_versions() -> dict[str, Pin]:
    """Pinned images and versions from stack/data/versions.yaml, checked on load."""
    text = resources.files("stack").joinpath("data/versions.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    missing = [name for name in COMPONENT_NAMES if name not in raw]
    if missing:
        raise RuntimeError(f"stack/data/versions.yaml lacks pins for: {', '.join(missing)}")
    return {name: Pin.model_validate(raw[name]) for name in COMPONENT_NAMES}


def image_for(spec: Spec, component: str) -> str:
    """The image a component runs: the spec's override, else the pinned default."""
    settings = getattr(spec.components, component, None)
    override = getattr(settings, "image", None) if settings is not None else None
    return override or pinned_versions()[component].image
