"""HTML reports of one model over a time range: a summary (records, error
rate, latency, drifted features), the drift table with every statistic,
reference-against-current histograms per feature, drift over time,
predictions over time, latency over time, system metrics and errors by
type.

Every figure is computed from reads of the store (:class:`modeltap.reads.Reads`:
a :class:`modeltap.Store`, a :class:`modeltap.Client` of a running
collector, or the collector itself for its live pages), aggregated in SQL or
merged natively from the stored window profiles, so a report of millions of
records moves kilobytes. Plots are drawn by plotly.js; :meth:`Report.to_html`
inlines it, so the file opens offline.

>>> report = modeltap.connect("modeltap.duckdb").report("fraud", since="24h")  # doctest: +SKIP
>>> report.save("fraud.html")                                                  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeltap import _core
from modeltap.analysis import StageTotals
from modeltap.drift import STATS, DriftReport
from modeltap.reads import Reads, TimeArg, parse_time

if TYPE_CHECKING:
    import pyarrow as pa

MAX_BUCKETS = 48  # points of each time series
MAX_FEATURE_PLOTS = 24  # histograms drawn (the most drifted first)
MAX_DRIFT_LINES = 10  # features drawn in drift over time
MAX_CLASSES = 10  # prediction classes drawn (the rest are "other")
MAX_ERROR_TYPES = 20
MAX_AGENTS = 10  # agents drawn in system metrics
PROFILE_CHUNK = 256  # window profiles merged at a time
NICE_BUCKETS_S = (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js, as the plotly package ships it (minified)."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


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


class Reporting:
    """The ``report`` method of a read source (:class:`modeltap.Store`,
    :class:`modeltap.Client`): mixed in beside :class:`Reads`."""

    def report(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> Report:
        """An HTML report of ``model`` (its newest version unless given)
        over ``[since, until)``: a :class:`modeltap.report.Report`, with
        ``to_html()`` and ``save(path)``."""
        if not isinstance(self, Reads):
            raise TypeError("Reporting is mixed into a Reads source")
        return Report.build(self, model, version, since, until)


class Report:
    """The figures of one report (:meth:`build`) and their HTML."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def model(self) -> str:
        return str(self.data["model"])

    @property
    def summary(self) -> dict[str, Any]:
        """Records, errors, error rate, latency quantiles, drifted features."""
        out: dict[str, Any] = self.data["summary"]
        return out

    @property
    def drift(self) -> DriftReport | None:
        """The drift of the whole range (None without a reference)."""
        d = self.data.get("drift")
        return DriftReport(d) if d else None

    @classmethod
    def build(
        cls,
        source: Reads,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> Report:
        """Reads every figure of ``model`` (its newest version unless given)
        over ``[since, until)`` (default: everything stored) from ``source``."""
        return cls(_build(source, model, version, parse_time(since), parse_time(until)))

    def to_html(self, *, plotly_src: str | None = None) -> str:
        """The report as one HTML page: plotly.js inlined (opens offline),
        or loaded from ``plotly_src`` (a URL) when given."""
        return _render(self.data, plotly_src)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the self-contained HTML to ``path``; returns it."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(self.to_html(), encoding="utf-8")
        os.replace(tmp, p)
        return p

    def _repr_html_(self) -> str:  # notebooks
        return self.to_html()


# -- figures ------------------------------------------------------------------


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


# -- HTML ---------------------------------------------------------------------


def _clean(obj: Any) -> Any:
    """Non-finite floats (JSON has none) as null, all the way down."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _json_script(obj: Any) -> str:
    """JSON safe inside a <script> element (no "</", no comment openers)."""
    text = json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _ts_axis(rows: Iterable[dict[str, Any]]) -> list[str]:
    return [_iso(int(r["t"])) for r in rows]


def _layout(title: str, y: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
        "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
        "height": 300,
        "yaxis": {"title": {"text": y}},
        "legend": {"orientation": "h", "y": -0.2},
        "template": "plotly_white",
    }
    out.update(extra)
    return out


def _figures(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    figs: dict[str, dict[str, Any]] = {}
    lat = d["latency"]
    if lat:
        x = _ts_axis(lat)
        figs["latency"] = {
            "data": [
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": q,
                    "x": x,
                    "y": [None if r[q] is None else r[q] * 1e3 for r in lat],
                }
                for q in ("p50", "p95", "p99")
            ]
            + [
                {
                    "type": "bar",
                    "name": "requests",
                    "x": x,
                    "y": [r["n"] for r in lat],
                    "yaxis": "y2",
                    "opacity": 0.25,
                }
            ],
            "layout": _layout(
                "Latency over time",
                "ms",
                yaxis2={
                    "overlaying": "y",
                    "side": "right",
                    "title": {"text": "requests"},
                    "showgrid": False,
                },
            ),
        }
    p = d["predictions"]
    if p["rows"]:
        if p["kind"] == "classes":
            classes = [*p["classes"], "(other)"]
            times = sorted({r["t"] for r in p["rows"]})
            count = {(r["t"], r["c"]): r["n"] for r in p["rows"]}
            total = {t: sum(count.get((t, c), 0) for c in classes) for t in times}
            figs["predictions"] = {
                "data": [
                    {
                        "type": "bar",
                        "name": _t(c),
                        "x": [_iso(t) for t in times],
                        "y": [count.get((t, c), 0) / max(total[t], 1) for t in times],
                    }
                    for c in classes
                    if any(count.get((t, c)) for t in times)
                ],
                "layout": _layout(
                    "Predicted classes over time", "share of predictions", barmode="stack"
                ),
            }
        else:
            x = _ts_axis(p["rows"])
            figs["predictions"] = {
                "data": [
                    {
                        "type": "scatter",
                        "mode": "lines",
                        "name": k,
                        "x": x,
                        "y": [_finite(r[k]) for r in p["rows"]],
                    }
                    for k in ("p10", "p50", "p90", "mean")
                ],
                "layout": _layout("Predictions over time", "prediction"),
            }
    dt_rows = d["drift_times"]
    if dt_rows and d["drift"]:
        worst = sorted(
            (c for c in d["drift"]["columns"] if c["psi"] is not None),
            key=lambda c: -(c["psi"] or 0.0),
        )[:MAX_DRIFT_LINES]
        x = _ts_axis(dt_rows)
        figs["drift_time"] = {
            "data": [
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": _t(c["feature"]),
                    "x": x,
                    "y": [r["psi"].get(c["feature"]) for r in dt_rows],
                }
                for c in worst
            ],
            "layout": _layout(
                "Drift over time (PSI per bucket, the most drifted columns)",
                "PSI",
                shapes=[
                    {
                        "type": "line",
                        "xref": "paper",
                        "x0": 0,
                        "x1": 1,
                        "y0": 0.2,
                        "y1": 0.2,
                        "line": {"dash": "dot", "color": "#c0392b"},
                    }
                ],
            ),
        }
    for i, h in enumerate(_plotted_histograms(d)):
        ref_n = max(sum(h["ref"]), 1)
        cur_n = max(sum(h["cur"]), 1)
        if "labels" in h:
            x = [_t(v) for v in h["labels"]]
        else:
            e = h["edges"]
            x = [_edge_label(e[j], e[j + 1]) for j in range(len(e) - 1)]
        figs[f"hist{i}"] = {
            "data": [
                {
                    "type": "bar",
                    "name": "reference",
                    "x": x,
                    "y": [c / ref_n for c in h["ref"]],
                    "marker": {"color": "#95a5a6"},
                },
                {
                    "type": "bar",
                    "name": "current",
                    "x": x,
                    "y": [c / cur_n for c in h["cur"]],
                    "marker": {"color": "#2980b9"},
                },
            ],
            "layout": _layout(
                _t(h["feature"]) + (" (drifted)" if h.get("drifted") else ""),
                "share",
                height=260,
                barmode="group",
                showlegend=i == 0,
                xaxis={"type": "category", "tickangle": -45, "automargin": True},
            ),
        }
    sysrows = d["system"]
    if sysrows:
        agents = sorted({r["agent_id"] for r in sysrows})
        for key, title, unit, scale in (
            ("cpu", "Agent process CPU", "%", 1.0),
            ("rss", "Agent process memory (RSS)", "MiB", 1 / 2**20),
            ("gpu", "GPU utilization", "%", 1.0),
            ("gpu_mem", "GPU memory used", "MiB", 1 / 2**20),
        ):
            if not any(r[key] is not None for r in sysrows):
                continue  # no readings (no GPU): absent, not zeros
            figs[f"sys_{key}"] = {
                "data": [
                    {
                        "type": "scatter",
                        "mode": "lines",
                        "name": _t(a[:12]),
                        "x": [_iso(r["t"]) for r in sysrows if r["agent_id"] == a],
                        "y": [
                            None if r[key] is None else r[key] * scale
                            for r in sysrows
                            if r["agent_id"] == a
                        ],
                    }
                    for a in agents
                ],
                "layout": _layout(title, unit),
            }
    if d["errors"]:
        figs["errors"] = {
            "data": [
                {
                    "type": "bar",
                    "name": _t(e["type"]),
                    "x": [_iso(r["t"]) for r in d["error_times"] if r["type"] == e["type"]],
                    "y": [r["n"] for r in d["error_times"] if r["type"] == e["type"]],
                }
                for e in d["errors"]
            ],
            "layout": _layout("Errors over time, by type", "errors", barmode="stack"),
        }
    return figs


def _t(v: Any) -> str:
    """Text for plotly, which reads its own HTML-like tags (<a href>, <b>)
    in names, titles and labels: escaped, so it shows as written."""
    return html.escape(str(v), quote=False)


def _edge_label(a: float, b: float) -> str:
    def f(v: float) -> str:
        return "∞" if v == math.inf else "-∞" if v == -math.inf else f"{v:.3g}"

    return f"({f(a)}, {f(b)}]"


def _plotted_histograms(d: dict[str, Any]) -> list[dict[str, Any]]:
    if not d["drift"]:
        return []
    cols = {c["feature"]: c for c in d["drift"]["columns"]}
    hs = []
    for h in d["histograms"]:
        c = cols.get(h["feature"], {})
        hs.append({**h, "drifted": bool(c.get("drifted")), "psi": c.get("psi") or 0.0})
    hs.sort(key=lambda h: (not h["drifted"], -h["psi"]))
    return hs[:MAX_FEATURE_PLOTS]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "&ndash;"
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _ms(v: Any) -> str:
    if v is None or not math.isfinite(v):
        return "&ndash;"
    return f"{v * 1e6:,.1f} µs" if abs(v) < 1e-3 else f"{v * 1e3:,.2f} ms"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9}
header{background:#1f2d3d;color:#fff;padding:16px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9d3de;font-size:13px}main{padding:20px 28px;max-width:1400px}
section{background:#fff;border-radius:6px;padding:16px 20px;margin:0 0 18px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}h2{font-size:17px;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#f0f3f6;border-radius:6px;
padding:10px 16px;min-width:130px}.card b{display:block;font-size:20px}
.card span{font-size:12px;color:#555}.bad b{color:#c0392b}
table{border-collapse:collapse;font-size:12.5px;width:100%}th,td{padding:4px 8px;
text-align:right;border-bottom:1px solid #e5e8eb;white-space:nowrap}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
tr.drifted td{color:#c0392b;font-weight:600}.grid{display:grid;
grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:8px}
.plot{min-height:260px}.note{color:#666;font-size:13px}.scroll{overflow-x:auto}
a{color:#2470b3}
"""

FAVICON = "<link rel='icon' href='data:,'>"  # no request for /favicon.ico

DRIFT_COLUMNS = (
    "feature", "kind", *STATS[:2], "ks_pvalue", *STATS[2:5], "chi2_pvalue", STATS[5],
    "missing_ref", "missing_cur", "out_of_range", "mean_ref", "mean_cur", "n_cur",
    "statistic", "threshold", "drifted",
)  # fmt: skip


def _render(d: dict[str, Any], plotly_src: str | None) -> str:
    figs = _figures(d)
    s = d["summary"]
    e = html.escape
    title = f"{d['model']} {d['version']}"
    drifted = s.get("drifted")
    cards = [
        ("records", _fmt(int(s.get("records") or 0)), False),
        (
            "error rate",
            "&ndash;" if s.get("error_rate") is None else f"{100 * s['error_rate']:.2f} %",
            bool(s.get("error_rate")),
        ),
        ("latency p50", _ms(s.get("p50")), False),
        ("latency p95", _ms(s.get("p95")), False),
        ("latency p99", _ms(s.get("p99")), False),
        ("agents", _fmt(int(s.get("agents") or 0)), False),
        (
            "drifted features",
            "no reference" if drifted is None else f"{len(drifted)}",
            bool(drifted),
        ),
    ]
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        FAVICON,
        f"<title>modeltap: {e(title)}</title><style>{CSS}</style>",
    ]
    if plotly_src:
        out.append(f"<script src='{e(plotly_src)}'></script>")
    else:
        out.append(f"<script>{plotly_js()}</script>")
    out.append("</head><body>")
    out.append(
        f"<header><h1>modeltap · {e(title)}</h1><p>{_iso(d['start'])} to {_iso(d['end'])} "
        f"UTC · time buckets of {_duration(d['bucket_s'])} · generated {_iso(d['generated'])} "
        f"UTC in {d['build_s']:.2f} s</p></header><main>"
    )
    out.append("<section><h2>Summary</h2><div class='cards'>")
    for label, value, bad in cards:
        out.append(
            f"<div class='card{' bad' if bad else ''}'><b>{value}</b><span>{label}</span></div>"
        )
    out.append("</div>")
    if drifted:
        out.append(f"<p>Drifted: {', '.join(e(f) for f in drifted[:50])}</p>")
    for n in d["notes"][:20]:
        out.append(f"<p class='note'>{e(n)}</p>")
    out.append("</section>")
    dr = d["drift"]
    if dr:
        out.append(
            f"<section><h2>Drift against the reference</h2><p class='note'>"
            f"{_fmt(dr['records'])} records in {_fmt(dr['profiles_merged'])} window profiles"
            "; the decision uses each column's statistic and threshold.</p>"
            "<div class='scroll'><table><tr>"
        )
        out.extend(f"<th>{e(c)}</th>" for c in DRIFT_COLUMNS)
        out.append("</tr>")
        for c in dr["columns"]:
            out.append(f"<tr class='{'drifted' if c['drifted'] else ''}'>")
            out.extend(f"<td>{_fmt(c.get(k))}</td>" for k in DRIFT_COLUMNS)
            out.append("</tr>")
        out.append("</table></div>")
        for n in (dr.get("notes") or [])[:20]:
            out.append(f"<p class='note'>{e(n)}</p>")
        out.append("</section>")
    hist_ids = [k for k in figs if k.startswith("hist")]
    if hist_ids:
        more = len(d["histograms"]) - len(hist_ids)
        out.append(
            "<section><h2>Reference against current, per feature</h2>"
            + (
                f"<p class='note'>The {len(hist_ids)} most drifted of {len(d['histograms'])} "
                "columns; every column is in the drift table.</p>"
                if more > 0
                else ""
            )
            + "<div class='grid'>"
        )
        out.extend(f"<div class='plot' id='{k}'></div>" for k in hist_ids)
        out.append("</div></section>")
    for key, heading in (
        ("drift_time", "Drift over time"),
        ("predictions", "Predictions over time"),
        ("latency", "Latency over time"),
    ):
        if key in figs:
            out.append(f"<section><h2>{heading}</h2><div class='plot' id='{key}'></div></section>")
    if d["stages"]:
        out.append(
            "<section><h2>Latency per stage</h2><table><tr><th>stage</th><th>spans</th>"
            "<th>errors</th><th>mean</th><th>p50</th><th>p95</th><th>p99</th></tr>"
        )
        for r in d["stages"]:
            name = f"{r['stage']} (end to end)" if r["end_to_end"] else r["stage"]
            out.append(
                f"<tr><td>{e(name)}</td><td>{_fmt(r['spans'])}</td><td>{_fmt(r['errors'])}</td>"
                + "".join(f"<td>{_ms(r[k])}</td>" for k in ("mean_s", "p50_s", "p95_s", "p99_s"))
                + "</tr>"
            )
        out.append("</table></section>")
    sys_ids = [k for k in figs if k.startswith("sys_")]
    out.append("<section><h2>System metrics</h2>")
    if sys_ids:
        out.append("<div class='grid'>")
        out.extend(f"<div class='plot' id='{k}'></div>" for k in sys_ids)
        out.append("</div>")
        if "sys_gpu" not in figs:
            out.append("<p class='note'>No GPU readings (no GPU, or NVML absent).</p>")
    else:
        out.append("<p class='note'>No system samples in this range.</p>")
    out.append("</section><section><h2>Errors by type</h2>")
    if d["errors"]:
        out.append(
            "<div class='plot' id='errors'></div><table><tr><th>type</th>"
            "<th>example message</th><th>count</th></tr>"
        )
        for r in d["errors"]:
            out.append(
                f"<tr><td>{e(r['type'])}</td><td>{e(str(r['example'] or ''))[:200]}</td>"
                f"<td>{_fmt(r['n'])}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p class='note'>No errors in this range.</p>")
    out.append("</section></main>")
    out.append(
        f"<script type='application/json' id='modeltap-figures'>{_json_script(figs)}</script>"
    )
    out.append(
        "<script>(function(){var f=JSON.parse(document.getElementById('modeltap-figures')"
        ".textContent);var cfg={responsive:true,displaylogo:false};"
        "window.modeltapPlots=Object.keys(f).map(function(k){"
        "return Plotly.newPlot(k,f[k].data,f[k].layout,cfg);});})();</script>"
    )
    out.append("</body></html>")
    return "".join(out)


def _duration(s: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n and s % n == 0:
            return f"{s // n} {unit}"
    return f"{s} s"


def index_html(models: pa.Table) -> str:
    """The collector's live index page: every model with a link to its page."""
    e = html.escape
    rows = []
    from urllib.parse import quote

    for r in models.to_pylist():
        link = f"/models/{quote(r['model'], safe='')}?version={quote(str(r['version']), safe='')}"
        rows.append(
            f"<tr><td><a href='{e(link)}'>{e(r['model'])}</a></td><td>{e(str(r['version']))}"
            f"</td><td>{_fmt(r['records'])}</td><td>{e(str(r['first']))}</td>"
            f"<td>{e(str(r['last']))}</td></tr>"
        )
    body = (
        "<table><tr><th>model</th><th>version</th><th>records</th><th>first</th>"
        "<th>last</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p class='note'>No predictions stored yet.</p>"
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{FAVICON}"
        "<title>modeltap</title>"
        f"<style>{CSS}</style></head><body><header><h1>modeltap collector</h1><p>Models "
        "in this store; each page is built from the store when it is opened. "
        "<a style='color:#c9d3de' href='/metrics'>/metrics</a></p></header><main><section>"
        f"<h2>Models</h2>{body}</section></main></body></html>"
    )
