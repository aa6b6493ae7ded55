"""OTLP trace requests written straight to protobuf's wire format, for the span export thread.

The SDK's encoder builds a protobuf object per span, per attribute and per value before
serialising them: about 17 µs of the export thread's CPU per span here, which is most of what
the export thread costs per publish (docs/performance.md). This writes the bytes of the same
``ExportTraceServiceRequest`` directly: per span, the ids, name, kind, times, flags, status and
plain attributes (str, bool, int, float). Anything else on a span (events, links, other attribute
values) and the resource and scope headers are encoded by the SDK's public ``encode_spans`` and
spliced in, since a protobuf message is the concatenation of its fields. The result parses to
the message the SDK would send (tests/exporter/test_exporter_otlp_wire.py compares them).
"""

from __future__ import annotations

import logging
import struct
from typing import Any, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

log = logging.getLogger("exporter.otlp_wire")

_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}
_FLAGS_HAS_IS_REMOTE = 0x100  # SpanFlags: the SDK always says whether the parent is remote
_FLAGS_IS_REMOTE = 0x200
_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_fixed32 = struct.Struct("<I").pack


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    if value < 0x80:
        return _BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_BYTE = [bytes((i,)) for i in range(256)]


def _field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its key byte(s), the length, the payload."""
    size = len(payload)
    return key + (_BYTE[size] if size < 0x80 else _varint(size)) + payload


class _Unplain(Exception):
    """A span this encoder leaves to the SDK's."""


# Encoded attributes by (key, value type, value): keys, operations, channel and client names repeat.
_attribute_cache: dict[tuple[str, type, Any], bytes] = {}
_ATTRIBUTE_CACHE_SIZE = 8192


def _key_value(key: str, value: Any) -> bytes:
    """Span.attributes (9): KeyValue{key 1, value 2: AnyValue{string 1 | bool 2 | int 3 | double 4}};
    a oneof member is written even when zero."""
    kind = type(value)
    cache_key = (key, kind, value)
    encoded = _attribute_cache.get(cache_key)
    if encoded is not None:
        return encoded
    if kind is str:
        any_value = _field(b"\x0A", value.encode("utf-8"))
    elif kind is bool:
        any_value = b"\x10\x01" if value else b"\x10\x00"
    elif kind is int and -(1 << 63) <= value < (1 << 63):
        any_value = b"\x18" + _varint(value)
    elif kind is float:
        any_value = b"\x21" + _double(value)
    else:
        raise _Unplain
    if type(key) is not str:
        raise _Unplain
    encoded = _field(b"\x4A", _field(b"\x0A", key.encode("utf-8")) + _field(b"\x12", any_value))
    if len(_attribute_cache) >= _ATTRIBUTE_CACHE_SIZE:  # ids and sizes vary without bound: start again
        _attribute_cache.clear()
    _attribute_cache[cache_key] = encoded
    return encoded


def _plain_span(span: ReadableSpan) -> bytes:
    """The span's wire bytes, or ``_Unplain`` when it carries something only the SDK encodes."""
    if span.events or span.links or span.dropped_attributes or span.dropped_events or span.dropped_links:
        raise _Unplain
    context = span.context
    parent = span.parent
    parts = [b"\x0A\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
    trace_state = context.trace_state
    if trace_state:
        parts.append(_field(b"\x1A", ",".join(f"{k}={v}" for k, v in trace_state.items()).encode("utf-8")))
    if parent:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    parts += (_field(b"\x2A", span.name.encode("utf-8")), b"\x30", _BYTE[_KIND[span.kind]],
              b"\x39", _fixed64(span.start_time), b"\x41", _fixed64(span.end_time))
    attributes = span.attributes
    if attributes:
        for key, value in attributes.items():
            parts.append(_key_value(key, value))
    status = span.status
    code = status.status_code
    body = b"" if code is StatusCode.UNSET else b"\x18" + _BYTE[code.value]
    if status.description:
        body = _field(b"\x12", status.description.encode("utf-8")) + body
    parts.append(_field(b"\x7A", body))  # Span.status = 15, always present as the SDK writes it
    flags = _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if parent is not None and parent.is_remote else 0)
    parts += (b"\x85\x01", _fixed32(flags))  # Span.flags = 16, fixed32
    return b"".join(parts)


def _sdk_span(span: ReadableSpan) -> bytes:
    return sdk_encode_spans([span]).resource_spans[0].scope_spans[0].spans[0].SerializeToString()


