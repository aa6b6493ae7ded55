"""The whole pipeline, end to end, on real binaries.

The embedded default spec is rendered for the ``local`` target through the real CLI (every port
on a free 127.0.0.1 port, alert timings shortened through spec keys only) and started with
``obsgen up --detach``: Redis, the OpenTelemetry Collector, Jaeger v2 (with the rendered
jaeger/config.yaml), Alertmanager, Prometheus 3 and the instrumented server; ``obsgen down``
stops them when the module ends, pass or fail. The load generator then drives traffic and
faults, and the tests check, against those real processes, that targets are scraped, rules
evaluate, dashboard queries return data (the PromQL ones on Prometheus, the trace search on
Jaeger), alerts go pending -> firing -> notified -> resolved through the real Alertmanager to a
webhook, an inhibited warning stays silent, spans reach Jaeger whole (a publish's trace, fetched
by id, holds its deliveries), and Prometheus's exemplars carry trace ids that Jaeger resolves.

STAND-IN: Loki cannot be built on this machine (docs/tools.md). A second, real ``otelcol``
started by this test listens on Loki's HTTP port (path ``/otlp/v1/logs``) and prints what it
receives (debug exporter); the log test reads that output and its own metrics, and its name says
"standin". Grafana does not run here either: its dashboards' PromQL is run against the real
Prometheus and its Jaeger search against the real Jaeger; the Loki panels are listed below with
the reason they are not checked.

One module-scoped scenario drives everything once (about a minute) and records what it observed;
each test then judges one aspect of the record, so a failure names what broke and prints the
relevant process logs.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from alerts.pack import load_pack
from exporter.catalog import ACTIVE_CONNECTIONS, FANOUT_MESSAGES_TOTAL, MESSAGE_DURATION_SECONDS
from stack.renderers.jaeger import STORAGE_EXPORTER as JAEGER_STORE_EXPORTER
from stack.renderers.rules import pack_value_expr
from stack.spec import parse_duration
from stack.up import STATE_FILE, down, find_binary, load_manifest
from tests.conftest import IN_CI, require_binary
from tests.e2e.e2e_support import (
    REPO,
    AlertWatcher,
    Alertmanager,
    Jaeger,
    Prometheus,
    WebhookReceiver,
    dashboard_queries,
    e2e_spec,
    free_ports,
    grafana_to_promql,
    has_points,
    http_text,
    non_finite_series,
    series_summary,
    jaeger_version,
    loadgen_argv,
    parse_debug_logs,
    port_open,
    prometheus_version,
    render_bundle,
    run_loadgen,
    scrape,
    standin_config,
    sum_samples,
    tail,
    trace_spans,
    wait_until,
)

pytestmark = pytest.mark.e2e

# ------------------------------------------------------------------------------------------ settings
# Alert timings and levels, shortened through the spec's own keys (alerts.thresholds.<key>).
# Pairs get a critical level just above the warning, so one fault burst crosses both within an
# evaluation or two (the critical must reach Alertmanager before the warning's group_wait ends
# for the inhibition to apply), and a dilution burst brings the ratio back under both.
THRESHOLDS = {
    "connection_drop_rate": {"threshold": 0.3, "critical": 0.35, "for": "2s"},
    "error_rate": {"threshold": 0.3, "critical": 0.35, "for": "2s"},
    "active_connections": {"threshold": 100, "for": "2s"},
    # 0.05/s over the 1m rate window: more than 3 refusals; one flood makes 20.
    "rate_limited": {"threshold": 0.05, "for": "2s"},
}
# The pack's rate window (alerts.rate_window), shortened so that a rate alert resolves within the
# module's budget: a counter that stopped rising falls back only once the fault leaves the window.
RATE_WINDOW = "1m"
DILUTED = 0.7  # a resolved ratio is brought under this share of its warning level
NOTIFICATIONS = {"group_wait": "4s", "group_interval": "2s", "repeat_interval": "1h"}
GROUP_WAIT_S = 4.0
INTERVAL = "1s"  # Prometheus scrape and rule evaluation interval
MESSAGE_DURATION = MESSAGE_DURATION_SECONDS.name  # the histogram whose buckets carry exemplars
SERVER_EXPORT_INTERVAL_S = 5.0  # the OpenTelemetry SDK's default batch schedule delay, which the server keeps

# Alerts of the built-in pack the load generator provokes, and how.
PROVOKED = {
    "connection_drop_rate": "fault disconnect (TCP resets, close 1006) and no-token (4001); resolved by surges of "
                            "normally closed connections",
    "active_connections": "fault surge (bursts of connections held 2 s); resolves when they close",
    "error_rate": "fault malformed (an error reply per message); resolved by floods of valid pings",
    "rate_limited": "fault flood (pings beyond the per-connection rate limit, closed 4004)",
}
# Every other alert of the built-in pack, with the reason the load generator cannot provoke it.
NOT_PROVOKED = {
    "target_down": "needs the server unreachable, not load",
    "metrics_missing": "needs a service that answers scrapes without the catalog's metrics",
    "p99_latency": "handling stays in the millisecond range under the load a 2-core test can apply; a slow broker "
                   "would, but its p99 over the 5m window then needs 100x as many fast messages to resolve",
    "broker_lag": "needs a slow broker backplane, not client load",
    "telemetry_dropped": "needs the OTLP backend down or slow; here it is up and the test asserts nothing is dropped",
    "component_down": "stack self-monitoring: needs a started component to stop answering scrapes (the stand-in on "
                      "Loki's port serves no /metrics, but the 5m `for` outlasts the module; test_e2e_quiet_stack "
                      "checks that a fresh stack fires nothing)",
    "collector_export_failures": "stack self-monitoring: needs a failing backend",
    "collector_refused": "stack self-monitoring: needs the memory limiter to push back",
    "collector_queue_full": "stack self-monitoring: needs a stalled exporter",
    "prometheus_rule_failures": "stack self-monitoring: needs a broken rule",
    "prometheus_notifications_failing": "stack self-monitoring: needs Alertmanager unreachable",
    "prometheus_config_reload": "stack self-monitoring: needs a bad config reload",
    "alertmanager_notification_failures": "stack self-monitoring: needs a failing receiver",
    "alertmanager_config_reload": "stack self-monitoring: needs a bad config reload",
    "host_cpu": "needs the host's CPUs busy for 5m; its promtool tests prove it (prometheus/tests/host.yml)",
    "host_memory": "needs the host's memory exhausted",
    "host_disk_fill": "needs a filesystem filling for 30m",
    "process_fds": "provoked in tests/e2e/test_e2e_host_probe.py (a server under a low ulimit -n)",
    "process_restarted": "needs a scraped process restarted; its promtool tests prove it",
    "probe_failing": "provoked in tests/e2e/test_e2e_host_probe.py (the upgrade refused while /metrics answers)",
    "probe_latency": "needs a slow upgrade path",
}

# Backends that cannot be built here (docs/tools.md): a stand-in collector takes Loki's OTLP port
# when `obsgen up` skips it. Were Loki installed, `obsgen up` would start it and the log test
# would say it needs extending to query it.
STANDIN_FOR = ("loki",)
# Scrape jobs that are not named after the component that serves them.
JOB_COMPONENT = {"collector_exporter": "collector", "node_exporter": "node-exporter", "blackbox_exporter": "blackbox"}

# Dashboard panels not checked against Prometheus or Jaeger, each with the reason.
UNCHECKED_PANELS = {
    ("WebSocket overview", "Log volume by level"): "Loki datasource: Loki cannot be built here (a stand-in collector "
                                                   "receives the logs instead)",
    ("WebSocket overview", "Logs"): "Loki datasource: Loki cannot be built here",
}
# Panels empty on a healthy stack by design, each with the reason; such a panel must state what
# it shows instead of "No data" (Grafana noValue). Of the built-in panels only the Socket.IO one is: counters that
# start at their first event are pre-created at 0 (close code 1000) or fall back to 0 per exporter
# (`or <queue capacity> * 0`, the collector's send-failure counters), and docs/dashboards.md says
# which and why. Listed here, a panel is checked for its noValue text instead.
EMPTY_BY_DESIGN: dict[tuple[str, str], str] = {
    ("WebSocket overview", "Socket.IO disconnections by reason"):
        "Socket.IO services only: the default spec's `websockets` server never has socketio_disconnections_total "
        "(tests/e2e/test_e2e_socketio.py sees it drawn)",
}


# ------------------------------------------------------------------------------------------ the stack


@dataclass
class Stack:
    workdir: Path
    bundle: Path
    spec: dict
    webhook: WebhookReceiver
    prometheus: Prometheus
    alertmanager: Alertmanager
    jaeger: Jaeger
    started: list[str]
    skipped: dict[str, str]
    pids: dict[str, int]
    standin_for: list[str]
    standin_log: Path
    standin_metrics_port: int
    up_seconds: float
    up_output: str
    versions: dict[str, str]
    t0: float = field(default_factory=time.time)

    def port(self, component: str, name: str) -> int:
        return self.spec["components"][component]["ports"][name]

    @property
    def service(self) -> dict:
        return self.spec["services"][0]

    @property
    def server_url(self) -> str:
        return f"ws://127.0.0.1:{self.service['port']}/"

    @property
    def jwt_secret(self) -> Path:
        return self.bundle / "secrets" / "server_jwt_secret"

    def diagnostics(self, *extra_logs: str) -> str:
        """Tails of every process log, the webhook's notifications: printed with a failure."""
        parts = [f"bundle: {self.bundle}", "up:", self.up_output]
        for log in sorted((self.bundle / "logs").glob("*.log")):
            if extra_logs and not any(name in log.name for name in extra_logs):
                continue
            parts += [f"--- {log.name}", tail(log, 15)]
        parts += ["--- standin collector (last lines)", tail(self.standin_log, 8)]
        parts += ["--- webhook notifications", self.webhook.summary()]
        return "\n".join(parts)


