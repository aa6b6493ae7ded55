"""Helpers for the end-to-end test: the test spec, the webhook receiver, the stand-in collector
for Loki's OTLP endpoint, small Prometheus/Alertmanager/Jaeger clients, an alert watcher, the
load generator runner, dashboard queries and diagnostics.

Everything here talks to real processes over HTTP on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import json
import math
import mmap
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import yaml
from prometheus_client.parser import text_string_to_metric_families

from stack.load import default_spec_text
from stack.ports import PORTS

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """The first truthy value of ``predicate()`` within ``timeout`` seconds, else None.

    Exceptions from the predicate count as "not yet" (a process may still be starting).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    sockets, ports = [], []
    try:
        # Held open together, so the kernel cannot hand out the same port twice.
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------- the spec


def e2e_spec(*, webhook_port: int, thresholds: dict[str, dict], notifications: dict[str, str],
             intervals: str, collector_batch_timeout: str, rate_window: str) -> dict:
    """The embedded default spec, made runnable on 127.0.0.1 by a test.

    Only spec keys change: the local target, every named port of every component and the
    service's port on free ports, short scrape/evaluation intervals, the given alert
    thresholds and notification timings, webhooks pointed at the test's receiver. Runbook links
    stay obsgen's own: the runbook server `obsgen up` starts. No code path of obsgen knows it runs
    under a test.
    """
    spec = yaml.safe_load(default_spec_text())
    spec["target"] = "local"
    names = [(component, name) for component, named in sorted(PORTS.items()) for name in sorted(named)]
    ports = free_ports(len(names) + 1)
    components = spec.setdefault("components", {})
    for (component, name), port in zip(names, ports):
        components.setdefault(component, {}).setdefault("ports", {})[name] = port
    service = spec["services"][0]
    service["port"] = ports[-1]
    service["metrics"]["port"] = ports[-1]  # /metrics is served on the WebSocket port itself
    components.setdefault("prometheus", {}).update(scrape_interval=intervals, evaluation_interval=intervals)
    components.setdefault("collector", {})["batch_timeout"] = collector_batch_timeout
    spec["alerts"]["thresholds"] = thresholds
    spec["alerts"]["rate_window"] = rate_window
    for receiver in spec["notifications"]["receivers"]:
        assert receiver["type"] == "webhook", receiver
        receiver["url"] = f"http://127.0.0.1:{webhook_port}/alerts/{receiver['name']}"
    spec["notifications"].update(notifications)
    return spec


