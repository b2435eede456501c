"""Tracing: W3C Trace Context in and out, span decorators, capture of a
stage's input and output, and the bridge to OpenTelemetry.

Spans themselves are native (``modeltap._core.Span``): ``Agent.span(name)``
times a stage and records it into the agent's ring; the current span lives
in a ``contextvars.ContextVar``, so threads and asyncio tasks each follow
their own request. This module holds what is Python by nature.

W3C Trace Context Level 1 (https://www.w3.org/TR/trace-context/):

- ``traceparent``: ``version-trace_id-parent_id-flags``, lowercase hex. A
  version of ``ff``, an all-zero trace or parent id, uppercase hex or a
  wrong length makes the header invalid (a new trace starts). Version
  ``00`` must be exactly 55 characters; a higher version is parsed by its
  first four fields, and must have ``-`` after them when it is longer. Only
  the sampled bit (``01``) of the flags is used; other bits are ignored.
- ``tracestate``: up to 32 comma-separated ``key=value`` members (empty
  members and surrounding spaces allowed); keys are
  ``[a-z][a-z0-9_*/-]{0,255}`` or ``tenant@system`` forms, values printable
  ASCII without ``,`` and ``=``, at most 256 characters, no trailing space;
  a duplicate key, a bad member or more than 32 members makes the whole
  header invalid (dropped, never the trace). Several ``tracestate`` headers
  are one list, joined in order; several ``traceparent`` headers are
  invalid.
- Header names are matched without regard to case.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, cast

from modeltap import _core

log = logging.getLogger("modeltap")

__all__ = [
    "SpanContext",
    "current_span_context",
    "format_traceparent",
    "inject",
    "parse_traceparent",
    "parse_tracestate",
]

from modeltap._core import SpanContext  # noqa: E402

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
# tracestate keys: simple (lowercase start) or multi-tenant (tenant@system).
_KEY = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
)
# values: printable ASCII (0x20-0x7e) except , and =, the last not a space.
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
MAX_TRACESTATE_MEMBERS = 32


def parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    """``(trace_id, parent_id, sampled)`` of a ``traceparent`` header value,
    or None when it is invalid."""
    if not isinstance(value, str):
        return None
    v = value.strip(" \t")
    if len(v) < 55:
        return None
    version = v[:2]
    if not _HEX2.fullmatch(version) or version == "ff":
        return None
    if version == "00" and len(v) != 55:
        return None
    if len(v) > 55 and v[55] != "-":
        return None
    if v[2] != "-" or v[35] != "-" or v[52] != "-":
        return None
    trace, parent, flags = v[3:35], v[36:52], v[53:55]
    if not (_HEX32.fullmatch(trace) and _HEX16.fullmatch(parent) and _HEX2.fullmatch(flags)):
        return None
    t, p = int(trace, 16), int(parent, 16)
    if t == 0 or p == 0:
        return None
    return t, p, bool(int(flags, 16) & 0x01)


def parse_tracestate(value: str | None) -> str | None:
    """The ``tracestate`` list normalised (members trimmed, empty ones
    dropped), or None when it is invalid or empty."""
    if not isinstance(value, str):
        return None
    members = []
    keys = set()
    for raw in value.split(","):
        m = raw.strip(" \t")
        if not m:
            continue
        key, eq, val = m.partition("=")
        if not eq or not _KEY.fullmatch(key) or not _VALUE.fullmatch(val):
            return None
        if key in keys:
            return None
        keys.add(key)
        members.append(f"{key}={val}")
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return ",".join(members)


def format_traceparent(ctx: SpanContext) -> str:
    """The ``traceparent`` value of ``ctx`` (version 00)."""
    return ctx.traceparent()


def _header_values(headers: Any, name: str) -> list[str]:
    """Every value of header ``name`` (any case): a mapping, a sequence of
    ``(name, value)`` pairs, or an object with ``get_all`` (email.message,
    http.client) or ``getlist`` (werkzeug, starlette's ``getlist``)."""
    out: list[str] = []
    if headers is None:
        return out
    for attr in ("get_all", "getlist"):
        fn = getattr(headers, attr, None)
        if callable(fn) and not isinstance(headers, dict):
            try:
                got = fn(name)
            except Exception:
                got = None
            if got:
                return [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in got]
    items: Iterable[Any]
    items = headers.items() if isinstance(headers, Mapping) else headers
    for item in items:
        try:
            k, v = item
        except (TypeError, ValueError):
            continue
        if isinstance(k, bytes):
            k = k.decode("latin-1")
        if isinstance(k, str) and k.lower() == name:
            if isinstance(v, (list, tuple)):
                out.extend(x.decode("latin-1") if isinstance(x, bytes) else str(x) for x in v)
            else:
                out.append(v.decode("latin-1") if isinstance(v, bytes) else str(v))
    return out


def extract(headers: Any) -> SpanContext | None:
    """The remote context of incoming ``headers`` (``traceparent`` and
    ``tracestate``), or None when there is none or it is invalid. Never
    raises."""
    try:
        parents = _header_values(headers, "traceparent")
        if len(parents) != 1:
            return None
        parsed = parse_traceparent(parents[0])
        if parsed is None:
            return None
        states = _header_values(headers, "tracestate")
        state = parse_tracestate(",".join(states)) if states else None
        trace_id, span_id, sampled = parsed
        return _core.SpanContext(trace_id, span_id, sampled, remote=True, trace_state=state)
    except Exception:
        log.debug("modeltap: ignoring a trace context header", exc_info=True)
        return None


def inject(headers: MutableMapping[str, str], ctx: SpanContext | None = None) -> bool:
    """Writes ``traceparent`` (and ``tracestate`` when the trace has one) of
    ``ctx``, else of the current span (ours, or OpenTelemetry's when ours is
    absent) into ``headers``, replacing any of any case. Returns whether
    there was a context to write."""
    if ctx is None:
        ctx = _core.current_span_context() or _otel_parent()
    if ctx is None:
        return False
    for k in [k for k in headers if isinstance(k, str) and k.lower() in _TRACE_HEADERS]:
        del headers[k]
    headers["traceparent"] = ctx.traceparent()
    if ctx.trace_state:
        headers["tracestate"] = ctx.trace_state
    return True


_TRACE_HEADERS = ("traceparent", "tracestate")


def current_span_context() -> SpanContext | None:
    """The current span's context (None outside every span)."""
    return _core.current_span_context()


# -- stage latency -------------------------------------------------------------

LATENCY_BUCKETS = 96


def _bucket_seconds(b: int) -> float:
    """A representative latency of bucket ``b`` (see the core's
    ``latency_bucket``: bucket 0 is under 1 µs, bucket b >= 1 covers
    [2^((b-1)/4), 2^(b/4)) µs): its geometric middle."""
    if b <= 0:
        return 0.5e-6
    return float(2.0 ** ((b - 0.5) / 4.0)) * 1e-6


def _quantile(counts: list[int], q: float) -> float:
    total = sum(counts)
    if total == 0:
        return float("nan")
    rank = q * total
    seen = 0
    for b, c in enumerate(counts):
        seen += c
        if seen >= rank and c:
            return _bucket_seconds(b)
    return _bucket_seconds(len(counts) - 1)


def stage_summary(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage (span name; ``end_to_end`` for the spans that began their
    trace, by name): spans, errors, mean and p50/p95/p99 in seconds. The
    quantiles come from log buckets a factor 2^(1/4) wide (within ±9 %)."""
    rows = []
    for st in sorted(stages, key=lambda s: (not s["root"], s["name"])):
        counts = list(st["counts"])
        n = sum(counts)
        if n == 0:
            continue
        rows.append(
            {
                "stage": st["name"],
                "end_to_end": bool(st["root"]),
                "spans": n,
                "errors": int(st["errors"]),
                "mean_s": st["sum"] / n,
                "p50_s": _quantile(counts, 0.50),
                "p95_s": _quantile(counts, 0.95),
                "p99_s": _quantile(counts, 0.99),
            }
        )
    return rows


# -- decorators --------------------------------------------------------------


def _decorate(
    rec: Any, name: str, kind: str, attributes: dict[str, Any] | None, fn: Callable[..., Any]
) -> Callable[..., Any]:
    """``fn`` with each call in a new span (``Span.__call__``)."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            span = rec.span(name, kind=kind, attributes=attributes)
            span.start()
            try:
                out = await fn(*args, **kwargs)
            except BaseException as e:
                span.end(None if isinstance(e, asyncio.CancelledError) else e)
                raise
            span.end()
            return out

        return awrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with rec.span(name, kind=kind, attributes=attributes):
            return fn(*args, **kwargs)

    return wrapper


# -- capture of a stage's input and output -----------------------------------


def make_capture(
    max_bytes: int,
    redact: Callable[[str, str, Any], Any] | None,
    on_error: Callable[[], None],
) -> Callable[[str, str, Any], str | None]:
    """The hook behind ``Span.set_input`` / ``set_output``: ``redact`` (if
    given) sees ``(stage, "input" | "output", value)`` first and returns the
    value to keep (None: keep nothing); the result is written as compact
    JSON (arrays and frames summarised to what fits) and cut to
    ``max_bytes``. Never raises: a failure is counted (``on_error``)."""

    def capture(stage: str, which: str, value: Any) -> str | None:
        try:
            if redact is not None:
                value = redact(stage, which, value)
                if value is None:
                    return None
            return _render(value, max_bytes)
        except Exception:
            on_error()
            log.debug("modeltap: capturing %s of %s failed", which, stage, exc_info=True)
            return None

    return capture


def _render(value: Any, max_bytes: int) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        text = b[:max_bytes].decode("utf-8", "backslashreplace")
        return _cut(text, max_bytes, len(b))
    if isinstance(value, str):
        return _cut(value, max_bytes, len(value.encode("utf-8", "replace")))
    text = json.dumps(_plain(value, max_bytes), default=repr, separators=(",", ":"))
    return _cut(text, max_bytes, len(text))


def _cut(text: str, max_bytes: int, total: int) -> str:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return text
    marker = f"…[{total} bytes]"
    keep = max(max_bytes - len(marker.encode()), 0)
    return raw[:keep].decode("utf-8", "ignore") + marker


def _plain(value: Any, budget: int) -> Any:
    """JSON-able form of ``value``, large containers summarised."""
    mod = type(value).__module__
    if mod == "numpy" or mod.startswith("numpy."):
        tolist = getattr(value, "tolist", None)
        size = getattr(value, "size", 1)
        if size > budget // 2 and hasattr(value, "ravel"):
            return {
                "shape": list(value.shape),
                "dtype": str(value.dtype),
                "head": value.ravel()[: budget // 8].tolist(),
            }
        return tolist() if tolist else repr(value)
    if mod.startswith(("pandas", "polars", "pyarrow")) and hasattr(value, "columns"):
        n = len(value)
        head = value.head(max(1, min(n, budget // 64)))
        try:
            rows = head.to_dicts() if mod.startswith("polars") else None
            if rows is None:
                rows = head.to_pylist() if mod.startswith("pyarrow") else head.to_dict("records")
        except Exception:
            rows = repr(head)
        return {"rows": n, "columns": [str(c) for c in value.columns], "head": rows}
    if isinstance(value, Mapping):
        return {str(k): _plain(v, budget) for k, v in list(value.items())[: budget // 4 or 1]}
    if isinstance(value, (list, tuple)):
        return [_plain(v, budget) for v in value[: budget // 2 or 1]]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


# -- OpenTelemetry -------------------------------------------------------------


def _otel_parent() -> SpanContext | None:
    """OpenTelemetry's current span context as a parent, if valid."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    try:
        current = trace.get_current_span()
        if isinstance(current, _bridge_class()):
            # One of ours, published by _otel_attach: our own variable says
            # whether it is still current (OpenTelemetry's may be stale when
            # spans ended out of order).
            return None
        sc = current.get_span_context()
        if not sc.is_valid:
            return None
        state = sc.trace_state.to_header() if sc.trace_state else None
        return _core.SpanContext(
            sc.trace_id,
            sc.span_id,
            bool(sc.trace_flags & 0x01),
            remote=bool(sc.is_remote),
            trace_state=state or None,
        )
    except Exception:
        log.debug("modeltap: reading OpenTelemetry's context failed", exc_info=True)
        return None


_BRIDGE: list[type] = []


def _bridge_class() -> type:
    """OpenTelemetry's ``NonRecordingSpan``, marked as one of ours."""
    if not _BRIDGE:
        from opentelemetry.trace import NonRecordingSpan

        class ModeltapSpan(NonRecordingSpan):
            """A modeltap span as OpenTelemetry's current span."""

        _BRIDGE.append(ModeltapSpan)
    return _BRIDGE[0]


def _otel_attach(ctx: SpanContext) -> object | None:
    """Makes ``ctx`` OpenTelemetry's current span context (a non-recording
    span), so instrumentation inside the stage continues our trace. Returns
    what ``_otel_detach`` needs, or None."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanContext as OtelContext
        from opentelemetry.trace import TraceFlags, TraceState
    except ImportError:
        return None
    try:
        state = TraceState.from_header([ctx.trace_state]) if ctx.trace_state else None
        sc = OtelContext(
            trace_id=ctx.trace_id,
            span_id=ctx.span_id,
            is_remote=False,
            trace_flags=TraceFlags(0x01 if ctx.sampled else 0x00),
            trace_state=state,
        )
        span = _bridge_class()(sc)
        span._modeltap_previous = context.get_current()
        span._modeltap_ended = False
        return (context.attach(trace.set_span_in_context(span)), span)
    except Exception:
        log.debug("modeltap: setting OpenTelemetry's context failed", exc_info=True)
        return None


def _otel_detach(handle: object) -> None:
    """Restores OpenTelemetry's context when our span ends: by its token
    when the span is OpenTelemetry's current one; spans ended out of order
    (or elsewhere) are marked ended and stepped over once they surface, so
    OpenTelemetry never keeps an ended span of ours as its current one."""
    try:
        from opentelemetry import context, trace

        token: Any
        span: Any
        token, span = cast("tuple[Any, Any]", handle)
        span._modeltap_ended = True
        if trace.get_current_span() is span:
            context.detach(token)
        bridge = _bridge_class()
        for _ in range(256):
            current = trace.get_current_span()
            if not (isinstance(current, bridge) and current._modeltap_ended):  # type: ignore[attr-defined]
                break
            context.attach(current._modeltap_previous)  # type: ignore[attr-defined]
    except Exception:
        log.debug("modeltap: restoring OpenTelemetry's context failed", exc_info=True)
