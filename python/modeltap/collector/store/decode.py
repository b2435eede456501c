"""Agents' batches into checked Arrow tables: decoded natively (GIL
released for the protobuf work), every value checked against the range of
the column it goes to, then the rows of each table built without a Python
object per record. Engine-independent: every backend appends these tables.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from modeltap import _core
from modeltap.collector.store.schema import (
    AGENT_COUNTERS,
    LABEL_KINDS,
    MAX_EXPANSION,
    MAX_UNIX_NANO,
    MIN_DECODED_ALLOWANCE,
    SPAN_COLUMNS,
    SPAN_KINDS,
    SPAN_STATUS,
    TS,
)


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
    labels: pa.Table | None = None  # ground truth the batch carries
    nbytes: int = 0  # decoded size (Arrow buffers)
    deadline: float | None = None  # time.monotonic() past which nobody waits
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
                **{k: pa.array([int(ac.get(k, 0))], pa.uint64()) for k in AGENT_COUNTERS},
            }
        )
    labels = _labels_table(d.get("truth"), model, version, agent_id, int(d["batch_seq"]))
    nbytes = sum(
        t.nbytes for t in (predictions, errors, system, profiles, spans, labels) if t is not None
    )
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
        labels=labels,
        nbytes=nbytes + len(data),
    )


def _labels_table(
    truth: Mapping[str, Any] | None, model: str, version: str, agent_id: str, batch_seq: int
) -> pa.Table | None:
    """The ``labels`` rows of a batch's ground truth (None when it has none):
    a number or an int class in ``label``, a class spelled as text in
    ``label_text``, checked against the range of their columns."""
    if truth is None:
        return None
    ns = np.asarray(truth["unix_nano"], dtype=np.uint64)
    k = int(ns.size)
    if k == 0:
        return None
    _check_unix_nano("a label's time", ns)
    kind = np.asarray(truth["kind"], dtype=np.uint8)
    values = np.asarray(truth["values"], dtype=np.float64)
    codes = np.asarray(truth["label_codes"], dtype=np.int32)
    if kind.size != k or values.size != k or codes.size != k:
        raise _core.BatchDecodeError(f"out of range: label columns of {k} labels differ in length")
    if (kind > 2).any():
        raise _core.BatchDecodeError("out of range: a label kind past 2 (number, int, label)")
    text = kind == 2
    if not np.isfinite(values[~text]).all():
        raise _core.BatchDecodeError("out of range: a number label that is NaN or infinite")
    offsets = np.asarray(truth["request_id_offsets"], dtype=np.int64)
    data = truth["request_id_data"]
    if offsets.shape != (k + 1,) or int(offsets[-1]) != len(data):
        raise _core.BatchDecodeError(f"out of range: label request ids for {k} labels")
    rid = pa.Array.from_buffers(
        pa.large_string(), k, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    ).cast(pa.string())
    label = values.copy()
    label[text] = np.nan
    return pa.table(
        {
            "ts": _ts(ns),
            "model": _repeat(model, k),
            "version": _repeat(version, k),
            "agent_id": _repeat(agent_id, k),
            "batch_seq": pa.array(np.full(k, batch_seq, dtype=np.uint64)),
            "seq": pa.array(np.arange(k, dtype=np.uint32)),
            "request_id": rid,
            "kind": pa.DictionaryArray.from_arrays(
                pa.array(kind.astype(np.int32)), pa.array(list(LABEL_KINDS))
            ),
            "label": pa.array(label, from_pandas=True),
            "label_text": _dictionary("label", codes, list(truth["label_values"]), k),
            "received_at": pa.array(np.full(k, time.time_ns(), dtype=np.int64)).cast(TS),
        }
    )


def span_rows_table(cols: Mapping[str, Any]) -> pa.Table:
    """The ``spans`` table of columns given by name (missing ones NULL;
    a column given as an Arrow array, such as a dictionary-encoded one,
    is taken as it is)."""
    n = len(cols["trace_id"])
    arrays = []
    for c, ty in SPAN_COLUMNS:
        v = cols.get(c)
        if v is None:
            arrays.append(pa.nulls(n, ty))
        elif isinstance(v, pa.Array):
            arrays.append(v)
        else:
            arrays.append(pa.array(v, ty))
    t = pa.table(dict(zip([c for c, _ in SPAN_COLUMNS], arrays, strict=True)))
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
            "name": pa.array(sp["names"], pa.string()).dictionary_encode(),
            "kind": _coded(kinds, SPAN_KINDS, 0),
            "start_ts": start.astype(np.int64),
            "start_unix_nano": start,
            "duration_ns": np.asarray(sp["duration_nano"], dtype=np.uint64),
            "status": _coded(status, SPAN_STATUS, 0),
            "error_type": sp["error_types"],
            "error_message": sp["error_messages"],
            "attributes": [list(a.items()) if a else None for a in sp["attributes"]],
            "trace_state": sp["trace_states"],
            # The batch's own values, held once (dictionary-encoded): a
            # long model or host name costs nothing per span.
            "service": _repeat(service, n),
            "model": _repeat(model, n),
            "version": _repeat(version, n),
            "agent_id": _repeat(agent_id, n),
            "host": _repeat(host, n) if host is not None else None,
            "request_id": sp["request_ids"],
            "source": _repeat("agent", n),
        }
    )


def _coded(codes: np.ndarray, names: Sequence[str], default: int) -> pa.Array:
    """Enumerated codes as a dictionary array of their names (a code out of
    range reads as ``names[default]``)."""
    c = np.where((codes >= 0) & (codes < len(names)), codes, default).astype(np.int32)
    return pa.DictionaryArray.from_arrays(c, pa.array(list(names), pa.string()))


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


def group_tables(
    group: Sequence[DecodedBatch], known_schemas: Mapping[str, object] | set[str]
) -> tuple[dict[str, list[pa.Table]], list[str]]:
    """The rows a group of (fresh) batches adds to each table, and the ids
    of the feature schemas among them not in ``known_schemas`` (a backend
    appends ``feature_schemas`` rows whose key is stored already as no-ops,
    see ``schema.KEYED``)."""
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
    added: list[str] = []
    rows: list[tuple[str, Any, Any, list[str], list[str], list[str]]] = []
    for b in group:
        if b.schema is not None and b.schema[0] not in known_schemas:
            sid, names, kinds, cats = b.schema
            if sid in added:
                continue
            rows.append((sid, b.model.get("model"), b.model.get("version"), names, kinds, cats))
            added.append(sid)
    tables: dict[str, list[pa.Table]] = {"batches": [batches]}
    if rows:
        strings = pa.list_(pa.string())
        tables["feature_schemas"] = [
            pa.table(
                {
                    "schema_id": pa.array([r[0] for r in rows], pa.string()),
                    "model": pa.array([r[1] for r in rows], pa.string()),
                    "version": pa.array([r[2] for r in rows], pa.string()),
                    "feature_names": pa.array([r[3] for r in rows], strings),
                    "feature_kinds": pa.array([r[4] for r in rows], strings),
                    "categorical_names": pa.array([r[5] for r in rows], strings),
                    "first_seen": pa.array([now] * len(rows), pa.int64()).cast(TS),
                }
            )
        ]
    for name, attr in (
        ("predictions", "predictions"),
        ("errors", "errors"),
        ("system_metrics", "system"),
        ("window_profiles", "profiles"),
        ("spans", "spans"),
        ("agent_counters", "counters"),
        ("labels", "labels"),
    ):
        parts = [t for b in group if (t := getattr(b, attr)) is not None]
        if parts:
            tables[name] = parts
    return tables, added
