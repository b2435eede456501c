"""Realised performance per window: predictions joined to their latest
label, the metrics a model is judged by, each with an interval from the
window's own rows.

Classifiers: accuracy, macro precision, recall and F1 (and per class),
ROC AUC (binary; one-vs-rest macro for several classes), log loss, Brier
score (binary) and expected calibration error (10 equal-width bins of the
top probability). Regressors: MAE, RMSE, MAPE (over rows whose truth is not
0), R². Each equals scikit-learn's function on the same rows.

Intervals (95 %): Wilson's for accuracy and for macro precision and recall
(over the rows each averages); Hanley and McNeil's standard error for ROC
AUC; the normal approximation of the mean for MAE, and the delta method
for RMSE. A window where a metric is undefined (one class for AUC, no
nonzero truth for MAPE, constant truth for R²) has it NULL and says why in
``<metric>_note``.

Probabilities name classes by position: ``probabilities[i]`` is the
probability of int class ``i`` (binary: one value is the probability of
class 1), or of ``classes[i]`` when ``classes`` is given (needed for
classes spelled as text)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from modeltap.reads import Reads, TimeArg, parse_time, time_range

Z = 1.959963984540054  # the normal quantile of a 95 % interval
ECE_BINS = 10
CHUNK_PREDICTIONS = 1_000_000  # predictions one statement joins at most
MAX_SCORED_CLASSES = 32  # probability columns the score metrics take at most
MAX_CLASSES = 64  # classes with metrics of their own; more are counted but not listed
EPS = 1e-15  # probabilities clipped to [EPS, 1 - EPS] in log loss, as scikit-learn does

CLASSIFIER_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
    "brier",
    "ece",
)
REGRESSOR_METRICS = ("mae", "rmse", "mape", "r2")


def wilson(k: float, n: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``k / n`` (95 %)."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + Z * Z / n
    c = (p + Z * Z / (2 * n)) / d
    h = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _auc(score: np.ndarray, positive: np.ndarray) -> tuple[float, str | None]:
    """ROC AUC by the rank-sum (ties take their mean rank)."""
    n1 = int(positive.sum())
    n0 = positive.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan, "one class only in the window: ROC AUC is undefined"
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    # Mean (1-based) rank of each run of equal scores.
    new = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], s.size]
    ranks = ((starts + ends + 1) / 2.0)[np.cumsum(new) - 1]
    r1 = ranks[positive[order]].sum()
    return float((r1 - n1 * (n1 + 1) / 2.0) / (n1 * n0)), None


def _auc_interval(a: float, n1: int, n0: int) -> tuple[float, float]:
    """Hanley and McNeil's standard error of an AUC."""
    if not math.isfinite(a) or n1 == 0 or n0 == 0:
        return math.nan, math.nan
    q1 = a / (2 - a)
    q2 = 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, a - Z * se), min(1.0, a + Z * se)


