"""Drift statistics against independent numpy/scipy computations, and the
drift decision on data where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

import modeltap
from modeltap import _core

EPS = 1e-4


def psi_bins(ref: modeltap.Reference, name: str) -> np.ndarray:
    col = next(c for c in ref.columns if c["name"] == name)
    return np.asarray(col["psi_cuts"])


def binned(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    # bin i = (cuts[i-1], cuts[i]]: the number of cuts strictly below v
    idx = np.searchsorted(cuts, values, side="left")
    return np.bincount(idx, minlength=len(cuts) + 1)


def numpy_psi(r_counts, c_counts):
    p = np.maximum(r_counts / r_counts.sum(), EPS)
    q = np.maximum(c_counts / c_counts.sum(), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def agent_report(ref, rows, **kw):
    a = modeltap.Agent("m", reference=ref, metrics_interval=None, **kw)
    for r in rows:
        a.log(r, 0)
    a.flush(10)
    rep = a.drift()
    a.close()
    return rep, a


def homogeneity(rc: np.ndarray, cc: np.ndarray):
    """scipy's two-sample chi-square test over the bins non-empty in either."""
    table = np.array([rc, cc])
    table = table[:, table.sum(axis=0) > 0]
    return sps.chi2_contingency(table, correction=False)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    ref = rng.normal(size=(50_000, 3))
    cur = rng.normal(size=(20_000, 3))
    cur[:, 0] = cur[:, 0] * 1.3 + 0.4
    cur[:, 1] = rng.exponential(size=20_000)
    return ref, cur


def test_numeric_statistics_match_numpy_and_scipy(data):
    ref_x, cur_x = data
    ref = modeltap.Reference.from_data(ref_x)
    a = modeltap.Agent("m", reference=ref, metrics_interval=None)
    a.log_batch(cur_x, np.zeros(len(cur_x)))
    a.flush(10)
    rep = a.drift()
    a.close()
    for j, name in enumerate(["f0", "f1", "f2"]):
        row = rep[name]
        cuts = psi_bins(ref, name)
        rc, cc = binned(ref_x[:, j], cuts), binned(cur_x[:, j], cuts)
        # PSI and chi-square: the same bins, to 1e-9
        assert row["psi"] == pytest.approx(numpy_psi(rc, cc), abs=1e-9, rel=1e-9)
        chi = homogeneity(rc, cc)
        assert row["chi2"] == pytest.approx(chi.statistic, rel=1e-9)
        assert row["chi2_pvalue"] == pytest.approx(chi.pvalue, rel=1e-6, abs=1e-300)
        # JS and Hellinger over the same bins, to 1e-9
        pr, pc_ = rc / rc.sum(), cc / cc.sum()
        assert row["js"] == pytest.approx(jensenshannon(pr, pc_, base=2), abs=1e-9)
        hel = np.sqrt(max(0.0, 1 - np.sum(np.sqrt(pr * pc_))))
        assert row["hellinger"] == pytest.approx(hel, abs=1e-9)
        # KS: within the documented bound (largest fine bin's reference mass)
        ks = sps.ks_2samp(ref_x[:, j], cur_x[:, j])
        bound = 1 / 200 + 1e-3
        assert abs(row["ks"] - ks.statistic) <= bound, (name, row["ks"], ks.statistic)
        # Wasserstein, normalised by the reference std: within 2 % of the
        # reference std of the exact value
        w = sps.wasserstein_distance(ref_x[:, j], cur_x[:, j]) / ref_x[:, j].std()
        assert row["wasserstein"] == pytest.approx(w, abs=0.02), name
        # moments and rates
        assert row["mean_cur"] == pytest.approx(cur_x[:, j].mean(), rel=1e-9, abs=1e-12)
        assert row["std_cur"] == pytest.approx(cur_x[:, j].std(), rel=1e-6)
        oor = np.mean((cur_x[:, j] < ref_x[:, j].min()) | (cur_x[:, j] > ref_x[:, j].max()))
        assert row["out_of_range"] == pytest.approx(oor, abs=1e-12)


