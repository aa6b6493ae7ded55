"""End to end: host metrics, process metrics and outside-in probes, on real processes.

``obsgen up`` starts the rendered local bundle (Prometheus, Alertmanager, the collector, Jaeger,
node_exporter, blackbox_exporter and the bundled alert sink) from a spec with two external
WebSocket services, which the test runs itself as this project's server:

- ``ws-probed`` with a per-IP connection limit of 3. The test holds 3 authenticated connections
  from 127.0.0.1, so the server answers every further upgrade with 429 while /metrics and /readyz
  still answer: blackbox's upgrade probe fails while ``up`` stays 1. WebSocketProbeFailing must
  fire, reach the alert sink through the real Alertmanager, and resolve once the connections close.
- ``ws-fds`` started with a soft file-descriptor limit of 64 (``ulimit -n``, set in the child
  with setrlimit). The test opens connections until the server holds more than 80 % of it:
  ProcessNearFileDescriptorLimit must fire and reach the sink, and resolve once they close.

The spec shortens the scrape and evaluation intervals and the alerts' `for` through its own keys
(alerts.thresholds.<key>), so the whole module runs in about a minute or two. Every query of the
dashboards' host, process and probe rows must return data from the real Prometheus. The CPU alert
is proven by its promtool tests (the bundle's prometheus/tests/host.yml, run here too).
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from websockets.sync.client import ClientConnection, connect

from instrumented_server.auth import Authenticator
from stack.load import default_spec_text
from stack.ports import PORTS
from stack.up import STATE_FILE, down
from tests.conftest import require_binary, stop_process
from tests.e2e.e2e_support import (
    REPO,
    Prometheus,
    dashboard_queries,
    free_ports,
    grafana_to_promql,
    has_points,
    http_text,
    render_bundle,
    scrape,
    tail,
    wait_until,
)

pytestmark = pytest.mark.e2e

INTERVAL = "1s"  # scrape and rule evaluation
FOR = "3s"       # the provoked alerts' `for`
FD_LIMIT = 64    # the soft RLIMIT_NOFILE of ws-fds
FD_TARGET = 0.85  # share of the limit the test drives ws-fds to (the alert's threshold is 0.8)
PER_IP_LIMIT = 3  # ws-probed's --max-connections-per-ip
DEADLINE = 120.0  # generous: a loaded 2-core machine (load 10 has been seen)
PROBE_ROWS = {"Processes", "Host", "Probes from outside"}  # the dashboard rows this test proves


def obsgen(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def spec_for(ports: dict[tuple[str, str], int], probed: int, fds: int) -> dict:
    """The default spec with two external services on 127.0.0.1, every named port free, short timings."""
    spec = yaml.safe_load(default_spec_text())
    spec["target"] = "local"
    spec["slos"] = []
    components = spec.setdefault("components", {})
    for (component, name), port in ports.items():
        components.setdefault(component, {}).setdefault("ports", {})[name] = port
    components["redis"]["enabled"] = False
    components["prometheus"].update(scrape_interval=INTERVAL, evaluation_interval=INTERVAL)
    spec["services"] = [
        {"name": name, "host": "127.0.0.1", "port": port, "metrics": {"port": port}, "otlp": False,
         "probe": {"ready_path": "/readyz"}}
        for name, port in (("ws-probed", probed), ("ws-fds", fds))
    ]
    spec["alerts"]["thresholds"] = {"probe_failing": {"for": FOR}, "process_fds": {"for": FOR}}
    sink = ports[("alert_sink", "http")]
    for receiver in spec["notifications"]["receivers"]:
        receiver["url"] = f"http://alert-sink:{sink}/alerts/{receiver['name']}"
    spec["notifications"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    return spec


def _fd_limit() -> None:
    """In the child before exec: the soft limit `ulimit -n` sets (the hard limit stays)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


