"""``modeltap demo``: serve a small synthetic model, log its traffic through
an agent, and report the agent's counters and the cost of logging."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import modeltap

N_FEATURES = 20
CLASSES = ("approve", "review", "decline")


class SyntheticModel:
    """A 3-class softmax model over 20 features with fixed random weights."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(N_FEATURES, len(CLASSES)))
        self.b = rng.normal(size=len(CLASSES))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(X) @ self.w + self.b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass
class DemoResult:
    """What the demo measured."""

    requests: int
    batch_rows: int
    log_ns_p50: float
    log_ns_p99: float
    predict_ns_p50: float
    records_decoded: int
    batches: int
    bytes: int
    stats: dict[str, int]
    system_samples: int
    gpu: str
    errors_seen: int
    store: str = ""
    stored_rows: int = 0
    stored_ids: int = 0
    by_label: list[tuple[str, int]] = field(default_factory=list)
    latency_ms: tuple[float, float] = (0.0, 0.0)
    stored_errors: list[tuple[str, int]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    slowest: list[dict[str, Any]] = field(default_factory=list)
    spans: int = 0


def run(
    requests: int = 20_000,
    batch_rows: int = 100_000,
    seed: int = 0,
    store: str | None = None,
) -> DemoResult:
    """Runs the demo end to end: a collector (on a thread of this process,
    storing into ``store`` or a temporary DuckDB file), an agent shipping to
    it, ``requests`` single predictions through ``Agent.log`` and
    ``@agent.monitor``, a few failing requests, one ``log_batch`` of
    ``batch_rows`` rows; then the store is queried with SQL."""
    from modeltap.collector import BackgroundCollector, Store

    tmp = None
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="modeltap-demo-")
        store = str(Path(tmp.name) / "demo.duckdb")
    model = SyntheticModel(seed)
    rng = np.random.default_rng(seed + 1)
    collector = BackgroundCollector(store).start()
    try:
        agent = modeltap.Agent(
            "demo-credit",
            "1.0.0",
            collector=collector.addr,
            params={"threshold": 0.5},
            metrics_interval=0.25,
            flush_interval=0.2,
        )
        result = _serve(agent, model, rng, requests, batch_rows)
    finally:
        collector.stop()
    with Store(store) as s:
        result.store = store
        row = s.sql(
            "SELECT count(*) AS n, count(DISTINCT request_id) AS ids, "
            "quantile_cont(latency_s, 0.5) * 1e3 AS p50, "
            "quantile_cont(latency_s, 0.99) * 1e3 AS p99 FROM predictions"
        ).to_pylist()[0]
        result.stored_rows, result.stored_ids = int(row["n"]), int(row["ids"])
        result.latency_ms = (float(row["p50"] or 0), float(row["p99"] or 0))
        result.by_label = [
            (str(r["label"]), int(r["n"]))
            for r in s.sql(
                "SELECT coalesce(prediction_label, CASE WHEN isnan(prediction) "
                "THEN '(none)' ELSE CAST(prediction AS VARCHAR) END) AS label, "
                "count(*) AS n FROM predictions GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
            ).to_pylist()
        ]
        result.stored_errors = [
            (str(r["error_type"]), int(r["n"]))
            for r in s.sql(
                "SELECT error_type, count(*) AS n FROM errors GROUP BY 1 ORDER BY 2 DESC"
            ).to_pylist()
        ]
        samples = s.sql(
            "SELECT count(*) AS n, count(gpu_index) AS g, max(gpu_name) AS name FROM system_metrics"
        ).to_pylist()[0]
        result.system_samples = int(samples["n"])
        result.stages = s.stage_latency("demo-credit")
        result.slowest = s.traces("demo-credit", slowest=1)
        result.spans = int(s.sql("SELECT count(*) AS n FROM spans").to_pylist()[0]["n"])
        result.gpu = (
            f"{samples['name']} ({samples['g']} readings)"
            if samples["g"]
            else "absent (no NVML): GPU columns NULL"
        )
    if tmp is not None:
        tmp.cleanup()
    else:
        result.timings["kept"] = 1.0
    return result


