"""``python -m instrumented_server.loadgen``: traffic, and faults on purpose, against the server.

Opens ``--subscribers`` WebSocket connections and ``--sse-subscribers`` Server-Sent Events
streams (``GET /sse``, resuming with ``Last-Event-ID`` after a drop as EventSource does) spread
over ``--channels`` channels, publishes ``--rate``
messages per second from ``--publishers`` connections for ``--duration`` seconds, and injects the
faults named with ``--fault NAME[=PER_SECOND]`` so that every alert of the built-in pack can be
made to fire. Tokens are minted from the server's own secret file (``--jwt-secret-file``).

At the end it prints what was sent, delivered (against what was expected), the publish→deliver
latency, errors by code, closes by close code, what each fault got back, and the client's own CPU,
so a reader can tell whether the client side was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import resource
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from instrumented_server.auth import Authenticator
from instrumented_server.client import AuthenticationFailed, Backoff, Client, ClientError
from instrumented_server.config import ConfigError, read_secret_file
from instrumented_server.protocol import encode_command
from instrumented_server.sse_client import SseClient, SseRefused

# ------------------------------------------------------------------------------------- settings


@dataclass
class LoadConfig:
    url: str = "ws://127.0.0.1:8765/"
    secret: str = ""
    subscribers: int = 50
    sse_subscribers: int = 0  # SSE streams, on the same channels as the WebSocket subscribers
    publishers: int = 0  # 0: one per 50 messages/s, so no publisher trips the default rate limit
    channels: int = 5
    rate: float = 50.0  # publishes per second, all publishers together
    duration: float = 10.0
    message_size: int = 100  # bytes of padding in each publication
    connect_rate: float = 500.0  # new connections per second while ramping up
    channel_prefix: str = "load"
    faults: dict[str, float] = field(default_factory=dict)  # fault name -> injections per second
    surge_size: int = 200
    oversize_bytes: int = 70_000  # above the server's default --max-message-size (65536)
    huge_frame_bytes: int = 300_000  # above the server's default --max-frame-size (262144)
    settle: float = 2.0  # seconds to wait for deliveries in flight after the last publish
    processes: int = 1
    json: bool = False

    @property
    def publisher_count(self) -> int:
        return self.publishers or max(1, math.ceil(self.rate / 50))


FAULTS: dict[str, str] = {
    "disconnect": "a subscriber's TCP connection is reset (1006); it reconnects and resumes from its offset",
    "no-token": "connect without a token (closed 4001)",
    "bad-token": "connect with a token signed by another key (closed 4002)",
    "expired-token": "connect with an expired token (closed 4002)",
    "bad-origin": "connect from a browser Origin that is not allowed (closed 4003)",
    "flood": "send pings as fast as possible (rate_limited errors, then closed 4004)",
    "oversized": "send a message above the server's message limit (closed 4005)",
    "huge-frame": "send a frame above the server's frame limit (closed 1009)",
    "malformed": "send malformed JSON (an error reply: malformed)",
    "unknown-type": "send an unknown command type (an error reply: unknown_type)",
    "invalid-utf8": "send a text frame that is not UTF-8 (closed 1007)",
    "binary": "send a binary frame (closed 1003)",
    "forbidden": "subscribe to a private channel without a grant (an error reply: forbidden)",
    "surge": "open --surge-size connections at once, hold them 2 s, close them",
    "slow-consumer": "subscribe, stop reading, and pump large messages into the channel (closed 4008)",
}


# ------------------------------------------------------------------------------------- results


class LatencyHistogram:
    """Log-bucketed latencies (2% wide), mergeable across processes."""

    GROWTH = 1.02
    FLOOR = 1e-5  # 10 µs

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: Counter[int] = Counter(counts or {})

    def add(self, seconds: float) -> None:
        bucket = 0 if seconds <= self.FLOOR else int(math.log(seconds / self.FLOOR, self.GROWTH)) + 1
        self.counts[bucket] += 1

    def merge(self, other: "LatencyHistogram") -> None:
        self.counts.update(other.counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        total = self.total
        if not total:
            return None
        rank = q * total
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return self.FLOOR * self.GROWTH ** bucket  # the bucket's upper edge
        return None


@dataclass
class Stats:
    published: int = 0  # acknowledged publishes
    publish_failed: int = 0
    expected: int = 0  # deliveries expected from the acknowledged publishes
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    resyncs: int = 0
    reconnects: int = 0
    connections: int = 0
    sse_connections: int = 0
    errors: Counter = field(default_factory=Counter)  # error code -> count
    closes: Counter = field(default_factory=Counter)  # close code -> count
    faults: Counter = field(default_factory=Counter)  # "fault -> outcome" -> count
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    connect_seconds: float = 0.0  # ramp-up: opening and subscribing the subscribers
    cpu_seconds: float = 0.0  # client CPU (user+sys) during the traffic phase, all processes
    wall_seconds: float = 0.0  # length of the traffic phase (publishing + settle)
    worker_cpu: list[float] = field(default_factory=list)

    def merge(self, other: "Stats") -> None:
        for name in ("published", "publish_failed", "expected", "delivered", "duplicates", "out_of_order",
                     "resyncs", "reconnects", "connections", "sse_connections", "cpu_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        self.connect_seconds = max(self.connect_seconds, other.connect_seconds)
        for name in ("errors", "closes", "faults"):
            getattr(self, name).update(getattr(other, name))
        self.latency.merge(other.latency)
        self.worker_cpu.extend(other.worker_cpu)

    @property
    def missing(self) -> int:
        return max(0, self.expected - self.delivered)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "latency"}
        for name in ("errors", "closes", "faults"):
            data[name] = dict(sorted((str(k), v) for k, v in getattr(self, name).items()))
        data["missing"] = self.missing
        data["latency_ms"] = {name: _ms(self.latency.quantile(q)) for name, q in
                              (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))}
        data["latency_samples"] = self.latency.total
        return data


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# ------------------------------------------------------------------------------------- the run


class Run:
    """One worker process's share of the load."""

    def __init__(self, config: LoadConfig, worker: int = 0, workers: int = 1, barrier: Any = None) -> None:
        self.config = config
        self.barrier = barrier  # all workers' subscribers are in before anyone publishes
        self.worker = worker
        self.workers = workers
        self.auth = Authenticator(config.secret)
        self.stats = Stats()
        self.subscribers_per_channel: Counter[str] = Counter()
        self.clients: list[Client] = []
        self.sse_streams: set[SseClient] = set()
        self.sse_tasks: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()
        self.rng = random.Random(worker)

    def channel(self, index: int) -> str:
        return f"{self.config.channel_prefix}-{index % max(1, self.config.channels)}"

    def token(self, user: str, ttl: float | None = None, **claims: Any) -> str:
        return self.auth.mint(user, ttl=ttl if ttl is not None else self.config.duration + 3600, **claims)

    # ------------------------------------------------------------------ subscribers

    async def start_subscribers(self) -> None:
        config = self.config
        mine = [i for i in range(config.subscribers) if i % self.workers == self.worker]
        mine_sse = [i for i in range(config.sse_subscribers) if i % self.workers == self.worker]
        interval = 1.0 / config.connect_rate if config.connect_rate > 0 else 0.0
        starts = []
        for start, i in [(self._start_subscriber, i) for i in mine] + [(self._start_sse_subscriber, i) for i in mine_sse]:
            starts.append(asyncio.ensure_future(start(i)))
            if interval:
                await asyncio.sleep(interval)
        await asyncio.gather(*starts)
        # Every subscriber of every worker, so each worker's publishes expect the deliveries on all.
        self.subscribers_per_channel = Counter(self.channel(i) for i in range(config.subscribers))
        self.subscribers_per_channel.update(self.channel(i) for i in range(config.sse_subscribers))

    async def _start_subscriber(self, index: int) -> None:
        client = Client(self.config.url, self.token(f"load-sub-{index}"), backoff=Backoff(initial=0.1, cap=2.0),
                        request_timeout=15.0, on_event=self._delivery_counter(),
                        connect_kwargs={"max_queue": None, "proxy": None})
        try:
            await client.start()
            await client.subscribe(self.channel(index))
        except (ClientError, OSError) as exc:
            self.stats.errors[getattr(exc, "code", type(exc).__name__)] += 1
            await client.close()
            return
        self.stats.connections += 1
        self.clients.append(client)

    async def _start_sse_subscriber(self, index: int) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sse_tasks.append(asyncio.ensure_future(self._sse_loop(index, ready)))
        try:
            await asyncio.wait_for(asyncio.shield(ready), 15.0)
        except Exception as exc:
            self.stats.errors[str(exc) if isinstance(exc, SseRefused) else type(exc).__name__] += 1
            return
        self.stats.sse_connections += 1

    async def _sse_loop(self, index: int, ready: asyncio.Future[None]) -> None:
        """One SSE subscriber, as a browser's EventSource behaves: on a drop, reconnect with the
        last event id (after the server's retry delay, shortened here), refused for good on 4xx."""
        host, port = _host_port(self.config.url)
        channel, on_event, last_id = self.channel(index), self._delivery_counter(), ""
        backoff = Backoff(initial=0.1, cap=2.0)
        attempt = 0
        while not self.stop.is_set():
            try:
                stream = await SseClient.open(host, port, [channel], token=self.token(f"load-sse-{index}"),
                                              last_event_id=last_id or None, timeout=15.0)
            except SseRefused as exc:
                self.stats.errors[f"sse http {exc.status}"] += 1
                if 400 <= exc.status < 500 and exc.status != 429:
                    if not ready.done():
                        ready.set_exception(exc)
                    return
                stream = None
            except (OSError, asyncio.TimeoutError) as exc:
                self.stats.errors[type(exc).__name__] += 1
                stream = None
            if stream is not None:
                attempt = 0
                self.sse_streams.add(stream)
                try:
                    while (event := await stream.next(None)) is not None:
                        envelope = event.json()
                        if envelope["type"] == "ack" and not ready.done():
                            ready.set_result(None)
                        elif envelope["type"] == "close":
                            self.stats.closes[envelope["payload"]["code"]] += 1
                        on_event(envelope)
                except (OSError, ValueError, KeyError):
                    pass
                finally:
                    last_id = stream.last_event_id
                    stream.close()
                    self.sse_streams.discard(stream)
            if self.stop.is_set():
                return
            self.stats.reconnects += 1
            attempt += 1
            await asyncio.sleep(backoff.delay(attempt))

    def _delivery_counter(self) -> Callable[[dict[str, Any]], None]:
        """One subscriber's event callback: latency, deliveries, and an order check per channel."""
        last: dict[str, int] = {}
        stats = self.stats
        add_latency = stats.latency.add

        def on_event(event: dict[str, Any]) -> None:
            type_ = event["type"]
            if type_ == "message":
                payload = event["payload"]
                data = payload.get("data")
                if isinstance(data, dict) and "ts" in data:
                    add_latency(max(0.0, time.time() - data["ts"]))
                    stats.delivered += 1
                offset, channel = payload["offset"], payload["channel"]
                previous = last.get(channel)
                if previous is not None and offset <= previous:
                    stats.out_of_order += 1
                last[channel] = offset
            elif type_ == "resync":
                stats.resyncs += 1
                last.pop(event["payload"].get("channel"), None)

        return on_event

    # ------------------------------------------------------------------ publishers

    async def run_publishers(self) -> None:
        config = self.config
        count = config.publisher_count
        mine = [i for i in range(count) if i % self.workers == self.worker]
        if not mine or config.rate <= 0:
            await asyncio.sleep(config.duration)
            return
        publishers = []
        for i in mine:
            client = Client(config.url, self.token(f"load-pub-{i}"), backoff=Backoff(initial=0.1, cap=2.0),
                            request_timeout=15.0, connect_kwargs={"proxy": None})
            await client.start()
            self.clients.append(client)
            publishers.append(client)
        per_publisher = config.rate / count
        await asyncio.gather(*(self._publish_loop(client, i, per_publisher) for i, client in zip(mine, publishers)))

    async def _publish_loop(self, client: Client, index: int, rate: float) -> None:
        config = self.config
        pad = "x" * config.message_size
        interval = 1.0 / rate
        started = time.monotonic()
        deadline = started + config.duration
        sent = 0
        in_flight: set[asyncio.Task[Any]] = set()
        while True:
            due = started + sent * interval + (index * interval / max(1, config.publisher_count))
            if due >= deadline:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            channel = self.channel(self.rng.randrange(config.channels) if config.channels > 1 else 0)
            task = asyncio.ensure_future(self._publish(client, channel, {"ts": time.time(), "seq": sent, "pad": pad}))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
        if in_flight:
            await asyncio.wait(in_flight, timeout=15)

    async def _publish(self, client: Client, channel: str, data: dict[str, Any]) -> None:
        try:
            await client.publish(channel, data)
        except ClientError as exc:
            self.stats.publish_failed += 1
            self.stats.errors[exc.code] += 1
            return
        self.stats.published += 1
        self.stats.expected += self.subscribers_per_channel[channel]

    # ------------------------------------------------------------------ faults

    async def run_faults(self) -> None:
        if self.worker != 0 or not self.config.faults:
            return
        await asyncio.gather(*(self._fault_loop(name, rate) for name, rate in sorted(self.config.faults.items())))

    async def _fault_loop(self, name: str, rate: float) -> None:
        action: Callable[[], Awaitable[str]] = getattr(self, "fault_" + name.replace("-", "_"))
        interval = 1.0 / rate if rate > 0 else self.config.duration
        deadline = time.monotonic() + self.config.duration
        running: set[asyncio.Task[Any]] = set()
        while time.monotonic() < deadline and not self.stop.is_set():
            task = asyncio.ensure_future(self._record(name, action))
            running.add(task)
            task.add_done_callback(running.discard)
            await asyncio.sleep(interval)
        if running:
            await asyncio.wait(running, timeout=30)

    async def _record(self, name: str, action: Callable[[], Awaitable[str]]) -> None:
        try:
            outcome = await action()
        except Exception as exc:  # a fault must never crash the run; what happened is the result
            outcome = f"raised {type(exc).__name__}"
        self.stats.faults[f"{name} -> {outcome}"] += 1

    async def _raw(self, headers: dict[str, str] | None = None, **kwargs: Any):
        """A raw websockets connection, for faults the well-behaved client would never commit."""
        return await connect(self.config.url, additional_headers=headers or {}, open_timeout=10, close_timeout=2,
                             proxy=None, **kwargs)

    async def _until_closed(self, connection, timeout: float = 10.0) -> str:
        """Read until the server closes; the close code, or the first error code seen."""
        errors: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                async for text in connection:
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        event = json.loads(text)
                        if event.get("type") == "error":
                            errors.append(event["payload"]["code"])
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            await connection.close()
        code = connection.close_code
        self.stats.closes[code] += 1
        return f"close {code}" + (f" after {len(errors)} {errors[0]} error(s)" if errors else "")

    async def _reply_code(self, command: str | bytes, headers: dict[str, str] | None = None) -> str:
        """Send one bad message on a fresh authenticated connection; what came back."""
        connection = await self._raw({"Authorization": f"Bearer {self.token('load-fault')}", **(headers or {})})
        try:
            await connection.recv()  # connected
            if isinstance(command, bytes) and command.startswith(b"TEXT:"):
                await connection.send(command[5:], text=True)
            else:
                await connection.send(command)
            async with asyncio.timeout(5):
                text = await connection.recv()
            event = json.loads(text)
            code = event["payload"].get("code") if event.get("type") == "error" else event.get("type")
            self.stats.errors[code] += 1
            await connection.close()
            return f"error {code}"
        except ConnectionClosed:
            self.stats.closes[connection.close_code] += 1
            return f"close {connection.close_code}"

    async def fault_disconnect(self) -> str:
        live: list[Any] = [c for c in self.clients if c.connected and c.positions] + sorted(
            self.sse_streams, key=id)
        if not live:
            return "no subscriber to drop"
        client = self.rng.choice(live)
        if isinstance(client, SseClient):
            client.reset()  # its loop reconnects with Last-Event-ID
            return "reset"
        connection = client._connection
        if connection is None:
            return "no subscriber to drop"
        sock = connection.transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close sends a TCP reset instead of a FIN, as a dying network does.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.transport.abort()
        return "reset"

    async def fault_no_token(self) -> str:
        return await self._until_closed(await self._raw())

    async def fault_bad_token(self) -> str:
        forged = Authenticator("not-the-server-secret-" + "z" * 32).mint("mallory")
        return await self._until_closed(await self._raw({"Authorization": f"Bearer {forged}"}))

    async def fault_expired_token(self) -> str:
        expired = self.auth.mint("late", ttl=-60)
        return await self._until_closed(await self._raw({"Authorization": f"Bearer {expired}"}))

    async def fault_bad_origin(self) -> str:
        connection = await self._raw({"Authorization": f"Bearer {self.token('load-origin')}"},
                                     origin="https://evil.example")
        return await self._until_closed(connection)

    async def fault_flood(self) -> str:
        connection = await self._raw({"Authorization": f"Bearer {self.token('load-flood')}"})
        reader = asyncio.ensure_future(self._until_closed(connection))
        ping = encode_command("ping", {})
        with contextlib.suppress(ConnectionClosed):
            for _ in range(10_000):
                if reader.done():
                    break
                await connection.send(ping)
        return await reader

    async def fault_oversized(self) -> str:
        return await self._send_and_close(encode_command("publish", {"channel": self.channel(0),
                                                                     "data": "x" * self.config.oversize_bytes}))

    async def fault_huge_frame(self) -> str:
        return await self._send_and_close(encode_command("publish", {"channel": self.channel(0),
                                                                     "data": "x" * self.config.huge_frame_bytes}))

    async def fault_invalid_utf8(self) -> str:
        return await self._send_and_close(b'{"type": "ping", "payload": {"x": "\xff\xfe"}}', text=True)

    async def fault_binary(self) -> str:
        return await self._send_and_close(b'{"type": "ping"}')

    async def _send_and_close(self, message: str | bytes, text: bool | None = None) -> str:
        connection = await self._raw({"Authorization": f"Bearer {self.token('load-fault')}"},
                                     max_size=None)
        with contextlib.suppress(ConnectionClosed):
            await connection.recv()
            await connection.send(message, text=text)
        return await self._until_closed(connection)

    async def fault_malformed(self) -> str:
        return await self._reply_code("{this is not json")

    async def fault_unknown_type(self) -> str:
        return await self._reply_code(encode_command("launch", {}))

    async def fault_forbidden(self) -> str:
        return await self._reply_code(encode_command("subscribe", {"channel": "$load-private"}))

    async def fault_surge(self) -> str:
        async def one(i: int):
            with contextlib.suppress(Exception):
                return await self._raw({"Authorization": f"Bearer {self.token(f'load-surge-{i}')}"})
            return None

        connections = await asyncio.gather(*(one(i) for i in range(self.config.surge_size)))
        opened = [c for c in connections if c is not None]
        await asyncio.sleep(2)
        await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
        return f"held {len(opened)}/{self.config.surge_size}"

    async def fault_slow_consumer(self) -> str:
        channel = f"{self.config.channel_prefix}-slow-{self.rng.randrange(1 << 30)}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = _host_port(self.config.url)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        slow = await self._raw({"Authorization": f"Bearer {self.token('load-slow')}"}, sock=sock, max_queue=1)
        await slow.recv()
        await slow.send(encode_command("subscribe", {"channel": channel}))
        pump = await self._raw({"Authorization": f"Bearer {self.token('load-pump')}"})
        await pump.recv()
        blob = "x" * 50_000
        try:
            # 10 MB at once: more than the kernel's socket buffers (a few MB) plus the server's
            # default 1 MiB outgoing limit. Then read, to find the close frame behind the backlog
            # before the server's close timeout drops the connection.
            for _ in range(200):
                await pump.send(encode_command("publish", {"channel": channel, "data": blob}))
        except ConnectionClosed:
            pass
        finally:
            await pump.close()
        return await self._until_closed(slow, timeout=15)

    # ------------------------------------------------------------------ orchestration

    async def run(self) -> Stats:
        started = time.monotonic()
        await self.start_subscribers()
        self.stats.connect_seconds = time.monotonic() - started
        if self.barrier is not None:
            await asyncio.to_thread(self.barrier.wait, 120)
        # CPU and time of the traffic phase only: that is what says whether the client kept up.
        phase_cpu, phase_started = _cpu(), time.monotonic()
        await asyncio.gather(self.run_publishers(), self.run_faults())
        await asyncio.sleep(self.config.settle)
        self.stats.cpu_seconds = _cpu() - phase_cpu
        self.stats.wall_seconds = time.monotonic() - phase_started
        self.stats.worker_cpu = [self.stats.cpu_seconds]
        self.stop.set()
        for client in self.clients:
            self.stats.reconnects += client.stats.reconnects
            self.stats.duplicates += client.stats.duplicates_dropped
            for code, count in client.stats.close_codes.items():
                self.stats.closes[code] += count
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        for stream in list(self.sse_streams):
            stream.close()
        if self.sse_tasks:
            await asyncio.wait(self.sse_tasks, timeout=15)
        return self.stats


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "wss" else 80)


