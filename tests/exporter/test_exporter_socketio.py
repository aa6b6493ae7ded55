"""exporter.instrument_socketio: a real python-socketio server and real clients on 127.0.0.1.

The in-process tests run the example chat server (instrumented_server/socketio_chat.py) on an
aiohttp runner in the test's loop, so they can read its telemetry (in-memory span and log
exporters of the OTel SDK) and call the server (a server-side disconnect). Clients are
python-socketio's AsyncClient, or a raw Engine.IO client over `websockets` where a client must
misbehave (never answer pings, send a packet that does not decode). The scale-out test runs two
chat server processes behind python-socketio's AsyncRedisManager on a real redis-server, exporting
spans over OTLP/HTTP to a recording sink.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO, free_port, missing_tool, wait_for_port
from tests.exporter.backends import HttpSink

try:
    import socketio
    from aiohttp import web
except ImportError as exc:  # pyproject lists both; a missing one is a broken install, not a skip in CI
    socketio = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736"
DEADLINE = 30.0  # seconds: generous, the machine may be loaded


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def _need_socketio():
    if socketio is None:
        missing_tool(f"python-socketio / aiohttp not installed ({IMPORT_ERROR}): pip install -e '.[test]'")


# ------------------------------------------------------------------------------------ helpers


def metric_samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """The sum of ``name``'s series carrying ``labels`` (others, such as transport, summed over)."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= set(series))


async def eventually(check, timeout: float = DEADLINE, what: str = "condition"):
    """Poll ``check()`` (sync) until it returns a truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.02)


class ChatServer:
    """The example chat server in this loop, on a free port, with in-memory span and log exporters."""

    def __init__(self, **server_options) -> None:
        from instrumented_server import socketio_chat

        self.spans = InMemorySpanExporter()
        self.logs = InMemoryLogRecordExporter()
        self.app, self.sio, self.instrumentation = socketio_chat.build_app(
            server_options=server_options, service_name="chat-test", span_exporter=self.spans,
            log_exporter=self.logs, logs="otlp", log_stdout=False, environ={}, export_interval=0.05,
        )
        self.telemetry = self.instrumentation.telemetry
        self.runner = web.AppRunner(self.app, handle_signals=False)

    async def start(self) -> "ChatServer":
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        await self.sio.shutdown()
        await self.runner.cleanup()
        self.telemetry.shutdown(2.0)

    async def scrape(self, accept: str | None = None) -> str:
        def get():
            request = urllib.request.Request(f"{self.url}/metrics", headers={"Accept": accept} if accept else {})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.read().decode()

        return await asyncio.to_thread(get)

    def samples(self) -> dict:
        return metric_samples(self.telemetry.exposition()[0].decode())

    def finished_spans(self) -> list:
        self.telemetry.force_flush(5.0)
        return list(self.spans.get_finished_spans())

    def log_records(self) -> list:
        self.telemetry.force_flush(5.0)
        return [getattr(r, "log_record", r) for r in self.logs.get_finished_logs()]


@pytest.fixture
async def chat():
    server = await ChatServer().start()
    try:
        yield server
    finally:
        await server.stop()


async def client(url: str, namespaces=("/", "/chat"), auth=None, **kwargs) -> "socketio.AsyncClient":
    c = socketio.AsyncClient(reconnection=False)
    await c.connect(url, namespaces=list(namespaces), auth=auth if auth is not None else {"user": "ann"},
                    transports=["websocket"], wait_timeout=DEADLINE, **kwargs)
    return c


class RawEngineIO:
    """A bare Engine.IO v4 client over WebSocket that does only what the test tells it (no pongs)."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"

    async def __aenter__(self) -> "RawEngineIO":
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, open_timeout=DEADLINE)
        opened = await asyncio.wait_for(self.ws.recv(), DEADLINE)
        assert opened.startswith("0{"), opened
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.ws.close()

    async def connect_namespace(self, namespace: str, auth: dict) -> str:
        await self.ws.send(f"40{namespace},{json.dumps(auth)}" if namespace != "/" else f"40{json.dumps(auth)}")
        while True:  # skip pings: this client never answers them
            reply = await asyncio.wait_for(self.ws.recv(), DEADLINE)
            if reply.startswith("40"):
                return reply


# ------------------------------------------------------------------------- in-process server


