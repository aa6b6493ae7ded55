"""Loki 3.7 config: one single-binary process, filesystem storage, OTLP ingestion, retention.

Pure: ``render(spec, topology)`` builds the config as a dict. Shape chosen by Loki 3.x's own rules:
the ``common`` block with an in-memory ring (one instance), the ``tsdb`` index with schema ``v13``
(required for structured metadata, where OTLP attributes such as trace_id land), the compactor
applying retention (which needs a delete_request_store), auth disabled (one tenant, "fake").
No Loki binary runs here; tests compare every key against Loki v3.7.0's configuration reference.
"""

from __future__ import annotations

import yaml

from stack.spec import Spec
from stack.topology import Topology

PATH = "loki/config.yaml"
HEADER = "# Loki config rendered by obsgen from the project spec; edit the spec, not this file.\n"
# The first day of the only schema period. A fixed date in the past: changing it later would
# hide data written under the old period, so it never follows the clock.
SCHEMA_FROM = "2024-04-01"


def config(spec: Spec, topology: Topology) -> dict:
    data = topology.data_dir("loki")
    common: dict = {
        "path_prefix": data,
        "replication_factor": 1,
        "ring": {"kvstore": {"store": "inmemory"}},
        "storage": {"filesystem": {"chunks_directory": f"{data}/chunks", "rules_directory": f"{data}/rules"}},
    }
    if topology.local:
        # Advertise loopback in the ring instead of the first private interface Loki finds.
        common["instance_addr"] = topology.host("loki")
    return {
        "auth_enabled": False,
        "server": {
            "http_listen_address": topology.listen_host,
            "http_listen_port": topology.port("loki", "http"),
            "grpc_listen_address": topology.listen_host,
            "grpc_listen_port": topology.port("loki", "grpc"),
            "log_level": "info",
        },
        "common": common,
        "schema_config": {
            "configs": [
                {
                    "from": SCHEMA_FROM,
                    "store": "tsdb",
                    "object_store": "filesystem",
                    "schema": "v13",
                    "index": {"prefix": "index_", "period": "24h"},
                }
            ]
        },
        "limits_config": {
            # OTLP log attributes (trace_id, span_id, severity) are kept as structured metadata.
            "allow_structured_metadata": True,
            "volume_enabled": True,
            "retention_period": spec.components.loki.retention,
        },
        "compactor": {
            "working_directory": f"{data}/compactor",
            "retention_enabled": True,
            "delete_request_store": "filesystem",
        },
        "analytics": {"reporting_enabled": False},
    }


def render(spec: Spec, topology: Topology) -> dict[str, str]:
    return {PATH: HEADER + yaml.safe_dump(config(spec, topology), sort_keys=False, width=120)}
