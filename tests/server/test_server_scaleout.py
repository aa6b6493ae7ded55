"""Several server processes over a real Redis: a process killed mid-stream loses its clients to another
process, where they resume from their offsets with nothing lost and nothing twice."""

from __future__ import annotations

import asyncio
import signal
import sys

from instrumented_server.client import Backoff, Client
from tests.conftest import free_port, wait_for_port
from tests.server.server_support import AUTH, DEADLINE, eventually


def start_server(processes, redis_url: str, secret_file: str):
    port = free_port()
    proc = processes.start([sys.executable, "-m", "instrumented_server", "--port", str(port), "--broker", "redis",
                            "--redis-url", redis_url, "--jwt-secret-file", secret_file, "--no-telemetry",
                            "--message-rate", "0"])
    wait_for_port(port, timeout=DEADLINE, proc=proc)  # a Python start-up on a loaded machine takes seconds
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
        await eventually(lambda: len([e for e in events if e["type"] == "message"]) >= total)
        await asyncio.sleep(0.3)  # anything extra would show now
        messages = [e for e in events if e["type"] == "message"]
        assert [m["payload"]["data"] for m in messages] == list(range(total))
        assert [m["payload"]["offset"] for m in messages] == list(range(1, total + 1))
        assert subscriber.url == url_b and subscriber.stats.reconnects >= 1
        assert [e for e in events if e["type"] == "resync"] == []
    finally:
        await subscriber.close()
        await publisher.close()


async def test_redis_restart_degrades_to_local_delivery_and_recovers(redis_server):
    from instrumented_server.broker.redis import RedisBroker
    from tests.server.server_support import RecordingTelemetry, make_config, running_server

    telemetry = RecordingTelemetry()
    # A generous command timeout (0.3 s can time out connecting under load); Redis killed refuses
    # connections at once, so the outage below is seen without waiting for it.
    broker = RedisBroker(url=redis_server.url, timeout=3.0, backoff_initial=0.05, backoff_max=0.2)
    async with running_server(make_config(), broker=broker, telemetry=telemetry) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        events: list[dict] = []
        async with Client(url, AUTH.mint("sub"), on_event=events.append) as subscriber, \
                Client(url, AUTH.mint("pub"), request_timeout=DEADLINE) as publisher:
            await subscriber.subscribe("room")
            assert (await publisher.publish("room", "stored"))["offset"] == 1

            redis_server.kill()  # no persistence: everything in Redis is gone
            outcomes = []
            for i in range(5):
                try:
                    await publisher.publish("room", f"during-{i}")
                    outcomes.append("acked")
                except Exception as exc:
                    outcomes.append(getattr(exc, "code", type(exc).__name__))
            assert "acked" not in outcomes and "unavailable" in outcomes
            assert ("broker",) in telemetry.named("error")

            redis_server.start()
            await eventually(lambda: broker.healthy)
            ack = None
            deadline = asyncio.get_running_loop().time() + DEADLINE
            while ack is None and asyncio.get_running_loop().time() < deadline:
                try:  # the first publishes may still meet the old connection
                    ack = await publisher.publish("room", "after")
                except Exception:
                    await asyncio.sleep(0.1)
            assert ack is not None
            await eventually(lambda: any(e["type"] == "message" and e["payload"]["data"] == "after" for e in events))
            types = [(e["type"], e["payload"].get("data")) for e in events]
            # stored before; delivered locally (offset 0) during the outage; then a new epoch: resync, and on
            assert types[0] == ("message", "stored")
            assert types.index(("resync", None)) < types.index(("message", "after")) == len(types) - 1
            local = [e for e in events if e["type"] == "message" and e["payload"]["offset"] == 0]
            assert local and all(e["payload"]["data"].startswith("during-") for e in local)
            assert len(types) == 1 + len(local) + 2  # nothing else, nothing twice
