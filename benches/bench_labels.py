"""Ground truth at scale: labels sent to a running collector whose store
holds N predictions over a day, then realised performance over that day in
1-minute windows, each against what a user would otherwise write, in the
same run.

    python benches/bench_labels.py                      # 1,000,000 predictions
    python benches/bench_labels.py --predictions 10000000

Label import: ``Client.submit_labels`` of one label per prediction (ids as
the strings a label service has, int classes, event times) through the
``SubmitLabels`` RPC (checked, batched, stored exactly once), against a bulk
``INSERT`` of the same labels from a pandas DataFrame straight into a copy
of the store file (no collector, no checks, no exactly-once: the floor).
Performance: ``Client.performance(window_s=60)`` (accuracy, precision,
recall, F1, ROC AUC, log loss, Brier, ECE and their intervals per window)
against pandas (the join read out of DuckDB, ``groupby`` per minute) with
scikit-learn's accuracy, F1 and ROC AUC per window.

Needs a release build of modeltap and scikit-learn (a dev dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from envinfo import environment

DAY_US = 86_400 * 1_000_000
START_US = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z


def build_store(path: str, n: int) -> None:
    """A store of ``n`` predictions of model "m" spread over one day: ids
    ``p<i>``, classes i % 2, a probability pair per row."""
    import duckdb

    from modeltap.collector.store import StoreWriter

    w = StoreWriter(path)
    w.start()
    w.stop()
    con = duckdb.connect(path)
    con.execute(
        f"""
        INSERT INTO predictions (ts, model, version, agent_id, batch_seq, request_id,
                                 prediction, probabilities, flags)
        SELECT make_timestamptz({START_US} + (i * {DAY_US} // {n})), 'm', '1', 'bench',
               i // 10000, 'p' || i::VARCHAR, (i % 2)::DOUBLE,
               [1 - (0.3 + 0.4 * ((i * 7919) % 1000) / 1000.0),
                0.3 + 0.4 * ((i * 7919) % 1000) / 1000.0], 0
        FROM range({n}) t(i)
        """
    )
    con.execute(
        "INSERT INTO batches (agent_id, batch_seq, model, version, n_records) "
        f"SELECT 'bench', b, 'm', '1', 10000 FROM range({(n + 9999) // 10000}) t(b)"
    )
    con.execute("CHECKPOINT")
    con.close()


def labels_for(n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(n)]
    flip = rng.random(n) < 0.2  # the model is right 80 % of the time
    labels = (np.arange(n) % 2) ^ flip
    us = START_US + np.arange(n) * (DAY_US // n) + 3_600_000_000  # an hour later
    return ids, labels.astype(np.int64), us.astype("datetime64[us]")


def baseline_import(path: str, ids: list[str], labels: np.ndarray, ts: np.ndarray) -> float:
    import duckdb
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.DataFrame(
        {
            "ts": pd.to_datetime(ts, utc=True),
            "request_id": ids,
            "label": labels.astype(np.float64),
        }
    )
    con = duckdb.connect(path)
    con.register("df", df)
    con.execute(
        "INSERT INTO labels (ts, model, version, agent_id, batch_seq, seq, request_id, kind, "
        "label, received_at) SELECT ts, 'm', '', 'pandas', 0, 0, request_id, 'int', label, "
        "now() FROM df"
    )
    con.close()
    return time.perf_counter() - t0


def baseline_performance(path: str) -> tuple[float, int]:
    import duckdb
    from sklearn import metrics as skm

    t0 = time.perf_counter()
    con = duckdb.connect(path, read_only=True)
    df = con.execute(
        "SELECT p.ts, p.prediction, p.probabilities[2] AS p1, l.label FROM predictions p "
        "JOIN labels l ON l.model = p.model AND l.request_id = p.request_id"
    ).df()
    con.close()
    df["minute"] = df["ts"].dt.floor("min")
    windows = 0
    for _, g in df.groupby("minute"):
        y, f = g["label"].to_numpy(), g["prediction"].to_numpy()
        skm.accuracy_score(y, f)
        skm.f1_score(y, f, average="macro")
        if len(set(y)) == 2:
            skm.roc_auc_score(y, g["p1"].to_numpy())
        windows += 1
    return time.perf_counter() - t0, windows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictions", type=int, default=1_000_000)
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    from modeltap import _core

    if _core.DEBUG_BUILD:
        print("refusing to measure a debug build: pip install .", file=sys.stderr)
        return 2
    import modeltap

    n = args.predictions
    tmp = tempfile.mkdtemp()
    store = os.path.join(tmp, "s.duckdb")
    build_store(store, n)
    copy = os.path.join(tmp, "copy.duckdb")
    shutil.copy(store, copy)
    ids, labels, ts = labels_for(n)
    out: dict[str, float] = {"predictions": n}
    out["baseline_import_s"] = baseline_import(copy, ids, labels, ts)
    out["baseline_performance_s"], windows = baseline_performance(copy)

    port = 17_000 + os.getpid() % 1000
    cmd = [sys.executable, "-m", "modeltap", "collector", "--listen", f"127.0.0.1:{port}"]
    col = subprocess.Popen(
        [*cmd, "--store", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert col.stdout is not None
    while "listening on" not in (line := col.stdout.readline()):
        if not line:
            raise RuntimeError("the collector did not start")
    try:
        with modeltap.Client(f"127.0.0.1:{port}", timeout_s=120, read_timeout_s=600) as c:
            t0 = time.perf_counter()
            stored = c.submit_labels("m", ids, labels, ts)
            out["import_s"] = time.perf_counter() - t0
            assert stored == n, stored
            t0 = time.perf_counter()
            perf = c.performance("m", window_s=60)
            out["performance_s"] = time.perf_counter() - t0
            out["windows"] = perf.num_rows
            assert perf.num_rows == windows, (perf.num_rows, windows)
            counts = c.label_counts("m")
            assert counts["joined"] == n, counts
    finally:
        col.terminate()
        col.communicate(timeout=120)
    shutil.rmtree(tmp, ignore_errors=True)

    print(environment())
    print()
    print(f"{n:,} predictions over a day, one label each (int classes, event times):")
    print()
    print("| step | modeltap s | labels/s | baseline s | baseline | x baseline |")
    print("|---|---:|---:|---:|---|---:|")
    print(
        f"| label import | {out['import_s']:.2f} | {n / out['import_s']:,.0f} "
        f"| {out['baseline_import_s']:.2f} | pandas DataFrame bulk INSERT into the file "
        f"| {out['import_s'] / out['baseline_import_s']:.2f} |"
    )
    print(
        f"| performance, {windows:,} 1-minute windows | {out['performance_s']:.2f} | "
        f"| {out['baseline_performance_s']:.2f} | pandas groupby + scikit-learn per window "
        f"| {out['performance_s'] / out['baseline_performance_s']:.2f} |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
