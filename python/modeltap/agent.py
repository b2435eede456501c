"""The public agent: attach one per model in serving code.

``Agent.log`` is the native ``Recorder.log`` itself (bound on the instance),
so a call costs one C-level dispatch: the record is parsed and copied into a
pre-allocated ring slot without keeping any Python object. Everything else
(batching, encoding) happens on the native drain thread; delivery happens on
the exporter thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import logging
import math
import os
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np

from modeltap import _core, tracing
from modeltap.drift import DriftReport, Rules, compute
from modeltap.exporter import (
    Destination,
    DiscardDestination,
    Exporter,
    GrpcDestination,
    SinkDestination,
)
from modeltap.reference import Reference, category_codes
from modeltap.spool import open_spool
from modeltap.system import SystemReading, SystemSampler

log = logging.getLogger("modeltap")

F = TypeVar("F", bound=Callable[..., Any])

PENDING_RECORDS = 262_144
DEFAULT_BUFFER_BYTES = 64 << 20

_live: weakref.WeakSet[Agent] = weakref.WeakSet()
# Recorders inherited from a parent process across fork(). Their threads do
# not exist in the child, and a lock may have been held by one of them at the
# moment of the fork, so they are never touched again, not even to be freed.
_abandoned: list[object] = []


def _after_fork_in_child() -> None:
    _core._after_fork()
    for agent in list(_live):
        agent._reinit_after_fork()


def _close_one(agent: Agent, timeout_s: float | None = None) -> None:
    try:
        agent.close(timeout_s)
    except Exception:
        with contextlib.suppress(Exception):
            agent._rec.count_error()
        log.exception("modeltap: closing agent %r failed", getattr(agent, "model", "?"))


def _close_all_at_exit() -> bool:
    """Closes every live agent, all at once under one deadline (the longest
    ``shutdown_timeout`` among them): six agents whose collector does not
    answer take one timeout, not six, so each spools or counts what it held
    within a pod's grace period. One that fails is counted and logged and
    does not leave the others open. Returns True when an agent was left
    alone because its ``close()`` is in progress lower on this thread's
    stack (a signal handler interrupted it)."""
    interrupted = False
    agents: list[Agent] = []
    for agent in list(_live):
        try:
            if agent._closing_on_this_thread():
                interrupted = True
                continue
        except Exception:
            continue
        agents.append(agent)
    if not agents:
        return interrupted
    budget = max(a.shutdown_timeout for a in agents)
    deadline = time.monotonic() + budget
    if len(agents) == 1:
        _close_one(agents[0])
        return interrupted
    threads: list[threading.Thread] = []
    for agent in agents:
        t = threading.Thread(target=_close_one, args=(agent,), name="modeltap-close", daemon=True)
        try:
            t.start()
        except RuntimeError:  # no new threads at this point of shutdown
            _close_one(agent, max(deadline - time.monotonic(), 0.0))
            continue
        threads.append(t)
    for t in threads:
        # each close() ends within its own timeout; a little slack for the
        # spooling and counting that follow it
        t.join(max(deadline - time.monotonic(), 0.0) + 1.0)
    return interrupted


_sigterm_installed = False
# A SIGTERM that arrived while close() ran on the main thread: acted on once
# that close() has finished.
_sigterm_deferred = False
# Thread ident -> close() calls in progress on that thread.
_closing_depth: dict[int, int] = {}


def _on_sigterm(signum: int, frame: object) -> None:
    """Delivers (or spools) what the agents hold, then dies of SIGTERM as the
    process would have without modeltap. A handler that interrupted a
    ``close()`` cannot wait for it (it is lower on the same stack): it closes
    the other agents and leaves dying to that ``close()`` when it ends."""
    global _sigterm_deferred
    if _close_all_at_exit():
        _sigterm_deferred = True
        return
    _sigterm_deferred = False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    """Only where nobody else handles SIGTERM: servers that install their own
    handler exit through it, and interpreter exit closes the agents."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True
    except (ValueError, OSError):
        pass


