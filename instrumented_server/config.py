"""Server settings: every limit has a name and a default; argument > environment > default.

``ServerConfig`` is plain data used by the server and the tests. ``parse_args`` builds it from
command-line flags and ``OBSGEN_*`` environment variables (a bad environment value is an error
that names the variable; nothing is silently replaced) and reads the files it points to.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from instrumented_server.auth import DEFAULT_COOKIE, read_secret
from instrumented_server.permissions import DEFAULT_NAMESPACES, Namespace, PermissionConfigError, load_namespaces
from instrumented_server.ratelimit import Rate


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    jwt_secret: str = ""
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    auth_cookie: str = DEFAULT_COOKIE
    token_refresh_grace: float = 10.0  # seconds an expired connection has to send a new token
    allowed_origins: tuple[str, ...] = ()
    namespaces: Mapping[str, Namespace] = field(default_factory=lambda: dict(DEFAULT_NAMESPACES))
    broker: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    history_size: int = 100
    history_ttl: float = 300.0
    max_message_size: int = 65536  # application limit: above it, close 4005
    max_frame_size: int = 262144  # transport limit: above it websockets closes 1009 without buffering
    max_outgoing_buffer: int = 1048576  # bytes queued to one client before it is cut off (4008)
    write_delay: float = 0.0  # seconds to gather outgoing frames before writing; 0: at the end of the tick
    max_subscriptions: int = 128
    max_protocol_errors: int = 20  # malformed commands in a row before closing with 1008
    message_rate: Rate = field(default_factory=lambda: Rate(100, 200))
    ip_message_rate: Rate = field(default_factory=lambda: Rate(0, 0))
    ip_connect_rate: Rate = field(default_factory=lambda: Rate(0, 0))
    max_connections_per_ip: int = 0  # 0: unlimited
    rate_limit_strikes: int = 20  # refused messages in a row before closing with 4004
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    open_timeout: float = 10.0
    close_timeout: float = 5.0
    drain_delay: float = 0.0  # seconds /readyz reports draining before connections are closed
    drain_timeout: float = 10.0
    compression: str | None = None  # None or "deflate" (deflate disables shared fan-out frames)
    telemetry: bool = True
    # Telemetry settings left None are resolved by exporter.instrument from OTEL_* and its defaults.
    service_name: str | None = None
    otlp_endpoint: str | None = None
    trace_sample_ratio: float | None = None
    logs: str | None = None
    loki_url: str | None = None
    log_level: str = "info"


class ConfigError(ValueError):
    """A flag, environment variable or referenced file with a bad value; the message says which."""


ENV_PREFIX = "OBSGEN_"


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _optional_seconds(text: str) -> float | None:
    value = _positive_float(text)
    return value or None


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


# flag, env suffix, type, help. Defaults come from ServerConfig so they are written once.
_OPTIONS: tuple[tuple[str, str, object, str], ...] = (
    ("--host", "HOST", str, "address to listen on"),
    ("--port", "PORT", int, "TCP port for WebSocket and HTTP (/metrics, /healthz, /readyz)"),
    ("--jwt-secret-file", "JWT_SECRET_FILE", str, "file holding the HS256 secret that signs client tokens (required)"),
    ("--jwt-audience", "JWT_AUDIENCE", str, "required 'aud' claim, if set"),
    ("--jwt-issuer", "JWT_ISSUER", str, "required 'iss' claim, if set"),
    ("--auth-cookie", "AUTH_COOKIE", str, "cookie name that may carry the token (browsers)"),
    ("--token-refresh-grace", "TOKEN_REFRESH_GRACE", _positive_float,
     "seconds a connection whose token expired has to send a new one before closing with 4006"),
    ("--allowed-origins", "ALLOWED_ORIGINS", str,
     "comma-separated Origin values browsers may connect from ('*' for any); clients without Origin are allowed"),
    ("--namespaces-file", "NAMESPACES_FILE", str, "YAML/JSON file with channel namespaces and their permissions"),
    ("--broker", "BROKER", str, "memory (one process) or redis (several processes share channels)"),
    ("--redis-url", "REDIS_URL", str, "Redis URL for --broker redis"),
    ("--history-size", "HISTORY_SIZE", _positive_int, "publications kept per channel for replay"),
    ("--history-ttl", "HISTORY_TTL", _positive_float, "seconds a publication stays in history"),
    ("--max-message-size", "MAX_MESSAGE_SIZE", _positive_int, "largest client message in bytes (above: close 4005)"),
    ("--max-frame-size", "MAX_FRAME_SIZE", _positive_int,
     "largest frame read at all, in bytes (above: close 1009, before buffering); default 4x --max-message-size"),
    ("--max-outgoing-buffer", "MAX_OUTGOING_BUFFER", _positive_int,
     "bytes queued to one client before it is closed as a slow consumer (4008)"),
    ("--write-delay", "WRITE_DELAY", _positive_float,
     "seconds to gather each connection's outgoing frames before one write (0: at the end of each event-loop "
     "tick); a few ms trades that much latency for fewer system calls at moderate rates"),
    ("--max-subscriptions", "MAX_SUBSCRIPTIONS", _positive_int, "channels one connection may subscribe to"),
    ("--max-protocol-errors", "MAX_PROTOCOL_ERRORS", _positive_int,
     "invalid commands in a row before closing with 1008 (0: never)"),
    ("--message-rate", "MESSAGE_RATE", Rate.parse, "per-connection message rate, RATE[/BURST] per second (0: unlimited)"),
    ("--ip-message-rate", "IP_MESSAGE_RATE", Rate.parse, "per-IP message rate over all its connections (0: unlimited)"),
    ("--ip-connect-rate", "IP_CONNECT_RATE", Rate.parse, "per-IP connection attempts per second (0: unlimited); over it: HTTP 429"),
    ("--max-connections-per-ip", "MAX_CONNECTIONS_PER_IP", _positive_int, "open connections per IP (0: unlimited); over it: HTTP 429"),
    ("--rate-limit-strikes", "RATE_LIMIT_STRIKES", _positive_int, "messages refused in a row by a rate limit before closing with 4004"),
    ("--ping-interval", "PING_INTERVAL", _optional_seconds, "seconds between heartbeat pings (0: off)"),
    ("--ping-timeout", "PING_TIMEOUT", _optional_seconds, "seconds without pong before a peer is closed as dead (0: off)"),
    ("--open-timeout", "OPEN_TIMEOUT", _positive_float, "seconds a client has to finish the upgrade (stops slowloris)"),
    ("--close-timeout", "CLOSE_TIMEOUT", _positive_float, "seconds to wait for the closing handshake before dropping TCP"),
    ("--drain-delay", "DRAIN_DELAY", _positive_float, "on SIGTERM, seconds /readyz reports 503 before connections are closed"),
    ("--drain-timeout", "DRAIN_TIMEOUT", _positive_float, "on SIGTERM, seconds to wait for connections to close after 1001"),
    ("--compression", "COMPRESSION", str, "none or deflate (deflate costs CPU per connection on every fan-out)"),
    ("--service-name", "SERVICE_NAME", str, "service.name of spans and logs (else OTEL_SERVICE_NAME)"),
    ("--otlp-endpoint", "OTLP_ENDPOINT", str,
     "collector OTLP base URL for spans and logs, e.g. http://127.0.0.1:4318 (else OTEL_EXPORTER_OTLP_ENDPOINT; none: metrics only)"),
    ("--trace-sample-ratio", "TRACE_SAMPLE_RATIO", _ratio, "share of new traces kept, 0..1 (else OTEL_TRACES_SAMPLER_ARG; default 1)"),
    ("--logs", "LOGS", str, "where structured logs are shipped: otlp, loki or none (default: loki if a Loki URL is set, else otlp if an endpoint is set)"),
    ("--loki-url", "LOKI_URL", str, "Loki URL for --logs loki (else LOKI_URL)"),
    ("--log-level", "LOG_LEVEL", str, "debug, info, warning or error"),
)


def build_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="python -m instrumented_server",
        description="WebSocket pub/sub server instrumented with exporter/ (metrics, spans, logs). "
                    "Every flag can also be set by the environment variable named in brackets; "
                    "a flag wins over the environment, which wins over the default.",
    )
    for flag, env, _type, help_text in _OPTIONS:
        attr = flag[2:].replace("-", "_")
        default = getattr(defaults, attr, None)
        if attr == "jwt_secret_file":
            default = None
        shown = "" if default in (None, "", ()) else f" (default: {_show(default)})"
        parser.add_argument(flag, dest=attr, default=None, metavar=env,
                            help=f"{help_text}{shown} [{ENV_PREFIX}{env}]")
    telemetry = parser.add_mutually_exclusive_group()
    telemetry.add_argument("--telemetry", dest="telemetry", action="store_const", const="true", default=None,
                           help=f"instrument with exporter/ (default) [{ENV_PREFIX}TELEMETRY=true]")
    telemetry.add_argument("--no-telemetry", dest="telemetry", action="store_const", const="false",
                           help="run with telemetry switched off (no /metrics content, no spans, no log shipping)")
    return parser


def _show(value: object) -> str:
    if value is None:
        return "off"
    return str(value)


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags > ``OBSGEN_*`` environment > defaults. Raises ``ConfigError`` with the offending name."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    config = ServerConfig()
    values: dict[str, object] = {}
    for flag, env, type_, _help in _OPTIONS + (("--telemetry", "TELEMETRY", _bool, ""),):
        attr = flag[2:].replace("-", "_")
        raw, source = getattr(args, attr), flag
        if raw is None:
            raw, source = environ.get(ENV_PREFIX + env), ENV_PREFIX + env
        if raw is None or raw == "":
            continue
        try:
            values[attr] = type_(raw)  # type: ignore[operator]
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r}: {exc}") from None

    secret_file = values.pop("jwt_secret_file", None)
    if secret_file is None:
        raise ConfigError(f"--jwt-secret-file (or {ENV_PREFIX}JWT_SECRET_FILE) is required: "
                          "a file holding the HS256 secret, e.g. `head -c 32 /dev/urandom | base64 > secret`")
    config.jwt_secret = read_secret_file(str(secret_file))

    namespaces_file = values.pop("namespaces_file", None)
    if namespaces_file is not None:
        config.namespaces = _read_namespaces(str(namespaces_file))

    if "allowed_origins" in values:
        values["allowed_origins"] = tuple(o.strip() for o in str(values["allowed_origins"]).split(",") if o.strip())
    compression = values.get("compression")
    if compression is not None:
        if compression not in ("none", "deflate"):
            raise ConfigError(f"compression {compression!r}: expected none or deflate")
        values["compression"] = None if compression == "none" else "deflate"
    if values.get("broker", config.broker) not in ("memory", "redis"):
        raise ConfigError(f"broker {values['broker']!r}: expected memory or redis")
    if values.get("logs") not in (None, "otlp", "loki", "none"):
        raise ConfigError(f"logs {values['logs']!r}: expected otlp, loki or none")
    if values.get("log_level", config.log_level) not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log level {values['log_level']!r}: expected debug, info, warning or error")
    if "max_frame_size" not in values and "max_message_size" in values:
        values["max_frame_size"] = 4 * int(values["max_message_size"])  # type: ignore[call-overload]

    for attr, value in values.items():
        setattr(config, attr, value)
    if config.max_frame_size < config.max_message_size:
        raise ConfigError("--max-frame-size must be at least --max-message-size")
    if config.history_size < 1:
        raise ConfigError("--history-size must be at least 1")
    return config


def read_secret_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the JWT secret file {path}: {exc.strerror or exc}") from None
    try:
        return read_secret(text)
    except ValueError as exc:
        raise ConfigError(f"JWT secret file {path}: {exc}") from None


def _read_namespaces(path: str) -> dict[str, Namespace]:
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the namespaces file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"namespaces file {path} is not valid YAML/JSON: {exc}") from None
    try:
        return load_namespaces(document)
    except PermissionConfigError as exc:
        raise ConfigError(f"namespaces file {path}: {exc}") from None
