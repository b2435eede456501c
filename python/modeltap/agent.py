"""The public agent: attach one per model in serving code.

``Agent.log`` is the native ``Recorder.log`` itself (bound on the instance),
so a call costs one C-level dispatch: the record is parsed and copied into a
pre-allocated ring slot without keeping any Python object. Everything else
(batching, encoding) happens on the native drain thread; delivery happens on
the exporter thread.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from modeltap._agent_batch import FRAME_SLICE_ROWS as FRAME_SLICE_ROWS
from modeltap._agent_batch import _AgentBatches
from modeltap._agent_batch import _as_arrow as _as_arrow
from modeltap._agent_batch import _frame_rows as _frame_rows
from modeltap._agent_batch import _is_frame as _is_frame
from modeltap._agent_batch import _n_rows as _n_rows
from modeltap._agent_batch import _per_row as _per_row
from modeltap._agent_batch import _rows_of as _rows_of
from modeltap._agent_batch import _sized as _sized
from modeltap._agent_labels import _AgentLabels
from modeltap._agent_lifecycle import _MAX_TIMEOUT_S as _MAX_TIMEOUT_S
from modeltap._agent_lifecycle import _abandoned as _abandoned
from modeltap._agent_lifecycle import _after_fork_in_child as _after_fork_in_child
from modeltap._agent_lifecycle import _AgentLifecycle, _install_sigterm_handler, _live
from modeltap._agent_lifecycle import _close_all_at_exit as _close_all_at_exit
from modeltap._agent_lifecycle import _close_one as _close_one
from modeltap._agent_lifecycle import _closing_depth as _closing_depth
from modeltap._agent_lifecycle import _on_sigterm as _on_sigterm
from modeltap._agent_lifecycle import _seconds as _seconds
from modeltap._agent_state import _unix_ns
from modeltap._agent_tracing import F as F
from modeltap._agent_tracing import _AgentTracing
from modeltap._agent_tracing import _input_picker as _input_picker
from modeltap.drift import DriftReport, Rules, compute
from modeltap.exporter import GrpcDestination
from modeltap.reference import Reference

log = logging.getLogger("modeltap")

PENDING_RECORDS = 262_144
DEFAULT_BUFFER_BYTES = 64 << 20

# Most bytes a span keeps of a stage's input or output (`capture_bytes`).
MAX_CAPTURE_BYTES = 64 * 1024


class Agent(_AgentLifecycle, _AgentBatches, _AgentTracing, _AgentLabels):
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

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        error, ``errors`` the agent's own failures. Labels
        (:meth:`log_label`) are no records: ``labels`` counts those put in
        the ring, ``labels_dropped`` those the ring had no room for; a label
        refused as invalid counts in ``invalid`` (and ``logged``) as a
        refused record does. With a spool:
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


def _check_params(params: Mapping[str, Any] | None) -> None:
    if not params:
        return
    if len(params) > MAX_PARAMS:
        raise ValueError(f"params has {len(params)} entries; at most {MAX_PARAMS}")
    size = sum(len(str(k)) + len(str(v)) for k, v in params.items())
    if size > MAX_PARAMS_BYTES:
        raise ValueError(f"params take {size} bytes as text; at most {MAX_PARAMS_BYTES}")