def _seconds(value: float, what: str) -> float:
    """A timeout argument: NaN is an error, negative means 0, and anything
    beyond a (very generous) bound is clamped so that native durations never
    overflow."""
    t = float(value)
    if t != t:
        raise ValueError(f"{what} must be a number of seconds, not NaN")
    return min(max(t, 0.0), _MAX_TIMEOUT_S)


_MAX_TIMEOUT_S = 1e9


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


# Most bytes a span keeps of a stage's input or output (`capture_bytes`).
MAX_CAPTURE_BYTES = 64 * 1024


class Agent:
    """Records every prediction of one model (and version) with almost no
    cost on the serving thread.

    Parameters
    ----------
    model, version:
        Identify the model on every batch.
    collector:
        ``HOST:PORT`` of a ``modeltap collector``; ``None`` keeps everything
        local (stats still work; batches go to ``sink`` if given, else
        nowhere).
    features:
        Feature names, in order. Without them the schema comes from the first
        record (dict keys, or ``f0..fN`` for arrays and lists).
    categorical:
        Names of categorical features: their values (strings or ints) travel
        as compact codes.
    params:
        Inference parameters (threshold, temperature, ...), sent as strings
        on every batch.
    buffer_size:
        Most ring slots (rounded up to a power of two).
    buffer_bytes:
        Memory budget of the record path in bytes (default 64 MiB), whatever
        the width of a record: half for the ring's slots (which get fewer
        than ``buffer_size`` when the schema is wide), an eighth for the
        variable-length parts beside them (vectors wider than the slot,
        strings), an eighth for the batch being built and a quarter for
        batches waiting for the exporter. A record that does not fit is
        dropped and counted in ``stats()["dropped_full"]``.
    on_full:
        ``"drop"`` (default): a full ring drops the record and counts it in
        ``stats()["dropped_full"]``. ``"block"``: the caller waits for room.
    shutdown_timeout:
        Seconds ``close()`` (and interpreter exit) may spend delivering.
    strict:
        Raise :class:`modeltap.InvalidRecord` for bad input instead of
        counting and flagging it. Off by default: the agent never raises into
        the inference path.
    batch_size, flush_interval:
        A batch is sealed at ``batch_size`` records or ``flush_interval``
        seconds after its first record, whichever comes first.
    metrics_interval:
        Seconds between system samples (CPU, memory, threads, GPUs);
        ``None`` turns sampling off.
    sink:
        A callable taking each encoded batch (``bytes``); used when
        ``collector`` is ``None``.
    spool_dir, spool_max_bytes:
        A directory for the disk spool that holds batches while the
        collector is unreachable (replayed in order when it is back, or by
        the next agent started with the same directory), and its size cap.
        Only what overflows the cap is dropped (``stats()["dropped_spool"]``).
    compression:
        ``"gzip"`` to compress batches on the wire.
    export_timeout:
        Deadline of one Export call, in seconds.
    retry_window:
        How long a batch is retried before it goes to the spool.
    reference:
        A :class:`modeltap.Reference` (or the path of a reference file). The
        agent takes its feature names and categorical columns from it, and
        profiles every record against it for :meth:`drift`.
    window_s:
        Width of the tumbling event-time windows records are profiled in.
    sample_rate:
        Share of records shipped as raw rows (the rest count as
        ``sampled_out``); every record is profiled either way.
    max_pending_records:
        Records in encoded batches that may wait for delivery (at least two
        batches; the batches are also bounded by a quarter of
        ``buffer_bytes``). Past that the drain thread stops, the ring fills,
        and new records are dropped and counted: memory stays bounded
        however fast records arrive or however long the collector is away.
    trace_sample_rate:
        Share of traces recorded (head sampling, decided by a trace's first
        span here, or by the sampled flag of an incoming parent). A trace
        not sampled is still recorded whole when one of its spans ends in an
        exception.
    capture_bytes:
        Most bytes ``span.set_input(...)`` / ``set_output(...)`` keep of a
        stage's input or output (compact JSON, summarised past that); 0
        keeps nothing; at most 64 KiB.
    redact:
        ``redact(stage, "input" | "output", value)`` returns what to keep
        of a captured value (``None``: nothing), before it is written.
    """

    log: Callable[..., str]

    def __init__(
        self,
        model: str,
        version: str = "",
        *,
        collector: str | None = None,
        features: Sequence[str] | None = None,
        categorical: Iterable[str] = (),
        params: Mapping[str, Any] | None = None,
        buffer_size: int = 65536,
        buffer_bytes: int | None = None,
        on_full: str = "drop",
        shutdown_timeout: float = 5.0,
        strict: bool = False,
        batch_size: int = 8192,
        flush_interval: float = 1.0,
        metrics_interval: float | None = 5.0,
        sink: Callable[[bytes], object] | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 1 << 30,
        compression: str | None = None,
        export_timeout: float = 10.0,
        retry_window: float = 5.0,
        max_pending_records: int = PENDING_RECORDS,
        reference: Reference | str | os.PathLike[str] | None = None,
        window_s: float = 60.0,
        sample_rate: float = 1.0,
        trace_sample_rate: float = 1.0,
        capture_bytes: int = 2048,
        redact: Callable[[str, str, Any], Any] | None = None,
    ) -> None:
        if not model:
            raise ValueError("model must be a non-empty name")
        if reference is not None and not isinstance(reference, Reference):
            reference = Reference.load(reference)
        self.reference = reference
        if reference is not None:
            if features is None:
                features = reference.feature_names
            categorical = list(dict.fromkeys([*categorical, *reference.categorical]))
        if collector is not None and sink is not None:
            raise ValueError("give either collector= or sink=, not both")
        if compression not in (None, "gzip"):
            raise ValueError(f"compression must be None or 'gzip', not {compression!r}")
        if spool_dir is not None and collector is None:
            raise ValueError("spool_dir= needs collector=")
        if on_full not in ("drop", "block"):
            raise ValueError(f"on_full must be 'drop' or 'block', not {on_full!r}")
        if metrics_interval is not None:
            _interval("metrics_interval", metrics_interval, minimum=0.01)
        _interval("flush_interval", flush_interval, minimum=1e-3)
        _interval("export_timeout", export_timeout, minimum=1e-3)
        _interval("retry_window", retry_window, minimum=0.0)
        _interval("shutdown_timeout", shutdown_timeout, minimum=0.0)
        _check_params(params)
        self.model = str(model)
        self.version = str(version)
        self.collector = collector
        self.strict = bool(strict)
        self.shutdown_timeout = float(shutdown_timeout)
        self._features = list(features) if features is not None else None
        self._categorical = list(categorical)
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self._cfg: dict[str, Any] = {
            "buffer_size": int(buffer_size),
            "buffer_bytes": DEFAULT_BUFFER_BYTES if buffer_bytes is None else int(buffer_bytes),
            "batch_size": int(batch_size),
            # Encoded batches waiting for the exporter: bounded in records,
            # so memory stays bounded whatever the batch size.
            "max_pending_batches": max(2, int(max_pending_records) // max(int(batch_size), 1)),
            "flush_interval_s": float(flush_interval),
            "on_full": on_full,
        }
        self._metrics_interval = metrics_interval
        self._cfg["reference"] = reference.to_bytes() if reference is not None else None
        self._cfg["window_s"] = float(window_s)
        self._cfg["sample_rate"] = float(sample_rate)
        self._cfg["trace_sample_rate"] = float(trace_sample_rate)
        if not 0 <= int(capture_bytes) <= MAX_CAPTURE_BYTES:
            raise ValueError(f"capture_bytes must be in 0..{MAX_CAPTURE_BYTES}")
        if redact is not None and not callable(redact):
            raise TypeError("redact must be a callable (stage, which, value) -> value")
        self._capture_bytes = int(capture_bytes)
        self._redact = redact
        self._sink = sink
        self._spool_dir = spool_dir
        self._spool_max_bytes = int(spool_max_bytes)
        self._compression = compression
        self._export_timeout = float(export_timeout)
        self._retry_window = float(retry_window)
        self._closed = False
        self._start()
        _live.add(self)
        _install_sigterm_handler()

    # -- lifecycle -----------------------------------------------------------

    def _start(self) -> None:
        self.agent_id = _core.random_id()
        self.pid = os.getpid()
        self.start_unix_nano = time.time_ns()
        self._rec = _core.Recorder(
            model=self.model,
            version=self.version,
            agent_id=self.agent_id,
            params=self.params,
            host=socket.gethostname(),
            pid=self.pid,
            start_unix_nano=self.start_unix_nano,
            agent_version=_core.__version__,
            features=self._features,
            categorical=self._categorical,
            strict=self.strict,
            **self._cfg,
        )
        if self._capture_bytes > 0:
            self._rec.set_capture(
                tracing.make_capture(self._capture_bytes, self._redact, self._rec.count_error)
            )
        # The hot path: no Python frame between the caller and the ring.
        self.log = self._rec.log
        self.__dict__["span"] = self._rec.span  # Agent.span, without a frame
        dest: Destination
        if self.collector is not None:
            spool = (
                open_spool(
                    self._spool_dir, self.agent_id, self._spool_max_bytes, self._rec.count_error
                )
                if self._spool_dir is not None
                else None
            )
            dest = GrpcDestination(
                self.collector,
                self._rec,
                spool=spool,
                compression=self._compression,
                timeout_s=self._export_timeout,
                retry_window_s=self._retry_window,
                reference=(
                    (self.model, self.version, self.reference.to_bytes())
                    if self.reference is not None
                    else None
                ),
            )
        elif self._sink is not None:
            dest = SinkDestination(self._sink, self._rec.count_error)
        else:
            dest = DiscardDestination()
        self._exporter = Exporter(self._rec, dest)
        self._exporter.start()
        self._sampler: SystemSampler | None = None
        if self._metrics_interval is not None:
            self._sampler = SystemSampler(
                self._emit_system, self._metrics_interval, on_error=self._rec.count_error
            )
            self._sampler.start()

    def _emit_system(self, r: SystemReading) -> None:
        gpus = None
        if r.gpus is not None:
            gpus = [
                (
                    g.index,
                    g.name,
                    g.utilization_percent,
                    g.memory_used_bytes,
                    g.memory_total_bytes,
                    g.temperature_celsius,
                )
                for g in r.gpus
            ]
        self._rec.add_system_sample(
            unix_nano=r.unix_nano,
            process_cpu_percent=r.process_cpu_percent,
            rss_bytes=r.rss_bytes,
            threads=r.threads,
            system_cpu_percent=r.system_cpu_percent,
            system_memory_used_bytes=r.system_memory_used_bytes,
            system_memory_total_bytes=r.system_memory_total_bytes,
            gpus=gpus,
        )

    def _reinit_after_fork(self) -> None:
        """In a forked child: a new agent id, an empty ring, fresh threads.
        What was in the parent's ring is the parent's to ship."""
        if self._closed:
            return
        # The parent's recorder, exporter (its gRPC channel, its spool's
        # locks) stay referenced so that nothing of theirs runs in the child.
        parent = self._rec
        _abandoned.append((parent, self._exporter))
        # The child keeps the schema its parent's first record fixed (read
        # without locks: the schema is set once and never changes).
        names = parent.feature_names
        if names is not None:
            self._features = list(names)
            self._categorical = list(parent.categorical)
        self._start()
        # A bound `agent.log` the user took before the fork still points at
        # the parent's recorder: send everything it gets to the child's.
        parent.forward_to(self._rec)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Blocks until every record logged before the call has been
        acknowledged by its destination, retrying while ``timeout_s`` lasts.
        With a collector and a spool, batches the collector did not take
        within the retry window are in the spool (durable, replayed later).
        Returns True when every such record is settled with nothing left to
        wait for: delivered (spool included), or refused by the collector for
        good and counted in ``discarded``.
        Raises ValueError for a NaN timeout; an infinite one waits as long
        as it takes."""
        timeout = _seconds(timeout_s, "timeout_s")
        deadline = time.monotonic() + timeout
        ok = bool(self._rec.flush(timeout))
        spool = self._exporter.destination.spool
        while spool is not None and spool.pending_records() and time.monotonic() < deadline:
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0.0)))
        return ok and (spool is None or spool.pending_records() == 0)

    def close(self, timeout_s: float | None = None) -> None:
        """Delivers what is in the ring within ``timeout_s`` (default
        ``shutdown_timeout``) and stops the agent's threads. What could not
        be delivered by then is spooled (with a spool) or counted as
        ``discarded``, with a warning giving the count: afterwards
        ``pending`` is 0 and the counters add up. Records logged afterwards
        are counted as dropped. Idempotent; a second caller waits for the
        first to finish, and a call re-entering from a signal handler that
        interrupted this one returns at once."""
        timeout = _seconds(self.shutdown_timeout if timeout_s is None else timeout_s, "timeout_s")
        me = threading.get_ident()
        # A lock-free test-and-set (one dict operation under the GIL): a
        # signal handler running close() on a thread that is already inside
        # close() must neither wait for itself nor start a second one.
        token = object()
        done: threading.Event = self.__dict__.setdefault("_close_done", threading.Event())
        if self.__dict__.setdefault("_close_token", token) is not token:
            if self.__dict__.get("_close_thread") != me:
                done.wait(timeout + 1.0)
            return
        self._close_thread = me
        self._closed = True
        _closing_depth[me] = _closing_depth.get(me, 0) + 1
        try:
            deadline = time.monotonic() + timeout
            if self._sampler is not None:
                self._sampler.stop(min(1.0, timeout))
            self._rec.shutdown()
            self._exporter.close(max(deadline - time.monotonic(), 0.0))
        finally:
            done.set()
            depth = _closing_depth.get(me, 1) - 1
            if depth:
                _closing_depth[me] = depth
            else:
                _closing_depth.pop(me, None)
                if _sigterm_deferred and threading.current_thread() is threading.main_thread():
                    _on_sigterm(signal.SIGTERM, None)

    def _closing_on_this_thread(self) -> bool:
        """True while this thread is inside this agent's close()."""
        done = self.__dict__.get("_close_done")
        return (
            self.__dict__.get("_close_thread") == threading.get_ident()
            and done is not None
            and not done.is_set()
        )

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recording -----------------------------------------------------------

    def log_batch(
        self,
        X: Any,
        predictions: Any,
        probabilities: Any = None,
        *,
        latency_s: Any = None,
        request_ids: Sequence[str] | None = None,
    ) -> _core.RequestIds:
        """Logs a batch of predictions and returns their request ids.

        ``X`` is a 2-D array of shape (rows, features); float32 and float64
        arrays, C or F order, are read in place, other array-likes converted
        once. ``X`` may also be a pandas or polars DataFrame or an Arrow table
        whose columns are the features (any order), categorical (string)
        columns included: each distinct value is interned once, with no
        per-row Python loop. ``predictions`` holds one value (or vector) per row;
        ``probabilities`` is an optional (rows, classes) array; ``latency_s``
        is one number for all rows or one per row.

        The ids come back as a :class:`modeltap.RequestIds`, a read-only
        sequence of ``str`` in row order (``len``, indexing, slicing,
        iteration, ``==`` with a list) that keeps the ids as 16-byte values
        and spells each only when read: a million-row batch builds no
        million strings. ``ids.tolist()`` gives a ``list[str]``; rows that
        were rejected give an empty one.

        A DataFrame of more than 65,536 rows is read in slices of that many
        (outside strict mode, when every per-row argument has one entry per
        row), so converting it never takes more memory than one slice: a
        slice that cannot be read is rejected on its own and contributes no
        ids.
        """
        if (
            not self.strict
            and _is_frame(X)
            and _n_rows(X) > FRAME_SLICE_ROWS
            and _per_row(_n_rows(X), predictions, probabilities, latency_s, request_ids)
        ):
            return self._log_frame_slices(X, predictions, probabilities, latency_s, request_ids)
        try:
            coded = False
            overflow: dict[int, list[tuple[int, str]]] | None = None
            if _is_frame(X):
                try:
                    X, overflow = self._frame_matrix(X, predictions, probabilities)
                except _core.InvalidRecord:
                    # Already counted (strict mode raises it after counting).
                    raise
                except Exception as e:
                    # Its rows were handed over: count them (InvalidRecord
                    # in strict mode), never lose them silently.
                    self._rec.reject(_n_rows(X), f"the DataFrame could not be read: {e!r}")
                    return _core.RequestIds()
                if X is None:
                    return _core.RequestIds()
                coded = True
            elif not (isinstance(X, np.ndarray) and X.dtype in (np.float32, np.float64)):
                # What cannot be converted, the recorder rejects with a clear message.
                with contextlib.suppress(TypeError, ValueError):
                    X = np.asarray(X, dtype=np.float64)
            if isinstance(X, np.ndarray) and X.ndim == 1 and X.size > 0:
                X = X.reshape(1, -1)
            if isinstance(probabilities, (list, tuple)):
                # Rows of class probabilities as lists: one array (a ragged
                # one stays as it is, for the recorder to reject clearly).
                with contextlib.suppress(TypeError, ValueError):
                    probabilities = np.asarray(probabilities, dtype=np.float64)
            return self._rec.log_batch(
                X,
                predictions,
                probabilities,
                latency_s=latency_s,
                request_ids=request_ids,
                coded=coded,
                overflow=overflow,
            )
        except _core.InvalidRecord:
            raise
        except Exception:
            if self.strict:
                raise
            self._rec.count_error()
            log.exception("modeltap: log_batch failed")
            return _core.RequestIds()

    def _log_frame_slices(
        self,
        X: Any,
        predictions: Any,
        probabilities: Any,
        latency_s: Any,
        request_ids: Sequence[str] | None,
    ) -> _core.RequestIds:
        """``log_batch`` of a large frame, ``FRAME_SLICE_ROWS`` rows at a time."""
        n = _n_rows(X)
        predictions = _rows_of(predictions)
        probabilities = _rows_of(probabilities)
        per_row_latency = latency_s is not None and _sized(latency_s)
        latency = _rows_of(latency_s) if per_row_latency else latency_s
        ids = _rows_of(request_ids)
        parts = []
        for start in range(0, n, FRAME_SLICE_ROWS):
            stop = min(start + FRAME_SLICE_ROWS, n)
            try:
                args = (
                    _frame_rows(X, start, stop),
                    predictions[start:stop],
                    None if probabilities is None else probabilities[start:stop],
                    latency[start:stop] if per_row_latency else latency,
                    None if ids is None else ids[start:stop],
                )
            except Exception as e:
                # Handed over, never readable: counted, never lost silently.
                self._rec.reject(n - start, f"rows {start}: of the DataFrame unreadable: {e!r}")
                break
            x, p, pr, lat, rid = args
            parts.append(self.log_batch(x, p, pr, latency_s=lat, request_ids=rid))
        return _core.RequestIds.join(parts)

    def _frame_matrix(
        self, X: Any, predictions: Any, probabilities: Any
    ) -> tuple[np.ndarray | None, dict[int, list[tuple[int, str]]] | None]:
        """A pandas/polars DataFrame or Arrow table as a float64 matrix in
        schema order, categorical columns as vocabulary codes (each distinct
        value interned once, no per-row Python loop), and the values that
        did not fit a full vocabulary: ``{feature: [(row, value), ...]}``,
        carried beside their records."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = _as_arrow(X)
        names = [str(c) for c in table.column_names]
        if not names:
            # Arrow sees no rows in a table without columns; the frame may
            # have had some.
            if n_rows := _n_rows(X):
                self._rec.reject(n_rows, "a DataFrame without columns has no features")
            return None, None
        if self._rec.feature_names is None:
            strings = [
                n
                for n in names
                if not (
                    pa.types.is_integer(table.column(n).type)
                    or pa.types.is_floating(table.column(n).type)
                    or pa.types.is_boolean(table.column(n).type)
                )
            ]
            pred = np.asarray(predictions) if not isinstance(predictions, list) else None
            out_w = pred.shape[1] if pred is not None and pred.ndim == 2 else 1
            prob_w = None if probabilities is None else np.asarray(probabilities).shape[1]
            self._rec.init_schema(names, strings, out_w, prob_w)
        schema = self._rec.feature_names or []
        missing = [n for n in schema if n not in names]
        extra = [n for n in names if n not in schema]
        if missing or extra:
            self._rec.reject(
                table.num_rows,
                f"DataFrame columns do not match the features: missing {missing}, unknown {extra}",
            )
            return None, None
        cats = set(self._rec.categorical)
        overflow: dict[int, list[tuple[int, str]]] = {}
        out = np.empty((table.num_rows, len(schema)), dtype=np.float64)
        for i, name in enumerate(schema):
            col = table.column(name).combine_chunks()
            if name in cats:
                # Encoded as the values are, only the distinct ones spelled
                # (the same codes `Reference.drift` reads).
                idx, values = category_codes(col)
                codes = np.asarray(self._rec.intern(i, values), dtype=np.float64)
                full = np.isnan(codes)
                if full.any():
                    # The vocabulary is full: these values travel as strings.
                    rows = np.flatnonzero((idx >= 0) & full[np.maximum(idx, 0)])
                    overflow[i] = [(int(r), str(values[idx[r]])) for r in rows]
                vals = np.where(
                    idx >= 0, codes[np.maximum(idx, 0)] if len(codes) else np.nan, np.nan
                )
                out[:, i] = vals
            else:
                out[:, i] = (
                    pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
                )
        return out, overflow or None

    # -- tracing ---------------------------------------------------------------

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

    # -- drift ----------------------------------------------------------------

    def drift(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        rules: Rules | None = None,
        defaults: Rules | None = None,
    ) -> DriftReport:
        """Drift of this agent's records against its reference, from the
        window profiles it keeps locally (the last 1440 windows), optionally
        only the windows starting in ``[since, until)`` (Unix seconds).
        Records still in the ring are included once :meth:`flush` ran."""
        if self.reference is None:
            raise ValueError("this agent has no reference: Agent(..., reference=...)")
        lo = 0 if since is None else _unix_ns("since", since)
        hi = 2**64 - 1 if until is None else _unix_ns("until", until)
        profile = self._rec.profile(lo, hi)
        if profile is None:
            profile = b""
        return compute(self.reference.to_bytes(), profile, rules, defaults)

    # -- introspection ------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Delivery counters. Every record handed to the agent is in exactly
        one of ``pending`` (ring or unsent batch), ``shipped``, ``spooled``,
        ``discarded``, ``sampled_out``, ``dropped_full``, ``dropped_spool``
        or ``invalid``;
        ``logged`` is their sum. ``flagged`` counts kept records with
        missing or bad values, ``inference_errors`` records logged with an
        error, ``errors`` the agent's own failures. With a spool:
        ``spool_recovered`` (records of earlier processes delivered from the
        spool) and ``spool_corrupt`` (records lost to damaged spool files)."""
        s = self._rec.stats()
        dest = self._exporter.destination
        if isinstance(dest, GrpcDestination):
            s["spool_recovered"] = dest.recovered
            s["spool_corrupt"] = dest.spool_corrupt
        return s

    @property
    def feature_names(self) -> list[str] | None:
        """Feature names in force (``None`` until fixed by the first record)."""
        return self._rec.feature_names

    @property
    def categorical(self) -> list[str]:
        """Categorical feature names."""
        return self._rec.categorical

    @property
    def buffer_size(self) -> int:
        """Ring capacity in records."""
        return int(self._rec.capacity)

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"Agent(model={self.model!r}, version={self.version!r}, "
            f"agent_id={self.agent_id[:8]}…, logged={s['logged']}, pending={s['pending']})"
        )


