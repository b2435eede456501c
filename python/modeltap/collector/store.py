"""The collector's store: an embedded DuckDB database written in bulk from
Arrow columns, one transaction per group of batches, deduplicated on
``(agent_id, batch_seq)``.

Durability: DuckDB appends each committed transaction to its write-ahead log
(``<store>.wal``) and calls ``fdatasync`` on it before ``COMMIT`` returns
(checked with ``strace -e trace=fdatasync``). When a commit creates the WAL
file (the first one after a checkpoint), the writer also ``fsync``-s the
store's directory so the new file's entry survives a power cut. A batch is
acknowledged to its agent only after all of that, so an acknowledged batch
is on disk.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from modeltap import _core
from modeltap.reads import Reads, TimeArg, arrow_reader, parse_time, time_range

log = logging.getLogger("modeltap.collector")

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    agent_id VARCHAR NOT NULL,
    batch_seq UBIGINT NOT NULL,
    model VARCHAR,
    version VARCHAR,
    host VARCHAR,
    pid UINTEGER,
    agent_start TIMESTAMPTZ,
    agent_version VARCHAR,
    params MAP(VARCHAR, VARCHAR),
    n_records UINTEGER,
    n_bytes UBIGINT,
    created_at TIMESTAMPTZ,
    received_at TIMESTAMPTZ,
    PRIMARY KEY (agent_id, batch_seq)
);
CREATE TABLE IF NOT EXISTS feature_schemas (
    schema_id VARCHAR PRIMARY KEY,
    model VARCHAR,
    version VARCHAR,
    feature_names VARCHAR[],
    feature_kinds VARCHAR[],
    categorical_names VARCHAR[],
    first_seen TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS predictions (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    batch_seq UBIGINT,
    schema_id VARCHAR,
    request_id VARCHAR,
    trace_id VARCHAR,
    span_id VARCHAR,
    features DOUBLE[],
    categories VARCHAR[],
    prediction DOUBLE,
    prediction_label VARCHAR,
    outputs DOUBLE[],
    probabilities DOUBLE[],
    latency_s DOUBLE,
    flags UINTEGER,
    error_type VARCHAR,
    error_message VARCHAR,
    attributes MAP(VARCHAR, VARCHAR)
);
CREATE TABLE IF NOT EXISTS errors (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    request_id VARCHAR,
    error_type VARCHAR,
    error_message VARCHAR
);
CREATE TABLE IF NOT EXISTS window_profiles (
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    batch_seq UBIGINT,
    window_start TIMESTAMPTZ,
    window_s DOUBLE,
    reference_fingerprint VARCHAR,
    records UBIGINT,
    profile BLOB
);
CREATE TABLE IF NOT EXISTS "references" (
    model VARCHAR,
    version VARCHAR,
    fingerprint VARCHAR,
    registered_at TIMESTAMPTZ,
    reference BLOB,
    PRIMARY KEY (model, version, fingerprint)
);
CREATE TABLE IF NOT EXISTS agent_counters (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    host VARCHAR,
    batch_seq UBIGINT,
    logged UBIGINT,
    dropped_full UBIGINT,
    dropped_spool UBIGINT,
    discarded UBIGINT,
    invalid UBIGINT,
    sampled_out UBIGINT,
    errors UBIGINT,
    spans UBIGINT,
    spans_dropped UBIGINT,
    spans_lost UBIGINT
);
CREATE TABLE IF NOT EXISTS spans (
    trace_id VARCHAR,
    span_id VARCHAR,
    parent_span_id VARCHAR,
    name VARCHAR,
    kind VARCHAR,
    start_ts TIMESTAMPTZ,
    start_unix_nano UBIGINT,
    duration_ns UBIGINT,
    status VARCHAR,
    error_type VARCHAR,
    error_message VARCHAR,
    attributes MAP(VARCHAR, VARCHAR),
    trace_state VARCHAR,
    service VARCHAR,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    host VARCHAR,
    request_id VARCHAR,
    source VARCHAR
);
CREATE TABLE IF NOT EXISTS system_metrics (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    host VARCHAR,
    pid UINTEGER,
    process_cpu_percent DOUBLE,
    rss_bytes UBIGINT,
    threads UINTEGER,
    system_cpu_percent DOUBLE,
    system_memory_used_bytes UBIGINT,
    system_memory_total_bytes UBIGINT,
    gpu_index INTEGER,
    gpu_name VARCHAR,
    gpu_utilization_percent DOUBLE,
    gpu_memory_used_bytes UBIGINT,
    gpu_memory_total_bytes UBIGINT,
    gpu_temperature_celsius DOUBLE
);
"""

TS = pa.timestamp("ns", tz="UTC")
MERGE_CHUNK = 1024  # window profile parts merged at a time
CHECKPOINT_THRESHOLD = "256MB"


# Largest Unix time in nanoseconds a TIMESTAMPTZ column takes: int64's
# maximum itself reads back as DuckDB's "infinity".
MAX_UNIX_NANO = 2**63 - 2
# What one batch may grow to once decoded into Arrow columns, relative to
# its bytes on the wire (hex ids are 2.25x; anything far past that is a
# message built to expand).
MAX_EXPANSION = 8
MIN_DECODED_ALLOWANCE = 1 << 20


class StoreUnavailable(Exception):
    """The store cannot be written right now; the batch was not stored."""


class Overloaded(Exception):
    """The writer's queue is full: the batch was not queued (retry later)."""


class BatchRejected(ValueError):
    """The store refused this batch's data; it can never be stored."""


class StoredDataInvalid(ValueError):
    """Data already in the store (a reference, a profile) cannot be used."""


class WriterError(Exception):
    """The writer failed on this batch or job for a reason of its own."""


@dataclass
class Job:
    """Work for the writer thread's connection (reads, reference writes)."""

    fn: Callable[[duckdb.DuckDBPyConnection], Any]
    future: Future[Any] = field(default_factory=Future)
    nbytes: int = 0
    n_records: int = 0


@dataclass
class DecodedBatch:
    """A batch decoded and turned into Arrow tables, ready to insert."""

    agent_id: str
    batch_seq: int
    n_records: int
    n_bytes: int
    model: dict[str, Any]
    created_ns: int
    schema: tuple[str, list[str], list[str], list[str]] | None
    predictions: pa.Table | None
    errors: pa.Table | None
    system: pa.Table | None
    profiles: pa.Table | None = None
    spans: pa.Table | None = None
    counters: pa.Table | None = None
    nbytes: int = 0  # decoded size (Arrow buffers)
    deadline: float | None = None  # time.monotonic() past which nobody waits
    future: Future[tuple[bool, int]] = field(default_factory=Future)


def check_memory_limit(limit: str) -> str:
    """Checks a DuckDB ``memory_limit`` setting (``"1GB"``, ``"512MiB"``,
    ``"50%"``); raises ``ValueError`` for one DuckDB does not take."""
    try:
        duckdb.connect(":memory:", config={"memory_limit": limit}).close()
    except duckdb.Error as e:
        raise ValueError(f"bad memory limit {limit!r}: {e}") from None
    return limit


