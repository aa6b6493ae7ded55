"""The SSE transport over real sockets on 127.0.0.1: a real HTTP client reads the event stream.

The client is ``instrumented_server.sse_client`` (raw asyncio streams, parsing the stream as the
HTML standard's EventSource does); one test reads the same stream with curl, an independent client.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from exporter.instrument import instrument
from instrumented_server.protocol import CloseCode
from instrumented_server.ratelimit import Rate
from instrumented_server.sse import parse_last_event_id
from instrumented_server.sse_client import SseClient, SseEvent, SseRefused
from tests.conftest import require_binary
from tests.server.server_support import (
    DEADLINE,
    Client,
    RecordingTelemetry,
    eventually,
    make_config,
    running_server,
    token,
)
from tests.server.test_server_sockets import http_get


async def open_stream(server, channels, tok: str | None = None, **kwargs) -> SseClient:
    return await SseClient.open("127.0.0.1", server.port, channels, token=tok, timeout=DEADLINE, **kwargs)


async def read_until(stream: SseClient, predicate, timeout: float = DEADLINE) -> list[dict]:
    """Envelopes read until one matches ``predicate``; AssertionError if the stream ends first."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        event = await stream.next(max(0.01, deadline - time.monotonic()))
        assert event is not None, f"stream ended; read {got}"
        got.append(event.json())
        if predicate(got[-1]):
            return got