@dataclass
class Bundle:
    root: Path
    spec: dict
    prometheus: Prometheus
    probed_port: int
    fds_port: int
    secret: Path
    servers: dict[str, subprocess.Popen]
    t0: float

    def sink_records(self) -> list[dict]:
        path = self.root / "logs" / "alert-sink.log"
        records = []
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "notification":
                records.append(record)
        return records

    def notified(self, alertname: str, service: str, status: str) -> list[dict]:
        """Alerts the alert sink logged with these labels and status."""
        return [alert for record in self.sink_records() for alert in record.get("alerts", [])
                if alert.get("alertname") == alertname and alert.get("service") == service
                and alert.get("status") == status]

    def firing(self, alertname: str, **labels: str) -> list[dict]:
        return [a for a in self.prometheus.alerts() if a["labels"].get("alertname") == alertname
                and a["state"] == "firing" and all(a["labels"].get(k) == v for k, v in labels.items())]

    def diagnostics(self) -> str:
        parts = [f"bundle: {self.root}"]
        for log in sorted((self.root / "logs").glob("*.log")):
            parts += [f"--- {log.name}", tail(log, 12)]
        parts += ["--- Prometheus alerts", json.dumps(self.prometheus.alerts(), indent=1)[:3000]]
        return "\n".join(parts)

    def connect(self, port: int) -> ClientConnection:
        token = Authenticator(self.secret.read_text(encoding="utf-8").strip()).mint("e2e-host-probe")
        return connect(f"ws://127.0.0.1:{port}/", additional_headers={"Authorization": f"Bearer {token}"},
                       open_timeout=10)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    for name in ("prometheus", "alertmanager", "node_exporter", "blackbox_exporter", "otelcol", "jaeger"):
        require_binary(name)
    workdir = tmp_path_factory.mktemp("host-probe")
    names = [(component, name) for component, named in sorted(PORTS.items()) for name in sorted(named)]
    free = free_ports(len(names) + 2)
    ports = dict(zip(names, free))
    probed, fds = free[-2:]
    root = render_bundle(spec_for(ports, probed, fds), workdir)
    (root / "logs").mkdir(exist_ok=True)
    secret = workdir / "jwt-secret"
    secret.write_text("e2e-host-probe-secret-of-at-least-32-bytes\n", encoding="utf-8")
    servers: dict[str, subprocess.Popen] = {}
    try:
        common = ["--host", "127.0.0.1", "--jwt-secret-file", str(secret)]
        for name, port, extra, preexec in (("ws-probed", probed, ["--max-connections-per-ip", str(PER_IP_LIMIT)], None),
                                           ("ws-fds", fds, [], _fd_limit)):
            with open(root / "logs" / f"test-{name}.log", "wb") as log:
                servers[name] = subprocess.Popen(
                    [sys.executable, "-m", "instrumented_server", *common, "--port", str(port),
                     "--service-name", name, *extra],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec)
        for name, port in (("ws-probed", probed), ("ws-fds", fds)):
            proc = servers[name]
            ready = wait_until(lambda p=port, proc=proc: proc.poll() is not None
                               or http_text(f"http://127.0.0.1:{p}/readyz")[0] == 200, 60)
            if not ready or proc.poll() is not None:
                raise AssertionError(f"{name} did not become ready:\n{tail(root / 'logs' / f'test-{name}.log')}")
        result = obsgen("up", "--detach", "--timeout", "90", str(root))
        if result.returncode != 0:
            raise AssertionError(f"obsgen up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        spec = yaml.safe_load((workdir / "obsgen.yaml").read_text(encoding="utf-8"))
        yield Bundle(root, spec, Prometheus(ports[("prometheus", "http")]), probed, fds, secret, servers, time.time())
    finally:
        for proc in servers.values():
            stop_process(proc)
        if (root / STATE_FILE).exists():
            result = obsgen("down", str(root), timeout=120)
            if result.returncode != 0 or (root / STATE_FILE).exists():
                down(root)


def test_exporters_run_as_processes_and_every_probe_and_host_target_is_up(bundle: Bundle):
    state = {entry["name"] for entry in json.loads((bundle.root / STATE_FILE).read_text(encoding="utf-8"))}
    assert {"node-exporter", "blackbox", "alert-sink"} <= state, state

    def targets_up() -> bool:
        targets = bundle.prometheus.targets()
        jobs = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        return {"node_exporter", "blackbox_exporter", "blackbox", "ws-probed", "ws-fds"} <= jobs

    assert wait_until(targets_up, DEADLINE), bundle.diagnostics()
    # Both probes of both services succeed while nothing is wrong.
    assert wait_until(lambda: len([r for r in bundle.prometheus.query('probe_success{job="blackbox"} == 1')]) == 4,
                      DEADLINE), bundle.prometheus.query('probe_success{job="blackbox"}')
    # The probe's samples carry the service; the probe job's own `up` does not (it is no service's).
    assert {r["metric"]["service"] for r in bundle.prometheus.query('probe_success{job="blackbox"}')} == \
        {"ws-probed", "ws-fds"}
    assert not bundle.prometheus.query('up{job="blackbox",service!=""}')


def test_probe_alert_fires_while_the_upgrade_is_refused_and_resolves_once_it_is_accepted(bundle: Bundle):
    assert wait_until(lambda: bundle.prometheus.value(
        'probe_success{job="blackbox",service="ws-probed",probe="upgrade"}') == 1, DEADLINE), bundle.diagnostics()
    with contextlib.ExitStack() as held:
        for _ in range(PER_IP_LIMIT):
            held.enter_context(bundle.connect(bundle.probed_port))
        # A fourth upgrade is refused (429) while /metrics and /readyz still answer: `up` stays 1.
        status, _ = http_text(f"http://127.0.0.1:{bundle.probed_port}/readyz")
        assert status == 200
        fired = wait_until(lambda: bundle.notified("WebSocketProbeFailing", "ws-probed", "firing"), DEADLINE)
        assert fired, bundle.diagnostics()
        alerts = bundle.firing("WebSocketProbeFailing", service="ws-probed")
        assert [a["labels"]["probe"] for a in alerts] == ["upgrade"], alerts  # /readyz still answers
        assert alerts[0]["labels"]["severity"] == "critical"
        assert bundle.prometheus.value('up{job="ws-probed"}') == 1
        assert not bundle.firing("WebSocketTargetDown")
        assert not bundle.firing("WebSocketProbeFailing", service="ws-fds")
        # Through the real Alertmanager's route tree: critical goes to the on-call receiver.
        records = [r for r in bundle.sink_records() if r.get("alertname") == "WebSocketProbeFailing"]
        assert records and all(r["receiver"] == "oncall" for r in records), records
    resolved = wait_until(lambda: bundle.notified("WebSocketProbeFailing", "ws-probed", "resolved"), DEADLINE)
    assert resolved, bundle.diagnostics()
    assert bundle.prometheus.value('probe_success{job="blackbox",service="ws-probed",probe="upgrade"}') == 1


def test_fd_alert_fires_when_a_server_holds_most_of_its_low_fd_limit(bundle: Bundle):
    def fds() -> tuple[float, float]:
        samples = scrape(bundle.fds_port)
        return samples["process_open_fds{}"], samples["process_max_fds{}"]

    open_fds, limit = fds()
    assert limit == FD_LIMIT, "the server did not run under the test's ulimit -n"
    connections = 0
    with contextlib.ExitStack() as held:
        while open_fds < FD_TARGET * FD_LIMIT:
            held.enter_context(bundle.connect(bundle.fds_port))
            connections += 1
            open_fds, _ = fds()
            assert connections < FD_LIMIT, "connections do not use the server's file descriptors"
        fired = wait_until(lambda: bundle.notified("ProcessNearFileDescriptorLimit", "ws-fds", "firing"), DEADLINE)
        assert fired, f"{open_fds}/{limit} fds, {connections} connections\n{bundle.diagnostics()}"
        (alert,) = bundle.firing("ProcessNearFileDescriptorLimit", service="ws-fds")
        assert alert["labels"]["job"] == "ws-fds" and alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) > 0.8
        assert not bundle.firing("ProcessNearFileDescriptorLimit", service="ws-probed")
    resolved = wait_until(lambda: bundle.notified("ProcessNearFileDescriptorLimit", "ws-fds", "resolved"), DEADLINE)
    assert resolved, bundle.diagnostics()


