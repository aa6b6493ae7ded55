"""A minimal Server-Sent Events client on asyncio streams (for the load generator and tests).

It speaks HTTP/1.1 just enough for ``GET /sse``: send the request, read the status and headers,
then parse the body as an event stream the way the HTML standard's EventSource does (fields
``data``, ``id``, ``event``, ``retry``; comments; a blank line dispatches; the last event id is
kept, and sent back as ``Last-Event-ID`` by ``SseClient.open(..., last_event_id=...)``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode


@dataclass
class SseEvent:
    data: str
    id: str  # the last event id after this event (EventSource's lastEventId)
    event: str = "message"

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


class SseRefused(Exception):
    """The server answered the stream request with another status than 200."""

    def __init__(self, status: int, body: str, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}: {body.strip()}")
        self.status = status
        self.body = body
        self.headers = headers


class SseClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str],
                 last_event_id: str) -> None:
        self.reader = reader
        self.writer = writer
        self.headers = headers
        self.last_event_id = last_event_id
        self.retry_ms: int | None = None
        self.comments = 0  # heartbeats seen
        self._buffer = b""
        self._eof = False

    @classmethod
    async def open(cls, host: str, port: int, channels: list[str] | tuple[str, ...], *, token: str | None = None,
                   cookie: str | None = None, last_event_id: str | None = None, query: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None, path: str = "/sse", timeout: float = 30.0,
                   receive_buffer: int | None = None) -> "SseClient":
        """Connect and read the response head; ``SseRefused`` for a status other than 200."""
        params = [("channel", name) for name in channels] + list((query or {}).items())
        target = f"{path}?{urlencode(params)}" if params else path
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream",
                 "Cache-Control: no-cache"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        if cookie is not None:
            lines.append(f"Cookie: {cookie}")
        if last_event_id:
            lines.append(f"Last-Event-ID: {last_event_id}")
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        sock = None
        if receive_buffer is not None:  # a small window makes a non-reading client back up fast
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=2**20), timeout)
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except Exception:
            writer.close()
            raise
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        response_headers = {}
        for line in header_lines:
            if ":" in line:
                key, _, value = line.partition(":")
                response_headers[key.strip().lower()] = value.strip()
        if status != 200:
            body = b""
            try:
                body = await asyncio.wait_for(reader.read(), timeout)
            except Exception:
                pass
            writer.close()
            raise SseRefused(status, body.decode("utf-8", "replace"), response_headers)
        return cls(reader, writer, response_headers, last_event_id or "")

    async def _line(self, timeout: float | None) -> str | None:
        while True:
            index = self._buffer.find(b"\n")
            if index >= 0:
                line, self._buffer = self._buffer[:index], self._buffer[index + 1:]
                return line.rstrip(b"\r").decode("utf-8")
            if self._eof:
                return None
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                self._eof = True
                if not self._buffer:
                    return None
                self._buffer += b"\n"  # an unterminated last line still counts (it never dispatches)
            else:
                self._buffer += chunk

    async def next(self, timeout: float | None = 30.0) -> SseEvent | None:
        """The next dispatched event; None when the server ended the stream."""
        data: list[str] = []
        event_type = ""
        pending_id: str | None = None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout  # for the event, comments or not
        while True:
            line = await self._line(None if deadline is None else max(0.0, deadline - loop.time()))
            if line is None:
                return None  # an event without its blank line is discarded, as EventSource does
            if line == "":
                if pending_id is not None:
                    self.last_event_id = pending_id
                    pending_id = None
                if not data:
                    event_type = ""
                    continue
                return SseEvent("\n".join(data), self.last_event_id, event_type or "message")
            if line.startswith(":"):
                self.comments += 1
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "id" and "\0" not in value:
                pending_id = value
            elif field == "event":
                event_type = value
            elif field == "retry" and value.isdigit():
                self.retry_ms = int(value)

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        """Drop the connection abruptly (RST, as a crashed client or a network failure would)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