# ------------------------------------------------------------------------------------- processes


def _worker(config: LoadConfig, worker: int, workers: int, results: Any, barrier: Any) -> None:
    _raise_fd_limit()
    stats = asyncio.run(Run(config, worker, workers, barrier).run())
    results.put((worker, stats))


def run_load(config: LoadConfig) -> Stats:
    _raise_fd_limit()
    if config.processes <= 1:
        return asyncio.run(Run(config).run())
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    results = context.Queue()
    barrier = context.Barrier(config.processes)
    procs = [context.Process(target=_worker, args=(config, i, config.processes, results, barrier), daemon=True)
             for i in range(config.processes)]
    for proc in procs:
        proc.start()
    total = Stats()
    by_worker: dict[int, Stats] = {}
    deadline = time.monotonic() + config.duration + config.settle + 120
    while len(by_worker) < len(procs) and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            worker, stats = results.get(timeout=1)
            by_worker[worker] = stats
        if all(not p.is_alive() for p in procs) and results.empty() and len(by_worker) < len(procs):
            break
    for proc in procs:
        proc.join(timeout=5)
    for worker in sorted(by_worker):
        total.merge(by_worker[worker])
    if len(by_worker) < len(procs):
        total.errors["worker_lost"] += len(procs) - len(by_worker)
    return total


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------------------------- output


