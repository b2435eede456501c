"""Wide data streamed through an Agent: 3,000,000 rows x 1,000 float32
features in 10,000-row ``log_batch`` calls, with a reference (every row
profiled for drift) and ``sample_rate=0.01`` (1 % of the rows kept raw).

    python benches/bench_wide.py                       # 3M x 1,000
    python benches/bench_wide.py --rows 500000         # quicker

Two runs, each in a fresh process:

* stream: the whole stream, timed, with the process' peak extra memory
  beyond the input chunks (the agent's own budget is ``buffer_bytes``,
  64 MiB by default). The stream cycles through 8 distinct chunks so the
  input itself stays at 320 MiB.
* check: the first ``--check-rows`` rows as one array; ``agent.drift()``
  after streaming them must equal ``Reference.drift`` of the same array
  (every statistic of every feature, to 1e-9). In the same process the
  baselines a user would otherwise write: ``Reference.drift`` of the array
  (the offline path) and numpy (``searchsorted`` + ``bincount`` on the
  reference's cuts, plus mean and variance, per column per chunk).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_drift import PeakRss, rss  # noqa: E402

DISTINCT = 8


def reference(features: int) -> Any:
    import modeltap

    rng = np.random.default_rng(1)
    train = rng.normal(size=(50_000, features)).astype(np.float32)
    return modeltap.Reference.from_data(train, feature_names=names(features))


def names(features: int) -> list[str]:
    return [f"f{i}" for i in range(features)]


def chunk(k: int, rows: int, features: int) -> np.ndarray:
    rng = np.random.default_rng(100 + k)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    X[:, : features // 10] += np.float32(0.6)  # a tenth of the features drift
    return X


def agent(ref: Any, sample_rate: float, sink: Any) -> Any:
    import modeltap

    return modeltap.Agent(
        "wide",
        reference=ref,
        features=ref.feature_names,
        sample_rate=sample_rate,
        metrics_interval=None,
        window_s=86_400,
        sink=sink,
    )


def stream(rows: int, features: int, size: int, sample_rate: float) -> dict[str, Any]:
    ref = reference(features)
    chunks = [chunk(k, size, features) for k in range(DISTINCT)]
    preds = [c[:, 0].astype(np.float64) for c in chunks]
    shipped = {"bytes": 0}

    def sink(b: bytes) -> None:
        shipped["bytes"] += len(b)

    base = rss()
    monitor = PeakRss()
    a = agent(ref, sample_rate, sink)
    t0 = time.perf_counter()
    done = 0
    while done < rows:
        k = (done // size) % DISTINCT
        n = min(size, rows - done)
        a.log_batch(chunks[k][:n], preds[k][:n])
        done += n
    assert a.flush(300)
    seconds = time.perf_counter() - t0
    report = a.drift()
    peak = monitor.stop() - base
    a.close()
    s = a.stats()
    assert report.records == rows, report.records
    return {
        "seconds": seconds,
        "peak_extra_bytes": max(peak, 0),
        "stats": s,
        "drifted": len(report.drifted),
        "shipped_bytes": shipped["bytes"],
    }


def numpy_profile(ref: Any, X: np.ndarray, size: int) -> float:
    """Seconds for what a user would write: each column of each chunk
    binned on the reference's cuts, counted, and its sums kept."""
    cuts = [np.asarray(c["cuts"]) for c in ref.columns if c["role"] == "feature"]
    counts = [np.zeros(len(c) + 1, dtype=np.int64) for c in cuts]
    sums = np.zeros((2, X.shape[1]))
    t0 = time.perf_counter()
    for start in range(0, len(X), size):
        C = X[start : start + size]
        for j, c in enumerate(cuts):
            col = C[:, j].astype(np.float64)
            counts[j] += np.bincount(np.searchsorted(c, col), minlength=len(c) + 1)
            sums[0, j] += col.sum()
            sums[1, j] += (col * col).sum()
    return time.perf_counter() - t0


