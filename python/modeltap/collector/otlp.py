"""OpenTelemetry (OTLP/gRPC) in and out of the collector, through the
``opentelemetry-proto`` messages.

In: the collector serves ``opentelemetry.proto.collector.trace.v1.
TraceService/Export`` on its gRPC port, so a service instrumented with plain
OpenTelemetry (its OTLP exporter pointed at the collector) lands its spans
in the same ``spans`` table, and the same traces, as the agents' spans.

Out: ``--otlp-endpoint HOST:PORT`` forwards every span stored (the agents'
and OTLP-in ones) to Jaeger, Tempo or an OpenTelemetry Collector, grouped by
resource (``service.name`` = the model, ``service.version`` = its version,
``host.name``), in batches, retried with exponential backoff on the
retryable status codes. Its queue is bounded: spans that find it full, or
whose batch is refused for good or runs out of retries, are counted as
dropped (``OtlpForwarder.stats()``) and logged.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from typing import Any

import grpc
import pyarrow as pa
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from modeltap.collector.store import MAX_UNIX_NANO, SPAN_KINDS, SPAN_STATUS, span_rows_table

log = logging.getLogger("modeltap.collector")

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT_METHOD = f"/{TRACE_SERVICE}/Export"
MAX_ATTRIBUTES = 64
MAX_TEXT = 16 * 1024
# Spans one OTLP request may carry: counted before any span is walked in
# Python, so a request of many minimal spans costs no more than this many
# (an OpenTelemetry SDK exports 512 at a time, a Collector 8,192).
MAX_REQUEST_SPANS = 65_536
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DATA_LOSS,
}


def _any_text(v: common_pb2.AnyValue) -> str:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return "true" if v.bool_value else "false"
    if which == "int_value":
        return str(v.int_value)
    if which == "double_value":
        return repr(v.double_value)
    if which == "bytes_value":
        return v.bytes_value.hex()
    if which == "array_value":
        return "[" + ",".join(_any_text(x) for x in v.array_value.values) + "]"
    if which == "kvlist_value":
        return (
            "{" + ",".join(f"{kv.key}={_any_text(kv.value)}" for kv in v.kvlist_value.values) + "}"
        )
    return ""


def _attrs(kvs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in kvs:
        if len(out) >= MAX_ATTRIBUTES:
            break
        out[kv.key[:MAX_TEXT]] = _any_text(kv.value)[:MAX_TEXT]
    return out


OTLP_COLUMNS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_ts",
    "start_unix_nano",
    "duration_ns",
    "status",
    "error_type",
    "error_message",
    "attributes",
    "trace_state",
    "service",
    "model",
    "version",
    "host",
    "source",
]


def spans_from_request(data: bytes) -> tuple[pa.Table | None, int, str]:
    """The ``spans`` rows of an OTLP ``ExportTraceServiceRequest``, the
    number of spans refused, and why (empty when none). Raises
    ``ValueError`` for bytes that are not such a request."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    try:
        req.ParseFromString(data)
    except Exception as e:  # DecodeError
        raise ValueError(f"not an OTLP ExportTraceServiceRequest: {e}") from None
    total = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    if total > MAX_REQUEST_SPANS:
        raise ValueError(
            f"an OTLP request of {total:,} spans (at most {MAX_REQUEST_SPANS:,} a request): "
            "export them in smaller batches"
        )
    cols: dict[str, list[Any]] = {c: [] for c in OTLP_COLUMNS}
    rejected = 0
    why = ""
    for rs in req.resource_spans:
        res = _attrs(rs.resource.attributes)
        service = res.get("service.name", "unknown_service")
        model = res.get("modeltap.model")
        version = res.get("modeltap.model_version", res.get("service.version"))
        host = res.get("host.name")
        for ss in rs.scope_spans:
            for sp in ss.spans:
                bad = ""
                if len(sp.trace_id) != 16 or not any(sp.trace_id):
                    bad = "trace_id must be 16 bytes, not all zero"
                elif len(sp.span_id) != 8 or not any(sp.span_id):
                    bad = "span_id must be 8 bytes, not all zero"
                elif sp.parent_span_id and len(sp.parent_span_id) != 8:
                    bad = "parent_span_id must be 8 bytes"
                elif sp.start_time_unix_nano > MAX_UNIX_NANO or (
                    sp.end_time_unix_nano > MAX_UNIX_NANO
                ):
                    bad = "a time past the largest timestamp"
                if bad:
                    rejected += 1
                    why = why or bad
                    continue
                attrs = _attrs(sp.attributes)
                err_type = err_msg = None
                for ev in sp.events:
                    if ev.name == "exception":
                        ea = _attrs(ev.attributes)
                        err_type = ea.get("exception.type", err_type)
                        err_msg = ea.get("exception.message", err_msg)
                code = int(sp.status.code)
                if code == 2 and sp.status.message and err_msg is None:
                    err_msg = sp.status.message[:MAX_TEXT]
                parent = sp.parent_span_id.hex() if any(sp.parent_span_id) else None
                start = int(sp.start_time_unix_nano)
                dur = max(int(sp.end_time_unix_nano) - start, 0)
                kind = int(sp.kind)
                cols["trace_id"].append(sp.trace_id.hex())
                cols["span_id"].append(sp.span_id.hex())
                cols["parent_span_id"].append(parent)
                cols["name"].append(sp.name[:MAX_TEXT])
                cols["kind"].append(
                    SPAN_KINDS[kind] if 0 <= kind < len(SPAN_KINDS) else "unspecified"
                )
                cols["start_ts"].append(start)
                cols["start_unix_nano"].append(start)
                cols["duration_ns"].append(dur)
                cols["status"].append(SPAN_STATUS[code] if 0 <= code < 3 else "unset")
                cols["error_type"].append(err_type)
                cols["error_message"].append(err_msg)
                cols["attributes"].append(list(attrs.items()) or None)
                cols["trace_state"].append(sp.trace_state[:MAX_TEXT] or None)
                cols["service"].append(service)
                cols["model"].append(model)
                cols["version"].append(version)
                cols["host"].append(host)
                cols["source"].append("otlp")
    if not cols["trace_id"]:
        return None, rejected, why
    return span_rows_table(cols), rejected, why


