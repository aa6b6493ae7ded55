"""A lean WebSocket client for the benchmarks: many connections per process, little work per frame.

A Python client on 2 cores saturates long before the server does if it runs every frame through a
full WebSocket stack and a JSON parser. This one speaks just enough RFC 6455 to subscribe and
count: it walks frame headers in the bytes asyncio hands it (up to 256 KiB per read), counts each
text frame that carries a publication (one with the payload's ``"ts":`` key), reads the sender's
timestamp with two ``bytes.find`` calls instead of a JSON parse, answers pings, and hands every
other frame (acks, errors) to a callback. It drives the bare baseline server and
``instrumented_server`` alike: both speak the ``{"type", "payload", "metadata"}`` protocol.
It also speaks as much of Centrifugo's JSON protocol (``protocol: "centrifugo"``) as the
benchmarks need: ``{"id": N, "connect": {"token": JWT}}`` and ``subscribe`` commands answered by
id, publications pushed as ``{"push": {"channel", "pub": {"data"}}}``, several replies and pushes
in one frame (one JSON object a line), and ``{}`` pings answered with ``{}``.

Run as a worker process (``python bench/wsclient.py --worker SLOT --counters FILE``), it takes
JSON commands on stdin, one per line, and answers one JSON line each on stdout:

    {"cmd": "open", "port": P, "count": N, "channels": [...], "headers": {...}, "latency_every": K,
     "protocol": "obsgen" | "centrifugo", "path": "/", "token": JWT}
    {"cmd": "stats"}            deliveries, latency histogram, closes, own CPU
    {"cmd": "reset"}            clear the latency histogram
    {"cmd": "close"}            close every connection (close frame, then TCP)
    {"cmd": "quit"}

Its running count of deliveries is also kept in 8 bytes of a shared file (``--counters``, slot
``SLOT``), so the publisher can hold back until the subscribers have caught up without a round
trip per check.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import mmap
import os
import resource
import struct
import sys
import time
from typing import Any, Callable

TS_MARKER = b'"ts":'
OBSGEN = "obsgen"  # the {"type", "payload", "metadata"} protocol of instrumented_server and the baseline
CENTRIFUGO = "centrifugo"  # Centrifugo's JSON protocol (client protocol v2)
CENTRIFUGO_PING = b"{}"  # an empty command: a ping from the server, and the pong a client sends back
ZERO_MASK = b"\x00\x00\x00\x00"
HANDSHAKE_LIMIT = 64 * 1024


# ------------------------------------------------------------------------------------- framing


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final client frame. The masking key is zero, so masking leaves the payload as it is:
    RFC 6455 requires the mask bit, and the key's unpredictability only matters against browser
    scripts poisoning proxy caches, which a benchmark on loopback does not have."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + ZERO_MASK + payload


def command(type_: str, payload: dict[str, Any], message_id: str | None = None) -> bytes:
    metadata = {"message_id": message_id} if message_id else {}
    return json.dumps({"type": type_, "payload": payload, "metadata": metadata}, separators=(",", ":")).encode()


def publish_frame(channel: str, seq: int, pad: str, message_id: str) -> bytes:
    """A publish command with the send time first in ``data``, where the subscribers look for it."""
    body = (f'{{"type":"publish","payload":{{"channel":{json.dumps(channel)},"data":'
            f'{{"ts":{time.time():.6f},"seq":{seq},"pad":"{pad}"}}}},"metadata":{{"message_id":"{message_id}"}}}}')
    return client_frame(body.encode())


def centrifugo_command(command_id: int, method: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"id": command_id, method: params}, separators=(",", ":")).encode()


def centrifugo_publish_frame(channel: str, seq: int, pad: str, command_id: int) -> bytes:
    """Centrifugo's client-side publish, with the same ``data`` (send time first) as ``publish_frame``."""
    body = (f'{{"id":{command_id},"publish":{{"channel":{json.dumps(channel)},"data":'
            f'{{"ts":{time.time():.6f},"seq":{seq},"pad":"{pad}"}}}}}}')
    return client_frame(body.encode())


def has_centrifugo_ping(buf: bytes, start: int, end: int) -> bool:
    """A ``{}`` line in the frame ``buf[start:end]`` (alone, or batched with pushes and replies)."""
    return ((end - start == 2 and buf[start:end] == CENTRIFUGO_PING) or buf.startswith(b"{}\n", start, end)
            or buf.find(b"\n{}", start, end) >= 0)


