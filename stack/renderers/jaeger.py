"""Jaeger v2 config: a collector-style YAML for the jaeger binary (v2; the end-to-end test runs it on 2.12).

OTLP in on Jaeger's own named ports, batch, then the jaeger_storage_exporter into an in-memory
store that the jaeger_query extension serves (UI and HTTP API on ``query``, gRPC API on
``query_grpc``). Every listener gets an explicit address from the topology: left to its default,
Jaeger binds localhost for some and every interface for others.

Pure: ``render(spec, topology)`` builds the config as a dict and serialises it.
"""

from __future__ import annotations

import yaml

from stack.spec import Spec
from stack.topology import Topology

PATH = "jaeger/config.yaml"
HEADER = "# Jaeger v2 config rendered by obsgen from the project spec; edit the spec, not this file.\n"
STORE = "traces"  # the jaeger_storage backend both the exporter and the query extension name
STORAGE_EXPORTER = "jaeger_storage_exporter"  # writes what the pipeline receives into STORE


def config(spec: Spec, topology: Topology) -> dict:
    return {
        "extensions": {
            "jaeger_storage": {"backends": {STORE: {"memory": {"max_traces": spec.components.jaeger.max_traces}}}},
            "jaeger_query": {
                "storage": {"traces": STORE},
                # Jaeger 2.12 traces its own query API by default, over OTLP to localhost:4317: in
                # compose its own receiver (the searches clutter the service list), locally the
                # collector's default port or nothing (a 10 s stall on shutdown). Later 2.x default
                # to off; say it for every version.
                "enable_tracing": False,
                "http": {"endpoint": topology.listen("jaeger", "query")},
                "grpc": {"endpoint": topology.listen("jaeger", "query_grpc")},
            },
            "healthcheckv2": {"use_v2": True, "http": {"endpoint": topology.listen("jaeger", "health")}},
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": topology.listen("jaeger", "otlp_grpc")},
                    "http": {"endpoint": topology.listen("jaeger", "otlp_http")},
                }
            }
        },
        "processors": {"batch": {}},
        "exporters": {STORAGE_EXPORTER: {"trace_storage": STORE}},
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": [STORAGE_EXPORTER]}
            },
            "telemetry": {
                "resource": {"service.name": "jaeger"},
                "metrics": {
                    "readers": [
                        {
                            "pull": {
                                "exporter": {
                                    "prometheus": {
                                        "host": topology.listen_host,
                                        "port": topology.port("jaeger", "metrics"),
                                    }
                                }
                            }
                        }
                    ]
                },
            },
        },
    }


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    return {PATH: HEADER + yaml.safe_dump(config(spec, topology), sort_keys=False, width=120)}
