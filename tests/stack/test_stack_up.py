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
from stack.write import check_drift, write_bundle
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
  runbooks: {{ports: {{http: {runbooks}}}}}
  collector:
    ports: {{otlp_grpc: {grpc}, otlp_http: {http}, metrics: {metrics}, prometheus: {prom}, health: {health}}}
notifications:
  receivers:
    - {{type: slack, name: chat, channel: "#ops", api_url: {{env: UPTEST_SLACK_URL}}}}
"""


PORT_NAMES = ("ws", "redis", "grpc", "http", "metrics", "prom", "health", "runbooks")


def _distinct_free_ports() -> dict[str, int]:
    """A free port per name, all different (free_port can hand out a port it just released again)."""
    ports: dict[str, int] = {}
    while len(ports) < len(PORT_NAMES):
        port = free_port()
        if port not in ports.values():
            ports[PORT_NAMES[len(ports)]] = port
    return ports


def _spec(tmp_path: Path) -> Spec:
    return load_spec(SPEC.format(**_distinct_free_ports()), "uptest.yaml", base_dir=str(tmp_path))


def test_manifest_lists_components_in_dependency_order_with_shared_flags(tmp_path):
    spec = _spec(tmp_path)
    manifest = processes(spec, Topology(spec))
    names = [entry["name"] for entry in manifest["processes"]]
    assert names == ["runbooks", "redis", "loki", "jaeger", "collector", "alertmanager", "prometheus", "grafana",
                     "node-exporter", "blackbox", "ws-server"]
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


def test_up_serves_the_runbooks_every_rule_links_to(tmp_path):
    """Local target: each alert's runbook_url points at the runbook server `obsgen up` starts, and
    every one of them answers 200 with the page the bundle holds; nothing outside runbooks/ is served."""
    import urllib.error
    import urllib.request

    import yaml

    from stack.check import rule_runbook_urls

    spec = _spec(tmp_path)
    bundle = tmp_path / "bundle"
    write_bundle(render_bundle(spec), bundle)
    rules = {str(p.relative_to(bundle)): yaml.safe_load(p.read_text()) for p in (bundle / "prometheus").rglob("*.yml")
             if "groups" in p.read_text()}
    urls = [url for _, url in rule_runbook_urls(rules)]
    base = f"http://127.0.0.1:{spec.components.runbooks.ports['http']}/"
    assert urls and all(url.startswith(base) for url in urls), urls[:3]
    report = up_module.up(bundle, only={"runbooks"}, timeout=30)
    try:
        assert [s.name for s in report.started] == ["runbooks"]
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200, url
                assert response.read() == (bundle / "runbooks" / url[len(base):]).read_bytes(), url
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "../local/processes.yaml", timeout=10)
        assert refused.value.code == 404
    finally:
        up_module.down(bundle)


def test_runbook_base_url_in_the_spec_replaces_the_local_runbook_server(tmp_path):
    spec = _spec(tmp_path)
    spec = spec.model_copy(update={"alerts": spec.alerts.model_copy(
        update={"runbook_base_url": "https://wiki.example.com/runbooks"})})
    names = [entry["name"] for entry in processes(spec, Topology(spec))["processes"]]
    assert "runbooks" not in names


def test_up_renders_uninstalled_backends_out_of_the_bundle_and_back_in(tmp_path, monkeypatch):
    """A backend whose binary is missing is neither started, scraped nor exported to: the bundle is
    re-rendered from its local/spec.yaml without it; once installed, the next run brings it back."""
    import yaml

    spec = _spec(tmp_path)
    bundle = tmp_path / "bundle"
    write_bundle(render_bundle(spec), bundle)
    stored = (bundle / "local" / "spec.yaml").read_bytes()
    installed = {"loki": False, "jaeger": False, "grafana": False}

    def find(candidates):
        return None if not installed.get(candidates[0], True) else "/usr/bin/true"
    monkeypatch.setattr(up_module, "find_binary", find)

    def read(path):
        return yaml.safe_load((bundle / path).read_text())

    left_out = up_module.render_without_missing(bundle)
    assert [name for name, _ in left_out] == ["loki", "jaeger", "grafana"]
    assert all("not installed" in reason for _, reason in left_out)
    names = [entry["name"] for entry in read("local/processes.yaml")["processes"]]
    assert not {"loki", "jaeger", "grafana"} & set(names) and "collector" in names
    jobs = {job["job_name"] for job in read("prometheus/prometheus.yml")["scrape_configs"]}
    assert not {"loki", "jaeger", "grafana"} & jobs and "collector" in jobs
    collector = read("collector/config.yaml")
    assert set(collector["exporters"]) == {"prometheus"} and set(collector["service"]["pipelines"]) == {"metrics"}
    server = next(e for e in read("local/processes.yaml")["processes"] if e["name"] == "ws-server")
    assert server["args"][server["args"].index("--logs") + 1] == "none"
    assert server["env"] == {"OTEL_TRACES_EXPORTER": "none"}
    assert (bundle / "local" / "spec.yaml").read_bytes() == stored  # the next run starts from the same spec

    installed.update(loki=True, jaeger=True, grafana=True)
    assert up_module.render_without_missing(bundle) == []
    assert not check_drift(render_bundle(spec), bundle)
    # With nothing missing now or before, the bundle is left as it is (a hand edit survives).
    edited = (bundle / "prometheus" / "prometheus.yml").read_text() + "# edited by hand\n"
    (bundle / "prometheus" / "prometheus.yml").write_text(edited)
    assert up_module.render_without_missing(bundle) == []
    assert (bundle / "prometheus" / "prometheus.yml").read_text() == edited
    # Declared external, a missing backend stays in the bundle (someone else runs it there).
    installed["loki"] = False
    assert up_module.render_without_missing(bundle, external={"loki"}) == []
    assert "loki" in {job["job_name"] for job in read("prometheus/prometheus.yml")["scrape_configs"]}


def test_only_the_local_target_can_leave_a_backend_out(tmp_path):
    from stack.errors import SpecError

    text = SPEC.format(**_distinct_free_ports())
    text = text.replace("target: local", "target: compose").replace(
        "components:\n", "components:\n  loki: {enabled: false}\n", 1)
    with pytest.raises(SpecError, match="only the local target can leave loki out"):
        load_spec(text, "x.yaml")
    assert not load_spec(text.replace("target: compose", "target: local"), "x.yaml").components.loki.enabled