def render_bundle(spec: dict, workdir: Path) -> Path:
    """Render ``spec`` through the real CLI, as a user would, into workdir/bundle."""
    spec_path = workdir / "obsgen.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    bundle = workdir / "bundle"
    result = subprocess.run(
        [sys.executable, "-m", "stack", "render", str(spec_path), "--target", "local", "--out", str(bundle)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"obsgen render failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return bundle


# ---------------------------------------------------------------------------------- webhook receiver


@dataclass
class Notification:
    received: float        # time.time() when it arrived
    receiver: str          # the receiver name from the URL path (/alerts/<name>)
    payload: dict


class WebhookReceiver:
    """Alertmanager's webhook integration point: records every POST to /alerts/<receiver>."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                if not path.startswith("/alerts/"):
                    self.send_error(404)
                    return
                try:
                    payload = json.loads(body)
                except ValueError:
                    self.send_error(400)
                    return
                with receiver._lock:
                    receiver.notifications.append(Notification(time.time(), path[len("/alerts/"):], payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self, alertname: str | None = None, severity: str | None = None,
               status: str | None = None) -> list[tuple[Notification, dict]]:
        """(notification, alert) for every alert in every notification received, filtered."""
        with self._lock:
            notifications = list(self.notifications)
        found = []
        for notification in notifications:
            for alert in notification.payload.get("alerts", []):
                labels = alert.get("labels", {})
                if alertname is not None and labels.get("alertname") != alertname:
                    continue
                if severity is not None and labels.get("severity") != severity:
                    continue
                if status is not None and alert.get("status") != status:
                    continue
                found.append((notification, alert))
        return found

    def summary(self) -> str:
        lines = []
        with self._lock:
            notifications = list(self.notifications)
        for n in notifications:
            alerts = ", ".join(
                f"{a['labels'].get('alertname')}/{a['labels'].get('severity')}={a.get('status')}"
                for a in n.payload.get("alerts", [])
            )
            lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(n.received))} /alerts/{n.receiver}: {alerts}")
        return "\n".join(lines) or "  (none)"


# ---------------------------------------------------------------------------------- HTTP clients


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def http_text(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def _api(self, path: str, **params: Any) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body = http_json(url, timeout=10)
        if body.get("status") != "success":
            raise ValueError(f"{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self._api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self._api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")["result"]

    def value(self, expr: str) -> float | None:
        """The single value of a scalar-like query, or None when it returns nothing."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict]:
        return self._api("alerts")["alerts"]

    def rule_groups(self) -> list[dict]:
        return self._api("rules")["groups"]

    def rules(self) -> list[dict]:
        return [rule for group in self.rule_groups() for rule in group["rules"]]

    def targets(self) -> list[dict]:
        return self._api("targets", state="active")["activeTargets"]

    def buildinfo(self) -> dict:
        return self._api("status/buildinfo")

    def flags(self) -> dict[str, str]:
        return self._api("status/flags")

    def runtimeinfo(self) -> dict:
        return self._api("status/runtimeinfo")

    def exemplars(self, expr: str, start: float, end: float) -> list[dict]:
        """``/api/v1/query_exemplars``: [{seriesLabels, exemplars: [{labels, value, timestamp}]}]."""
        return self._api("query_exemplars", query=expr, start=f"{start:.3f}", end=f"{end:.3f}")


class Alertmanager:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def alerts(self) -> list[dict]:
        return http_json(f"{self.base}/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true")


class Jaeger:
    """Jaeger's HTTP query API, the one its UI and Grafana's Jaeger datasource call (``/api/...``)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def _get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return http_json(url, timeout=30)

    def services(self) -> list[str]:
        return self._get("/api/services").get("data") or []

    def trace(self, trace_id: str) -> dict | None:
        """The trace with this id (its spans and processes), or None when Jaeger does not have it."""
        try:
            data = self._get(f"/api/traces/{trace_id}").get("data") or []
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return data[0] if data else None

    def search(self, service: str, start: float, end: float, limit: int, operation: str | None = None) -> list[dict]:
        """Traces of ``service`` between ``start`` and ``end`` (Unix seconds), as Grafana's Jaeger
        datasource searches: ``/api/traces`` with start/end in microseconds and ``lookback=custom``."""
        params: dict[str, Any] = {"service": service, "limit": limit}
        if operation:
            params["operation"] = operation
        params.update(start=int(start * 1e6), end=int(end * 1e6), lookback="custom")
        return self._get("/api/traces", **params).get("data") or []


@dataclass
class TraceSpan:
    trace_id: int          # as an integer: Jaeger's JSON drops leading zeros of the hex id
    span_id: int
    parents: list[int]     # span ids of CHILD_OF references within the same trace
    name: str
    service: str


def trace_spans(trace: dict) -> list[TraceSpan]:
    """The spans of one trace from Jaeger's JSON, with their service names resolved."""
    processes = trace.get("processes", {})
    spans = []
    for span in trace.get("spans", []):
        trace_id = int(span["traceID"], 16)
        parents = [int(ref["spanID"], 16) for ref in span.get("references", [])
                   if ref.get("refType") == "CHILD_OF" and int(ref["traceID"], 16) == trace_id]
        service = processes.get(span.get("processID", ""), {}).get("serviceName", "")
        spans.append(TraceSpan(trace_id, int(span["spanID"], 16), parents, span["operationName"], service))
    return spans


def scrape(port: int, path: str = "/metrics") -> dict[str, float]:
    """One exposition, as {sample name + sorted labels: value}; counters under both their names."""
    status, text = http_text(f"http://127.0.0.1:{port}{path}")
    if status != 200:
        raise OSError(f"GET :{port}{path} answered {status}")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def sum_samples(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` (or ``name_total``) carrying ``labels``."""
    total = 0.0
    for key, value in samples.items():
        sample_name, _, rest = key.partition("{")
        if sample_name not in (name, f"{name}_total"):
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


# ---------------------------------------------------------------------------------- alert watcher


@dataclass
class Transition:
    at: float
    state: str  # Prometheus: pending, firing, inactive; Alertmanager: active, suppressed, gone


@dataclass
class AlertWatcher:
    """Polls Prometheus's and Alertmanager's alert lists in a thread and keeps each alert's states.

    Keys are (alertname, severity). A transition is recorded when the state changes, so the
    test can ask when an alert first went pending, firing, or away again.
    """

    prometheus: Prometheus
    alertmanager: Alertmanager
    interval: float = 0.25
    prom: dict[tuple[str, str], list[Transition]] = field(default_factory=dict)
    am: dict[tuple[str, str], list[Transition]] = field(default_factory=dict)
    am_inhibited_by: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="alert-watcher", daemon=True)

    def start(self) -> "AlertWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                prom_states = {}
                for alert in self.prometheus.alerts():
                    key = (alert["labels"].get("alertname", ""), alert["labels"].get("severity", ""))
                    # A pair's two rules may both match; "firing" wins over "pending".
                    if prom_states.get(key) != "firing":
                        prom_states[key] = alert["state"]
                am_states, inhibitors = {}, {}
                for alert in self.alertmanager.alerts():
                    key = (alert["labels"].get("alertname", ""), alert["labels"].get("severity", ""))
                    am_states[key] = alert["status"]["state"]
                    inhibitors[key] = alert["status"].get("inhibitedBy") or []
            except (OSError, ValueError, KeyError) as exc:
                if len(self.errors) < 20:
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {exc!r}")
            else:
                with self._lock:
                    self._record(self.prom, prom_states, now, "inactive")
                    self._record(self.am, am_states, now, "gone")
                    for key, by in inhibitors.items():
                        if by:
                            self.am_inhibited_by[key] = by
            self._stop.wait(self.interval)

    @staticmethod
    def _record(history: dict, states: dict, now: float, absent: str) -> None:
        for key in set(history) | set(states):
            state = states.get(key, absent)
            transitions = history.setdefault(key, [])
            if not transitions or transitions[-1].state != state:
                transitions.append(Transition(now, state))

    def first(self, key: tuple[str, str], state: str, after: float = 0.0, source: str = "prom") -> float | None:
        with self._lock:
            history = list((self.prom if source == "prom" else self.am).get(key, []))
        return next((t.at for t in history if t.state == state and t.at >= after), None)

    def state(self, key: tuple[str, str], source: str = "prom") -> str | None:
        with self._lock:
            history = (self.prom if source == "prom" else self.am).get(key, [])
            return history[-1].state if history else None

    def since(self, key: tuple[str, str], state: str, source: str = "prom") -> float | None:
        """When ``key`` entered ``state``, if that is its current state."""
        with self._lock:
            history = (self.prom if source == "prom" else self.am).get(key, [])
            return history[-1].at if history and history[-1].state == state else None

    def history(self, key: tuple[str, str], source: str = "prom") -> list[Transition]:
        with self._lock:
            return list((self.prom if source == "prom" else self.am).get(key, []))

    def summary(self, t0: float) -> str:
        lines = []
        with self._lock:
            for source, history in (("prometheus", self.prom), ("alertmanager", self.am)):
                for key in sorted(history):
                    steps = " -> ".join(f"{t.state}@{t.at - t0:+.1f}s" for t in history[key])
                    lines.append(f"  {source:<12} {key[0]}/{key[1]}: {steps}")
        if self.errors:
            lines.append("  watcher errors: " + "; ".join(self.errors[:5]))
        return "\n".join(lines) or "  (no alerts seen)"


# ---------------------------------------------------------------------------------- stand-in collector


def standin_config(loki_http: int, metrics_port: int) -> dict:
    """A second, real otelcol listening where Loki's OTLP HTTP endpoint would be.

    Loki cannot be built here (docs/tools.md). The main collector's ``otlp_http/loki`` exporter
    posts logs to ``<loki>/otlp/v1/logs``; this collector receives them on that exact address and
    prints every log record (debug exporter, detailed) to its log, which the test reads. Its own
    metrics count what it accepted.
    """
    return {
        "receivers": {"otlp/loki": {"protocols": {"http": {"endpoint": f"127.0.0.1:{loki_http}",
                                                           "logs_url_path": "/otlp/v1/logs"}}}},
        "exporters": {"debug": {"verbosity": "detailed"}},
        "service": {
            "pipelines": {"logs": {"receivers": ["otlp/loki"], "exporters": ["debug"]}},
            "telemetry": {"metrics": {"readers": [
                {"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics_port}}}},
            ]}},
        },
    }


@dataclass
class DebugLog:
    trace_id: str
    span_id: str
    severity: str
    body: str
    service: str


_RESOURCE = re.compile(r"(?:^|\t)ResourceLog #\d+")
_SERVICE = re.compile(r"^\s*-> service\.name: Str\((.*)\)$")
_LOG_FIELD = re.compile(r"^(Trace ID|Span ID|SeverityText|Body): ?(.*)$")


def parse_debug_logs(text: str) -> list[DebugLog]:
    """Log records printed by the debug exporter at ``verbosity: detailed``."""
    logs: list[DebugLog] = []
    service = ""
    in_resource = False
    current: dict | None = None

    def finish() -> None:
        if current is not None:
            logs.append(DebugLog(current.get("Trace ID", ""), current.get("Span ID", ""),
                                 current.get("SeverityText", ""), current.get("Body", ""), service))

    for line in text.splitlines():
        if _RESOURCE.search(line):
            finish()
            current, service, in_resource = None, "", True
            continue
        if line.startswith("ScopeLogs #"):
            finish()
            current, in_resource = None, False
            continue
        if in_resource:
            match = _SERVICE.match(line)
            if match:
                service = match.group(1)
            continue
        if re.match(r"^LogRecord #\d+", line):
            finish()
            current = {}
            continue
        if current is None:
            continue
        match = _LOG_FIELD.match(line)
        if match and match.group(1) not in current:  # the first occurrence: attributes come later
            current[match.group(1)] = match.group(2).strip()
    finish()
    return logs


# ---------------------------------------------------------------------------------- load generator


def go_module_version(binary: str | None, module: str) -> str:
    """The version of Go module ``module`` that ``binary`` was built from, read from the build
    information every Go binary embeds (what ``go version -m`` prints), or "" if absent.

    A build without ``-ldflags -X`` reports an empty version of its own; this says which release
    ran all the same (Prometheus 3.16.0 is module v0.316.0, Jaeger 2.12.0 ships in module v1.75.0).
    """
    if binary is None:
        return ""
    pattern = re.compile(rb"(?:mod|dep)\t" + re.escape(module.encode()) + rb"\t(v[^\t\n]+)")
    with open(binary, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        match = pattern.search(data)
        return match.group(1).decode() if match else ""


def jaeger_version(binary: str | None) -> str:
    """What ``jaeger version`` reports (its gitVersion), else the Go module it was built from."""
    if binary is None:
        return ""
    result = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=60)
    try:
        reported = str(json.loads(result.stdout.strip()).get("gitVersion", ""))
    except ValueError:
        reported = ""
    module = go_module_version(binary, "github.com/jaegertracing/jaeger")
    return reported or (f"module github.com/jaegertracing/jaeger {module} (unstamped build)" if module else "")


def prometheus_version(reported: str, binary: str | None) -> str:
    """Prometheus's /api/v1/status/buildinfo version, else the release its Go module stands for."""
    if reported:
        return reported
    module = go_module_version(binary, "github.com/prometheus/prometheus")
    match = re.fullmatch(r"v0\.3(\d\d)\.(\d+)", module)  # v0.3XX.Y is Prometheus 3.XX.Y
    return f"3.{int(match.group(1))}.{match.group(2)} (module {module}, unstamped build)" if match else ""


def loadgen_argv(url: str, secret: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "instrumented_server.loadgen", "--url", url, "--jwt-secret-file", str(secret),
            "--settle", "0.5", *args]


def run_loadgen(log_dir: Path, name: str, argv: list[str], timeout: float = 90.0) -> int:
    """Run one load generator burst to completion; its output goes to logs/loadgen-<name>.log."""
    log = log_dir / f"loadgen-{name}.log"
    with open(log, "ab") as handle:
        handle.write(f"$ {' '.join(argv)}\n".encode())
        handle.flush()
        result = subprocess.run(argv, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=timeout)
    return result.returncode


# ---------------------------------------------------------------------------------- dashboards


@dataclass
class PanelQuery:
    dashboard: str
    panel: str
    datasource_type: str
    expr: str  # PromQL as written (empty for non-PromQL targets)
    ref: str
    target: dict  # the panel target as rendered (a Jaeger search's service and limit)
    no_value: str | None = None  # what the panel shows instead of "No data" (Grafana noValue)


def dashboard_queries(bundle: Path) -> tuple[list[PanelQuery], dict[str, dict]]:
    """Every target of every panel of every rendered dashboard, and each dashboard's variables."""
    queries: list[PanelQuery] = []
    variables: dict[str, dict] = {}
    for path in sorted((bundle / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        title = dashboard["title"]
        variables[title] = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
        datasource_var = variables[title].get("datasource", {}).get("query", "prometheus")

        def ds_type(ds: Any) -> str:
            if not isinstance(ds, dict):
                return "prometheus"
            if str(ds.get("uid", "")).startswith("$"):
                return datasource_var  # a datasource variable: its plugin type
            return ds.get("type", "prometheus")

        def walk(panels: list[dict]) -> None:
            for panel in panels:
                walk(panel.get("panels", []))
                if panel.get("type") == "row":
                    continue
                no_value = panel.get("fieldConfig", {}).get("defaults", {}).get("noValue")
                for target in panel.get("targets", []):
                    kind = ds_type(target.get("datasource") or panel.get("datasource"))
                    queries.append(PanelQuery(title, panel["title"], kind, target.get("expr", ""),
                                              target.get("refId", ""), target, no_value))

        walk(dashboard.get("panels", []))
    return queries, variables


def grafana_to_promql(expr: str, variables: dict[str, dict], interval_s: int, rate_interval_s: int,
                      range_s: int) -> str:
    """Substitute Grafana's variables as Grafana would for a dashboard left on its defaults.

    ``$__rate_interval`` is max($__interval + scrape interval, 4 x scrape interval) per Grafana's
    documentation; template variables take their current value, "All" their allValue.
    """
    builtins = {
        "__rate_interval": f"{rate_interval_s}s", "__interval": f"{interval_s}s",
        "__interval_ms": str(interval_s * 1000), "__range": f"{range_s}s", "__range_s": str(range_s),
        "__range_ms": str(range_s * 1000),
    }

    def value(name: str) -> str:
        if name in builtins:
            return builtins[name]
        variable = variables.get(name)
        if variable is None:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        current = variable.get("current", {}).get("value")
        if isinstance(current, list):
            current = current[0] if len(current) == 1 else "|".join(current)
        if current in ("$__all", None) and variable.get("includeAll"):
            return variable.get("allValue") or ".*"
        return str(current)

    return re.sub(r"\$\{(\w+)(?::[\w-]+)?\}|\$(\w+)", lambda m: value(m.group(1) or m.group(2)), expr)


def has_points(result: list[dict]) -> bool:
    """True when a range query result has a sample Grafana would draw (not NaN, not Inf)."""
    for series in result:
        for _, raw in series.get("values", []):
            value = float(raw)
            if not math.isnan(value) and not math.isinf(value):
                return True
    return False


def non_finite_series(result: list[dict]) -> list[str]:
    """Each series of a range query result with a NaN or infinite point: its labels and how many."""
    found = []
    for series in result:
        bad = sum(1 for _, raw in series.get("values", []) if not math.isfinite(float(raw)))
        if bad:
            found.append(f"{series.get('metric', {})}: {bad} of {len(series['values'])} points not finite")
    return found


def series_summary(result: list[dict]) -> str:
    """"N series, values a..b": what a panel draws, for the record docs/dashboards.md quotes."""
    values = [float(raw) for series in result for _, raw in series.get("values", [])]
    finite = [v for v in values if math.isfinite(v)]
    span = f", values {min(finite):.3g}..{max(finite):.3g}" if finite else ""
    return f"{len(result)} series{span}"


# ---------------------------------------------------------------------------------- diagnostics


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"    ({exc})"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])