async def test_connections_by_namespace_and_refusals_by_auth(chat):
    a = await client(chat.url)
    s = await eventually(lambda: (x := chat.samples()) and value(x, "websocket_connections_total", status="accepted") == 2 and x,
                         what="two namespace connections accepted")
    assert value(s, "websocket_active_connections", namespace="/") == 1
    assert value(s, "websocket_active_connections", namespace="/chat") == 1

    for auth, status in (({}, "auth_missing"), ({"user": ""}, "auth_failed")):
        refused = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(chat.url, namespaces=["/chat"], auth=auth, transports=["websocket"], wait_timeout=5)
        await refused.disconnect()
        await eventually(lambda: value(chat.samples(), "websocket_connections_total", status=status) == 1, what=status)

    async with RawEngineIO(chat.port) as raw:  # a namespace nobody serves
        await raw.ws.send("40/nope,")
        reply = await asyncio.wait_for(raw.ws.recv(), DEADLINE)
        assert reply.startswith("44/nope,"), reply
    s = await eventually(lambda: (x := chat.samples()) and value(x, "websocket_connections_total", status="error") == 1 and x,
                         what="unknown namespace refused")
    assert value(s, "websocket_connections_total", status="accepted") == 2  # refusals never counted as accepted
    assert value(s, "websocket_active_connections", namespace="/chat") == 1
    assert ("websocket_active_connections", (("namespace", "/nope"),)) not in s
    await a.disconnect()


async def test_disconnect_reasons_and_their_close_codes():
    chat = await ChatServer(ping_interval=0.3, ping_timeout=0.3).start()
    try:
        def reasons():
            s = chat.samples()
            return {k[1]: v for k, v in s.items() if k[0] == "socketio_disconnections_total" and v}

        # client disconnect: the client leaves /chat with a Socket.IO DISCONNECT packet
        a = await client(chat.url)
        await a._send_packet(a.packet_class(socketio.packet.DISCONNECT, namespace="/chat"))
        await eventually(lambda: reasons().get((("namespace", "/chat"), ("reason", "client_disconnect"))) == 1,
                         what="client_disconnect")
        # server disconnect: the application disconnects the client from "/"
        sid = a.get_sid("/")
        await chat.sio.disconnect(sid, namespace="/")
        await eventually(lambda: reasons().get((("namespace", "/"), ("reason", "server_disconnect"))) == 1,
                         what="server_disconnect")
        await a.disconnect()

        # transport close: the WebSocket goes away without a goodbye
        b = await client(chat.url, namespaces=["/chat"])
        await b.eio.ws.close()
        await eventually(lambda: reasons().get((("namespace", "/chat"), ("reason", "transport_close"))) == 1,
                         what="transport_close")
        await b.disconnect()

        # ping timeout: a client that keeps sending (Engine.IO no-ops, so the server's read timeout does
        # not end it first as a transport close) but never answers the server's pings
        async with RawEngineIO(chat.port) as raw:
            await raw.connect_namespace("/chat", {"user": "mute"})

            async def chatter():
                while True:
                    await raw.ws.send("6")
                    await asyncio.sleep(0.05)

            noise = asyncio.create_task(chatter())
            try:
                await eventually(lambda: reasons().get((("namespace", "/chat"), ("reason", "ping_timeout"))) == 1,
                                 what="ping_timeout")
            finally:
                noise.cancel()
                await asyncio.gather(noise, return_exceptions=True)

        s = chat.samples()
        assert value(s, "websocket_disconnections_total", code="1000") == 2  # client and server disconnect
        assert value(s, "websocket_disconnections_total", code="1006") == 1  # transport close
        assert value(s, "websocket_disconnections_total", code="1011") == 1  # ping timeout
        assert value(s, "websocket_active_connections", namespace="/chat") == 0
        assert value(s, "websocket_active_connections", namespace="/") == 0
        logs = [r for r in chat.log_records() if str(r.body).startswith("socket.io disconnect")]
        assert {r.attributes["disconnect_reason"] for r in logs} == {
            "client disconnect", "server disconnect", "transport close", "ping timeout"}
    finally:
        await chat.stop()


