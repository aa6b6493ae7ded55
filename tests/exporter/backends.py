"""Telemetry backends for the exporter tests, on 127.0.0.1 free ports, stopped at test end.

- ``HttpSink``: a tiny HTTP server that records every POST (OTLP/HTTP or Loki push).
- ``GrpcTraceSink``: a real gRPC OTLP trace service (grpcio + the OTLP protobufs).
- ``SilentServer``: accepts TCP connections and never answers (a hung backend).
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class HttpSink:
    def __init__(self, status: int = 200) -> None:
        self.posts: list[tuple[str, dict, bytes]] = []
        self.arrived = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink.arrived:
                    sink.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    sink.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, predicate, timeout: float = 10.0):
        """Wait until ``predicate(posts)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                value = predicate(self.posts)
                if value or time.monotonic() >= deadline:
                    return value
                self.arrived.wait(max(0.0, deadline - time.monotonic()))

    def spans(self) -> list:
        out = []
        for path, _, body in self.posts:
            if path == "/v1/traces":
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        out.extend((resource_spans.resource, span) for span in scope_spans.spans)
        return out

    def log_records(self) -> list:
        out = []
        for path, _, body in self.posts:
            if path == "/v1/logs":
                request = ExportLogsServiceRequest.FromString(body)
                for resource_logs in request.resource_logs:
                    for scope_logs in resource_logs.scope_logs:
                        out.extend((resource_logs.resource, record) for record in scope_logs.log_records)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcTraceSink:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.arrived = threading.Event()
        sink = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 - the OTLP service's name
                sink.requests.append(request)
                sink.arrived.set()
                return trace_service_pb2.ExportTraceServiceResponse()

        import grpc

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.url = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)


class SilentServer:
    """Accepts connections and reads nothing back: every request hangs until the client gives up."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        for conn in self.accepted:
            conn.close()