def _required_binaries() -> None:
    for name in ("otelcol", "prometheus", "jaeger", "redis-server"):
        require_binary(name)
    if find_binary(["alertmanager", "prometheus-alertmanager"]) is None:
        require_binary("alertmanager")
    # The bundle is a Prometheus 3 config (retention in prometheus.yml): 2.x refuses to start on it.
    prometheus = find_binary(["prometheus"])
    reported = subprocess.run([prometheus, "--version"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"version (\d+)\.", reported)
    if match and int(match.group(1)) < 3:
        message = (f"{prometheus} is Prometheus {reported.split()[2]}; the bundle needs Prometheus 3 "
                   "(scripts/install-tools.sh builds it)")
        if IN_CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)


def obsgen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _start_standin(spec: dict, workdir: Path, bundle: Path) -> tuple[subprocess.Popen, int]:
    """The second otelcol, on Loki's OTLP HTTP port (Loki cannot run here)."""
    loki = spec["components"]["loki"]["ports"]["http"]
    metrics_port = free_ports(1)[0]
    config = workdir / "standin-collector.yaml"
    config.write_text(yaml.safe_dump(standin_config(loki, metrics_port), sort_keys=False), encoding="utf-8")
    log_path = bundle / "logs" / "standin-collector.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([require_binary("otelcol"), f"--config={config}"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    ports = [loki, metrics_port]
    # Generous: a cold start on a loaded 2-core machine takes seconds.
    if not wait_until(lambda: proc.poll() is None and all(port_open(p) for p in ports), 60):
        proc.terminate()
        raise AssertionError(f"the stand-in collector did not listen on {ports}:\n{tail(log_path)}")
    return proc, metrics_port


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    _required_binaries()
    workdir = tmp_path_factory.mktemp("e2e")
    webhook = WebhookReceiver()
    standin: subprocess.Popen | None = None
    bundle: Path | None = None
    try:
        spec = e2e_spec(webhook_port=webhook.port, thresholds=THRESHOLDS, notifications=NOTIFICATIONS,
                        intervals=INTERVAL, collector_batch_timeout="1s", rate_window=RATE_WINDOW)
        bundle = render_bundle(spec, workdir)
        (bundle / "logs").mkdir(exist_ok=True)
        manifest = {entry["name"]: entry for entry in load_manifest(bundle)["processes"]}
        # A stand-in only where `obsgen up` will skip the backend: a real one would need its port.
        standin_for = [name for name in STANDIN_FOR if find_binary(manifest[name]["binary"]) is None]
        standin_metrics_port = 0
        if standin_for:
            standin, standin_metrics_port = _start_standin(spec, workdir, bundle)

        started_at = time.monotonic()
        # --timeout bounds each readiness wait; generous for a cold start on a loaded machine.
        # Loki's stand-in is declared external: `obsgen up` then keeps Loki in the bundle (the
        # collector exports logs to its port) instead of leaving it out as not installed.
        external = [arg for name in standin_for for arg in ("--external", name)]
        result = obsgen("up", "--detach", "--timeout", "90", *external, str(bundle), timeout=600)
        up_seconds = time.monotonic() - started_at
        if result.returncode != 0:
            raise AssertionError(f"obsgen up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                                 + "\n".join(f"--- {p.name}\n{tail(p)}" for p in (bundle / "logs").glob("*.log")))
        state = json.loads((bundle / STATE_FILE).read_text(encoding="utf-8"))
        skipped = dict(re.findall(r"^\s*skipped\s+(\S+)\s+(.*)$", result.stdout, re.M))
        skipped.update(re.findall(r"^\s*(?:external)\s+(\S+)\s+(.*)$", result.stdout, re.M))
        prometheus = Prometheus(spec["components"]["prometheus"]["ports"]["http"])
        yield Stack(
            workdir=workdir, bundle=bundle, spec=spec, webhook=webhook, prometheus=prometheus,
            alertmanager=Alertmanager(spec["components"]["alertmanager"]["ports"]["http"]),
            jaeger=Jaeger(spec["components"]["jaeger"]["ports"]["query"]),
            started=[entry["name"] for entry in state], skipped=skipped,
            pids={entry["name"]: entry["pid"] for entry in state}, standin_for=standin_for,
            standin_log=bundle / "logs" / "standin-collector.log", standin_metrics_port=standin_metrics_port,
            up_seconds=up_seconds, up_output=result.stdout,
            versions={"prometheus": prometheus_version(prometheus.buildinfo().get("version", ""),
                                                       find_binary(manifest["prometheus"]["binary"])),
                      "jaeger": jaeger_version(find_binary(manifest["jaeger"]["binary"]))},
        )
    finally:
        if bundle is not None and (bundle / STATE_FILE).exists():
            result = obsgen("down", str(bundle), timeout=120)
            if result.returncode != 0 or (bundle / STATE_FILE).exists():
                down(bundle, out=io.StringIO())  # the library call, should the CLI have failed
        if standin is not None:
            _stop(standin)
        webhook.close()


# ------------------------------------------------------------------------------------------ the scenario


@dataclass
class PairCheck:
    """What the scenario saw of a warning+critical pair while the critical was firing."""
    both_firing: bool = False            # Prometheus had both levels firing at the check
    warning_suppressed_for: float = 0.0  # seconds Alertmanager had held the warning as inhibited
    warning_notified_before: int = -1    # warning notifications received by then (must be 0)


@dataclass
class Record:
    t0: float
    targets: list[dict] = field(default_factory=list)
    targets_all_up_after: float | None = None
    faults: dict[str, float] = field(default_factory=dict)   # alert key -> when its fault started
    bursts: dict[str, int] = field(default_factory=dict)     # phase -> load generator runs
    pairs: dict[str, PairCheck] = field(default_factory=dict)
    redis_paused: tuple[float, float] | None = None
    load_end: float = 0.0
    loadgen_failures: list[str] = field(default_factory=list)
    watcher: AlertWatcher | None = None


@pytest.fixture(scope="module")
def scenario(stack: Stack):
    """Drive load and faults once; record what Prometheus, Alertmanager and the webhook saw."""
    record = Record(t0=stack.t0)
    watcher = AlertWatcher(stack.prometheus, stack.alertmanager).start()
    logs = stack.bundle / "logs"
    pack = load_pack().by_key()

    def burst(phase: str, *args: str) -> None:
        record.bursts[phase] = record.bursts.get(phase, 0) + 1
        code = run_loadgen(logs, phase, loadgen_argv(stack.server_url, stack.jwt_secret, *args))
        if code != 0:
            record.loadgen_failures.append(f"{phase}: exit {code}")

    def key(alert_key: str, severity: str) -> tuple[str, str]:
        return (pack[alert_key].alert, severity)

    def firing(alert_key: str, severity: str) -> bool:
        return watcher.state(key(alert_key, severity)) == "firing"

    def inactive(alert_key: str, severity: str) -> bool:
        return watcher.state(key(alert_key, severity)) in (None, "inactive")

    def provoke(phase: str, alert_key: str, severity: str, args: tuple[str, ...], tries: int = 3) -> None:
        record.faults.setdefault(alert_key, time.time())
        for _ in range(tries):
            burst(phase, *args)
            if wait_until(lambda: firing(alert_key, severity), 12):
                return

    def check_inhibition(alert_key: str) -> None:
        """Hold while the critical fires: the warning must sit inhibited in Alertmanager, unsent."""
        alertname = pack[alert_key].alert
        check = record.pairs.setdefault(alert_key, PairCheck())
        wait_until(lambda: stack.webhook.alerts(alertname, "critical", "firing"), 45)
        held = wait_until(lambda: (since := watcher.since(key(alert_key, "warning"), "suppressed", "am")) is not None
                          and time.time() - since >= GROUP_WAIT_S + 2, 45)
        since = watcher.since(key(alert_key, "warning"), "suppressed", "am")
        check.warning_suppressed_for = time.time() - since if held and since else 0.0
        check.both_firing = firing(alert_key, "warning") and firing(alert_key, "critical")
        check.warning_notified_before = len(stack.webhook.alerts(alertname, "warning", "firing"))

    def well_below(alert_key: str) -> bool:
        """Both levels inactive, and the value far enough under the warning level that the later
        phases' incidental errors (the Redis stall) cannot push it back over."""
        value = stack.prometheus.value(pack_value_expr(pack[alert_key], RATE_WINDOW))
        return (inactive(alert_key, "warning") and inactive(alert_key, "critical")
                and (value is None or value <= DILUTED * THRESHOLDS[alert_key]["threshold"]))

    def dilute(phase: str, alert_key: str, args: tuple[str, ...], tries: int = 5) -> None:
        for _ in range(tries):
            burst(phase, *args)
            if wait_until(lambda: well_below(alert_key), 6):
                return

    baseline_log = open(logs / "loadgen-baseline.log", "wb")
    baseline = subprocess.Popen(
        loadgen_argv(stack.server_url, stack.jwt_secret, "--subscribers", "10", "--sse-subscribers", "5",
                     "--channels", "5", "--rate", "2",
                     "--duration", "900", "--channel-prefix", "base"),
        stdout=baseline_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    redis_pid = stack.pids.get("redis")
    try:
        # Every target of a started component up (the server's appears once it is scraped).
        def all_started_up():
            targets = stack.prometheus.targets()
            record.targets = targets
            ours = [t for t in targets if JOB_COMPONENT.get(t["labels"]["job"], t["labels"]["job"]) in stack.started]
            # Targets are listed before their first scrape, as "unknown": wait for a verdict on each.
            return ours and all(t["health"] == "up" for t in ours) and all(t["health"] != "unknown" for t in targets)
        if wait_until(all_started_up, 60, interval=0.5):
            record.targets_all_up_after = time.time() - stack.t0

        # 1. Abnormal closes: the drop-rate pair fires; the warning is inhibited by the critical.
        provoke("drop", "connection_drop_rate", "critical",
                ("--subscribers", "20", "--channels", "2", "--rate", "4", "--duration", "6",
                 "--fault", "disconnect=8", "--fault", "no-token=2", "--channel-prefix", "drop"))
        check_inhibition("connection_drop_rate")

        # 2. Surges: too many connections fires, and their normal closes resolve the drop-rate pair.
        record.faults["active_connections"] = time.time()
        dilute("surge", "connection_drop_rate",
               ("--subscribers", "0", "--rate", "0", "--duration", "6", "--fault", "surge=1", "--surge-size", "120"))
        wait_until(lambda: inactive("active_connections", "warning"), 15)

        # 3. Malformed messages: the error-rate pair fires; the warning is inhibited.
        provoke("malformed", "error_rate", "critical",
                ("--subscribers", "0", "--rate", "0", "--duration", "5", "--fault", "malformed=80"))
        check_inhibition("error_rate")

        # 4. Floods: rate limiting fires, and their valid pings resolve the error-rate pair.
        record.faults["rate_limited"] = time.time()
        dilute("flood", "error_rate", ("--subscribers", "0", "--rate", "0", "--duration", "3", "--fault", "flood=1"))

        # Resolved notifications, and rate limiting's firing one, reach the webhook.
        def notified() -> bool:
            wanted = [(pack[k].alert, s, st) for k, s, st in (
                ("connection_drop_rate", "critical", "resolved"), ("active_connections", "warning", "resolved"),
                ("error_rate", "critical", "resolved"), ("rate_limited", "warning", "firing"))]
            return all(stack.webhook.alerts(*w) for w in wanted)
        wait_until(notified, 60)

        # 5. A short broker stall: publishes fail inside their spans, so the server logs warnings
        # that carry the trace id (SIGSTOP/SIGCONT of the Redis `up` started, by its pid).
        if redis_pid is not None:
            paused = time.time()
            os.kill(redis_pid, signal.SIGSTOP)
            try:
                time.sleep(3.0)  # longer than the broker's 2 s command timeout
            finally:
                os.kill(redis_pid, signal.SIGCONT)
            record.redis_paused = (paused, time.time())
            wait_until(lambda: any(r.trace_id for r in parse_debug_logs(
                stack.standin_log.read_text(errors="replace"))), 60, interval=1)

        # 6. Rate limiting resolves once the flood's refusals leave the 1m rate window.
        wait_until(lambda: stack.webhook.alerts(pack["rate_limited"].alert, "warning", "resolved"),
                   parse_duration(RATE_WINDOW) + 30, interval=1)
    finally:
        if redis_pid is not None:
            try:
                os.kill(redis_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        _stop(baseline)
        baseline_log.close()
        record.load_end = time.time()
        watcher.stop()
    # Let every span and log record still queued in the server (its batch processors export
    # every 5 s), in the collector and in Jaeger's batch processor arrive: counts equal end to end,
    # and unchanged for longer than one server export interval.
    collector_metrics, jaeger_metrics = stack.port("collector", "metrics"), stack.port("jaeger", "metrics")
    last: list = [None, time.monotonic()]

    def settled() -> bool:
        main, jaeger = scrape(collector_metrics), scrape(jaeger_metrics)
        standin = scrape(stack.standin_metrics_port)
        counts = (sum_samples(main, "otelcol_receiver_accepted_spans"),
                  sum_samples(main, "otelcol_exporter_sent_spans", exporter="otlp_grpc/jaeger"),
                  sum_samples(jaeger, "otelcol_exporter_sent_spans", exporter=JAEGER_STORE_EXPORTER),
                  sum_samples(main, "otelcol_receiver_accepted_log_records"),
                  sum_samples(main, "otelcol_exporter_sent_log_records", exporter="otlp_http/loki"),
                  sum_samples(standin, "otelcol_receiver_accepted_log_records"))
        if counts != last[0]:
            last[:] = [counts, time.monotonic()]
        return counts[0] == counts[1] == counts[2] > 0 and counts[3] == counts[4] == counts[5] \
            and time.monotonic() - last[1] >= SERVER_EXPORT_INTERVAL_S + 1.5
    wait_until(settled, 90, interval=0.5)
    record.watcher = watcher
    yield record
    summary = timeline(stack, record)
    (logs / "e2e-timeline.txt").write_text(summary + "\n", encoding="utf-8")
    print("\n" + summary)


def timeline(stack: Stack, record: Record) -> str:
    """The figures docs/e2e.md quotes: time to ready, and each alert's way to the webhook."""
    pack = load_pack().by_key()
    lines = [f"versions: Prometheus {stack.versions['prometheus'] or '(unknown)'}, "
             f"Jaeger {stack.versions['jaeger'] or '(unknown)'}",
             f"up: {len(stack.started)} processes ready in {stack.up_seconds:.1f}s "
             f"(started {', '.join(stack.started)}; not started {', '.join(sorted(stack.skipped))})",
             f"every started target up {record.targets_all_up_after or float('nan'):.1f}s after up returned",
             f"load generator bursts: {record.bursts}"]
    for alert_key, started in sorted(record.faults.items(), key=lambda kv: kv[1]):
        alert = pack[alert_key]
        key = (alert.alert, "critical" if alert.paired else alert.severity)
        watcher = record.watcher
        fired = watcher.first(key, "firing", after=started - 1) if watcher else None
        marks = {
            "pending": watcher.first(key, "pending", after=started - 1) if watcher else None,
            "firing": fired,
            "notified": min((n.received for n, _ in stack.webhook.alerts(*key, status="firing")), default=None),
            "resolved": watcher.first(key, "inactive", after=fired) if watcher and fired else None,
            "resolved-notified": min((n.received for n, _ in stack.webhook.alerts(*key, status="resolved")),
                                     default=None),
        }
        steps = ", ".join(f"{name} +{at - started:.1f}s" for name, at in marks.items() if at is not None)
        value = pack_value_expr(alert, RATE_WINDOW)
        try:  # how far the fault pushed the compared value past its levels: the scenario's margin
            peak = stack.prometheus.value(f"max(max_over_time(({value})[{int(time.time() - stack.t0) + 1}s:1s]))")
        except (OSError, ValueError):
            peak = None
        levels = "/".join(f"{v:g}" for v in (THRESHOLDS[alert_key].get("threshold"),
                                             THRESHOLDS[alert_key].get("critical")) if v is not None)
        lines.append(f"{key[0]}/{key[1]}: fault at +{started - stack.t0:.1f}s; {steps}; "
                     f"peak value {peak if peak is None else f'{peak:.3g}'} (levels {levels})")
    lines.append(f"load ran for {record.load_end - stack.t0:.1f}s")
    try:  # what the trace tests had to work with
        stored = sum_samples(scrape(stack.port("jaeger", "metrics")), "otelcol_exporter_sent_spans",
                             exporter=JAEGER_STORE_EXPORTER)
        exemplars = [e["labels"].get("trace_id") for series in stack.prometheus.exemplars(
            f"{MESSAGE_DURATION}_bucket", stack.t0, time.time()) for e in series["exemplars"]]
        lines.append(f"Jaeger stored {stored:.0f} spans (services {stack.jaeger.services()}); Prometheus holds "
                     f"{len(exemplars)} latency exemplars ({len(set(exemplars))} trace ids)")
    except (OSError, ValueError, KeyError) as exc:
        lines.append(f"trace figures unavailable: {exc!r}")
    if record.watcher:
        lines.append("alert states:\n" + record.watcher.summary(stack.t0))
    lines.append("notifications:\n" + stack.webhook.summary())
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the tests


def test_stack_starts_and_every_started_component_is_scraped(stack: Stack, scenario: Record):
    """Every Prometheus target of a started component is up; a component `obsgen up` left out of the
    bundle (not installed) has no target at all; the only target down is the stand-in's, declared
    external, which serves Loki's OTLP port but no /metrics."""
    assert {"collector", "jaeger", "alertmanager", "prometheus", "redis", stack.service["name"]} \
        <= set(stack.started), stack.diagnostics()
    manifest = {entry["name"]: entry for entry in load_manifest(stack.bundle)["processes"]}
    left_out = {name for name, reason in stack.skipped.items() if "left out of the stack" in reason}
    assert set(stack.started) | (set(stack.skipped) - left_out) == set(manifest), \
        "a component neither started nor skipped"
    assert not left_out & set(manifest), f"left out of the stack yet in the processes: {left_out & set(manifest)}"
    for name in stack.started:  # `obsgen up` says where each listens
        line = next((line for line in stack.up_output.splitlines() if re.match(rf"\s*ready\s+{name}\s", line)), "")
        assert all(address in line for address in manifest[name]["listens"]), (name, stack.up_output)
    by_job: dict[str, list[dict]] = {}
    for target in scenario.targets:
        by_job.setdefault(target["labels"]["job"], []).append(target)
    components = {job: JOB_COMPONENT.get(job, job) for job in by_job}
    unknown = {job for job, c in components.items() if c not in stack.started and c not in stack.skipped}
    assert not unknown, f"scrape jobs of no known component: {unknown}"
    # The collector's own telemetry and its prometheus exporter, Jaeger's own telemetry,
    # Alertmanager, Prometheus, the server.
    assert {"collector", "collector_exporter", "jaeger", "alertmanager", "prometheus",
            stack.service["name"]} <= set(by_job)
    not_up = {job: [(t["scrapeUrl"], t["lastError"]) for t in ts if t["health"] != "up"]
              for job, ts in by_job.items() if components[job] in stack.started}
    assert not any(not_up.values()), f"targets of started components not up: {not_up}\n{stack.diagnostics()}"
    assert not {c for c in components.values() if c in left_out}, f"left-out components scraped: {sorted(by_job)}"
    down_jobs = {job for job, ts in by_job.items() if all(t["health"] == "down" for t in ts)}
    assert down_jobs == set(stack.standin_for), (
        f"targets down: {sorted(down_jobs)}; components not started: {stack.skipped}")
    assert scenario.targets_all_up_after is not None


def test_pack_alerts_are_all_classified():
    """Each built-in alert is either provoked here or listed with the reason it cannot be."""
    keys = set(load_pack().by_key())
    assert set(PROVOKED) | set(NOT_PROVOKED) == keys
    assert not set(PROVOKED) & set(NOT_PROVOKED)
    assert set(THRESHOLDS) == set(PROVOKED)


def _alert_words_ok(stack: Stack, alert: dict, alert_key: str) -> list[str]:
    """Problems with a notified alert's summary, description and runbook link."""
    pack_alert = load_pack().by_key()[alert_key]
    annotations = alert.get("annotations", {})
    problems = []
    if annotations.get("summary") != pack_alert.summary:
        problems.append(f"summary {annotations.get('summary')!r} is not the pack's {pack_alert.summary!r}")
    description = annotations.get("description", "")
    if not description or "{{" in description or "[[" in description or stack.service["name"] not in description:
        problems.append(f"description not filled in for {stack.service['name']}: {description!r}")
    runbook = annotations.get("runbook_url", "")
    if not runbook.endswith(f"/{pack_alert.alert}.md"):
        problems.append(f"runbook_url {runbook!r} does not name {pack_alert.alert}.md")
    else:
        status, text = http_text(runbook)
        if status != 200 or pack_alert.alert not in text:
            problems.append(f"runbook_url {runbook} answered {status}")
    return problems


@pytest.mark.parametrize("alert_key", sorted(PROVOKED))
def test_provoked_alert_goes_pending_firing_notified_and_resolved(stack: Stack, scenario: Record, alert_key: str):
    """pending -> firing in Prometheus, then the webhook gets it through the real Alertmanager with
    its words and a runbook that resolves, then (after the fault) a resolved notification."""
    pack_alert = load_pack().by_key()[alert_key]
    severity = "critical" if pack_alert.paired else pack_alert.severity
    key = (pack_alert.alert, severity)
    watcher: AlertWatcher = scenario.watcher
    started = scenario.faults.get(alert_key)
    context = f"{watcher.summary(stack.t0)}\n{stack.diagnostics('loadgen', 'ws-server', 'alertmanager')}"
    assert started is not None, f"the scenario never reached the fault for {alert_key}\n{context}"
    pending = watcher.first(key, "pending", after=started - 1)
    fired = watcher.first(key, "firing", after=started - 1)
    assert pending is not None and fired is not None and pending <= fired, \
        f"{key}: pending at {pending}, firing at {fired}\n{context}"

    receiver = "oncall" if severity == "critical" else "team"  # the default spec's routes
    firing = [(n, a) for n, a in stack.webhook.alerts(*key, status="firing") if n.received >= fired]
    assert firing, f"no firing notification of {key} reached the webhook\n{context}"
    notification, alert = firing[0]
    assert notification.receiver == receiver, f"{key} went to {notification.receiver}, not {receiver}"
    assert alert["labels"].get("service") == stack.service["name"] or pack_alert.group != "websocket"
    problems = _alert_words_ok(stack, alert, alert_key)
    assert not problems, problems

    resolved_at = watcher.first(key, "inactive", after=fired)
    assert resolved_at is not None, f"{key} never resolved in Prometheus after the fault\n{context}"
    resolved = [(n, a) for n, a in stack.webhook.alerts(*key, status="resolved") if n.received >= fired]
    assert resolved, f"no resolved notification of {key} reached the webhook\n{context}"
    assert resolved[0][0].receiver == receiver


@pytest.mark.parametrize("alert_key", sorted(k for k in PROVOKED if load_pack().by_key()[k].paired))
def test_inhibited_warning_is_not_sent_while_its_critical_fires(stack: Stack, scenario: Record, alert_key: str):
    alertname = load_pack().by_key()[alert_key].alert
    check = scenario.pairs.get(alert_key)
    context = f"{scenario.watcher.summary(stack.t0)}\n{stack.webhook.summary()}"
    assert check is not None, f"the scenario never provoked {alert_key}\n{context}"
    assert check.both_firing, f"{alertname}: warning and critical were not both firing in Prometheus\n{context}"
    assert check.warning_suppressed_for >= GROUP_WAIT_S + 2, \
        f"{alertname}: Alertmanager did not hold the warning as inhibited past its group_wait\n{context}"
    assert scenario.watcher.am_inhibited_by.get((alertname, "warning")), "no inhibitedBy on the warning"
    assert check.warning_notified_before == 0, f"{alertname}: warning sent while the critical fired\n{context}"
    # After the critical resolves the warning may be sent (it is no longer inhibited), never before.
    critical_end = min((a["endsAt"] for _, a in stack.webhook.alerts(alertname, "critical", "resolved")), default=None)
    assert critical_end is not None, context
    ends = _timestamp(critical_end)
    early = [n.received for n, _ in stack.webhook.alerts(alertname, "warning", "firing") if n.received < ends]
    assert not early, f"{alertname}: warning notified at {early}, before the critical ended at {ends}\n{context}"


def _timestamp(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_every_dashboard_panel_draws_finite_numbers(stack: Stack, scenario: Record):
    """Each PromQL target of each rendered panel, run on the real Prometheus over the scenario's
    time range with Grafana's variables substituted as Grafana would, returns series, and every
    point of every series is a finite number (no NaN line for an idle message type or a broker that
    does not run); a panel empty by design says so (noValue). Each Jaeger target returns traces
    from the real Jaeger, searched as Grafana's Jaeger datasource does."""
    queries, variables = dashboard_queries(stack.bundle)
    assert queries, "no dashboards rendered"
    titles = {q.dashboard for q in queries}
    assert {"WebSocket overview", "Observability stack health"} <= titles, titles
    unchecked = {(q.dashboard, q.panel) for q in queries if q.datasource_type not in ("prometheus", "jaeger")}
    assert unchecked == set(UNCHECKED_PANELS), "update UNCHECKED_PANELS: it must list exactly the panels "\
        f"whose datasource does not run here: {sorted(unchecked)}"
    start, end = stack.t0, time.time()
    scrape = int(parse_duration(INTERVAL))               # the datasource's timeInterval
    interval = max(scrape, int((end - start) / 1000))    # Grafana's $__interval for ~1000 points
    rate_interval = max(interval + scrape, 4 * scrape)   # Grafana's $__rate_interval
    empty, not_finite, panels_with_data, drawn = [], [], set(), []
    for q in queries:
        where = f"{q.dashboard} / {q.panel} [{q.ref}]"
        if q.datasource_type == "jaeger":
            service = grafana_to_promql(q.target["service"], variables[q.dashboard], interval, rate_interval,
                                        int(end - start))
            traces = stack.jaeger.search(service, start, end, limit=q.target.get("limit") or 20)
            if traces and all(any(s.service == service for s in trace_spans(t)) for t in traces):
                panels_with_data.add((q.dashboard, q.panel))
            else:
                empty.append(f"{where}: Jaeger search service={service}: {len(traces)} traces")
            continue
        if q.datasource_type != "prometheus":
            continue
        expr = grafana_to_promql(q.expr, variables[q.dashboard], interval, rate_interval, int(end - start))
        result = stack.prometheus.query_range(expr, start, end, interval)
        drawn.append(f"{where}: {series_summary(result)}")
        not_finite += [f"{where}: {problem}" for problem in non_finite_series(result)]
        if has_points(result):
            panels_with_data.add((q.dashboard, q.panel))
        elif (q.dashboard, q.panel) not in EMPTY_BY_DESIGN:
            empty.append(f"{where}: {expr}")
    (stack.bundle / "logs" / "e2e-panels.txt").write_text("\n".join(drawn) + "\n", encoding="utf-8")
    print("\n" + "\n".join(drawn))
    assert not not_finite, "series Grafana would draw as NaN or infinite:\n  " + "\n  ".join(not_finite)
    checked = {(q.dashboard, q.panel) for q in queries if q.datasource_type in ("prometheus", "jaeger")}
    no_data = checked - panels_with_data - set(EMPTY_BY_DESIGN)
    assert not no_data, f"panels that would show 'No data': {sorted(no_data)}"
    assert not empty, "queries that return nothing:\n  " + "\n  ".join(empty)
    silent = [panel for panel in EMPTY_BY_DESIGN
              if not any(q.no_value for q in queries if (q.dashboard, q.panel) == panel)]
    assert not silent, f"panels empty by design that show 'No data' instead of a stated none: {silent}"
    assert any(q.datasource_type == "jaeger" for q in queries), "no Jaeger panel: the trace search went unchecked"


def test_every_runbook_url_of_the_running_stack_answers(stack: Stack, scenario: Record):
    """Every alerting rule Prometheus loaded links a runbook that the runbook server `obsgen up`
    started serves: 200 and the page of that alert."""
    alerts = [rule for rule in stack.prometheus.rules() if rule.get("type") == "alerting"]
    assert alerts, "Prometheus loaded no alerting rule"
    base = f"http://127.0.0.1:{stack.port('runbooks', 'http')}/"
    problems = []
    for rule in alerts:
        url = rule.get("annotations", {}).get("runbook_url", "")
        status, text = http_text(url) if url.startswith(base) else (None, "")
        if status != 200 or rule["name"] not in text:
            problems.append(f"{rule['name']}: {url or '(no runbook_url)'} -> {status}")
    assert not problems, f"runbook links that do not open ({len(problems)} of {len(alerts)}):\n  " + \
        "\n  ".join(problems)


def test_prometheus_3_runs_the_rendered_command_line_and_retention(stack: Stack, scenario: Record):
    """The Prometheus `obsgen up` started is 3.x; every flag of the rendered command line is in
    effect (as its /api/v1/status/flags reports), exemplar storage included; the retention set in
    prometheus.yml (no longer a flag in 3.x) is the one in force."""
    version = stack.versions["prometheus"]
    assert version.startswith("3."), f"Prometheus {version or '(version unknown)'} ran, not 3.x"
    # And by behaviour: selectors with a quoted (UTF-8) metric name parse in 3.x only.
    assert stack.prometheus.query('{"up"}'), "the UTF-8 quoted selector {\"up\"} (Prometheus 3) returned nothing"
    flags = stack.prometheus.flags()
    entry = next(e for e in load_manifest(stack.bundle)["processes"] if e["name"] == "prometheus")
    wrong = {}
    for arg in entry["args"]:
        name, _, value = arg[2:].partition("=")
        expected = value if "=" in arg else "true"
        if flags.get(name) != expected:
            wrong[name] = (flags.get(name), expected)
    assert not wrong, f"flags not in effect (reported, rendered): {wrong}"
    assert "exemplar-storage" in flags.get("enable-feature", "").split(",")
    config = yaml.safe_load((stack.bundle / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    retention = config["storage"]["tsdb"]["retention"]["time"]
    assert stack.prometheus.runtimeinfo().get("storageRetention") == retention


def _fetch_trace(stack: Stack, trace_id: str) -> list:
    trace = stack.jaeger.trace(trace_id)
    return trace_spans(trace) if trace else []


def test_spans_reach_jaeger_and_a_publish_trace_fetched_by_id_holds_its_deliveries(stack: Stack,
                                                                                   scenario: Record):
    """Spans go server -> collector -> Jaeger v2 (the rendered config): every span the collector
    exported is accepted and stored; a publish's trace, fetched by its id, holds the ws.publish
    span and its ws.deliver children; every delivery Jaeger holds continues its publish's trace."""
    main, jaeger = scrape(stack.port("collector", "metrics")), scrape(stack.port("jaeger", "metrics"))
    sent = sum_samples(main, "otelcol_exporter_sent_spans", exporter="otlp_grpc/jaeger")
    accepted = sum_samples(jaeger, "otelcol_receiver_accepted_spans", receiver="otlp")
    stored = sum_samples(jaeger, "otelcol_exporter_sent_spans", exporter=JAEGER_STORE_EXPORTER)
    assert sent > 0 and accepted == sent == stored, \
        f"collector sent {sent} spans, Jaeger accepted {accepted} and stored {stored}\n{stack.diagnostics('jaeger')}"
    service = stack.service["name"]
    # One publish's trace id, as a user gets it: from a latency exemplar in Prometheus.
    publish_ids = {e["labels"]["trace_id"] for series in stack.prometheus.exemplars(
        f'{MESSAGE_DURATION}_bucket{{type="publish"}}', stack.t0, time.time()) for e in series["exemplars"]}
    assert publish_ids, "no publish exemplar in Prometheus to take a trace id from"
    with_delivery = None
    for trace_id in sorted(publish_ids):
        spans = _fetch_trace(stack, trace_id)
        publishes = {s.span_id for s in spans if s.name == "ws.publish" and s.service == service}
        if any(s.name == "ws.deliver" and set(s.parents) & publishes for s in spans):
            with_delivery = trace_id
            break
    assert with_delivery, f"none of {len(publish_ids)} publish traces fetched by id holds a ws.deliver child"
    # Every delivery Jaeger stored, searched by operation: a child of a ws.publish in its trace.
    traces = stack.jaeger.search(service, stack.t0, time.time(), limit=5000, operation="ws.deliver")
    deliveries = orphans = 0
    for trace in traces:
        spans = trace_spans(trace)
        publishes = {s.span_id for s in spans if s.name == "ws.publish"}
        for span in (s for s in spans if s.name == "ws.deliver"):
            deliveries += 1
            orphans += not (set(span.parents) & publishes)
    assert deliveries > 0 and orphans == 0, f"{orphans} of {deliveries} ws.deliver spans have no publish parent"


def test_sse_streams_reach_prometheus_by_transport_and_jaeger_in_the_delivery_spans(stack: Stack,
                                                                                    scenario: Record):
    """The baseline load holds SSE streams (GET /sse) next to its WebSocket subscribers: their
    connections and deliveries reach Prometheus with transport="sse", and the ws.deliver spans in
    Jaeger count their recipients."""
    window = f"{int(time.time() - stack.t0) + 60}s"
    streams = stack.prometheus.value(
        f'max(max_over_time({ACTIVE_CONNECTIONS.name}{{transport="sse"}}[{window}]))')
    assert streams is not None and streams >= 5, f"SSE streams open at most: {streams}"
    deliveries = stack.prometheus.value(f'sum(max_over_time({FANOUT_MESSAGES_TOTAL.name}{{transport="sse"}}[{window}]))')
    assert deliveries is not None and deliveries > 0, f"SSE fan-out deliveries: {deliveries}"
    traces = stack.jaeger.search(stack.service["name"], stack.t0, time.time(), limit=5000, operation="ws.deliver")
    sse_recipients = [int(tag["value"]) for trace in traces for span in trace.get("spans", [])
                      if span["operationName"] == "ws.deliver"
                      for tag in span.get("tags", []) if tag["key"] == "ws.sse_recipients"]
    assert sse_recipients and max(sse_recipients) >= 1, f"{len(traces)} delivery traces, SSE recipients {sse_recipients[:20]}"


def test_grafana_jaeger_datasource_search_finds_the_service(stack: Stack, scenario: Record):
    """What Grafana's Jaeger datasource calls: the services list (also its connection test) names
    the service, and a search of its traces over the run returns them with their spans."""
    service = stack.service["name"]
    services = stack.jaeger.services()
    assert service in services, f"Jaeger's /api/services: {services}"
    traces = stack.jaeger.search(service, stack.t0, time.time(), limit=20)
    assert traces, f"no trace of {service} found by /api/traces"
    names = {s.name for t in traces for s in trace_spans(t) if s.service == service}
    assert names and all(name.startswith("ws.") for name in names), names


def test_exemplars_in_prometheus_carry_trace_ids_that_jaeger_resolves(stack: Stack, scenario: Record):
    """Prometheus 3 stores the server's exemplars (scraped as OpenMetrics, exemplar storage on):
    each carries a trace_id that Jaeger resolves by id to a trace holding the span of that
    message type, which is the link Grafana's exemplarTraceIdDestinations follows."""
    series = stack.prometheus.exemplars(f"{MESSAGE_DURATION}_bucket", stack.t0, time.time())
    exemplars = [(s["seriesLabels"].get("type", ""), e["labels"].get("trace_id", ""))
                 for s in series for e in s["exemplars"]]
    assert exemplars, "Prometheus holds no exemplar of the server's latency histogram"
    malformed = [e for e in exemplars if not re.fullmatch(r"[0-9a-f]{32}", e[1])]
    assert not malformed, f"exemplars without a W3C trace id: {malformed[:5]}"
    unresolved = []
    for message_type, trace_id in sorted(set(exemplars))[:300]:  # all of them in practice: a few dozen
        spans = _fetch_trace(stack, trace_id)
        if not any(s.name == f"ws.{message_type}" and s.trace_id == int(trace_id, 16) for s in spans):
            unresolved.append((message_type, trace_id, sorted({s.name for s in spans})))
    assert not unresolved, f"{len(unresolved)} of {len(set(exemplars))} exemplar trace ids not resolved by " \
        f"Jaeger to a ws.<type> span: {unresolved[:5]}"


def _require_standin(stack: Stack, backend: str) -> None:
    if backend not in stack.standin_for:
        pytest.fail(f"a real {backend} ran (it is installed): extend this test to query its API; it reads only "
                    "the stand-in collector's output")


def test_log_records_reach_the_logs_backend_standin_with_trace_ids_jaeger_resolves(stack: Stack,
                                                                                  scenario: Record):
    """Logs go server -> collector -> the stand-in on Loki's /otlp/v1/logs; a warning logged while
    handling a publish carries that publish's trace id, and Jaeger resolves it to that trace."""
    _require_standin(stack, "loki")
    main, standin = scrape(stack.port("collector", "metrics")), scrape(stack.standin_metrics_port)
    sent = sum_samples(main, "otelcol_exporter_sent_log_records", exporter="otlp_http/loki")
    accepted = sum_samples(standin, "otelcol_receiver_accepted_log_records", receiver="otlp/loki")
    assert sent > 0 and accepted == sent, f"collector sent {sent} log records, the stand-in accepted {accepted}"
    logs = parse_debug_logs(stack.standin_log.read_text(encoding="utf-8", errors="replace"))
    server_logs = [r for r in logs if r.service == stack.service["name"]]
    assert server_logs, f"no log record from {stack.service['name']}: {logs[:3]}"
    assert scenario.redis_paused is not None, "Redis was not paused: no log record is written inside a span"
    traced = [r for r in server_logs if r.trace_id]
    assert traced, f"no log record carries a trace_id: {[r.body for r in server_logs][:5]}"

    def resolves(record) -> bool:
        spans = _fetch_trace(stack, record.trace_id)
        return any(s.name == "ws.publish" for s in spans) and any(s.span_id == int(record.span_id or "0", 16)
                                                                  for s in spans)
    linked = [r for r in traced[:50] if resolves(r)]
    assert linked, f"no traced log record resolves in Jaeger to a publish's trace holding its span: {traced[:3]}"


def test_collector_and_jaeger_report_nothing_refused_or_failed(stack: Stack, scenario: Record):
    """The collector's and Jaeger's own metrics, at the load applied: data accepted and exported
    on every pipeline, nothing refused, failed or dropped; the server dropped no telemetry either."""
    main = scrape(stack.port("collector", "metrics"))
    assert sum_samples(main, "otelcol_receiver_accepted_spans") > 0
    assert sum_samples(main, "otelcol_receiver_accepted_log_records") > 0
    assert sum_samples(main, "otelcol_exporter_sent_spans", exporter="otlp_grpc/jaeger") > 0
    assert sum_samples(main, "otelcol_exporter_sent_log_records", exporter="otlp_http/loki") > 0
    for process, samples in (("collector", main), ("jaeger", scrape(stack.port("jaeger", "metrics")))):
        bad = {name: value for name, value in samples.items()
               if any(word in name.partition("{")[0] for word in ("refused", "failed", "dropped")) and value != 0}
        assert not bad, f"{process} reports refused/failed/dropped data: {bad}"
        refusal_counters = [n for n in samples if "refused" in n.partition("{")[0]]
        assert refusal_counters, f"{process} exposes no refusal counters: the check above would be vacuous"
    server = scrape(stack.service["port"])
    dropped = sum_samples(server, "websocket_telemetry_dropped")
    assert dropped == 0, f"the server dropped {dropped} telemetry records"
    assert not scenario.loadgen_failures, scenario.loadgen_failures


def test_prometheus_evaluates_every_rendered_rule_without_error(stack: Stack, scenario: Record):
    """Every recording and alerting rule of the bundle evaluates on the real Prometheus, under load."""
    groups = stack.prometheus.rule_groups()
    assert any(group["rules"] for group in groups), "Prometheus loaded no rules"
    # A group evaluated less often than this test runs (the SLOs' hourly sums, interval 1h) may not
    # have had its first evaluation yet: "unknown" with no error is its only allowed other state.
    # promtool's unit tests (prometheus/tests/slo-*-detection*.yml) evaluate those rules.
    broken, waiting = {}, []
    for group in groups:
        slow = group["interval"] >= 3600
        for rule in group["rules"]:
            if rule.get("health") == "ok":
                continue
            if slow and rule.get("health") == "unknown" and not rule.get("lastError"):
                waiting.append(rule["name"])
            else:
                broken[rule["name"]] = rule.get("lastError")
    assert not broken, f"rules failing evaluation: {broken}"
    assert all(name.endswith("_sum1h") for name in waiting), f"only the hourly sums may wait: {waiting}"
    failures = stack.prometheus.value("sum(prometheus_rule_evaluation_failures_total)")
    assert failures == 0, f"{failures} rule evaluations failed"
