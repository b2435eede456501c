"""Traces: one trace's spans and the records logged inside it; the slowest
traces of a model with their stage breakdown."""

from __future__ import annotations

import re
from typing import Any

from modeltap.reads import Reads, time_range

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
# Spans of one trace returned at most (the oldest first); a trace holding
# more says how many it has and that it was cut.
MAX_TRACE_SPANS = 10_000
MAX_TRACE_RECORDS = 10_000


def trace(reads: Reads, trace_id: str) -> dict[str, Any]:
    """The spans of one trace (oldest first, at most ``MAX_TRACE_SPANS``)
    and the prediction records logged inside it (at most
    ``MAX_TRACE_RECORDS``), as JSON-able dicts; ``spans_total`` and
    ``records_total`` count what the trace holds. Raises ``ValueError`` for
    a trace id that is not 32 hex digits."""
    if not isinstance(trace_id, str):
        raise ValueError(f"a trace id is a string, not {type(trace_id).__name__}")
    tid = trace_id.strip().lower()
    if not _TRACE_ID.fullmatch(tid):
        shown = trace_id if len(trace_id) <= 64 else f"{trace_id[:64]}... ({len(trace_id)} chars)"
        raise ValueError(f"a trace id is 32 hex digits, not {shown!r}")
    spans = reads.sql(
        "SELECT trace_id, span_id, parent_span_id, name, kind, start_unix_nano, "
        "duration_ns, status, error_type, error_message, attributes, service, model, "
        "version, agent_id, host, source FROM spans WHERE trace_id = ? "
        f"ORDER BY start_unix_nano, span_id LIMIT {MAX_TRACE_SPANS + 1}",
        [tid],
    ).to_pylist()
    for sp in spans:
        a = sp.get("attributes")
        sp["attributes"] = dict(a) if a else {}
    records = reads.sql(
        "SELECT epoch_ns(ts) AS unix_nano, model, version, request_id, span_id, "
        "prediction, prediction_label, latency_s, error_type, error_message "
        f"FROM predictions WHERE trace_id = ? ORDER BY ts LIMIT {MAX_TRACE_RECORDS + 1}",
        [tid],
    ).to_pylist()
    out: dict[str, Any] = {"trace_id": tid, "spans": spans, "records": records}
    for key, rows, cap, table in (
        ("spans", spans, MAX_TRACE_SPANS, "spans"),
        ("records", records, MAX_TRACE_RECORDS, "predictions"),
    ):
        if len(rows) > cap:
            del rows[cap:]
            n = reads.sql(f"SELECT count(*) AS n FROM {table} WHERE trace_id = ?", [tid])
            out[f"{key}_total"] = int(n.column("n")[0].as_py())
            out["truncated"] = True
    return out


def slowest_traces(
    reads: Reads,
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
    rows: list[dict[str, Any]] = reads.sql(
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
    ).to_pylist()
    if rows:
        ids = [r["trace_id"] for r in rows]
        stages: dict[str, dict[str, int]] = {i: {} for i in ids}
        for r in reads.sql(
            "SELECT trace_id, name, sum(duration_ns) AS d FROM spans "
            "WHERE trace_id IN (SELECT unnest(?)) GROUP BY ALL ORDER BY 1, 2",
            [ids],
        ).to_pylist():
            stages[r["trace_id"]][r["name"]] = int(r["d"])
        for r in rows:
            r["stages"] = stages[r["trace_id"]]
    return rows