def test_categorical_statistics_match(data):
    rng = np.random.default_rng(3)
    ref_c = rng.choice(["a", "b", "c", "d"], size=30_000, p=[0.4, 0.3, 0.2, 0.1])
    cur_c = rng.choice(["a", "b", "c", "z"], size=10_000, p=[0.25, 0.25, 0.3, 0.2])
    ref = modeltap.Reference.from_data(pd.DataFrame({"c": ref_c}))
    rep, _ = agent_report(ref, [[v] for v in cur_c])
    row = rep["c"]
    cats = next(c for c in ref.columns if c["name"] == "c")["categories"]
    buckets = [*cats, "<other>", "<unseen>"]
    rc = np.array([np.sum(ref_c == k) for k in cats] + [0, 0])
    cc = np.array([np.sum(cur_c == k) for k in cats] + [0, np.sum(~np.isin(cur_c, cats))])
    assert len(buckets) == len(rc)
    assert row["psi"] == pytest.approx(numpy_psi(rc, cc), abs=1e-9)
    chi = homogeneity(rc, cc)
    assert row["chi2"] == pytest.approx(chi.statistic, rel=1e-9)
    assert row["chi2_pvalue"] == pytest.approx(chi.pvalue, rel=1e-6, abs=1e-300)
    assert row["js"] == pytest.approx(jensenshannon(rc / rc.sum(), cc / cc.sum(), base=2), abs=1e-9)
    assert row["out_of_range"] == pytest.approx(np.mean(cur_c == "z"), abs=1e-12)  # unseen
    assert row["drifted"]


def test_exactly_the_drifted_features_are_flagged():
    rng = np.random.default_rng(7)
    n_ref, n_cur = 100_000, 100_000
    names = [f"x{i}" for i in range(20)]
    ref_x = rng.normal(size=(n_ref, 20))
    cur_x = rng.normal(size=(n_cur, 20))
    cur_x[:, 0] += 0.6  # mean shifts of at least 0.6 sigma
    cur_x[:, 3] -= 0.8
    cur_x[:, 7] += 1.0
    cur_x[:, 11] *= 1.6  # scale changes of at least 1.6x
    cur_x[:, 15] *= 2.0
    cur_x[:, 19] += 0.05  # negligible: must not be flagged
    ref_df = pd.DataFrame(ref_x, columns=names)
    ref_df["country"] = rng.choice(["de", "fr", "it"], size=n_ref, p=[0.5, 0.3, 0.2])
    ref_df["device"] = rng.choice(["ios", "android", "web"], size=n_ref, p=[0.4, 0.4, 0.2])
    ref = modeltap.Reference.from_data(ref_df)
    country = rng.choice(["de", "fr", "it"], size=n_cur, p=[0.2, 0.3, 0.5])  # drifts
    device = rng.choice(["ios", "android", "web"], size=n_cur, p=[0.41, 0.39, 0.2])  # does not
    a = modeltap.Agent("m", reference=ref, metrics_interval=None)
    for i in range(n_cur):
        a.log([*cur_x[i].tolist(), country[i], device[i]], 1)
    a.flush(30)
    rep = a.drift()
    a.close()
    assert sorted(rep.drifted) == sorted(["x0", "x3", "x7", "x11", "x15", "country"])
    assert rep["x19"]["psi"] < 0.01
    # p-values flag the negligible shift all the same: that is why they do not decide
    assert rep["x19"]["ks_pvalue"] < 0.05
    assert rep.records == n_cur
    df = rep.to_pandas()
    assert df.loc["x0", "drifted"]
    assert "x0" in repr(rep)
    assert "<table>" in rep._repr_html_()


def test_merging_four_agents_equals_one():
    rng = np.random.default_rng(11)
    ref_x = rng.normal(size=(20_000, 4))
    ref_df = pd.DataFrame(ref_x, columns=list("abcd"))
    ref_df["k"] = rng.choice(["u", "v", "w"], size=20_000)
    ref = modeltap.Reference.from_data(ref_df)
    cur = rng.normal(loc=0.3, size=(8_000, 4))
    ks = rng.choice(["u", "v", "w", "new"], size=8_000)
    rows = [[*cur[i].tolist(), ks[i]] for i in range(8_000)]
    one = modeltap.Agent("m", reference=ref, metrics_interval=None, window_s=3600)
    parts = [
        modeltap.Agent("m", reference=ref, metrics_interval=None, window_s=3600) for _ in range(4)
    ]
    for i, r in enumerate(rows):
        one.log(r, 0)
        parts[i % 4].log(r, 0)
    profiles = []
    for a in [one, *parts]:
        a.flush(10)
    whole = one.drift()
    profiles = [a._rec.profile() for a in parts]
    merged = _core.merge_profiles(profiles)
    from modeltap.drift import compute

    combined = compute(ref.to_bytes(), merged)
    for r1, r2 in zip(whole.rows, combined.rows, strict=True):
        for k in ("psi", "ks", "js", "wasserstein", "chi2", "hellinger", "mean_cur", "std_cur"):
            v1, v2 = r1[k], r2[k]
            if np.isnan(v1):
                assert np.isnan(v2)
            else:
                assert v2 == pytest.approx(v1, rel=1e-9, abs=1e-12), (r1["feature"], k)
    assert combined.records == whole.records == 8_000
    for a in [one, *parts]:
        a.close()


