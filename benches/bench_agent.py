"""End-to-end cost of logging a prediction with modeltap, against what a
user would otherwise reach for, measured in one run on the same record.

Record: 20 float features, a 3-class probability vector, the predicted
class, model name/version and a request id.

    python benches/bench_agent.py            # full run (about 1 minute)
    python benches/bench_agent.py --quick    # a shorter run
    python benches/bench_agent.py --json out.json

Needs a release build of modeltap (``pip install .`` or ``maturin develop
--release``) and ``opentelemetry-sdk`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

import modeltap
from modeltap import _core

FEATURES = 20
AGENTS: list[modeltap.Agent] = []


def make_record(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=FEATURES)
    p = rng.dirichlet(np.ones(3))
    return {
        "x": x,
        "xl": x.tolist(),
        "xd": {f"f{i}": float(v) for i, v in enumerate(x)},
        "p": p,
        "pl": p.tolist(),
        "pred": int(p.argmax()),
        "rid": modeltap.random_id(),
    }


# -- the contenders --------------------------------------------------------


def contenders(
    rec: dict[str, Any], tmp: str
) -> dict[str, tuple[Callable[[], Any], Callable[[], None]]]:
    """name -> (one call, cleanup)."""
    out: dict[str, tuple[Callable[[], Any], Callable[[], None]]] = {}

    agent = modeltap.Agent("bench", "1.0", metrics_interval=None)
    x, xl, xd, p, pl, pred = rec["x"], rec["xl"], rec["xd"], rec["p"], rec["pl"], rec["pred"]
    log = agent.log
    out["modeltap Agent.log (numpy row)"] = (lambda: log(x, pred, p), agent.close)
    agent_l = modeltap.Agent("bench", "1.0", metrics_interval=None)
    log_l = agent_l.log
    out["modeltap Agent.log (list)"] = (lambda: log_l(xl, pred, pl), agent_l.close)
    agent_d = modeltap.Agent("bench", "1.0", metrics_interval=None)
    log_d = agent_d.log
    out["modeltap Agent.log (dict)"] = (lambda: log_d(xd, pred, pl), agent_d.close)
    for a in (agent, agent_l, agent_d):
        AGENTS.append(a)

    logger = logging.getLogger("bench.jsonlines")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(os.path.join(tmp, "predictions.jsonl"))
    logger.addHandler(handler)
    rid = rec["rid"]
    dumps = json.dumps

    def json_line() -> None:
        logger.info(
            dumps(
                {
                    "model": "bench",
                    "version": "1.0",
                    "request_id": rid,
                    "features": x.tolist(),
                    "probabilities": p.tolist(),
                    "prediction": pred,
                }
            )
        )

    def close_json() -> None:
        logger.removeHandler(handler)
        handler.close()

    out["logging JSON line to a file"] = (json_line, close_json)

    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Discard()))
        tracer = provider.get_tracer("bench")

        def otel_span() -> None:
            with tracer.start_as_current_span(
                "predict",
                attributes={
                    "model": "bench",
                    "version": "1.0",
                    "request_id": rid,
                    "features": x.tolist(),
                    "probabilities": p.tolist(),
                    "prediction": pred,
                },
            ):
                pass

        out["OpenTelemetry span (BatchSpanProcessor)"] = (otel_span, provider.shutdown)
    except ImportError:
        print("opentelemetry-sdk not installed: OTel baseline left out", file=sys.stderr)

    dq: collections.deque[Any] = collections.deque(maxlen=65536)
    out["collections.deque.append (floor)"] = (
        lambda: dq.append((x, pred, p, "bench", "1.0", rid)),
        dq.clear,
    )
    return out


# -- measurements ------------------------------------------------------------


def back_to_back(fn: Callable[[], Any], rounds: int, per_round: int) -> float:
    """Median over rounds of the mean ns per call in a tight loop."""
    for _ in range(per_round):
        fn()
    means = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(per_round):
            fn()
        means.append((time.perf_counter_ns() - t0) / per_round)
    return statistics.median(means)


def timer_overhead_ns() -> float:
    pc = time.perf_counter_ns
    samples = []
    for _ in range(20000):
        t0 = pc()
        samples.append(pc() - t0)
    return float(np.median(samples))


def pace(fn: Callable[[], Any], rate: float, seconds: float) -> np.ndarray:
    """Calls ``fn`` ``rate`` times a second for ``seconds`` (sleeping, then
    spinning, up to each call's time); returns each call's ns."""
    n = int(rate * seconds)
    lat = np.empty(n)
    pc = time.perf_counter_ns
    period = 1e9 / rate
    start = pc()
    for i in range(n):
        target = start + i * period
        while True:
            left = target - pc()
            if left <= 0:
                break
            if left > 200_000:
                time.sleep((left - 150_000) / 1e9)
        t0 = pc()
        fn()
        lat[i] = pc() - t0
    return lat


def paced(kind: str, rec: dict[str, Any], rate: float, seconds: float) -> dict[str, float]:
    """Logs at ``rate`` calls/s with sleeps between calls, through a fresh
    agent (no other agent or tracer alive); returns per-call p50/p99 (ns) and
    the CPU the process spent per record outside the calling thread (drain,
    exporter and other background threads), including the time after the
    last call until its batch is delivered."""
    agent = modeltap.Agent("bench", "1.0", metrics_interval=None)
    log = agent.log
    x = {"numpy row": rec["x"], "list": rec["xl"], "dict": rec["xd"]}[kind]
    p, pred = rec["pl"], rec["pred"]
    log(x, pred, p)
    agent.flush(5)
    n = int(rate * seconds)
    proc0 = time.process_time_ns()
    thr0 = time.thread_time_ns()
    lat = pace(lambda: log(x, pred, p), rate, seconds)
    agent.flush(10)
    proc1 = time.process_time_ns()
    thr1 = time.thread_time_ns()
    background = (proc1 - proc0) - (thr1 - thr0)
    s = agent.stats()
    agent.close()
    assert s["dropped_full"] == 0, s
    return {
        "p50_ns": float(np.percentile(lat, 50)),
        "p99_ns": float(np.percentile(lat, 99)),
        "background_cpu_ns_per_record": background / n,
    }


def log_batch_rate(rows: int, repeats: int) -> float:
    X = np.random.default_rng(0).normal(size=(rows, FEATURES))
    y = np.zeros(rows)
    agent = modeltap.Agent("bench", "1.0", metrics_interval=None, buffer_size=1 << 17)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        agent.log_batch(X, y)
        rates.append(X.size / (time.perf_counter() - t0))
        agent.flush(30)
    agent.close()
    return statistics.median(rates)


def memory_bound(records: int, buffer_size: int) -> dict[str, float]:
    gate = threading.Event()
    agent = modeltap.Agent(
        "bench",
        "1.0",
        metrics_interval=None,
        buffer_size=buffer_size,
        sink=lambda d: gate.wait(120),
    )
    x = np.zeros(FEATURES)
    for _ in range(buffer_size * 4):  # fill the ring and the queues first
        agent.log(x, 1)
    rss0 = psutil.Process().memory_info().rss
    for _ in range(records):
        agent.log(x, 1)
    rss1 = psutil.Process().memory_info().rss
    s = agent.stats()
    gate.set()
    agent.close(timeout_s=30)
    return {
        "records": records,
        "rss_growth_bytes": rss1 - rss0,
        "dropped_full": s["dropped_full"],
        "bytes_if_kept": records * (FEATURES + 4) * 8,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shorter run")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if _core.DEBUG_BUILD:
        print("refusing to benchmark a debug build: pip install . (or maturin develop --release)")
        return 2
    rounds, per_round = (15, 2000) if args.quick else (40, 5000)
    pace_s = 1.0 if args.quick else 3.0
    rec = make_record()
    results: dict[str, Any] = {"back_to_back_ns": {}, "paced": {}}
    print(
        f"modeltap {modeltap.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs; timer overhead {timer_overhead_ns():.0f} ns (not subtracted)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cs = contenders(rec, tmp)
        for name, (fn, _) in cs.items():
            results["back_to_back_ns"][name] = back_to_back(fn, rounds, per_round)
        dropped = sum(a.stats()["dropped_full"] for a in AGENTS)
        for _, close in cs.values():
            close()
    for kind in ("numpy row", "list"):
        for rate in (1000, 10000):
            results["paced"][f"modeltap Agent.log ({kind}) @ {rate:,}/s"] = paced(
                kind, rec, rate, pace_s
            )
    results["log_batch_values_per_s"] = log_batch_rate(100_000, 3 if args.quick else 7)
    results["memory"] = memory_bound(200_000 if args.quick else 1_000_000, 65536)

    b2b = results["back_to_back_ns"]
    json_ns = b2b["logging JSON line to a file"]
    otel_ns = b2b.get("OpenTelemetry span (BatchSpanProcessor)")
    print("\nBack to back (median ns per call)")
    print(f"| {'call':<42} | {'ns/call':>9} | {'vs JSON line':>12} | {'vs OTel span':>12} |")
    print(f"|{'-' * 44}|{'-' * 11}:|{'-' * 13}:|{'-' * 13}:|")
    for name, ns in b2b.items():
        vs_otel = f"{otel_ns / ns:>11.1f}x" if otel_ns else "n/a"
        print(f"| {name:<42} | {ns:>9,.0f} | {json_ns / ns:>11.1f}x | {vs_otel:>12} |")
    print(f"(records dropped by the agents during these loops: {dropped:,})")
    print("\nPaced with sleeps between calls (per-call latency; CPU outside the caller)")
    print(
        f"| {'call @ rate':<42} | {'p50 ns':>8} | {'p99 ns':>8} | "
        f"{'background CPU ns/record':>24} |"
    )
    print(f"|{'-' * 44}|{'-' * 9}:|{'-' * 9}:|{'-' * 25}:|")
    for name, r in results["paced"].items():
        print(
            f"| {name:<42} | {r['p50_ns']:>8,.0f} | {r['p99_ns']:>8,.0f} | "
            f"{r['background_cpu_ns_per_record']:>24,.0f} |"
        )
    m = results["memory"]
    print(f"\nlog_batch: {results['log_batch_values_per_s'] / 1e6:,.1f} million feature values/s")
    print(
        f"memory: {m['records']:,} records into a full 65,536-slot agent grew RSS by "
        f"{m['rss_growth_bytes'] / 2**20:,.1f} MiB (kept, they would take "
        f"{m['bytes_if_kept'] / 2**20:,.0f} MiB); dropped_full={m['dropped_full']:,}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
