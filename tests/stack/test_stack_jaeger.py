"""The Jaeger v2 renderer: by value, then through the real jaeger binary when it is built."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
import yaml
from pydantic import ValidationError

from stack.renderers import jaeger
from stack.spec import Spec
from stack.ports import PORTS
from stack.renderers.wiring import JAEGER_HEALTH_PATH
from stack.topology import Topology
from tests.conftest import free_port, require_binary, wait_for_port


def make_spec(**fields) -> Spec:
    return Spec.model_validate({"version": 1, "project": "demo", "services": [{"name": "api"}], **fields})


def rendered(spec: Spec) -> dict:
    files = jaeger.render(spec, Topology(spec))
    assert list(files) == ["jaeger/config.yaml"]
    return yaml.safe_load(files["jaeger/config.yaml"])


def endpoints(config: dict) -> dict[str, str]:
    return {
        "query": config["extensions"]["jaeger_query"]["http"]["endpoint"],
        "query_grpc": config["extensions"]["jaeger_query"]["grpc"]["endpoint"],
        "health": config["extensions"]["healthcheckv2"]["http"]["endpoint"],
        "otlp_grpc": config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "otlp_http": config["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
    }


def test_compose_target_binds_every_interface_on_jaegers_ports():
    config = rendered(make_spec())
    assert endpoints(config) == {
        "query": "0.0.0.0:16686", "query_grpc": "0.0.0.0:16685", "health": "0.0.0.0:13133",
        "otlp_grpc": "0.0.0.0:4317", "otlp_http": "0.0.0.0:4318",
    }
    reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader == {"host": "0.0.0.0", "port": 8888}


def test_local_target_binds_loopback_on_ports_apart_from_the_collectors():
    config = rendered(make_spec(target="local"))
    assert endpoints(config) == {
        "query": "127.0.0.1:16686", "query_grpc": "127.0.0.1:16685", "health": "127.0.0.1:13134",
        "otlp_grpc": "127.0.0.1:14317", "otlp_http": "127.0.0.1:14318",
    }
    reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader == {"host": "127.0.0.1", "port": 18888}


def test_every_listener_is_set_explicitly():
    # Left to defaults, jaeger_query binds every interface (:16686), others localhost only.
    config = rendered(make_spec(target="local"))
    named = set(PORTS["jaeger"]) - {"metrics"}
    assert set(endpoints(config)) == named
    assert all(address.startswith("127.0.0.1:") for address in endpoints(config).values())


def test_storage_exporter_and_query_use_one_memory_store():
    config = rendered(make_spec(components={"jaeger": {"max_traces": 5000}}))
    [(store, backend)] = config["extensions"]["jaeger_storage"]["backends"].items()
    assert backend == {"memory": {"max_traces": 5000}}
    assert config["extensions"]["jaeger_query"]["storage"] == {"traces": store}
    assert config["exporters"]["jaeger_storage_exporter"] == {"trace_storage": store}
    assert config["service"]["extensions"] == ["jaeger_storage", "jaeger_query", "healthcheckv2"]
    assert config["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"], "processors": ["batch"], "exporters": ["jaeger_storage_exporter"],
    }
    assert config["extensions"]["healthcheckv2"]["use_v2"] is True


def test_query_does_not_trace_itself_into_the_users_traces():
    for target in ("compose", "local"):
        assert rendered(make_spec(target=target))["extensions"]["jaeger_query"]["enable_tracing"] is False


def test_same_spec_same_bytes():
    spec = make_spec()
    assert jaeger.render(spec, Topology(spec)) == jaeger.render(spec, Topology(spec))


def test_too_few_traces_is_refused():
    with pytest.raises(ValidationError, match="max_traces"):
        make_spec(components={"jaeger": {"max_traces": 10}})


# ---------------------------------------------------------------------------------------
# The real Jaeger v2 (built by scripts/install-tools.sh into .tools/bin/jaeger, when it builds)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["compose", "local"])
def test_jaeger_validate_accepts_the_config(tmp_path, target):
    binary = require_binary("jaeger")
    spec = make_spec(target=target)
    path = tmp_path / "config.yaml"
    path.write_text(jaeger.render(spec, Topology(spec))["jaeger/config.yaml"])
    result = subprocess.run([binary, "validate", f"--config={path}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.mark.slow
def test_jaeger_runs_the_local_config_and_serves_a_span_it_received(tmp_path, processes):
    binary = require_binary("jaeger")
    ports = {name: free_port() for name in PORTS["jaeger"]}
    spec = make_spec(target="local", components={"jaeger": {"ports": ports}})
    path = tmp_path / "config.yaml"
    path.write_text(jaeger.render(spec, Topology(spec))["jaeger/config.yaml"])
    log = (tmp_path / "jaeger.log").open("wb")
    proc = processes.start([binary, f"--config={path}"], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(ports["health"], timeout=30, proc=proc)

    deadline = time.monotonic() + 20
    while True:
        try:
            status, _ = _get(f"http://127.0.0.1:{ports['health']}{JAEGER_HEALTH_PATH}")
        except OSError:
            status = None
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status == 200

    span = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "obsgen-test"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "publish",
            "kind": 2, "startTimeUnixNano": str(time.time_ns() - 1_000_000), "endTimeUnixNano": str(time.time_ns()),
        }]}],
    }]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports['otlp_http']}/v1/traces", data=json.dumps(span).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200

    deadline = time.monotonic() + 20
    while True:
        _, body = _get(f"http://127.0.0.1:{ports['query']}/api/services")
        services = json.loads(body).get("data") or []
        if "obsgen-test" in services or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "obsgen-test" in services

    _, exposition = _get(f"http://127.0.0.1:{ports['metrics']}/metrics")
    assert "otelcol_receiver_accepted_spans" in exposition