async def test_events_in_and_out_by_name_latency_acks_and_errors(chat):
    a = await client(chat.url)
    assert await a.call("ping", namespace="/", timeout=DEADLINE) == "pong"
    assert (await a.call("join", {"room": "lobby"}, namespace="/chat", timeout=DEADLINE))["members"] == 1
    assert await a.call("say", {"room": "lobby", "text": "hello"}, namespace="/chat", timeout=DEADLINE) == {"delivered": True}
    await a.emit("say", {"room": "lobby"}, namespace="/chat")  # no text: the handler raises ValueError
    for i in range(5):  # names no handler is registered for never become label values
        await a.emit(f"made-up-{i}", {"x": i}, namespace="/chat")

    s = await eventually(lambda: (x := chat.samples()) and value(x, "websocket_errors_total", reason="internal") == 1
                         and value(x, "websocket_messages_received_total", type="other") == 5 and x,
                         what="handler error and unregistered events counted")
    assert value(s, "websocket_messages_received_total", type="connect") == 2
    assert value(s, "websocket_messages_received_total", type="ping") == 1
    assert value(s, "websocket_messages_received_total", type="join") == 1
    assert value(s, "websocket_messages_received_total", type="say") == 2
    assert value(s, "websocket_messages_sent_total", type="ack") == 3  # ping, join, say answered
    assert value(s, "websocket_messages_sent_total", type="chat_message") == 1
    assert value(s, "websocket_message_duration_seconds_count", type="say") == 2  # the failed one too
    assert value(s, "websocket_message_duration_seconds_count", type="ping") == 1
    assert value(s, "websocket_message_duration_seconds_bucket", type="say", le="+Inf") == 2
    assert value(s, "websocket_message_duration_seconds_sum", type="say") > 0
    assert value(s, "websocket_message_size_bytes_count", direction="in") >= 11
    assert value(s, "websocket_message_size_bytes_sum", direction="in") >= 11 * len('42/chat,["say",{}]') / 2
    assert value(s, "websocket_message_size_bytes_sum", direction="out") > 0
    assert not any(dict(k[1]).get("type", "").startswith("made-up") for k in s)
    await a.disconnect()


async def test_a_room_emit_counts_once_with_its_recipient_count(chat):
    clients = [await client(chat.url, namespaces=["/chat"], auth={"user": f"u{i}"}) for i in range(3)]
    inbox: list = []
    for c in clients:
        c.on("chat_message", inbox.append, namespace="/chat")
    for c in clients:
        await c.call("join", {"room": "r"}, namespace="/chat", timeout=DEADLINE)
    outsider = await client(chat.url, namespaces=["/chat"], auth={"user": "out"})
    await outsider.call("join", {"room": "elsewhere"}, namespace="/chat", timeout=DEADLINE)
    s = await eventually(lambda: (x := chat.samples()) and value(x, "websocket_subscriptions", namespace="/chat") == 4 and x,
                         what="four room memberships")
    fanout_before = value(s, "websocket_fanout_messages_total")
    sent_before = value(s, "websocket_messages_sent_total", type="chat_message")

    await clients[0].call("say", {"room": "r", "text": "to three"}, namespace="/chat", timeout=DEADLINE)
    await eventually(lambda: len(inbox) == 3, what="three deliveries")
    s = chat.samples()
    assert value(s, "websocket_fanout_messages_total") - fanout_before == 3
    assert value(s, "websocket_messages_sent_total", type="chat_message") - sent_before == 3

    await clients[2].call("leave", {"room": "r"}, namespace="/chat", timeout=DEADLINE)
    await eventually(lambda: value(chat.samples(), "websocket_subscriptions", namespace="/chat") == 3, what="a leave")
    for c in [*clients, outsider]:
        await c.disconnect()
    await eventually(lambda: value(chat.samples(), "websocket_subscriptions", namespace="/chat") == 0,
                     what="rooms emptied by disconnects")


