"""Telemetry settings: argument > standard ``OTEL_*`` environment > default.

Pure: ``resolve_settings`` reads only the mapping it is given, so the precedence rules are
tested as a table. A bad argument raises ``ValueError`` (the caller wrote it and can fix
it); a bad environment value is logged and replaced by the default (an operator's typo must
not stop the service), as the OpenTelemetry SDK does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

log = logging.getLogger("exporter.config")

DEFAULT_SERVICE_NAME = "unknown_service:python"
PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_PROTOCOL = "http/protobuf"
SAMPLERS = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)
DEFAULT_SAMPLER = "parentbased_always_on"
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
LOG_SHIPPERS = ("otlp", "loki", "none")
TRACE_EXPORTERS = ("otlp", "none")
# Loki's push path, appended when a loki URL names only the server.
LOKI_PUSH_PATH = "/loki/api/v1/push"

# Non-standard variable (OpenTelemetry has none for Loki): where python-logging-loki pushes.
LOKI_URL_ENV = "LOKI_URL"


@dataclass(frozen=True)
class Settings:
    enabled: bool
    service_name: str
    otlp_endpoint: str | None
    otlp_protocol: str
    traces: str
    sampler: str
    sampler_ratio: float
    logs: str
    loki_url: str | None

    @property
    def traces_enabled(self) -> bool:
        return self.enabled and self.traces == "otlp"


class _Source:
    """Resolves one setting at a time, remembering which values came from the environment."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def pick(self, arg, env_name: str, parse, default):
        """``parse(arg)`` if given (errors raise), else ``parse(env)`` (errors logged), else default."""
        if arg is not None:
            return parse(arg)
        raw = self.environ.get(env_name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            log.warning("ignoring %s=%r: %s; using %r", env_name, raw, exc, default)
            return default


def _parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _parse_name(value) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("service name must not be empty")
    return text


def _parse_url(value) -> str:
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}: {exc}") from None
    return text.rstrip("/")


def _choice(choices: tuple[str, ...], what: str):
    def parse(value) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _parse_ratio(value) -> float:
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"sampler ratio must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampler ratio must be between 0 and 1, got {value!r}")
    return ratio


def _parse_logs(value) -> str:
    text = str(value).strip().lower()
    if text == "console":  # OTEL_LOGS_EXPORTER=console: stdout only, which is what "none" ships
        return "none"
    return _choice(LOG_SHIPPERS, "logs")(text)


def loki_push_url(url: str) -> str:
    """The push endpoint for a Loki URL that may name only the server."""
    return url if urlsplit(url).path not in ("", "/") else url.rstrip("/") + LOKI_PUSH_PATH


def resolve_settings(
    environ: Mapping[str, str],
    *,
    service_name: str | None = None,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    traces: str | None = None,
    sampler: str | None = None,
    sampler_ratio: float | None = None,
    logs: str | None = None,
    loki_url: str | None = None,
    enabled: bool | None = None,
    has_span_exporter: bool = False,
    has_log_exporter: bool = False,
) -> Settings:
    """Settings from arguments over ``environ`` over defaults (see the module docstring)."""
    src = _Source(environ)
    sdk_disabled = src.pick(None if enabled is None else not _parse_bool(enabled), "OTEL_SDK_DISABLED", _parse_bool, False)
    name = src.pick(service_name, "OTEL_SERVICE_NAME", _parse_name, DEFAULT_SERVICE_NAME)
    endpoint = src.pick(otlp_endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT", _parse_url, None)
    protocol = src.pick(otlp_protocol, "OTEL_EXPORTER_OTLP_PROTOCOL", _choice(PROTOCOLS, "OTLP protocol"), DEFAULT_PROTOCOL)
    loki = src.pick(loki_url, LOKI_URL_ENV, _parse_url, None)

    # A sampler ratio given alone means "sample this share of new traces, follow the parent".
    if sampler is None and sampler_ratio is not None:
        sampler = "parentbased_traceidratio"
    sampler_name = src.pick(sampler, "OTEL_TRACES_SAMPLER", _choice(SAMPLERS, "sampler"), DEFAULT_SAMPLER)
    ratio = src.pick(sampler_ratio, "OTEL_TRACES_SAMPLER_ARG", _parse_ratio, 1.0)

    # Nothing is exported until configured: without an endpoint (or an injected exporter)
    # traces stay off and logs stay local.
    can_trace = endpoint is not None or has_span_exporter
    trace_default = "otlp" if can_trace else "none"
    traces_choice = src.pick(traces, "OTEL_TRACES_EXPORTER", _choice(TRACE_EXPORTERS, "traces"), trace_default)
    if traces_choice == "otlp" and not can_trace:
        if traces is not None:
            raise ValueError("traces='otlp' needs otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)")
        log.warning("ignoring OTEL_TRACES_EXPORTER=otlp: no OTLP endpoint is configured; traces stay off")
        traces_choice = "none"

    can_otlp_logs = endpoint is not None or has_log_exporter
    logs_default = "loki" if loki is not None else ("otlp" if can_otlp_logs else "none")
    logs_choice = src.pick(logs, "OTEL_LOGS_EXPORTER", _parse_logs, logs_default)
    missing = None
    if logs_choice == "otlp" and not can_otlp_logs:
        missing = "logs='otlp' needs otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)"
    elif logs_choice == "loki" and loki is None:
        missing = f"logs='loki' needs loki_url (or {LOKI_URL_ENV})"
    if missing:
        if logs is not None:
            raise ValueError(missing)
        log.warning("ignoring OTEL_LOGS_EXPORTER=%s: %s; logs stay local", logs_choice, missing)
        logs_choice = "none"

    return Settings(
        enabled=not sdk_disabled,
        service_name=name,
        otlp_endpoint=endpoint,
        otlp_protocol=protocol,
        traces=traces_choice,
        sampler=sampler_name,
        sampler_ratio=ratio,
        logs=logs_choice,
        loki_url=loki_push_url(loki) if loki else None,
    )