def test_thresholds_are_configurable(data):
    ref_x, cur_x = data
    ref = modeltap.Reference.from_data(ref_x)
    a = modeltap.Agent("m", reference=ref, metrics_interval=None)
    a.log_batch(cur_x, np.zeros(len(cur_x)))
    a.flush(10)
    default = a.drift()
    strict = a.drift(rules={"f1": ("ks", 0.01)}, defaults={"numeric": ("psi", 100.0)})
    a.close()
    assert "f1" in default.drifted
    assert strict.drifted == ["f1"]
    assert strict["f1"]["statistic"] == "ks"
    # a threshold alone never makes drift of what is not significant
    zero = modeltap.drift.compute(ref.to_bytes(), a._rec.profile(0, 2**64 - 1), {"f2": ("ks", 0.0)})
    assert "f2" not in zero.drifted
    with pytest.raises(ValueError, match="unknown statistic"):
        modeltap.drift.compute(ref.to_bytes(), b"", {"f0": ("magic", 1.0)})


def test_drift_without_reference_is_a_clear_error():
    a = modeltap.Agent("m", metrics_interval=None)
    with pytest.raises(ValueError, match="no reference"):
        a.drift()
    a.close()


def test_reference_drift_of_a_dataset_equals_the_agent_path():
    rng = np.random.default_rng(21)
    ref_df = pd.DataFrame(rng.normal(size=(30_000, 3)), columns=["a", "b", "c"])
    ref_df["k"] = rng.choice(["p", "q", "r"], size=30_000)
    ref = modeltap.Reference.from_data(ref_df)
    cur = pd.DataFrame(rng.normal(0.3, 1.2, size=(10_000, 3)), columns=["a", "b", "c"])
    cur.loc[::7, "b"] = np.nan
    cur["k"] = rng.choice(["p", "q", "s", None], size=10_000)
    offline = ref.drift(cur)
    a = modeltap.Agent("m", reference=ref, metrics_interval=None)
    a.log_batch(cur, np.zeros(len(cur)))
    a.flush(10)
    online = a.drift()
    a.close()
    assert offline.records == online.records == 10_000
    for r1, r2 in zip(online.rows, offline.rows, strict=True):
        for k in (
            "psi",
            "ks",
            "js",
            "wasserstein",
            "chi2",
            "hellinger",
            "missing_cur",
            "out_of_range",
        ):
            if np.isnan(r1[k]):
                assert np.isnan(r2[k])
            else:
                assert r2[k] == pytest.approx(r1[k], rel=1e-9, abs=1e-12), (r1["feature"], k)
    with pytest.raises(ValueError, match="lacks"):
        ref.drift(cur.drop(columns=["a"]))


def test_sample_rate_keeps_some_rows_and_profiles_every_record():
    rng = np.random.default_rng(4)
    ref = modeltap.Reference.from_data(rng.normal(size=(5000, 2)))
    got = []
    a = modeltap.Agent("m", reference=ref, sink=got.append, sample_rate=0.1, metrics_interval=None)
    a.log_batch(rng.normal(size=(20_000, 2)), np.zeros(20_000))
    assert a.flush(10)
    rep = a.drift()
    a.close()
    s = a.stats()
    rows = sum(modeltap.decode_batch(b)["n_records"] for b in got)
    assert rep.records == 20_000  # every record profiled
    assert s["shipped"] == rows
    assert s["sampled_out"] == 20_000 - rows
    assert 1_500 < rows < 2_500  # about 10 %
    assert s["logged"] == s["shipped"] + s["sampled_out"]
    with pytest.raises(ValueError, match="sample_rate"):
        modeltap.Agent("m", sample_rate=0.0)


