"""Instrument a python-socketio ``AsyncServer`` (aiohttp or ASGI) in one call.

    import socketio
    from aiohttp import web
    import exporter

    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)
    instrumentation = exporter.instrument_socketio(sio, app=app, service_name="chat")  # + GET /metrics

It measures the server under the catalog's names, so the built-in dashboards and alert pack
read a Socket.IO service like a `websockets` one:

- a namespace connection is a connection (``namespace`` label = the Socket.IO namespace);
  refusals by the connect handler count as ``auth_missing`` (no auth payload) or ``auth_failed``;
  every disconnection counts under the close code its Socket.IO reason corresponds to
  (``DISCONNECT_CODES``) and under its reason in ``socketio_disconnections_total``;
- events in and out count by event name (``type`` label): an incoming event by its name when a
  handler is registered for that name, else ``other`` (a client cannot mint label values); an
  outgoing one by the name the server's code emits, up to 64 names; acknowledgements as ``ack``;
  handler latency and
  handler exceptions (``reason="internal"``), undecodable packets (``malformed``);
- an emit to a room or to a whole namespace counts once, with its recipient count (sent counter,
  fan-out counter, weighted size histogram); room memberships are ``websocket_subscriptions``;
- with a pub/sub manager (``AsyncRedisManager``), each message over the backplane carries its
  publish time and trace context: its lag is ``websocket_broker_lag_seconds{broker="redis"}``,
  a failed publish is ``websocket_errors_total{reason="broker"}``, deliveries on other
  processes continue the publisher's trace.

Spans: ``socketio.connect`` continues the W3C context in the client's **auth payload**
(``auth={"traceparent": ...}``); ``socketio.event.<name>`` continues the context in the
event's **data**: the first argument that is an object with a ``traceparent`` key. Without one,
each event starts a trace of its own (a connection's events do not share one endless trace).

The patches are on this server instance and its manager only (never on the classes), on
python-socketio 5.x's dispatch methods; ``instrument_socketio`` refuses another major version.
python-socketio is imported here only, so ``exporter`` works without it.
"""

from __future__ import annotations

import contextvars
import importlib.metadata
import logging
import time
from typing import Any, Callable, Mapping

from exporter import catalog
from exporter.metrics import MAX_OPEN_LABEL_VALUES, WeightedObserver, declare, incrementer
from exporter.util import RateLimitedLog

log = logging.getLogger("exporter.socketio")

OTHER = "other"
# Socket.IO's disconnect reasons (python-engineio's Server.reason) -> the WebSocket close code with
# the same meaning. The alert pack counts codes other than 1000/1001 as abnormal endings.
DISCONNECT_CODES: dict[str, int] = {
    "client disconnect": 1000,  # the client called disconnect()
    "server disconnect": 1000,  # the application called disconnect(), or the server shut down
    "transport close": 1006,  # the transport went away without a Socket.IO goodbye
    "transport error": 1006,
    "ping timeout": 1011,  # what websockets sends when a keepalive ping times out
}
ABNORMAL_CODE = 1006
BROKER_LABELS = {"aioredis": "redis"}  # python-socketio manager name -> the catalog's broker label
# The key a message over the pub/sub backplane carries our fields under: W3C trace context and
# the publish time. Other processes (instrumented or not) ignore keys they do not know.
BACKPLANE_KEY = "obsgen"

_INCOMING_SIZE: contextvars.ContextVar[int] = contextvars.ContextVar("socketio_incoming_size", default=0)


def _size(message: Any) -> int:
    if isinstance(message, str):
        return len(message) if message.isascii() else len(message.encode())
    if isinstance(message, (bytes, bytearray, memoryview)):
        return len(message)
    if isinstance(message, list):  # a binary packet: text part and attachments
        return sum(_size(part) for part in message)
    return 0


def _carrier(args) -> Mapping[str, str] | None:
    """The first event argument that is an object carrying ``traceparent``, as a propagation carrier."""
    for arg in args:
        if isinstance(arg, dict) and isinstance(arg.get("traceparent"), str):
            return arg
    return None


# The catalog's transport label of every Socket.IO connection and delivery (whichever Engine.IO
# transport, WebSocket or long-polling, carries it), so dashboards split by transport show it apart.
TRANSPORT = "socketio"


