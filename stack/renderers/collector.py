"""OpenTelemetry Collector config (v0.159 semantics): OTLP in; traces to Jaeger, logs to Loki,
metrics to a Prometheus scrape endpoint.

Pure: ``render(spec, topology)`` builds the config as a dict and serialises it; every address
comes from the topology. The pipelines (signal -> exporter) are data in ``collector/pipelines.yaml``.
Only components the obsgen collector build has are used (collector/builder-config.yaml): the otlp
receiver; memory_limiter and batch; otlp_grpc, otlp_http, prometheus and debug exporters; health_check.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

from stack.spec import Spec, component_runs
from stack.topology import Topology

PATH = "collector/config.yaml"
HEADER = "# OpenTelemetry Collector config rendered by obsgen from the project spec; edit the spec, not this file.\n"
SIGNALS = ("traces", "metrics", "logs")


@lru_cache(maxsize=1)
def pipelines() -> dict[str, dict[str, str]]:
    """signal -> {exporter, backend} from collector/pipelines.yaml, checked on load."""
    text = resources.files("collector").joinpath("pipelines.yaml").read_text(encoding="utf-8")
    return check_pipelines(yaml.safe_load(text))


def check_pipelines(raw: object) -> dict[str, dict[str, str]]:
    """The pipeline table, or RuntimeError naming what is wrong with it."""
    if not isinstance(raw, dict) or sorted(raw) != sorted(SIGNALS):
        found = ", ".join(sorted(raw)) if isinstance(raw, dict) else type(raw).__name__
        raise RuntimeError(f"collector/pipelines.yaml must define exactly {', '.join(SIGNALS)}; found {found}")
    for signal in SIGNALS:
        exporter = (raw[signal] or {}).get("exporter")
        if exporter not in EXPORTERS:
            raise RuntimeError(
                f"collector/pipelines.yaml: {signal}: exporter {exporter!r} is not one obsgen renders "
                f"({', '.join(sorted(EXPORTERS))})"
            )
    return raw


def _jaeger_otlp(topology: Topology) -> dict:
    # Plain gRPC inside the stack's own network (or loopback locally).
    return {"endpoint": topology.address("jaeger", "otlp_grpc"), "tls": {"insecure": True}}


def _loki_otlp(topology: Topology) -> dict:
    # The exporter appends /v1/logs: Loki ingests at /otlp/v1/logs.
    return {"endpoint": topology.url("loki", "http", "/otlp")}


def _prometheus(topology: Topology) -> dict:
    return {
        "endpoint": topology.listen("collector", "prometheus"),
        # Exemplars (trace ids on histogram buckets and counters) are only exposed in OpenMetrics.
        "enable_open_metrics": True,
        # service.name etc. become labels, so dashboards can select OTLP metrics by service.
        "resource_to_telemetry_conversion": {"enabled": True},
    }


EXPORTERS = {
    "otlp_grpc/jaeger": _jaeger_otlp,
    "otlp_http/loki": _loki_otlp,
    "prometheus": _prometheus,
}
# The stack component an exporter sends to: left out of the stack, its signal has no pipeline
# (nothing retried into a queue that only grows; the server then sends none of that signal).
EXPORTER_BACKENDS = {"otlp_grpc/jaeger": "jaeger", "otlp_http/loki": "loki"}


def exported_signals(spec: Spec) -> tuple[str, ...]:
    """The signals whose backend runs."""
    wiring = pipelines()
    return tuple(signal for signal in SIGNALS
                 if component_runs(spec, EXPORTER_BACKENDS.get(wiring[signal]["exporter"], "collector")))


def config(spec: Spec, topology: Topology) -> dict:
    settings = spec.components.collector
    wiring = pipelines()
    signals = exported_signals(spec)
    exporters = {wiring[signal]["exporter"]: EXPORTERS[wiring[signal]["exporter"]](topology) for signal in signals}
    extra = []
    if settings.debug:
        exporters["debug"] = {"verbosity": "basic"}
        extra = ["debug"]
    return {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": topology.listen("collector", "otlp_grpc")},
                    "http": {"endpoint": topology.listen("collector", "otlp_http")},
                }
            }
        },
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_mib": settings.memory_limit_mib},
            "batch": {"timeout": settings.batch_timeout},
        },
        "exporters": exporters,
        "extensions": {"health_check": {"endpoint": topology.listen("collector", "health")}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {
                signal: {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": [wiring[signal]["exporter"], *extra],
                }
                for signal in signals
            },
            "telemetry": {
                "metrics": {
                    "readers": [
                        {
                            "pull": {
                                "exporter": {
                                    "prometheus": {
                                        "host": topology.listen_host,
                                        "port": topology.port("collector", "metrics"),
                                    }
                                }
                            }
                        }
                    ]
                }
            },
        },
    }


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    return {PATH: HEADER + yaml.safe_dump(config(spec, topology), sort_keys=False, width=120)}