def _schema_id(model: str, version: str, names: list[str], kinds: list[str]) -> str:
    h = hashlib.sha256("\x1f".join([model, version, *names, "|", *kinds]).encode())
    return h.hexdigest()[:16]


def _ts(ns: np.ndarray) -> pa.Array:
    return pa.array(ns.astype(np.int64, copy=False)).cast(TS)


def _repeat(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([value]))


def _hex_strings(data: bytes, width: int, n: int, valid: np.ndarray | None = None) -> pa.Array:
    """Arrow strings over a buffer of fixed-width hex ids, without copying."""
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    mask = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), n, [mask, pa.py_buffer(offsets), pa.py_buffer(data)])


def _out_of_range(what: str, value: object, limit: str) -> _core.BatchDecodeError:
    return _core.BatchDecodeError(f"out of range: {what} = {value} ({limit})")


def _check_unix_nano(what: str, values: Any) -> None:
    """Unix nanoseconds (uint64 on the wire) must fit a TIMESTAMPTZ column."""
    a = np.asarray(values)
    if a.size and int(a.max()) > MAX_UNIX_NANO:
        raise _out_of_range(what, int(a.max()), f"Unix nanoseconds must be <= {MAX_UNIX_NANO}")


def _check_batch(d: Mapping[str, Any]) -> None:
    """Checks the decoded values whose column is narrower than their wire
    type, before the batch may join a commit group (one bad value would
    fail the whole group). The wire's uint32/uint64 fields stored as
    UINTEGER/UBIGINT (pid, n_records, batch_seq, flags, rss and memory
    bytes, threads, records) fit by construction; strings are UTF-8 checked
    by the decoder."""
    if not d["agent_id"]:
        raise _core.BatchDecodeError("agent_id is empty: batches are keyed by it and batch_seq")
    _check_unix_nano("created_unix_nano", d["created_unix_nano"])
    m = d["model"] or {}
    _check_unix_nano("model.agent_start_unix_nano", m.get("agent_start_unix_nano", 0))
    _check_unix_nano("timestamp_unix_nano", d["timestamp_unix_nano"])
    for s in d["system"]:
        _check_unix_nano("system.unix_nano", s["unix_nano"])
        for g in s.get("gpus") or ():
            if g["index"] > 2**31 - 1:  # gpu_index INTEGER
                raise _out_of_range("system.gpus.index", g["index"], "must be < 2^31")
    if d["spans"] is not None:
        sp = d["spans"]
        _check_unix_nano("spans.start_unix_nano", sp["start_unix_nano"])
        ends = np.asarray(sp["start_unix_nano"], dtype=np.uint64)
        dur = np.asarray(sp["duration_nano"], dtype=np.uint64)
        if dur.size and int(dur.max()) > MAX_UNIX_NANO:
            raise _out_of_range("spans.duration_nano", int(dur.max()), "must be a time span")
        _check_unix_nano("spans.start_unix_nano + duration_nano", ends + dur)
    for start, width, _records, _blob in d["profiles"]:
        _check_unix_nano("profiles.window_start_unix_nano", start)
        # merging adds start and width: their sum must stay a time too
        _check_unix_nano("profiles.window_start_unix_nano + window_nano", start + width)


def _offsets(what: str, offsets: Any, n: int, n_values: int) -> np.ndarray:
    """Checks a decoded offsets column (n + 1 entries from 0, never
    decreasing, ending at the number of values)."""
    off = np.asarray(offsets, dtype=np.int64)
    if (
        off.shape != (n + 1,)
        or off[0] != 0
        or off[-1] != n_values
        or (np.diff(off) < 0).any()
        or n_values > 2**31 - 1
    ):
        raise _core.BatchDecodeError(f"inconsistent {what} offsets")
    return off


def _list(offsets: np.ndarray, values: np.ndarray, null: np.ndarray) -> pa.Array:
    """An Arrow list over decoded offsets and values (rows in ``null`` are
    NULL)."""
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values), mask=pa.array(null)
    )


DICT = pa.dictionary(pa.int32(), pa.string())


def _dictionary(what: str, codes: Any, values: list[str], n: int) -> pa.Array:
    """Strings as a dictionary array over the decoded codes (-1: NULL), so
    a long value used by many rows is held once."""
    c = np.asarray(codes, dtype=np.int32)
    if c.shape != (n,) or (c.size and (c.min() < -1 or c.max() >= len(values))):
        raise _core.BatchDecodeError(f"inconsistent {what} codes")
    if not (c >= 0).any():
        return pa.nulls(n, DICT)
    return pa.DictionaryArray.from_arrays(pa.array(c, mask=c < 0), pa.array(values, pa.string()))


def _categories(d: Mapping[str, Any], cat_names: list[str], n: int) -> pa.Array:
    """The categorical values of each row in schema order, as a list of
    dictionary-encoded strings: the columns' codes interleaved row-major
    into one dictionary (the columns' values one after the other)."""
    if not cat_names:
        return pa.nulls(n, pa.list_(DICT))
    k = len(cat_names)
    codes = np.empty((n, k), dtype=np.int32)
    values: list[str] = []
    for j, name in enumerate(cat_names):
        c = np.asarray(d["category_codes"][name], dtype=np.int32)
        v = d["category_values"][name]
        if c.shape != (n,) or (c.size and (c.min() < -1 or c.max() >= len(v))):
            raise _core.BatchDecodeError(f"inconsistent category codes of {name!r}")
        codes[:, j] = np.where(c >= 0, c + len(values), -1)
        values.extend(v)
    flat = codes.ravel()
    strings = pa.DictionaryArray.from_arrays(
        pa.array(flat, mask=flat < 0), pa.array(values, pa.string())
    )
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), strings)


def _overlay(base: pa.Array, rows: list[tuple[int, Any]], ty: pa.DataType) -> pa.Array:
    """``base`` with the given rows replaced (by the last value given for
    each), without a Python object per row of the batch."""
    if not rows:
        return base
    n = len(base)
    idx = np.arange(n, dtype=np.int64)
    idx[np.array([r for r, _ in rows], dtype=np.int64)] = n + np.arange(len(rows))
    return pa.concat_arrays([base.cast(ty), pa.array([v for _, v in rows], ty)]).take(pa.array(idx))