def response(rejected: int, why: str) -> bytes:
    """An ``ExportTraceServiceResponse`` (with ``partial_success`` when
    some spans were refused)."""
    r = trace_service_pb2.ExportTraceServiceResponse()
    if rejected:
        r.partial_success.rejected_spans = rejected
        r.partial_success.error_message = why
    return r.SerializeToString()


def _kv(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def request_from_rows(rows: list[dict[str, Any]]) -> bytes:
    """An OTLP ``ExportTraceServiceRequest`` of ``spans`` rows (dicts),
    one ``ResourceSpans`` per (service, version, host)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r.get("model") or r.get("service"), r.get("version"), r.get("host"))
        groups.setdefault(key, []).append(r)
    req = trace_service_pb2.ExportTraceServiceRequest()
    for (service, version, host), group in groups.items():
        attrs = [_kv("service.name", service or "unknown_service")]
        if version:
            attrs.append(_kv("service.version", version))
        if host:
            attrs.append(_kv("host.name", host))
        if group[0].get("model"):
            attrs.append(_kv("modeltap.model", group[0]["model"]))
        rs = req.resource_spans.add()
        rs.resource.CopyFrom(resource_pb2.Resource(attributes=attrs))
        ss = rs.scope_spans.add()
        ss.scope.name = "modeltap"
        for r in group:
            sp = ss.spans.add()
            sp.trace_id = bytes.fromhex(r["trace_id"])
            sp.span_id = bytes.fromhex(r["span_id"])
            if r.get("parent_span_id"):
                sp.parent_span_id = bytes.fromhex(r["parent_span_id"])
            sp.name = r.get("name") or ""
            kind = r.get("kind") or "internal"
            sp.kind = SPAN_KINDS.index(kind) if kind in SPAN_KINDS else 1  # type: ignore[assignment]
            start = int(r["start_unix_nano"])
            sp.start_time_unix_nano = start
            sp.end_time_unix_nano = start + int(r["duration_ns"])
            if r.get("trace_state"):
                sp.trace_state = r["trace_state"]
            for k, v in sorted((r.get("attributes") or {}).items()):
                sp.attributes.append(_kv(k, v))
            status = r.get("status") or "unset"
            sp.status.code = SPAN_STATUS.index(status) if status in SPAN_STATUS else 0  # type: ignore[assignment]
            if status == "error":
                msg = r.get("error_message") or ""
                sp.status.message = msg
                if r.get("error_type") or msg:
                    ev = sp.events.add()
                    ev.name = "exception"
                    ev.time_unix_nano = sp.end_time_unix_nano
                    if r.get("error_type"):
                        ev.attributes.append(_kv("exception.type", r["error_type"]))
                    ev.attributes.append(_kv("exception.message", msg))
    return req.SerializeToString()


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """``spans`` table rows as dicts (attributes as a dict)."""
    rows: list[dict[str, Any]] = table.drop_columns(["start_ts"]).to_pylist()
    for r in rows:
        a = r.get("attributes")
        r["attributes"] = dict(a) if a else {}
    return rows


class OtlpForwarder:
    """Forwards stored spans to an OTLP/gRPC endpoint from a thread of its
    own: a queue bounded in spans (``max_queue``) and in bytes
    (``max_queue_bytes``, the Arrow size of what waits), batches of
    ``batch_size`` spans (or what arrived within ``interval_s``) split so
    that no request passes ``max_request_bytes`` (below a standard
    receiver's 4 MiB; a span that alone cannot fit is dropped, counted in
    ``too_large``), retries with exponential backoff and jitter for
    ``retry_s`` on retryable codes, then drops (counted)."""

    def __init__(
        self,
        endpoint: str,
        *,
        max_queue: int = 100_000,
        max_queue_bytes: int = 64 << 20,
        max_request_bytes: int = 3 << 20,
        batch_size: int = 512,
        interval_s: float = 1.0,
        timeout_s: float = 10.0,
        retry_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_request_bytes = max_request_bytes
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        # Tables as they arrive (converted to rows on the forwarder's own
        # thread, never on the caller's), and the spans they hold.
        self._queue: deque[pa.Table] = deque()
        self._queued = 0
        self._queued_bytes = 0
        self.too_large = 0  # spans that could never fit one request
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._stop = False
        self.sent = 0
        self.dropped = 0
        self.retries = 0
        self.batches = 0
        self._in_flight = 0
        self._channel = grpc.insecure_channel(endpoint)
        self._export: Any = self._channel.unary_unary(EXPORT_METHOD)
        self._thread = threading.Thread(target=self._run, name="modeltap-otlp", daemon=True)
        self._thread.start()

    def offer(self, table: pa.Table | None) -> None:
        """Queues the spans of ``table`` (a ``spans`` table) without
        converting them (cheap enough for an event loop); what does not fit
        the queue (in spans or bytes), or comes after ``close()``, is
        dropped and counted."""
        if table is None or table.num_rows == 0:
            return
        per_span = max(1, table.nbytes // table.num_rows)
        with self._cv:
            if self._stop:
                room = 0
            else:
                room = min(
                    max(self.max_queue - self._queued, 0),
                    max(self.max_queue_bytes - self._queued_bytes, 0) // per_span,
                )
            if room < table.num_rows:
                lost = table.num_rows - room
                self.dropped += lost
                log.warning(
                    "OTLP forwarding to %s: queue full, %d span(s) dropped", self.endpoint, lost
                )
                table = table.slice(0, room)
            if table.num_rows:
                self._queue.append(table)
                self._queued += table.num_rows
                self._queued_bytes += table.num_rows * per_span
                self._cv.notify()

    def stats(self) -> dict[str, int]:
        """Spans sent, dropped, queued; batches sent; retries."""
        with self._lock:
            return {
                "sent": self.sent,
                "dropped": self.dropped,
                "queued": self._queued + self._in_flight,
                "queued_bytes": self._queued_bytes,
                "too_large": self.too_large,
                "batches": self.batches,
                "retries": self.retries,
            }

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Waits until the queue is empty and nothing is in flight."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            self._cv.notify()
            while self._queued or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued within ``timeout_s``, then stops; what is
        still queued then is counted as dropped."""
        self.flush(timeout_s)
        with self._cv:
            self._stop = True
            self.dropped += self._queued
            self._queue.clear()
            self._queued = 0
            self._queued_bytes = 0
            self._cv.notify_all()
        # The thread may be inside a call: it gives up at its deadline (a
        # retry never starts once stopping) and counts that batch dropped.
        self._thread.join(self.timeout_s + 1.0)
        self._channel.close()

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._queued and not self._stop:
                    self._cv.wait(self.interval_s)
                if self._stop and not self._queued:
                    return
                parts: list[pa.Table] = []
                n = 0
                freed = 0
                while self._queue and n < self.batch_size:
                    t = self._queue.popleft()
                    per_span = max(1, t.nbytes // max(t.num_rows, 1))
                    take = min(t.num_rows, self.batch_size - n)
                    parts.append(t.slice(0, take))
                    if take < t.num_rows:
                        self._queue.appendleft(t.slice(take))
                    n += take
                    freed += take * per_span
                self._queued -= n
                self._queued_bytes = max(0, self._queued_bytes - freed)
                if not self._queued:
                    self._queued_bytes = 0
                self._in_flight = n
            batch = [r for t in parts for r in rows_of(t)]
            if batch:
                sent = self._send_split(batch)
                with self._cv:
                    self.sent += sent
                    self.dropped += n - sent
                    self._in_flight = 0
                    self._cv.notify_all()

    def _send_split(self, batch: list[dict[str, Any]]) -> int:
        """Sends ``batch`` in requests of at most ``max_request_bytes``
        (halving until each fits); returns the spans sent."""
        try:
            data = request_from_rows(batch)
        except Exception:
            log.exception("OTLP forwarding: %d span(s) could not be encoded", len(batch))
            return 0
        if len(data) > self.max_request_bytes:
            if len(batch) == 1:
                with self._lock:
                    self.too_large += 1
                log.warning(
                    "OTLP forwarding to %s: a span of %d bytes is larger than a request may "
                    "be (%d); dropped",
                    self.endpoint,
                    len(data),
                    self.max_request_bytes,
                )
                return 0
            half = len(batch) // 2
            return self._send_split(batch[:half]) + self._send_split(batch[half:])
        if self._send(data, len(batch)):
            with self._lock:
                self.batches += 1
            return len(batch)
        return 0

    def _send(self, data: bytes, n: int) -> bool:
        deadline = time.monotonic() + self.retry_s
        delay = 0.1
        while True:
            try:
                self._export(data, timeout=self.timeout_s)
                return True
            except Exception as e:  # grpc.RpcError, or a channel closed under us
                code = e.code() if isinstance(e, grpc.RpcError) and hasattr(e, "code") else None
                if code not in RETRYABLE or time.monotonic() + delay > deadline or self._stop:
                    log.warning(
                        "OTLP forwarding to %s: %d span(s) dropped (%s)",
                        self.endpoint,
                        n,
                        code,
                    )
                    return False
                with self._lock:
                    self.retries += 1
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