def _serve(
    agent: modeltap.Agent,
    model: SyntheticModel,
    rng: np.random.Generator,
    requests: int,
    batch_rows: int,
) -> DemoResult:
    @agent.monitor
    def predict(x: np.ndarray) -> str:
        if not np.isfinite(x).all():
            raise ValueError("non-finite input")
        return CLASSES[int(model.predict_proba(x)[0].argmax())]

    X = rng.normal(size=(requests, N_FEATURES))
    log_ns = np.empty(requests)
    predict_ns = np.empty(requests)
    for i in range(requests):
        x = X[i]
        t0 = time.perf_counter_ns()
        p = model.predict_proba(x)[0]
        t1 = time.perf_counter_ns()
        agent.log(x, CLASSES[int(p.argmax())], p, latency_s=(t1 - t0) / 1e9)
        t2 = time.perf_counter_ns()
        predict_ns[i] = t1 - t0
        log_ns[i] = t2 - t1
        if i % 10 == 0:
            # A traced request: its stages are spans, the record joins them.
            with agent.span("request", kind="server"):
                with agent.span("preprocess"):
                    z = np.clip(x, -6.0, 6.0)
                predict(z)
                with agent.span("postprocess"):
                    pass
    errors_seen = 0
    for _ in range(5):
        bad = rng.normal(size=N_FEATURES)
        bad[3] = np.inf
        try:
            with agent.span("request", kind="server"):
                predict(bad)
        except ValueError:
            errors_seen += 1
    Xb = rng.normal(size=(batch_rows, N_FEATURES))
    tb = time.perf_counter()
    Pb = model.predict_proba(Xb)
    per_row = (time.perf_counter() - tb) / batch_rows
    labels = [CLASSES[i] for i in Pb.argmax(axis=1)]
    agent.log_batch(Xb, labels, Pb, latency_s=per_row)
    batch_s = time.perf_counter() - tb
    time.sleep(0.3)  # let the sampler take a reading or two
    agent.flush(30)
    agent.close()
    stats = agent.stats()
    return DemoResult(
        requests=requests,
        batch_rows=batch_rows,
        log_ns_p50=float(np.percentile(log_ns, 50)),
        log_ns_p99=float(np.percentile(log_ns, 99)),
        predict_ns_p50=float(np.percentile(predict_ns, 50)),
        records_decoded=0,
        batches=stats["batches"],
        bytes=stats["bytes"],
        stats=stats,
        system_samples=0,
        gpu="",
        errors_seen=errors_seen,
        timings={"log_batch_s": batch_s},
    )


def render(r: DemoResult) -> str:
    """The demo's report as text."""
    s = r.stats
    lines = [
        "modeltap demo: synthetic 3-class model, 20 features, agent -> collector -> DuckDB",
        f"  served {r.requests:,} requests (+{r.requests // 10:,} through @agent.monitor, "
        f"{r.errors_seen} failing) and one log_batch of {r.batch_rows:,} rows",
        "",
        "agent counters",
    ]
    for k in (
        "logged",
        "shipped",
        "pending",
        "spooled",
        "dropped_full",
        "invalid",
        "flagged",
        "inference_errors",
        "errors",
        "batches",
        "bytes",
    ):
        lines.append(f"  {k:<17}{s[k]:>14,}")
    rows_per_s = r.batch_rows / max(r.timings.get("log_batch_s", 0.0), 1e-9)
    ok = r.stored_rows == s["shipped"] == r.stored_ids
    lines += [
        "",
        "timings",
        f"  Agent.log p50     {r.log_ns_p50:>11,.0f} ns   (model predict p50 "
        f"{r.predict_ns_p50:,.0f} ns)",
        f"  Agent.log p99     {r.log_ns_p99:>11,.0f} ns",
        f"  log_batch         {rows_per_s:>11,.0f} rows/s (incl. model)",
        "",
        f"collector store ({r.store if r.timings.get('kept') else 'a temporary DuckDB file'})",
        f"  predictions       {r.stored_rows:>14,}   distinct request ids {r.stored_ids:,}"
        f"   {'== shipped' if ok else '!= shipped (BUG)'}",
        f"  latency p50/p99   {r.latency_ms[0] * 1e3:>11,.1f} / {r.latency_ms[1] * 1e3:,.1f} µs",
        "  predictions by class: " + ", ".join(f"{k} {v:,}" for k, v in r.by_label),
        "  errors: " + (", ".join(f"{k} {v}" for k, v in r.stored_errors) or "none"),
        f"  system samples    {r.system_samples:>14,}   GPU: {r.gpu}",
        "",
        f"traces ({r.spans:,} spans stored; latency per stage from the window profiles)",
    ]
    for st in r.stages:
        name = f"{st['stage']} (end to end)" if st["end_to_end"] else st["stage"]
        lines.append(
            f"  {name:<24}{st['spans']:>8,} spans  p50 {st['p50_s'] * 1e6:>9,.1f} µs"
            f"  p99 {st['p99_s'] * 1e6:>9,.1f} µs  errors {st['errors']}"
        )
    if r.slowest:
        t = r.slowest[0]
        where = f" --store {r.store}" if r.timings.get("kept") else ""
        lines.append(
            f"  slowest request: {t['duration_ns'] / 1e3:,.1f} µs, "
            f"modeltap trace {t['trace_id']}{where}"
        )
    return "\n".join(lines)


def main(args: Any) -> int:
    """Entry point of ``modeltap demo``."""
    result = run(
        requests=args.requests, batch_rows=args.batch_rows, seed=args.seed, store=args.store
    )
    print(render(result))
    s = result.stats
    ok = result.stored_rows == s["shipped"] == s["logged"] and s["pending"] == 0
    return 0 if ok else 1
