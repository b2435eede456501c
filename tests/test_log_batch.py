"""Agent.log_batch reads 2-D arrays in place and round-trips them exactly."""

from __future__ import annotations

import numpy as np
import pytest

import modeltap


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_round_trip(collected, dtype, order):
    rng = np.random.default_rng(7)
    X = np.asarray(rng.normal(size=(5000, 20)), dtype=dtype, order=order)
    y = rng.integers(0, 3, size=5000)
    P = rng.dirichlet(np.ones(3), size=5000)
    a = modeltap.Agent("m", sink=collected, metrics_interval=None)
    ids = a.log_batch(X, y, P, latency_s=0.002)
    assert len(ids) == 5000
    assert len(set(ids)) == 5000
    assert a.flush(10)
    a.close()
    got = collected.rows()
    np.testing.assert_array_equal(got["features"], X.astype(np.float64))
    np.testing.assert_array_equal(got["predictions"], y.astype(np.float64))
    assert got["request_ids"] == ids
    probs = np.concatenate([b["probabilities"] for b in got["batches"]])
    np.testing.assert_array_equal(probs, P)
    assert all(k == "int" for b in got["batches"] for k in b["prediction_kind"])
    np.testing.assert_array_equal(got["latency_s"], np.full(5000, 0.002))


def test_per_row_latency_request_ids_and_vector_outputs(collected):
    a = modeltap.Agent("m", sink=collected, metrics_interval=None)
    X = np.arange(12.0).reshape(4, 3)
    ids = a.log_batch(
        X, np.ones((4, 2)), latency_s=np.array([1.0, 2, 3, 4]), request_ids=list("abcd")
    )
    assert ids == ["a", "b", "c", "d"]
    a.flush(10)
    a.close()
    b = collected.batches()[0]
    assert b["request_ids"] == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(b["latency_s"], [1, 2, 3, 4])
    np.testing.assert_array_equal(b["predictions"], np.ones((4, 2)))
    assert set(b["prediction_kind"]) == {"vector"}


def test_string_labels_and_non_float_inputs(collected):
    a = modeltap.Agent("m", sink=collected, metrics_interval=None)
    X = np.arange(6, dtype=np.int32).reshape(3, 2)  # converted once
    a.log_batch(X, ["cat", "dog", "cat"])
    a.log_batch([[1, 2], [3, 4]], np.array([0.5, 0.25]))
    a.flush(10)
    a.close()
    bs = collected.batches()
    rows = np.concatenate([b["features"] for b in bs])
    np.testing.assert_array_equal(rows, [[0, 1], [2, 3], [4, 5], [1, 2], [3, 4]])
    labels = [lab for b in bs for lab in b["labels"]]
    assert labels[:3] == ["cat", "dog", "cat"]


def test_nan_rows_are_flagged(collected):
    a = modeltap.Agent("m", sink=collected, metrics_interval=None)
    X = np.array([[1.0, 2.0], [np.nan, 1.0], [np.inf, 0.0]])
    a.log_batch(X, np.zeros(3))
    a.flush(10)
    a.close()
    f = collected.batches()[0]["flags"]
    assert list(f & 3) == [0, 1, 2]
    assert a.stats()["flagged"] == 2


def test_mismatched_shapes_are_rejected_whole(collected):
    a = modeltap.Agent("m", sink=collected, metrics_interval=None)
    a.log_batch(np.zeros((2, 3)), np.zeros(2))
    assert a.log_batch(np.zeros((4, 5)), np.zeros(4)) == []  # wrong width
    assert a.log_batch(np.zeros((4, 3)), np.zeros(3)) == []  # wrong prediction count
    assert a.log_batch(np.zeros((4, 3)), np.zeros(4), np.zeros((3, 2))) == []
    s = a.stats()
    assert s["invalid"] == 12
    a.flush(10)
    assert a.stats()["shipped"] == 2
    a.close()


def test_categorical_columns_in_arrays(collected):
    a = modeltap.Agent(
        "m", features=["x", "store"], categorical=["store"], sink=collected, metrics_interval=None
    )
    a.log_batch(np.array([[0.5, 3], [1.5, 4], [2.5, 3]]), np.zeros(3))
    a.flush(10)
    a.close()
    b = collected.batches()[0]
    assert b["categories"]["store"] == ["3", "4", "3"]


