"""A Socket.IO service through the real stack: the example chat, two processes behind Redis.

tests/stack/specs/socketio-chat.yaml (the example chat as a service, its say-latency SLO) is
rendered through the real CLI for the ``local`` target, every port free on 127.0.0.1, the chat
listed as two instances this test runs itself (the local target runs no image). From the
bundle's local/processes.yaml, as ``obsgen up`` would start them, run Redis, the OpenTelemetry
Collector (otelcol), Jaeger v2 and Prometheus 3. Two chat server processes
(instrumented_server/socketio_chat.py, ``exporter.instrument_socketio``) share rooms over
python-socketio's AsyncRedisManager on that Redis and send OTLP to the collector; Prometheus
scrapes their /metrics.

Traffic: two real python-socketio clients of this test, one on each process in one room, and one
``say`` carrying a W3C ``traceparent`` of a trace id the test chose; then
instrumented_server/socketio_loadgen.py against each process at once (rooms shared across the
processes, faults bad-say, no-auth and drop).

Then, against the real processes:

- Prometheus scraped the chat's metrics: connections by namespace, events in and out by name,
  fan-out, the handler latency histogram, Redis broker lag, socketio_disconnections_total by
  reason;
- every Prometheus query of the WebSocket overview dashboard returns a finite value over the run
  (Grafana's variables substituted as Grafana would), the Socket.IO disconnect reasons panel
  included; the chat feeds them all (its reconnect and rate-limit counters, which Socket.IO never
  moves, are created at 0 and draw 0); its Jaeger panel finds the chat's traces;
- Jaeger, through its query API, holds the client's trace by id: the ``socketio.event.say``
  handler span (a child of the client's span), the delivery on the process that handled it
  (producer) and the delivery on the other process, continued from the Redis message (consumer);
- the collector's logs path (STAND-IN: a second, real otelcol on Loki's OTLP endpoint, as in
  test_e2e_pipeline.py, since Loki cannot be built here) received the chat's log records, the
  say's log line with the client's trace id and its handler span's id.

Grafana does not run: its dashboard JSON is read and its PromQL run on Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from stack.ports import PORTS
from stack.spec import parse_duration
from stack.up import find_binary, load_manifest
from tests.conftest import missing_tool, require_binary, stop_process
from tests.e2e.e2e_support import (
    REPO,
    Jaeger,
    Prometheus,
    dashboard_queries,
    free_ports,
    grafana_to_promql,
    has_points,
    http_text,
    parse_debug_logs,
    port_open,
    prometheus_version,
    render_bundle,
    scrape,
    standin_config,
    sum_samples,
    tail,
    trace_spans,
    wait_until,
)

try:
    import socketio
except ImportError as exc:  # pyproject's test extra lists it: missing means a broken install
    socketio = None
    SOCKETIO_MISSING = str(exc)

pytestmark = pytest.mark.e2e

SPEC = REPO / "tests" / "stack" / "specs" / "socketio-chat.yaml"
SERVICE = "socketio-chat"
INSTANCES = 2
INTERVAL = "1s"  # Prometheus scrape and rule evaluation
READY_TIMEOUT = 90.0  # a cold start on a loaded 2-core machine
DEADLINE = 60.0  # telemetry to arrive once produced (batches every second, scrapes every second)
DASHBOARD = "WebSocket overview"
TRACE_ID = f"{random.getrandbits(128) | 1 << 127:032x}"  # a fresh id per run: never an old run's trace
CLIENT_SPAN_ID = f"{random.getrandbits(64) | 1 << 63:016x}"
ROOM = "e2e-room"
TEXT = "hello across processes"

# Its panels whose datasource does not run here.
UNCHECKED = {"Log volume by level": "Loki cannot be built here (a stand-in collector receives the logs)",
             "Logs": "Loki cannot be built here"}
LOADGEN = ["--clients", "6", "--rooms", "2", "--rate", "8", "--duration", "12", "--settle", "5",
           "--fault", "bad-say=1", "--fault", "no-auth=1", "--fault", "drop=0.5", "--json"]


def traceparent() -> str:
    return f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (the spec's instances count up from one port)."""
    for _ in range(200):
        first = free_ports(1)[0]
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports found on 127.0.0.1")


