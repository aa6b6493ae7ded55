"""prometheus.yml: by value for both targets, through `promtool check config`, and loaded by a
real Prometheus started the way `obsgen up` starts it (bundle root as working directory)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stack.load import load_spec_file
from stack.renderers import prometheus, rules, wiring
from stack.spec import Spec
from stack.topology import Topology
from tests.conftest import free_port, require_binary, wait_for_port

SPECS = Path(__file__).parent / "specs"


def make_spec(**fields) -> Spec:
    return Spec.model_validate({"version": 1, "project": "demo", "services": [{"name": "api"}], **fields})


def config(spec: Spec) -> dict:
    files = prometheus.render(spec, Topology(spec))
    assert list(files) == ["prometheus/prometheus.yml"]
    return yaml.safe_load(files["prometheus/prometheus.yml"])


def jobs(cfg: dict) -> dict[str, dict]:
    return {job["job_name"]: job for job in cfg["scrape_configs"]}


def test_global_settings_rule_files_and_alerting_come_from_the_spec():
    cfg = config(make_spec(components={"prometheus": {"scrape_interval": "30s", "evaluation_interval": "1m"}}))
    assert cfg["global"] == {"scrape_interval": "30s", "evaluation_interval": "1m", "external_labels": {"project": "demo"}}
    assert cfg["rule_files"] == ["rules/*.yml"]  # relative to prometheus.yml, in both targets
    assert cfg["storage"] == {"tsdb": {"retention": {"time": "15d"}}}  # Prometheus 3: not a flag any more
    assert cfg["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]}


def test_retention_is_in_the_config_file_for_both_targets():
    for target in ("compose", "local"):
        cfg = config(make_spec(target=target, components={"prometheus": {"retention": "30d"}}))
        assert cfg["storage"]["tsdb"]["retention"] == {"time": "30d"}


def test_every_service_instance_is_scraped_with_its_service_label():
    spec = load_spec_file(SPECS / "many-services.yaml")
    by_name = jobs(config(spec))
    assert by_name["gateway"] == {
        "job_name": "gateway",
        "metrics_path": "/metrics",
        "static_configs": [{"targets": ["gateway:9100", "gateway:9101", "gateway:9102"],
                            "labels": {"service": "gateway"}}],
    }
    assert by_name["chat"]["metrics_path"] == "/internal/metrics"
    assert by_name["chat"]["scrape_interval"] == "30s"
    assert by_name["presence"]["static_configs"][0]["targets"] == ["presence.internal:9300"]
    assert by_name["billing-worker"]["scrape_interval"] == "1m"


def test_every_stack_component_is_scraped_in_both_targets():
    compose = jobs(config(make_spec()))
    local = jobs(config(make_spec(target="local")))
    expected = {
        "prometheus": ("prometheus:9090", "127.0.0.1:9090"),
        "alertmanager": ("alertmanager:9093", "127.0.0.1:9093"),
        "collector": ("collector:8888", "127.0.0.1:8888"),
        "collector_exporter": ("collector:8889", "127.0.0.1:8889"),
        "jaeger": ("jaeger:8888", "127.0.0.1:18888"),
        "loki": ("loki:3100", "127.0.0.1:3100"),
        "grafana": ("grafana:3000", "127.0.0.1:3000"),
    }
    for name, (in_compose, natively) in expected.items():
        assert compose[name]["static_configs"] == [{"targets": [in_compose]}], name
        assert local[name]["static_configs"] == [{"targets": [natively]}], name
        assert "service" not in compose[name]["static_configs"][0].get("labels", {})
    # Only the collector's exporter keeps the job/instance of the OTLP sender.
    assert [n for n, job in compose.items() if job.get("honor_labels")] == ["collector_exporter"]
    assert local["api"]["static_configs"][0]["targets"] == ["127.0.0.1:8000"]


def test_port_overrides_move_the_scrape_targets():
    cfg = config(make_spec(components={"grafana": {"ports": {"http": 3300}}, "loki": {"ports": {"http": 3101}}}))
    assert jobs(cfg)["grafana"]["static_configs"] == [{"targets": ["grafana:3300"]}]
    assert jobs(cfg)["loki"]["static_configs"] == [{"targets": ["loki:3101"]}]


@pytest.mark.parametrize("job", sorted(wiring.STACK_JOBS))
def test_no_service_can_take_a_stack_job_name(job):
    # Two scrape configs with one job name make Prometheus refuse its config.
    with pytest.raises(ValidationError):
        make_spec(services=[{"name": job}])


def test_rendering_is_deterministic():
    spec = load_spec_file(SPECS / "many-services.yaml")
    assert prometheus.render(spec, Topology(spec)) == prometheus.render(spec, Topology(spec))


# ---------------------------------------------------------------------------------------
# The real tools
# ---------------------------------------------------------------------------------------


def write(spec: Spec, root: Path) -> Path:
    topology = Topology(spec)
    for path, text in {**prometheus.render(spec, topology), **rules.render(spec, topology)}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(lambda: make_spec(), id="compose"),
        pytest.param(lambda: make_spec(target="local"), id="local"),
        pytest.param(lambda: load_spec_file(SPECS / "many-services.yaml"), id="many-services"),
        pytest.param(lambda: make_spec(components={"prometheus": {"scrape_interval": "5s", "evaluation_interval": "5s"}}),
                     id="short-interval"),
    ],
)
def test_promtool_check_config_accepts_it_and_finds_the_rule_files(spec, tmp_path):
    tool = require_binary("promtool")
    root = write(spec(), tmp_path)
    result = subprocess.run([tool, "check", "config", "prometheus/prometheus.yml"], cwd=root,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = len(list((root / "prometheus/rules").glob("*.yml")))
    assert f"{rule_files} rule files found" in result.stdout + result.stderr


@pytest.mark.e2e
def test_prometheus_loads_the_bundle_from_its_root_as_obsgen_up_runs_it(tmp_path, processes):
    binary = require_binary("prometheus")
    spec = load_spec_file(SPECS / "local.yaml")
    root = write(spec, tmp_path)
    port = free_port()
    proc = processes.start([
        binary, "--config.file=prometheus/prometheus.yml", f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
    ], cwd=root)
    wait_for_port(port, timeout=30, proc=proc)
    expected_rules = {rule["alert"] for path in (root / "prometheus/rules").glob("*.yml")
                      for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule}
    expected_jobs = {"ws-server", *wiring.STACK_JOBS, wiring.PROBE_JOB}
    loaded: set[str] = set()
    jobs_seen: set[str] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (expected_rules <= loaded and jobs_seen == expected_jobs):
        try:
            groups = get_json(port, "/api/v1/rules")["groups"]
            loaded = {rule["name"] for group in groups for rule in group["rules"]}
            jobs_seen = {t["labels"]["job"] for t in get_json(port, "/api/v1/targets")["activeTargets"]}
        except OSError:
            pass
        time.sleep(0.2)
    assert expected_rules and expected_rules <= loaded
    assert jobs_seen == expected_jobs


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        return json.load(response)["data"]