async def messages(stream: SseClient, count: int, timeout: float = DEADLINE) -> list[SseEvent]:
    got: list[SseEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        event = await stream.next(max(0.01, deadline - time.monotonic()))
        assert event is not None, f"stream ended after {len(got)} messages"
        if event.json()["type"] == "message":
            got.append(event)
    return got


def is_ack(channel: str):
    return lambda e: e["type"] == "ack" and e["payload"]["channel"] == channel


async def publish(publisher: Client, channel: str, values) -> None:
    for value in values:
        reply = await publisher.request("publish", {"channel": channel, "data": value})
        assert reply["type"] == "ack", reply


# ---------------------------------------------------------------------------- delivery


async def test_websocket_publications_reach_an_sse_stream_with_positions_as_ids():
    async with running_server(make_config(ping_interval=0.2)) as server:
        stream = await open_stream(server, ["room"], token("reader"))
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.retry_ms is None  # read with the first event
        first = await read_until(stream, is_ack("room"))
        assert first[0]["type"] == "connected" and first[0]["payload"]["user"] == "reader"
        epoch = first[-1]["payload"]["epoch"]
        assert stream.last_event_id == f"0:{epoch}"  # the ack set the position: nothing delivered yet
        async with Client.connect(server, token("pub")) as publisher:
            await publish(publisher, "room", range(5))
        got = await messages(stream, 5)
        assert [e.json()["payload"]["data"] for e in got] == list(range(5))
        assert [e.id for e in got] == [f"{i}:{epoch}" for i in range(1, 6)]  # id = offset:epoch
        assert stream.retry_ms == 2000
        # heartbeats are comments: EventSource ignores them, proxies see traffic
        before = stream.comments
        with pytest.raises(asyncio.TimeoutError):
            await stream.next(1.0)  # nothing but comments arrives meanwhile
        assert stream.comments > before
        stream.close()
        await eventually(lambda: not server.hub.sessions)


async def test_one_stream_carries_several_channels_and_its_id_holds_every_position():
    async with running_server() as server:
        stream = await open_stream(server, ["a", "b"], token("reader"))
        await read_until(stream, is_ack("b"))
        async with Client.connect(server, token("pub")) as publisher:
            await publish(publisher, "a", [1, 2])
            await publish(publisher, "b", [3])
        got = await messages(stream, 3)
        positions = [parse_last_event_id(e.id, 2) for e in got]
        assert [(p[0].offset, p[1].offset) for p in positions] == [(1, 0), (2, 0), (2, 1)]
        stream.close()


async def test_curl_reads_the_stream():
    curl = require_binary("curl")
    async with running_server() as server:
        proc = await asyncio.create_subprocess_exec(
            curl, "-sN", "--max-time", str(DEADLINE), "-H", f"Authorization: Bearer {token('curl')}",
            f"http://127.0.0.1:{server.port}/sse?channel=room", stdout=subprocess.PIPE)
        try:
            await eventually(lambda: any(s.subscriptions.get("room") and s.subscriptions["room"].live
                                         for s in server.hub.sessions.values()))
            async with Client.connect(server, token("pub")) as publisher:
                await publish(publisher, "room", ["hello"])
            lines: list[bytes] = []
            while not any(line.startswith(b"data: {\"type\":\"message\"") for line in lines):
                lines.append(await asyncio.wait_for(proc.stdout.readline(), DEADLINE))
            message = json.loads(lines[-1][len(b"data: "):])
            assert message["payload"]["data"] == "hello"
            assert lines[-2].startswith(b"id: 1:")
        finally:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------------------- resume


async def test_a_dropped_stream_resumes_with_last_event_id_nothing_lost_or_doubled():
    total = 60
    async with running_server(make_config(message_rate=Rate(0, 0))) as server:
        stream = await open_stream(server, ["room", "other"], token("reader"))
        await read_until(stream, is_ack("other"))
        received: list[tuple[str, int]] = []
        async with Client.connect(server, token("pub")) as publisher:
            async def publish_all():
                for i in range(total):
                    await publish(publisher, "room" if i % 3 else "other", [i])
                    await asyncio.sleep(0.005)

            publishing = asyncio.ensure_future(publish_all())
            for event in await messages(stream, 12):
                payload = event.json()["payload"]
                received.append((payload["channel"], payload["offset"]))
            last_id = stream.last_event_id
            stream.reset()  # an abrupt drop (RST) mid-stream, while publications keep coming
            await asyncio.sleep(0.1)  # some publications happen while nobody is connected
            resumed = await open_stream(server, ["room", "other"], token("reader"), last_event_id=last_id)
            head = await read_until(resumed, is_ack("other"))  # room's replay comes before other's ack
            assert all(e["payload"].get("recovered") for e in head if e["type"] == "ack")
            await publishing
            rest = [(e["payload"]["channel"], e["payload"]["offset"]) for e in head if e["type"] == "message"]
            while len(received) + len(rest) < total:
                event = (await messages(resumed, 1))[0]
                payload = event.json()["payload"]
                rest.append((payload["channel"], payload["offset"]))
            with pytest.raises(asyncio.TimeoutError):
                await resumed.next(0.3)  # and nothing more: no duplicate
        got = received + rest
        for channel, count in (("room", total - total // 3), ("other", total // 3)):
            assert [o for c, o in got if c == channel] == list(range(1, count + 1)), channel
        resumed.close()


async def test_a_gap_older_than_history_gets_a_resync_event():
    async with running_server(make_config(history_size=5, message_rate=Rate(0, 0))) as server:
        stream = await open_stream(server, ["room"], token("reader"))
        await read_until(stream, is_ack("room"))
        async with Client.connect(server, token("pub")) as publisher:
            await publish(publisher, "room", [0])
            last_id = (await messages(stream, 1))[0].id
            stream.close()
            await publish(publisher, "room", range(1, 21))  # 20 more: offset 2 left the 5-long history
            resumed = await open_stream(server, ["room"], token("reader"), last_event_id=last_id)
            events = await read_until(resumed, lambda e: e["type"] == "resync")
            ack = next(e for e in events if e["type"] == "ack")
            assert ack["payload"]["recovered"] is False and ack["payload"]["offset"] == 21
            resync = events[-1]["payload"]
            assert resync == {"channel": "room", "epoch": ack["payload"]["epoch"], "offset": 21,
                              "reason": "offset no longer in history"}
            assert resumed.last_event_id == f"21:{ack['payload']['epoch']}"  # reconnecting again re-reports no gap
            await publish(publisher, "room", ["live"])
            live = (await messages(resumed, 1))[0].json()["payload"]
            assert (live["offset"], live["data"]) == (22, "live")
        resumed.close()


async def test_a_last_event_id_of_another_epoch_gets_a_resync():
    async with running_server() as server:
        stream = await open_stream(server, ["room"], token("reader"), last_event_id="3:deadbeef")
        events = await read_until(stream, lambda e: e["type"] == "resync")
        assert events[-1]["payload"]["reason"] == "epoch changed"
        stream.close()


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kwargs,status,text", [
    ({}, 401, "authentication required"),
    ({"tok": "not-a-jwt"}, 401, "authentication failed: malformed token"),
    ({"tok": token("late", ttl=-10)}, 401, "authentication failed: token expired"),
    ({"tok": token("evil"), "headers": {"Origin": "https://evil.example"}}, 403, "origin not allowed"),
    ({"tok": token("bob"), "channels": ["secure:vault"]}, 403, "forbidden: subscribe is not allowed on secure:vault"),
    ({"tok": token("bob"), "channels": ["nope:x"]}, 403, "unknown_namespace"),
    ({"tok": token("bob"), "channels": []}, 400, "name at least one channel"),
    ({"tok": token("bob"), "channels": ["a", "a"]}, 400, "named twice"),
    ({"tok": token("bob"), "channels": ["a", "b"], "last_event_id": "1:ab"}, 400, "1 position(s) for 2 channel(s)"),
    ({"tok": token("bob"), "last_event_id": "x:y"}, 400, "is not <offset>:<epoch>"),
])
async def test_bad_requests_are_refused_with_a_status_and_a_reason(kwargs, status, text):
    telemetry = RecordingTelemetry()
    channels = kwargs.pop("channels", ["room"])
    async with running_server(telemetry=telemetry) as server:
        with pytest.raises(SseRefused) as refused:
            await open_stream(server, channels, kwargs.pop("tok", None), **kwargs)
        assert refused.value.status == status
        assert text in refused.value.body
        if status == 401:
            assert refused.value.headers["www-authenticate"] == "Bearer"
        assert not server.hub.sessions
        assert [args[1] for args in telemetry.named("connection_rejected")] == ["sse"]


async def test_a_token_in_the_query_string_is_never_read():
    async with running_server() as server:
        with pytest.raises(SseRefused) as refused:  # a valid token, but in the URL: ignored
            await open_stream(server, ["room"], query={"token": token("alice")})
        assert refused.value.status == 401
        assert "a token in the URL is never read" in refused.value.body
        # with the token in a header, a token parameter changes nothing (it is not even checked)
        stream = await open_stream(server, ["room"], token("alice"), query={"access_token": "garbage"})
        assert (await read_until(stream, is_ack("room")))[0]["payload"]["user"] == "alice"
        stream.close()


async def test_the_cookie_authenticates_a_browser_stream_and_origin_gets_cors_headers():
    config = make_config(allowed_origins=("https://app.example",))
    async with running_server(config) as server:
        stream = await open_stream(server, ["room"], cookie=f"theme=dark; obsgen_token={token('carol')}",
                                   headers={"Origin": "https://app.example"})
        assert (await read_until(stream, is_ack("room")))[0]["payload"]["user"] == "carol"
        assert stream.headers["access-control-allow-origin"] == "https://app.example"
        assert stream.headers["access-control-allow-credentials"] == "true"
        stream.close()


async def test_per_ip_connection_limit_counts_streams_too():
    async with running_server(make_config(max_connections_per_ip=1)) as server:
        stream = await open_stream(server, ["room"], token("a"))
        await read_until(stream, is_ack("room"))
        with pytest.raises(SseRefused) as refused:
            await open_stream(server, ["room"], token("a"))
        assert refused.value.status == 429
        stream.close()
        await eventually(lambda: not server.hub.sessions)
        again = await open_stream(server, ["room"], token("a"))  # the slot was given back
        again.close()


# ---------------------------------------------------------------------------- limits and lifecycle


async def test_a_slow_reader_is_cut_off_while_a_fast_one_keeps_up():
    config = make_config(max_outgoing_buffer=256 * 1024, message_rate=Rate(0, 0), close_timeout=2.0)
    telemetry = RecordingTelemetry()
    count = 200  # 10 MB: more than the kernel's socket buffers can hide
    async with running_server(config, telemetry=telemetry) as server:
        slow = await open_stream(server, ["room"], token("slow"), receive_buffer=4096)
        fast = await open_stream(server, ["room"], token("fast"))
        await read_until(slow, is_ack("room"))
        await read_until(fast, is_ack("room"))
        slow_session = next(s for s in server.hub.sessions.values() if s.user == "slow")
        reading = asyncio.ensure_future(messages(fast, count, timeout=2 * DEADLINE))
        async with Client.connect(server, token("pub")) as publisher:
            blob = "x" * 50_000
            for i in range(count):
                await publisher.send("publish", {"channel": "room", "data": {"i": i, "blob": blob}})
                await asyncio.sleep(0)
            assert [e.json()["payload"]["data"]["i"] for e in await reading] == list(range(count))
        await eventually(lambda: slow_session.close_code == CloseCode.SLOW_CONSUMER)
        await eventually(lambda: slow_session.id not in server.hub.sessions)  # aborted after close_timeout
        assert ("default", CloseCode.SLOW_CONSUMER, "sse") in telemetry.named("connection_closed")
        fast.close()


async def test_shutdown_drains_streams_with_a_close_event_then_refuses_new_ones():
    config = make_config(drain_delay=0.5)
    server_cm = running_server(config)
    server = await server_cm.__aenter__()
    try:
        stream = await open_stream(server, ["room"], token("reader"))
        await read_until(stream, is_ack("room"))
        shutting_down = asyncio.ensure_future(server.shutdown())
        await eventually(lambda: server.hub.draining)
        with pytest.raises(SseRefused) as refused:  # during --drain-delay: 503, to another instance
            await open_stream(server, ["room"], token("late"))
        assert refused.value.status == 503
        close = await read_until(stream, lambda e: e["type"] == "close")
        assert close[-1]["payload"] == {"code": 1001, "reason": "server going away: reconnect"}
        assert await stream.next(DEADLINE) is None  # then the response ends
        started = time.monotonic()
        await asyncio.wait_for(shutting_down, DEADLINE)
        assert time.monotonic() - started < DEADLINE
        assert not server.hub.sessions
    finally:
        await server_cm.__aexit__(None, None, None)


async def test_an_expired_token_ends_the_stream_with_4006_and_a_fresh_one_resumes():
    async with running_server() as server:
        stream = await open_stream(server, ["room"], token("reader", ttl=1.5))
        await read_until(stream, is_ack("room"))
        async with Client.connect(server, token("pub")) as publisher:
            await publish(publisher, "room", [1])
            last_id = (await messages(stream, 1))[0].id
            close = await read_until(stream, lambda e: e["type"] == "close", timeout=DEADLINE)
            assert close[-1]["payload"]["code"] == CloseCode.TOKEN_EXPIRED
            await publish(publisher, "room", [2])
            resumed = await open_stream(server, ["room"], token("reader"), last_event_id=last_id)
            assert [e.json()["payload"]["data"] for e in await messages(resumed, 1)] == [2]
            resumed.close()


# ---------------------------------------------------------------------------- telemetry


async def test_metrics_and_delivery_spans_cover_sse():
    spans = InMemorySpanExporter()
    telemetry = instrument("sse-test", registry=CollectorRegistry(), span_exporter=spans, log_stdout=False,
                           export_interval=0.05, environ={})
    try:
        async with running_server(telemetry=telemetry) as server:
            stream = await open_stream(server, ["room"], token("reader"))
            await read_until(stream, is_ack("room"))
            with pytest.raises(SseRefused):
                await open_stream(server, ["room"])
            async with Client.connect(server, token("ws")) as ws, Client.connect(server, token("pub")) as publisher:
                await ws.request("subscribe", {"channel": "room"})
                await publish(publisher, "room", range(3))
                await messages(stream, 3)
                await ws.messages(3)
                _, _, body = await http_get(server.port, "/metrics")
            stream.close()
            await eventually(lambda: len(server.hub.sessions) == 0)
            _, _, after = await http_get(server.port, "/metrics")
        telemetry.force_flush(5)
        await eventually(lambda: len([s for s in spans.get_finished_spans() if s.name == "ws.deliver"]) == 3)
    finally:
        telemetry.shutdown(2)
    text = body.decode()
    for line in ('websocket_active_connections{namespace="default",transport="sse"} 1.0',
                 'websocket_active_connections{namespace="default",transport="websocket"} 2.0',
                 'websocket_connections_total{status="accepted",transport="sse"} 1.0',
                 'websocket_connections_total{status="auth_missing",transport="sse"} 1.0',
                 'websocket_fanout_messages_total{transport="sse"} 3.0',
                 'websocket_fanout_messages_total{transport="websocket"} 3.0',
                 'websocket_messages_sent_total{transport="sse",type="message"} 3.0',
                 'websocket_messages_sent_total{transport="websocket",type="message"} 3.0'):
        assert line in text, line
    assert 'websocket_disconnections_total{code="1000",transport="sse"} 1.0' in after.decode()
    deliver = [s for s in spans.get_finished_spans() if s.name == "ws.deliver"]
    # one span per fan-out, covering both transports' recipients
    assert [s.attributes["messaging.batch.message_count"] for s in deliver] == [2, 2, 2]
    assert [s.attributes["ws.sse_recipients"] for s in deliver] == [1, 1, 1]


# ---------------------------------------------------------------------------- load generator


def test_loadgen_drives_sse_subscribers_with_drops_and_counts_every_delivery(processes, tmp_path):
    import subprocess as sp
    import sys
    import urllib.request

    from tests.conftest import free_port, wait_for_port
    from tests.server.server_support import AUTH

    secret_file = tmp_path / "secret"
    secret_file.write_text(AUTH.secret)
    port = free_port()
    server = processes.start([sys.executable, "-m", "instrumented_server", "--port", str(port),
                              "--jwt-secret-file", str(secret_file), "--logs", "none", "--drain-timeout", "2"])
    wait_for_port(port, timeout=DEADLINE, proc=server)
    result = sp.run(
        [sys.executable, "-m", "instrumented_server.loadgen", "--url", f"ws://127.0.0.1:{port}/",
         "--jwt-secret-file", str(secret_file), "--subscribers", "4", "--sse-subscribers", "6", "--channels", "2",
         "--rate", "40", "--duration", "2", "--settle", "1", "--fault", "disconnect=3", "--json", "--fail-on-loss"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sse_connections"] == 6 and report["connections"] == 4
    assert report["published"] == 80 and report["expected"] == 80 * 5  # 10 subscribers over 2 channels
    assert report["missing"] == 0 and report["out_of_order"] == 0 and report["resyncs"] == 0
    assert report["faults"]["disconnect -> reset"] >= 3 and report["reconnects"] >= 1
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE).read().decode()
    sent = next(line for line in metrics.splitlines()
                if line.startswith('websocket_messages_sent_total{transport="sse",type="message"}'))
    assert float(sent.split()[-1]) >= 80 * 3  # each publish reaches the 3 SSE streams of its channel (live or replayed)


# ---------------------------------------------------------------------------- the encoding (no I/O)


def test_last_event_id_round_trips_and_refuses_what_it_did_not_make():
    from instrumented_server.protocol import Recover
    from instrumented_server.sse import (
        NO_POSITION,
        StreamRequestError,
        format_position,
        id_line,
        parse_stream_request,
    )

    line = id_line([format_position(42, "9f3a1c07"), NO_POSITION, format_position(0, "0b12ee54")])
    assert line == b"id: 42:9f3a1c07,-,0:0b12ee54\n"
    assert parse_last_event_id(line[4:-1].decode(), 3) == (Recover(42, "9f3a1c07"), None, Recover(0, "0b12ee54"))
    request = parse_stream_request("channel=a&channel=%24secret%23alice&token=x", None, 128)
    assert request.channels == ("a", "$secret#alice") and request.url_token
    assert parse_stream_request("channel=a&last_event_id=5%3Aab", None, 8).positions == (Recover(5, "ab"),)
    assert parse_stream_request("channel=a&last_event_id=5%3Aab", "6:ab", 8).positions == (Recover(6, "ab"),)
    for bad in ("1:a,2:b", "-1:a", "1:a b", "1", "99999999999999999999:a", ""):
        with pytest.raises(StreamRequestError):
            parse_last_event_id(bad, 1)
    with pytest.raises(StreamRequestError, match="at most 2 channels"):
        parse_stream_request("channel=a&channel=b&channel=c", None, 2)