# ------------------------------------------------------------------------------------- latency


class Histogram:
    """Latencies in log buckets 2% wide from 1 µs, mergeable across processes, plus the exact max."""

    FLOOR = 1e-6
    PER_E = 50.0  # buckets per factor e: exp(1/50) = 1.02

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.max = 0.0

    def add(self, seconds: float) -> None:
        bucket = int(math.log(seconds / self.FLOOR) * self.PER_E) if seconds > self.FLOOR else 0
        counts = self.counts
        counts[bucket] = counts.get(bucket, 0) + 1
        if seconds > self.max:
            self.max = seconds

    def merge(self, counts: dict[Any, int], maximum: float) -> None:
        for bucket, count in counts.items():
            self.counts[int(bucket)] = self.counts.get(int(bucket), 0) + count
        self.max = max(self.max, maximum)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        total = self.total
        if not total:
            return None
        if q >= 1.0:
            return self.max
        rank, seen = q * total, 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(self.max, self.FLOOR * math.exp((bucket + 1) / self.PER_E))  # the bucket's upper edge
        return self.max


# ------------------------------------------------------------------------------------- connection


class HandshakeError(Exception):
    pass


class RawConnection(asyncio.Protocol):
    """One client connection: the upgrade by hand, then frame headers walked per read."""

    def __init__(self, request: bytes, on_deliveries: Callable[[int], None] | None = None,
                 histogram: Histogram | None = None, on_control: Callable[[bytes], None] | None = None,
                 centrifugo: bool = False) -> None:
        self.request = request
        self.centrifugo = centrifugo  # answer {} pings; a frame may batch several publications
        self.on_deliveries = on_deliveries
        self.histogram = histogram  # None: count deliveries without reading their timestamps
        self.on_control = on_control
        self.transport: asyncio.Transport | None = None
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.pending = b""
        self.is_open = False  # upgraded, and no close frame sent or received
        self.close_sent = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        if not self.upgraded.done():
            self.upgraded.set_exception(HandshakeError(f"connection lost during the upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code if self.close_code is not None else 1006)

    def data_received(self, data: bytes) -> None:
        if self.upgraded.done():
            self._frames(data)
            return
        data = self.pending + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > HANDSHAKE_LIMIT:
                self._fail("response headers too long")
            self.pending = data
            return
        status = data[:data.find(b"\r\n")]
        if not status.startswith(b"HTTP/1.1 101"):
            self._fail(status.decode("latin-1", "replace"))
            return
        self.pending = b""
        self.is_open = True
        self.upgraded.set_result(None)
        if len(data) > end + 4:
            self._frames(data[end + 4:])

    def _fail(self, reason: str) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(HandshakeError(reason))
        if self.transport is not None:
            self.transport.abort()

    # frames

    def _frames(self, data: bytes) -> None:
        buf = self.pending + data if self.pending else data
        n = len(buf)
        pos = 0
        deliveries = 0
        histogram = self.histogram
        now = time.time()  # one read = one arrival time for every frame in it
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F  # server frames are not masked
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1:
                at = buf.find(TS_MARKER, start, end)
                if at >= 0:
                    if not self.centrifugo:  # one publication per frame from our servers
                        deliveries += 1
                        if histogram is not None:
                            at += 5
                            histogram.add(max(0.0, now - float(buf[at:buf.find(b",", at, end)])))
                    # Centrifugo batches the pushes due to a connection into one frame, one per line.
                    elif histogram is None:
                        deliveries += buf.count(TS_MARKER, at, end)
                    else:
                        while at >= 0:
                            deliveries += 1
                            at += 5
                            histogram.add(max(0.0, now - float(buf[at:buf.find(b",", at, end)])))
                            at = buf.find(TS_MARKER, at, end)
                elif self.on_control is not None:
                    self.on_control(buf[start:end])
                if self.centrifugo and has_centrifugo_ping(buf, start, end):
                    self.transport.write(client_frame(CENTRIFUGO_PING))  # type: ignore[union-attr]
            elif opcode == 0x9:  # heartbeat: answer with the same payload
                self.transport.write(client_frame(buf[start:end], 0xA))  # type: ignore[union-attr]
            elif opcode == 0x8:
                self.close_code = (buf[start] << 8 | buf[start + 1]) if length >= 2 else 1005
                if not self.close_sent:  # the server started the closing handshake: echo its code
                    self.close_sent = True
                    self.transport.write(client_frame(buf[start:start + 2], 0x8))  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
                self.is_open = False
                break
            pos = end
        self.pending = buf[pos:] if pos < n else b""
        if deliveries and self.on_deliveries is not None:
            self.on_deliveries(deliveries)

    # sending

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload))

    def send_raw(self, frames: bytes) -> None:
        """Already-framed bytes (several commands in one write, so they arrive in one read)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frames)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; TCP is dropped if the server has not closed it within 2 s."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.is_open and not self.close_sent:
            self.close_sent = True
            self.is_open = False
            self.transport.write(client_frame(struct.pack("!H", code), 0x8))
            # The server answers with its own close frame and closes TCP.
            asyncio.get_running_loop().call_later(2.0, self.transport.abort)
        else:
            self.transport.abort()

    async def aclose(self, code: int = 1000) -> None:
        """Close and wait until TCP is closed (a server waits for its peers when it shuts down)."""
        self.close(code)
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 3.0)
        except asyncio.TimeoutError:
            if self.transport is not None:
                self.transport.abort()


def upgrade_request(host: str, port: int, path: str = "/", headers: dict[str, str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def connect(host: str, port: int, path: str = "/", headers: dict[str, str] | None = None,
                  timeout: float = 30.0, **callbacks: Any) -> RawConnection:
    loop = asyncio.get_running_loop()
    request = upgrade_request(host, port, path, headers)
    _, connection = await asyncio.wait_for(
        loop.create_connection(lambda: RawConnection(request, **callbacks), host, port), timeout)
    await asyncio.wait_for(asyncio.shield(connection.upgraded), timeout)
    return connection


class Commander:
    """Send commands on one connection and wait for their replies (``ack`` or ``error``) by id."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.replies = 0
        self.errors: dict[str, int] = {}
        self.seq = 0

    def on_control(self, payload: bytes) -> None:
        """Acks and errors: only the correlated ones are parsed (subscribe, not the publish stream)."""
        if b'"error"' in payload[:20]:
            event = json.loads(payload)
            code = event.get("payload", {}).get("code", "?")
            self.errors[code] = self.errors.get(code, 0) + 1
        elif b'"ack"' not in payload[:20]:
            return  # "connected" and other events
        self.replies += 1
        if self.waiting:
            event = json.loads(payload)
            future = self.waiting.pop(event.get("metadata", {}).get("correlation_id", ""), None)
            if future is not None and not future.done():
                future.set_result(event)

    async def request(self, connection: RawConnection, type_: str, payload: dict[str, Any],
                      timeout: float = 30.0) -> dict[str, Any]:
        self.seq += 1
        mid = f"c{self.seq}"
        future = asyncio.get_running_loop().create_future()
        self.waiting[mid] = future
        connection.send(command(type_, payload, mid))
        try:
            event = await asyncio.wait_for(future, timeout)
        finally:
            self.waiting.pop(mid, None)
        if event.get("type") != "ack":
            raise RuntimeError(f"{type_} refused: {event.get('payload')}")
        return event


