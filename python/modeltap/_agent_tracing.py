"""The agent's tracing: spans, trace context in headers, latency per
stage, and the ``monitor`` decorator that logs a predict function's calls."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TypeVar, cast

import numpy as np

from modeltap import _core, tracing
from modeltap._agent_state import _AgentState, _unix_ns

log = logging.getLogger("modeltap")

F = TypeVar("F", bound=Callable[..., Any])


class _AgentTracing(_AgentState):
    """Spans and the ``monitor`` decorator."""

    def span(
        self,
        name: str,
        *,
        kind: str = "internal",
        attributes: Mapping[str, Any] | None = None,
        parent: tracing.SpanContext | None = None,
    ) -> _core.Span:
        """A span timing one stage of a request: ``with agent.span("preprocess")
        as span: ...`` or, as a decorator, ``@agent.span("postprocess")`` (sync
        and ``async def``; each call gets its own span).

        The span's parent is ``parent`` (e.g. from :meth:`extract`), else the
        current span (this thread's or asyncio task's), else OpenTelemetry's
        current span when ``opentelemetry`` is in use; with none it starts a
        new trace. A record logged inside the span carries its trace and span
        ids. An exception leaving the span marks it failed (type and message)
        and is re-raised unchanged. ``kind``: internal, server, client,
        producer or consumer. Inside, ``span.set_input(x)`` /
        ``span.set_output(y)`` keep what the stage saw and produced (see
        ``capture_bytes``, ``redact``); ``span.set_attribute(k, v)`` adds an
        attribute."""
        if attributes is None and parent is None and kind == "internal":
            return self._rec.span(name)
        return self._rec.span(
            name,
            kind=kind,
            attributes=dict(attributes) if attributes is not None else None,
            parent=parent,
        )

    def stage_latency(
        self, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Latency per stage (span name) and end to end (the spans that began
        their trace here) from this agent's window profiles, optionally only
        the windows starting in ``[since, until)`` (Unix seconds): spans,
        errors, mean and p50/p95/p99 seconds. Spans still in the ring count
        once :meth:`flush` ran."""
        lo = 0 if since is None else _unix_ns("since", since)
        hi = 2**64 - 1 if until is None else _unix_ns("until", until)
        blob = self._rec.profile(lo, hi)
        if blob is None:
            return []
        return tracing.stage_summary(_core.stage_latency([blob]))

    @staticmethod
    def extract(headers: Any) -> tracing.SpanContext | None:
        """The trace context of incoming request ``headers`` (W3C
        ``traceparent`` / ``tracestate``; a mapping, a list of pairs, or an
        object with ``get_all``), to pass as ``span(..., parent=ctx)``; None
        when absent or invalid (a new trace then starts). Never raises."""
        return tracing.extract(headers)

    @staticmethod
    def inject(headers: MutableMapping[str, str], ctx: tracing.SpanContext | None = None) -> bool:
        """Writes the current span's ``traceparent`` (and ``tracestate``) into
        outgoing ``headers``; returns whether there was a span."""
        return tracing.inject(headers, ctx)

    def monitor(
        self,
        fn: F | None = None,
        *,
        features_arg: int | str | None = None,
        span_name: str = "inference",
    ) -> Any:
        """Wraps a predict function (sync or ``async def``): logs its input
        (the first argument after ``self``, or ``features_arg``), its output
        and latency, and, if it raises, the error before re-raising it
        unchanged. A 2-D array input is logged as a batch. Each call runs in
        a span (``span_name``, a child of the current span if any) whose
        trace and span ids the record carries.

        Use as ``@agent.monitor`` or ``@agent.monitor(features_arg="x")``.
        """
        if fn is None:
            return functools.partial(self.monitor, features_arg=features_arg, span_name=span_name)
        target = cast("Callable[..., Any]", fn)
        pick = _input_picker(target, features_arg)

        def record(
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            out: Any,
            t0: float,
            err: BaseException | None,
        ) -> None:
            latency = time.perf_counter() - t0
            try:
                x = pick(args, kwargs)
            except LookupError:
                self._rec.count_error()
                return
            if isinstance(x, np.ndarray) and x.ndim == 2:
                if err is None:
                    self.log_batch(x, out, latency_s=latency)
                else:
                    for row in x:
                        self.log(row, None, latency_s=latency, error=err)
                return
            self.log(x, out, latency_s=latency, error=err)

        # The inference span: the record is logged inside it, so it carries
        # the span's trace and span ids.
        def begin() -> Any:
            try:
                return self._rec.span(span_name).start()
            except Exception:
                if self.strict:
                    raise
                self._rec.count_error()
                return None

        def begin_failed() -> None:
            if self.strict:
                raise
            self._rec.count_error()

        def end(span: Any, err: BaseException | None) -> None:
            if span is not None:
                self._safe(span.end, err)

        if inspect.iscoroutinefunction(target):

            @functools.wraps(target)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                span = begin()
                t0 = time.perf_counter()
                try:
                    out = await target(*args, **kwargs)
                except BaseException as e:
                    if not isinstance(e, asyncio.CancelledError):
                        self._safe(record, args, kwargs, None, t0, e)
                    end(span, None if isinstance(e, asyncio.CancelledError) else e)
                    raise
                self._safe(record, args, kwargs, out, t0, None)
                end(span, None)
                return out

            return awrapper

        perf_counter = time.perf_counter
        ndarray = np.ndarray

        @functools.wraps(target)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # The common case inline (one span, one record): this runs on
            # every request.
            span: _core.Span | None
            try:
                span = self._rec.start_span(span_name)
            except Exception:
                begin_failed()
                span = None
            t0 = perf_counter()
            try:
                out = target(*args, **kwargs)
            except BaseException as e:
                self._safe(record, args, kwargs, None, t0, e)
                end(span, e)
                raise
            try:
                latency = perf_counter() - t0
                x = pick(args, kwargs)
                if type(x) is ndarray and x.ndim == 2:
                    self.log_batch(x, out, latency_s=latency)
                else:
                    self.log(x, out, latency_s=latency)
                if span is not None:
                    span.end()
            except _core.InvalidRecord:
                if span is not None:
                    self._safe(span.end, None)
                raise
            except LookupError:
                self._rec.count_error()
                end(span, None)
            except Exception:
                if self.strict:
                    raise
                self._rec.count_error()
                log.exception("modeltap: failed to record a prediction")
                end(span, None)
            return out

        return wrapper

    def _safe(self, fn: Callable[..., None], *args: Any) -> None:
        """Runs agent work on the user's path: never raises unless strict."""
        try:
            fn(*args)
        except _core.InvalidRecord:
            raise
        except Exception:
            if self.strict:
                raise
            self._rec.count_error()
            log.exception("modeltap: failed to record a prediction")


def _input_picker(
    fn: Callable[..., Any], features_arg: int | str | None
) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    """Which argument of ``fn`` holds the model input."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    name: str | None
    index: int | None
    if isinstance(features_arg, str):
        name = features_arg
        index = params.index(name) if name in params else None
    else:
        if features_arg is None:
            index = 1 if params[:1] and params[0] in ("self", "cls") else 0
        else:
            index = features_arg
        name = params[index] if index < len(params) else None

    def pick(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if index is not None and index < len(args):
            return args[index]
        if name is not None and name in kwargs:
            return kwargs[name]
        raise LookupError("model input argument not found")

    return pick