def chat_spec(chat_port: int) -> dict:
    """The Socket.IO spec, runnable on 127.0.0.1: the local target, every component port free,
    the chat an external service of INSTANCES processes (the local target runs no image)."""
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    spec["target"] = "local"
    names = [(component, name) for component, named in sorted(PORTS.items()) for name in sorted(named)]
    components = spec.setdefault("components", {})
    for (component, name), port in zip(names, free_ports(len(names))):
        components.setdefault(component, {}).setdefault("ports", {})[name] = port
    components["prometheus"].update(scrape_interval=INTERVAL, evaluation_interval=INTERVAL)
    components["collector"]["batch_timeout"] = "1s"
    # Host metrics and outside-in probes are test_e2e_host_probe.py's: this stack starts only what
    # the Socket.IO path needs, so the dashboard renders without the host and probe rows.
    components["node_exporter"]["enabled"] = False
    components["blackbox"]["enabled"] = False
    (service,) = spec["services"]
    assert service["name"] == SERVICE, service
    for key in ("image", "command", "environment"):
        service.pop(key, None)
    service.pop("port", None)  # the chat serves Socket.IO and /metrics on one port: metrics.port, counted up per instance
    service.update(instances=INSTANCES, metrics={"port": chat_port, "path": "/metrics"})
    return spec


# ------------------------------------------------------------------------------------------ the stack


@dataclass
class Stack:
    workdir: Path
    bundle: Path
    spec: dict
    prometheus: Prometheus
    jaeger: Jaeger
    chat_ports: list[int]
    standin_log: Path
    standin_metrics_port: int
    logs: Path
    t0: float = field(default_factory=time.time)

    def port(self, component: str, name: str) -> int:
        return self.spec["components"][component]["ports"][name]

    def diagnostics(self) -> str:
        parts = [f"bundle: {self.bundle}"]
        for log in sorted(self.logs.glob("*.log")):
            parts += [f"--- {log.name}", tail(log, 12)]
        return "\n".join(parts)


def _start(processes: list, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
    with open(log, "ab") as output:
        proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
    processes.append(proc)
    return proc


def _ready(proc: subprocess.Popen, ready: dict) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
    if "http" in ready:
        return http_text(ready["http"])[0] == 200
    host, _, port = ready["tcp"].rpartition(":")
    return port_open(int(port))


def _start_from_bundle(processes: list, bundle: Path, logs: Path, names: tuple[str, ...]) -> None:
    """Start the bundle's components ``names`` as `obsgen up` would: the binary found by the
    project's tool lookup, the rendered arguments and environment, the bundle as cwd; wait until
    each answers its rendered readiness check."""
    manifest = {entry["name"]: entry for entry in load_manifest(bundle)["processes"]}
    started = []
    for name in names:
        entry = manifest[name]
        binary = find_binary(entry["binary"]) or require_binary(entry["binary"][0])  # fails under CI=true
        for directory in entry.get("dirs", []):
            (bundle / directory).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **{k: str(v) for k, v in entry.get("env", {}).items()}}
        started.append((name, entry, _start(processes, [binary, *entry["args"]], logs / f"{name}.log",
                                            cwd=bundle, env=env)))
    for name, entry, proc in started:
        if not wait_until(lambda: _ready(proc, entry["ready"]), READY_TIMEOUT):
            raise AssertionError(f"{name} not ready at {entry['ready']} within {READY_TIMEOUT:.0f}s:\n"
                                 f"{tail(logs / f'{name}.log')}")


