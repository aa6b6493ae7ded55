"""SSE across server processes over a real redis-server: a WebSocket publish on one process reaches
an SSE stream on another, and a stream dropped on one process resumes on the other from its
Last-Event-ID with nothing lost and nothing twice."""

from __future__ import annotations

import asyncio
import sys
import urllib.request

from instrumented_server.client import Client
from instrumented_server.sse_client import SseClient
from tests.conftest import free_port, wait_for_port
from tests.server.server_support import AUTH, DEADLINE


def start_server(processes, redis_url: str, secret_file: str) -> int:
    port = free_port()
    proc = processes.start([sys.executable, "-m", "instrumented_server", "--port", str(port), "--broker", "redis",
                            "--redis-url", redis_url, "--jwt-secret-file", secret_file, "--message-rate", "0",
                            "--logs", "none"])
    wait_for_port(port, timeout=DEADLINE, proc=proc)
    return port


async def messages(stream: SseClient, count: int) -> list[dict]:
    got = []
    while len(got) < count:
        event = await stream.next(DEADLINE)
        assert event is not None, f"stream ended after {len(got)} messages"
        if event.json()["type"] == "message":
            got.append(event.json()["payload"])
    return got


async def wait_live(stream: SseClient, channel: str) -> None:
    while True:
        event = await stream.next(DEADLINE)
        assert event is not None
        envelope = event.json()
        if envelope["type"] == "ack" and envelope["payload"]["channel"] == channel:
            return


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE).read().decode()


async def test_sse_across_processes_over_redis(processes, redis_server, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(AUTH.secret)
    port_a = start_server(processes, redis_server.url, str(secret_file))
    port_b = start_server(processes, redis_server.url, str(secret_file))

    publisher = Client(f"ws://127.0.0.1:{port_a}/", AUTH.mint("pub"))
    await publisher.start()
    try:
        stream = await SseClient.open("127.0.0.1", port_b, ["room"], token=AUTH.mint("reader"), timeout=DEADLINE)
        await wait_live(stream, "room")
        for i in range(10):
            await publisher.publish("room", i)  # WebSocket on A ...
        first = await messages(stream, 10)  # ... SSE on B
        assert [m["data"] for m in first] == list(range(10))
        last_id = stream.last_event_id
        assert last_id.startswith("10:")
        assert 'websocket_fanout_messages_total{transport="sse"} 10.0' in await asyncio.to_thread(scrape, port_b)
        stream.reset()

        for i in range(10, 25):  # published while the stream is gone
            await publisher.publish("room", i)
        resumed = await SseClient.open("127.0.0.1", port_a, ["room"], token=AUTH.mint("reader"),
                                       last_event_id=last_id, timeout=DEADLINE)  # on the other process
        for i in range(25, 30):
            await publisher.publish("room", i)
        rest = await messages(resumed, 20)
        assert [m["data"] for m in rest] == list(range(10, 30))
        assert [m["offset"] for m in rest] == list(range(11, 31))
        try:
            extra = await resumed.next(0.3)
        except asyncio.TimeoutError:
            extra = None
        assert extra is None or extra.json()["type"] != "message"
        metrics_a = await asyncio.to_thread(scrape, port_a)
        assert 'websocket_reconnects_total{outcome="replayed"} 1.0' in metrics_a
        assert 'websocket_active_connections{namespace="default",transport="sse"} 1.0' in metrics_a
        resumed.close()
    finally:
        await publisher.close()
