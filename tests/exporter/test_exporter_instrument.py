"""instrument(): the hooks contract, argument checks, and a real websockets server in one call."""

from __future__ import annotations

import asyncio
import inspect
import urllib.request

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosedError

import exporter
from exporter.hooks import NoopTelemetry
from exporter.instrument import Telemetry, instrument

HOOKS = sorted(name for name, value in vars(NoopTelemetry).items() if callable(value) and not name.startswith("_"))


def make(**kwargs):
    kwargs.setdefault("log_stdout", False)
    kwargs.setdefault("environ", {})
    kwargs.setdefault("logger", "tests.exporter.instrument")
    return instrument("instrument-test", **kwargs)


def samples(t, family: str) -> dict:
    for f in text_string_to_metric_families(t.exposition()[0].decode()):
        if f.name == family:
            return {tuple(sorted(s.labels.items())): s.value for s in f.samples if not s.name.endswith("_bucket")}
    raise AssertionError(family)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_exists_with_the_same_signature(hook):
    assert inspect.signature(getattr(Telemetry, hook)) == inspect.signature(getattr(NoopTelemetry, hook))


def test_package_level_instrument_works_after_the_module_was_imported():
    import exporter.instrument  # noqa: F401 - the import that puts the module on the package

    t = exporter.instrument("pkg", log_stdout=False, environ={})
    try:
        assert isinstance(t, Telemetry) and t.settings.service_name == "pkg"
    finally:
        t.shutdown(1)


@pytest.mark.parametrize("kwargs,message", [
    ({"export_timeout": -1}, "export_timeout must be a positive number"),
    ({"queue_size": 0}, "queue_size must be a positive number"),
    ({"export_interval": "soon"}, "export_interval must be a positive number"),
    ({"logger": 5}, "logger must be a logging.Logger"),
    ({"log_level": "LOUD"}, "log_level must be a logging level"),
    ({"otlp_endpoint": "4318"}, "http:// or https://"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


async def echo(connection):
    async for message in connection:
        if message == "crash":
            raise RuntimeError("handler bug")
        await connection.send(message)


@pytest.fixture
async def served():
    spans = InMemorySpanExporter()
    t = make(span_exporter=spans)
    handler = exporter.instrument_server(echo, t, namespace="echo")
    async with serve(handler, "127.0.0.1", 0, process_request=handler.process_request) as server:
        port = server.sockets[0].getsockname()[1]
        yield t, spans, port, handler
    t.shutdown(2)


async def until(predicate, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def test_instrument_server_counts_connections_messages_and_close_codes(served):
    t, spans, port, _ = served
    url = f"ws://127.0.0.1:{port}"
    async with connect(url) as client:
        for text in ("a", "bb", "é"):
            await client.send(text)
            assert await client.recv() == text
        assert samples(t, "websocket_active_connections") == {(("namespace", "echo"), ("transport", "websocket")): 1.0}
    async with connect(url) as client:
        await client.close(4001, "auth required")
    async with connect(url) as client:
        await client.send("crash")
        with pytest.raises(ConnectionClosedError):
            await client.recv()
        assert client.close_code == 1011

    # (the normal close code is pre-created at 0 for each transport: only codes that moved count)
    closed = lambda: {k: v for k, v in samples(t, "websocket_disconnections").items() if v}  # noqa: E731
    assert await until(lambda: sum(closed().values()) == 3), closed()
    assert closed() == {(("code", c), ("transport", "websocket")): 1.0 for c in ("1000", "4001", "1011")}
    assert samples(t, "websocket_active_connections") == {(("namespace", "echo"), ("transport", "websocket")): 0.0}
    assert samples(t, "websocket_connections")[(("status", "accepted"), ("transport", "websocket"))] == 3
    assert samples(t, "websocket_messages_received")[(("type", "message"),)] == 4
    assert samples(t, "websocket_messages_sent")[(("transport", "websocket"), ("type", "message"))] == 3
    body = t.exposition()[0].decode()
    assert 'websocket_message_size_bytes_count{direction="in"} 4.0' in body
    assert 'websocket_message_size_bytes_sum{direction="in"} 10.0' in body  # a, bb, é (2 bytes), crash
    assert 'websocket_message_size_bytes_sum{direction="out"} 5.0' in body
    assert samples(t, "websocket_errors")[(("reason", "internal"),)] == 1

    t.force_flush(5)
    connections = [s for s in spans.get_finished_spans() if s.name == "websocket.connection"]
    assert len(connections) == 3 and {s.kind for s in connections} == {SpanKind.SERVER}
    assert sorted(s.status.status_code.name for s in connections) == ["ERROR", "UNSET", "UNSET"]
    assert all(s.attributes["websocket.namespace"] == "echo" for s in connections)
    assert any(s.status.status_code is StatusCode.ERROR and s.events[0].attributes["exception.type"] == "RuntimeError"
               for s in connections)


async def test_message_sizes_are_bytes(served):
    t, _, port, _ = served
    async with connect(f"ws://127.0.0.1:{port}") as client:
        await client.send("é" * 10)  # 20 bytes in UTF-8
        await client.recv()
    body = t.exposition()[0].decode()
    assert 'websocket_message_size_bytes_sum{direction="in"} 20.0' in body
    assert 'websocket_message_size_bytes_sum{direction="out"} 20.0' in body


async def test_metrics_are_served_on_the_websocket_port(served):
    t, _, port, _ = served

    def get(accept: str | None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()

    status, content_type, body = await asyncio.to_thread(get, None)
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    # The process collector's samples (CPU seconds, memory) move between two expositions.
    def steady(exposition: bytes) -> list[bytes]:
        return [line for line in exposition.splitlines() if not line.startswith(b"process_")]

    assert steady(body) == steady(t.exposition()[0])
    assert b"\nprocess_open_fds " in body and b"\nprocess_max_fds " in body
    status, content_type, body = await asyncio.to_thread(get, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


async def test_broadcast_counts_one_fanout(served):
    t, _, port, _ = served
    received = []

    async def listener(connection):
        listeners.append(connection)
        await connection.wait_closed()

    listeners: list = []
    handler = exporter.instrument_server(listener, t, namespace="fanout")
    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        clients = [await connect(url) for _ in range(5)]
        assert await until(lambda: len(listeners) == 5)
        assert exporter.broadcast(listeners, "tick", t) == 5
        for client in clients:
            received.append(await client.recv())
            await client.close()
    assert received == ["tick"] * 5
    assert samples(t, "websocket_fanout_messages")[(("transport", "websocket"),)] == 5
    assert samples(t, "websocket_messages_sent")[(("transport", "websocket"), ("type", "message"))] == 5
    body = t.exposition()[0].decode()
    assert 'websocket_message_size_bytes_count{direction="out"} 5.0' in body


def test_instrument_server_builds_telemetry_from_arguments():
    handler = exporter.instrument_server(echo, service_name="own", log_stdout=False, environ={})
    try:
        assert handler.telemetry.settings.service_name == "own"
        with pytest.raises(ValueError, match="not both"):
            exporter.instrument_server(echo, handler.telemetry, service_name="x")
    finally:
        handler.telemetry.shutdown(1)


def test_no_global_providers_are_installed():
    from opentelemetry import _logs, trace
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter

    before = (trace.get_tracer_provider(), _logs.get_logger_provider())
    t = make(span_exporter=InMemorySpanExporter(), log_exporter=InMemoryLogRecordExporter(), logs="otlp")
    try:
        assert (trace.get_tracer_provider(), _logs.get_logger_provider()) == before
        assert t.tracing.provider is not before[0]
    finally:
        t.shutdown(1)