async def test_spans_continue_the_clients_trace_and_logs_carry_it(chat):
    a = await client(chat.url, auth={"user": "ann", "traceparent": traceparent(TRACE_A)})
    await a.call("join", {"room": "t"}, namespace="/chat", timeout=DEADLINE)
    await a.call("say", {"room": "t", "text": "traced", "traceparent": traceparent(TRACE_B)}, namespace="/chat",
                 timeout=DEADLINE)
    await a.emit("say", {"room": "t", "traceparent": traceparent(TRACE_B)}, namespace="/chat")  # raises
    await eventually(lambda: value(chat.samples(), "websocket_errors_total", reason="internal") == 1, what="the error")

    spans = await eventually(lambda: (x := chat.finished_spans()) and sum(
        1 for s in x if s.name == "socketio.event.say") == 2 and x, what="both say spans")
    by_trace = lambda trace_id, name: [s for s in spans if s.name == name and format(s.context.trace_id, "032x") == trace_id]
    connects = by_trace(TRACE_A, "socketio.connect")
    # the client sends its auth payload with each namespace connect: "/" and "/chat" join its trace
    assert sorted(c.attributes["socketio.namespace"] for c in connects) == ["/", "/chat"]
    assert all(c.kind is SpanKind.SERVER and c.attributes["socketio.connect.status"] == "accepted" for c in connects)
    says = by_trace(TRACE_B, "socketio.event.say")
    assert len(says) == 2
    failed = [s for s in says if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and failed[0].events[0].name == "exception"
    assert says[0].attributes["socketio.namespace"] == "/chat"
    emit = by_trace(TRACE_B, "socketio.emit")
    assert len(emit) == 1 and emit[0].attributes["socketio.recipients"] == 1
    assert emit[0].parent.span_id in {s.context.span_id for s in says}
    join = [s for s in spans if s.name == "socketio.event.join"]
    assert len(join) == 1 and format(join[0].context.trace_id, "032x") not in (TRACE_A, TRACE_B)  # no context: own trace

    logs = chat.log_records()
    said = [r for r in logs if "says" in str(r.body)]
    assert len(said) == 1 and format(said[0].trace_id, "032x") == TRACE_B
    errors = [r for r in logs if "handler failed" in str(r.body)]
    assert len(errors) == 1 and format(errors[0].trace_id, "032x") == TRACE_B

    # the latency bucket of a sampled event links to its trace (OpenMetrics exemplar)
    exposition = await chat.scrape(accept="application/openmetrics-text; version=1.0.0")
    assert any('type="say"' in line and f'trace_id="{TRACE_B}"' in line for line in exposition.splitlines())
    await a.disconnect()


async def test_malformed_packets_are_counted(chat):
    async with RawEngineIO(chat.port) as raw:
        await raw.connect_namespace("/", {})
        await raw.ws.send("49garbage")  # an Engine.IO message whose Socket.IO packet type does not exist
        await eventually(lambda: value(chat.samples(), "websocket_errors_total", reason="malformed") == 1, what="malformed")


async def test_metrics_endpoint_serves_the_catalog_names(chat):
    text = await chat.scrape()
    names = {f.name for f in text_string_to_metric_families(text)}
    from exporter import catalog

    assert {m.base_name for m in catalog.CATALOG} <= names
    assert "socketio_disconnections" in names


async def test_asgi_metrics_app_answers_metrics_and_hands_on_the_rest(chat):
    from exporter.socketio import asgi_metrics_app

    async def other(scope, receive, send):
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = asgi_metrics_app(chat.telemetry, other_asgi_app=other)
    sent: list = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    await app({"type": "http", "method": "GET", "path": "/metrics", "headers": []}, receive, send)
    assert sent[0]["status"] == 200 and b"websocket_connections_total" in sent[1]["body"]
    sent.clear()
    await app({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    assert sent[0]["status"] == 418


def test_instrumenting_twice_or_a_non_server_is_refused():
    import exporter

    sio = socketio.AsyncServer(async_mode="aiohttp")
    instrumentation = exporter.instrument_socketio(sio, log_stdout=False, environ={})
    try:
        with pytest.raises(ValueError, match="already instrumented"):
            exporter.instrument_socketio(sio, instrumentation.telemetry)
        with pytest.raises(ValueError, match="socketio.AsyncServer"):
            exporter.instrument_socketio(object(), instrumentation.telemetry)
        with pytest.raises(ValueError, match="not both"):
            exporter.instrument_socketio(socketio.AsyncServer(async_mode="aiohttp"), instrumentation.telemetry,
                                         service_name="x")
    finally:
        instrumentation.shutdown(1)


def test_exporter_imports_without_python_socketio():
    code = ("import sys; sys.modules['socketio'] = None; sys.modules['engineio'] = None\n"
            "import exporter, exporter.catalog, exporter.socketio\n"
            "assert callable(exporter.instrument_socketio)\n"
            "try:\n    exporter.instrument_socketio(object())\nexcept ImportError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "needs python-socketio 5.x" in result.stdout


# ------------------------------------------------------------- two processes behind Redis


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return metric_samples(response.read().decode())


def start_chat(processes, port: int, redis_url: str, otlp: str, name: str):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OTEL_SERVICE_NAME": name,
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BLRP_SCHEDULE_DELAY": "100"}
    if otlp:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp
    argv = [sys.executable, "-m", "instrumented_server.socketio_chat", "--port", str(port)]
    proc = processes.start(argv + (["--redis-url", redis_url] if redis_url else []), env=env, cwd=REPO)
    wait_for_port(port, timeout=DEADLINE, proc=proc)
    return proc


async def test_two_processes_behind_the_redis_manager(processes, redis_server):
    sink = HttpSink()
    try:
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            start_chat(processes, port, redis_server.url, sink.url, f"chat-{i}")
        ann = await client(f"http://127.0.0.1:{ports[0]}", namespaces=["/chat"], auth={"user": "ann"})
        bob = await client(f"http://127.0.0.1:{ports[1]}", namespaces=["/chat"], auth={"user": "bob"})
        got: dict[str, list] = {"ann": [], "bob": []}
        ann.on("chat_message", got["ann"].append, namespace="/chat")
        bob.on("chat_message", got["bob"].append, namespace="/chat")
        await ann.call("join", {"room": "r"}, namespace="/chat", timeout=DEADLINE)
        await bob.call("join", {"room": "r"}, namespace="/chat", timeout=DEADLINE)

        await ann.call("say", {"room": "r", "text": "across", "traceparent": traceparent(TRACE_A)}, namespace="/chat",
                       timeout=DEADLINE)
        await eventually(lambda: got["ann"] and got["bob"], what="the message on both processes")
        assert got["bob"][0]["text"] == "across"

        def counted():
            a, b = scrape(ports[0]), scrape(ports[1])
            return (value(a, "websocket_fanout_messages_total") >= 1 and value(b, "websocket_fanout_messages_total") >= 1
                    and value(b, "websocket_broker_lag_seconds_count", broker="redis") >= 1) and (a, b)

        a, b = await eventually(counted, what="fan-out counted on both")
        # each process counts its own recipients once: one on each side of the backplane
        assert value(a, "websocket_messages_sent_total", type="chat_message") == 1
        assert value(b, "websocket_messages_sent_total", type="chat_message") == 1
        assert value(a, "websocket_messages_received_total", type="say") == 1
        assert value(b, "websocket_messages_received_total", type="say") == 0
        assert value(a, "websocket_subscriptions", namespace="/chat") == 1
        assert value(b, "websocket_subscriptions", namespace="/chat") == 1
        assert value(b, "websocket_broker_lag_seconds_sum", broker="redis") < 5
        assert value(a, "websocket_errors_total", reason="broker") == 0

        def remote_delivery():
            for resource, span in sink.spans():
                service = {kv.key: kv.value.string_value for kv in resource.attributes}.get("service.name")
                if service == "chat-1" and span.name == "socketio.emit" and span.trace_id.hex() == TRACE_A:
                    return span
            return None

        span = await eventually(remote_delivery, what="chat-1's delivery span in the client's trace")
        assert span.kind == 5  # SPAN_KIND_CONSUMER: continued from the Redis message
        says = await eventually(lambda: [s for r, s in sink.spans() if s.name == "socketio.event.say"
                                         and s.trace_id.hex() == TRACE_A], what="chat-0's span of the say")
        assert len(says) == 1
        await ann.disconnect()
        await bob.disconnect()
    finally:
        sink.close()


# ------------------------------------------------- the stack reads a Socket.IO service unchanged


def _queries(bundle) -> list[str]:
    """Every PromQL expression of the rendered rules and of the dashboards' Prometheus targets."""
    import yaml

    exprs: list[str] = []
    for path, content in bundle.items():
        if path.startswith("prometheus/rules/"):
            for group in yaml.safe_load(content)["groups"]:
                exprs += [rule["expr"] for rule in group["rules"]]
        elif path.startswith("grafana/dashboards/"):
            def walk(node):
                if isinstance(node, dict):
                    if "expr" in node and node.get("datasource", {}).get("type") == "prometheus":
                        exprs.append(node["expr"])
                    for child in node.values():
                        walk(child)
                elif isinstance(node, list):
                    for child in node:
                        walk(child)

            walk(json.loads(content))
    return exprs


OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def _matches(matcher, labels: dict) -> bool:
    import re

    actual = labels.get(matcher.name, "")
    op = str(matcher.op).rsplit(".", 1)[-1]
    return {"Equal": actual == matcher.value, "NotEqual": actual != matcher.value,
            "Re": re.fullmatch(matcher.value, actual) is not None,
            "NotRe": re.fullmatch(matcher.value, actual) is None}[op]


async def test_the_alert_pack_slos_and_dashboards_select_the_socketio_series(chat):
    """Render tests/stack/specs/socketio-chat.yaml; every selector of its rules and dashboard queries
    that names a catalog metric selects a series of the chat server's own /metrics."""
    import promql_parser

    from exporter import catalog
    from stack.load import load_spec_file
    from stack.render import render_bundle
    from stack.spec import grafana_promql_for_parsing

    a = await client(chat.url)
    await a.call("join", {"room": "r"}, namespace="/chat", timeout=DEADLINE)
    await a.call("say", {"room": "r", "text": "hi"}, namespace="/chat", timeout=DEADLINE)
    await a.emit("say", {"room": "r"}, namespace="/chat")  # an error
    await eventually(lambda: value(chat.samples(), "websocket_errors_total", reason="internal") == 1, what="error")
    await a.eio.ws.close()  # an abnormal end (1006), which the drop-rate alert counts
    await eventually(lambda: value(chat.samples(), "websocket_disconnections_total", code="1006") == 2, what="drop")
    series = [(s.name, s.labels) for f in text_string_to_metric_families(await chat.scrape()) for s in f.samples]

    names = {m.name for m in (*catalog.CATALOG, *catalog.SOCKETIO_CATALOG)}  # the disconnect reasons panel too
    # Broker lag appears with the broker that runs, and this server runs none (not pre-created, so no
    # panel draws a NaN line for it); test_two_processes_behind_the_redis_manager sees it with Redis.
    names.discard(catalog.BROKER_LAG_SECONDS.name)
    bundle = render_bundle(load_spec_file(REPO / "tests/stack/specs/socketio-chat.yaml"))
    checked = 0
    for expr in _queries(bundle):
        found = []
        promql_parser.walk(promql_parser.parse(grafana_promql_for_parsing(expr)),
                           lambda n: found.append(n) if isinstance(n, promql_parser.VectorSelector) else None)
        for selector in found:
            matchers = [m for m in selector.matchers.matchers
                        if m.name not in ("job", "instance", "service") and "$" not in m.value]
            if selector.name is None:  # {__name__=~"..."}: only when it is about catalog metrics
                if not any(all(_matches(m, {"__name__": n}) for m in matchers if m.name == "__name__") for n in names):
                    continue
            else:
                base = next((selector.name.removesuffix(sfx) for sfx in ("_bucket", "_sum", "_count")
                             if selector.name.removesuffix(sfx) in names), selector.name)
                if base not in names:
                    continue  # recording rules, the stack's own metrics
                matchers.append(promql_parser.parse(f'{{__name__="{selector.name}"}}').matchers.matchers[0])
            assert any(all(_matches(m, {**labels, "__name__": name}) for m in matchers) for name, labels in series), \
                f"{{{', '.join(f'{m.name}{OPS[str(m.op).rsplit(chr(46), 1)[-1]]}{m.value!r}' for m in matchers)}}} (in {expr}) selects nothing"
            checked += 1
    assert checked > 40
    # the SLO's latency selector and the drop-rate alert's abnormal codes hold real Socket.IO traffic
    s = chat.samples()
    assert value(s, "websocket_message_duration_seconds_bucket", type="say", le="0.1") >= 1
    assert value(s, "websocket_disconnections_total", code="1006") == 2


async def test_socketio_loadgen_drives_the_chat_server(processes):
    port = free_port()
    start_chat(processes, port, "", "", "chat-load")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "instrumented_server.socketio_loadgen", "--url", f"http://127.0.0.1:{port}",
         "--clients", "6", "--rooms", "2", "--rate", "20", "--duration", "1.5", "--settle", "10",
         "--fault", "bad-say=2", "--fault", "no-auth=2", "--json", "--fail-on-loss"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["said"] > 10 and report["delivered"] == report["expected"] == report["said"] * 3
    assert report["faults"].get("no-auth: refused", 0) >= 1 and report["faults"].get("bad-say: sent", 0) >= 1
    s = await asyncio.to_thread(scrape, port)
    assert value(s, "websocket_messages_sent_total", type="chat_message") == report["delivered"]
    assert value(s, "websocket_fanout_messages_total") >= report["delivered"]
    assert value(s, "websocket_messages_received_total", type="say") == report["said"] + report["faults"]["bad-say: sent"]
    assert value(s, "websocket_errors_total", reason="internal") == report["faults"]["bad-say: sent"]
    assert value(s, "websocket_connections_total", status="auth_missing") == report["faults"]["no-auth: refused"]