def _start_standin(processes: list, spec: dict, workdir: Path, logs: Path) -> tuple[Path, int]:
    """A second, real otelcol on Loki's OTLP HTTP endpoint, printing the log records it gets."""
    loki = spec["components"]["loki"]["ports"]["http"]
    metrics_port = free_ports(1)[0]
    config = workdir / "standin-collector.yaml"
    config.write_text(yaml.safe_dump(standin_config(loki, metrics_port), sort_keys=False), encoding="utf-8")
    log = logs / "standin-collector.log"
    proc = _start(processes, [require_binary("otelcol"), f"--config={config}"], log)
    if not wait_until(lambda: proc.poll() is None and port_open(loki) and port_open(metrics_port), READY_TIMEOUT):
        raise AssertionError(f"the stand-in collector did not listen on {loki} and {metrics_port}:\n{tail(log)}")
    return log, metrics_port


def _start_chat(processes: list, spec: dict, port: int, logs: Path, index: int) -> None:
    collector = spec["components"]["collector"]["ports"]["otlp_http"]
    redis = spec["components"]["redis"]["ports"]["redis"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OTEL_SERVICE_NAME": SERVICE, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector}",
           "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id=chat-{index}",
           # export within a fraction of a second, so the test need not wait for the SDK's 5 s batches
           "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_BLRP_SCHEDULE_DELAY": "200"}
    argv = [sys.executable, "-m", "instrumented_server.socketio_chat", "--port", str(port),
            "--redis-url", f"redis://127.0.0.1:{redis}/0"]
    log = logs / f"chat-{index}.log"
    proc = _start(processes, argv, log, cwd=REPO, env=env)
    if not wait_until(lambda: proc.poll() is None and http_text(f"http://127.0.0.1:{port}/healthz")[0] == 200,
                      READY_TIMEOUT):
        raise AssertionError(f"chat-{index} not ready on {port} within {READY_TIMEOUT:.0f}s:\n{tail(log)}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    if socketio is None:
        missing_tool(f"python-socketio not installed ({SOCKETIO_MISSING}): pip install -e '.[test]'")
    for name in ("otelcol", "prometheus", "jaeger", "redis-server"):
        require_binary(name)
    workdir = tmp_path_factory.mktemp("socketio-e2e")
    processes: list[subprocess.Popen] = []
    try:
        chat_port = consecutive_free_ports(INSTANCES)
        spec = chat_spec(chat_port)
        bundle = render_bundle(spec, workdir)
        logs = workdir / "logs"
        logs.mkdir()
        standin_log, standin_metrics = _start_standin(processes, spec, workdir, logs)
        _start_from_bundle(processes, bundle, logs, ("redis", "jaeger", "collector", "prometheus"))
        ports = [chat_port + i for i in range(INSTANCES)]
        for index, port in enumerate(ports):
            _start_chat(processes, spec, port, logs, index)
        yield Stack(workdir, bundle, spec, Prometheus(spec["components"]["prometheus"]["ports"]["http"]),
                    Jaeger(spec["components"]["jaeger"]["ports"]["query"]), ports, standin_log, standin_metrics, logs)
    finally:
        for proc in reversed(processes):  # by their own pids, pass or fail
            stop_process(proc, timeout=15)


# ------------------------------------------------------------------------------------------ the scenario


@dataclass
class Record:
    received_by_other_process: list[dict]
    loadgen: list[dict]
    started: float
    ended: float


async def _say_across_processes(stack: Stack) -> list[dict]:
    """ann on the first process, bob on the second, in one room; ann says with the test's trace
    context; what bob received (over Redis) is returned."""
    got: list[dict] = []
    arrived = asyncio.Event()
    clients = []
    try:
        for user, port in (("ann", stack.chat_ports[0]), ("bob", stack.chat_ports[1])):
            client = socketio.AsyncClient(reconnection=False)
            clients.append(client)
            await client.connect(f"http://127.0.0.1:{port}", namespaces=["/chat"], auth={"user": user},
                                 transports=["websocket"], wait_timeout=DEADLINE)
            await client.call("join", {"room": ROOM}, namespace="/chat", timeout=DEADLINE)
        ann, bob = clients

        def on_message(data: dict) -> None:
            got.append(data)
            arrived.set()

        bob.on("chat_message", on_message, namespace="/chat")
        answer = await ann.call("say", {"room": ROOM, "text": TEXT, "traceparent": traceparent()},
                                namespace="/chat", timeout=DEADLINE)
        assert answer == {"delivered": True}, answer
        await asyncio.wait_for(arrived.wait(), DEADLINE)
        # ann leaves /chat with Socket.IO's DISCONNECT packet, until the server has counted it:
        # AsyncClient.disconnect() closes the WebSocket before its queued DISCONNECT is written
        # (python-socketio 5.18 / python-engineio 4.15), which the server sees as a transport close.
        await ann._send_packet(ann.packet_class(socketio.packet.DISCONNECT, namespace="/chat"))
        counted = await asyncio.to_thread(wait_until, lambda: sum_samples(
            scrape(stack.chat_ports[0]), "socketio_disconnections_total", reason="client_disconnect"), DEADLINE)
        assert counted == 1, f"chat-0 counted {counted} client disconnects"
        return got
    finally:
        for client in clients:
            await client.disconnect()


def _loadgen(port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "instrumented_server.socketio_loadgen", "--url", f"http://127.0.0.1:{port}", *LOADGEN]
    with open(log, "wb") as stderr:
        return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def record(stack: Stack) -> Record:
    started = time.time()
    received = asyncio.run(_say_across_processes(stack))
    runs = [_loadgen(port, stack.logs / f"loadgen-{i}.log") for i, port in enumerate(stack.chat_ports)]
    reports = []
    try:
        for i, proc in enumerate(runs):
            try:
                out, _ = proc.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            assert proc.returncode == 0, \
                f"loadgen {i} exited {proc.returncode}: {out}\n{tail(stack.logs / f'loadgen-{i}.log')}"
            reports.append(json.loads(out))
    finally:
        for proc in runs:  # by their own pids, should one have failed before the others ended
            stop_process(proc)
    # Prometheus has scraped the last of it once both processes' say counts are in.
    said = sum(r["said"] for r in reports)

    def scraped() -> bool:
        value = stack.prometheus.value(f'sum(websocket_messages_received_total{{job="{SERVICE}",type="say"}})')
        return value is not None and value >= said + 1

    assert wait_until(scraped, DEADLINE), f"Prometheus never counted {said + 1} says\n{stack.diagnostics()}"
    # The server notices a closed transport on its next read or ping, and a dropped client may still
    # have been reconnecting as its load generator ended: wait until every accepted connection has
    # ended and been scraped (the test judging it reports any difference left).
    wait_until(lambda: _settled(stack), DEADLINE)
    return Record(received, reports, started, time.time())


def _settled(stack: Stack) -> bool:
    job = f'job="{SERVICE}"'
    accepted = stack.prometheus.value(f'sum(websocket_connections_total{{{job},status="accepted"}})')
    ended = stack.prometheus.value(f"sum(socketio_disconnections_total{{{job}}})")
    open_now = stack.prometheus.value(f"sum(websocket_active_connections{{{job}}})")
    return bool(accepted) and accepted == ended and open_now == 0


# ------------------------------------------------------------------------------------------ the tests


def test_the_other_process_delivered_the_say_and_the_load_ran(stack: Stack, record: Record):
    assert [m["text"] for m in record.received_by_other_process] == [TEXT]
    for report in record.loadgen:
        assert report["said"] > 20 and report["delivered"] > 0, report
        assert report["faults"].get("no-auth: refused", 0) >= 1, report
        assert report["faults"].get("bad-say: sent", 0) >= 1, report
        assert report["faults"].get("drop: dropped", 0) >= 1, report


def _by(stack: Stack, expr: str, label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in stack.prometheus.query(expr)}


def test_prometheus_scraped_the_socketio_metrics_of_both_processes(stack: Stack, record: Record):
    """Connections by namespace, events in and out by name, fan-out, the latency histogram,
    broker lag and disconnect reasons: scraped from both chat processes."""
    version = prometheus_version(stack.prometheus.buildinfo().get("version", ""), find_binary(["prometheus"]))
    assert version.startswith("3."), f"Prometheus {version or '(version unknown)'} ran, not 3.x"
    job = f'job="{SERVICE}"'
    up = _by(stack, f"up{{{job}}}", "instance")
    assert len(up) == INSTANCES and set(up.values()) == {1.0}, up
    accepted = stack.prometheus.value(f'sum(websocket_connections_total{{{job},status="accepted"}})')
    assert accepted and accepted >= 2 * 6 + 2, accepted  # the loadgens' clients, ann and bob
    window = f"{int(time.time() - record.started) + 5}s"
    peak = _by(stack, f"max_over_time(sum by (namespace) (websocket_active_connections{{{job}}})[{window}:1s])",
               "namespace")
    assert peak.get("/chat", 0) >= 6, peak  # the open connections, by Socket.IO namespace
    rooms = _by(stack, f"max_over_time(sum by (namespace) (websocket_subscriptions{{{job}}})[{window}:1s])",
                "namespace")
    assert rooms.get("/chat", 0) >= 6, rooms  # room memberships
    refused = stack.prometheus.value(f'sum(websocket_connections_total{{{job},status="auth_missing"}})')
    assert refused and refused >= 2, refused
    received = _by(stack, f"sum by (type) (websocket_messages_received_total{{{job}}})", "type")
    assert {"connect", "join", "say"} <= {t for t, v in received.items() if v > 0}, received
    sent = _by(stack, f"sum by (type) (websocket_messages_sent_total{{{job}}})", "type")
    assert {"chat_message", "ack"} <= {t for t, v in sent.items() if v > 0}, sent
    fanout = _by(stack, f"sum by (instance) (websocket_fanout_messages_total{{{job}}})", "instance")
    assert len(fanout) == INSTANCES and all(v > 0 for v in fanout.values()), fanout  # each delivers its own clients
    says = stack.prometheus.value(f'sum(websocket_message_duration_seconds_count{{{job},type="say"}})')
    buckets = stack.prometheus.value(f'sum(websocket_message_duration_seconds_bucket{{{job},type="say",le="+Inf"}})')
    assert says and says == buckets >= sum(r["said"] for r in record.loadgen) + 1, (says, buckets)
    lag = _by(stack, f"sum by (broker) (websocket_broker_lag_seconds_count{{{job}}})", "broker")
    assert lag.get("redis", 0) > 0, lag
    errors = _by(stack, f"sum by (reason) (websocket_errors_total{{{job}}})", "reason")
    assert errors.get("internal", 0) >= 2, errors  # bad-say on each process
    # Every accepted connection has ended, counted once under its reason and once under its code.
    reasons = _by(stack, f'sum by (reason) (socketio_disconnections_total{{{job},namespace="/chat"}})', "reason")
    open_now = _by(stack, f"sum by (namespace) (websocket_active_connections{{{job}}})", "namespace")
    assert sum(reasons.values()) == accepted, (reasons, accepted, open_now)
    assert set(open_now.values()) == {0.0}, open_now
    assert reasons.get("client_disconnect") == 1, reasons  # ann's DISCONNECT packet
    drops = sum(r["faults"].get("drop: dropped", 0) for r in record.loadgen)
    # the drops, and the clients' own disconnect() (see _say_across_processes)
    assert reasons.get("transport_close", 0) >= drops, (reasons, drops)
    codes = _by(stack, f"sum by (code) (websocket_disconnections_total{{{job}}})", "code")
    assert sum(codes.values()) == accepted and codes.get("1000") == 1, codes
    assert codes.get("1006") == reasons.get("transport_close", 0) + reasons.get("transport_error", 0), (codes, reasons)


def test_every_websocket_dashboard_query_the_chat_feeds_returns_finite_data(stack: Stack, record: Record):
    """Each Prometheus query of the WebSocket overview, with Grafana's variables substituted as
    Grafana would, has a finite point over the run; its Jaeger panel finds the chat's traces."""
    queries, variables = dashboard_queries(stack.bundle)
    queries = [q for q in queries if q.dashboard == DASHBOARD]
    assert queries, f"no {DASHBOARD} dashboard rendered"
    unchecked = {q.panel for q in queries if q.datasource_type not in ("prometheus", "jaeger")}
    assert unchecked == set(UNCHECKED), f"panels whose datasource does not run here: {sorted(unchecked)}"
    scrape_s = int(parse_duration(INTERVAL))
    start = record.started

    def empty() -> list[str]:
        end = time.time()
        interval = max(scrape_s, int((end - start) / 1000))
        rate_interval = max(interval + scrape_s, 4 * scrape_s)
        missing = []
        for q in queries:
            name = f"{q.panel} [{q.ref}]"
            if q.datasource_type == "jaeger":
                service = grafana_to_promql(q.target["service"], variables[q.dashboard], interval, rate_interval,
                                            int(end - start))
                traces = stack.jaeger.search(service, start, end, limit=q.target.get("limit") or 20)
                if not (service == SERVICE and traces):
                    missing.append(f"{name}: Jaeger search service={service}: {len(traces)} traces")
            elif q.datasource_type == "prometheus":
                expr = grafana_to_promql(q.expr, variables[q.dashboard], interval, rate_interval, int(end - start))
                if not has_points(stack.prometheus.query_range(expr, start, end, interval)):
                    missing.append(f"{name}: {expr}")
        return missing

    # A rate needs two scrapes of a change; the run has ended, so this waits on data, not on traffic.
    wait_until(lambda: not empty(), DEADLINE, interval=1.0)
    missing = empty()
    assert not missing, "queries with no finite point:\n  " + "\n  ".join(missing)
    checked = [q for q in queries if q.datasource_type in ("prometheus", "jaeger")]
    assert len(checked) >= 20, f"only {len(checked)} queries checked"
    panel = [q for q in queries if q.panel == "Socket.IO disconnections by reason"]
    assert panel and "socketio_disconnections_total" in panel[0].expr, "no Socket.IO disconnect reasons panel"


def _raw_trace(stack: Stack) -> dict | None:
    return stack.jaeger.trace(TRACE_ID)


def test_jaeger_holds_the_clients_trace_with_the_handler_and_both_deliveries(stack: Stack, record: Record):
    """The client's trace id, fetched by id from Jaeger's query API: the say's handler span is a
    child of the client's span; the delivery on its process (producer) and the delivery on the
    other process, continued from the Redis message (consumer), are in the same trace."""

    def complete() -> dict | None:
        trace = _raw_trace(stack)
        if not trace:
            return None
        kinds = [_tag(s, "span.kind") for s in trace["spans"] if s["operationName"] == "socketio.emit"]
        names = {s["operationName"] for s in trace["spans"]}
        return trace if "socketio.event.say" in names and {"producer", "consumer"} <= set(kinds) else None

    trace = wait_until(complete, DEADLINE, interval=0.5) or _raw_trace(stack)
    assert trace, f"Jaeger has no trace {TRACE_ID}\n{stack.diagnostics()}"
    spans = trace_spans(trace)
    (say,) = [s for s in trace["spans"] if s["operationName"] == "socketio.event.say"]
    say_span = next(s for s in spans if s.name == "socketio.event.say")
    assert say_span.service == SERVICE and say_span.trace_id == int(TRACE_ID, 16)
    assert [r["spanID"] for r in say.get("references", [])] == [CLIENT_SPAN_ID], say.get("references")
    assert _tag(say, "span.kind") == "server" and _tag(say, "socketio.namespace") == "/chat"
    emits = [s for s in trace["spans"] if s["operationName"] == "socketio.emit"]
    by_kind = {_tag(s, "span.kind"): s for s in emits}
    assert set(by_kind) == {"producer", "consumer"}, [(_tag(s, "span.kind"), s["processID"]) for s in emits]
    for emit in emits:  # both deliveries are children of the say's handler span
        assert [r["spanID"] for r in emit.get("references", [])] == [say["spanID"]], emit.get("references")
        assert _tag(emit, "socketio.event") == "chat_message"
    instances = {kind: _process_tag(trace, s, "service.instance.id") for kind, s in by_kind.items()}
    assert instances == {"producer": "chat-0", "consumer": "chat-1"}, instances
    assert _process_tag(trace, say, "service.instance.id") == "chat-0"


def _tag(span: dict, key: str):
    return next((t["value"] for t in span.get("tags", []) if t["key"] == key), None)


def _process_tag(trace: dict, span: dict, key: str):
    process = trace.get("processes", {}).get(span.get("processID", ""), {})
    return next((t["value"] for t in process.get("tags", []) if t["key"] == key), None)


def test_log_records_reach_the_logs_backend_standin_with_the_clients_trace_id(stack: Stack, record: Record):
    """Logs go chat -> collector -> the stand-in on Loki's /otlp/v1/logs; the say's log line carries
    the client's trace id and the span id of its handler span in Jaeger."""
    trace = _raw_trace(stack)
    assert trace, f"Jaeger has no trace {TRACE_ID}"
    say_ids = {s["spanID"] for s in trace["spans"] if s["operationName"] == "socketio.event.say"}

    def said() -> list:
        logs = parse_debug_logs(stack.standin_log.read_text(encoding="utf-8", errors="replace"))
        return [r for r in logs if r.service == SERVICE and r.trace_id == TRACE_ID and "says" in r.body]

    records = wait_until(said, DEADLINE, interval=0.5)
    assert records, f"no log record of the say with trace id {TRACE_ID}:\n{tail(stack.standin_log)}"
    assert {r.span_id for r in records} <= say_ids, (records, say_ids)
    main, standin = scrape(stack.port("collector", "metrics")), scrape(stack.standin_metrics_port)
    sent = sum_samples(main, "otelcol_exporter_sent_log_records", exporter="otlp_http/loki")
    accepted = sum_samples(standin, "otelcol_receiver_accepted_log_records", receiver="otlp/loki")
    assert sent > 0 and accepted == sent, f"collector sent {sent} log records, the stand-in accepted {accepted}"
    traced = [r for r in parse_debug_logs(stack.standin_log.read_text(encoding="utf-8", errors="replace"))
              if r.service == SERVICE and r.trace_id]
    assert len(traced) > 10, f"only {len(traced)} of the chat's log records carry a trace id"


def test_the_collector_and_jaeger_lost_nothing(stack: Stack, record: Record):
    """Every span the collector exported, Jaeger accepted; nothing refused or failed; the chat
    dropped no telemetry."""
    main, jaeger = scrape(stack.port("collector", "metrics")), scrape(stack.port("jaeger", "metrics"))
    sent = sum_samples(main, "otelcol_exporter_sent_spans", exporter="otlp_grpc/jaeger")
    accepted = sum_samples(jaeger, "otelcol_receiver_accepted_spans", receiver="otlp")
    assert sent > 0 and accepted == sent, f"collector sent {sent} spans, Jaeger accepted {accepted}"
    for process, samples in (("collector", main), ("jaeger", jaeger)):
        bad = {n: v for n, v in samples.items()
               if any(w in n.partition("{")[0] for w in ("refused", "failed", "dropped")) and v != 0}
        assert not bad, f"{process} reports refused/failed/dropped data: {bad}"
    for port in stack.chat_ports:
        assert sum_samples(scrape(port), "websocket_telemetry_dropped") == 0, port
