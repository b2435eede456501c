"""``modeltap demo``: serve a small synthetic model, log its traffic through
an agent, and report the agent's counters and the cost of logging."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
    timings: dict[str, float] = field(default_factory=dict)


def run(requests: int = 20_000, batch_rows: int = 100_000, seed: int = 0) -> DemoResult:
    """Runs the demo: ``requests`` single predictions through
    ``@agent.monitor`` plus explicit ``Agent.log`` calls, one
    ``log_batch`` of ``batch_rows`` rows, a few failing requests, then a
    flush; every batch is decoded again to check the round trip."""
    model = SyntheticModel(seed)
    rng = np.random.default_rng(seed + 1)
    delivered: list[bytes] = []
    agent = modeltap.Agent(
        "demo-credit",
        "1.0.0",
        params={"threshold": 0.5},
        sink=delivered.append,
        metrics_interval=0.25,
        flush_interval=0.2,
    )

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
            predict(x)
    errors_seen = 0
    for _ in range(5):
        bad = rng.normal(size=N_FEATURES)
        bad[3] = np.inf
        try:
            predict(bad)
        except ValueError:
            errors_seen += 1
    Xb = rng.normal(size=(batch_rows, N_FEATURES))
    tb = time.perf_counter()
    Pb = model.predict_proba(Xb)
    agent.log_batch(Xb, Pb.argmax(axis=1), Pb)
    batch_s = time.perf_counter() - tb
    time.sleep(0.3)  # let the sampler take a reading or two
    agent.flush(30)
    agent.close()

    decoded = [modeltap.decode_batch(b) for b in delivered]
    samples = [s for d in decoded for s in d["system"]]
    gpu = "absent (no NVML)"
    if samples and "gpus" in samples[-1]:
        gpu = (
            ", ".join(f"{g['name']} {g['utilization_percent']:.0f}%" for g in samples[-1]["gpus"])
            or "NVML present, no GPU"
        )
    stats = agent.stats()
    return DemoResult(
        requests=requests,
        batch_rows=batch_rows,
        log_ns_p50=float(np.percentile(log_ns, 50)),
        log_ns_p99=float(np.percentile(log_ns, 99)),
        predict_ns_p50=float(np.percentile(predict_ns, 50)),
        records_decoded=sum(d["n_records"] for d in decoded),
        batches=len(decoded),
        bytes=sum(len(b) for b in delivered),
        stats=stats,
        system_samples=len(samples),
        gpu=gpu,
        errors_seen=errors_seen,
        timings={"log_batch_s": batch_s},
    )


def render(r: DemoResult) -> str:
    """The demo's report as text."""
    s = r.stats
    lines = [
        "modeltap demo: synthetic 3-class model, 20 features",
        f"  served {r.requests:,} requests (+{r.requests // 10:,} through @agent.monitor, "
        f"{r.errors_seen} failing) and one log_batch of {r.batch_rows:,} rows",
        "",
        "agent counters",
    ]
    for k in (
        "logged",
        "shipped",
        "pending",
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
    lines += [
        "",
        "timings",
        f"  Agent.log p50     {r.log_ns_p50:>11,.0f} ns   (model predict p50 "
        f"{r.predict_ns_p50:,.0f} ns)",
        f"  Agent.log p99     {r.log_ns_p99:>11,.0f} ns",
        f"  log_batch         {rows_per_s:>11,.0f} rows/s (incl. model)",
        "",
        "round trip",
        f"  batches decoded   {r.batches:>14,}",
        f"  records decoded   {r.records_decoded:>14,}"
        f"   {'== shipped' if r.records_decoded == s['shipped'] else '!= shipped (BUG)'}",
        f"  system samples    {r.system_samples:>14,}   GPU: {r.gpu}",
    ]
    return "\n".join(lines)


def main(args: Any) -> int:
    """Entry point of ``modeltap demo``."""
    result = run(requests=args.requests, batch_rows=args.batch_rows, seed=args.seed)
    print(render(result))
    ok = result.records_decoded == result.stats["shipped"] and result.stats["pending"] == 0
    return 0 if ok else 1
