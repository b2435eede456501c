"""A client for a running collector: register references; drift, traces
and latency per stage; and every read of :class:`modeltap.reads.Reads`
(SQL, predictions, errors, spans, system metrics), answered by the
collector while it goes on ingesting."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from modeltap import _core
from modeltap.analysis.performance import PerformanceReads
from modeltap.drift import DriftReport
from modeltap.reads import Reads, TimeArg, parse_time
from modeltap.reference import Reference
from modeltap.report import Reporting

if TYPE_CHECKING:  # pyarrow is imported when a query is made, not by agents
    import pyarrow as pa

__all__ = ["Client", "parse_time"]

SERVICE = "/modeltap.v1.Collector/"
LABELS_IN_FLIGHT = 4  # SubmitLabels batches sent before the first is settled


def _range(since: TimeArg, until: TimeArg) -> dict[str, int]:
    """The time range of a JSON query (keys only for the ends given)."""
    out = {}
    if since is not None:
        out["from_unix_nano"] = parse_time(since)
    if until is not None:
        out["to_unix_nano"] = parse_time(until)
    return {k: v for k, v in out.items() if v is not None}


class Client(Reporting, PerformanceReads, Reads):
    """Talks to ``modeltap collector`` over gRPC. ``timeout_s`` bounds each
    call, ``read_timeout_s`` each query streamed by :meth:`stream` (and
    :meth:`sql`, :meth:`predictions`, ...; the collector interrupts its own
    reads past ``--read-timeout``)."""

    def __init__(
        self,
        target: str = "127.0.0.1:7317",
        timeout_s: float = 30.0,
        read_timeout_s: float = 300.0,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.read_timeout_s = read_timeout_s
        self._channel = grpc.insecure_channel(
            target,
            # A query's pieces are about a megabyte; a single row past that
            # comes alone, up to the collector's message limit.
            options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)],
        )

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: bytes) -> bytes:
        fn: Any = self._channel.unary_unary(SERVICE + method)
        return bytes(fn(request, timeout=self.timeout_s))

    def stream(
        self, query: str, params: Sequence[Any] | None = None, *, rows: int | None = None
    ) -> pa.RecordBatchReader:
        """Runs one SELECT on the collector (read-only, beside ingestion);
        its result a batch at a time as the collector streams it (pieces of
        about a megabyte, whatever ``rows`` asks). Raises
        ``grpc.RpcError`` (INVALID_ARGUMENT for a bad or writing query,
        RESOURCE_EXHAUSTED when the collector has too many reads,
        DEADLINE_EXCEEDED past the read timeout)."""
        import pyarrow as pa

        req = _core.encode_text_response(
            json.dumps({"sql": query, "params": list(params) if params else None}, default=str)
        )
        fn: Any = self._channel.unary_stream(SERVICE + "Query")
        call = fn(req, timeout=self.read_timeout_s)
        try:
            first = next(call)
        except StopIteration:
            raise RuntimeError("the collector sent no schema for the query") from None
        schema = pa.ipc.open_stream(_core.decode_query_chunk(first)).schema

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for piece in call:
                    yield from pa.ipc.open_stream(_core.decode_query_chunk(piece))
            finally:
                call.cancel()  # a reader dropped early frees the collector's read

        return pa.RecordBatchReader.from_batches(schema, batches())

    def submit_labels(
        self,
        model: str,
        request_ids: Any,
        labels: Any = None,
        ts: Any = None,
        *,
        version: str = "",
        source_id: str | None = None,
        progress: Callable[[int], None] | None = None,
        retry_s: float = 60.0,
    ) -> int:
        """Sends ground truth for predictions of ``model`` (stored ones, or
        ones to come: a label joins its prediction whenever both are
        stored): ids and labels as sequences, numpy arrays or a
        ``RequestIds``, or a frame with columns ``request_id``, ``label``
        [, ``ts``] given alone. ``ts``: when each truth was known, as
        ``Agent.log_label`` reads it (datetimes, datetime64, ISO strings,
        float Unix seconds, int Unix nanoseconds; default now). Sent in batches of
        100,000, each stored exactly once: a batch resent after a failure
        (retried for up to ``retry_s``) is not stored twice, and with the
        same ``source_id`` (a name of the source, such as a file's digest)
        sending the same labels again is not either. Raises ``ValueError``
        naming the first bad rows (no id, no label, NaN, no time) before
        anything is sent; returns how many labels were stored anew."""
        from modeltap.labels import columns

        cols, bad = columns(request_ids, labels, ts)
        if bad.count:
            raise ValueError(str(bad))
        return self._send_labels(model, version, cols, source_id, progress, retry_s)

    def _send_labels(
        self,
        model: str,
        version: str,
        cols: Any,
        source_id: str | None,
        progress: Callable[[int], None] | None,
        retry_s: float,
        first_seq: int = 0,
    ) -> int:
        import hashlib
        import time
        import uuid

        if not isinstance(model, str) or not model:
            raise ValueError("name the model the labels are for")
        agent_id = (
            hashlib.sha256(f"{model}\x1f{version}\x1f{source_id}".encode()).hexdigest()[:32]
            if source_id is not None
            else uuid.uuid4().hex
        )
        retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
        call: Any = self._channel.unary_unary(SERVICE + "SubmitLabels")
        # A few batches in flight, so that encoding the next, sending one
        # and the collector's commit of another overlap; each is settled in
        # order and resent (the same bytes: stored once) while the collector
        # says to retry.
        window: collections.deque[tuple[int, bytes, Any, float]] = collections.deque()

        def settle(n: int, data: bytes, future: Any, deadline: float) -> int:
            pause = 0.05
            while True:
                try:
                    _, duplicate, _ = _core.decode_export_response(future.result())
                    break
                except grpc.RpcError as e:
                    if e.code() not in retryable or time.monotonic() + pause > deadline:
                        raise
                    time.sleep(pause)
                    pause = min(pause * 2, 2.0)
                    future = call.future(data, timeout=self.timeout_s)
            if progress is not None:
                progress(n)
            return 0 if duplicate else n

        stored = 0
        try:
            for k, chunk in enumerate(cols.chunks()):
                data = _core.encode_label_batch(
                    agent_id,
                    first_seq + k,
                    model,
                    version,
                    chunk.request_ids,
                    chunk.labels,
                    chunk.unix_nano,
                )
                future = call.future(data, timeout=self.timeout_s)
                window.append((len(chunk), data, future, time.monotonic() + retry_s))
                if len(window) >= LABELS_IN_FLIGHT:
                    stored += settle(*window.popleft())
            while window:
                stored += settle(*window.popleft())
        finally:
            for _, _, future, _ in window:  # a failure: the rest is not waited for
                future.cancel()
        return stored

    def register_reference(self, reference: Reference, model: str, version: str) -> str:
        """Registers ``reference`` for (model, version); returns its fingerprint."""
        req = _core.encode_reference_upload(model, version, reference.to_bytes())
        return _core.decode_text_response(self._call("RegisterReference", req))

    def drift(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        rules: Mapping[str, tuple[str, float]] | None = None,
    ) -> DriftReport:
        """Drift of a model (newest version unless given) over a time range,
        merged by the collector from every agent's stored window profiles."""
        texts = [f"{k}={s}:{t}" for k, (s, t) in (rules or {}).items()]
        req = _core.encode_drift_request(
            model, version or "", parse_time(since) or 0, parse_time(until) or 0, texts
        )
        data: dict[str, Any] = json.loads(_core.decode_text_response(self._call("Drift", req)))
        for row in data["columns"]:
            for k, v in list(row.items()):
                if v is None:
                    row[k] = float("nan")
        return DriftReport(data)

    def _json(self, method: str, query: Mapping[str, Any]) -> Any:
        req = _core.encode_text_response(json.dumps(dict(query)))
        return json.loads(_core.decode_text_response(self._call(method, req)))

    def trace(self, trace_id: str) -> dict[str, Any]:
        """One trace: ``{"trace_id", "spans": [...], "records": [...]}``."""
        data: dict[str, Any] = self._json("Trace", {"trace_id": trace_id})
        return data

    def traces(
        self,
        model: str | None = None,
        slowest: int = 10,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> list[dict[str, Any]]:
        """The slowest traces (of spans of ``model``), each with its total
        duration and time per stage."""
        q: dict[str, Any] = {"model": model, "slowest": slowest, **_range(since, until)}
        rows: list[dict[str, Any]] = self._json("Traces", q)
        return rows

    def stage_latency(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> list[dict[str, Any]]:
        """Latency per stage and end to end of a model (p50/p95/p99
        seconds), merged by the collector from every agent's profiles."""
        q: dict[str, Any] = {"model": model, "version": version, **_range(since, until)}
        rows: list[dict[str, Any]] = self._json("Latency", q)
        return rows