def test_ks_pvalue_is_the_kolmogorov_tail_over_the_whole_range():
    """The reported p-value is scipy's Kolmogorov survival function of the
    report's own D and sizes, from D ≈ 0 (p = 1) to large shifts."""
    from scipy.stats import kstwobign

    rng = np.random.default_rng(11)
    R = rng.normal(size=(200_000, 1))
    ref = modeltap.Reference.from_data(R, feature_names=["x"])
    seen_small = seen_mid = False
    for n, shift in ((200_000, 0.0), (50_000, 0.003), (5_000, 0.02), (2_000, 0.05), (1_000, 0.3)):
        cur = R[:n].copy() if shift == 0.0 else rng.normal(shift, 1.0, size=(n, 1))
        if shift == 0.0:
            cur[0, 0] = 9.0  # equal to the reference but for one value
        row = modeltap.Reference.drift(ref, cur)["x"]
        ne = row["n_ref"] * row["n_cur"] / (row["n_ref"] + row["n_cur"])
        lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * row["ks"]
        want = float(kstwobign.sf(lam))
        assert row["ks_pvalue"] == pytest.approx(want, abs=1e-12), (n, shift, lam)
        seen_small |= lam < 0.05
        seen_mid |= 0.5 < lam < 1.5
    assert seen_small
    assert seen_mid


def test_chi_square_p_values_are_calibrated_under_the_null():
    """Reference and current drawn from one distribution: p < 0.05 in 5 % of
    500 repetitions (± 2 %), numeric and categorical alike; a constant column
    against itself gives chi-square 0, p 1."""
    rng = np.random.default_rng(2024)
    levels = np.array(["a", "b", "c", "d", "e"])
    probs = [0.4, 0.25, 0.2, 0.1, 0.05]
    low = {"x": 0, "c": 0}
    reps = 500
    for _ in range(reps):
        ref_df = pd.DataFrame(
            {"x": rng.normal(size=10_000), "c": rng.choice(levels, 10_000, p=probs)}
        )
        cur_df = pd.DataFrame(
            {"x": rng.normal(size=10_000), "c": rng.choice(levels, 10_000, p=probs)}
        )
        rep = modeltap.Reference.from_data(ref_df).drift(cur_df)
        for name in low:
            low[name] += rep[name]["chi2_pvalue"] < 0.05
    for name, k in low.items():
        assert 0.03 <= k / reps <= 0.07, (name, k / reps)
    const = pd.DataFrame({"x": np.full(200_000, 5.0)})
    row = modeltap.Reference.from_data(const).drift(const)["x"]
    assert (row["chi2"], row["chi2_pvalue"]) == (0.0, 1.0)


def test_undefined_numbers_are_nan_with_a_note():
    """A constant reference has no std to scale Wasserstein by, infinite
    values make it infinite, an all-missing reference has no range: NaN and
    a note saying why, never a number that looks meaningful."""
    const = modeltap.Reference.from_data(pd.DataFrame({"x": np.full(1_000, 5.0)}))
    rep = const.drift(pd.DataFrame({"x": np.full(1_000, 6.0)}))
    assert math.isnan(rep["x"]["wasserstein"])
    assert rep["x"]["drifted"]  # PSI still sees the move
    assert any("constant" in n for n in rep.notes)
    rng = np.random.default_rng(0)
    ref = modeltap.Reference.from_data(pd.DataFrame({"x": rng.normal(size=1_000)}))
    cur = rng.normal(size=1_000)
    cur[3] = np.inf
    rep = ref.drift(pd.DataFrame({"x": cur}))
    assert math.isnan(rep["x"]["wasserstein"])
    assert any("infinite" in n for n in rep.notes)
    assert not math.isnan(
        ref.drift(pd.DataFrame({"x": rng.normal(size=1_000)}))["x"]["wasserstein"]
    )
    empty = modeltap.Reference.from_data(pd.DataFrame({"x": np.full(100, np.nan)}))
    rep = empty.drift(pd.DataFrame({"x": np.ones(10)}))
    assert math.isnan(rep["x"]["out_of_range"])
    assert any("no values" in n for n in rep.notes)