# Inference parameters travel on every batch: a few, short.
MAX_PARAMS = 256
MAX_PARAMS_BYTES = 64 * 1024


def _interval(name: str, value: Any, *, minimum: float) -> float:
    """A finite number of seconds, at least ``minimum``, or ValueError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None
    if not math.isfinite(v) or v < minimum:
        raise ValueError(f"{name} must be a finite number of seconds >= {minimum}, not {value!r}")
    return v


def _unix_ns(name: str, t: Any) -> int:
    """Unix seconds as nanoseconds within the range of a window start."""
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be Unix seconds, not {t!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite Unix seconds, not {t!r}")
    return min(max(int(v * 1e9), 0), 2**64 - 1)


def _check_params(params: Mapping[str, Any] | None) -> None:
    if not params:
        return
    if len(params) > MAX_PARAMS:
        raise ValueError(f"params has {len(params)} entries; at most {MAX_PARAMS}")
    size = sum(len(str(k)) + len(str(v)) for k, v in params.items())
    if size > MAX_PARAMS_BYTES:
        raise ValueError(f"params take {size} bytes as text; at most {MAX_PARAMS_BYTES}")


def _n_rows(X: Any) -> int:
    try:
        return int(X.shape[0])
    except Exception:
        try:
            return len(X)
        except Exception:
            return 1


# A DataFrame larger than this is converted and logged a slice at a time.
FRAME_SLICE_ROWS = 65_536


def _sized(v: Any) -> bool:
    return hasattr(v, "__len__") and not isinstance(v, (str, bytes))


def _per_row(
    n: int, predictions: Any, probabilities: Any, latency_s: Any, request_ids: Any
) -> bool:
    """Whether the per-row arguments can be sliced with the frame: each has
    exactly ``n`` rows and takes a slice (``latency_s`` may also be one
    number, ``probabilities`` and ``request_ids`` None). Anything else (a
    generator, a scalar prediction, a mapping) goes to the one-call path,
    which reads or rejects it whole."""

    def rows(v: Any) -> bool:
        if not _sized(v) or isinstance(v, Mapping):
            return False
        try:
            return len(v) == n and len(_rows_of(v)[0:1]) == min(n, 1)
        except Exception:
            return False

    return (
        rows(predictions)
        and (probabilities is None or rows(probabilities))
        and (latency_s is None or not _sized(latency_s) or rows(latency_s))
        and (request_ids is None or rows(request_ids))
    )


def _rows_of(v: Any) -> Any:
    """Something sliceable by row position (a pandas object by its values)."""
    if v is not None and type(v).__module__.startswith("pandas") and hasattr(v, "to_numpy"):
        return v.to_numpy()
    return v


def _frame_rows(X: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of a pandas/polars DataFrame or Arrow table,
    without copying."""
    mod = type(X).__module__
    if mod.startswith("pandas"):
        return X.iloc[start:stop]
    return X.slice(start, stop - start)


def _is_frame(X: Any) -> bool:
    mod = type(X).__module__
    return mod.startswith(("pandas", "polars", "pyarrow")) and hasattr(X, "columns")


def _as_arrow(X: Any) -> Any:
    import pyarrow as pa

    mod = type(X).__module__
    if mod.startswith("pyarrow"):
        return X
    if mod.startswith("polars"):
        return X.to_arrow()
    try:
        return pa.Table.from_pandas(X, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # A column Arrow cannot read as it is (strings and numbers mixed):
        # its values spelled one by one, as log() spells them.
        from modeltap.reference import spelled_objects

        cols = {}
        for name in X.columns:
            try:
                cols[str(name)] = pa.Array.from_pandas(X[name])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                cols[str(name)] = spelled_objects(X[name].to_numpy())
        return pa.table(cols)


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