def classifier_metrics(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    proba: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """The classifier metrics of one window's labelled rows (``proba``: n x
    k probabilities by class position, or None)."""
    yt = np.asarray(y_true, dtype=object)
    yp = np.asarray(y_pred, dtype=object)
    n = yt.size
    out: dict[str, Any] = {"n_labelled": n}
    if n == 0:
        return out
    seen = sorted({*yt.tolist(), *yp.tolist()}, key=lambda v: (str(type(v)), v))
    correct = yt == yp
    k = int(correct.sum())
    out["accuracy"] = k / n
    out["accuracy_lo"], out["accuracy_hi"] = wilson(k, n)
    precisions, recalls, f1s = [], [], []
    tp_sum = pp_sum = ap_sum = 0
    for c in seen:
        tp = int(((yp == c) & correct).sum())
        pp = int((yp == c).sum())
        ap = int((yt == c).sum())
        prec = tp / pp if pp else 0.0
        rec = tp / ap if ap else 0.0
        f1 = 2 * tp / (pp + ap) if (pp + ap) else 0.0
        precisions.append(prec)
        recalls.append(rec)
        f1s.append(f1)
        tp_sum += tp
        pp_sum += pp
        ap_sum += ap
        if len(seen) <= MAX_CLASSES:
            out[f"precision_{c}"] = prec
            out[f"recall_{c}"] = rec
            out[f"f1_{c}"] = f1
    out["precision"] = float(np.mean(precisions))
    out["recall"] = float(np.mean(recalls))
    out["f1"] = float(np.mean(f1s))
    # The macro means' intervals: Wilson's over the rows each averages.
    out["precision_lo"], out["precision_hi"] = _around(out["precision"], pp_sum / len(seen))
    out["recall_lo"], out["recall_hi"] = _around(out["recall"], ap_sum / len(seen))
    if proba is None:
        return out
    p = np.asarray(proba, dtype=np.float64)
    names = list(classes) if classes is not None else None
    if p.ndim == 1 or p.shape[1] == 1:  # one value: the probability of class 1
        p1 = p.reshape(-1)
        p = np.column_stack([1 - p1, p1])
        if names is None:
            names = [0, 1]
    if names is None:
        names = list(range(p.shape[1]))
    if len(names) != p.shape[1]:
        out["roc_auc_note"] = f"{p.shape[1]} probabilities for {len(names)} classes"
        return out
    index = {c: i for i, c in enumerate(names)}
    ti = np.array([index.get(v, -1) for v in yt.tolist()], dtype=np.int64)
    if (ti < 0).any():
        out["log_loss_note"] = "a label names no class of the probabilities"
        return out
    pc = np.clip(p, EPS, 1 - EPS)
    # scikit-learn's log_loss scales each row's clipped probabilities to 1.
    pc = pc / pc.sum(axis=1, keepdims=True)
    out["log_loss"] = float(-np.log(pc[np.arange(n), ti]).mean())
    conf = p.max(axis=1)
    top = p.argmax(axis=1)
    hit = top == ti
    bins = np.minimum((conf * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    ece = 0.0
    for b in range(ECE_BINS):
        m = bins == b
        if m.any():
            ece += m.sum() / n * abs(hit[m].mean() - conf[m].mean())
    out["ece"] = float(ece)
    if p.shape[1] == 2:
        pos = ti == 1
        out["brier"] = float(((p[:, 1] - pos) ** 2).mean())
        auc, why = _auc(p[:, 1], pos)
        n1 = int(pos.sum())
        out["roc_auc_lo"], out["roc_auc_hi"] = _auc_interval(auc, n1, n - n1)
    else:
        aucs = []
        why = None
        for j in range(p.shape[1]):
            pos = ti == j
            if not pos.any():
                continue  # scikit-learn's one-vs-rest needs every class present
            a, w = _auc(p[:, j], pos)
            if w:
                why = w
            aucs.append(a)
        if len(aucs) < p.shape[1]:
            auc, why = math.nan, "not every class is in the window: ROC AUC is undefined"
        else:
            auc = float(np.mean(aucs))
        out["roc_auc_lo"], out["roc_auc_hi"] = math.nan, math.nan
    out["roc_auc"] = auc
    if why:
        out["roc_auc_note"] = why
    return out


def _around(p: float, n: float) -> tuple[float, float]:
    return wilson(p * n, n) if n > 0 else (math.nan, math.nan)


def regressor_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """The regressor metrics of one window's labelled rows."""
    y = np.asarray(y_true, dtype=np.float64)
    f = np.asarray(y_pred, dtype=np.float64)
    n = y.size
    out: dict[str, Any] = {"n_labelled": n}
    if n == 0:
        return out
    e = f - y
    ae = np.abs(e)
    mae = float(ae.mean())
    mse = float((e * e).mean())
    out["mae"] = mae
    se = float(ae.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    out["mae_lo"], out["mae_hi"] = mae - Z * se, mae + Z * se
    out["rmse"] = math.sqrt(mse)
    if n > 1 and mse > 0:  # the delta method: sd(e^2) / (2 rmse sqrt(n))
        se_r = float((e * e).std(ddof=1)) / (2 * math.sqrt(mse) * math.sqrt(n))
        out["rmse_lo"], out["rmse_hi"] = max(0.0, out["rmse"] - Z * se_r), out["rmse"] + Z * se_r
    nz = y != 0
    if nz.any():
        out["mape"] = float((ae[nz] / np.abs(y[nz])).mean())
        if not nz.all():
            out["mape_note"] = f"over the {int(nz.sum())} rows whose truth is not 0"
    else:
        out["mape"] = math.nan
        out["mape_note"] = "every truth is 0: MAPE is undefined"
    sst = float(((y - y.mean()) ** 2).sum())
    if sst > 0:
        out["r2"] = 1 - float((e * e).sum()) / sst
    else:
        out["r2"] = math.nan
        out["r2_note"] = "the truth is constant in the window: R² is undefined"
    return out


def _class_key(text: str, number: str) -> str:
    """SQL: a class as text (an int class spelled without a fraction)."""
    return (
        f"coalesce({text}, CASE WHEN {number} = trunc({number}) AND abs({number}) < 1e18 "
        f"THEN CAST(CAST({number} AS BIGINT) AS VARCHAR) ELSE CAST({number} AS VARCHAR) END)"
    )


def performance(
    reads: Reads,
    model: str,
    version: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    *,
    window_s: float = 3600.0,
    metrics: Sequence[str] | None = None,
    classes: Sequence[Any] | None = None,
) -> Any:
    """One row per ``window_s`` window of prediction time (``window_start``,
    ``n`` predictions, ``n_labelled``, each metric with its ``_lo`` and
    ``_hi`` where it has an interval, ``<metric>_note`` where one is
    undefined), as a ``pyarrow.Table``. ``metrics`` keeps some of them.

    Computed in the store from counts and sums per window (confusion
    counts, rank sums, calibration bins), so a day of minutes over millions
    of labelled predictions never comes out row by row."""
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)):
        raise ValueError(f"window_s must be a number of seconds, not {window_s!r}")
    if not 0 < window_s <= 366 * 86400:
        raise ValueError(f"window_s must be in (0, 366 days], not {window_s!r}")
    us = max(1, int(window_s * 1e6))
    conds: list[str] = ["p.model = ?"]
    params: list[Any] = [model]
    if version is not None:
        conds.append("p.version = ?")
        params.append(version)
    time_range(conds, params, "p.ts", parse_time(since), parse_time(until))
    where = " AND ".join(conds)
    w = f"(epoch_us(p.ts) // {us}) * {us}"
    totals = {
        int(r["w"]): int(r["n"])
        for r in reads.sql(
            f"SELECT {w} AS w, count(*) AS n FROM predictions p WHERE {where} GROUP BY 1",
            params,
        ).to_pylist()
    }
    # What the labels and probabilities are, each read without the join.
    kind = reads.sql(
        "SELECT count(*) FILTER (kind = 'number') AS numbers, count(*) AS n "
        "FROM labels WHERE model = ?",
        [model],
    ).to_pylist()[0]
    regression = bool(kind["numbers"])
    per: dict[int, dict[str, Any]] = {}
    if not kind["n"] or not totals:
        return _table(totals, per, regression, metrics)
    shape = reads.sql(
        "SELECT min(len(probabilities)) AS lo, max(len(probabilities)) AS hi, "
        f"count(*) FILTER (probabilities IS NULL) AS none FROM predictions p WHERE {where}",
        params,
    ).to_pylist()[0]
    # Runs of whole windows of at most CHUNK_PREDICTIONS predictions, one
    # statement each: what a statement holds stays bounded however long the
    # range (windows never straddle two runs).
    for lo_us, hi_us in _runs(totals, us):
        cw = f"{where} AND p.ts >= make_timestamptz(?) AND p.ts < make_timestamptz(?)"
        cp = [*params, lo_us, hi_us]
        # The latest label of each request id of these predictions (what
        # latest_labels holds, of the three columns needed here only).
        latest = (
            "SELECT request_id, unnest(arg_max({'kind': kind, 'label': label, 'label_text': "
            "label_text}, (ts, received_at, agent_id, batch_seq, seq))) FROM labels "
            "WHERE model = ? AND request_id IN (SELECT p.request_id FROM predictions p "
            f"WHERE {cw}) GROUP BY request_id"
        )
        joined = (
            f"SELECT {w} AS w, p.prediction, p.prediction_label, p.probabilities, "
            f"l.kind, l.label, l.label_text FROM predictions p JOIN ({latest}) l "
            f"ON l.request_id = p.request_id WHERE {cw}"
        )
        jp = [model, *cp, *cp]
        if regression:
            per.update(_regression_sql(reads, joined, jp))
        else:
            per.update(_classification_sql(reads, joined, jp, classes, shape))
    return _table(totals, per, regression, metrics)


def _runs(totals: dict[int, int], us: int) -> list[tuple[int, int]]:
    """Consecutive windows (by start, in Unix µs) grouped into runs of at
    most CHUNK_PREDICTIONS predictions (a larger window alone), as
    [start, end) ranges."""
    runs: list[tuple[int, int]] = []
    start = None
    count = 0
    for w in sorted(totals):
        if start is not None and count + totals[w] > CHUNK_PREDICTIONS:
            runs.append((start, w))
            start, count = None, 0
        if start is None:
            start = w
        count += totals[w]
        end = w + us
    if start is not None:
        runs.append((start, end))
    return runs


def _regression_sql(reads: Reads, joined: str, params: list[Any]) -> dict[int, dict[str, Any]]:
    rows = reads.sql(
        "SELECT w, count(*) AS n, sum(abs(e)) AS sae, sum(e * e) AS sse, "
        "sum(e * e * e * e) AS s4, sum(abs(e) / abs(y)) FILTER (y <> 0) AS sape, "
        "count(*) FILTER (y <> 0) AS nz, sum((y - ym) * (y - ym)) AS sst FROM ("
        "SELECT w, label AS y, prediction - label AS e, avg(label) OVER (PARTITION BY w) AS ym "
        f"FROM ({joined}) WHERE prediction IS NOT NULL AND label IS NOT NULL) GROUP BY w",
        params,
    ).to_pylist()
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        n = int(r["n"])
        m: dict[str, Any] = {"n_labelled": n}
        mae = r["sae"] / n
        mse = r["sse"] / n
        m["mae"] = mae
        if n > 1:
            var = max(0.0, (r["sse"] - n * mae * mae) / (n - 1))
            se = math.sqrt(var / n)
            m["mae_lo"], m["mae_hi"] = mae - Z * se, mae + Z * se
        m["rmse"] = math.sqrt(mse)
        if n > 1 and mse > 0:
            var4 = max(0.0, (r["s4"] - n * mse * mse) / (n - 1))
            se_r = math.sqrt(var4) / (2 * math.sqrt(mse) * math.sqrt(n))
            m["rmse_lo"], m["rmse_hi"] = max(0.0, m["rmse"] - Z * se_r), m["rmse"] + Z * se_r
        nz = int(r["nz"])
        if nz:
            m["mape"] = r["sape"] / nz
            if nz < n:
                m["mape_note"] = f"over the {nz} rows whose truth is not 0"
        else:
            m["mape"] = math.nan
            m["mape_note"] = "every truth is 0: MAPE is undefined"
        if r["sst"] and r["sst"] > 0:
            m["r2"] = 1 - r["sse"] / r["sst"]
        else:
            m["r2"] = math.nan
            m["r2_note"] = "the truth is constant in the window: R² is undefined"
        out[int(r["w"])] = m
    return out


def _classification_sql(
    reads: Reads,
    joined: str,
    params: list[Any],
    classes: Sequence[Any] | None,
    shape: dict[str, Any],
) -> dict[int, dict[str, Any]]:
    """One statement over the joined rows: confusion counts and, when the
    probabilities name the classes (``shape``: their widths over the
    predictions), the loss sums, calibration bins and rank sums."""
    names = [str(c) for c in classes] if classes is not None else None
    # The class of a label as a probability's position: an int class is
    # its own; a class spelled as text is its place in `classes`.
    ti = (
        "CASE WHEN label_text IS NULL AND label = trunc(label) AND abs(label) < 1e18 "
        "THEN CAST(label AS BIGINT) END"
        if names is None
        else f"list_position(?, {_class_key('label_text', 'label')}) - 1"
    )
    cls_params: list[Any] = [names] if names is not None else []
    keyed = (
        "SELECT w, label_text AS tt, label AS tn, prediction_label AS pt, prediction AS pn, "
        f"probabilities AS pr, {ti} AS ti FROM ({joined})"
    )
    k = int(shape["lo"]) if shape["lo"] is not None else 0
    scores = not shape["none"] and k >= 1 and shape["lo"] == shape["hi"]
    probs = "pr"
    note = None
    if scores and k == 1:  # one value: the probability of class 1
        probs, k = "one", 2
        if names is None:
            names = ["0", "1"]
    if scores and names is not None and len(names) != k:
        scores, note = False, ("roc_auc_note", f"{k} probabilities for {len(names)} classes")
    if scores and k > MAX_SCORED_CLASSES:
        scores = False
        note = (
            "roc_auc_note",
            f"probabilities of {k} classes: log loss, Brier, ECE and ROC AUC are computed "
            f"for at most {MAX_SCORED_CLASSES}",
        )
    # Confusion counts by the raw values (the classes are spelled in
    # Python, per cell, not per row).
    parts = [
        "SELECT 'cell' AS part, w, tt AS a, pt AS b, NULL::INT AS j, count(*)::DOUBLE AS v1, "
        "tn AS v2, pn AS v3 FROM s GROUP BY w, tt, tn, pt, pn"
    ]
    cols = "NULL AS pr"
    if scores:
        # Each probability a column of its own (q0 .. q{k-1}): lighter to
        # hold and to read than a list per row.
        if probs == "pr":
            cols = ", ".join(f"pr[{j + 1}] AS q{j}" for j in range(k))
        else:
            cols = "1 - pr[1] AS q0, pr[1] AS q1"
        qs = [f"q{j}" for j in range(k)]
        lo, hi = repr(EPS), repr(1 - EPS)
        clipped = [f"greatest(least({q}, {hi}), {lo})" for q in qs]
        at_true = (
            "CASE ti " + " ".join(f"WHEN {j} THEN {c}" for j, c in enumerate(clipped)) + " END"
        )
        conf = f"greatest({', '.join(qs)})"
        top = "CASE " + " ".join(f"WHEN {q} = {conf} THEN {j}" for j, q in enumerate(qs)) + " END"
        parts += [
            "SELECT 'unnamed', NULL, NULL, NULL, NULL, count(*)::DOUBLE, NULL, NULL FROM s "
            f"WHERE ti IS NULL OR ti < 0 OR ti >= {k}",
            "SELECT 'loss', w, NULL, NULL, NULL, "
            f"sum(-ln(({at_true}) / ({' + '.join(clipped)}))), "
            "sum(power(q1 - (ti = 1)::INT, 2)), NULL "
            f"FROM s WHERE ti >= 0 AND ti < {k} GROUP BY w",
            "SELECT 'ece', w, NULL, NULL, b, count(*)::DOUBLE, sum(conf), sum(hit::DOUBLE) FROM ("
            f"SELECT w, {conf} AS conf, least(floor({conf} * {ECE_BINS})::INT, "
            f"{ECE_BINS - 1}) AS b, ({top}) = ti AS hit FROM s) GROUP BY ALL",
        ]
        # ROC AUC by rank sums (ties take their mean rank), one class
        # against the rest for each class (the second only, for two).
        for j in [1] if k == 2 else range(k):
            parts.append(
                f"SELECT 'auc', w, NULL, NULL, {j}, sum(r) FILTER (pos), "
                "count(*) FILTER (pos)::DOUBLE, count(*)::DOUBLE FROM ("
                f"SELECT w, ti = {j} AS pos, (rank() OVER (PARTITION BY w ORDER BY q{j}) "
                f"+ (count(*) OVER (PARTITION BY w, q{j}) - 1) / 2.0)::DOUBLE AS r "
                "FROM s) GROUP BY w"
            )
    rows = reads.sql(
        f"WITH s AS MATERIALIZED (SELECT w, tt, tn, pt, pn, ti, {cols} FROM ({keyed})) "
        + " UNION ALL ".join(parts),
        cls_params + params,
    ).to_pylist()
    out: dict[int, dict[str, Any]] = {}
    by_w: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        if r["part"] == "cell":
            by_w.setdefault(int(r["w"]), []).append(
                {"yt": _key(r["a"], r["v2"]), "yp": _key(r["b"], r["v3"]), "n": r["v1"]}
            )
        elif r["part"] == "unnamed" and r["v1"]:
            note = ("log_loss_note", "a label names no class of the probabilities")
    for win, cs in by_w.items():
        out[win] = _confusion_metrics(cs)
    if note is not None:
        for m in out.values():
            m[note[0]] = note[1]
    if not scores or note is not None:
        return out
    aucs: dict[int, list[tuple[float, int, int]]] = {}
    for r in rows:
        part = r["part"]
        if part in ("cell", "unnamed"):
            continue
        m = out[int(r["w"])]
        n_w = m["n_labelled"]
        if part == "loss":
            m["log_loss"] = r["v1"] / n_w
            if k == 2:
                m["brier"] = r["v2"] / n_w
        elif part == "ece":
            gap = abs(r["v3"] / r["v1"] - r["v2"] / r["v1"])
            m["ece"] = m.get("ece", 0.0) + r["v1"] / n_w * gap
        else:
            n1 = int(r["v2"] or 0)
            n0 = int(r["v3"]) - n1
            a = (float(r["v1"]) - n1 * (n1 + 1) / 2.0) / (n1 * n0) if n1 and n0 else math.nan
            aucs.setdefault(int(r["w"]), []).append((a, n1, n0))
    for win, got in aucs.items():
        m = out[win]
        if k == 2:
            a, n1, n0 = got[0]
            m["roc_auc"] = a
            m["roc_auc_lo"], m["roc_auc_hi"] = _auc_interval(a, n1, n0)
            if math.isnan(a):
                m["roc_auc_note"] = "one class only in the window: ROC AUC is undefined"
        elif len(got) == k and all(n1 for _, n1, _ in got):
            m["roc_auc"] = float(np.mean([a for a, _, _ in got]))
        else:
            m["roc_auc"] = math.nan
            m["roc_auc_note"] = "not every class is in the window: ROC AUC is undefined"
    return out


def _confusion_metrics(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and precision, recall, F1 (per class and macro) of one
    window from its confusion counts."""
    n = sum(int(c["n"]) for c in cells)
    seen = sorted(
        {c["yt"] for c in cells if c["yt"] is not None}
        | {c["yp"] for c in cells if c["yp"] is not None}
    )
    tp = dict.fromkeys(seen, 0)
    pp = dict.fromkeys(seen, 0)
    ap = dict.fromkeys(seen, 0)
    right = 0
    for c in cells:
        k = int(c["n"])
        if c["yp"] is not None:
            pp[c["yp"]] += k
        if c["yt"] is not None:
            ap[c["yt"]] += k
        if c["yt"] is not None and c["yt"] == c["yp"]:
            tp[c["yt"]] += k
            right += k
    m: dict[str, Any] = {"n_labelled": n}
    m["accuracy"] = right / n
    m["accuracy_lo"], m["accuracy_hi"] = wilson(right, n)
    precisions, recalls, f1s = [], [], []
    for c in seen:
        prec = tp[c] / pp[c] if pp[c] else 0.0
        rec = tp[c] / ap[c] if ap[c] else 0.0
        f1 = 2 * tp[c] / (pp[c] + ap[c]) if (pp[c] + ap[c]) else 0.0
        precisions.append(prec)
        recalls.append(rec)
        f1s.append(f1)
        if len(seen) <= MAX_CLASSES:
            m[f"precision_{c}"] = prec
            m[f"recall_{c}"] = rec
            m[f"f1_{c}"] = f1
    if seen:
        m["precision"] = float(np.mean(precisions))
        m["recall"] = float(np.mean(recalls))
        m["f1"] = float(np.mean(f1s))
        m["precision_lo"], m["precision_hi"] = _around(m["precision"], n / len(seen))
        m["recall_lo"], m["recall_hi"] = _around(m["recall"], n / len(seen))
    return m


def _table(
    totals: dict[int, int],
    per: dict[int, dict[str, Any]],
    regression: bool,
    metrics: Sequence[str] | None,
) -> Any:
    import pyarrow as pa

    starts = sorted(set(totals) | set(per))
    out_rows = [{"window_start": w, "n": totals.get(w, 0), **per.get(w, {})} for w in starts]
    names = list(REGRESSOR_METRICS if regression else CLASSIFIER_METRICS)
    if metrics is not None:
        unknown = [x for x in metrics if x not in names]
        if unknown:
            raise ValueError(f"no metric {unknown[0]!r} for this model (metrics: {names})")
        names = list(metrics)
    cols = ["window_start", "n", "n_labelled"]
    extra = sorted({k for r in out_rows for k in r} - set(cols))
    for name in names:
        for suffix in ("", "_lo", "_hi", "_note"):
            if name + suffix in extra:
                cols.append(name + suffix)
        if metrics is None:
            cols += [k for k in extra if k.startswith(name + "_") and k not in cols]
    table: dict[str, Any] = {}
    for c in cols:
        vals = [r.get(c) for r in out_rows]
        if c == "window_start":
            table[c] = pa.array(vals, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        elif c.endswith("_note"):
            table[c] = pa.array(vals, pa.string())
        elif c in ("n", "n_labelled"):
            table[c] = pa.array([v or 0 for v in vals], pa.int64())
        else:
            table[c] = pa.array([_null_nan(v) for v in vals], pa.float64())
    return pa.table(table)


def _key(text: Any, number: Any) -> str | None:
    """A class as ``_class_key`` spells it in SQL: text, or a number
    (an int class without a fraction)."""
    c = _class(text, number)
    return None if c is None else str(c)


def _null_nan(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _class(text: Any, number: Any) -> Any:
    """A class as predictions and labels spell it: text, else an int."""
    if text is not None:
        return text
    if number is None or (isinstance(number, float) and math.isnan(number)):
        return None
    f = float(number)
    return int(f) if f.is_integer() else f


class PerformanceReads:
    """``performance`` for every read source (``Store``, ``Client``): the
    same analysis over whichever :class:`~modeltap.reads.Reads` it is."""

    def performance(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        window_s: float | None = None,
        metrics: Sequence[str] | None = None,
        *,
        classes: Sequence[Any] | None = None,
        as_pandas: bool = False,
    ) -> Any:
        """Realised performance of a model per window of prediction time
        (``window_s``, default an hour): predictions joined to their latest
        label, each metric with its interval (see
        :mod:`modeltap.analysis.performance`)."""
        assert isinstance(self, Reads)
        t = performance(
            self,
            model,
            version,
            since,
            until,
            window_s=3600.0 if window_s is None else window_s,
            metrics=metrics,
            classes=classes,
        )
        return t.to_pandas() if as_pandas else t