def test_a_change_in_missing_rate_is_drift():
    """10 % → 30 % missing, or a column gone all-missing, is drifted (with a
    note) even when the values present look the same; 10 % → 12 %, or too
    few rows to tell, is not."""
    rng = np.random.default_rng(5)

    def frame(n: int, missing: float) -> pd.DataFrame:
        x = rng.normal(size=n)
        x[rng.random(n) < missing] = np.nan
        return pd.DataFrame({"x": x, "c": np.where(np.isnan(x), None, "a")})

    ref = modeltap.Reference.from_data(frame(20_000, 0.10), categorical=["c"])
    moved = ref.drift(frame(20_000, 0.30))
    assert moved["x"]["drifted"]
    assert moved["c"]["drifted"]
    assert moved["x"]["psi"] < 0.2  # the values present did not move
    assert any("missing rate" in n and "column x" in n for n in moved.notes)
    gone = ref.drift(pd.DataFrame({"x": np.full(500, np.nan), "c": [None] * 500}))
    assert gone["x"]["drifted"]
    assert gone["c"]["drifted"]
    assert not ref.drift(frame(20_000, 0.12))["x"]["drifted"]
    # Too few rows for the missing rate to say anything.
    assert not any("missing rate" in n for n in ref.drift(frame(50, 0.5)).notes)


def test_std_keeps_its_digits_far_from_the_reference_mean():
    """1e8 + N(0, 1) against a reference around 0: the current std is 1, not
    0 (sums are kept relative to the data's own first value), through the
    dataset path and an agent, merged windows included."""
    rng = np.random.default_rng(0)
    ref = modeltap.Reference.from_data(pd.DataFrame({"x": rng.normal(size=10_000)}))
    cur = 1e8 + rng.normal(size=100_000)
    row = ref.drift(pd.DataFrame({"x": cur}))["x"]
    assert row["std_cur"] == pytest.approx(cur.std(), rel=1e-6)
    assert row["mean_cur"] == pytest.approx(cur.mean(), rel=1e-12)
    agent = modeltap.Agent("m", reference=ref, metrics_interval=None, window_s=1)
    for part in np.array_split(cur, 5):
        agent.log_batch(part.reshape(-1, 1), np.zeros(len(part)))
    assert agent.flush(10)
    row = agent.drift()["x"]
    agent.close()
    assert row["std_cur"] == pytest.approx(cur.std(), rel=1e-6)


def test_a_variance_past_the_float_range_is_infinite_not_zero():
    ref = modeltap.Reference.from_data(
        pd.DataFrame({"x": np.random.default_rng(0).normal(size=1000)})
    )
    row = ref.drift(pd.DataFrame({"x": np.array([1e300, -1e300] * 50)}))["x"]
    assert row["std_cur"] == math.inf
    assert row["mean_cur"] == pytest.approx(0.0, abs=1e290)


def _numeric_row(ref_values: np.ndarray, cur_values: np.ndarray) -> dict:
    ref = modeltap.Reference.from_data(ref_values.reshape(-1, 1), feature_names=["x"])
    return ref.drift(cur_values.reshape(-1, 1))["x"]


def _scipy_wasserstein(r: np.ndarray, c: np.ndarray) -> float:
    return float(sps.wasserstein_distance(r, c) / np.std(r))


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("binary 0.3 -> 0.6", lambda g: (g.binomial(1, 0.3, 50_000), g.binomial(1, 0.6, 40_000))),
        (
            "three levels reversed",
            lambda g: (
                g.choice([0, 1, 2], 50_000, p=[0.6, 0.3, 0.1]),
                g.choice([0, 1, 2], 40_000, p=[0.1, 0.3, 0.6]),
            ),
        ),
        ("counts, shifted", lambda g: (g.poisson(2, 50_000), g.poisson(2.6, 40_000))),
        (
            "zero-inflated",
            lambda g: (
                np.where(g.random(50_000) < 0.5, 0.0, g.lognormal(0, 0.5, 50_000)),
                np.where(g.random(40_000) < 0.3, 0.0, g.lognormal(0.2, 0.5, 40_000)),
            ),
        ),
        (
            "a sentinel below the minimum",
            lambda g: (
                np.where(g.random(50_000) < 0.5, 0.0, g.normal(3, 1, 50_000)),
                np.where(g.random(40_000) < 0.5, -5.0, g.normal(3, 1, 40_000)),
            ),
        ),
    ],
)
def test_discrete_and_zero_inflated_columns_match_scipy(name, make):
    r, c = (np.asarray(v, dtype=np.float64) for v in make(np.random.default_rng(11)))
    row = _numeric_row(r, c)
    # Tied values are point masses of the sketch: Wasserstein is exact for
    # them, and KS sees every mass that moved.
    assert row["wasserstein"] == pytest.approx(_scipy_wasserstein(r, c), abs=0.02), name
    assert row["ks"] == pytest.approx(sps.ks_2samp(r, c).statistic, abs=0.006), name