def decode(data: bytes) -> DecodedBatch:
    """Decodes (natively, GIL released for the protobuf work), checks every
    value against the range of its column, and builds the Arrow tables.
    Raises ``modeltap.BatchDecodeError`` for bytes that are not a batch, a
    value out of its column's range, or a batch that would expand past
    ``MAX_EXPANSION`` times its size."""
    d = _core.decode_batch(data, columns=True)
    _check_batch(d)
    n = int(d["n_records"])
    m = d["model"] or {}
    model, version, agent_id = m.get("model", ""), m.get("version", ""), d["agent_id"]
    names: list[str] = d["feature_names"]
    kinds: list[str] = d["feature_kinds"]
    cat_names = [nm for nm, k in zip(names, kinds, strict=True) if k == "categorical"]
    schema = None
    predictions = errors = None
    if n:
        sid = _schema_id(model, version, names, kinds)
        schema = (sid, names, kinds, cat_names)
        nf = len(names)
        feats = np.asarray(d["features"], dtype=np.float64).reshape(n, nf)
        if cat_names:
            feats = feats.copy()  # the codes are in the categories column
            feats[:, [i for i, k in enumerate(kinds) if k == "categorical"]] = np.nan
        features = pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * nf + 1, nf, dtype=np.int32)), pa.array(feats.ravel())
        )
        kind = np.asarray(d["prediction_kind"])
        pvals = np.asarray(d["prediction_values"], dtype=np.float64)
        poff = _offsets("prediction", d["prediction_offsets"], n, pvals.size)
        has = poff[1:] > poff[:-1]
        first = np.full(n, np.nan)
        first[has] = pvals[poff[:-1][has]]
        first[kind == 2] = np.nan  # a label's code is no number
        # Variable-width vectors as Arrow lists straight over the decoded
        # offsets and values: nothing padded, nothing copied per row.
        vector = kind == 3
        outputs = (
            _list(poff, pvals, ~vector) if vector.any() else pa.nulls(n, pa.list_(pa.float64()))
        )
        qvals = np.asarray(d["probability_values"], dtype=np.float64)
        qoff = _offsets("probability", d["probability_offsets"], n, qvals.size)
        probabilities = (
            _list(qoff, qvals, qoff[1:] == qoff[:-1])
            if qvals.size
            else pa.nulls(n, pa.list_(pa.float64()))
        )
        ts = _ts(d["timestamp_unix_nano"])
        rid = _hex_strings(d["request_id_hex"], 32, n)
        if d["request_id_text"]:  # caller-given ids replace the generated ones
            rid = _overlay(rid, d["request_id_text"], pa.string())
        trace = (
            _hex_strings(d["trace_id_hex"], 32, n, d["trace_id_valid"])
            if d["trace_id_hex"] is not None
            else pa.nulls(n, pa.string())
        )
        span = (
            _hex_strings(d["span_id_hex"], 16, n, d["span_id_valid"])
            if d["span_id_hex"] is not None
            else pa.nulls(n, pa.string())
        )
        errs = d["errors"]
        nulls = pa.nulls(n, pa.string())
        map_type = pa.map_(pa.string(), pa.string())
        attrs = d["attributes"]
        predictions = pa.table(
            {
                "ts": ts,
                "model": _repeat(model, n),
                "version": _repeat(version, n),
                "agent_id": _repeat(agent_id, n),
                "batch_seq": pa.array(np.full(n, d["batch_seq"], dtype=np.uint64)),
                "schema_id": _repeat(sid, n),
                "request_id": rid,
                "trace_id": trace,
                "span_id": span,
                "features": features,
                "categories": _categories(d, cat_names, n),
                "prediction": pa.array(first),
                "prediction_label": _dictionary("label", d["label_codes"], d["label_values"], n),
                "outputs": outputs,
                "probabilities": probabilities,
                "latency_s": pa.array(np.asarray(d["latency_s"]), from_pandas=True),
                "flags": pa.array(np.asarray(d["flags"], dtype=np.uint32)),
                "error_type": _overlay(nulls, [(r, t) for r, t, _ in errs], pa.string()),
                "error_message": _overlay(nulls, [(r, e) for r, _, e in errs], pa.string()),
                "attributes": _overlay(
                    pa.nulls(n, map_type),
                    [(r, list(a.items())) for r, a in attrs.items()],
                    map_type,
                ),
            }
        )
        if errs:
            rows = pa.array(np.array([r for r, _, _ in errs], dtype=np.int64))
            k = len(errs)
            errors = pa.table(
                {
                    "ts": ts.take(rows),
                    "model": _repeat(model, k),
                    "version": _repeat(version, k),
                    "agent_id": _repeat(agent_id, k),
                    "request_id": rid.take(rows),
                    "error_type": pa.array([t for _, t, _ in errs], pa.string()),
                    "error_message": pa.array([e for _, _, e in errs], pa.string()),
                }
            )
    system = _system_table(d["system"], model, version, agent_id, m)
    profiles = None
    if d["profiles"]:
        ps = d["profiles"]
        k = len(ps)
        profiles = pa.table(
            {
                "model": pa.array([model] * k, pa.string()),
                "version": pa.array([version] * k, pa.string()),
                "agent_id": pa.array([agent_id] * k, pa.string()),
                "batch_seq": pa.array([int(d["batch_seq"])] * k, pa.uint64()),
                "window_start": pa.array([p[0] for p in ps], pa.int64()).cast(TS),
                "window_s": pa.array([p[1] / 1e9 for p in ps], pa.float64()),
                "reference_fingerprint": pa.array(
                    [_core.profile_fingerprint(p[3]) for p in ps], pa.string()
                ),
                "records": pa.array([p[2] for p in ps], pa.uint64()),
                "profile": pa.array([bytes(p[3]) for p in ps], pa.binary()),
            }
        )
    spans = (
        span_table(d["spans"], model=model, version=version, agent_id=agent_id, host=m.get("host"))
        if d["spans"] is not None and len(d["spans"]["start_unix_nano"])
        else None
    )
    counters = None
    if d["agent_counters"] is not None:
        ac = d["agent_counters"]
        counters = pa.table(
            {
                "ts": pa.array([int(d["created_unix_nano"])], pa.int64()).cast(TS),
                "model": pa.array([model], pa.string()),
                "version": pa.array([version], pa.string()),
                "agent_id": pa.array([agent_id], pa.string()),
                "host": pa.array([m.get("host")], pa.string()),
                "batch_seq": pa.array([int(d["batch_seq"])], pa.uint64()),
                **{k: pa.array([int(ac[k])], pa.uint64()) for k in AGENT_COUNTERS},
            }
        )
    nbytes = sum(t.nbytes for t in (predictions, errors, system, profiles, spans) if t is not None)
    if nbytes > max(MAX_EXPANSION * len(data), MIN_DECODED_ALLOWANCE):
        raise _core.BatchDecodeError(
            f"out of range: a batch of {len(data)} bytes expands to {nbytes} bytes "
            f"(at most {MAX_EXPANSION}x)"
        )
    return DecodedBatch(
        agent_id=agent_id,
        batch_seq=int(d["batch_seq"]),
        n_records=n,
        n_bytes=len(data),
        model=m,
        created_ns=int(d["created_unix_nano"]),
        schema=schema,
        predictions=predictions,
        errors=errors,
        system=system,
        profiles=profiles,
        spans=spans,
        counters=counters,
        nbytes=nbytes + len(data),
    )


