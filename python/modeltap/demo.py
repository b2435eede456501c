"""``modeltap demo``: the whole loop on a synthetic model. A collector (on a
thread of this process, a temporary store, live pages on an HTTP port), a
reference built from a synthetic training set, a small model served by 4
concurrent workers whose every request is traced (preprocess, inference,
postprocess) and logged through one agent; halfway through, part of the
input distribution shifts. Then the drift table, the latency per stage, the
agent's counters, and where the HTML report and the live pages are."""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import modeltap

N_FEATURES = 20
CLASSES = ("approve", "review", "decline")
REGIONS = ("north", "south", "east", "west")
SHIFTED = ("f0", "f1", "f2", "f3")  # the features that move halfway
SHIFT = 1.5  # by this many standard deviations
MODEL, VERSION = "demo-credit", "1.0.0"
WORKERS = 4
MAX_WINDOW_S = 2.0  # the agent's profile windows: about 20 a run, at most this long


class SyntheticModel:
    """A 3-class softmax model over 20 numeric features with fixed random
    weights (the region is logged, not used)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(N_FEATURES, len(CLASSES)))
        self.b = rng.normal(size=len(CLASSES))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(X) @ self.w + self.b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True))


def traffic(rng: np.random.Generator, n: int, shifted: bool) -> tuple[np.ndarray, list[str]]:
    """``n`` requests' numeric features and regions, before or after the
    shift (f0..f3 move by SHIFT standard deviations; the regions' mix
    changes)."""
    X = rng.normal(size=(n, N_FEATURES))
    if shifted:
        X[:, : len(SHIFTED)] += SHIFT
    p = (0.1, 0.2, 0.3, 0.4) if shifted else (0.25, 0.25, 0.25, 0.25)
    return X, list(rng.choice(REGIONS, size=n, p=p))


@dataclass
class DemoResult:
    """What the demo did and measured."""

    requests: int
    errors_raised: int
    stats: dict[str, int]
    stored_rows: int = 0
    stored_errors: list[tuple[str, int]] = field(default_factory=list)
    drift: Any = None  # DriftReport of the shifted half
    drift_before: Any = None  # DriftReport of the first half
    stages: list[dict[str, Any]] = field(default_factory=list)
    slowest: list[dict[str, Any]] = field(default_factory=list)
    spans: int = 0
    report_path: str = ""
    report_s: float = 0.0
    elapsed_s: float = 0.0
    rate: float = 0.0
    gpu: str = ""
    addr: str = ""
    pages: str = ""
    store: str = ""


def run(
    requests: int = 40_000,
    rate: float = 1_000.0,
    seed: int = 0,
    store: str | None = None,
    report: str = "modeltap-demo-report.html",
    keep: bool = False,
    progress: bool = True,
) -> tuple[DemoResult, Any]:
    """Runs the demo; returns what it measured and the running collector
    (stopped already unless ``keep``)."""
    import pyarrow as pa

    from modeltap.collector import BackgroundCollector

    tmp = None
    if store is None:
        tmp = tempfile.mkdtemp(prefix="modeltap-demo-")
        store = str(Path(tmp) / "demo.duckdb")
    rng = np.random.default_rng(seed)
    model = SyntheticModel(seed)
    window_s = min(MAX_WINDOW_S, max(0.25, requests / rate / 20))
    collector = BackgroundCollector(store, http="127.0.0.1:0", metrics_refresh_s=5.0).start()
    try:
        # The training set the reference describes: unshifted traffic.
        X_train, regions_train = traffic(rng, 20_000, shifted=False)
        train = {f"f{i}": X_train[:, i] for i in range(N_FEATURES)}
        train["region"] = np.array(regions_train, dtype=object)
        labels = np.array(CLASSES)[model.predict_proba(X_train).argmax(axis=1)]
        ref = modeltap.Reference.from_data(
            pa.table(train), categorical=["region"], predictions=labels
        )
        with modeltap.Client(collector.addr) as c:
            c.register_reference(ref, MODEL, VERSION)
        agent = modeltap.Agent(
            MODEL,
            VERSION,
            collector=collector.addr,
            reference=ref,
            params={"threshold": 0.5},
            window_s=window_s,
            metrics_interval=0.5,
            flush_interval=0.2,
        )
        result = _serve(agent, model, rng, requests, rate, progress)
        result.addr = collector.addr
        result.pages = f"http://127.0.0.1:{collector.server.metrics.port}"
        result.store = store
        _read_back(result, collector.addr, report, window_s)
    except BaseException:
        collector.stop()
        raise
    if not keep:
        collector.stop()
        if tmp is not None:
            for f in Path(tmp).iterdir():
                f.unlink()
            Path(tmp).rmdir()
    return result, collector


def _serve(
    agent: modeltap.Agent,
    model: SyntheticModel,
    rng: np.random.Generator,
    requests: int,
    rate: float,
    progress: bool,
) -> DemoResult:
    half = requests // 2
    X0, r0 = traffic(rng, half, shifted=False)
    X1, r1 = traffic(rng, requests - half, shifted=True)
    X = np.vstack([X0, X1])
    regions = r0 + r1
    bad = rng.random(requests) < 0.002  # a few requests carry a NaN
    X[bad, 5] = np.nan

    @agent.monitor
    def predict(features: dict[str, Any]) -> str:
        x = np.fromiter((features[f"f{i}"] for i in range(N_FEATURES)), float, N_FEATURES)
        if not np.isfinite(x).all():
            raise ValueError("non-finite input")
        return CLASSES[int(model.predict_proba(x)[0].argmax())]

    lock = threading.Lock()
    state = {"next": 0, "done": 0, "errors": 0}
    t_start = time.perf_counter()
    per_request = 1.0 / rate if rate > 0 else 0.0

    def worker() -> None:
        while True:
            with lock:
                i = state["next"]
                if i >= requests:
                    return
                state["next"] = i + 1
            due = t_start + i * per_request
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            with agent.span("request", kind="server"):
                with agent.span("preprocess"):
                    features: dict[str, Any] = {f"f{j}": float(X[i, j]) for j in range(N_FEATURES)}
                    features["region"] = regions[i]
                try:
                    label = predict(features)
                except ValueError:
                    with lock:
                        state["errors"] += 1
                    label = None
                with agent.span("postprocess"):
                    _ = label == "decline"
            with lock:
                state["done"] += 1

    threads = [threading.Thread(target=worker, name=f"demo-worker-{k}") for k in range(WORKERS)]
    for t in threads:
        t.start()
    _watch(threads, state, requests, half, progress)
    elapsed = time.perf_counter() - t_start
    agent.flush(60)
    agent.close()
    return DemoResult(
        requests=requests,
        errors_raised=state["errors"],
        stats=agent.stats(),
        elapsed_s=elapsed,
        rate=requests / max(elapsed, 1e-9),
    )


def _watch(
    threads: list[threading.Thread],
    state: dict[str, int],
    requests: int,
    half: int,
    progress: bool,
) -> None:
    if not progress:
        for t in threads:
            t.join()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task(f"serving ({WORKERS} workers)", total=requests, note="")
        while any(t.is_alive() for t in threads):
            done = state["done"]
            phase = "inputs shifted" if done >= half else "before the shift"
            bar.update(task, completed=done, note=f"{phase}, {state['errors']} errors")
            time.sleep(0.1)
        bar.update(task, completed=state["done"], note=f"done, {state['errors']} errors")


def _read_back(r: DemoResult, addr: str, report: str, window_s: float) -> None:
    """What the collector holds, read from it while it runs."""
    import grpc

    with modeltap.Client(addr) as c:
        first, last = (
            c.sql("SELECT epoch_ns(min(ts)) AS a, epoch_ns(max(ts)) AS b FROM predictions")
            .to_pylist()[0]
            .values()
        )
        # The shift came halfway: the newer half of the windows shows it.
        row = c.sql(
            "SELECT count(*) AS n, epoch_ns(quantile_disc(ts, 0.5)) AS mid FROM predictions"
        ).to_pylist()[0]
        r.stored_rows = int(row["n"])
        # Windows start at multiples of their width: the one holding the
        # median record holds both halves; compare those wholly after it,
        # and (for contrast) those wholly before it.
        w = int(window_s * 1e9)
        mixed = int(row["mid"]) // w * w
        r.drift = c.drift(MODEL, VERSION, since=(mixed + w) / 1e9)
        try:
            r.drift_before = c.drift(MODEL, VERSION, until=mixed / 1e9)
        except grpc.RpcError:  # no window wholly before the shift (a short run)
            r.drift_before = None
        r.stored_errors = [
            (str(x["error_type"]), int(x["n"]))
            for x in c.sql(
                "SELECT error_type, count(*) AS n FROM errors GROUP BY 1 ORDER BY 2 DESC"
            ).to_pylist()
        ]
        r.stages = c.stage_latency(MODEL)
        r.slowest = c.traces(MODEL, slowest=1)
        r.spans = int(c.sql("SELECT count(*) AS n FROM spans").to_pylist()[0]["n"])
        g = c.sql(
            "SELECT count(*) AS n, count(gpu_index) AS g, max(gpu_name) AS name FROM system_metrics"
        ).to_pylist()[0]
        r.gpu = (
            f"{g['name']} ({g['g']} readings)" if g["g"] else "absent (no NVML): GPU columns NULL"
        )
        t0 = time.perf_counter()
        rep = c.report(MODEL, VERSION, since=first / 1e9, until=last / 1e9 + 1)
        r.report_path = str(rep.save(report).resolve())
        r.report_s = time.perf_counter() - t0


def render(r: DemoResult, keep: bool = False) -> Any:
    """The demo's summary as rich renderables."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from modeltap.drift import _fmt

    s = r.stats
    out: list[Any] = [
        Text(
            f"served {r.requests:,} requests with {WORKERS} workers in {r.elapsed_s:.1f} s "
            f"({r.rate:,.0f}/s); {r.errors_raised} raised an error; inputs "
            f"{', '.join(SHIFTED)} shifted by {SHIFT} std and the region mix changed halfway",
            style="bold",
        )
    ]
    t = Table(title="drift of the shifted half against the training reference")
    heads = ("feature", "kind", "psi", "ks", "js", "wasserstein", "hellinger", "drifted")
    for h in heads:
        t.add_column(h, justify="left" if h in ("feature", "kind") else "right")
    before = {row["feature"]: row for row in r.drift_before.rows} if r.drift_before else {}
    for row in r.drift.rows:
        style = "bold red" if row["drifted"] else None
        t.add_row(*(_fmt(row[h]) for h in heads), style=style)
    out.append(t)
    n_before = (
        f"{sum(1 for v in before.values() if v['drifted'])} before it"
        if before
        else "no window wholly before it to compare"
    )
    out.append(
        Text(
            f"{len(r.drift.drifted)} of {len(r.drift.rows)} columns drifted after the shift "
            f"({n_before})"
        )
    )
    st = Table(title="latency per stage (from the window profiles)")
    for h in ("stage", "spans", "errors", "p50", "p95", "p99"):
        st.add_column(h, justify="left" if h == "stage" else "right")
    for row in r.stages:
        name = f"{row['stage']} (end to end)" if row["end_to_end"] else row["stage"]
        st.add_row(
            name,
            f"{row['spans']:,}",
            f"{row['errors']:,}",
            *(f"{row[k] * 1e6:,.1f} µs" for k in ("p50_s", "p95_s", "p99_s")),
        )
    out.append(st)
    ok = r.stored_rows == s["shipped"] == s["logged"]
    out.append(
        Text(
            f"agent: {s['logged']:,} logged, {s['shipped']:,} shipped, {s['pending']:,} pending, "
            f"{s['dropped_full']:,} dropped, {s['inference_errors']:,} inference errors, "
            f"{s['batches']:,} batches, {s['bytes']:,} bytes; store: {r.stored_rows:,} "
            f"predictions ({'== shipped' if ok else '!= shipped (BUG)'}), {r.spans:,} spans, "
            "errors: "
            + (", ".join(f"{k} {v}" for k, v in r.stored_errors) or "none")
            + f"; GPU: {r.gpu}"
        )
    )
    lines = [f"HTML report: {r.report_path} (built in {r.report_s:.2f} s)"]
    if r.slowest:
        lines.append(f"slowest request: modeltap trace {r.slowest[0]['trace_id']} "
                     f"--collector {r.addr}")  # fmt: skip
    if keep:
        lines += [
            f"live pages: {r.pages}/  (this model: {r.pages}/models/{MODEL})",
            f"metrics:    {r.pages}/metrics",
            f'query:      modeltap query "SELECT * FROM predictions LIMIT 5" --collector {r.addr}',
            f"store:      {r.store}",
            "the collector keeps running: Ctrl-C stops it",
        ]
    out.append(Text("\n".join(lines)))
    return Group(*out)


def main(args: Any) -> int:
    """Entry point of ``modeltap demo``."""
    import logging
    import sys

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 140)
    if args.log_level == "WARNING":  # the default: the agent's warnings about
        # the demo's deliberately bad inputs are counted in the summary instead
        logging.getLogger("modeltap").setLevel(logging.ERROR)
    result, collector = run(
        requests=args.requests,
        rate=args.rate,
        seed=args.seed,
        store=args.store,
        report=args.report,
        keep=args.keep,
        progress=not args.no_progress,
    )
    console.print(render(result, keep=args.keep), soft_wrap=True)
    s = result.stats
    ok = result.stored_rows == s["shipped"] == s["logged"] and s["pending"] == 0
    if args.keep:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            collector.stop()
    return 0 if ok else 1