def check(rows: int, features: int, size: int, sample_rate: float) -> dict[str, Any]:
    ref = reference(features)
    X = np.concatenate([chunk(k % DISTINCT, size, features) for k in range(rows // size)])
    p = X[:, 0].astype(np.float64)
    a = agent(ref, sample_rate, lambda b: None)
    t0 = time.perf_counter()
    for start in range(0, len(X), size):
        a.log_batch(X[start : start + size], p[start : start + size])
    assert a.flush(300)
    agent_s = time.perf_counter() - t0
    online = a.drift()
    a.close()
    t0 = time.perf_counter()
    offline = ref.drift(X)
    offline_s = time.perf_counter() - t0
    numpy_s = numpy_profile(ref, X, size)
    worst = 0.0
    for r1, r2 in zip(online.rows, offline.rows, strict=True):
        assert r1["feature"] == r2["feature"]
        for k, v1 in r1.items():
            v2 = r2[k]
            if isinstance(v1, float) and isinstance(v2, float):
                if math.isnan(v1) or math.isnan(v2):
                    assert math.isnan(v1), (r1["feature"], k)
                    assert math.isnan(v2), (r1["feature"], k)
                    continue
                d = abs(v1 - v2) / max(abs(v1), abs(v2), 1e-300) if v1 != v2 else 0.0
                if abs(v1 - v2) > 1e-12:
                    worst = max(worst, d)
            else:
                assert v1 == v2, (r1["feature"], k, v1, v2)
    assert worst <= 1e-9, worst
    assert online.records == offline.records == len(X)
    return {
        "rows": len(X),
        "agent_seconds": agent_s,
        "offline_seconds": offline_s,
        "numpy_seconds": numpy_s,
        "worst_relative_difference": worst,
        "drifted": len(online.drifted),
        "same_drifted": sorted(online.drifted) == sorted(offline.drifted),
    }


def child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--rows",
        str(args.rows),
        "--features",
        str(args.features),
        "--chunk",
        str(args.chunk),
        "--sample-rate",
        str(args.sample_rate),
        "--check-rows",
        str(args.check_rows),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--features", type=int, default=1_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--sample-rate", type=float, default=0.01)
    ap.add_argument("--check-rows", type=int, default=300_000)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "stream":
        print(json.dumps(stream(args.rows, args.features, args.chunk, args.sample_rate)))
        return 0
    if args.worker == "check":
        print(json.dumps(check(args.check_rows, args.features, args.chunk, args.sample_rate)))
        return 0
    sys.path.insert(0, str(HERE))
    from envinfo import environment

    s = child("stream", args)
    c = child("check", args)
    values = args.rows * args.features
    st = s["stats"]
    print(
        f"{args.rows:,} rows x {args.features:,} float32 features through Agent.log_batch "
        f"({args.chunk:,}-row calls) with a reference, sample_rate={args.sample_rate}"
    )
    print(environment())
    print("| figure | value |")
    print("|---|---:|")
    print(f"| seconds (log_batch of every chunk, then flush) | {s['seconds']:.1f} |")
    print(f"| values profiled per second | {values / s['seconds'] / 1e6:,.0f} M |")
    print(f"| rows per second | {args.rows / s['seconds']:,.0f} |")
    print(f"| peak extra memory beyond the input (MiB) | {s['peak_extra_bytes'] / 2**20:,.0f} |")
    print(
        f"| rows kept raw / sampled out / dropped | {st['shipped']:,} / "
        f"{st['sampled_out']:,} / {st['dropped_full']:,} |"
    )
    print(f"| features drifted (of {args.features:,}) | {s['drifted']:,} |")
    cv = c["rows"] * args.features
    print()
    print(
        f"The first {c['rows']:,} rows as one array: agent.drift() against "
        "Reference.drift of the same array, and what each path costs"
    )
    print("| path | seconds | M values/s | x the agent |")
    print("|---|---:|---:|---:|")
    for label, key in (
        ("Agent.log_batch in chunks, then flush", "agent_seconds"),
        ("Reference.drift of the whole array (offline)", "offline_seconds"),
        ("numpy: searchsorted + bincount + sums per column per chunk", "numpy_seconds"),
    ):
        t = c[key]
        print(f"| {label} | {t:.2f} | {cv / t / 1e6:,.0f} | {t / c['agent_seconds']:.1f} |")
    print(
        f"drift equal to Reference.drift: worst relative difference "
        f"{c['worst_relative_difference']:.1e} over every statistic of every feature; "
        f"same drifted features: {c['same_drifted']} ({c['drifted']:,})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