AGENT_COUNTERS = (
    "logged",
    "dropped_full",
    "dropped_spool",
    "discarded",
    "invalid",
    "sampled_out",
    "errors",
    "spans",
    "spans_dropped",
    "spans_lost",
)
SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
SPAN_STATUS = ("unset", "ok", "error")
SPAN_COLUMNS = [
    ("trace_id", pa.string()),
    ("span_id", pa.string()),
    ("parent_span_id", pa.string()),
    ("name", pa.string()),
    ("kind", pa.string()),
    ("start_ts", pa.int64()),
    ("start_unix_nano", pa.uint64()),
    ("duration_ns", pa.uint64()),
    ("status", pa.string()),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("attributes", pa.map_(pa.string(), pa.string())),
    ("trace_state", pa.string()),
    ("service", pa.string()),
    ("model", pa.string()),
    ("version", pa.string()),
    ("agent_id", pa.string()),
    ("host", pa.string()),
    ("request_id", pa.string()),
    ("source", pa.string()),
]


def span_rows_table(cols: Mapping[str, Any]) -> pa.Table:
    """The ``spans`` table of columns given by name (missing ones NULL)."""
    n = len(cols["trace_id"])
    t = pa.table(
        {c: pa.array(cols[c], ty) if c in cols else pa.nulls(n, ty) for c, ty in SPAN_COLUMNS}
    )
    return t.set_column(5, "start_ts", t.column("start_ts").cast(TS))


def span_table(
    sp: Mapping[str, Any], *, model: str, version: str, agent_id: str, host: str | None
) -> pa.Table:
    """The ``spans`` rows of an agent's batch (``decode_batch(...)["spans"]``)."""
    n = len(sp["start_unix_nano"])
    start = np.asarray(sp["start_unix_nano"], dtype=np.uint64)
    kinds = np.asarray(sp["kinds"], dtype=np.int64)
    status = np.asarray(sp["status"], dtype=np.int64)
    service = model + (f"@{version}" if version else "")
    return span_rows_table(
        {
            "trace_id": sp["trace_ids"],
            "span_id": sp["span_ids"],
            "parent_span_id": sp["parent_span_ids"],
            "name": sp["names"],
            "kind": [SPAN_KINDS[k] if 0 <= k < len(SPAN_KINDS) else "unspecified" for k in kinds],
            "start_ts": start.astype(np.int64),
            "start_unix_nano": start,
            "duration_ns": np.asarray(sp["duration_nano"], dtype=np.uint64),
            "status": [SPAN_STATUS[k] if 0 <= k < len(SPAN_STATUS) else "unset" for k in status],
            "error_type": sp["error_types"],
            "error_message": sp["error_messages"],
            "attributes": [list(a.items()) if a else None for a in sp["attributes"]],
            "trace_state": sp["trace_states"],
            "service": [service] * n,
            "model": [model] * n,
            "version": [version] * n,
            "agent_id": [agent_id] * n,
            "host": [host] * n,
            "request_id": sp["request_ids"],
            "source": ["agent"] * n,
        }
    )


