"""obsgen up/down on a local bundle: the processes manifest by value, and real processes started
and stopped by pid (redis-server and otelcol, the quickest of the stack to start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack import up as up_module
from stack.cli import main
from stack.load import load_spec
from stack.render import render_bundle
from stack.renderers.processes import processes
from stack.spec import Spec
from stack.topology import Topology
from stack.write import write_bundle
from tests.conftest import free_port, require_binary

SPEC = """
version: 1
project: uptest
target: local
services:
  - name: ws-server
    builtin: true
    port: {ws}
    metrics: {{port: {ws}}}
components:
  redis: {{ports: {{redis: {redis}}}}}
  collector:
    ports: {{otlp_grpc: {grpc}, otlp_http: {http}, metrics: {metrics}, prometheus: {prom}, health: {health}}}
notifications:
  receivers:
    - {{type: slack, name: chat, channel: "#ops", api_url: {{env: UPTEST_SLACK_URL}}}}
"""


def _spec(tmp_path: Path) -> Spec:
    ports = {name: free_port() for name in ("ws", "redis", "grpc", "http", "metrics", "prom", "health")}
    return load_spec(SPEC.format(**ports), "uptest.yaml", base_dir=str(tmp_path))


def test_manifest_lists_components_in_dependency_order_with_shared_flags(tmp_path):
    spec = _spec(tmp_path)
    manifest = processes(spec, Topology(spec))
    names = [entry["name"] for entry in manifest["processes"]]
    assert names == ["redis", "loki", "jaeger", "collector", "alertmanager", "prometheus", "grafana", "node-exporter",
                     "blackbox", "ws-server"]
    server = manifest["processes"][-1]
    assert server["binary"] == ["{python}"] and server["required"] is True
    port = spec.services[0].metrics.port
    assert server["ready"] == {"http": f"http://127.0.0.1:{port}/readyz"}
    assert "--otlp-endpoint" in server["args"] and "--broker" in server["args"]
    secrets = {secret["name"]: secret for secret in manifest["secrets"]}
    assert secrets["alertmanager_chat_api_url"] == {"name": "alertmanager_chat_api_url", "for": "alertmanager",
                                                    "env": "UPTEST_SLACK_URL"}
    assert secrets["server_jwt_secret"]["generate"] is True


def test_compose_target_renders_no_process_manifest(tmp_path):
    spec = _spec(tmp_path).model_copy(update={"target": "compose"})
    assert "local/processes.yaml" not in render_bundle(spec)


def test_up_starts_stops_by_pid_and_keeps_secrets_out_of_the_bundle(tmp_path, monkeypatch):
    require_binary("redis-server")
    require_binary("otelcol")
    spec = _spec(tmp_path)
    bundle = tmp_path / "bundle"
    write_bundle(render_bundle(spec), bundle)
    monkeypatch.setenv("UPTEST_SLACK_URL", "https://hooks.example.invalid/very-secret")
    report = up_module.up(bundle, only={"redis", "collector", "alertmanager"}, timeout=30)
    try:
        assert [s.name for s in report.started] == ["redis", "collector", "alertmanager"]
        for started in report.started:
            assert Path(f"/proc/{started.pid}").exists()
        secret = bundle / "secrets" / "alertmanager_chat_api_url"
        assert secret.read_text() == "https://hooks.example.invalid/very-secret"
        assert oct(secret.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(up_module.UpError, match="already has a running stack"):
            up_module.up(bundle)
    finally:
        stopped = up_module.down(bundle)
    assert stopped == ["alertmanager", "collector", "redis"]
    for started in report.started:
        assert not up_module._alive(started.pid)
    assert not (bundle / ".obsgen-up.json").exists()
    # The rendered files never hold the secret value.
    rendered = [p for p in bundle.rglob("*") if p.is_file() and "secrets" not in p.parts and "logs" not in p.parts]
    assert rendered and not any(b"very-secret" in p.read_bytes() for p in rendered)


def test_up_refuses_a_missing_environment_secret_and_starts_nothing(tmp_path, monkeypatch):
    require_binary("redis-server")
    spec = _spec(tmp_path)
    bundle = tmp_path / "bundle"
    write_bundle(render_bundle(spec), bundle)
    monkeypatch.delenv("UPTEST_SLACK_URL", raising=False)
    with pytest.raises(up_module.UpError, match="UPTEST_SLACK_URL is not set"):
        up_module.up(bundle, only={"redis", "alertmanager"})
    assert not (bundle / ".obsgen-up.json").exists()


def test_cli_up_on_a_missing_bundle_is_a_usage_error(tmp_path, capsys):
    assert main(["up", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["down", str(tmp_path)]) == 0