def test_host_process_and_probe_panels_return_data(bundle: Bundle):
    """Every query of the WebSocket overview's process, host and probe rows returns points."""
    dashboards = sorted((bundle.root / "grafana" / "dashboards").glob("*.json"))
    rows: dict[str, str] = {}  # panel title -> its row's title
    for path in dashboards:
        model = json.loads(path.read_text(encoding="utf-8"))
        if model["title"] != "WebSocket overview":
            continue
        row = ""
        for panel in model["panels"]:
            if panel["type"] == "row":
                row = panel["title"]
                for inner in panel.get("panels", []):
                    rows[inner["title"]] = row
            else:
                rows[panel["title"]] = row
    assert PROBE_ROWS <= set(rows.values()), set(rows.values())
    assert "Probe certificates" not in rows.values()  # no wss:// endpoint here
    queries, variables = dashboard_queries(bundle.root)
    mine = [q for q in queries if q.dashboard == "WebSocket overview" and rows.get(q.panel) in PROBE_ROWS]
    assert len(mine) >= 12, [q.panel for q in mine]
    start = bundle.t0 - 30
    empty = []

    def all_have_data() -> bool:
        empty.clear()
        end = time.time()
        for q in mine:
            expr = grafana_to_promql(q.expr, variables[q.dashboard], 1, 4, int(end - start))
            if not has_points(bundle.prometheus.query_range(expr, start, end, 1)):
                empty.append(f"{q.panel} [{q.ref}]: {expr}")
        return not empty

    assert wait_until(all_have_data, DEADLINE, interval=2), "\n".join(empty)


def test_cpu_memory_and_disk_alerts_pass_their_promtool_tests(bundle: Bundle):
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "test", "rules", "prometheus/tests/host.yml", "prometheus/tests/process.yml",
                             "prometheus/tests/probe.yml"], cwd=bundle.root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((bundle.root / "prometheus" / "tests" / "host.yml").read_text(encoding="utf-8"))["tests"]
    names = [t["name"] for t in tests]
    assert "HostHighCpuUsage fires (warning) at 90%" in names
    assert "HostHighCpuUsage stays silent below its threshold (at 40%)" in names