def test_moves_below_the_minimum_are_drift_like_moves_above_the_maximum():
    five = np.full(20_000, 5.0)
    for to in (4.0, 6.0):
        row = _numeric_row(five, np.full(10_000, to))
        assert row["drifted"], to
        assert row["ks"] == 1.0
        assert row["psi"] > 10
        assert row["out_of_range"] == 1.0
    same = _numeric_row(five, np.full(10_000, 5.0))
    assert not same["drifted"]
    assert same["psi"] == 0.0
    assert same["ks"] == 0.0
    # half the zeros of a feature become a -5 sentinel
    g = np.random.default_rng(5)
    r = np.where(g.random(50_000) < 0.5, 0.0, g.normal(3, 1, 50_000))
    c = np.where(g.random(50_000) < 0.5, -5.0, g.normal(3, 1, 50_000))
    row = _numeric_row(r, c)
    assert row["drifted"]
    assert row["ks"] == pytest.approx(sps.ks_2samp(r, c).statistic, abs=0.006)
    assert row["ks"] > 0.45


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_heavy_tails_stay_within_the_stated_bound(sigma):
    g = np.random.default_rng(int(sigma * 10))
    r, c = g.lognormal(0, sigma, 100_000), g.lognormal(0, sigma, 100_000)
    row = _numeric_row(r, c)
    assert row["wasserstein"] == pytest.approx(_scipy_wasserstein(r, c), abs=0.02)
    assert row["ks"] == pytest.approx(sps.ks_2samp(r, c).statistic, abs=0.006)
    assert not row["drifted"]


def _paths(ref: modeltap.Reference, df: pd.DataFrame) -> dict[str, modeltap.DriftReport]:
    """The same rows through every path: the dataset, log() row by row, an
    array batch, a DataFrame batch (small and large)."""
    out = {"Reference.drift": ref.drift(df)}
    names = list(df.columns)

    def agent() -> modeltap.Agent:
        return modeltap.Agent("m", reference=ref, metrics_interval=None, window_s=86_400)

    a = agent()
    for row in df.itertuples(index=False):
        a.log(dict(zip(names, row, strict=True)), 0)
    a.flush(30)
    out["log"] = a.drift()
    a.close()
    if all(df[c].dtype.kind == "f" for c in names):
        a = agent()
        a.log_batch(df.to_numpy(), np.zeros(len(df)))
        a.flush(30)
        out["log_batch(array)"] = a.drift()
        a.close()
    a = agent()
    a.log_batch(df, np.zeros(len(df)))
    a.flush(30)
    out["log_batch(DataFrame)"] = a.drift()
    a.close()
    a = agent()
    for i in range(0, len(df), 100):
        a.log_batch(df.iloc[i : i + 100], np.zeros(len(df.iloc[i : i + 100])))
    a.flush(30)
    out["log_batch(small DataFrames)"] = a.drift()
    a.close()
    return out


def test_float_categories_are_spelled_one_way_on_every_path():
    odd = [1e-7, 1e20, 0.1, 3.0, -0.0, 2.5e-5, 1e300, 9.5e15, 1e16, -1.25e-10, np.nan]
    g = np.random.default_rng(8)
    train = pd.DataFrame({"c": g.choice(odd, 3_000), "x": g.normal(size=3_000)})
    ref = modeltap.Reference.from_data(train, categorical=["c"])
    cats = ref.columns[0]["categories"]
    assert "1e-07" in cats
    assert "1e+20" in cats
    assert "3" in cats
    assert "0" in cats
    cur = pd.DataFrame({"c": g.choice(odd, 600), "x": g.normal(size=600)})
    reports = _paths(ref, cur)
    want = reports.pop("Reference.drift")
    assert want["c"]["out_of_range"] == 0.0
    for name, got in reports.items():
        assert got.records == want.records, name
        for k in ("psi", "js", "chi2", "out_of_range", "missing_cur"):
            assert got["c"][k] == pytest.approx(want["c"][k], rel=1e-12, nan_ok=True), (name, k)


