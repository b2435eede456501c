"""Cost of tracing on the serving thread: one modeltap span against one
OpenTelemetry SDK span (BatchSpanProcessor, an exporter that discards), and
a monitored request (three stage spans plus its prediction record) against
the same request traced with OpenTelemetry, back to back and paced at
1,000 calls/s. Each contender runs in a fresh process of its own, so no
tracer of another is alive (and OpenTelemetry is not even imported where
modeltap is measured alone; with it imported, modeltap's spans also join
and publish OpenTelemetry's context: that case is its own row).

    python benches/bench_tracing.py            # full run (about 1 minute)
    python benches/bench_tracing.py --quick    # a shorter run
    python benches/bench_tracing.py --json out.json

Needs a release build of modeltap and ``opentelemetry-sdk``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CONTENDERS = {
    "modeltap span": "ours_span",
    "modeltap span, OpenTelemetry loaded (bridge on)": "ours_span_otel",
    "OpenTelemetry SDK span (BatchSpanProcessor)": "otel_span",
    "modeltap request: 3 stage spans + record": "ours_request",
    "OpenTelemetry request: 3 spans, record as attributes": "otel_request",
}


def _otel_tracer() -> tuple[Any, Callable[[], None]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    return provider.get_tracer("bench"), provider.shutdown


def _make(kind: str) -> tuple[Callable[[], Any], Callable[[], None], Any]:
    """(one call, cleanup, agent or None)."""
    x = np.random.default_rng(0).normal(size=20)
    if kind.startswith("ours"):
        if kind == "ours_span_otel":
            import opentelemetry.trace  # noqa: F401  (turns the bridge on)
        import modeltap

        agent = modeltap.Agent("bench", "1.0", metrics_interval=None)
        agent.log(x, 1)  # the schema, as in a running service
        span = agent.span
        if kind in ("ours_span", "ours_span_otel"):

            def one() -> None:
                with span("stage"):
                    pass

            return one, agent.close, agent

        @agent.monitor
        def predict(v: Any) -> int:
            return 1

        def request() -> None:
            with span("preprocess"):
                pass
            predict(x)
            with span("postprocess"):
                pass

        return request, agent.close, agent
    tracer, shutdown = _otel_tracer()
    start = tracer.start_as_current_span
    if kind == "otel_span":

        def one_otel() -> None:
            with start("stage"):
                pass

        return one_otel, shutdown, None
    xl = x.tolist()

    def request_otel() -> None:
        with start("preprocess"):
            pass
        with start("inference", attributes={"features": xl, "prediction": 1}):
            pass
        with start("postprocess"):
            pass

    return request_otel, shutdown, None


def _paced(fn: Callable[[], Any], agent: Any, rate: float, seconds: float) -> dict[str, float]:
    from bench_agent import pace

    if agent is not None:
        agent.flush(5)
    proc0, thr0 = time.process_time_ns(), time.thread_time_ns()
    lat = pace(fn, rate, seconds)
    if agent is not None:
        agent.flush(10)
    background = (time.process_time_ns() - proc0) - (time.thread_time_ns() - thr0)
    return {
        "p50_ns": float(np.percentile(lat, 50)),
        "p99_ns": float(np.percentile(lat, 99)),
        "background_cpu_ns": background / len(lat) if agent is not None else float("nan"),
    }


def worker(kind: str, quick: bool) -> dict[str, Any]:
    fn, close, agent = _make(kind)
    rounds, per_round = (5, 20_000) if quick else (9, 50_000)
    from bench_agent import back_to_back

    b2b = back_to_back(fn, rounds, per_round)
    paced = _paced(fn, agent, 1000.0, 2.0 if quick else 5.0)
    out: dict[str, Any] = {"back_to_back_ns": b2b, **paced}
    if agent is not None:
        s = agent.stats()
        out["spans_dropped"] = s["spans_dropped"]
        out["dropped_full"] = s["dropped_full"]
    close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.quick)))
        return 0
    from envinfo import environment

    results: dict[str, dict[str, Any]] = {}
    for name, kind in CONTENDERS.items():
        cmd = [sys.executable, __file__, "--worker", kind] + (["--quick"] if args.quick else [])
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(r.stdout.strip().splitlines()[-1])
    span = results["modeltap span"]
    otel = results["OpenTelemetry SDK span (BatchSpanProcessor)"]
    req = results["modeltap request: 3 stage spans + record"]
    oreq = results["OpenTelemetry request: 3 spans, record as attributes"]
    print("Tracing cost on the serving thread (each row a fresh process)")
    print(environment())
    print()
    print(
        "| contender | back to back (ns) | paced 1,000/s p50 (ns) | p99 (ns) "
        "| background CPU (ns) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        bg = r["background_cpu_ns"]
        print(
            f"| {name} | {r['back_to_back_ns']:,.0f} | {r['p50_ns']:,.0f} | {r['p99_ns']:,.0f} | "
            f"{'' if bg != bg else f'{bg:,.0f}'} |"
        )
    print()
    ratio = otel["back_to_back_ns"] / span["back_to_back_ns"]
    print(
        f"One span: OpenTelemetry / modeltap = {ratio:.1f}x back to back, "
        f"{otel['p50_ns'] / span['p50_ns']:.1f}x paced p50"
    )
    print(
        f"Monitored request (3 stage spans + record): {req['p50_ns'] / 1000:.2f} us p50 paced; "
        f"OpenTelemetry's 3 spans {oreq['p50_ns'] / req['p50_ns']:.1f}x that"
    )
    for name, r in results.items():
        if r.get("spans_dropped") or r.get("dropped_full"):
            print(f"WARNING: {name} dropped spans or records: {r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
