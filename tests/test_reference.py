"""Reference building, files, and the agent taking its schema from one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import modeltap


def frame(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    df.loc[::10, "b"] = np.nan
    df["city"] = rng.choice(["paris", "rome", None], size=n, p=[0.6, 0.3, 0.1])
    df["tier"] = rng.integers(1, 4, size=n)
    return df


def test_from_pandas_arrow_polars_and_numpy_agree():
    df = frame()
    r1 = modeltap.Reference.from_data(df, categorical=["tier"])
    r2 = modeltap.Reference.from_data(pa.Table.from_pandas(df), categorical=["tier"])
    assert r1.fingerprint == r2.fingerprint
    assert r1.feature_names == ["a", "b", "c", "city", "tier"]
    assert r1.categorical == ["city", "tier"]
    b = next(c for c in r1.columns if c["name"] == "b")
    assert b["missing"] == 500
    assert b["mean"] == pytest.approx(df["b"].mean())
    assert b["std"] == pytest.approx(df["b"].std(ddof=0), rel=1e-9)
    assert b["psi_bins"] == 12  # ten deciles, below the minimum, above the maximum
    city = next(c for c in r1.columns if c["name"] == "city")
    assert city["categories"] == ["paris", "rome"]
    assert city["missing"] == int(df["city"].isna().sum())
    tier = next(c for c in r1.columns if c["name"] == "tier")
    assert sorted(tier["categories"]) == ["1", "2", "3"]
    r3 = modeltap.Reference.from_data(df[["a", "b", "c"]].to_numpy(), feature_names=["a", "b", "c"])
    assert r3.feature_names == ["a", "b", "c"]
    import polars

    r4 = modeltap.Reference.from_data(polars.from_pandas(df), categorical=["tier"])
    assert r4.fingerprint == r1.fingerprint


def test_bins_and_equal_width():
    x = np.random.default_rng(1).exponential(size=(10_000, 1))
    q = modeltap.Reference.from_data(x, bins=5)
    e = modeltap.Reference.from_data(x, bins=5, equal_width=True)
    cq = q.columns[0]["psi_cuts"]
    ce = e.columns[0]["psi_cuts"]
    # four inner cuts, and the edges of the below-minimum and above-maximum bins
    assert len(cq) == len(ce) == 6
    assert ce[0] < x.min() <= ce[1]
    assert ce[-1] == x.max()
    inner_e, inner_q = np.asarray(ce[1:-1]), np.asarray(cq[1:-1])
    assert np.allclose(np.diff(inner_e), np.diff(inner_e)[0])  # equal width
    assert not np.allclose(np.diff(inner_q), np.diff(inner_q)[0])  # quantiles


def test_outputs_are_profiled():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1000, 2))
    P = rng.dirichlet(np.ones(3), size=1000)
    r = modeltap.Reference.from_data(X, predictions=P.argmax(axis=1), probabilities=P)
    roles = [(c["name"], c["role"], c["kind"]) for c in r.columns]
    assert ("prediction", "prediction", "categorical") in roles
    assert ("probability_2", "probability", "numeric") in roles


def test_save_load_and_bad_files(tmp_path):
    r = modeltap.Reference.from_data(frame())
    path = tmp_path / "ref.mtref"
    r.save(path)
    back = modeltap.Reference.load(path)
    assert back.fingerprint == r.fingerprint
    assert back.to_bytes() == r.to_bytes()
    (tmp_path / "junk").write_bytes(b"not a reference at all")
    with pytest.raises(modeltap.ReferenceFormatError, match="magic"):
        modeltap.Reference.load(tmp_path / "junk")
    data = bytearray(r.to_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped").write_bytes(bytes(data))
    with pytest.raises(modeltap.ReferenceFormatError):
        modeltap.Reference.load(tmp_path / "flipped")
    (tmp_path / "future").write_bytes(r.to_bytes() + b"\x08\x07")  # format_version = 7
    with pytest.raises(modeltap.ReferenceFormatError, match="newer"):
        modeltap.Reference.load(tmp_path / "future")
    with pytest.raises(ValueError, match="not in the data"):
        modeltap.Reference.from_data(frame(), categorical=["nope"])


def test_agent_takes_schema_from_reference_and_counts_unseen(tmp_path):
    df = frame()
    ref = modeltap.Reference.from_data(df, categorical=["tier"])
    ref.save(tmp_path / "r")
    got = []
    a = modeltap.Agent("m", reference=tmp_path / "r", sink=got.append, metrics_interval=None)
    assert a.feature_names is None or a.feature_names == ref.feature_names
    a.log({"a": 1.0, "b": 2.0, "c": 3.0, "city": "tokyo", "tier": 9}, 0)  # unseen values
    a.log([1.0, 2.0, 3.0, "paris", 2], 0)
    a.flush(10)
    rep = a.drift()
    a.close()
    assert a.stats()["shipped"] == 2  # never dropped
    b = modeltap.decode_batch(got[0])
    assert b["feature_names"] == ref.feature_names
    assert b["categories"]["city"] == ["tokyo", "paris"]
    assert rep["city"]["out_of_range"] == pytest.approx(0.5)
    assert rep["tier"]["out_of_range"] == pytest.approx(0.5)
