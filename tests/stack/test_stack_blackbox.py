"""Host metrics and outside-in probes in the bundle: the blackbox renderer by value, the probe and
node_exporter scrape jobs, the switches that leave them out, and the real blackbox_exporter's
config check (one failing case)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stack.check import check_blackbox
from stack.render import render_bundle
from stack.renderers import blackbox, compose, processes, prometheus
from stack.renderers.wiring import PROBE_JOB, probes
from stack.spec import Spec
from stack.topology import Topology
from tests.conftest import require_binary


def make_spec(**fields) -> Spec:
    # A built-in server serves WebSocket and /metrics on metrics.port (+ i per instance).
    base = {"version": 1, "project": "demo", "services": [{"name": "ws", "builtin": True,
                                                          "metrics": {"port": 9000}, "instances": 2}]}
    return Spec.model_validate({**base, **fields})


def blackbox_config(spec: Spec) -> dict:
    return yaml.safe_load(blackbox.render(spec, Topology(spec))[blackbox.PATH])


def jobs(spec: Spec) -> dict[str, dict]:
    config = yaml.safe_load(prometheus.render(spec, Topology(spec))[prometheus.PATH])
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_upgrade_module_sends_a_websocket_upgrade_and_expects_101():
    module = blackbox_config(make_spec())["modules"]["websocket_upgrade"]
    assert module["prober"] == "tcp" and module["timeout"] == "5s"
    send, expect = module["tcp"]["query_response"]
    # The prober appends "\n": the request ends in "\r" so that its last line is the blank "\r\n".
    request = send["send"] + "\n"
    assert request.startswith("GET / HTTP/1.1\r\n") and request.endswith("\r\n\r\n")
    assert "\r\nUpgrade: websocket\r\n" in request and "\r\nSec-WebSocket-Version: 13\r\n" in request
    assert expect == {"expect": r"^HTTP/1\.1 101 "}
    assert "tls" not in module["tcp"]


def test_probe_path_and_tls_get_their_own_module():
    spec = make_spec(services=[
        {"name": "ws", "builtin": True, "port": 9000, "metrics": {"port": 9000}},
        {"name": "edge", "host": "edge.example.com", "port": 443, "probe": {"tls": True, "path": "/socket"}},
        {"name": "quiet", "host": "10.0.0.5", "port": 8080, "probe": {"enabled": False}},
        {"name": "scraped-only"},  # no WebSocket port: nothing to probe
    ])
    modules = blackbox_config(spec)["modules"]
    assert set(modules) == {"websocket_upgrade", "websocket_upgrade_tls_socket", "http_ready"}
    tls = modules["websocket_upgrade_tls_socket"]["tcp"]
    assert tls["tls"] is True and tls["tls_config"] == {"insecure_skip_verify": False}
    assert tls["query_response"][0]["send"].startswith("GET /socket HTTP/1.1\r\n")
    found = [(p.service, p.probe, p.target, p.tls) for p in probes(spec, Topology(spec))]
    assert found == [("ws", "upgrade", "ws:9000", False), ("ws", "ready", "http://ws:9000/readyz", False),
                     ("edge", "upgrade", "edge.example.com:443", True)]


def test_probe_job_probes_every_instance_and_gives_service_only_to_the_probes_samples():
    spec = make_spec(target="local")
    job = jobs(spec)[PROBE_JOB]
    assert job["metrics_path"] == "/probe"
    targets = [(c["targets"], c["labels"]) for c in job["static_configs"]]
    assert targets == [
        (["127.0.0.1:9000"], {"__param_module": "websocket_upgrade", "instance": "127.0.0.1:9000",
                              "probe": "upgrade", "probe_service": "ws"}),
        (["http://127.0.0.1:9000/readyz"], {"__param_module": "http_ready", "instance": "127.0.0.1:9000",
                                            "probe": "ready", "probe_service": "ws"}),
        (["127.0.0.1:9001"], {"__param_module": "websocket_upgrade", "instance": "127.0.0.1:9001",
                              "probe": "upgrade", "probe_service": "ws"}),
        (["http://127.0.0.1:9001/readyz"], {"__param_module": "http_ready", "instance": "127.0.0.1:9001",
                                            "probe": "ready", "probe_service": "ws"}),
    ]
    assert job["relabel_configs"][-1] == {"target_label": "__address__", "replacement": "127.0.0.1:9115"}
    assert job["metric_relabel_configs"] == [
        {"source_labels": ["probe_service"], "target_label": "service"},
        {"action": "labeldrop", "regex": "probe_service"},
    ]
    # `up` of the probe job is no service's: no target carries a `service` label.
    assert all("service" not in c["labels"] for c in job["static_configs"])
    assert jobs(spec)["node_exporter"]["static_configs"] == [{"targets": ["127.0.0.1:9100"]}]


def test_switches_leave_the_exporters_their_jobs_alerts_and_rows_out():
    on = render_bundle(make_spec())
    off = render_bundle(make_spec(components={"node_exporter": {"enabled": False}, "blackbox": {"enabled": False}}))
    assert {"blackbox/blackbox.yml", "prometheus/rules/host.yml", "prometheus/rules/probe.yml"} <= set(on)
    assert "prometheus/rules/process.yml" in off  # process alerts read every job, not an exporter
    assert not {"blackbox/blackbox.yml", "prometheus/rules/host.yml", "prometheus/rules/probe.yml"} & set(off)
    services_on = yaml.safe_load(on["docker-compose.yml"])["services"]
    services_off = yaml.safe_load(off["docker-compose.yml"])["services"]
    assert {"node-exporter", "blackbox"} <= set(services_on) and not {"node-exporter", "blackbox"} & set(services_off)
    scrape_off = {j["job_name"] for j in yaml.safe_load(off["prometheus/prometheus.yml"])["scrape_configs"]}
    assert not {"node_exporter", "blackbox_exporter", PROBE_JOB} & scrape_off
    dashboard_on = b"".join(v for k, v in on.items() if k.startswith("grafana/dashboards/"))
    dashboard_off = b"".join(v for k, v in off.items() if k.startswith("grafana/dashboards/"))
    assert b"node_load1" in dashboard_on and b"probe_success" in dashboard_on
    assert b"node_load1" not in dashboard_off and b"probe_success" not in dashboard_off
    assert b"process_open_fds" in dashboard_off
    assert b"probe_ssl_earliest_cert_expiry" not in dashboard_on  # no wss:// endpoint


def test_nothing_to_probe_runs_no_blackbox_and_scrapes_none():
    spec = make_spec(services=[{"name": "api", "host": "10.0.0.5"}])  # no WebSocket port given
    assert probes(spec, Topology(spec)) == []
    assert "blackbox" not in compose.compose(spec, Topology(spec))["services"]
    assert not {"blackbox_exporter", PROBE_JOB} & set(jobs(spec))
    assert "node_exporter" in jobs(spec)
    assert blackbox.render(spec, Topology(spec)) == {}


def test_compose_node_exporter_reads_the_host_read_only():
    spec = make_spec()
    service = compose.compose(spec, Topology(spec))["services"]["node-exporter"]
    assert service["image"] == "prom/node-exporter:v1.12.1"
    assert service["volumes"] == ["/proc:/host/proc:ro", "/sys:/host/sys:ro", "/:/host:ro,rslave"]
    assert {"--path.rootfs=/host", "--path.procfs=/host/proc", "--path.sysfs=/host/sys"} <= set(service["command"])
    assert service["pid"] == "host" and "ports" not in service
    box = compose.compose(spec, Topology(spec))["services"]["blackbox"]
    assert box["image"] == "prom/blackbox-exporter:v0.28.0"
    assert box["volumes"] == ["./blackbox:/etc/blackbox:ro"]


def test_local_processes_run_both_exporters_on_loopback():
    spec = make_spec(target="local")
    entries = {e["name"]: e for e in processes.processes(spec, Topology(spec))["processes"]}
    assert entries["node-exporter"]["binary"] == ["node_exporter", "prometheus-node-exporter"]
    assert "--web.listen-address=127.0.0.1:9100" in entries["node-exporter"]["args"]
    assert not any(a.startswith("--path.") for a in entries["node-exporter"]["args"])
    assert entries["blackbox"]["args"] == ["--config.file=blackbox/blackbox.yml",
                                           "--web.listen-address=127.0.0.1:9115"]
    assert entries["blackbox"]["ready"] == {"http": "http://127.0.0.1:9115/-/healthy"}


def test_a_service_named_after_an_exporter_or_a_local_port_clash_is_refused():
    with pytest.raises(ValidationError, match="name of a stack component"):
        make_spec(services=[{"name": "blackbox"}])
    with pytest.raises(ValidationError, match="port 9100"):
        make_spec(target="local", services=[{"name": "ws", "builtin": True, "metrics": {"port": 9100}}])


def test_rendered_modules_pass_blackbox_exporter_config_check(tmp_path):
    require_binary("blackbox_exporter")
    spec = make_spec(services=[
        {"name": "ws", "builtin": True, "port": 9000, "metrics": {"port": 9000}},
        {"name": "edge", "host": "edge.example.com", "port": 443, "probe": {"tls": True, "path": "/socket"}},
    ])
    root = _write(blackbox.render(spec, Topology(spec)), tmp_path)
    result = check_blackbox(root)
    assert result.status == "passed", result.detail
    assert result.version == "0.28.0"


def test_blackbox_config_check_fails_on_a_broken_module(tmp_path):
    binary = require_binary("blackbox_exporter")
    spec = make_spec()
    files = blackbox.render(spec, Topology(spec))
    broken = files[blackbox.PATH].replace(r"'^HTTP/1\.1 101 '", "'^HTTP/1\\.1 (101 '")  # unbalanced group
    assert broken != files[blackbox.PATH]
    root = _write({blackbox.PATH: broken}, tmp_path)
    result = check_blackbox(root)
    assert result.status == "failed" and "Could not compile regular expression" in result.detail, result.detail
    direct = subprocess.run([binary, "--config.check", f"--config.file={root / blackbox.PATH}"],
                            capture_output=True, text=True, timeout=60)
    assert direct.returncode != 0


def _write(files: dict[str, str], root: Path) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return root