def test_dataframes_and_arrow_tables_with_categorical_columns(collected):
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    rng = np.random.default_rng(5)
    n = 3000
    df = pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n)})
    df["city"] = rng.choice(["paris", "rome", None], size=n)
    df["tier"] = pd.Categorical(rng.choice(["gold", "silver"], size=n))
    ref = modeltap.Reference.from_data(df)
    a = modeltap.Agent("m", reference=ref, sink=collected, metrics_interval=None)
    shuffled = df[["tier", "city", "y", "x"]]  # column order does not matter
    ids = a.log_batch(shuffled, np.zeros(n))
    ids += a.log_batch(pa.Table.from_pandas(df), np.zeros(n))
    ids += a.log_batch(pl.from_pandas(df), np.zeros(n))
    assert len(ids) == 3 * n
    assert a.log_batch(df.drop(columns=["y"]), np.zeros(n)) == []  # a column missing
    assert a.flush(10)
    rep = a.drift()
    a.close()
    assert a.stats()["invalid"] == n
    got = collected.batches()
    cities = [c for b in got for c in b["categories"]["city"]]
    tiers = [c for b in got for c in b["categories"]["tier"]]
    want_city = [None if pd.isna(v) else v for v in df["city"]]
    assert cities == want_city * 3
    assert tiers == list(df["tier"].astype(str)) * 3
    xs = np.concatenate([b["features"][:, b["feature_names"].index("x")] for b in got])
    np.testing.assert_array_equal(xs, np.tile(df["x"].to_numpy(), 3))
    assert rep.drifted == []  # the same data as the reference
    assert rep["city"]["missing_cur"] == pytest.approx(df["city"].isna().mean())


def test_request_ids_are_a_lazy_sequence_of_strings():
    from collections.abc import Sequence

    agent = modeltap.Agent("m", metrics_interval=None)
    ids = agent.log_batch(np.zeros((1_000, 2)), np.zeros(1_000))
    given = agent.log_batch(np.zeros((3, 2)), np.zeros(3), request_ids=["a", "b", "c"])
    agent.close()
    assert isinstance(ids, modeltap.RequestIds)
    assert isinstance(ids, Sequence)
    as_list = ids.tolist()
    assert len(ids) == 1_000
    assert len(set(as_list)) == 1_000
    assert all(isinstance(i, str) and len(i) == 32 for i in ids)
    assert list(ids) == as_list
    assert ids == as_list
    assert ids == tuple(as_list)
    for other in (as_list[:-1], as_list[::-1], "x", [1] * 1_000):
        assert ids != other
    assert ids[0] == as_list[0]
    assert ids[-1] == as_list[-1]
    assert ids[10:20:3] == as_list[10:20:3]
    assert as_list[500] in ids
    assert "0" * 32 not in ids
    assert 5 not in ids
    with pytest.raises(IndexError):
        ids[1_000]
    with pytest.raises(TypeError):
        ids["a"]
    assert given == ["a", "b", "c"]
    assert given[1] == "b"
    assert given + ["d"] == ["a", "b", "c", "d"]  # noqa: RUF005
    assert ["z", *given] == ["z", "a", "b", "c"]
    assert ["z"] + given == ["z", "a", "b", "c"]  # noqa: RUF005
    assert not modeltap.RequestIds()
    assert modeltap.RequestIds() == []
    assert "RequestIds(1000" in repr(ids)
    # What code written for the list it used to be does with it.
    import copy
    import pickle

    assert pickle.loads(pickle.dumps(ids)) == as_list
    assert copy.copy(given) == ["a", "b", "c"]
    assert copy.deepcopy(ids) == as_list
    assert ids.index(as_list[7]) == 7
    assert given.count("b") == 1
    assert given.count(3) == 0
    with pytest.raises(ValueError, match="not among"):
        given.index("z")
    with pytest.raises(IndexError):
        ids[2**70]
    with pytest.raises(TypeError):
        given + "xy"
    assert given != {"a": 1, "b": 2, "c": 3}

    class Liar:
        def __len__(self) -> int:
            return 3

        def __iter__(self):
            return iter(["a"])

    assert given != Liar()
    assert given != ("a", "b")


