"""Spans written straight to OTLP protobuf bytes: the exporter's own encoder builds a message
object per span, attribute and value (and hashes the resource, as JSON, per span), which cost
more CPU than making the spans did. A collector decodes the same message as from the SDK's
`encode_spans` (tests/unit/test_telemetry_wire.py holds the two side by side)."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

log = logging.getLogger(__name__)

_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
# Span.flags: "the parent's is_remote is known", and "it is remote".
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64: ten bytes, two's complement
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: bytes, a string, or a nested message."""
    size = len(payload)
    tag = _TAGS[number] if number < 16 else _varint(number << 3 | 2)
    return tag + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


_TAGS = [bytes((number << 3 | 2,)) for number in range(16)]
_SMALL = [bytes((size,)) for size in range(0x80)]


def _text(number: int, value: str) -> bytes:
    return _field(number, value.encode("utf-8"))


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _text(1, value)
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Mapping):
        return _field(6, _key_values(value))
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    return b""  # None or a type OTLP cannot carry: an empty AnyValue, as the SDK's encoder


def _key_value(key: str, value: Any) -> bytes:
    return _text(1, key) + _field(2, _any_value(value))


def _key_values(
    attributes: Mapping[str, Any] | None, number: int = 1, seen: dict[Any, bytes] | None = None
) -> bytes:
    """Repeated KeyValue fields; `seen` keeps text pairs already encoded (they repeat a lot)."""
    if not attributes:
        return b""
    if seen is None:
        return b"".join(_field(number, _key_value(k, v)) for k, v in attributes.items())
    out = []
    for key, value in attributes.items():
        if type(value) is str:
            found = seen.get((number, key, value))
            if found is None:
                if len(seen) >= _SEEN_MAX:
                    seen.clear()
                found = seen[(number, key, value)] = _field(number, _key_value(key, value))
            out.append(found)
        else:
            out.append(_field(number, _key_value(key, value)))
    return b"".join(out)


_SEEN_MAX = 4096  # bounds the memory; request ids never repeat and would fill it


def _span(span: ReadableSpan, seen: dict[Any, bytes]) -> bytes:
    context, parent = span.context, span.parent
    assert context is not None  # every span the SDK ends has its context
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    state = context.trace_state
    if state:
        parts.append(_text(3, ",".join(f"{key}={value}" for key, value in state.items())))
    flags = _HAS_IS_REMOTE
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        if parent.is_remote:
            flags |= _IS_REMOTE
    parts.append(_text(5, span.name))
    parts.append(b"\x30" + _varint(span.kind.value + 1))  # the API's kinds start at 0, OTLP's at 1
    parts.append(b"\x39" + _FIXED64.pack(span.start_time or 0))
    parts.append(b"\x41" + _FIXED64.pack(span.end_time or 0))
    parts.append(_key_values(span.attributes, 9, seen))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _FIXED64.pack(event.timestamp) + _text(2, event.name)
        parts.append(_field(11, body + _key_values(event.attributes, 3)))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        linked = link.context
        body = b"\x0a\x10" + linked.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + linked.span_id.to_bytes(8, "big")
        link_flags = _HAS_IS_REMOTE | (_IS_REMOTE if linked.is_remote else 0)
        body += _key_values(link.attributes, 4) + b"\x35" + link_flags.to_bytes(4, "little")
        parts.append(_field(13, body))
    status = span.status
    body = _text(2, status.description) if status.description else b""
    if status.status_code.value:
        body += b"\x18" + _varint(status.status_code.value)
    parts.append(_field(15, body))
    parts.append(b"\x85\x01" + flags.to_bytes(4, "little"))  # field 16, fixed32
    return b"".join(parts)


def encode_spans(spans: Iterable[ReadableSpan], seen: dict[Any, bytes] | None = None) -> bytes:
    """An ExportTraceServiceRequest: spans grouped by resource, then by instrumentation scope."""
    # By identity: the spans of one process share one resource and one scope object, and a
    # Resource hashes itself by serialising its attributes to JSON.
    seen = {} if seen is None else seen
    groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        _, scopes = groups.setdefault(id(resource), (resource, {}))
        _, encoded = scopes.setdefault(id(scope), (scope, []))
        encoded.append(_field(2, _span(span, seen)))
    out = []
    for resource, scopes in groups.values():
        body = [_field(1, _key_values(resource.attributes))]
        for scope, encoded in scopes.values():
            head = b""
            if scope is not None:
                named = _text(1, scope.name) + (_text(2, scope.version) if scope.version else b"")
                head = _field(1, named + _key_values(scope.attributes, 3))
            body.append(_field(2, head + b"".join(encoded) + _schema(scope)))
        if resource.schema_url:
            body.append(_text(3, resource.schema_url))
        out.append(_field(1, b"".join(body)))
    return b"".join(out)


def _schema(scope: Any) -> bytes:
    url = getattr(scope, "schema_url", "") if scope is not None else ""
    return _text(3, url) if url else b""


class FastSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter (endpoint, headers, TLS, compression, retries and
    timeout from the OTEL_* variables), with `encode_spans` in place of its encoder."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._seen: dict[Any, bytes] = {}  # encoded attributes; the export thread's alone

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if client is None or getattr(self, "_shutdown", False):
            # An SDK whose exporter is built differently: its own path, slower but right.
            return super().export(spans)
        try:
            data = encode_spans(spans, self._seen)
        except Exception:
            log.exception("telemetry: a span batch could not be encoded; dropped")
            return SpanExportResult.FAILURE
        result = client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
