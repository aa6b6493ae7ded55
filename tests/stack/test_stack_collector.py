"""The OpenTelemetry Collector renderer: by value, then through the real otelcol."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
import yaml
from pydantic import ValidationError

from stack.renderers import collector
from stack.spec import Spec
from stack.topology import Topology
from tests.conftest import free_port, require_binary, wait_for_port


def make_spec(**fields) -> Spec:
    return Spec.model_validate({"version": 1, "project": "demo", "services": [{"name": "api"}], **fields})


def rendered(spec: Spec) -> dict:
    files = collector.render(spec, Topology(spec))
    assert list(files) == ["collector/config.yaml"]
    return yaml.safe_load(files["collector/config.yaml"])


def walk_keys(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from walk_keys(value, (*path, key))
    elif isinstance(node, list):
        for item in node:
            yield from walk_keys(item, path)


def test_compose_target_listens_on_every_interface_and_dials_services_by_name():
    config = rendered(make_spec())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols == {"grpc": {"endpoint": "0.0.0.0:4317"}, "http": {"endpoint": "0.0.0.0:4318"}}
    assert config["exporters"]["otlp_grpc/jaeger"] == {"endpoint": "jaeger:4317", "tls": {"insecure": True}}
    assert config["exporters"]["otlp_http/loki"] == {"endpoint": "http://loki:3100/otlp"}
    assert config["exporters"]["prometheus"] == {
        "endpoint": "0.0.0.0:8889",
        "enable_open_metrics": True,
        "resource_to_telemetry_conversion": {"enabled": True},
    }
    assert config["extensions"] == {"health_check": {"endpoint": "0.0.0.0:13133"}}
    assert config["service"]["extensions"] == ["health_check"]
    readers = config["service"]["telemetry"]["metrics"]["readers"]
    assert readers == [{"pull": {"exporter": {"prometheus": {"host": "0.0.0.0", "port": 8888}}}}]


def test_local_target_binds_loopback_and_reaches_jaeger_on_its_own_ports():
    config = rendered(make_spec(target="local"))
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "127.0.0.1:4317"
    assert config["exporters"]["otlp_grpc/jaeger"]["endpoint"] == "127.0.0.1:14317"
    assert config["exporters"]["otlp_http/loki"]["endpoint"] == "http://127.0.0.1:3100/otlp"
    assert config["extensions"]["health_check"]["endpoint"] == "127.0.0.1:13133"
    assert config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]["host"] == "127.0.0.1"


def test_every_pipeline_receives_otlp_and_runs_memory_limiter_first():
    config = rendered(make_spec(components={"collector": {"memory_limit_mib": 300, "batch_timeout": "2s"}}))
    pipelines = config["service"]["pipelines"]
    assert sorted(pipelines) == ["logs", "metrics", "traces"]
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        assert pipeline["processors"] == ["memory_limiter", "batch"]
    assert pipelines["traces"]["exporters"] == ["otlp_grpc/jaeger"]
    assert pipelines["logs"]["exporters"] == ["otlp_http/loki"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert config["processors"]["memory_limiter"] == {"check_interval": "1s", "limit_mib": 300}
    assert config["processors"]["batch"] == {"timeout": "2s"}


def test_debug_exporter_only_when_asked_and_then_in_every_pipeline():
    assert "debug" not in rendered(make_spec())["exporters"]
    config = rendered(make_spec(components={"collector": {"debug": True}}))
    assert config["exporters"]["debug"] == {"verbosity": "basic"}
    assert all("debug" in p["exporters"] for p in config["service"]["pipelines"].values())


def test_never_the_deprecated_telemetry_address():
    assert not any(path[-1] == "address" for path in walk_keys(rendered(make_spec())))


def test_port_overrides_come_from_the_spec():
    config = rendered(make_spec(components={"collector": {"ports": {"otlp_grpc": 5317, "metrics": 9888}}}))
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:5317"
    assert config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]["port"] == 9888


def test_same_spec_same_bytes():
    spec = make_spec(components={"collector": {"debug": True}})
    assert collector.render(spec, Topology(spec)) == collector.render(spec, Topology(spec))


def test_memory_limiter_above_the_container_limit_is_refused():
    with pytest.raises(ValidationError, match=r"memory_limit_mib \(400\) must be below the container memory limit"):
        make_spec(components={"collector": {"resources": {"memory": "256m"}}})
    make_spec(components={"collector": {"resources": {"memory": "512m"}}})  # 400 MiB < 512 MiB


def test_clashing_ports_in_the_local_target_are_refused():
    with pytest.raises(ValidationError, match=r"port 4317 is used by collector.otlp_grpc, jaeger.otlp_grpc"):
        make_spec(target="local", components={"jaeger": {"ports": {"otlp_grpc": 4317}}})
    # In compose each container has its own address: the same override is fine there.
    make_spec(components={"jaeger": {"ports": {"otlp_grpc": 4317}}})


@pytest.mark.parametrize("table, message", [
    ({"traces": {"exporter": "otlp_grpc/jaeger"}}, "must define exactly traces, metrics, logs"),
    ({"traces": {"exporter": "zipkin"}, "metrics": {"exporter": "prometheus"}, "logs": {"exporter": "otlp_http/loki"}},
     "traces: exporter 'zipkin' is not one obsgen renders"),
    ([], "must define exactly"),
])
def test_a_broken_pipeline_table_is_refused(table, message):
    with pytest.raises(RuntimeError, match=message):
        collector.check_pipelines(table)


# ---------------------------------------------------------------------------------------
# The real collector (built by scripts/install-tools.sh; found as stack/tools.py says)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["compose", "local"])
@pytest.mark.parametrize("debug", [False, True])
def test_otelcol_validate_accepts_the_config(tmp_path, target, debug):
    otelcol = require_binary("otelcol")
    spec = make_spec(target=target, components={"collector": {"debug": debug}})
    path = tmp_path / "config.yaml"
    path.write_text(collector.render(spec, Topology(spec))["collector/config.yaml"])
    result = subprocess.run([otelcol, "validate", f"--config={path}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_otelcol_validate_refuses_a_broken_config(tmp_path):
    # The check above can fail: an unknown component is refused.
    otelcol = require_binary("otelcol")
    spec = make_spec(target="local")
    config = collector.config(spec, Topology(spec))
    config["service"]["pipelines"]["traces"]["exporters"] = ["zipkin"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([otelcol, "validate", f"--config={path}"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "zipkin" in result.stderr


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def _metric_total(exposition: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
               if line.startswith(name) and not line.startswith("#"))


@pytest.mark.slow
def test_otelcol_runs_the_local_config_and_accepts_otlp(tmp_path, processes):
    otelcol = require_binary("otelcol")
    ports = {name: free_port() for name in ("otlp_grpc", "otlp_http", "metrics", "prometheus", "health")}
    spec = make_spec(target="local", components={"collector": {"ports": ports}})
    path = tmp_path / "config.yaml"
    path.write_text(collector.render(spec, Topology(spec))["collector/config.yaml"])
    log = (tmp_path / "otelcol.log").open("wb")
    proc = processes.start([otelcol, f"--config={path}"], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(ports["health"], timeout=30, proc=proc)

    status, body = _get(f"http://127.0.0.1:{ports['health']}/")
    assert status == 200 and json.loads(body)["status"] == "Server available"

    # One log record over OTLP/HTTP is accepted by the receiver (Loki is not running: the
    # exporter queues and retries, which must not refuse the data).
    record = {"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
                                "scopeLogs": [{"logRecords": [{"body": {"stringValue": "hello"}}]}]}]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports['otlp_http']}/v1/logs", data=json.dumps(record).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200

    deadline = time.monotonic() + 15
    while True:
        _, exposition = _get(f"http://127.0.0.1:{ports['metrics']}/metrics")
        accepted = _metric_total(exposition, "otelcol_receiver_accepted_log_records")
        if accepted >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert accepted >= 1, exposition[:2000]
    assert _metric_total(exposition, "otelcol_receiver_refused_log_records") == 0

    status, _ = _get(f"http://127.0.0.1:{ports['prometheus']}/metrics")
    assert status == 200
