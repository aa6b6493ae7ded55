"""``python -m instrumented_server.alert_sink``: a webhook receiver that logs what Alertmanager sends.

The bundled destination of the default spec's notifications, so a fresh ``docker compose up``
pages somewhere visible: ``docker compose logs -f alert-sink`` (or ``logs/alert-sink.log`` under
``obsgen up``). Each notification Alertmanager posts (to any path, e.g. ``/alerts/oncall``) is
written to stdout as one JSON line::

    {"event": "notification", "path": "/alerts/oncall", "receiver": "oncall", "status": "firing",
     "alertname": "WebSocketHighErrorRate", "severity": "critical", "summary": "...", "firing": 1,
     "resolved": 0, "alerts": [{"status": "firing", "alertname": ..., "severity": ..., "summary": ...}]}

and answered ``200``. ``GET /healthz`` answers ``200 ok`` for healthchecks. A body that is not an
Alertmanager notification gets ``400`` (``411`` without a length, ``413`` when too large) and one
``{"event": "rejected", ...}`` line on stderr; nothing a client sends stops the sink.

Standard library only. Options: argument > ``OBSGEN_ALERT_SINK_*`` environment > default.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence, TextIO

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
MAX_BODY_BYTES = 4 * 1024 * 1024  # Alertmanager sends every alert of a group in one body
READ_TIMEOUT_SECONDS = 10.0  # a client that stops sending mid-body loses its connection, not a thread
HEALTH_PATH = "/healthz"


class NotANotification(ValueError):
    """The body parsed but is not what Alertmanager's webhook sends."""


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _labels(mapping: object) -> dict[str, Any]:
    return mapping if isinstance(mapping, dict) else {}


def summarize(payload: object, path: str) -> dict[str, Any]:
    """One log record for one Alertmanager notification (webhook payload version 4).

    Pure: raises ``NotANotification`` for anything else. Group-level fields come from the common
    labels and annotations; with mixed alerts, the alert names and severities are listed.
    """
    if not isinstance(payload, dict):
        raise NotANotification(f"expected a JSON object, got {type(payload).__name__}")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise NotANotification("expected a non-empty list under 'alerts'")
    if not all(isinstance(alert, dict) for alert in alerts):
        raise NotANotification("every item of 'alerts' must be an object")
    common_labels = _labels(payload.get("commonLabels"))
    common_annotations = _labels(payload.get("commonAnnotations"))

    entries = []
    for alert in alerts:
        labels, annotations = _labels(alert.get("labels")), _labels(alert.get("annotations"))
        entry = {
            "status": _text(alert.get("status")),
            "alertname": _text(labels.get("alertname")),
            "severity": _text(labels.get("severity")),
            "service": _text(labels.get("service")),
            "summary": _text(annotations.get("summary")),
            "starts_at": _text(alert.get("startsAt")),
            "runbook_url": _text(annotations.get("runbook_url")),
        }
        entries.append({key: value for key, value in entry.items() if value is not None})

    def common(key: str, shared: dict[str, Any], separator: str = ",") -> str | None:
        found = _text(shared.get(key))
        if found is not None:
            return found
        values = sorted({e[key] for e in entries if key in e})
        return separator.join(values) if values else None

    record = {
        "event": "notification",
        "path": path,
        "receiver": _text(payload.get("receiver")),
        "status": _text(payload.get("status")),
        "alertname": common("alertname", common_labels),
        "severity": common("severity", common_labels),
        "summary": common("summary", common_annotations, " | "),
        "firing": sum(1 for e in entries if e.get("status") == "firing"),
        "resolved": sum(1 for e in entries if e.get("status") == "resolved"),
        "alerts": entries,
    }
    truncated = payload.get("truncatedAlerts")
    if isinstance(truncated, int) and not isinstance(truncated, bool) and truncated > 0:
        record["truncated_alerts"] = truncated
    return {key: value for key, value in record.items() if value is not None}