def _group_headers(span: ReadableSpan) -> tuple[bytes, bytes, bytes, bytes]:
    """ResourceSpans' resource and schema_url, ScopeSpans' scope and schema_url, as the SDK encodes them."""
    resource_spans = sdk_encode_spans([span]).resource_spans[0]
    scope_spans = resource_spans.scope_spans[0]
    return (_field(b"\x0A", resource_spans.resource.SerializeToString()),
            _field(b"\x1A", resource_spans.schema_url.encode("utf-8")) if resource_spans.schema_url else b"",
            _field(b"\x0A", scope_spans.scope.SerializeToString()),
            _field(b"\x1A", scope_spans.schema_url.encode("utf-8")) if scope_spans.schema_url else b"")


def _canonical(thing: Any, canonical: dict[int, Any], by_value: dict[Any, Any]) -> Any:
    found = canonical.get(id(thing))
    if found is None:
        found = canonical[id(thing)] = by_value.setdefault(thing, thing)
    return found


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """A serialised ``ExportTraceServiceRequest``: spans grouped by resource, then scope, in order.

    Groups are keyed as the SDK keys them (equal resources and scopes share a group), but each
    distinct object is hashed once per batch: a ``Resource`` hashes by serialising its attributes.
    """
    canonical: dict[int, Any] = {}  # id(object) -> the first equal object seen
    by_value: dict[Any, Any] = {}
    groups: dict[int, dict[int, list[bytes]]] = {}  # by id of the canonical resource, then scope
    headers: dict[tuple[int, int], tuple[bytes, bytes, bytes, bytes]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        resource_id = id(_canonical(resource, canonical, by_value))
        scope_id = id(None) if scope is None else id(_canonical(scope, canonical, by_value))
        try:
            encoded = _plain_span(span)
        except Exception:  # _Unplain, or a span unlike the SDK's: the SDK's encoder decides
            encoded = _sdk_span(span)
        scopes = groups.get(resource_id)
        if scopes is None:
            scopes = groups[resource_id] = {}
        encoded_spans = scopes.get(scope_id)
        if encoded_spans is None:
            encoded_spans = scopes[scope_id] = []
            headers[(resource_id, scope_id)] = _group_headers(span)
        encoded_spans.append(encoded)
    out = []
    for resource_id, scopes in groups.items():
        resource_bytes = schema = b""
        scope_parts = []
        for scope_id, encoded_spans in scopes.items():
            resource_bytes, schema, scope_bytes, scope_schema = headers[(resource_id, scope_id)]
            body = b"".join([b"\x12" + (_BYTE[len(e)] if len(e) < 0x80 else _varint(len(e))) + e
                             for e in encoded_spans])  # ScopeSpans.spans = 2
            scope_parts.append(_field(b"\x12", scope_bytes + body + scope_schema))  # ResourceSpans.scope_spans = 2
        out.append(_field(b"\x0A", resource_bytes + b"".join(scope_parts) + schema))  # request.resource_spans = 1
    return b"".join(out)


def fast_http_exporter(endpoint: str, timeout: float):
    """The SDK's OTLP/HTTP span exporter, encoding with ``encode_spans`` above.

    Its ``export`` is the SDK's (1.4x: size limit, retries, compression, headers, its own
    metrics) with the encoder swapped. An SDK whose exporter is laid out otherwise keeps its
    own ``export`` untouched.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class WireEncodingSpanExporter(OTLPSpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            client = getattr(self, "_client", None)
            metrics = getattr(self, "_metrics", None)
            if client is None or metrics is None or not hasattr(self, "_max_request_size"):
                return super().export(spans)
            if self._shutdown:
                log.warning("Exporter already shutdown, ignoring batch")
                return SpanExportResult.FAILURE
            with metrics.export_operation(len(spans)) as result:
                try:
                    serialized = encode_spans(spans)
                except Exception as error:  # the SDK's encoder gets its chance
                    log.error("Failed to encode span batch: %r; using the SDK's encoder", error)
                    return super().export(spans)
                if 0 < self._max_request_size < len(serialized):
                    log.warning("Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                                len(serialized), self._max_request_size)
                    result.error = ValueError("span batch too large")
                    return SpanExportResult.FAILURE
                exported = client.export(serialized)
                if not exported.success:
                    result.error = exported.error
                    return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    return WireEncodingSpanExporter(endpoint=endpoint, timeout=timeout)