def test_long_categories_are_cut_the_same_in_references_and_records():
    g = np.random.default_rng(9)
    long = ["\u00e9" * 700 + str(i) for i in range(3)] + ["short"]  # 2 bytes a character
    train = pd.DataFrame({"c": g.choice(np.array(long, dtype=object), 2_000)})
    ref = modeltap.Reference.from_data(train, categorical=["c"])
    assert all(len(c.encode()) <= 1024 for c in ref.columns[0]["categories"])
    cur = pd.DataFrame({"c": g.choice(np.array(long, dtype=object), 500)})
    for name, got in _paths(ref, cur).items():
        assert got["c"]["out_of_range"] == 0.0, name
        assert not got["c"]["drifted"], name


def test_identical_draws_are_not_flagged_at_any_sample_size():
    g = np.random.default_rng(100)
    ref = modeltap.Reference.from_data(g.normal(size=(10_000, 5)))
    for n in (100, 1_000, 10_000, 100_000):
        flagged = sum(len(ref.drift(g.normal(size=(n, 5))).drifted) for _ in range(20))
        assert flagged <= 5, (n, flagged)  # 5 % of 100 columns
    tiny = ref.drift(g.normal(size=(12, 5)))
    assert tiny.drifted == []
    assert all(r["insufficient"] for r in tiny.rows)
    assert not any(r["insufficient"] for r in ref.drift(g.normal(size=(30, 5))).rows)


@pytest.mark.parametrize("levels", [10, 500, 3_000])
def test_identical_draws_of_many_categories_are_not_flagged(levels):
    g = np.random.default_rng(levels)
    w = 1 / np.arange(1, levels + 1) ** 0.7
    w /= w.sum()
    cats = np.array([f"c{i}" for i in range(levels)], dtype=object)

    def frame(n: int) -> pd.DataFrame:
        return pd.DataFrame({f"k{j}": g.choice(cats, n, p=w) for j in range(5)})

    ref = modeltap.Reference.from_data(frame(10_000), categorical=[f"k{j}" for j in range(5)])
    for n in (100, 1_000, 10_000):
        flagged = sum(len(ref.drift(frame(n)).drifted) for _ in range(10))
        assert flagged <= 2, (levels, n, flagged)  # 5 % of 50 columns
        # ... while a real change is found at the same sizes
        if n >= 1_000:
            moved = pd.DataFrame({"k0": g.choice(cats[::-1], n, p=w)})
            for j in range(1, 5):
                moved[f"k{j}"] = g.choice(cats, n, p=w)
            assert ref.drift(moved).drifted == ["k0"], (levels, n)


def test_real_shifts_are_still_found_in_small_windows():
    g = np.random.default_rng(7)
    ref = modeltap.Reference.from_data(g.normal(size=(10_000, 1)), feature_names=["x"])
    assert ref.drift(g.normal(0.8, 1, size=(300, 1)))["x"]["drifted"]
    assert ref.drift(g.normal(0.0, 3, size=(1_000, 1)))["x"]["drifted"]
    five = modeltap.Reference.from_data(np.full((1_000, 1), 5.0), feature_names=["x"])
    assert five.drift(np.full((40, 1), 4.0))["x"]["drifted"]


def test_unseen_is_told_from_other_past_the_kept_levels():
    g = np.random.default_rng(12)
    ids = np.array([f"id{i}" for i in range(5_000)], dtype=object)
    ref = modeltap.Reference.from_data(
        pd.DataFrame({"user": g.choice(ids, 40_000)}), categorical=["user"]
    )
    col = ref.columns[0]
    assert len(col["categories"]) == 1_000
    assert not col["complete"]
    same = ref.drift(pd.DataFrame({"user": g.choice(ids, 20_000)}))["user"]
    assert same["out_of_range"] < 0.02  # held by the reference, only not kept
    assert not same["drifted"]
    new = np.array([f"new{i}" for i in range(20_000)], dtype=object)
    half = np.where(g.random(20_000) < 0.5, g.choice(ids, 20_000), new)
    moved = ref.drift(pd.DataFrame({"user": half}))["user"]
    assert moved["out_of_range"] == pytest.approx(0.5, abs=0.02)  # brand-new ids
    assert moved["drifted"]
    # the agent's path tells them apart the same way
    a = modeltap.Agent("m", reference=ref, metrics_interval=None, window_s=86_400)
    for v in half[:2_000]:
        a.log({"user": v}, 0)
    a.log_batch(pd.DataFrame({"user": half[2_000:]}), np.zeros(18_000))
    a.flush(30)
    via_agent = a.drift()["user"]
    a.close()
    assert via_agent["out_of_range"] == pytest.approx(moved["out_of_range"], abs=1e-12)


