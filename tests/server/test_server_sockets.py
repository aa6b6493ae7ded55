"""The server over real sockets on 127.0.0.1: every close code, replay, slow consumers, drain, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from instrumented_server.protocol import CloseCode
from instrumented_server.ratelimit import Rate
from tests.server.server_support import DEADLINE, Client, eventually, make_config, running_server, token


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    def get():
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    return await asyncio.to_thread(get)


@pytest.fixture
async def server():
    async with running_server() as server:
        yield server


# ---------------------------------------------------------------------------- authentication


async def test_missing_token_closes_4001(server):
    async with Client.connect(server, expect_connected=False) as client:
        assert await client.closed() == CloseCode.AUTH_REQUIRED


async def test_token_in_the_url_is_ignored(server):
    async with connect(f"ws://127.0.0.1:{server.port}/?token={token()}") as connection:
        await asyncio.sleep(0.1)
        with pytest.raises(Exception):
            await connection.recv()
        assert connection.close_code == CloseCode.AUTH_REQUIRED


async def test_bad_token_closes_4002(server):
    async with Client.connect(server, "not-a-token", expect_connected=False) as client:
        assert await client.closed() == CloseCode.AUTH_FAILED
        assert "authentication failed" in client.connection.close_reason


async def test_expired_token_closes_4002(server):
    async with Client.connect(server, token(ttl=-10), expect_connected=False) as client:
        assert await client.closed() == CloseCode.AUTH_FAILED


async def test_cookie_token_is_accepted(server):
    async with Client.connect(server, headers={"Cookie": f"obsgen_token={token('carol')}"}) as client:
        assert (await client.request("ping"))["type"] == "ack"


async def test_origin_allow_list_closes_4003():
    async with running_server(make_config(allowed_origins=("https://app.example",))) as server:
        async with Client.connect(server, token(), headers={"Origin": "https://evil.example"},
                                  expect_connected=False) as client:
            assert await client.closed() == CloseCode.ORIGIN_NOT_ALLOWED
        async with Client.connect(server, token(), headers={"Origin": "https://app.example"}) as client:
            assert (await client.request("ping"))["type"] == "ack"


# ---------------------------------------------------------------------------- limits


async def test_flood_gets_rate_limited_errors_then_4004():
    async with running_server(make_config(message_rate=Rate(5, 5), rate_limit_strikes=5)) as server:
        async with Client.connect(server, token()) as client:
            for _ in range(20):
                await client.send("ping")
            assert await client.closed() == CloseCode.RATE_LIMITED
            codes = [e["payload"].get("code") for e in client.events if e["type"] == "error"]
            assert codes and set(codes) == {"rate_limited"}


async def test_message_above_the_limit_closes_4005():
    async with running_server(make_config(max_message_size=1000, max_frame_size=4000)) as server:
        async with Client.connect(server, token()) as client:
            await client.send("publish", {"channel": "room", "data": "x" * 2000})
            assert await client.closed() == CloseCode.MESSAGE_TOO_LARGE


async def test_frame_above_the_transport_limit_closes_1009():
    async with running_server(make_config(max_message_size=1000, max_frame_size=4000)) as server:
        async with Client.connect(server, token()) as client:
            await client.send("publish", {"channel": "room", "data": "x" * 5000})
            assert await client.closed() == CloseCode.MESSAGE_TOO_BIG


async def test_invalid_utf8_closes_1007(server):
    async with Client.connect(server, token()) as client:
        await client.connection.send(b'{"type": "ping", "x": "\xff\xfe"}', text=True)
        assert await client.closed() == CloseCode.INVALID_DATA


async def test_binary_frame_closes_1003(server):
    async with Client.connect(server, token()) as client:
        await client.connection.send(b'{"type": "ping"}')
        assert await client.closed() == CloseCode.UNSUPPORTED_DATA


async def test_malformed_json_is_an_error_then_1008_when_repeated():
    async with running_server(make_config(max_protocol_errors=3)) as server:
        async with Client.connect(server, token()) as client:
            await client.connection.send("{not json")
            error = await client.next()
            assert error["type"] == "error" and error["payload"]["code"] == "malformed"
            assert (await client.request("ping"))["type"] == "ack"  # the connection survives one
            for _ in range(3):
                await client.connection.send("[")
            assert await client.closed() == CloseCode.POLICY_VIOLATION


async def test_per_ip_connection_limit_answers_429():
    async with running_server(make_config(max_connections_per_ip=2)) as server:
        async with Client.connect(server, token()), Client.connect(server, token()):
            with pytest.raises(InvalidStatus) as info:
                async with Client.connect(server, token()):
                    pass
            assert info.value.response.status_code == 429
        async with Client.connect(server, token()) as client:  # slots are given back on close
            assert (await client.request("ping"))["type"] == "ack"


async def test_slow_consumer_is_cut_off_with_4008_while_others_keep_up():
    config = make_config(max_outgoing_buffer=256 * 1024, message_rate=Rate(0, 0), close_timeout=5.0)
    count = 200  # 10 MB: more than the kernel's socket buffers (up to 4 MB each way) can hide
    async with running_server(config) as server:
        # A reader that stops reading: websockets pauses the socket after max_queue messages.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        async with Client.connect(server, token("slow"), sock=sock, max_queue=1) as slow, \
                Client.connect(server, token("fast"), max_queue=None) as fast, \
                Client.connect(server, token("pub")) as publisher:
            await slow.request("subscribe", {"channel": "room"})
            await fast.request("subscribe", {"channel": "room"})
            reading = asyncio.ensure_future(fast.messages(count, timeout=2 * DEADLINE))  # 10 MB, loaded CPU
            blob = "x" * 50_000
            for i in range(count):
                await publisher.send("publish", {"channel": "room", "data": {"i": i, "blob": blob}})
                await asyncio.sleep(0)
            # the fast subscriber got everything, in order, while the slow one was cut off
            assert [m["payload"]["data"]["i"] for m in await reading] == list(range(count))
            slow_session = next(s for s in server.hub.sessions.values() if s.user == "slow")
            await eventually(lambda: slow_session.close_code == CloseCode.SLOW_CONSUMER)
            # Reading again, it finds the close frame behind what was already buffered for it.
            assert await slow.closed() == CloseCode.SLOW_CONSUMER
            await eventually(lambda: slow_session.id not in server.hub.sessions)


# ---------------------------------------------------------------------------- delivery


async def test_reconnect_with_offset_replays_missed_messages_exactly_once(server):
    received: list[int] = []
    async with Client.connect(server, token("pub")) as publisher:
        async with Client.connect(server, token("sub")) as subscriber:
            ack = await subscriber.request("subscribe", {"channel": "room"})
            epoch = ack["payload"]["epoch"]
            for i in range(5):
                await publisher.request("publish", {"channel": "room", "data": i})
            received += [m["payload"]["offset"] for m in await subscriber.messages(5)]
            subscriber.connection.transport.abort()  # an abrupt drop (1006), no close frame

        async def keep_publishing():
            for i in range(5, 40):
                await publisher.request("publish", {"channel": "room", "data": i})
                await asyncio.sleep(0.002)

        publishing = asyncio.ensure_future(keep_publishing())
        await asyncio.sleep(0.02)
        async with Client.connect(server, token("sub")) as subscriber:
            ack = await subscriber.request("subscribe", {"channel": "room",
                                                         "recover": {"offset": received[-1], "epoch": epoch}})
            assert ack["payload"]["recovered"] is True
            await publishing
            rest = await subscriber.messages(40 - len(received))
            received += [m["payload"]["offset"] for m in rest]
            assert await subscriber.quiet(0.2) == []
    assert received == list(range(1, 41))


async def test_unauthorized_client_learns_nothing_over_the_wire(server):
    async with Client.connect(server, token("owner", channels={"secure:vault": ["subscribe", "publish", "presence", "history"]})) as owner, \
            Client.connect(server, token("eve")) as eve:
        assert (await owner.request("subscribe", {"channel": "secure:vault"}))["type"] == "ack"
        for command in ("subscribe", "presence", "history"):
            reply = await eve.request(command, {"channel": "secure:vault"})
            assert reply["payload"]["code"] == "forbidden", reply
        reply = await eve.request("publish", {"channel": "secure:vault", "data": "x"})
        assert reply["payload"]["code"] == "forbidden"
        await owner.request("publish", {"channel": "secure:vault", "data": "the secret"})
        assert "the secret" not in json.dumps(await eve.quiet(0.2))


# ---------------------------------------------------------------------------- lifecycle and HTTP


async def test_health_and_readiness_and_drain_with_1001():
    # /readyz answers 503 for drain_delay before sessions close: long enough to be seen from a
    # thread on a loaded machine (the HTTP request runs beside the event loop).
    async with running_server(make_config(drain_delay=3.0)) as server:
        assert (await http_get(server.port, "/healthz"))[0] == 200
        status, _, body = await http_get(server.port, "/readyz")
        assert status == 200 and b"ready" in body
        async with Client.connect(server, token()) as client:
            await client.request("subscribe", {"channel": "room"})
            shutdown = asyncio.ensure_future(server.shutdown())
            await eventually(lambda: server.hub.draining)
            status, _, body = await http_get(server.port, "/readyz")
            assert status == 503 and b"draining" in body
            assert (await http_get(server.port, "/healthz"))[0] == 200
            assert await client.closed() == CloseCode.GOING_AWAY
            assert "reconnect" in client.connection.close_reason
            await shutdown


async def test_metrics_endpoint_serves_the_exposition_and_counts_traffic():
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from exporter.instrument import instrument

    telemetry = instrument("test-server", registry=CollectorRegistry(), log_stdout=False, environ={})
    try:
        async with running_server(telemetry=telemetry) as server:
            async with Client.connect(server, token()) as client:
                await client.request("subscribe", {"channel": "room"})
                await client.request("publish", {"channel": "room", "data": 1})
                await client.messages(1)
            async with Client.connect(server, expect_connected=False) as anonymous:
                await anonymous.closed()
            status, headers, body = await http_get(server.port, "/metrics")
            text = body.decode()
            assert status == 200 and headers["Content-Type"].startswith("text/plain")
            assert 'websocket_messages_received_total{type="publish"} 1.0' in text
            assert 'websocket_connections_total{status="auth_missing",transport="websocket"} 1.0' in text
            assert 'websocket_fanout_messages_total{transport="websocket"} 1.0' in text
            status, headers, _ = await http_get(server.port, "/metrics", {"Accept": "application/openmetrics-text"})
            assert headers["Content-Type"].startswith("application/openmetrics-text")
    finally:
        telemetry.shutdown(1.0)


async def raw_upgrade(server, receive_buffer: int | None = None):
    """A bare TCP client that completes the upgrade and then does only what the test makes it do."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write((
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token()}\r\n\r\n").encode())
    await writer.drain()
    assert b"101" in await reader.readline()
    await eventually(lambda: len(server.hub.sessions) == 1)
    return reader, writer


