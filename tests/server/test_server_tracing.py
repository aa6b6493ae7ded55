"""Traces through the server with the real exporter: one span per publish, one per fan-out, one trace."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from exporter.instrument import instrument
from tests.server.server_support import Client, eventually, running_server, token
from tests.server.test_server_sockets import http_get

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_publish_and_its_deliveries_share_the_client_trace():
    spans = InMemorySpanExporter()
    telemetry = instrument("trace-test", registry=CollectorRegistry(), span_exporter=spans, log_stdout=False,
                           export_interval=0.05, environ={})
    try:
        async with running_server(telemetry=telemetry) as server:
            async with Client.connect(server, token("sub")) as subscribers, Client.connect(server, token("pub")) as publisher:
                await subscribers.request("subscribe", {"channel": "room"})
                # a publisher that is itself traced sends its context in the envelope's metadata
                await publisher.connection.send(json.dumps({
                    "type": "publish", "payload": {"channel": "room", "data": "hello"},
                    "metadata": {"message_id": "p1", "traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"},
                }))
                message = (await subscribers.messages(1))[0]
                _, _, exposition = await http_get(server.port, "/metrics", {"Accept": "application/openmetrics-text"})
            telemetry.force_flush(5)
            await eventually(lambda: {"ws.publish", "ws.deliver"} <= {s.name for s in spans.get_finished_spans()})
    finally:
        telemetry.shutdown(2)

    finished = spans.get_finished_spans()
    publish = [s for s in finished if s.name == "ws.publish"]
    deliver = [s for s in finished if s.name == "ws.deliver"]
    assert len(publish) == 1 and len(deliver) == 1  # per publish and per fan-out, never per recipient
    trace_id = format(publish[0].context.trace_id, "032x")
    assert trace_id == CLIENT_TRACE
    assert deliver[0].context.trace_id == publish[0].context.trace_id
    assert deliver[0].parent.span_id == publish[0].context.span_id
    assert message["metadata"]["traceparent"].split("-")[1] == CLIENT_TRACE  # subscribers can continue it
    # the latency histogram links to the trace through an exemplar
    assert f'trace_id="{CLIENT_TRACE}"'.encode() in exposition


async def test_a_log_record_written_while_handling_carries_the_span_trace_id(capsys):
    from instrumented_server.broker.memory import MemoryBroker

    class FailingBroker(MemoryBroker):
        async def presence(self, channel):
            raise ConnectionError("backend down")

    spans = InMemorySpanExporter()
    telemetry = instrument("trace-test", registry=CollectorRegistry(), span_exporter=spans, log_stdout=True,
                           logger="instrumented_server", environ={})
    try:
        async with running_server(broker=FailingBroker(), telemetry=telemetry) as server:
            async with Client.connect(server, token()) as client:
                await client.request("subscribe", {"channel": "room"})
                await client.connection.send(json.dumps({
                    "type": "presence", "payload": {"channel": "room"},
                    "metadata": {"message_id": "q", "traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"},
                }))
                assert (await client.next())["payload"]["code"] == "unavailable"
    finally:
        telemetry.shutdown(2)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    failure = [r for r in records if "broker presence failed" in r.get("message", "")]
    assert failure and failure[0]["trace_id"] == CLIENT_TRACE