class CentrifugoCommander:
    """Centrifugo commands on one connection, their replies matched by ``id`` (one JSON object a line)."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.seq = 0

    def on_control(self, payload: bytes) -> None:
        for line in payload.split(b"\n"):
            if not line or line == CENTRIFUGO_PING:
                continue
            event = json.loads(line)
            future = self.waiting.pop(event.get("id", 0), None)
            if future is not None and not future.done():
                future.set_result(event)

    async def request(self, connection: RawConnection, method: str, params: dict[str, Any],
                      timeout: float = 30.0) -> dict[str, Any]:
        self.seq += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = future
        connection.send(centrifugo_command(self.seq, method, params))
        closed = asyncio.shield(connection.closed)  # Centrifugo refuses a bad token by closing (code 3500)
        try:
            await asyncio.wait_for(asyncio.wait({future, closed}, return_when=asyncio.FIRST_COMPLETED), timeout)
        finally:
            self.waiting.pop(self.seq, None)
        if not future.done():
            future.cancel()
            raise RuntimeError(f"{method} refused: connection closed with code {connection.closed.result()}")
        event = future.result()
        if "error" in event:
            raise RuntimeError(f"{method} refused: {event['error']}")
        return event


# ------------------------------------------------------------------------------------- worker


class Worker:
    """One client process: opens connections on command, counts what they receive."""

    def __init__(self, slot: int, counters: str | None) -> None:
        self.slot = slot
        self.delivered = 0
        self.histogram = Histogram()
        self.connections: list[RawConnection] = []
        self.open_errors: dict[str, int] = {}
        self.counter_map: mmap.mmap | None = None
        if counters:
            with open(counters, "r+b") as file:
                self.counter_map = mmap.mmap(file.fileno(), 0)

    def count(self, deliveries: int) -> None:
        self.delivered += deliveries
        if self.counter_map is not None:
            struct.pack_into("q", self.counter_map, 8 * self.slot, self.delivered)

    async def open(self, host: str, port: int, count: int, channels: list[str], headers: dict[str, str],
                   latency_every: int = 0, concurrency: int = 64, path: str = "/", protocol: str = OBSGEN,
                   token: str | None = None) -> dict[str, Any]:
        """``count`` connections, connection i subscribed to ``channels[i % len]`` (none if empty).
        Centrifugo: the connect command carries ``token`` (its WebSocket upgrade takes no credentials)."""
        gate = asyncio.Semaphore(concurrency)
        opened = 0
        failed: dict[str, int] = {}
        centrifugo = protocol == CENTRIFUGO

        async def one(index: int) -> None:
            nonlocal opened
            commander: Commander | CentrifugoCommander = CentrifugoCommander() if centrifugo else Commander()
            histogram = self.histogram if latency_every and index % latency_every == 0 else None
            async with gate:
                try:
                    connection = await connect(host, port, path, headers, on_deliveries=self.count,
                                               histogram=histogram, on_control=commander.on_control,
                                               centrifugo=centrifugo)
                    if centrifugo:
                        await commander.request(connection, "connect", {"token": token or ""})
                    if channels:
                        await commander.request(connection, "subscribe", {"channel": channels[index % len(channels)]})
                except Exception as exc:  # the failure is the result: counted and reported
                    name = type(exc).__name__ + (f": {exc}" if isinstance(exc, (HandshakeError, RuntimeError)) else "")
                    failed[name[:120]] = failed.get(name[:120], 0) + 1
                    return
            connection.on_control = None  # later acks and events are not needed
            self.connections.append(connection)
            opened += 1

        await asyncio.gather(*(one(i) for i in range(count)))
        return {"opened": opened, "failed": failed, "open": self.open_count()}

    def open_count(self) -> int:
        return sum(1 for c in self.connections if c.is_open)

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        closes: dict[str, int] = {}
        for connection in self.connections:
            if not connection.is_open:
                code = str(connection.close_code if connection.close_code is not None else 1006)
                closes[code] = closes.get(code, 0) + 1
        return {"delivered": self.delivered, "latency": self.histogram.counts, "max": self.histogram.max,
                "open": self.open_count(), "closes": closes, "cpu": usage.ru_utime + usage.ru_stime}

    async def close(self) -> dict[str, Any]:
        for connection in self.connections:
            connection.close()
        if self.connections:
            await asyncio.wait([asyncio.ensure_future(asyncio.shield(c.closed)) for c in self.connections], timeout=5)
        self.connections = []
        return {"closed": True}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                break
            request = json.loads(line)
            cmd = request.pop("cmd")
            if cmd == "open":
                reply = await self.open(**request)
            elif cmd == "stats":
                reply = self.stats()
            elif cmd == "reset":
                self.histogram = Histogram()
                for connection in self.connections:
                    if connection.histogram is not None:
                        connection.histogram = self.histogram
                reply = {"reset": True}
            elif cmd == "close":
                reply = await self.close()
            elif cmd == "quit":
                break
            else:
                reply = {"error": f"unknown command {cmd!r}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="benchmark client worker (driven by the bench scripts over stdin)")
    parser.add_argument("--worker", type=int, required=True, help="this worker's slot in the counters file")
    parser.add_argument("--counters", help="shared file of 8-byte delivery counters, one per worker")
    args = parser.parse_args(argv)
    raise_fd_limit()
    try:
        asyncio.run(Worker(args.worker, args.counters).serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