class _Children(dict):
    """Label value -> child of one family, resolved once. Callers pass bounded values only."""

    def __init__(self, family, wrap: Callable) -> None:
        super().__init__()
        self._family = family
        self._wrap = wrap

    def __missing__(self, key):
        child = self[key] = self._wrap(self._family.labels(*key) if isinstance(key, tuple) else self._family.labels(key))
        return child


def _check_version() -> None:
    try:
        version = importlib.metadata.version("python-socketio")
    except importlib.metadata.PackageNotFoundError:  # importable without metadata (vendored): trust the checks in install()
        return
    if version.split(".", 1)[0] != "5":
        raise RuntimeError(f"exporter.instrument_socketio supports python-socketio 5.x (its dispatch methods are "
                           f"patched); python-socketio {version} is installed")


class SocketIOInstrumentation:
    """The patches on one ``AsyncServer`` and the counting they do; see the module docstring."""

    def __init__(self, server, telemetry, *, max_event_names: int = MAX_OPEN_LABEL_VALUES) -> None:
        from socketio import packet

        self.server = server
        self.manager = server.manager
        self.telemetry = telemetry
        self.logger = telemetry.logger
        self._packet = packet
        self._max_event_names = max_event_names
        self._event_labels: dict[str, str] = {}
        self._namespace_labels: dict[str, str] = {}
        self._open: dict[str, str] = {}  # sid -> namespace label, for connections counted as opened
        self._failures = RateLimitedLog(log)
        self.broker = None
        if getattr(self.manager, "_publish", None) is not None and hasattr(self.manager, "_handle_emit"):
            self.broker = BROKER_LABELS.get(self.manager.name, self.manager.name)

        metrics = telemetry.metrics
        families = metrics.families
        self._received = _Children(families[catalog.MESSAGES_RECEIVED_TOTAL.name], incrementer)
        self._sent = _Children(families[catalog.MESSAGES_SENT_TOTAL.name], incrementer)
        self._duration = _Children(families[catalog.MESSAGE_DURATION_SECONDS.name], WeightedObserver)
        sizes = families[catalog.MESSAGE_SIZE_BYTES.name]
        self._size_in = WeightedObserver(sizes.labels("in"))
        self._size_out = WeightedObserver(sizes.labels("out"))
        reasons = catalog.SOCKETIO_DISCONNECTIONS_TOTAL
        if reasons.name not in families:  # a registry of our own metric next to the catalog's
            families[reasons.name] = declare(reasons, telemetry.registry)
        self._reasons = _Children(families[reasons.name], incrementer)

    # ---------------------------------------------------------------------------------- labels

    def namespace_label(self, namespace: str) -> str:
        """The namespace itself when the server accepts it by name (a handler or ``namespaces``), else other."""
        label = self._namespace_labels.get(namespace)
        if label is None:
            server = self.server
            named = server.namespaces if isinstance(server.namespaces, (list, tuple, set)) else ()
            known = namespace in server.handlers or namespace in server.namespace_handlers or namespace in named
            label = namespace if known and len(self._namespace_labels) < MAX_OPEN_LABEL_VALUES else OTHER
            if label != OTHER:
                self._namespace_labels[namespace] = label
        return label

    def event_label(self, namespace: str, event: Any) -> str:
        """The event name when a handler is registered for it by name, else other (bounded cardinality:
        client-chosen names never become label values)."""
        label = self._event_labels.get(event) if isinstance(event, str) else OTHER
        if label is None:
            label = OTHER
            if len(self._event_labels) < self._max_event_names and self._registered(namespace, event):
                label = self._event_labels[event] = event
        return label

    def emitted_label(self, event: Any) -> str:
        """An outgoing event's name: the server's code chooses it, so it is its own label value up to
        ``max_event_names`` distinct names (handler names included), then other."""
        label = self._event_labels.get(event) if isinstance(event, str) else OTHER
        if label is None:
            label = OTHER
            if len(self._event_labels) < self._max_event_names:
                label = self._event_labels[event] = event
        return label

    def _registered(self, namespace: str, event: str) -> bool:
        server = self.server
        for key in (namespace, "*"):
            if event in server.handlers.get(key, ()):
                return True
            handler = server.namespace_handlers.get(key)
            if handler is not None and callable(getattr(handler, "on_" + event, None)):
                return True
        return False

    # -------------------------------------------------------------------------------- counting

    def _failed(self, what: str, exc: BaseException) -> None:
        self._failures.warning("socket.io telemetry %s failed: %r", what, exc)

    def count_received(self, label: str, size: int) -> None:
        try:
            self._received[label](1)
            self._size_in(size)
        except Exception as exc:
            self._failed("count_received", exc)

    def count_sent(self, label: str, recipients: int, size: int) -> None:
        try:
            if recipients > 0:
                self._sent[(label, TRANSPORT)](recipients)
                self._size_out(size, recipients)
        except Exception as exc:
            self._failed("count_sent", exc)

    def observe_duration(self, label: str, seconds: float, span) -> None:
        try:
            observe = self._duration[label]
            if getattr(span, "sampled", False):  # an exemplar links the bucket to a kept trace
                observe.observe_with_exemplar(seconds, {"trace_id": span.trace_id})
            else:
                observe(seconds)
        except Exception as exc:
            self._failed("observe_duration", exc)

    def handler_failed(self, exc: BaseException, what: str, namespace: str) -> None:
        """A handler raised: count it once, log it inside the current span (so with its trace id)."""
        if getattr(exc, "_obsgen_counted", False):
            return
        try:
            exc._obsgen_counted = True
        except Exception:  # an exception type with __slots__: counted, maybe twice
            pass
        self.telemetry.error("internal")
        self.logger.error("socket.io %s handler failed in %s: %r", what, namespace, exc, exc_info=exc,
                          extra={"socketio_namespace": namespace, "socketio_event": what})

    def connection_closed(self, namespace: str, sid: str, reason: Any) -> None:
        label = self._open.pop(sid, None)
        if label is None:  # never counted as opened (refused, or a duplicate connect)
            return
        code = DISCONNECT_CODES.get(reason, ABNORMAL_CODE)
        reason_label = reason.replace(" ", "_") if reason in DISCONNECT_CODES else OTHER
        self.telemetry.connection_closed(label, code, transport=TRANSPORT)
        try:
            self._reasons[(label, reason_label)](1)
        except Exception as exc:
            self._failed("connection_closed", exc)
        self.logger.info("socket.io disconnect from %s: %s", namespace, reason,
                         extra={"socketio_namespace": namespace, "socketio_sid": sid,
                                "disconnect_reason": reason, "close_code": code})

    def recipients(self, namespace: str, room: Any, skip_sid: Any) -> tuple[int, bool]:
        """(recipients on this process, whether it is a fan-out), as ``AsyncManager.emit`` picks them."""
        rooms = self.manager.rooms.get(namespace)
        if not rooms:
            return 0, False
        if room is not None and not isinstance(room, str) and hasattr(room, "__len__"):  # a list of rooms
            members: Any = set()
            for name in room:
                members.update(rooms.get(name, ()))
            fanout = True
        else:
            members = rooms.get(room)
            if members is None:
                return 0, False
            fanout = room is None or room not in rooms.get(None, ())  # a sid's own room is one client
        count = len(members)
        for sid in skip_sid if isinstance(skip_sid, list) else (skip_sid,):
            if sid is not None and sid in members:
                count -= 1
        return count, fanout

    def event_size(self, namespace: str, event: str, args: list) -> int:
        """Bytes of the event packet each recipient gets (encoded once per fan-out, not per recipient)."""
        try:
            return _size(self.server.packet_class(self._packet.EVENT, namespace=namespace, data=[event, *args]).encode())
        except Exception:
            return 0

    # ------------------------------------------------------------------------------- patches

    def install(self) -> None:
        server, manager = self.server, self.manager
        for name in ("_handle_eio_message", "_handle_connect", "_handle_event", "_handle_event_internal",
                     "_handle_ack", "_trigger_event", "_send_packet"):
            if not callable(getattr(server, name, None)):
                raise RuntimeError(f"this python-socketio AsyncServer has no {name}; exporter.socketio supports 5.x")
        server._handle_eio_message = self._wrap_eio_message(server._handle_eio_message)
        if server.eio.handlers.get("message") is not None:  # Engine.IO holds the bound method it was given
            server.eio.on("message", server._handle_eio_message)
        server._handle_connect = self._wrap_connect(server._handle_connect)
        server._handle_event = self._wrap_event(server._handle_event)
        server._handle_event_internal = self._wrap_event_internal(server._handle_event_internal)
        server._handle_ack = self._wrap_ack(server._handle_ack)
        server._trigger_event = self._wrap_trigger_event(server._trigger_event)
        server._send_packet = self._wrap_send_packet(server._send_packet)
        manager.basic_enter_room = self._wrap_enter_room(manager.basic_enter_room)
        manager.basic_leave_room = self._wrap_leave_room(manager.basic_leave_room)
        if self.broker is not None:
            manager._handle_emit = self._wrap_handle_emit(manager._handle_emit)
            manager._publish = self._wrap_publish(manager._publish)
        manager.emit = self._wrap_manager_emit(manager.emit, local_only=self.broker is not None)
        server._obsgen_instrumentation = self

    def _wrap_eio_message(self, original):
        async def handle_eio_message(eio_sid, data):
            token = _INCOMING_SIZE.set(_size(data))
            try:
                return await original(eio_sid, data)
            except ValueError as exc:  # python-socketio's word for a packet it cannot decode or place
                if not getattr(exc, "_obsgen_counted", False):
                    self.telemetry.error("malformed")
                raise
            finally:
                _INCOMING_SIZE.reset(token)

        return handle_eio_message

    def _wrap_connect(self, original):
        server, manager, telemetry = self.server, self.manager, self.telemetry

        async def handle_connect(eio_sid, namespace, data):
            namespace = namespace or "/"
            label = self.namespace_label(namespace)
            self.count_received("connect", _INCOMING_SIZE.get())
            duplicate = manager.sid_from_eio_sid(eio_sid, namespace) is not None
            served = (namespace in server.handlers or namespace in server.namespace_handlers
                      or server.namespaces == "*" or namespace in server.namespaces)
            carrier = data if isinstance(data, dict) and isinstance(data.get("traceparent"), str) else {}
            started = time.perf_counter()
            status = "error"
            with telemetry.span("socketio.connect", {"messaging.system": "socketio", "socketio.namespace": namespace},
                                parent=carrier, kind="server") as span:
                try:
                    await original(eio_sid, namespace, data)
                    sid = manager.sid_from_eio_sid(eio_sid, namespace)
                    if duplicate or not served:
                        status = "error"
                    elif sid is not None and manager.is_connected(sid, namespace) and sid not in self._open:
                        status = "accepted"
                        self._open[sid] = label
                        span.set_attribute("socketio.sid", sid)
                    else:  # the connect handler returned False or raised ConnectionRefusedError
                        status = "auth_failed" if data else "auth_missing"
                except Exception as exc:
                    self.handler_failed(exc, "connect", namespace)
                    raise
                finally:
                    span.set_attribute("socketio.connect.status", status)
                    if status == "accepted":
                        telemetry.connection_opened(label, transport=TRANSPORT)
                        self.logger.info("socket.io connect to %s accepted", namespace,
                                         extra={"socketio_namespace": namespace, "socketio_sid": sid})
                    else:
                        telemetry.connection_rejected(status, transport=TRANSPORT)
                        self.logger.info("socket.io connect to %s refused: %s", namespace, status,
                                         extra={"socketio_namespace": namespace, "status": status})
                    self.observe_duration("connect", time.perf_counter() - started, span)

        return handle_connect

    def _wrap_event(self, original):
        async def handle_event(eio_sid, namespace, id, data):  # noqa: A002 - python-socketio's name
            self.count_received(self.event_label(namespace or "/", data[0] if data else None), _INCOMING_SIZE.get())
            return await original(eio_sid, namespace, id, data)

        return handle_event

    def _wrap_event_internal(self, original):
        telemetry = self.telemetry

        async def handle_event_internal(server, sid, eio_sid, data, namespace, id):  # noqa: A002
            label = self.event_label(namespace, data[0])
            attributes = {"messaging.system": "socketio", "messaging.operation": "process",
                          "socketio.namespace": namespace, "socketio.event": label, "socketio.sid": sid}
            started = time.perf_counter()
            with telemetry.span(f"socketio.event.{label}", attributes, parent=_carrier(data[1:]) or {},
                                kind="server") as span:
                try:
                    return await original(server, sid, eio_sid, data, namespace, id)
                except Exception as exc:
                    self.handler_failed(exc, label, namespace)
                    raise
                finally:
                    self.observe_duration(label, time.perf_counter() - started, span)

        return handle_event_internal

    def _wrap_ack(self, original):
        async def handle_ack(eio_sid, namespace, id, data):  # noqa: A002
            self.count_received("ack", _INCOMING_SIZE.get())
            return await original(eio_sid, namespace, id, data)

        return handle_ack

    def _wrap_trigger_event(self, original):
        telemetry = self.telemetry

        async def trigger_event(event, namespace, *args):
            if event != "disconnect":
                return await original(event, namespace, *args)
            # args: (sid, reason); the reason is what python-socketio 5.x passes to the handler
            sid, reason = (args[0], args[1]) if len(args) > 1 else (args[0] if args else None, None)
            try:
                self.connection_closed(namespace, sid, reason)
            except Exception as exc:
                self._failed("disconnect", exc)
            with telemetry.span("socketio.disconnect", {"messaging.system": "socketio", "socketio.namespace": namespace,
                                                        "socketio.disconnect.reason": str(reason)}, parent={}):
                try:
                    return await original(event, namespace, *args)
                except Exception as exc:
                    self.handler_failed(exc, "disconnect", namespace)
                    raise

        return trigger_event

    def _wrap_send_packet(self, original):
        ack = self._packet.ACK

        async def send_packet(eio_sid, pkt):
            if pkt.packet_type == ack:  # a handler's return value answering a client's emit
                self.count_sent("ack", 1, _size(pkt.encode()))
            return await original(eio_sid, pkt)

        return send_packet

    def _wrap_enter_room(self, original):
        def basic_enter_room(sid, namespace, room, eio_sid=None):
            if room is None or room == sid:  # the namespace's all-clients room and the sid's own room
                return original(sid, namespace, room, eio_sid=eio_sid)
            members = self.manager.rooms.get(namespace, {}).get(room)
            joined = members is None or sid not in members
            result = original(sid, namespace, room, eio_sid=eio_sid)
            if joined:
                self.telemetry.subscriptions_changed(self.namespace_label(namespace), 1)
            return result

        return basic_enter_room

    def _wrap_leave_room(self, original):
        def basic_leave_room(sid, namespace, room):
            if room is None or room == sid:
                return original(sid, namespace, room)
            members = self.manager.rooms.get(namespace, {}).get(room)
            held = members is not None and sid in members
            result = original(sid, namespace, room)
            if held:
                self.telemetry.subscriptions_changed(self.namespace_label(namespace), -1)
            return result

        return basic_leave_room

    async def _deliver(self, call, event, args, namespace, room, skip_sid, carrier=None):
        """Run one local delivery, counted once with its recipient count; a fan-out gets a span."""
        namespace = namespace or "/"
        recipients, fanout = self.recipients(namespace, room, skip_sid)
        if recipients == 0:
            return await call()
        label = self.emitted_label(event)
        self.count_sent(label, recipients, self.event_size(namespace, event, args))
        if not fanout:
            return await call()
        self.telemetry.fanout(recipients, transport=TRANSPORT)
        if self.telemetry.tracing is None:
            return await call()
        attributes = {"messaging.system": "socketio", "messaging.operation": "publish", "socketio.namespace": namespace,
                      "socketio.event": label, "socketio.recipients": recipients}
        if carrier is None:
            with self.telemetry.span("socketio.emit", attributes, kind="producer"):
                return await call()
        with self.telemetry.span("socketio.emit", attributes, parent=carrier, kind="consumer"):
            return await call()

    def _wrap_manager_emit(self, original, local_only: bool):
        async def emit(event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
            room = to or room
            if local_only and not kwargs.get("ignore_queue"):  # goes through _handle_emit, counted there
                return await original(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs)
            args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
            return await self._deliver(
                lambda: original(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs),
                event, args, namespace, room, skip_sid)

        return emit

    def _wrap_handle_emit(self, original):
        async def handle_emit(message):
            fields = message.get(BACKPLANE_KEY)
            remote = message.get("host_id") != self.manager.host_id
            carrier = None
            if remote and isinstance(fields, dict):
                carrier = fields
                published_at = fields.get("published_at")
                if isinstance(published_at, (int, float)):
                    self.telemetry.broker_lag(self.broker, max(0.0, time.time() - published_at))
            data = message.get("data")
            args = data if isinstance(data, list) else [data]
            return await self._deliver(lambda: original(message), message.get("event"), args,
                                       message.get("namespace"), message.get("room"), message.get("skip_sid"),
                                       carrier=carrier)

        return handle_emit

    def _wrap_publish(self, original):
        redis = self.manager.name == "aioredis"

        async def publish(data):
            if isinstance(data, dict) and BACKPLANE_KEY not in data:
                fields: dict[str, Any] = {"published_at": time.time()}
                self.telemetry.inject(fields)
                data[BACKPLANE_KEY] = fields
            try:
                result = await original(data)
            except Exception:
                self.telemetry.error("broker")
                raise
            if redis and result is None:  # AsyncRedisManager gives up after a retry and returns None
                self.telemetry.error("broker")
            return result

        return publish

    # ---------------------------------------------------------------------------- /metrics

    def aiohttp_handler(self):
        """An aiohttp handler answering with the exposition (OpenMetrics when asked, for exemplars)."""
        from aiohttp import web

        telemetry = self.telemetry

        async def metrics(request):
            body, content_type = telemetry.exposition(request.headers.get("Accept"))
            return web.Response(body=body, headers={"Content-Type": content_type})

        return metrics

    def shutdown(self, timeout_seconds: float = 5.0) -> None:
        self.telemetry.shutdown(timeout_seconds)


def asgi_metrics_app(telemetry, other_asgi_app=None, metrics_path: str = "/metrics"):
    """An ASGI app answering ``GET <metrics_path>`` and handing anything else to ``other_asgi_app``:
    ``socketio.ASGIApp(sio, other_asgi_app=asgi_metrics_app(instrumentation.telemetry))``."""

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == metrics_path and scope.get("method") in ("GET", "HEAD"):
            accept = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"accept"), None)
            body, content_type = telemetry.exposition(accept)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
        elif other_asgi_app is not None:
            await other_asgi_app(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

    return app


def instrument_socketio(server, telemetry=None, *, app=None, metrics_path: str = "/metrics",
                        **instrument_kwargs) -> SocketIOInstrumentation:
    """Instrument a python-socketio ``AsyncServer``; builds ``instrument(**instrument_kwargs)`` when no
    ``telemetry`` is given. With ``app`` (an aiohttp ``web.Application``), also serves ``GET metrics_path``
    there; for ASGI, wrap with ``asgi_metrics_app``."""
    try:
        import socketio
    except ImportError as exc:
        raise ImportError("exporter.instrument_socketio needs python-socketio 5.x: "
                          "pip install 'python-socketio>=5.11,<6'") from exc
    _check_version()

    if not isinstance(server, socketio.AsyncServer):
        raise ValueError(f"instrument_socketio instruments a socketio.AsyncServer, got {type(server).__name__}")
    if getattr(server, "_obsgen_instrumentation", None) is not None:
        raise ValueError("this socketio.AsyncServer is already instrumented")
    if telemetry is None:
        from exporter.instrument import instrument

        instrument_kwargs.setdefault("logger", "socketio_server")
        telemetry = instrument(**instrument_kwargs)
    elif instrument_kwargs:
        raise ValueError(f"pass either telemetry or instrument() arguments, not both: {sorted(instrument_kwargs)}")
    instrumentation = SocketIOInstrumentation(server, telemetry) if telemetry.enabled else _Disabled(telemetry)
    if telemetry.enabled:
        instrumentation.install()
    if app is not None:
        if not hasattr(app, "router"):
            raise ValueError("app must be an aiohttp web.Application; for ASGI use exporter.socketio.asgi_metrics_app")
        app.router.add_get(metrics_path, SocketIOInstrumentation.aiohttp_handler(instrumentation))
    return instrumentation


class _Disabled:
    """Telemetry switched off: nothing patched; /metrics answers empty."""

    def __init__(self, telemetry) -> None:
        self.telemetry = telemetry

    def shutdown(self, timeout_seconds: float = 5.0) -> None:
        self.telemetry.shutdown(timeout_seconds)
