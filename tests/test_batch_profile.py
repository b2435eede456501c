"""A large ``log_batch`` call profiles its rows itself (numeric features in
cache-sized tiles over threads, the rest row by row) and hands the drain
thread one window profile; only the rows sampled in travel through the ring.
The result must be the profile the drain thread would have built record by
record, and ``Reference.drift`` of the same rows, whatever the layout."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import modeltap
from counters_util import settled
from report_util import same_reports

NAMES = [f"x{i}" for i in range(70)]  # past the compact-binner threshold
ROWS = 3_001  # not a multiple of any tile or thread split


def _same(a: modeltap.DriftReport, b: modeltap.DriftReport, rel: float = 1e-12) -> None:
    same_reports(a, b, rel)


def _data(rows: int = ROWS, seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(NAMES)))
    X[:, 1] += 0.7
    X[:, 2] = rng.lognormal(0, 1.5, rows)
    X[:, 3] = rng.poisson(2, rows)
    X = X.astype(np.float32).astype(np.float64)  # the same values as float32
    X[::37, 4] = np.nan
    X[11, 5] = np.inf
    X[12, 5] = -np.inf
    preds = rng.normal(size=rows)
    probs = rng.dirichlet([1, 1, 1], size=rows)
    return X, preds, probs


def _reference() -> modeltap.Reference:
    rng = np.random.default_rng(9)
    R = rng.normal(size=(4_000, len(NAMES)))
    R[:, 2] = rng.lognormal(0, 1.5, 4_000)
    R[:, 3] = rng.poisson(2, 4_000)
    return modeltap.Reference.from_data(
        R,
        feature_names=NAMES,
        predictions=rng.normal(size=4_000),
        probabilities=rng.dirichlet([1, 1, 1], size=4_000),
    )


def _agent(ref: modeltap.Reference, **kw) -> modeltap.Agent:
    kw.setdefault("metrics_interval", None)
    kw.setdefault("window_s", 86_400)
    return modeltap.Agent("m", reference=ref, features=NAMES, **kw)


def _via_agent(ref, chunks, **kw) -> tuple[modeltap.DriftReport, dict]:
    a = _agent(ref, **kw)
    for X, p, q in chunks:
        a.log_batch(X, p, q)
    assert a.flush(30)
    rep = a.drift()
    a.close()
    return rep, a.stats()


def test_one_large_call_equals_the_drain_threads_profile_and_reference_drift():
    ref = _reference()
    X, p, q = _data()
    # Record by record on the drain thread: batches below the threshold.
    small = [(X[i : i + 100], p[i : i + 100], q[i : i + 100]) for i in range(0, ROWS, 100)]
    by_record, _ = _via_agent(ref, small)
    in_call, _ = _via_agent(ref, [(X, p, q)])
    offline = ref.drift(X, predictions=p, probabilities=q)
    assert in_call.records == ROWS
    _same(by_record, in_call)
    _same(offline, in_call)


@pytest.mark.parametrize(
    "layout",
    ["C f64", "F f64", "C f32", "F f32", "rows of a wider matrix", "every other row"],
)
def test_every_layout_gives_the_same_profile(layout):
    ref = _reference()
    X, p, q = _data()
    want = ref.drift(X, predictions=p, probabilities=q)
    if layout == "C f64":
        Y = np.ascontiguousarray(X)
    elif layout == "F f64":
        Y = np.asfortranarray(X)
    elif layout == "C f32":
        Y = np.ascontiguousarray(X, dtype=np.float32)
    elif layout == "F f32":
        Y = np.asfortranarray(X, dtype=np.float32)
    elif layout == "rows of a wider matrix":
        W = np.zeros((ROWS, len(NAMES) + 5))
        W[:, 3 : 3 + len(NAMES)] = X
        Y = W[:, 3 : 3 + len(NAMES)]
    else:
        D = np.repeat(X, 2, axis=0)
        D[1::2] = 1e9  # the rows skipped
        Y = D[::2]
    assert np.array_equal(np.asarray(Y, dtype=np.float64), X, equal_nan=True)
    got, stats = _via_agent(ref, [(Y, p, q)])
    _same(want, got)
    assert stats["logged"] == ROWS
    assert stats["flagged"] == int(np.sum(~np.isfinite(X).all(axis=1)))


def test_sampled_rows_travel_and_every_row_is_profiled_once():
    ref = _reference()
    X, p, q = _data(rows=20_000, seed=8)
    got: list[bytes] = []
    a = _agent(ref, sink=got.append, sample_rate=0.1)
    a.log_batch(X, p, q)
    a.log_batch(X[:50], p[:50], q[:50])  # a small one, profiled on the drain thread
    assert a.flush(30)
    rep = a.drift()
    a.close()
    s = a.stats()
    shipped = sum(modeltap.decode_batch(b)["n_records"] for b in got)
    assert rep.records == 20_050  # profiled exactly once each
    assert s["logged"] == 20_050
    assert s["shipped"] == shipped
    assert s["sampled_out"] == 20_050 - shipped
    assert 1_700 < shipped < 2_400
    assert s["dropped_full"] == s["invalid"] == s["errors"] == 0

    # the rows that travel are the rows logged
    def keys(M: np.ndarray) -> list[bytes]:
        return [r.tobytes() for r in np.nan_to_num(M, nan=-7.0, posinf=7e7, neginf=-7e7)]

    rows = set(keys(X))
    seen = 0
    for b in got:
        d = modeltap.decode_batch(b, columns=True)
        F = np.asarray(d["features"], dtype=np.float64).reshape(d["n_records"], len(NAMES))
        assert all(k in rows for k in keys(F))
        seen += d["n_records"]
    assert seen == shipped


def test_categories_and_labels_of_a_large_frame_match_reference_drift():
    rng = np.random.default_rng(2)
    ref_df = pd.DataFrame(rng.normal(size=(5_000, 3)), columns=["a", "b", "c"])
    ref_df["k"] = rng.choice(["p", "q", "r"], size=5_000)
    labels = rng.choice(["cat", "dog"], size=5_000)
    ref = modeltap.Reference.from_data(ref_df, predictions=labels)
    cur = pd.DataFrame(rng.normal(0.2, 1.1, size=(12_000, 3)), columns=["a", "b", "c"])
    cur["k"] = rng.choice(["p", "q", "s", None], size=12_000)
    cur_labels = rng.choice(["cat", "dog", "cow"], size=12_000)
    want = ref.drift(cur, predictions=cur_labels)
    # the labels learned through a small call first, then a large one
    a = modeltap.Agent("m", reference=ref, metrics_interval=None, window_s=86_400)
    a.log_batch(cur.iloc[:10], list(cur_labels[:10]))
    a.log_batch(cur.iloc[10:], list(cur_labels[10:]))
    assert a.flush(30)
    got = a.drift()
    a.close()
    _same(want, got, rel=1e-9)


def test_a_stalled_pipeline_drops_the_batch_with_its_profile():
    ref = _reference()
    X, p, q = _data(rows=2_000)
    gate = threading.Event()

    def stuck(_batch: bytes) -> None:
        gate.wait(30)

    a = _agent(ref, sink=stuck, buffer_size=8, max_pending_records=8, batch_size=4)
    try:
        for _ in range(5):
            a.log_batch(X, p, q)
        s = a.stats()
        assert s["logged"] == 10_000
        assert s["dropped_full"] > 0
        # a batch's profile waits in the ring too, and is no record
        assert s["in_ring"] <= s["pending"], s
        assert settled(s) == s["logged"]
    finally:
        gate.set()
        a.close()
    rep = a.drift()
    # a batch is profiled whole (its profile went in) or not at all (its
    # rows were dropped with it); no row twice
    assert 2_000 <= rep.records <= 10_000
    assert rep.records % 2_000 == 0, rep.records


def test_a_profile_wider_than_a_ring_slot_travels_in_column_groups():
    # A 1 MiB buffer leaves 128 KiB of side room for one ring slot, and
    # 32 KiB for one profile part: the profile of 1,000 numeric columns
    # needs several. Profiled in the call, only the 0.2 % sampled in enter
    # the ring, so a stalled exporter drops nothing (profiled row by row
    # on the drain thread, 6,000 rows would not fit; nor would 1 % of them
    # in the 256 KiB of sealed batches such a buffer may hold).
    rng = np.random.default_rng(4)
    names = [f"w{i}" for i in range(1_000)]
    ref = modeltap.Reference.from_data(
        rng.normal(size=(2_000, len(names))).astype(np.float32), feature_names=names
    )
    X = rng.normal(0.1, 1, size=(3_001, len(names))).astype(np.float32)
    X[::50, 7] = np.nan
    gate = threading.Event()

    def stuck(_batch: bytes) -> None:
        gate.wait(30)

    a = modeltap.Agent(
        "m",
        reference=ref,
        features=names,
        metrics_interval=None,
        window_s=86_400,
        sink=stuck,
        buffer_bytes=1 << 20,
        sample_rate=0.002,
    )
    try:
        a.log_batch(X, np.zeros(len(X)))
        a.log_batch(X, np.zeros(len(X)))
        s = a.stats()
        assert s["logged"] == 2 * len(X)
        assert s["dropped_full"] == s["invalid"] == 0, s
        assert s["sampled_out"] > 2 * len(X) * 0.99, s
    finally:
        gate.set()
    assert a.flush(30)
    got = a.drift()
    a.close()
    assert got.records == 2 * len(X)
    _same(ref.drift(np.vstack([X, X])), got)