def _system_table(
    samples: list[dict[str, Any]], model: str, version: str, agent_id: str, m: dict[str, Any]
) -> pa.Table | None:
    rows: list[dict[str, Any]] = []
    for s in samples:
        base = {
            "ts": s["unix_nano"],
            "model": model,
            "version": version,
            "agent_id": agent_id,
            "host": m.get("host"),
            "pid": m.get("pid"),
            "process_cpu_percent": s["process_cpu_percent"],
            "rss_bytes": s["rss_bytes"],
            "threads": s["threads"],
            "system_cpu_percent": s["system_cpu_percent"],
            "system_memory_used_bytes": s["system_memory_used_bytes"],
            "system_memory_total_bytes": s["system_memory_total_bytes"],
        }
        gpus = s.get("gpus")
        if not gpus:  # absent (no NVML) or no GPU: NULL GPU columns, never zeros
            rows.append(base)
        for g in gpus or []:
            rows.append(
                {
                    **base,
                    "gpu_index": g["index"],
                    "gpu_name": g["name"],
                    "gpu_utilization_percent": g["utilization_percent"],
                    "gpu_memory_used_bytes": g["memory_used_bytes"],
                    "gpu_memory_total_bytes": g["memory_total_bytes"],
                    "gpu_temperature_celsius": g["temperature_celsius"],
                }
            )
    if not rows:
        return None
    cols = [
        ("ts", pa.int64()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("agent_id", pa.string()),
        ("host", pa.string()),
        ("pid", pa.uint32()),
        ("process_cpu_percent", pa.float64()),
        ("rss_bytes", pa.uint64()),
        ("threads", pa.uint32()),
        ("system_cpu_percent", pa.float64()),
        ("system_memory_used_bytes", pa.uint64()),
        ("system_memory_total_bytes", pa.uint64()),
        ("gpu_index", pa.int32()),
        ("gpu_name", pa.string()),
        ("gpu_utilization_percent", pa.float64()),
        ("gpu_memory_used_bytes", pa.uint64()),
        ("gpu_memory_total_bytes", pa.uint64()),
        ("gpu_temperature_celsius", pa.float64()),
    ]
    t = pa.table({c: pa.array([r.get(c) for r in rows], ty) for c, ty in cols})
    return t.set_column(0, "ts", t.column("ts").cast(TS))


Item = DecodedBatch | Job


def _settle(future: Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    """Resolves a future once; one its caller cancelled (the RPC's deadline
    passed) or that is already resolved is left alone."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled by its caller in between
        pass


def _classify(e: BaseException) -> str:
    """What a failed write says: ``"store"`` (the store itself cannot be
    written: I/O, permissions, an invalidated database), ``"memory"`` (over
    the memory limit: smaller writes may pass), ``"data"`` (something in the
    batches) or ``"bug"`` (anything else)."""
    if isinstance(
        e,
        (
            duckdb.IOException,
            duckdb.PermissionException,
            duckdb.FatalException,
            duckdb.InternalException,
            duckdb.TransactionException,
            duckdb.ConnectionException,
            OSError,
        ),
    ):
        return "store"
    if isinstance(e, (duckdb.OutOfMemoryException, MemoryError)):
        return "memory"
    if isinstance(
        e,
        (
            duckdb.DataError,
            duckdb.IntegrityError,
            duckdb.InvalidInputException,
            pa.ArrowException,
            OverflowError,
            UnicodeError,
            ValueError,
            TypeError,
        ),
    ):
        return "data"
    return "bug"


def _unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drops a registered Arrow view. In a transaction a failed statement
    has aborted, DuckDB refuses even this: it must not replace the error
    that says what failed (the next registration replaces the view)."""
    with contextlib.suppress(duckdb.Error):
        con.unregister(name)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class StoreWriter:
    """Owns the DuckDB connection on one thread and writes groups of
    batches, each group in one transaction (group commit: up to
    ``group_records`` records, waiting at most ``linger_s`` for more after
    the first). Reports its health through ``on_health(serving, reason)``.

    The queue holds at most ``max_queued_batches`` batches,
    ``max_queued_records`` records and ``max_queued_bytes`` decoded bytes
    (one batch is always taken when the queue is empty), and
    ``max_queued_jobs`` jobs; past that :meth:`submit` and :meth:`run` raise
    :class:`Overloaded`. A batch whose caller gave up before the writer took
    it (future cancelled, or ``deadline`` passed) is not written. DuckDB's
    memory is capped at ``memory_limit``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_health: Callable[[bool, str], None] | None = None,
        max_group: int = 64,
        retry_s: float = 1.0,
        linger_s: float = 0.02,
        group_records: int = 65_536,
        *,
        max_queued_batches: int = 1024,
        max_queued_records: int = 1 << 21,
        max_queued_bytes: int = 256 << 20,
        max_queued_jobs: int = 64,
        memory_limit: str = "1GB",
        max_known_schemas: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self.linger_s = linger_s
        self.group_records = group_records
        self._on_health = on_health or (lambda ok, why: None)
        self.max_group = max_group
        self.retry_s = retry_s
        self.max_queued_batches = max_queued_batches
        self.max_queued_records = max_queued_records
        self.max_queued_bytes = max_queued_bytes
        self.max_queued_jobs = max_queued_jobs
        self.memory_limit = memory_limit
        self.max_known_schemas = max_known_schemas
        self._q: collections.deque[Item | None] = collections.deque()
        self._cv = threading.Condition()
        self._queued_batches = 0
        self._queued_records = 0
        self._queued_bytes = 0
        self._queued_jobs = 0
        self._con: duckdb.DuckDBPyConnection | None = None
        self._read_root: duckdb.DuckDBPyConnection | None = None
        self._thread: threading.Thread | None = None
        self._wal_ino: int | None = None
        # feature schemas known to be stored (an LRU: one evicted is only
        # inserted again, OR IGNORE)
        self._schemas: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._held: list[Item] = []  # taken off the queue, not resolved yet
        self._busy_since: float | None = None
        self._stopping = False
        self.healthy = False
        self.reason = "not opened yet"
        self.stored_batches = 0
        self.stored_records = 0
        self.last_lag_s: float | None = None  # creation to storage, latest batch
        self.duplicates = 0
        self.rejected = 0  # batches the store refused (their data)
        self.abandoned = 0  # batches whose caller gave up before the write
        self.overloaded = 0  # submissions refused because the queue was full
        self.restarts = 0  # writer threads started again after dying
        self.internal_errors = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Opens the store (or keeps trying) and starts the writer thread."""
        self._open()
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modeltap-store", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Whether the writer thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def busy_for(self) -> float:
        """Seconds the writer has spent on its current group or job (0 when
        idle): a store stuck in I/O shows here."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def revive(self) -> bool:
        """Starts a new writer thread if the current one has died (it should
        not: every failure is caught; this is the last line). What the dead
        thread held fails with :class:`StoreUnavailable`; what is queued is
        written by the new one. Returns whether it had to."""
        with self._cv:
            if self._thread is None or self._thread.is_alive() or self._stopping:
                return False
            held, self._held = self._held, []
            self.restarts += 1
            log.error("store writer thread died; starting a new one")
            for item in held:
                _settle(item.future, exc=StoreUnavailable("the store writer restarted"))
            self._start_thread()
            return True

    def queued(self) -> dict[str, int]:
        """What waits in the queue now."""
        return {
            "batches": self._queued_batches,
            "records": self._queued_records,
            "bytes": self._queued_bytes,
            "jobs": self._queued_jobs,
        }

    def submit(self, batch: DecodedBatch) -> Future[tuple[bool, int]]:
        """Queues a batch; the future gives ``(duplicate, n_records)`` once
        the batch is durably stored, or raises :class:`StoreUnavailable`
        (transient), :class:`BatchRejected` (never storable),
        :class:`Overloaded` (memory) or :class:`WriterError`. Raises
        :class:`Overloaded` at once when the queue is full."""
        with self._cv:
            if self._stopping:
                raise StoreUnavailable("the collector is shutting down")
            if self._queued_batches and (
                self._queued_batches >= self.max_queued_batches
                or self._queued_records + batch.n_records > self.max_queued_records
                or self._queued_bytes + batch.nbytes > self.max_queued_bytes
            ):
                self.overloaded += 1
                raise Overloaded(
                    f"store queue full ({self._queued_batches} batches, "
                    f"{self._queued_records} records, {self._queued_bytes} bytes)"
                )
            self._queued_batches += 1
            self._queued_records += batch.n_records
            self._queued_bytes += batch.nbytes
            self._q.append(batch)
            self._cv.notify()
        return batch.future

    def run(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Future[Any]:
        """Runs ``fn(connection)`` on the writer thread, between groups.
        Raises :class:`Overloaded` when ``max_queued_jobs`` are waiting."""
        job = Job(fn)
        with self._cv:
            if self._stopping:
                raise StoreUnavailable("the collector is shutting down")
            if self._queued_jobs >= self.max_queued_jobs:
                self.overloaded += 1
                raise Overloaded(f"{self._queued_jobs} store jobs queued")
            self._queued_jobs += 1
            self._q.append(job)
            self._cv.notify()
        return job.future

    def stop(self, timeout_s: float = 30.0) -> None:
        """Writes what is queued, then closes the store cleanly."""
        with self._cv:
            self._stopping = True
            self._q.append(None)
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _set_health(self, ok: bool, reason: str) -> None:
        if ok != self.healthy or reason != self.reason:
            (log.info if ok else log.error)("store %s: %s", self.path, reason)
        self.healthy, self.reason = ok, reason
        with contextlib.suppress(Exception):
            self._on_health(ok, reason)

    def _open(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One thread: the collector is one writer on a small machine, and
            # DuckDB's parallel insert costs more than it gains at this size.
            con = duckdb.connect(
                str(self.path),
                # Checkpoints compress the newest row group again each time;
                # a larger WAL between checkpoints means each row group is
                # compressed about once instead of at every commit.
                config={
                    "threads": 1,
                    "checkpoint_threshold": CHECKPOINT_THRESHOLD,
                    # DuckDB's own default is 80 % of the machine's memory.
                    "memory_limit": self.memory_limit,
                    # Reads of the running store (collector/reader.py) run
                    # any SELECT a client sends: no query may touch a file
                    # (read_csv, COPY, ATTACH) or fetch an extension.
                    "enable_external_access": False,
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    # ... nor change a setting (logging, memory limit, threads).
                    "lock_configuration": True,
                },
            )
            con.execute(SCHEMA)
            con.execute("CHECKPOINT")
            read_root = con.cursor()
        except Exception as e:
            self._con = None
            self._set_health(False, f"cannot open: {e}")
            return False
        self._con = con
        self._read_root = read_root
        self._set_health(True, "serving")
        return True

    def read_root(self) -> duckdb.DuckDBPyConnection | None:
        """A connection to the open store that readers take cursors from
        (None while it is not open)."""
        return self._read_root

    def _close(self) -> None:
        root, self._read_root = self._read_root, None
        if root is not None:
            with contextlib.suppress(Exception):
                root.close()
        if self._con is not None:
            with contextlib.suppress(Exception):
                self._con.close()
        self._con = None

    # -- the writer thread ---------------------------------------------------

    def _take(self, timeout: float) -> Item | bool | None:
        """The next item (None: stop), or False when nothing came in time."""
        with self._cv:
            if not self._q and timeout > 0:
                self._cv.wait(timeout)
            if not self._q:
                return False
            item = self._q.popleft()
            if isinstance(item, DecodedBatch):
                self._queued_batches -= 1
                self._queued_records -= item.n_records
                self._queued_bytes -= item.nbytes
            elif isinstance(item, Job):
                self._queued_jobs -= 1
            if item is not None:
                self._held.append(item)
            return item

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except BaseException as e:  # the thread must outlive any job
                self.internal_errors += 1
                err = WriterError(f"internal error in the store writer: {_describe(e)}")
                for item in self._held:
                    with contextlib.suppress(BaseException):
                        _settle(item.future, exc=err)
                with contextlib.suppress(BaseException):
                    log.error("store writer: unexpected failure", exc_info=e)
                    if self._con is not None:
                        self._con.execute("ROLLBACK")
                time.sleep(0.01)  # a failure that repeats must not spin
            finally:
                self._held = []
                self._busy_since = None

    def _step(self) -> bool:
        """Takes and handles one group or job; True when stopping."""
        first = self._take(self.retry_s)
        if first is False:
            if self._con is None:
                self._open()
            return False
        self._busy_since = time.monotonic()
        if isinstance(first, Job):
            self._run_job(first)
            return False
        group: list[DecodedBatch] = []
        jobs: list[Job] = []
        records = 0
        stopping = first is None
        if isinstance(first, DecodedBatch):
            group.append(first)
            records = first.n_records
        # Group commit: a transaction costs about the same for one batch
        # as for many, so wait a little for more to arrive.
        deadline = time.monotonic() + self.linger_s
        while not stopping and len(group) < self.max_group and records < self.group_records:
            nxt = self._take(deadline - time.monotonic())
            if nxt is False:
                break
            if nxt is None:
                stopping = True
            elif isinstance(nxt, Job):
                jobs.append(nxt)
            elif isinstance(nxt, DecodedBatch):
                group.append(nxt)
                records += nxt.n_records
        group = self._claim(group)
        if group:
            self._write_group(group)
        for job in jobs:
            self._run_job(job)
        if stopping:
            self._close()
            return True
        return False

    def _claim(self, group: list[DecodedBatch]) -> list[DecodedBatch]:
        """The batches someone still waits for. Once claimed, a future can
        no longer be cancelled, so resolving it cannot fail."""
        now = time.monotonic()
        out = []
        for b in group:
            if b.deadline is not None and now > b.deadline:
                self.abandoned += 1
                _settle(b.future, exc=StoreUnavailable("deadline passed while queued"))
            elif not b.future.set_running_or_notify_cancel():
                self.abandoned += 1
            else:
                out.append(b)
        return out

    def _run_job(self, job: Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        if self._con is None and not self._open():
            job.future.set_exception(StoreUnavailable(self.reason))
            return
        try:
            job.future.set_result(job.fn(self._con))  # type: ignore[arg-type]
        except BaseException as e:  # a job fails its own call, never the thread
            with contextlib.suppress(BaseException):
                # a job may have failed inside a transaction of its own
                self._con.execute("ROLLBACK")  # type: ignore[union-attr]
            if isinstance(e, Exception):
                job.future.set_exception(e)
            else:  # e.g. a native panic: not an Exception, must not escape
                job.future.set_exception(WriterError(_describe(e)))

    def _write_group(self, group: list[DecodedBatch]) -> None:
        if self._con is None and not self._open():
            for b in group:
                _settle(b.future, exc=StoreUnavailable(self.reason))
            return
        con = self._con
        assert con is not None
        try:
            con.execute("BEGIN TRANSACTION")
            fresh, dup = self._dedup(con, group)
            new_schemas = self._insert(con, fresh) if fresh else []
            con.execute("COMMIT")
        except BaseException as e:  # classified below
            self._failed(group, e)
            return
        for sid in new_schemas:
            self._remember_schema(sid)
        try:
            self._sync_directory()
        except OSError as e:
            # Committed, but its directory entry may not be durable: not
            # acknowledged; the agent's resend is a duplicate, acknowledged.
            self._store_failed(group, e)
            return
        for b in group:
            is_dup = id(b) in dup
            if is_dup:
                self.duplicates += 1
            else:
                self.stored_batches += 1
                self.stored_records += b.n_records
                if b.created_ns:
                    self.last_lag_s = max(time.time_ns() - b.created_ns, 0) / 1e9
            _settle(b.future, (is_dup, b.n_records))

    def _failed(self, group: list[DecodedBatch], e: BaseException) -> None:
        """A group's transaction failed: find out whose fault it was."""
        con = self._con
        rolled_back = False
        if con is not None:
            try:
                con.execute("ROLLBACK")
                rolled_back = True
            except BaseException:  # the connection is unusable
                pass
            for name in ("_keys", "_incoming"):  # release the group's data
                _unregister(con, name)
        kind = _classify(e)
        if kind == "store" or not rolled_back:
            self._store_failed(group, e)
        elif len(group) > 1:
            # One batch's data (or size) failed the group: write them one by
            # one so the others commit and only the culprit fails.
            log.warning(
                "a group of %d batches failed (%s); writing them one by one",
                len(group),
                _describe(e),
            )
            for b in group:
                self._write_group([b])
        elif kind == "data":
            self.rejected += 1
            b = group[0]
            log.warning(
                "batch %s/%d refused by the store: %s", b.agent_id, b.batch_seq, _describe(e)
            )
            _settle(b.future, exc=BatchRejected(f"the store refused this batch: {_describe(e)}"))
        elif kind == "memory":
            _settle(group[0].future, exc=Overloaded(f"store out of memory: {_describe(e)}"))
        else:
            self.internal_errors += 1
            log.error(
                "batch %s/%d: unexpected store failure",
                group[0].agent_id,
                group[0].batch_seq,
                exc_info=e,
            )
            _settle(group[0].future, exc=WriterError(_describe(e)))

    def _store_failed(self, group: list[DecodedBatch], e: BaseException) -> None:
        self._close()
        self._set_health(False, f"write failed: {_describe(e)}")
        for b in group:
            _settle(b.future, exc=StoreUnavailable(str(e)))

    def _remember_schema(self, sid: str) -> None:
        self._schemas[sid] = None
        self._schemas.move_to_end(sid)
        while len(self._schemas) > self.max_known_schemas:
            self._schemas.popitem(last=False)

    @staticmethod
    def _dedup(
        con: duckdb.DuckDBPyConnection, group: list[DecodedBatch]
    ) -> tuple[list[DecodedBatch], set[int]]:
        """Splits a group into batches not stored yet and duplicates (already
        in the store, or twice in the group)."""
        keys = pa.table(
            {
                "agent_id": pa.array([b.agent_id for b in group], pa.string()),
                "batch_seq": pa.array([b.batch_seq for b in group], pa.uint64()),
            }
        )
        con.register("_keys", keys)
        try:
            known = {
                (a, int(q))
                for a, q in con.execute(
                    "SELECT agent_id, batch_seq FROM batches JOIN _keys USING (agent_id, batch_seq)"
                ).fetchall()
            }
        finally:
            _unregister(con, "_keys")
        fresh: list[DecodedBatch] = []
        dup: set[int] = set()
        for b in group:
            key = (b.agent_id, b.batch_seq)
            if key in known:
                dup.add(id(b))
            else:
                known.add(key)
                fresh.append(b)
        return fresh, dup

    def _insert(self, con: duckdb.DuckDBPyConnection, group: list[DecodedBatch]) -> list[str]:
        """Inserts the group's rows; returns the feature schemas it added
        (remembered only once the transaction commits)."""
        now = time.time_ns()
        models = [b.model for b in group]
        batches = pa.table(
            {
                "agent_id": pa.array([b.agent_id for b in group], pa.string()),
                "batch_seq": pa.array([b.batch_seq for b in group], pa.uint64()),
                "model": pa.array([m.get("model") for m in models], pa.string()),
                "version": pa.array([m.get("version") for m in models], pa.string()),
                "host": pa.array([m.get("host") for m in models], pa.string()),
                "pid": pa.array([m.get("pid") for m in models], pa.uint32()),
                "agent_start": pa.array(
                    [m.get("agent_start_unix_nano", 0) for m in models], pa.int64()
                ).cast(TS),
                "agent_version": pa.array([m.get("agent_version") for m in models], pa.string()),
                "params": pa.array(
                    [list((m.get("params") or {}).items()) for m in models],
                    pa.map_(pa.string(), pa.string()),
                ),
                "n_records": pa.array([b.n_records for b in group], pa.uint32()),
                "n_bytes": pa.array([b.n_bytes for b in group], pa.uint64()),
                "created_at": pa.array([b.created_ns for b in group], pa.int64()).cast(TS),
                "received_at": pa.array([now] * len(group), pa.int64()).cast(TS),
            }
        )
        self._append(con, "batches", [batches])
        added: list[str] = []
        for b in group:
            if b.schema is not None and b.schema[0] not in self._schemas:
                sid, names, kinds, cats = b.schema
                if sid in added:
                    continue
                con.execute(
                    "INSERT OR IGNORE INTO feature_schemas VALUES (?, ?, ?, ?, ?, ?, "
                    "make_timestamptz(? // 1000))",
                    [sid, b.model.get("model"), b.model.get("version"), names, kinds, cats, now],
                )
                added.append(sid)
        self._append(con, "predictions", [b.predictions for b in group])
        self._append(con, "errors", [b.errors for b in group])
        self._append(con, "system_metrics", [b.system for b in group])
        self._append(con, "window_profiles", [b.profiles for b in group])
        self._append(con, "spans", [b.spans for b in group])
        self._append(con, "agent_counters", [b.counters for b in group])
        return added

    @staticmethod
    def _append(
        con: duckdb.DuckDBPyConnection, table: str, parts: Sequence[pa.Table | None]
    ) -> None:
        tables = [t for t in parts if t is not None]
        if not tables:
            return
        data = pa.concat_tables(tables, promote_options="permissive")
        con.register("_incoming", data)
        try:
            con.execute(f"INSERT INTO {table} SELECT * FROM _incoming")
        finally:
            _unregister(con, "_incoming")

    def _sync_directory(self) -> None:
        """fsync the store's directory when a commit has created the WAL."""
        wal = Path(str(self.path) + ".wal")
        try:
            ino = wal.stat().st_ino
        except FileNotFoundError:
            self._wal_ino = None
            return
        if ino != self._wal_ino:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._wal_ino = ino


def register_reference(
    con: duckdb.DuckDBPyConnection, model: str, version: str, data: bytes
) -> str:
    """Stores a reference for (model, version); returns its fingerprint."""
    info = _core.reference_info(data)
    con.execute(
        'INSERT OR REPLACE INTO "references" VALUES (?, ?, ?, now(), ?)',
        [model, version, info["fingerprint"], data],
    )
    return str(info["fingerprint"])


def drift_data(
    con: duckdb.DuckDBPyConnection,
    model: str,
    version: str | None,
    since_ns: int | None,
    until_ns: int | None,
    rules: Mapping[str, tuple[str, float]] | None = None,
) -> dict[str, Any]:
    """Drift of (model, version) over ``[since, until)`` from the stored
    window profiles, merged natively, against the newest reference
    registered for it (with a matching fingerprint). Raises
    ``LookupError`` when there is nothing to compare, ``StoredDataInvalid``
    when the stored reference or profiles cannot be used, ``ValueError``
    for a bad rule."""
    if not version:
        row = con.execute(
            "SELECT version FROM window_profiles WHERE model = ? "
            "ORDER BY window_start DESC LIMIT 1",
            [model],
        ).fetchone()
        if row is None:
            raise LookupError(f"no profiles stored for model {model!r}")
        version = str(row[0])
    ref = con.execute(
        'SELECT reference, fingerprint FROM "references" WHERE model = ? AND version = ? '
        "ORDER BY registered_at DESC LIMIT 1",
        [model, version],
    ).fetchone()
    if ref is None:
        raise LookupError(f"no reference registered for {model} {version}")
    data, fingerprint = bytes(ref[0]), str(ref[1])
    try:  # stored by an older collector that checked less, or damaged since
        info = _core.reference_info(data)
    except _core.ReferenceFormatError as e:
        raise StoredDataInvalid(
            f"the reference stored for {model} {version} is invalid ({e}); register a valid one"
        ) from e
    conds = ["model = ?", "version = ?", "reference_fingerprint = ?"]
    params: list[Any] = [model, version, fingerprint]
    time_range(conds, params, "window_start", since_ns, until_ns)
    if info["fingerprint"] != fingerprint:
        raise StoredDataInvalid(
            f"the reference stored for {model} {version} as {fingerprint} is "
            f"{info['fingerprint']}; register it again"
        )
    # Merged a chunk at a time: a long range holds many parts, and only the
    # merge so far and one chunk need to be in memory.
    cur = con.execute(f"SELECT profile FROM window_profiles WHERE {' AND '.join(conds)}", params)
    merged: bytes | None = None
    parts = 0
    skipped: list[str] = []
    while chunk := cur.fetchmany(MERGE_CHUNK):
        blobs = [bytes(r[0]) for r in chunk]
        try:
            merged = _core.merge_profiles(blobs if merged is None else [merged, *blobs])
            parts += len(blobs)
        except ValueError:
            # A damaged part (stored by an older collector, or since) is left
            # out with a note; it must not take every later drift down.
            for b in blobs:
                try:
                    merged = _core.merge_profiles([b] if merged is None else [merged, b])
                    parts += 1
                except ValueError as e:
                    skipped.append(str(e))
    try:
        out = dict(_core.drift(data, merged or b"", dict(rules or {}), {}))
    except (_core.ReferenceFormatError, _core.BatchDecodeError) as e:
        raise StoredDataInvalid(f"drift of {model} {version} from stored data: {e}") from e
    out["model"], out["version"] = model, version
    out["profiles_merged"] = parts
    if skipped:
        out["profiles_skipped"] = len(skipped)
        notes = list(out.get("notes") or [])
        notes.append(f"{len(skipped)} stored window profile(s) left out: {skipped[0]}")
        out["notes"] = notes
    return out


_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def trace_data(con: duckdb.DuckDBPyConnection, trace_id: str) -> dict[str, Any]:
    """The spans of one trace (oldest first) and the prediction records
    logged inside it, as JSON-able dicts. Raises ``ValueError`` for a trace
    id that is not 32 hex digits."""
    tid = trace_id.strip().lower()
    if not _TRACE_ID.fullmatch(tid):
        shown = trace_id if len(trace_id) <= 64 else f"{trace_id[:64]}... ({len(trace_id)} chars)"
        raise ValueError(f"a trace id is 32 hex digits, not {shown!r}")
    spans = _dicts(
        con.execute(
            "SELECT trace_id, span_id, parent_span_id, name, kind, start_unix_nano, "
            "duration_ns, status, error_type, error_message, attributes, service, model, "
            "version, agent_id, host, source FROM spans WHERE trace_id = ? "
            "ORDER BY start_unix_nano, span_id",
            [tid],
        )
    )
    for sp in spans:
        a = sp.get("attributes")
        sp["attributes"] = dict(a) if a else {}
    records = _dicts(
        con.execute(
            "SELECT epoch_ns(ts) AS unix_nano, model, version, request_id, span_id, "
            "prediction, prediction_label, latency_s, error_type, error_message "
            "FROM predictions WHERE trace_id = ? ORDER BY ts",
            [tid],
        )
    )
    return {"trace_id": tid, "spans": spans, "records": records}


def slowest_traces(
    con: duckdb.DuckDBPyConnection,
    model: str | None,
    n: int = 10,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> list[dict[str, Any]]:
    """The ``n`` slowest traces (by their root span's duration) that have a
    span of ``model`` (any model when None), starting in ``[since, until)``,
    each with its total duration and the summed duration of every span name
    in it (its stage breakdown)."""
    conds: list[str] = []
    params: list[Any] = []
    if model is not None:
        conds.append("trace_id IN (SELECT trace_id FROM spans WHERE model = ?)")
        params.append(model)
    time_range(conds, params, "start_ts", since_ns, until_ns)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    rows = _dicts(
        con.execute(
            f"""
            WITH t AS (
                SELECT trace_id,
                       min(start_unix_nano) AS start_unix_nano,
                       max(start_unix_nano + duration_ns) - min(start_unix_nano) AS duration_ns,
                       count(*) AS spans,
                       bool_or(status = 'error') AS error,
                       arg_min(name, start_unix_nano) AS root
                FROM spans {where} GROUP BY trace_id
            )
            SELECT * FROM t ORDER BY duration_ns DESC, trace_id LIMIT ?
            """,
            [*params, int(n)],
        )
    )
    if rows:
        ids = [r["trace_id"] for r in rows]
        stages: dict[str, dict[str, int]] = {i: {} for i in ids}
        for tid, name, dur in con.execute(
            "SELECT trace_id, name, sum(duration_ns) FROM spans "
            "WHERE trace_id IN (SELECT unnest(?)) GROUP BY ALL ORDER BY 1, 2",
            [ids],
        ).fetchall():
            stages[tid][name] = int(dur)
        for r in rows:
            r["stages"] = stages[r["trace_id"]]
    return rows


class StageTotals:
    """Stage latencies summed over window profiles (whatever their
    references); a damaged part is left out, not the range."""

    def __init__(self) -> None:
        self._acc: dict[tuple[str, bool], dict[str, Any]] = {}

    def add(self, blobs: list[bytes]) -> None:
        try:
            stages = _core.stage_latency(blobs)
        except _core.BatchDecodeError:
            stages = []
            for b in blobs:
                with contextlib.suppress(_core.BatchDecodeError):
                    stages.extend(_core.stage_latency([b]))
        for st in stages:
            key = (st["name"], st["root"])
            have = self._acc.get(key)
            if have is None:
                self._acc[key] = st
                continue
            have["counts"] = [a + b for a, b in zip(have["counts"], st["counts"], strict=False)]
            have["sum"] += st["sum"]
            have["errors"] += st["errors"]

    def summary(self) -> list[dict[str, Any]]:
        """Per stage and end to end: spans, errors, mean, p50/p95/p99."""
        from modeltap.tracing import stage_summary

        return stage_summary(list(self._acc.values()))


def stage_latency_data(
    con: duckdb.DuckDBPyConnection,
    model: str,
    version: str | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> list[dict[str, Any]]:
    """Latency per stage and end to end of a model (every version unless
    given) over windows starting in ``[since, until)``, summed from every
    agent's stored window profiles (see ``tracing.stage_summary``)."""
    conds = ["model = ?"]
    params: list[Any] = [model]
    if version is not None:
        conds.append("version = ?")
        params.append(version)
    time_range(conds, params, "window_start", since_ns, until_ns)
    cur = con.execute(f"SELECT profile FROM window_profiles WHERE {' AND '.join(conds)}", params)
    totals = StageTotals()
    while chunk := cur.fetchmany(MERGE_CHUNK):
        totals.add([bytes(r[0]) for r in chunk])
    return totals.summary()


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class Store(Reads):
    """Reads a collector's store file from Python, returning Arrow tables
    (or pandas DataFrames): the read API of :class:`modeltap.Client`, on a
    store no collector is writing (DuckDB lets one process write a database
    file at a time; a running collector is read through its address, see
    :func:`modeltap.connect`).

    >>> with modeltap.Store("modeltap.duckdb") as store:           # doctest: +SKIP
    ...     df = store.predictions("fraud", since="2026-01-01", as_pandas=True)
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool = True) -> None:
        self.path = str(path)
        self.con = duckdb.connect(self.path, read_only=read_only)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection."""
        self.con.close()

    def stream(self, query: str, params: Sequence[Any] | None = None) -> pa.RecordBatchReader:
        """Runs one SQL query; its result a batch at a time."""
        return arrow_reader(self.con.cursor(), query, params, 1_000_000)

    def drift(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        rules: Mapping[str, tuple[str, float]] | None = None,
    ) -> Any:
        """Drift of a model (newest version unless given) over a time range,
        merged from the stored window profiles of every agent."""
        from modeltap.drift import DriftReport

        return DriftReport(
            drift_data(self.con, model, version, parse_time(since), parse_time(until), rules)
        )

    def trace(self, trace_id: str) -> dict[str, Any]:
        """One trace: its spans and the prediction records logged in it."""
        return trace_data(self.con, trace_id)

    def traces(
        self,
        model: str | None = None,
        slowest: int = 10,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> list[dict[str, Any]]:
        """The slowest traces with their stage breakdown."""
        return slowest_traces(self.con, model, slowest, parse_time(since), parse_time(until))

    def stage_latency(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> list[dict[str, Any]]:
        """Latency per stage and end to end (p50/p95/p99 seconds), merged
        from the stored window profiles of every agent."""
        return stage_latency_data(self.con, model, version, parse_time(since), parse_time(until))