def summary(config: LoadConfig, stats: Stats) -> str:
    data = stats.to_dict()
    latency = data["latency_ms"]
    cores = os.cpu_count() or 1
    busiest = max(stats.worker_cpu or [0.0]) / stats.wall_seconds if stats.wall_seconds else 0.0
    rows = [
        ("target", f"{config.url}  ({config.subscribers} subscribers"
                   + (f" + {config.sse_subscribers} SSE" if config.sse_subscribers else "")
                   + f" on {config.channels} channels, "
                   f"{config.publisher_count} publishers, {config.rate:g} msg/s for {config.duration:g} s, "
                   f"{config.processes} process(es))"),
        ("connections", f"{stats.connections} subscribers"
                        + (f" and {stats.sse_connections} SSE streams" if config.sse_subscribers else "")
                        + f" connected in {stats.connect_seconds:.1f} s, "
                        f"{stats.reconnects} reconnects"),
        ("published", f"{stats.published} acknowledged, {stats.publish_failed} refused"),
        ("delivered", f"{stats.delivered} of {stats.expected} expected  (missing {stats.missing}, "
                      f"duplicates dropped by clients {stats.duplicates}, out of order {stats.out_of_order}, "
                      f"resyncs {stats.resyncs})"),
        ("latency ms", "  ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in latency.items())
         + f"  ({data['latency_samples']} samples)"),
        ("errors", _counts(data["errors"])),
        ("closes", _counts(data["closes"])),
        ("client CPU", f"{stats.cpu_seconds:.2f} s in the {stats.wall_seconds:.1f} s of traffic over "
                       f"{len(stats.worker_cpu)} process(es); busiest process {busiest:.0%} of a core ({cores} cores)"
                       + ("  -> CLIENT-BOUND: figures limited by the load generator" if busiest > 0.9 else "")),
    ]
    for fault in sorted(data["faults"]):
        rows.append(("fault", f"{fault}: {data['faults'][fault]}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "none"


# ------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = LoadConfig()
    parser = argparse.ArgumentParser(
        prog="python -m instrumented_server.loadgen",
        description="Load and fault injection for instrumented_server. Faults: "
                    + "; ".join(f"{name}: {text}" for name, text in FAULTS.items()),
    )
    parser.add_argument("--url", default=os.environ.get("OBSGEN_LOADGEN_URL", d.url), help=f"server URL (default {d.url})")
    parser.add_argument("--jwt-secret-file", default=os.environ.get("OBSGEN_JWT_SECRET_FILE"),
                        help="the server's HS256 secret file, to mint tokens [OBSGEN_JWT_SECRET_FILE]")
    parser.add_argument("--subscribers", type=int, default=d.subscribers, help=f"subscriber connections (default {d.subscribers})")
    parser.add_argument("--sse-subscribers", type=int, default=d.sse_subscribers,
                        help="Server-Sent Events streams (GET /sse on the same host and port), on the same channels "
                             f"(default {d.sse_subscribers})")
    parser.add_argument("--publishers", type=int, default=d.publishers,
                        help="publisher connections (default: one per 50 msg/s)")
    parser.add_argument("--channels", type=int, default=d.channels, help=f"channels (default {d.channels})")
    parser.add_argument("--rate", type=float, default=d.rate, help=f"publishes per second in total (default {d.rate:g})")
    parser.add_argument("--duration", type=float, default=d.duration, help=f"seconds of publishing (default {d.duration:g})")
    parser.add_argument("--message-size", type=int, default=d.message_size, help=f"padding bytes per message (default {d.message_size})")
    parser.add_argument("--connect-rate", type=float, default=d.connect_rate, help=f"connections opened per second (default {d.connect_rate:g})")
    parser.add_argument("--channel-prefix", default=d.channel_prefix, help=f"channel name prefix (default {d.channel_prefix})")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME[=PER_SECOND]",
                        help=f"inject a fault (repeatable; default 1 per second): {', '.join(FAULTS)}, or all")
    parser.add_argument("--surge-size", type=int, default=d.surge_size, help=f"connections per surge (default {d.surge_size})")
    parser.add_argument("--oversize-bytes", type=int, default=d.oversize_bytes, help="message size of the oversized fault")
    parser.add_argument("--huge-frame-bytes", type=int, default=d.huge_frame_bytes, help="frame size of the huge-frame fault")
    parser.add_argument("--settle", type=float, default=d.settle, help="seconds to wait for deliveries after the last publish")
    parser.add_argument("--processes", type=int, default=d.processes, help="client processes to spread connections over")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--fail-on-loss", action="store_true", help="exit 1 if any expected delivery is missing")
    return parser


def parse_faults(specs: Sequence[str], known: Sequence[str] = tuple(FAULTS)) -> dict[str, float]:
    """``NAME[=RATE]`` options (RATE per second, default 1; ``all`` names every fault) -> rates."""
    faults: dict[str, float] = {}
    for spec in specs:
        name, _, rate_text = spec.partition("=")
        names = list(known) if name == "all" else [name]
        for one in names:
            if one not in known:
                raise ValueError(f"unknown fault {one!r}; known: {', '.join(known)}, all")
            try:
                rate = float(rate_text) if rate_text else 1.0
            except ValueError:
                raise ValueError(f"fault {spec!r}: the rate must be a number per second") from None
            if rate <= 0:
                raise ValueError(f"fault {spec!r}: the rate must be positive")
            faults[one] = rate
    return faults


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.jwt_secret_file:
            raise ConfigError("--jwt-secret-file (or OBSGEN_JWT_SECRET_FILE) is required to mint tokens")
        secret = read_secret_file(args.jwt_secret_file)
        faults = parse_faults(args.fault)
        for name in ("subscribers", "sse_subscribers", "channels", "processes"):
            minimum = 0 if name.endswith("subscribers") else 1
            if getattr(args, name) < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {minimum}")
    except (ConfigError, ValueError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    config = LoadConfig(
        url=args.url, secret=secret, subscribers=args.subscribers, sse_subscribers=args.sse_subscribers,
        publishers=args.publishers, channels=args.channels,
        rate=args.rate, duration=args.duration, message_size=args.message_size, connect_rate=args.connect_rate,
        channel_prefix=args.channel_prefix, faults=faults, surge_size=args.surge_size,
        oversize_bytes=args.oversize_bytes, huge_frame_bytes=args.huge_frame_bytes, settle=args.settle,
        processes=args.processes, json=args.json,
    )
    try:
        stats = run_load(config)
    except AuthenticationFailed as exc:
        print(f"loadgen: the server refused our tokens ({exc}); is --jwt-secret-file the server's?", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"loadgen: cannot reach {config.url}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except InvalidStatus as exc:
        print(f"loadgen: the server answered HTTP {exc.response.status_code}", file=sys.stderr)
        return 1
    print(json.dumps(stats.to_dict(), indent=2, sort_keys=True) if config.json else summary(config, stats))
    return 1 if args.fail_on_loss and stats.missing else 0


if __name__ == "__main__":
    sys.exit(main())
