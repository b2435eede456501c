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

import contextlib
import datetime as dt
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from modeltap import _core

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
CHECKPOINT_THRESHOLD = "256MB"


class StoreUnavailable(Exception):
    """The store cannot be written right now; the batch was not stored."""


@dataclass
class Job:
    """Work for the writer thread's connection (reads, reference writes)."""

    fn: Callable[[duckdb.DuckDBPyConnection], Any]
    future: Future[Any] = field(default_factory=Future)


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
    future: Future[tuple[bool, int]] = field(default_factory=Future)


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


def decode(data: bytes) -> DecodedBatch:
    """Decodes (natively, GIL released for the protobuf work) and builds the
    Arrow tables. Raises ``modeltap.BatchDecodeError`` for bad bytes."""
    d = _core.decode_batch(data, columns=True)
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
            feats = feats.copy()
            feats[:, [i for i, k in enumerate(kinds) if k == "categorical"]] = np.nan
            # Row-major [row][categorical feature] strings, taken from each
            # column's dictionary: no per-row Python objects.
            cols = [
                pa.array(d["category_values"][c], pa.string()).take(
                    pa.array(d["category_codes"][c], mask=d["category_codes"][c] < 0)
                )
                for c in cat_names
            ]
            order = np.arange(len(cat_names))[None, :] * n + np.arange(n)[:, None]
            flat = pa.concat_arrays(cols).take(pa.array(order.ravel()))
            categories: pa.Array = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * len(cat_names) + 1, len(cat_names), dtype=np.int32)),
                flat,
            )
        else:
            categories = pa.nulls(n, pa.list_(pa.string()))
        features = pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * nf + 1, nf, dtype=np.int32)), pa.array(feats.ravel())
        )
        kind = np.asarray(d["prediction_kind"])
        pvals = np.asarray(d["prediction_values"], dtype=np.float64)
        poff = np.asarray(d["prediction_offsets"], dtype=np.int64)
        has = poff[1:] > poff[:-1]
        first = np.full(n, np.nan)
        first[has] = pvals[poff[:-1][has]]
        label_codes = np.asarray(d["label_codes"], dtype=np.int32)
        first[kind == 2] = np.nan
        if (label_codes >= 0).any():
            label_col: pa.Array = pa.array(d["label_values"], pa.string()).take(
                pa.array(label_codes, mask=label_codes < 0)
            )
        else:
            label_col = pa.nulls(n, pa.string())
        vector = kind == 3
        if vector.any():
            outputs: pa.Array = pa.LargeListArray.from_arrays(
                pa.array(poff), pa.array(pvals), mask=pa.array(~vector)
            ).cast(pa.list_(pa.float64()))
        else:
            outputs = pa.nulls(n, pa.list_(pa.float64()))
        qvals = np.asarray(d["probability_values"], dtype=np.float64)
        qoff = np.asarray(d["probability_offsets"], dtype=np.int64)
        if qvals.size:
            probabilities: pa.Array = pa.LargeListArray.from_arrays(
                pa.array(qoff), pa.array(qvals), mask=pa.array(qoff[1:] == qoff[:-1])
            ).cast(pa.list_(pa.float64()))
        else:
            probabilities = pa.nulls(n, pa.list_(pa.float64()))
        if d["errors"]:
            err_type: list[str | None] = [None] * n
            err_msg: list[str | None] = [None] * n
            for row, ty, msg in d["errors"]:
                err_type[row] = ty
                err_msg[row] = msg
            err_type_col: pa.Array = pa.array(err_type, pa.string())
            err_msg_col: pa.Array = pa.array(err_msg, pa.string())
        else:
            err_type_col = err_msg_col = pa.nulls(n, pa.string())
        map_type = pa.map_(pa.string(), pa.string())
        if d["attributes"]:
            attrs: list[list[tuple[str, str]] | None] = [None] * n
            for row, a in d["attributes"].items():
                attrs[row] = list(a.items())
            attr_col: pa.Array = pa.array(attrs, map_type)
        else:
            attr_col = pa.nulls(n, map_type)
        ts = _ts(d["timestamp_unix_nano"])
        rid = _hex_strings(d["request_id_hex"], 32, n)
        if d["request_id_text"]:
            ids = rid.to_pylist()
            for row, text in d["request_id_text"]:
                ids[row] = text
            rid = pa.array(ids, pa.string())
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
                "categories": categories,
                "prediction": pa.array(first),
                "prediction_label": label_col,
                "outputs": outputs,
                "probabilities": probabilities,
                "latency_s": pa.array(np.asarray(d["latency_s"]), from_pandas=True),
                "flags": pa.array(np.asarray(d["flags"], dtype=np.uint32)),
                "error_type": err_type_col,
                "error_message": err_msg_col,
                "attributes": attr_col,
            }
        )
        if d["errors"]:
            rows = pa.array([r for r, _, _ in d["errors"]])
            k = len(d["errors"])
            errors = pa.table(
                {
                    "ts": ts.take(rows),
                    "model": pa.array([model] * k),
                    "version": pa.array([version] * k),
                    "agent_id": pa.array([agent_id] * k),
                    "request_id": rid.take(rows),
                    "error_type": pa.array([t for _, t, _ in d["errors"]]),
                    "error_message": pa.array([e for _, _, e in d["errors"]]),
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


class StoreWriter:
    """Owns the DuckDB connection on one thread and writes groups of
    batches, each group in one transaction (group commit: up to
    ``group_records`` records, waiting at most ``linger_s`` for more after
    the first). Reports its health through ``on_health(serving, reason)``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_health: Callable[[bool, str], None] | None = None,
        max_group: int = 64,
        retry_s: float = 1.0,
        linger_s: float = 0.02,
        group_records: int = 65_536,
    ) -> None:
        self.path = Path(path)
        self.linger_s = linger_s
        self.group_records = group_records
        self._on_health = on_health or (lambda ok, why: None)
        self.max_group = max_group
        self.retry_s = retry_s
        self._q: queue.Queue[DecodedBatch | Job | None] = queue.Queue()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._thread = threading.Thread(target=self._run, name="modeltap-store", daemon=True)
        self._wal_ino: int | None = None
        self._schemas: set[str] = set()  # feature schemas known to be stored
        self.healthy = False
        self.reason = "not opened yet"
        self.stored_batches = 0
        self.stored_records = 0
        self.duplicates = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Opens the store (or keeps trying) and starts the writer thread."""
        self._open()
        self._thread.start()

    def submit(self, batch: DecodedBatch) -> Future[tuple[bool, int]]:
        """Queues a batch; the future gives ``(duplicate, n_records)`` once
        the batch is durably stored, or raises :class:`StoreUnavailable`."""
        self._q.put(batch)
        return batch.future

    def run(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Future[Any]:
        """Runs ``fn(connection)`` on the writer thread, between groups."""
        job = Job(fn)
        self._q.put(job)
        return job.future

    def stop(self, timeout_s: float = 30.0) -> None:
        """Writes what is queued, then closes the store cleanly."""
        self._q.put(None)
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
                config={"threads": 1, "checkpoint_threshold": CHECKPOINT_THRESHOLD},
            )
            con.execute(SCHEMA)
            con.execute("CHECKPOINT")
        except Exception as e:
            self._con = None
            self._set_health(False, f"cannot open: {e}")
            return False
        self._con = con
        self._set_health(True, "serving")
        return True

    def _close(self) -> None:
        if self._con is not None:
            with contextlib.suppress(Exception):
                self._con.close()
        self._con = None

    # -- the writer thread ---------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while True:
            try:
                first = self._q.get(timeout=self.retry_s)
            except queue.Empty:
                if self._con is None:
                    self._open()
                continue
            if isinstance(first, Job):
                self._run_job(first)
                continue
            group: list[DecodedBatch] = []
            jobs: list[Job] = []
            records = 0
            if first is None:
                stopping = True
            else:
                group.append(first)
                records = first.n_records
            # Group commit: a transaction costs about the same for one batch
            # as for many, so wait a little for more to arrive.
            deadline = time.monotonic() + self.linger_s
            while not stopping and len(group) < self.max_group and records < self.group_records:
                left = deadline - time.monotonic()
                try:
                    nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                elif isinstance(nxt, Job):
                    jobs.append(nxt)
                else:
                    group.append(nxt)
                    records += nxt.n_records
            if group:
                self._write_group(group)
            for job in jobs:
                self._run_job(job)
            if stopping:
                self._close()
                return

    def _run_job(self, job: Job) -> None:
        if self._con is None and not self._open():
            job.future.set_exception(StoreUnavailable(self.reason))
            return
        try:
            job.future.set_result(job.fn(self._con))  # type: ignore[arg-type]
        except Exception as e:
            job.future.set_exception(e)

    def _write_group(self, group: list[DecodedBatch]) -> None:
        if self._con is None and not self._open():
            for b in group:
                b.future.set_exception(StoreUnavailable(self.reason))
            return
        con = self._con
        assert con is not None
        try:
            con.execute("BEGIN TRANSACTION")
            fresh, dup = self._dedup(con, group)
            if fresh:
                self._insert(con, fresh)
            con.execute("COMMIT")
            self._sync_directory()
        except Exception as e:
            with contextlib.suppress(Exception):
                con.execute("ROLLBACK")
            self._close()
            self._set_health(False, f"write failed: {e}")
            for b in group:
                b.future.set_exception(StoreUnavailable(str(e)))
            return
        for b in group:
            is_dup = id(b) in dup
            if is_dup:
                self.duplicates += 1
            else:
                self.stored_batches += 1
                self.stored_records += b.n_records
            b.future.set_result((is_dup, b.n_records))

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
            con.unregister("_keys")
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

    def _insert(self, con: duckdb.DuckDBPyConnection, group: list[DecodedBatch]) -> None:
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
        for b in group:
            if b.schema is not None and b.schema[0] not in self._schemas:
                sid, names, kinds, cats = b.schema
                con.execute(
                    "INSERT OR IGNORE INTO feature_schemas VALUES (?, ?, ?, ?, ?, ?, "
                    "make_timestamptz(? // 1000))",
                    [sid, b.model.get("model"), b.model.get("version"), names, kinds, cats, now],
                )
                self._schemas.add(sid)
        self._append(con, "predictions", [b.predictions for b in group])
        self._append(con, "errors", [b.errors for b in group])
        self._append(con, "system_metrics", [b.system for b in group])
        self._append(con, "window_profiles", [b.profiles for b in group])

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
            con.unregister("_incoming")

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


def _time_range(
    conds: list[str], params: list[Any], column: str, since: int | None, until: int | None
) -> None:
    """Adds ``since <= column < until`` (Unix ns, either may be None)."""
    if since is not None:
        conds.append(f"{column} >= make_timestamptz(? // 1000)")
        params.append(since)
    if until is not None:
        conds.append(f"{column} < make_timestamptz(? // 1000)")
        params.append(until)


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
    registered for it (with a matching fingerprint)."""
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
    conds = ["model = ?", "version = ?", "reference_fingerprint = ?"]
    params: list[Any] = [model, version, fingerprint]
    _time_range(conds, params, "window_start", since_ns, until_ns)
    blobs = [
        bytes(r[0])
        for r in con.execute(
            f"SELECT profile FROM window_profiles WHERE {' AND '.join(conds)}", params
        ).fetchall()
    ]
    merged = _core.merge_profiles(blobs) if blobs else None
    out = dict(_core.drift(data, merged or b"", dict(rules or {}), {}))
    out["model"], out["version"] = model, version
    out["profiles_merged"] = len(blobs)
    return out


def _ns(t: dt.datetime | str | int | float | None) -> int | None:
    if t is None:
        return None
    if isinstance(t, (int, float)):
        return int(t)
    if isinstance(t, str):
        t = dt.datetime.fromisoformat(t)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1e9)


class Store:
    """Reads a collector's store from Python, returning Arrow tables (or
    pandas DataFrames). DuckDB lets one process write a database file at a
    time: open the store while the collector is stopped, or a copy of it.

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

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Runs any SQL query; returns an Arrow table."""
        rel = self.con.sql(query, params=list(params) if params else None)
        fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
        return fetch()

    def models(self) -> pa.Table:
        """Each (model, version) with its record count and time range."""
        return self.sql(
            "SELECT model, version, count(*) AS records, min(ts) AS first, max(ts) AS last "
            "FROM predictions GROUP BY ALL ORDER BY model, version"
        )

    def predictions(
        self,
        model: str | None = None,
        version: str | None = None,
        since: dt.datetime | str | int | None = None,
        until: dt.datetime | str | int | None = None,
        *,
        expand: bool = True,
        as_pandas: bool = False,
    ) -> Any:
        """Predictions of a model (and version) in ``[since, until)``
        (datetimes, ISO strings or Unix nanoseconds), oldest first. With
        ``expand`` (and one feature schema in the result) each feature and
        each categorical value becomes a column of its own."""
        where, params = self._filter(model, version, since, until)
        t = self.sql(f"SELECT * FROM predictions {where} ORDER BY ts", params)
        if expand and t.num_rows:
            t = self._expand(t)
        return t.to_pandas() if as_pandas else t

    def errors(
        self,
        model: str | None = None,
        version: str | None = None,
        since: dt.datetime | str | int | None = None,
        until: dt.datetime | str | int | None = None,
    ) -> pa.Table:
        """Errors logged with predictions."""
        where, params = self._filter(model, version, since, until)
        return self.sql(f"SELECT * FROM errors {where} ORDER BY ts", params)

    def drift(
        self,
        model: str,
        version: str | None = None,
        since: dt.datetime | str | int | None = None,
        until: dt.datetime | str | int | None = None,
        *,
        rules: Mapping[str, tuple[str, float]] | None = None,
    ) -> Any:
        """Drift of a model (newest version unless given) over a time range,
        merged from the stored window profiles of every agent."""
        from modeltap.drift import DriftReport

        return DriftReport(drift_data(self.con, model, version, _ns(since), _ns(until), rules))

    def system_metrics(self, model: str | None = None) -> pa.Table:
        """System samples (GPU columns are NULL where NVML was absent)."""
        where, params = self._filter(model, None, None, None)
        return self.sql(f"SELECT * FROM system_metrics {where} ORDER BY ts", params)

    @staticmethod
    def _filter(
        model: str | None,
        version: str | None,
        since: dt.datetime | str | int | None,
        until: dt.datetime | str | int | None,
    ) -> tuple[str, list[Any]]:
        conds: list[str] = []
        params: list[Any] = []
        if model is not None:
            conds.append("model = ?")
            params.append(model)
        if version is not None:
            conds.append("version = ?")
            params.append(version)
        _time_range(conds, params, "ts", _ns(since), _ns(until))
        return ("WHERE " + " AND ".join(conds)) if conds else "", params

    def _expand(self, t: pa.Table) -> pa.Table:
        ids = pc.unique(t.column("schema_id")).to_pylist()
        if len(ids) != 1:
            return t
        row = self.con.execute(
            "SELECT feature_names, feature_kinds, categorical_names FROM feature_schemas "
            "WHERE schema_id = ?",
            [ids[0]],
        ).fetchone()
        if row is None:
            return t
        names, kinds, cats = row
        feats = t.column("features")
        catcol = t.column("categories")
        out = t.drop_columns(["features", "categories"])
        for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
            if kind == "categorical":
                out = out.append_column(name, pc.list_element(catcol, cats.index(name)))
            else:
                out = out.append_column(name, pc.list_element(feats, i))
        return out