async def test_dead_peer_is_closed_by_heartbeat():
    async with running_server(make_config(ping_interval=0.2, ping_timeout=0.2, close_timeout=0.3)) as server:
        reader, writer = await raw_upgrade(server)
        # Never answer the pings: the server must drop us within a few intervals (about 0.7 s;
        # without the heartbeat, never). The bound leaves room for a loaded machine.
        started = time.monotonic()
        await eventually(lambda: len(server.hub.sessions) == 0)
        assert time.monotonic() - started < 10
        writer.close()


async def test_slowloris_upgrade_is_dropped():
    async with running_server(make_config(open_timeout=0.3)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never finish the headers
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        assert time.monotonic() - started < 10  # open_timeout 0.3 s; without it, never
        writer.close()


async def test_metrics_exposition_passes_promtool_check_metrics():
    import subprocess

    from prometheus_client import CollectorRegistry

    from exporter.instrument import instrument
    from tests.conftest import require_binary

    promtool = require_binary("promtool")
    telemetry = instrument("test-server", registry=CollectorRegistry(), log_stdout=False, environ={})
    try:
        async with running_server(make_config(max_message_size=1000), telemetry=telemetry) as server:
            async with Client.connect(server, token()) as client:  # traffic, so labelled series exist
                await client.request("subscribe", {"channel": "room"})
                await client.request("publish", {"channel": "room", "data": 1})
                await client.request("subscribe", {"channel": "secure:x"})
                await client.send("publish", {"channel": "room", "data": "x" * 2000})
                await client.closed()
            _, _, body = await http_get(server.port, "/metrics")
    finally:
        telemetry.shutdown(1.0)
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"websocket_disconnections_total" in body


async def test_ping_flood_without_reading_is_cut_off_with_bounded_memory():
    from websockets.frames import Frame, Opcode

    async with running_server(make_config(max_outgoing_buffer=64 * 1024, close_timeout=1.0)) as server:
        reader, writer = await raw_upgrade(server, receive_buffer=4096)  # and it never reads
        session = next(iter(server.hub.sessions.values()))
        transport = session.peer.transport
        ping = Frame(Opcode.PING, b"p" * 125).serialize(mask=True)
        peak = 0
        with contextlib.suppress(ConnectionError):
            for _ in range(400):  # up to 100,000 pings (12.7 MB of pongs), never reading one
                writer.write(ping * 250)
                await writer.drain()
                peak = max(peak, transport.get_write_buffer_size())
                if session.close_code is not None:
                    break
        assert session.close_code == CloseCode.SLOW_CONSUMER
        assert peak < 64 * 1024 + 256 * 1024  # the limit plus the pongs for one read (asyncio reads 256 KiB)
        writer.close()