def test_a_window_far_larger_than_its_reference_still_drifts():
    g = np.random.default_rng(21)
    ref = modeltap.Reference.from_data(g.normal(size=(100, 1)), feature_names=["x"])
    for n in (500, 20_000):
        row = ref.drift(g.normal(10, 1, size=(n, 1)))["x"]
        assert row["drifted"], n
    cats = modeltap.Reference.from_data(
        pd.DataFrame({"c": g.choice(["a", "b"], 40)}), categorical=["c"]
    )
    assert cats.drift(pd.DataFrame({"c": ["z"] * 5_000}))["c"]["drifted"]


def test_kept_categories_do_not_depend_on_row_order():
    g = np.random.default_rng(22)
    eu = pd.DataFrame({"city": g.choice([f"eu{i}" for i in range(1_500)], 20_000)})
    us = pd.DataFrame({"city": g.choice([f"us{i}" for i in range(1_500)], 20_000)})
    train = pd.concat([eu, us]).sort_index(kind="stable").reset_index(drop=True)
    ref = modeltap.Reference.from_data(train, categorical=["city"])
    assert not ref.drift(train)["city"]["drifted"]


def test_equal_width_bins_span_the_whole_float_range():
    m = np.finfo(np.float64).max
    ref = modeltap.Reference.from_data(np.array([-m, m] * 100)[:, None], equal_width=True)
    cuts = ref.columns[0]["psi_cuts"]
    assert all(np.isfinite(cuts))
    assert modeltap.Reference(ref.to_bytes()).fingerprint == ref.fingerprint


def test_labels_past_the_vocabulary_budget_are_profiled_by_their_value():
    g = np.random.default_rng(23)
    labels = g.choice(["a", "b"], 2_000)
    ref = modeltap.Reference.from_data(
        pd.DataFrame({"x": g.normal(size=2_000)}), predictions=labels
    )
    a = modeltap.Agent(
        "m", reference=ref, metrics_interval=None, buffer_bytes=1 << 20, window_s=86_400
    )
    # fill the vocabulary budget with labels first (1 MiB / 8 for all of them)
    filler = [f"filler-{i}-{'x' * 200}" for i in range(2_000)]
    a.log_batch(np.zeros((2_000, 1)), filler)
    late = g.choice(["a", "b"], 1_000)
    a.log_batch(np.zeros((1_000, 1)), list(late))
    a.flush(30)
    got = a.drift(since=None)
    a.close()
    pred = next(r for r in got.rows if r["role"] == "prediction")
    want = ref.drift(
        pd.DataFrame({"x": np.zeros(3_000)}), predictions=np.concatenate([filler, late])
    )
    want_pred = next(r for r in want.rows if r["role"] == "prediction")
    assert pred["missing_cur"] == want_pred["missing_cur"] == 0.0
    assert pred["out_of_range"] == pytest.approx(want_pred["out_of_range"], abs=1e-12)


def test_rounded_values_logged_as_float32_are_the_same_values():
    g = np.random.default_rng(24)
    train = np.round(g.normal(1, 1, size=(20_000, 1)), 1)
    ref = modeltap.Reference.from_data(train, feature_names=["x"])
    cur = np.round(g.normal(1, 1, size=(20_000, 1)), 1)
    want = ref.drift(cur)["x"]
    got = ref.drift(cur.astype(np.float32))["x"]
    assert not want["drifted"]
    assert not got["drifted"]
    assert got["psi"] == pytest.approx(want["psi"], abs=1e-12)
    assert got["ks"] == pytest.approx(want["ks"], abs=1e-12)
    a = modeltap.Agent("m", reference=ref, metrics_interval=None, window_s=86_400)
    a.log_batch(cur.astype(np.float32), np.zeros(len(cur)))
    a.flush(30)
    via_agent = a.drift()["x"]
    a.close()
    assert via_agent["psi"] == pytest.approx(want["psi"], abs=1e-12)
