"""A report's HTML page: the plotly figures, tables and summary cards of
the data :mod:`modeltap._report_data` builds, and the collector's index page."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from modeltap._report_data import MAX_DRIFT_LINES, MAX_FEATURE_PLOTS, _finite, _iso
from modeltap.drift import STATS

if TYPE_CHECKING:
    import pyarrow as pa


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js, as the plotly package ships it (minified)."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


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
