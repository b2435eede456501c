"""The collector's gRPC server (grpc.aio): ``modeltap.v1.Collector/Export``,
``RegisterReference``, ``Drift``, ``Trace``, ``Traces`` and ``Latency``,
OpenTelemetry's OTLP ``TraceService/Export`` (spans of services instrumented
with OpenTelemetry), plus the standard health checking service.

Batches arrive as bytes (no Python protobuf objects), are decoded natively
on a small thread pool, checked against the range of every column they go
to, and are acknowledged only once the store has committed them durably.

Status codes say what the caller should do:

- INVALID_ARGUMENT: never retry: bytes that are not a batch, an
  inconsistent batch, a value out of its column's range, a batch that would
  expand past its bound, a batch the store refused; a reference that is not
  valid; a bad drift rule or time.
- FAILED_PRECONDITION: a batch from a newer schema version; a reference for
  a new (model, version) past MAX_REFERENCE_PAIRS; a drift whose
  stored reference or profiles cannot be used.
- NOT_FOUND: drift of a model with no profiles or no reference.
- RESOURCE_EXHAUSTED (retry with backoff): over ``max_concurrent_rpcs``
  exports at once, over ``max_pending_mb`` of batches received and not yet
  stored, the store's queue full, DuckDB over its memory limit, the
  process' memory at ``max_memory_mb`` while batches wait; a message
  over ``max_message_mb`` (grpc itself; "larger than max", never retried).
- UNAVAILABLE (retry, then spool): the store cannot be written, or its
  writer thread is being restarted; health reports NOT_SERVING until writes
  succeed again.
- INTERNAL: an unexpected failure of the collector's own, with its message.

A watchdog checks the store's writer thread every ``watchdog_s``: a dead
one (it should never die: every failure is caught) is restarted, a stalled
one (one write or job for more than ``stall_s``) makes health NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modeltap import _core, analysis
from modeltap.collector.limits import BoundedHealth, PeerLimit, Rooms
from modeltap.collector.memory import MemoryGuard
from modeltap.collector.otlp import TRACE_SERVICE, OtlpForwarder
from modeltap.collector.otlp import response as otlp_response
from modeltap.collector.otlp import spans_from_request as otlp_spans
from modeltap.collector.reader import (
    DEFAULT_MAX_ADMITTED,
    DEFAULT_MAX_READS,
    DEFAULT_READ_TIMEOUT_S,
    CursorReads,
    ReadTimeout,
    StoreReader,
    check_read_only,
    close_off_pool,
)
from modeltap.collector.requests import (
    json_request,
    json_safe,
    parse_rules,
    query_params,
    text_arg,
    time_args,
)
from modeltap.collector.status import Refusal, status_for
from modeltap.collector.store import (
    MAX_EXPANSION,
    MAX_UNIX_NANO,
    MIN_DECODED_ALLOWANCE,
    BatchRejected,
    Overloaded,
    StoreBackend,
    StoreUnavailable,
    StoreWriter,
    check_memory_limit,
    decode,
)

log = logging.getLogger("modeltap.collector")

SERVICE = "modeltap.v1.Collector"
DEFAULT_LISTEN = "127.0.0.1:7317"
DEFAULT_STORE = "./modeltap.duckdb"
DEFAULT_MEMORY_LIMIT = "256MB"
DEFAULT_MAX_CONCURRENT_RPCS = 256
DEFAULT_MAX_PENDING_MB = 128.0
# Export messages being received at once (each held whole by grpc before
# its size is known, so at most this many times max_message_mb), how long a
# call waits for one of these rooms, and how long its message may take to
# arrive once it has one.
DEFAULT_MAX_RECEIVING = 4
# HTTP/2's flow-control window of each call, fixed (no growing it by
# bandwidth probes): what a call waiting for a room can have sent ahead.
STREAM_WINDOW_BYTES = 256 << 10
ROOM_WAIT_S = 10.0
DEFAULT_RECEIVE_S = 30.0
# Each class of call has room of its own, so that none takes another's:
# exports (max_concurrent_rpcs), health Watch streams (MAX_WATCHES, at most
# MAX_WATCHES_PER_PEER from one host), reads (the reader's admission: Query
# streams at most max_query_streams of it, per host max_query_streams_per_peer),
# and this many more for everything short (health Check, RegisterReference,
# calls refused at once). grpc's own bound on concurrent calls is their sum.
CONTROL_HEADROOM = 64
# (model, version) pairs that may have references: each costs /metrics a
# drift series and every refresh a look-up.
MAX_REFERENCE_PAIRS = 1_000
DEFAULT_MAX_WATCHES = 64
DEFAULT_MAX_WATCHES_PER_PEER = 16
DEFAULT_MAX_QUERY_STREAMS = DEFAULT_MAX_ADMITTED // 2
DEFAULT_MAX_QUERY_STREAMS_PER_PEER = 8
# A streamed Query whose client has taken no piece for this long is cut
# (its read slot freed), whatever is left of its deadline.
QUERY_IDLE_S = 30.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Code = grpc.StatusCode


class CollectorServer:
    """One collector: a gRPC server in front of one store.

    Bounds: ``max_concurrent_rpcs`` exports at once (more get
    RESOURCE_EXHAUSTED), ``max_watches`` health Watch streams and
    ``max_query_streams`` Query streams (each also per host), reads admitted
    by the reader (``max_admitted``), each class in room of its own (grpc
    itself refuses calls past their sum plus ``CONTROL_HEADROOM``),
    ``max_receiving`` Export messages being received at once (grpc holds
    each whole before its size is known; the others wait in HTTP/2's
    flow control), ``max_pending_mb`` of batches received and not yet
    answered (more get RESOURCE_EXHAUSTED), the writer's queue (see :class:`StoreWriter`),
    DuckDB's ``memory_limit``, and over all of them ``max_memory_mb`` of the
    process' resident memory (see :mod:`modeltap.collector.memory`; off
    unless given: an in-process collector shares its host's memory)."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        store: str | os.PathLike[str] = DEFAULT_STORE,
        *,
        max_message_mb: float = 64.0,
        decode_workers: int = 2,
        max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
        max_pending_mb: float = DEFAULT_MAX_PENDING_MB,
        max_receiving: int = DEFAULT_MAX_RECEIVING,
        receive_s: float = DEFAULT_RECEIVE_S,
        memory_limit: str = DEFAULT_MEMORY_LIMIT,
        max_memory_mb: float | None = None,
        watchdog_s: float = 0.5,
        stall_s: float = 60.0,
        writer_options: dict[str, Any] | None = None,
        otlp_endpoint: str | None = None,
        http: str | None = None,
        metrics_refresh_s: float = 15.0,
        max_reads: int = DEFAULT_MAX_READS,
        max_admitted: int = DEFAULT_MAX_ADMITTED,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_watches: int = DEFAULT_MAX_WATCHES,
        max_watches_per_peer: int = DEFAULT_MAX_WATCHES_PER_PEER,
        max_query_streams: int | None = None,
        max_query_streams_per_peer: int = DEFAULT_MAX_QUERY_STREAMS_PER_PEER,
        query_idle_s: float = QUERY_IDLE_S,
    ) -> None:
        self.listen = listen
        self.store_path = store
        self.max_message_bytes = int(max_message_mb * 1024 * 1024)
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.max_pending_bytes = int(max_pending_mb * 1024 * 1024)
        if max_receiving < 1:
            raise ValueError(f"max_receiving must be at least 1, not {max_receiving}")
        self.max_receiving = max_receiving
        # Half the rooms at most for one host: a client that opens calls and
        # never sends their message cannot hold every room.
        self._rooms = Rooms("messages being received", max_receiving, max(1, max_receiving // 2))
        self.receive_s = receive_s
        self.receive_waits_timed_out = 0  # calls shed waiting for a room
        self.receives_cut = 0  # messages that took longer than receive_s
        self.received_bytes = 0
        self._models_seen: set[str] = set()  # models with predictions stored
        self.memory = MemoryGuard(max_memory_mb)
        self.watchdog_s = watchdog_s
        self.stall_s = stall_s
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="modeltap-decode")
        self._otlp_pool = ThreadPoolExecutor(1, thread_name_prefix="modeltap-otlp-decode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._serving: int | None = None
        self.watches = PeerLimit("health watches", max_watches, max_watches_per_peer)
        self.health = BoundedHealth(self.watches)
        self.writer = StoreWriter(
            store,
            on_health=self._health_changed,
            memory_limit=check_memory_limit(memory_limit),
            **(writer_options or {}),
        )
        self.reader = StoreReader(
            self.writer.cursor,
            max_reads=max_reads,
            max_admitted=max_admitted,
            timeout_s=read_timeout_s,
            max_piece_bytes=self.max_message_bytes - 65_536,
        )
        # Query streams take at most half the reads admitted (unless told
        # otherwise), so that drift, traces, latency and the pages always
        # find room.
        if max_query_streams is None:
            max_query_streams = min(DEFAULT_MAX_QUERY_STREAMS, self.reader.max_admitted // 2)
        self.query_streams = PeerLimit(
            "query streams",
            max(1, min(max_query_streams, self.reader.max_admitted)),
            max_query_streams_per_peer,
        )
        self.query_idle_s = query_idle_s
        self.queries_idle_cut = 0  # streams cut because their client took nothing
        self.server: Any = None
        self.port = 0
        self.received = 0
        self.rejected = 0  # answered INVALID_ARGUMENT or FAILED_PRECONDITION
        self.shed = 0  # answered RESOURCE_EXHAUSTED
        self.internal = 0  # answered INTERNAL
        self.pending_bytes = 0  # bytes of Export requests not answered yet
        self.exports_in_flight = 0
        self.peak_pending_bytes = 0
        self.otlp_endpoint = otlp_endpoint
        self.http = http
        self.metrics_refresh_s = metrics_refresh_s
        self.metrics: Any = None  # MetricsServer once started
        self.forwarder: Any = None  # OtlpForwarder once started
        self.otlp_received = 0  # OTLP-in spans stored
        self.otlp_duplicates = 0  # OTLP-in spans already stored (an exporter's retry)
        self.otlp_rejected = 0  # OTLP-in spans refused (partial success)

    @property
    def receiving(self) -> int:
        """Export messages being read now (the rooms taken)."""
        return self._rooms.open

    # -- health --------------------------------------------------------------

    def _health_changed(self, ok: bool, reason: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._refresh_health)

    def serving(self) -> tuple[bool, str]:
        """Whether the collector can store batches now, and why not."""
        w = self.writer
        if not w.alive():
            return False, "the store writer is not running"
        busy = w.busy_for()
        if busy > self.stall_s:
            return False, f"the store writer has been stuck on one write for {busy:.0f} s"
        return w.healthy, w.reason

    def _refresh_health(self, force: bool | None = None) -> None:
        ok = self.serving()[0] if force is None else force
        status = SERVING if ok else NOT_SERVING
        if status == self._serving:
            return
        self._serving = status
        for name in ("", SERVICE):
            task = asyncio.ensure_future(self.health.set(name, status))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_s)
            try:
                if not self.writer.alive():
                    self._refresh_health(False)
                    self.writer.revive()
                else:
                    self._refresh_health()
            except Exception:
                log.exception("collector watchdog")

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> int:
        """Opens the store, starts serving; returns the bound port."""
        self._loop = asyncio.get_running_loop()
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
                # Query answers come in pieces of about a megabyte; one row
                # larger than that goes alone, up to the message limit.
                ("grpc.max_send_message_length", self.max_message_bytes),
            ],
            # Every long-lived class is bounded below this by its own limit
            # (exports in _export, watches, reads' admission), so that no
            # class can take another's room.
            maximum_concurrent_rpcs=self.max_concurrent_rpcs
            + self.watches.total
            + self.reader.max_admitted
            + CONTROL_HEADROOM,
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                # Served as a client stream (the same bytes on the wire as
                # the unary call agents make) so that its message is read
                # only once there is room for it (_receive).
                "Export": grpc.stream_unary_rpc_method_handler(self._export),
                "SubmitLabels": grpc.stream_unary_rpc_method_handler(self._submit_labels),
                "RegisterReference": grpc.unary_unary_rpc_method_handler(self._register),
                "Drift": grpc.unary_unary_rpc_method_handler(self._drift),
                "Trace": grpc.unary_unary_rpc_method_handler(self._trace),
                "Traces": grpc.unary_unary_rpc_method_handler(self._traces),
                "Latency": grpc.unary_unary_rpc_method_handler(self._latency),
                "Query": grpc.unary_stream_rpc_method_handler(self._query),
            },
        )
        otlp_in = grpc.method_handlers_generic_handler(
            TRACE_SERVICE,
            {"Export": grpc.stream_unary_rpc_method_handler(self._otlp_export)},
        )
        self.server.add_generic_rpc_handlers((handler, otlp_in))
        if self.otlp_endpoint:
            self.forwarder = OtlpForwarder(self.otlp_endpoint)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(self.listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        await asyncio.to_thread(self.writer.start)
        if self.http:
            from modeltap.collector.metrics import MetricsServer

            self.metrics = MetricsServer(self, self.http, refresh_s=self.metrics_refresh_s).start()
        self._refresh_health()
        self._watchdog = asyncio.ensure_future(self._watch())
        await self.server.start()
        return int(self.port)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stops accepting calls, finishes those in flight, closes the store."""
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        if self.server is not None:
            await self.server.stop(grace_s)
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.to_thread(self.reader.close)
        await asyncio.to_thread(self.writer.stop)
        if self.forwarder is not None:
            await asyncio.to_thread(self.forwarder.close)
        self._pool.shutdown(wait=True)
        self._otlp_pool.shutdown(wait=True)

    # -- RPCs ----------------------------------------------------------------

    async def _answer(
        self,
        context: grpc.aio.ServicerContext[bytes, bytes],
        work: Callable[[], Any],
        *,
        arguments: bool = False,
    ) -> bytes:
        """Runs ``work`` (a coroutine function), turning every failure into
        the status it deserves; never lets an exception out as UNKNOWN."""
        try:
            return bytes(await work())
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # native panics included
            r = status_for(e, arguments=arguments)
        self._count(r)
        await context.abort(r.code, r.details)
        raise AssertionError("unreachable: abort raises")

    async def _receive(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        """The one message of an Export, read only once one of
        ``max_receiving`` rooms is free (half of them at most for one host):
        grpc holds a whole message in memory while it arrives, before its
        size is known, so at most that many messages (each under
        ``max_message_mb``) are being received at once; the others wait in
        HTTP/2's flow-control window. A message that
        takes longer than ``receive_s`` to arrive is cut, freeing its room."""
        left = context.time_remaining()
        wait = ROOM_WAIT_S if left is None else max(0.0, min(ROOM_WAIT_S, left))
        peer = context.peer()
        try:
            await self._rooms.enter(peer, wait)
        except Overloaded:
            self.receive_waits_timed_out += 1
            raise
        try:
            message = await asyncio.wait_for(context.read(), self.receive_s)
        except TimeoutError:
            self.receives_cut += 1
            raise Refusal(
                Code.DEADLINE_EXCEEDED,
                f"the message took longer than {self.receive_s:.0f} s to arrive",
            ) from None
        finally:
            self._rooms.leave(peer)
        if not isinstance(message, bytes):  # grpc.aio.EOF: no message came
            raise BatchRejected("the call carried no message")
        self.received_bytes += len(message)
        return message

    def _admit_received(self, size: int) -> None:
        """Counts ``size`` bytes as pending, or sheds them: every batch is
        held either as pending bytes or as one of the rooms being received."""
        if self.pending_bytes and self.pending_bytes + size > self.max_pending_bytes:
            raise Overloaded(
                f"{self.pending_bytes} bytes of batches pending (limit {self.max_pending_bytes})"
            )
        full = self.memory.refusal(self._backlog())
        if full is not None:
            raise Overloaded(full)
        self.pending_bytes += size
        self.peak_pending_bytes = max(self.peak_pending_bytes, self.pending_bytes)

    async def _export(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        return await self._ingest(context, labels_only=False)

    async def _submit_labels(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        """``SubmitLabels``: a batch of ground truth alone (what
        ``_core.encode_label_batch`` builds) from a label service that has
        no agent, for a model with predictions stored; stored exactly once,
        like an Export."""
        return await self._ingest(context, labels_only=True)

    async def _check_labels_only(self, batch: Any) -> None:
        if batch.labels is None:
            raise BatchRejected("SubmitLabels carries no labels")
        if batch.n_records or batch.spans is not None or batch.profiles is not None:
            raise BatchRejected("SubmitLabels carries labels only (records go to Export)")
        model = str(batch.model.get("model", ""))
        if model in self._models_seen:
            return
        found = await asyncio.wrap_future(
            self.reader.run(
                lambda con: con.execute(
                    "SELECT 1 FROM batches WHERE model = ? AND n_records > 0 LIMIT 1", [model]
                ).fetchone()
            )
        )
        if found is None:
            raise LookupError(f"no predictions of model {model!r} are stored")
        if len(self._models_seen) < MAX_REFERENCE_PAIRS:
            self._models_seen.add(model)

    async def _ingest(
        self, context: grpc.aio.ServicerContext[bytes, bytes], *, labels_only: bool
    ) -> bytes:
        self.received += 1

        async def work() -> bytes:
            if self.exports_in_flight >= self.max_concurrent_rpcs:
                raise Overloaded(f"{self.exports_in_flight} exports in flight")
            if not self.writer.alive():
                self.writer.revive()
                raise StoreUnavailable("the store writer is restarting")
            ok, why = self.serving()
            if not ok:  # fail fast: queueing behind a broken store helps nobody
                raise StoreUnavailable(why)
            full = self.memory.refusal(self._backlog())
            if full is not None:  # before a byte of the message is read
                raise Overloaded(full)
            request = await self._receive(context)
            size = len(request)
            self._admit_received(size)
            try:
                loop = asyncio.get_running_loop()
                batch = await loop.run_in_executor(self._pool, decode, request)
                if labels_only:
                    await self._check_labels_only(batch)
                left = context.time_remaining()
                if left is not None:
                    batch.deadline = time.monotonic() + left
                duplicate, n = await asyncio.wrap_future(self.writer.submit(batch))
                if self.forwarder is not None and not duplicate:
                    self.forwarder.offer(batch.spans)
            finally:
                self.pending_bytes -= size
            return _core.encode_export_response(True, duplicate, n)

        self.exports_in_flight += 1
        try:
            return await self._answer(context, work)
        finally:
            self.exports_in_flight -= 1

    def _backlog(self) -> bool:
        """Batches are pending, arriving or queued: storing them frees memory."""
        return self.pending_bytes > 0 or self.receiving > 0 or self.writer.queued()["batches"] > 0

    async def _register(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        def check() -> tuple[str, str, bytes]:
            model, version, data = _core.decode_reference_upload(request)
            info = _core.reference_info(data)  # every index, every kind/spec pair
            model = model or str(info["model"])
            if not model:
                raise _core.ReferenceFormatError("no model named, in the call or the file")
            return model, version, data

        async def work() -> bytes:
            loop = asyncio.get_running_loop()
            model, version, data = await loop.run_in_executor(self._pool, check)
            fp = await asyncio.wrap_future(self.writer.call(registrar(model, version, data)))
            return _core.encode_text_response(fp)

        return await self._answer(context, work)

    async def _drift(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        async def work() -> bytes:
            model, version, lo, hi, rule_texts = _core.decode_drift_request(request)
            for what, t in (("from", lo), ("to", hi)):
                if t > MAX_UNIX_NANO:
                    raise ValueError(f"{what}_unix_nano {t} is past the largest time")
            rules = parse_rules(rule_texts)
            data = await asyncio.wrap_future(
                self.reader.run(
                    lambda con: analysis.drift_over_range(
                        CursorReads(con), model, version or None, lo or None, hi or None, rules
                    )
                )
            )
            return _core.encode_text_response(json.dumps(json_safe(data)))

        return await self._answer(context, work, arguments=True)

    async def _trace(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        """``{"trace_id": ...}`` -> the trace's spans and records (JSON)."""

        async def work() -> bytes:
            q = json_request(request)
            tid = text_arg(q, "trace_id") or ""
            data = await asyncio.wrap_future(
                self.reader.run(lambda con: analysis.trace(CursorReads(con), tid))
            )
            return _core.encode_text_response(json.dumps(json_safe(data), default=str))

        return await self._answer(context, work, arguments=True)

    async def _traces(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        """``{"model", "slowest", "from_unix_nano", "to_unix_nano"}`` -> the
        slowest traces with their stage breakdown (JSON)."""

        async def work() -> bytes:
            q = json_request(request)
            model = text_arg(q, "model")
            n = q.get("slowest", 10)
            if type(n) is not int or not 0 < n <= 10_000:
                raise ValueError("slowest must be an integer in 1..10000")
            lo, hi = time_args(q)
            data = await asyncio.wrap_future(
                self.reader.run(
                    lambda con: analysis.slowest_traces(CursorReads(con), model, n, lo, hi)
                )
            )
            return _core.encode_text_response(json.dumps(json_safe(data), default=str))

        return await self._answer(context, work, arguments=True)

    async def _latency(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        """``{"model", "version", "from_unix_nano", "to_unix_nano"}`` -> the
        latency per stage and end to end (JSON)."""

        async def work() -> bytes:
            q = json_request(request)
            model = text_arg(q, "model")
            if model is None:
                raise ValueError("name a model")
            version = text_arg(q, "version")
            lo, hi = time_args(q)
            data = await asyncio.wrap_future(
                self.reader.run(
                    lambda con: analysis.stage_latency(CursorReads(con), model, version, lo, hi)
                )
            )
            return _core.encode_text_response(json.dumps(json_safe(data)))

        return await self._answer(context, work, arguments=True)

    async def _query(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        """``{"sql": "SELECT ...", "params": [...]}`` -> the result as a
        stream of Arrow IPC pieces (see collector/reader.py)."""
        reader = self.reader
        refusal: Refusal | None = None

        def parse() -> tuple[str, list[Any] | None]:
            q = json_request(request)
            sql = q.get("sql")
            if not isinstance(sql, str):
                raise ValueError("sql must be a string")
            params = query_params(q.get("params"))
            check_read_only(sql)  # refuses anything but one SELECT
            return sql, params

        peer = context.peer()
        try:
            reader.admit()
        except Overloaded as e:
            refusal = status_for(e)
        if refusal is None:
            try:
                self.query_streams.enter(peer)
            except Overloaded as e:
                reader.release(False)
                refusal = status_for(e)
        if refusal is not None:
            self._count(refusal)
            await context.abort(refusal.code, refusal.details)
            return
        try:
            async for piece in self._query_admitted(request, context, parse):
                yield piece
        finally:
            self.query_streams.leave(peer)

    async def _query_admitted(
        self,
        request: bytes,
        context: grpc.aio.ServicerContext[bytes, bytes],
        parse: Callable[[], tuple[str, list[Any] | None]],
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        reader = self.reader
        session = None
        ok = timed_out = False
        timers: list[asyncio.TimerHandle] = []
        refusal: Refusal | None = None
        try:
            # Parsing a long query takes time: never on the event loop.
            sql, params = await loop.run_in_executor(reader.pool, parse)
            session = reader.session(sql, params)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            reader.release(False)
            raise
        except BaseException as e:
            reader.release(False)
            refusal = status_for(e, arguments=True)
        if refusal is not None:
            self._count(refusal)
            await context.abort(refusal.code, refusal.details)
            return
        assert session is not None
        task = asyncio.current_task()
        left = context.time_remaining()
        budget = reader.timeout_s if left is None else min(reader.timeout_s, left)
        # At the deadline the query is interrupted; a query still running
        # (DuckDB cannot interrupt one scalar call midway) or a client that
        # stopped taking pieces is cut off a little later: the handler is
        # cancelled and answers DEADLINE_EXCEEDED, its read closed off the pool.
        cut: list[str] = []

        def cut_off(why: str) -> None:
            if not cut:
                cut.append(why)
            session.interrupt()
            if task is not None:
                task.cancel()

        timers.append(loop.call_later(budget, session.interrupt))
        timers.append(
            loop.call_later(
                budget + 5.0, cut_off, f"the read took over {budget:g} s and was cut off"
            )
        )
        try:
            try:
                piece = await loop.run_in_executor(reader.pool, session.start)
                while piece is not None:
                    # A client that takes nothing for query_idle_s is cut off
                    # (gRPC's flow control holds this yield meanwhile).
                    idle = loop.call_later(self.query_idle_s, self._cut_idle, cut_off)
                    try:
                        yield _core.encode_query_chunk(piece)
                    finally:
                        idle.cancel()
                    piece = await loop.run_in_executor(reader.pool, session.next)
                ok = True
            except asyncio.CancelledError:
                if not cut:
                    raise  # the client went away (or the server stops)
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()
                timed_out = True
                refusal = Refusal(Code.DEADLINE_EXCEEDED, cut[0])
            except (GeneratorExit, KeyboardInterrupt, SystemExit):
                raise  # nothing to answer
            except BaseException as e:
                timed_out = isinstance(e, ReadTimeout)
                refusal = status_for(e, arguments=True)
            if refusal is not None:
                self._count(refusal)
                await context.abort(refusal.code, refusal.details)
        finally:
            for t in timers:
                t.cancel()
            session.interrupt()
            # Closing waits for a call still running on the session (one
            # DuckDB cannot interrupt): never on a read thread, never here.
            close_off_pool(reader.finished, session, ok, timed_out)

    def _cut_idle(self, cut_off: Callable[[str], None]) -> None:
        self.queries_idle_cut += 1
        cut_off(f"the client took no piece for {self.query_idle_s:g} s; the read was cut off")

    def _count(self, r: Refusal) -> None:
        if r.code in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION):
            self.rejected += 1
        elif r.code == Code.RESOURCE_EXHAUSTED:
            self.shed += 1
        elif r.code == Code.INTERNAL:
            self.internal += 1

    async def _otlp_export(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        """OTLP/gRPC ``TraceService/Export``: spans of services instrumented
        with plain OpenTelemetry join the same store and traces."""

        async def work() -> bytes:
            # The same admission as Export: a flood of OTLP requests is shed
            # (RESOURCE_EXHAUSTED) rather than queued without bound.
            if self.exports_in_flight >= self.max_concurrent_rpcs:
                raise Overloaded(f"{self.exports_in_flight} exports in flight")
            ok, why = self.serving()
            if not ok:
                raise StoreUnavailable(why)
            full = self.memory.refusal(self._backlog())
            if full is not None:
                raise Overloaded(full)
            request = await self._receive(context)
            size = len(request)
            self._admit_received(size)
            try:
                loop = asyncio.get_running_loop()
                # Decoded on a thread of its own: agents' batches keep theirs.
                table, rejected, reason = await loop.run_in_executor(
                    self._otlp_pool, otlp_spans, request
                )
                if table is not None:
                    if table.nbytes > max(MAX_EXPANSION * size, MIN_DECODED_ALLOWANCE):
                        raise _core.BatchDecodeError(
                            f"out of range: an OTLP request of {size} bytes expands to "
                            f"{table.nbytes} bytes (at most {MAX_EXPANSION}x)"
                        )
                    added = await asyncio.wrap_future(self.writer.call(_span_inserter(table)))
                    self.otlp_received += added
                    self.otlp_duplicates += table.num_rows - added
                    if self.forwarder is not None and added:
                        self.forwarder.offer(table)
            finally:
                self.pending_bytes -= size
            self.otlp_rejected += rejected
            return otlp_response(rejected, reason)

        self.exports_in_flight += 1
        try:
            return await self._answer(context, work, arguments=True)
        finally:
            self.exports_in_flight -= 1


def _span_inserter(table: Any) -> Any:
    """A writer job appending OTLP spans (a span already stored, sent again
    by an exporter's retry, is left out), its failure said as the status a
    retrying exporter understands."""

    def job(backend: StoreBackend) -> int:
        try:
            return backend.append_spans(table)
        except BaseException as e:
            kind = backend.classify(e)
            if kind == "memory":
                raise Overloaded(f"store out of memory: {type(e).__name__}: {e}") from e
            if kind == "store":
                raise StoreUnavailable(f"{type(e).__name__}: {e}") from e
            if kind == "data":
                raise BatchRejected(f"the store refused these spans: {e}") from e
            raise

    return job


def registrar(model: str, version: str, data: bytes) -> Any:
    def job(backend: StoreBackend) -> str:
        fingerprint = str(_core.reference_info(data)["fingerprint"])
        backend.register_reference(model, version, data, fingerprint, max_pairs=MAX_REFERENCE_PAIRS)
        return fingerprint

    return job
