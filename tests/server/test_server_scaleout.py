"""Several server processes over a real Redis: a process killed mid-stream loses its clients to another
process, where they resume from their offsets with nothing lost and nothing twice."""

from __future__ import annotations

import asyncio
import signal
import sys

from instrumented_server.client import Backoff, Client
from tests.conftest import free_port, wait_for_port
from tests.server.server_support import AUTH, eventually


def start_server(processes, redis_url: str, secret_file: str):
    port = free_port()
    proc = processes.start([sys.executable, "-m", "instrumented_server", "--port", str(port), "--broker", "redis",
                            "--redis-url", redis_url, "--jwt-secret-file", secret_file, "--no-telemetry",
                            "--message-rate", "0"])
    wait_for_port(port, proc=proc)
    return proc, f"ws://127.0.0.1:{port}/"


async def test_killed_process_clients_resume_on_another_without_loss_or_duplicates(processes, redis_server, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(AUTH.secret)
    proc_a, url_a = start_server(processes, redis_server.url, str(secret_file))
    proc_b, url_b = start_server(processes, redis_server.url, str(secret_file))

    events: list[dict] = []
    subscriber = Client([url_a, url_b], AUTH.mint("sub"), backoff=Backoff(initial=0.05, cap=0.2),
                        on_event=events.append)
    publisher = Client(url_b, AUTH.mint("pub"))
    await subscriber.start()
    await publisher.start()
    try:
        await subscriber.subscribe("room")
        total = 60

        async def publish_all():
            for i in range(total):
                await publisher.publish("room", i)
                await asyncio.sleep(0.01)

        publishing = asyncio.ensure_future(publish_all())
        await eventually(lambda: len(events) >= 15)  # the subscriber on A gets B's publications
        proc_a.send_signal(signal.SIGKILL)  # a crash: no drain, no close frames
        await publishing
        await eventually(lambda: len([e for e in events if e["type"] == "message"]) >= total, timeout=15)
        await asyncio.sleep(0.3)  # anything extra would show now
        messages = [e for e in events if e["type"] == "message"]
        assert [m["payload"]["data"] for m in messages] == list(range(total))
        assert [m["payload"]["offset"] for m in messages] == list(range(1, total + 1))
        assert subscriber.url == url_b and subscriber.stats.reconnects >= 1
        assert [e for e in events if e["type"] == "resync"] == []
    finally:
        await subscriber.close()
        await publisher.close()
