"""The figures of a report, read from the store: SQL aggregates per time
bucket and the stored window profiles merged natively (drift, histograms,
latency per stage)."""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from modeltap import _core
from modeltap.analysis import StageTotals
from modeltap.reads import Reads

MAX_BUCKETS = 48  # points of each time series
MAX_FEATURE_PLOTS = 24  # histograms drawn (the most drifted first)
MAX_DRIFT_LINES = 10  # features drawn in drift over time
MAX_CLASSES = 10  # prediction classes drawn (the rest are "other")
MAX_ERROR_TYPES = 20
MAX_AGENTS = 10  # agents drawn in system metrics
PROFILE_CHUNK = 256  # window profiles merged at a time
NICE_BUCKETS_S = (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def _bucket_s(span_s: float) -> int:
    for b in NICE_BUCKETS_S:
        if span_s / b <= MAX_BUCKETS:
            return b
    return math.ceil(span_s / MAX_BUCKETS / 86400) * 86400


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _merge(blobs: list[bytes], notes: list[str]) -> bytes | None:
    """Merged window profiles; a damaged part is left out with a note."""
    if not blobs:
        return None
    try:
        return _core.merge_profiles(blobs)
    except ValueError:
        merged: bytes | None = None
        for b in blobs:
            try:
                merged = _core.merge_profiles([b] if merged is None else [merged, b])
            except ValueError as e:
                notes.append(f"a stored window profile was left out: {e}")
        return merged


def _quantiles(col: str) -> str:
    """p50, p95 and p99 of the finite values of a column (SQL)."""
    return ", ".join(
        f"quantile_cont({col}, {q}) FILTER (isfinite({col})) AS p{round(q * 100)}"
        for q in (0.5, 0.95, 0.99)
    )


def _one(src: Reads, q: str, params: list[Any]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = src.sql(q, params).to_pylist()
    return rows[0] if rows else {}


def _rows(src: Reads, q: str, params: list[Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = src.sql(q, params).to_pylist()
    return rows


def _build(
    src: Reads, model: str, version: str | None, lo: int | None, hi: int | None
) -> dict[str, Any]:
    t0 = time.perf_counter()
    notes: list[str] = []
    if version is None:
        row = _one(
            src,
            "SELECT version FROM (SELECT version, max(ts) AS t FROM predictions WHERE model = ? "
            "GROUP BY version UNION ALL SELECT version, max(window_start) FROM window_profiles "
            "WHERE model = ? GROUP BY version) ORDER BY t DESC NULLS LAST LIMIT 1",
            [model, model],
        )
        if not row:
            raise LookupError(f"nothing stored for model {model!r}")
        version = str(row["version"])
    else:
        row = _one(
            src,
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM predictions WHERE model = ? AND "
            "version = ? LIMIT 1)) + (SELECT count(*) FROM (SELECT 1 FROM window_profiles "
            "WHERE model = ? AND version = ? LIMIT 1)) AS n",
            [model, version, model, version],
        )
        if not row.get("n"):
            raise LookupError(f"nothing stored for model {model!r} version {version!r}")
    base = "model = ? AND version = ?"
    bp: list[Any] = [model, version]
    # The range, where not given: from the first record or window (a
    # window starts at a multiple of its width, before its first record)
    # to the last.
    bounds = "".join(
        f" AND {{c}} {op} make_timestamptz(? // 1000)"
        for x, op in ((lo, ">="), (hi, "<"))
        if x is not None
    )
    bound_params = [x for x in (lo, hi) if x is not None]
    span = _one(
        src,
        "SELECT epoch_ns(min(a)) AS lo, epoch_ns(max(b)) AS hi FROM ("
        f"SELECT min(ts) AS a, max(ts) AS b FROM predictions WHERE {base}"
        + bounds.format(c="ts")
        + f" UNION ALL SELECT min(window_start), max(window_start) FROM window_profiles "
        f"WHERE {base}" + bounds.format(c="window_start") + ")",
        [*bp, *bound_params, *bp, *bound_params],
    )
    last = span.get("hi")
    start = lo if lo is not None else span.get("lo")
    end = hi if hi is not None else (None if last is None else int(last) + 1000)  # 1 µs
    if start is None or end is None:  # no records: the range of the profiles, or now
        now = time.time_ns()
        start = start if start is not None else now - 3600 * 10**9
        end = end if end is not None else now
    width_s = _bucket_s(max((end - start) / 1e9, 1.0))
    w = width_s * 10**9
    first = start // w * w
    rng = f"{base} AND ts >= make_timestamptz(? // 1000) AND ts < make_timestamptz(? // 1000)"
    rp = [*bp, start, end]
    bucket = f"(epoch_ns(ts) // {w}) * {w}"

    summary = _one(
        src,
        "SELECT count(*) AS records, count(error_type) AS errors, "
        f"{_quantiles('latency_s')}, avg(latency_s) FILTER (isfinite(latency_s)) "
        "AS mean_latency, "
        f"count(DISTINCT agent_id) AS agents FROM predictions WHERE {rng}",
        rp,
    )
    n = int(summary.get("records") or 0)
    summary["error_rate"] = (summary["errors"] / n) if n else None

    latency = _rows(
        src,
        f"SELECT {bucket} AS t, count(*) AS n, count(error_type) AS errors, "
        f"{_quantiles('latency_s')} FROM predictions WHERE {rng} "
        "GROUP BY ALL ORDER BY t",
        rp,
    )

    labelled = _one(
        src,
        f"SELECT count(prediction_label) AS labelled, count(prediction) AS numeric "
        f"FROM predictions WHERE {rng}",
        rp,
    )
    predictions: dict[str, Any]
    if (labelled.get("labelled") or 0) >= (labelled.get("numeric") or 0) and labelled.get(
        "labelled"
    ):
        top = [
            r["c"]
            for r in _rows(
                src,
                f"SELECT prediction_label AS c, count(*) AS n FROM predictions WHERE {rng} "
                "AND prediction_label IS NOT NULL GROUP BY 1 ORDER BY n DESC, c LIMIT ?",
                [*rp, MAX_CLASSES],
            )
        ]
        rows = _rows(
            src,
            f"SELECT {bucket} AS t, CASE WHEN list_contains(?, prediction_label) "
            "THEN prediction_label ELSE '(other)' END AS c, count(*) AS n FROM predictions "
            f"WHERE {rng} AND prediction_label IS NOT NULL GROUP BY ALL ORDER BY t, c",
            [top, *rp],
        )
        predictions = {"kind": "classes", "classes": top, "rows": rows}
    else:
        rows = _rows(
            src,
            f"SELECT {bucket} AS t, count(prediction) AS n, avg(prediction) AS mean, "
            "quantile_cont(prediction, 0.1) AS p10, quantile_cont(prediction, 0.5) AS p50, "
            f"quantile_cont(prediction, 0.9) AS p90 FROM predictions WHERE {rng} "
            "AND isfinite(prediction) GROUP BY ALL ORDER BY t",
            rp,
        )
        predictions = {"kind": "values", "rows": rows}

    err_rng = rng  # the errors table has the same model/version/ts columns
    errors = _rows(
        src,
        f"SELECT coalesce(error_type, '(none)') AS type, count(*) AS n, "
        f"any_value(error_message) AS example FROM errors WHERE {err_rng} "
        "GROUP BY 1 ORDER BY n DESC, type LIMIT ?",
        [*rp, MAX_ERROR_TYPES],
    )
    error_times = _rows(
        src,
        f"SELECT {bucket} AS t, coalesce(error_type, '(none)') AS type, count(*) AS n "
        f"FROM errors WHERE {err_rng} AND list_contains(?, coalesce(error_type, '(none)')) "
        "GROUP BY ALL ORDER BY t, type",
        [*rp, [e["type"] for e in errors]],
    )

    agents = [
        r["agent_id"]
        for r in _rows(
            src,
            f"SELECT agent_id, count(*) AS n FROM system_metrics WHERE {rng} "
            "GROUP BY 1 ORDER BY n DESC, agent_id LIMIT ?",
            [*rp, MAX_AGENTS],
        )
    ]
    system = _rows(
        src,
        f"SELECT {bucket} AS t, agent_id, any_value(host) AS host, "
        "avg(process_cpu_percent) AS cpu, max(rss_bytes) AS rss, "
        "avg(gpu_utilization_percent) AS gpu, max(gpu_memory_used_bytes) AS gpu_mem "
        f"FROM system_metrics WHERE {rng} AND list_contains(?, agent_id) "
        "GROUP BY ALL ORDER BY t, agent_id",
        [*rp, agents],
    )

    drift, hists, drift_times, stages = _profiles(src, model, version, start, end, w, notes)
    if drift is not None:
        summary["drifted"] = [r["feature"] for r in drift["columns"] if r["drifted"]]
    return {
        "model": model,
        "version": version,
        "start": start,
        "end": end,
        "bucket_s": width_s,
        "first_bucket": first,
        "summary": summary,
        "latency": latency,
        "predictions": predictions,
        "errors": errors,
        "error_times": error_times,
        "system": system,
        "drift": drift,
        "histograms": hists,
        "drift_times": drift_times,
        "stages": stages,
        "notes": notes,
        "generated": time.time_ns(),
        "build_s": time.perf_counter() - t0,
    }


def _profiles(
    src: Reads, model: str, version: str, start: int, end: int, w: int, notes: list[str]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
    """Drift (whole range and per bucket), histograms and stage latency from
    the window profiles starting in the range, merged a bucket at a time."""
    ref = _one(
        src,
        'SELECT reference, fingerprint FROM "references" WHERE model = ? AND version = ? '
        "ORDER BY registered_at DESC LIMIT 1",
        [model, version],
    )
    stages = StageTotals()
    fingerprint = ref.get("fingerprint")
    data = bytes(ref["reference"]) if ref else None
    if data is not None:
        try:
            _core.reference_info(data)
        except _core.ReferenceFormatError as e:
            notes.append(f"the stored reference is invalid ({e}): no drift")
            data = None
    else:
        notes.append(f"no reference registered for {model} {version}: no drift")
    buckets = _rows(
        src,
        f"SELECT (epoch_ns(window_start) // {w}) * {w} AS t, count(*) AS n "
        "FROM window_profiles WHERE model = ? AND version = ? "
        "AND window_start >= make_timestamptz(? // 1000) "
        "AND window_start < make_timestamptz(? // 1000) GROUP BY 1 ORDER BY 1",
        [model, version, start, end],
    )
    merged_parts: list[bytes] = []
    drift_times: list[dict[str, Any]] = []
    for b in buckets:
        lo, hi = max(b["t"], start), min(b["t"] + w, end)
        blobs: list[bytes] = []
        reader = src.stream(
            "SELECT reference_fingerprint AS fp, profile FROM window_profiles "
            "WHERE model = ? AND version = ? AND window_start >= make_timestamptz(? // 1000) "
            "AND window_start < make_timestamptz(? // 1000) "
            "ORDER BY window_start, agent_id, batch_seq",  # sums in one order
            [model, version, lo, hi],
        )
        for batch in reader:
            fps = batch.column(0).to_pylist()
            profs = batch.column(1).to_pylist()
            stages.add([bytes(p) for p in profs])
            for fp, p in zip(fps, profs, strict=True):
                if data is not None and fp == fingerprint:
                    blobs.append(bytes(p))
                    if len(blobs) >= PROFILE_CHUNK:
                        blobs = [m] if (m := _merge(blobs, notes)) else []
        m = _merge(blobs, notes)
        if m is None or data is None:
            continue
        merged_parts.append(m)
        d = _core.drift(data, m)
        drift_times.append(
            {
                "t": b["t"],
                "records": d["records"],
                "psi": {c["feature"]: _finite(c["psi"]) for c in d["columns"]},
                "drifted": [c["feature"] for c in d["columns"] if c["drifted"]],
            }
        )
    if data is None:
        return None, [], [], stages.summary()
    merged = _merge(merged_parts, notes) or b""
    drift = dict(_core.drift(data, merged))
    drift["model"], drift["version"] = model, version
    drift["profiles_merged"] = sum(b["n"] for b in buckets)
    drift["columns"] = [{k: _finite(v) for k, v in c.items()} for c in drift["columns"]]
    hists = _core.histograms(data, merged)
    return drift, hists, drift_times, stages.summary()
