"""Realised performance: every metric equal to scikit-learn's on the same
rows, intervals that hold the truth as often as they say, undefined metrics
said as such, and the windows of a store's labelled predictions."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pytest
from sklearn import metrics as skm

import modeltap
from modeltap.analysis.performance import (
    classifier_metrics,
    regressor_metrics,
    wilson,
)
from modeltap.collector import BackgroundCollector

TOL = 1e-9


def _close(a: float, b: float) -> None:
    assert math.isclose(a, b, rel_tol=TOL, abs_tol=TOL), (a, b)


def _same(rows: list[dict], expected: list[dict]) -> None:
    """The same windows with the same values (sums may differ in their
    last bits with the order they were added in)."""
    assert len(rows) == len(expected)
    for r, e in zip(rows, expected, strict=True):
        assert r.keys() == e.keys()
        for k, v in e.items():
            if isinstance(v, float):
                _close(r[k], v)
            else:
                assert r[k] == v, (k, r[k], v)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_classifier_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = 2_000
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)
    p1[:50] = 0.5  # ties
    pred = (p1 >= 0.5).astype(int)
    m = classifier_metrics(y.tolist(), pred.tolist(), np.column_stack([1 - p1, p1]))
    _close(m["accuracy"], skm.accuracy_score(y, pred))
    _close(m["precision"], skm.precision_score(y, pred, average="macro", zero_division=0))
    _close(m["recall"], skm.recall_score(y, pred, average="macro", zero_division=0))
    _close(m["f1"], skm.f1_score(y, pred, average="macro", zero_division=0))
    for c in (0, 1):
        _close(m[f"precision_{c}"], skm.precision_score(y, pred, pos_label=c, zero_division=0))
        _close(m[f"recall_{c}"], skm.recall_score(y, pred, pos_label=c, zero_division=0))
        _close(m[f"f1_{c}"], skm.f1_score(y, pred, pos_label=c, zero_division=0))
    _close(m["roc_auc"], skm.roc_auc_score(y, p1))
    _close(m["log_loss"], skm.log_loss(y, np.column_stack([1 - p1, p1])))
    _close(m["brier"], skm.brier_score_loss(y, p1))
    # ECE by its definition: bins of width 0.1 of the top probability,
    # whose class (the first on a tie) is right or not.
    conf = np.maximum(p1, 1 - p1)
    hit = (p1 > 0.5).astype(int) == y
    bins = np.minimum((conf * 10).astype(int), 9)
    ece = sum(
        (bins == b).mean() * abs(hit[bins == b].mean() - conf[bins == b].mean())
        for b in range(10)
        if (bins == b).any()
    )
    _close(m["ece"], ece)
    assert m["accuracy_lo"] < m["accuracy"] < m["accuracy_hi"]
    assert m["roc_auc_lo"] < m["roc_auc"] < m["roc_auc_hi"]
    # One probability: that of class 1.
    m1 = classifier_metrics(y.tolist(), pred.tolist(), p1)
    _close(m1["roc_auc"], m["roc_auc"])


def test_multiclass_and_text_classes_equal_scikit_learn():
    rng = np.random.default_rng(7)
    n, k = 3_000, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    m = classifier_metrics(y.tolist(), pred.tolist(), p)
    _close(m["accuracy"], skm.accuracy_score(y, pred))
    _close(m["f1"], skm.f1_score(y, pred, average="macro"))
    _close(m["roc_auc"], skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    _close(m["log_loss"], skm.log_loss(y, p))
    names = np.array(["ant", "bee", "cat", "dog"])
    mt = classifier_metrics(names[y].tolist(), names[pred].tolist(), p, classes=list(names))
    _close(mt["roc_auc"], m["roc_auc"])
    _close(mt["f1_cat"], skm.f1_score(y, pred, labels=[2], average="macro"))


def test_regressor_metrics_equal_scikit_learn():
    rng = np.random.default_rng(3)
    y = rng.normal(10, 3, 5_000)
    y[:100] = 0.0  # MAPE leaves these out
    f = y + rng.normal(0, 1, y.size)
    m = regressor_metrics(y, f)
    _close(m["mae"], skm.mean_absolute_error(y, f))
    _close(m["rmse"], math.sqrt(skm.mean_squared_error(y, f)))
    _close(m["r2"], skm.r2_score(y, f))
    nz = y != 0
    _close(m["mape"], skm.mean_absolute_percentage_error(y[nz], f[nz]))
    assert "100" not in m["mape_note"]
    assert "4900" in m["mape_note"]
    assert m["mae_lo"] < m["mae"] < m["mae_hi"]
    assert m["rmse_lo"] < m["rmse"] < m["rmse_hi"]


def test_undefined_metrics_say_why():
    m = classifier_metrics([1, 1, 1], [1, 0, 1], np.array([0.9, 0.4, 0.8]))
    assert math.isnan(m["roc_auc"])
    assert "one class only" in m["roc_auc_note"]
    r = regressor_metrics(np.zeros(4), np.ones(4))
    assert math.isnan(r["mape"])
    assert "every truth is 0" in r["mape_note"]
    assert math.isnan(r["r2"])
    assert "constant" in r["r2_note"]


def test_wilson_intervals_cover_as_often_as_they_say():
    rng = np.random.default_rng(11)
    p, n, trials = 0.83, 200, 4_000
    ks = rng.binomial(n, p, trials)
    covered = sum(lo <= p <= hi for lo, hi in (wilson(int(k), n) for k in ks))
    assert 0.93 < covered / trials < 0.97
    assert wilson(0, 10)[0] == 0.0
    assert wilson(10, 10)[1] == pytest.approx(1.0, abs=1e-12)


def test_performance_per_window_from_a_store(tmp_path: Path, monkeypatch):
    """Predictions of two hours, labels for most of them (one corrected):
    one row per window, its metrics equal to scikit-learn's on that
    window's labelled rows."""
    path = tmp_path / "s.duckdb"
    rng = np.random.default_rng(5)
    n = 600
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.4 * y + rng.uniform(0, 0.6, n), 0, 1)
    pred = (p1 >= 0.5).astype(int)
    with BackgroundCollector(path) as col:
        a = modeltap.Agent("m", "1", collector=col.addr, metrics_interval=None)
        base = 1_800_000_000.0  # an hour boundary (divisible by 3600)
        ts = base + np.arange(n) * (7200 / n)
        ids = [f"r{i}" for i in range(n)]
        # Event times through the agent's own clock are now; write the
        # predictions' ts afterwards for two fixed hours.
        for i in range(n):
            a.log(np.array([float(i)]), int(pred[i]), [1 - p1[i], p1[i]], request_id=ids[i])
        assert a.flush(30)
        a.close()
    con = duckdb.connect(str(path))
    con.executemany(
        "UPDATE predictions SET ts = make_timestamptz(?) WHERE request_id = ?",
        [(int(t * 1e6), r) for t, r in zip(ts, ids, strict=True)],
    )
    labelled = [i for i in range(n) if i % 10 != 0]  # a tenth never labelled
    con.executemany(
        "INSERT INTO labels VALUES (make_timestamptz(?), 'm', '', 'src', 0, ?, ?, "
        "'int', ?, NULL, now())",
        [(int((base + 9000) * 1e6), j, ids[i], float(y[i])) for j, i in enumerate(labelled)],
    )
    wrong = labelled[0]
    con.execute(  # an earlier, wrong label for one id: the latest wins
        "INSERT INTO labels VALUES (make_timestamptz(?), 'm', '', 'src', 1, 0, ?, "
        "'int', ?, NULL, now())",
        [int((base + 8000) * 1e6), ids[wrong], float(1 - y[wrong])],
    )
    con.close()
    with modeltap.Store(path) as st:
        t = st.performance("m", window_s=3600).to_pylist()
        sub = st.performance("m", window_s=3600, metrics=["accuracy", "roc_auc"])
        # Run by run (a statement per window here) gives the same rows.
        import modeltap.analysis.performance as perf

        monkeypatch.setattr(perf, "CHUNK_PREDICTIONS", 100)
        assert perf._runs({0: 300, 3600: 300}, 3600) == [(0, 3600), (3600, 7200)]
        _same(st.performance("m", window_s=3600).to_pylist(), t)
        minutes = st.performance("m", window_s=60).to_pylist()
        monkeypatch.setattr(perf, "CHUNK_PREDICTIONS", 1_000_000)
        _same(st.performance("m", window_s=60).to_pylist(), minutes)
    assert len(t) == 2
    assert set(sub.column_names) == {
        "window_start",
        "n",
        "n_labelled",
        "accuracy",
        "accuracy_lo",
        "accuracy_hi",
        "roc_auc",
        "roc_auc_lo",
        "roc_auc_hi",
    }
    for w, row in enumerate(t):
        rows = [i for i in labelled if int((ts[i] - base) // 3600) == w]
        assert row["window_start"].timestamp() == base + 3600 * w
        assert row["n"] == n // 2
        assert row["n_labelled"] == len(rows)
        _close(row["accuracy"], skm.accuracy_score(y[rows], pred[rows]))
        _close(row["f1"], skm.f1_score(y[rows], pred[rows], average="macro"))
        _close(row["roc_auc"], skm.roc_auc_score(y[rows], p1[rows]))
        _close(row["log_loss"], skm.log_loss(y[rows], np.column_stack([1 - p1, p1])[rows]))
    with pytest.raises(ValueError, match="no metric 'mae'"), modeltap.Store(path) as st:
        st.performance("m", metrics=["mae"])


def _store(path: Path, preds: list, probs: list | None, labels: list, kind: str) -> list[str]:
    """A store of predictions (one per second from an hour boundary) and
    their labels of the given kind, written through a real collector and
    then given fixed times."""
    n = len(preds)
    ids = [f"r{i}" for i in range(n)]
    with BackgroundCollector(path) as col:
        a = modeltap.Agent("m", "1", collector=col.addr, metrics_interval=None)
        for i in range(n):
            a.log([float(i)], preds[i], None if probs is None else probs[i], request_id=ids[i])
        assert a.flush(30)
        a.close()
    base = 1_800_000_000
    con = duckdb.connect(str(path))
    con.executemany(
        "UPDATE predictions SET ts = make_timestamptz(?) WHERE request_id = ?",
        [((base + i) * 1_000_000, ids[i]) for i in range(n)],
    )
    text = kind == "label"
    con.executemany(
        "INSERT INTO labels VALUES (make_timestamptz(?), 'm', '', 'src', 0, ?, ?, ?, ?, ?, now())",
        [
            (
                (base + 9000) * 1_000_000,
                i,
                ids[i],
                kind,
                None if text else float(labels[i]),
                labels[i] if text else None,
            )
            for i in range(n)
        ],
    )
    con.close()
    return ids


def test_regression_per_window_from_a_store_equals_scikit_learn(tmp_path):
    rng = np.random.default_rng(9)
    n = 1_200  # 20 minutes of one prediction a second
    y = rng.normal(5, 2, n)
    y[::50] = 0.0
    f = y + rng.normal(0, 0.5, n)
    _store(tmp_path / "s.duckdb", f.tolist(), None, y.tolist(), "number")
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        rows = st.performance("m", window_s=600).to_pylist()
    assert len(rows) == 2
    for w, row in enumerate(rows):
        sl = slice(600 * w, 600 * (w + 1))
        yt, yp = y[sl], f[sl]
        nz = yt != 0
        _close(row["mae"], skm.mean_absolute_error(yt, yp))
        _close(row["rmse"], math.sqrt(skm.mean_squared_error(yt, yp)))
        _close(row["r2"], skm.r2_score(yt, yp))
        _close(row["mape"], skm.mean_absolute_percentage_error(yt[nz], yp[nz]))
        m = regressor_metrics(yt, yp)
        for k in ("mae_lo", "mae_hi", "rmse_lo", "rmse_hi"):
            _close(row[k], m[k])


def test_multiclass_text_classes_per_window_from_a_store(tmp_path):
    rng = np.random.default_rng(4)
    n, k = 900, 3
    names = ["ant", "bee", "cat"]
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    _store(
        tmp_path / "s.duckdb",
        [names[c] for c in pred],
        [list(r) for r in p],
        [names[c] for c in y],
        "label",
    )
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        (row,) = st.performance("m", window_s=3600, classes=names).to_pylist()
        unnamed = st.performance("m", window_s=3600).to_pylist()[0]
    _close(row["accuracy"], skm.accuracy_score(y, pred))
    _close(row["f1"], skm.f1_score(y, pred, average="macro"))
    _close(row["f1_bee"], skm.f1_score(y, pred, labels=[1], average="macro"))
    _close(row["roc_auc"], skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    _close(row["log_loss"], skm.log_loss(y, p))
    assert "brier" not in row or row["brier"] is None  # binary only
    # Without classes, text labels name no probability column.
    assert unnamed["log_loss_note"] == "a label names no class of the probabilities"
    _close(unnamed["accuracy"], row["accuracy"])


def test_score_metrics_of_very_many_classes_are_declined_with_a_reason(tmp_path):
    k = 40
    rng = np.random.default_rng(2)
    n = 200
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k), n)
    _store(tmp_path / "s.duckdb", [int(c) for c in y], [list(r) for r in p], list(y), "int")
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        (row,) = st.performance("m", window_s=3600).to_pylist()
    assert row["accuracy"] == 1.0  # the predictions are the labels here
    assert "at most 32" in row["roc_auc_note"]
    assert row.get("log_loss") is None