def test_a_large_frame_is_logged_a_slice_at_a_time(collected):
    """A frame of several slices arrives whole and in order, ids, per-row
    latencies and categories included; a slice that cannot be read is
    rejected alone and counted."""
    import pandas as pd

    from modeltap.agent import FRAME_SLICE_ROWS

    n = FRAME_SLICE_ROWS * 2 + 1_234
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": np.arange(n, dtype=np.float64), "y": rng.normal(size=n)})
    df["c"] = rng.choice(["a", "b", "c"], size=n)
    agent = modeltap.Agent(
        "m", sink=collected, metrics_interval=None, buffer_size=1 << 16, on_full="block"
    )
    given = [f"r{i}" for i in range(n)]
    ids = agent.log_batch(
        df, pd.Series(np.arange(n) * 2.0), latency_s=np.full(n, 0.5), request_ids=given
    )
    assert ids == given
    generated = agent.log_batch(df, np.zeros(n))
    assert len(generated) == n
    assert len(set(generated.tolist())) == n
    assert agent.flush(60)
    s = agent.stats()
    assert (s["logged"], s["shipped"], s["invalid"]) == (2 * n, 2 * n, 0), s
    rows = collected.rows()
    first = {rid: i for i, rid in enumerate(rows["request_ids"]) if rid.startswith("r")}
    assert len(first) == n
    order = [first[f"r{i}"] for i in range(n)]
    assert order == sorted(order)
    feats = rows["features"][order]
    np.testing.assert_array_equal(feats[:, 0], df["x"].to_numpy())
    np.testing.assert_array_equal(rows["predictions"][order], np.arange(n) * 2.0)
    cats = [c for b in rows["batches"] for c in b["categories"]["c"]]
    assert [cats[i] for i in order] == df["c"].tolist()
    # Text in a numeric column of the second slice only.
    bad = df.copy()
    bad["x"] = bad["x"].astype(object)
    bad.loc[FRAME_SLICE_ROWS + 5, "x"] = "oops"
    ids = agent.log_batch(bad, np.zeros(n))
    assert len(ids) == n - FRAME_SLICE_ROWS
    s = agent.stats()
    agent.close()
    assert (s["logged"], s["invalid"]) == (3 * n, FRAME_SLICE_ROWS), s


@pytest.mark.parametrize(
    "kw",
    [
        {"predictions": "generator"},
        {"predictions": 1.0},
        {"predictions": "array", "request_ids": "generator"},
        {"predictions": "array", "latency_s": 0.25},
    ],
)
def test_a_large_frame_with_arguments_that_cannot_be_sliced(kw):
    """Generators, scalars and the like go through the one-call path: read
    or rejected whole, never raised, every row counted."""
    import pandas as pd

    from modeltap.agent import FRAME_SLICE_ROWS

    n = FRAME_SLICE_ROWS + 7
    df = pd.DataFrame({"a": np.zeros(n)})
    make = {
        "generator": lambda: (0.0 for _ in range(n)),
        "array": lambda: np.zeros(n),
    }
    args = {k: make[v]() if isinstance(v, str) else v for k, v in kw.items()}
    if "request_ids" in kw:
        args["request_ids"] = (f"r{i}" for i in range(n))
    agent = modeltap.Agent("m", sink=[].append, metrics_interval=None)
    ids = agent.log_batch(df, **args)
    agent.close()
    s = agent.stats()
    assert s["logged"] == n
    if kw["predictions"] == 1.0:
        assert (len(ids), s["invalid"]) == (0, n)
    else:
        assert (len(ids), s["invalid"]) == (n, 0)


def test_probabilities_as_lists_of_rows(collected):
    agent = modeltap.Agent("m", sink=collected, metrics_interval=None)
    ids = agent.log_batch(np.zeros((3, 2)), [0, 1, 2], probabilities=[[0.5, 0.5]] * 3)
    tuples = agent.log_batch(np.zeros((2, 2)), [0, 1], probabilities=((0.2, 0.8), (0.9, 0.1)))
    ragged = agent.log_batch(np.zeros((2, 2)), [0, 1], probabilities=[[0.5, 0.5], [1.0]])
    assert agent.flush(10)
    s = agent.stats()
    agent.close()
    assert (len(ids), len(tuples), len(ragged)) == (3, 2, 0)
    assert (s["logged"], s["invalid"]) == (7, 2), s
    probs = [p for b in collected.batches() for p in b["probabilities"]]
    assert np.allclose(
        np.asarray(probs[:5], dtype=float), [[0.5, 0.5]] * 3 + [[0.2, 0.8], [0.9, 0.1]]
    )