class _Log:
    """JSON lines to two streams, one whole line at a time (handlers run on several threads)."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out, self._err, self._lock = out, err, threading.Lock()

    def write(self, record: dict[str, Any], error: bool = False) -> None:
        line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record},
                          ensure_ascii=False, sort_keys=False)
        stream = self._err if error else self._out
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or full log stream must not take the receiver down


class _Handler(BaseHTTPRequestHandler):
    server_version = "obsgen-alert-sink"
    protocol_version = "HTTP/1.1"  # Alertmanager keeps connections open between notifications
    timeout = READ_TIMEOUT_SECONDS
    log: _Log  # set on the subclass the server builds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the notification lines are the log; healthchecks every few seconds would bury them

    def _reply(self, status: HTTPStatus, body: dict[str, Any], close: bool = False) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _reject(self, status: HTTPStatus, reason: str, close: bool = False) -> None:
        self.log.write({"event": "rejected", "path": self.path, "status_code": int(status), "reason": reason},
                       error=True)
        self._reply(status, {"error": reason}, close=close)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] == HEALTH_PATH:
            self._reply(HTTPStatus.OK, {"status": "ok"})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"POST Alertmanager notifications here; GET {HEALTH_PATH}"})

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._receive()
        except TimeoutError:
            self.log.write({"event": "rejected", "path": self.path, "reason": "body not received in time"}, error=True)
            self.close_connection = True
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as exc:  # never let one request end the process or print a traceback
            self._reject(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}", close=True)

    def _receive(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self._reject(HTTPStatus.LENGTH_REQUIRED, "send the body with Content-Length", close=True)
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._reject(HTTPStatus.LENGTH_REQUIRED, "send the body with Content-Length", close=True)
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self._reject(HTTPStatus.BAD_REQUEST, f"Content-Length {length_text!r} is not a length", close=True)
            return
        if length > MAX_BODY_BYTES:
            self._reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over {MAX_BODY_BYTES}",
                         close=True)
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.log.write({"event": "rejected", "path": self.path, "reason": "connection closed mid-body"}, error=True)
            self.close_connection = True
            return
        try:
            record = summarize(json.loads(body), self.path.split("?", 1)[0])
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._reject(HTTPStatus.BAD_REQUEST, f"not an Alertmanager notification: {exc}")
            return
        receiver = record.get("receiver") or ""
        if not receiver and record["path"].rstrip("/"):
            record["receiver"] = record["path"].rstrip("/").rsplit("/", 1)[-1]
        self.log.write(record)
        self._reply(HTTPStatus.OK, {"status": "logged"})


def make_server(host: str, port: int, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> ThreadingHTTPServer:
    """A bound, not yet serving, sink; ``port`` 0 picks a free one (``server.server_address``)."""
    handler = type("AlertSinkHandler", (_Handler,), {"log": _Log(out, err)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m instrumented_server.alert_sink",
        description="Log every Alertmanager webhook notification as one JSON line on stdout.",
    )
    parser.add_argument("--host", default=os.environ.get("OBSGEN_ALERT_SINK_HOST", DEFAULT_HOST),
                        help=f"address to listen on (env OBSGEN_ALERT_SINK_HOST; default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None,
                        help=f"TCP port (env OBSGEN_ALERT_SINK_PORT; default {DEFAULT_PORT})")
    return parser


def _port(value: int | None, parser: argparse.ArgumentParser) -> int:
    if value is None:
        text = os.environ.get("OBSGEN_ALERT_SINK_PORT")
        if text is None:
            return DEFAULT_PORT
        try:
            value = int(text)
        except ValueError:
            parser.error(f"OBSGEN_ALERT_SINK_PORT={text!r} is not a port number")
    if not 0 <= value <= 65535:
        parser.error(f"port {value} is not between 0 and 65535")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    port = _port(args.port, parser)
    try:
        server = make_server(args.host, port)
    except OSError as exc:
        print(f"alert_sink: cannot listen on {args.host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    def stop(signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run on serve_forever's thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    # As PID 1 in a container, a signal without a handler is ignored: handle both explicitly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    host, bound = server.server_address[:2]
    server.RequestHandlerClass.log.write({"event": "listening", "url": f"http://{host}:{bound}/",
                                          "health": f"http://{host}:{bound}{HEALTH_PATH}"})
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
