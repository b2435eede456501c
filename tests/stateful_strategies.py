"""The generators of tests/test_agent_stateful.py: hostile and ordinary
values, features, request ids, agent configurations, and the arguments of
``log_batch`` (matrices, predictions, probabilities, latencies, frames)."""

from __future__ import annotations

import decimal
import fractions
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import strategies as st

import modeltap
from stateful_oracle import (
    INF,
    KNOWN_BUGS,
    NAN,
    BothRaise,
    Color,
    CustomError,
    FloatLike,
    FloatRaises,
    IndexLike,
    Level,
    RaisingIterable,
    Reentrant,
    Schema,
    StrRaises,
    Tag,
)

special_floats = st.sampled_from(
    [NAN, INF, -INF, -0.0, 0.0, 1.0, 0.5, 0.1, 1e308, -1e308, 5e-324, 9e15, 1e16, 2.0**53 + 1]
)
any_float = st.one_of(st.floats(), special_floats)
good_float = st.floats(-1e6, 1e6, allow_nan=False)
huge_ints = st.sampled_from(
    [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**400, -(10**400), 0, -1]
)
any_int = st.one_of(st.integers(-(2**70), 2**70), huge_ints)
small_text = st.text(alphabet="abcxyz-é", max_size=4)
any_text = st.one_of(small_text, st.text(max_size=6))
numpy_scalars = st.one_of(
    st.floats(width=64).map(np.float64),
    st.floats(width=32).map(np.float32),
    st.floats(width=16).map(np.float16),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.integers(0, 2**64 - 1).map(np.uint64),
    st.integers(-128, 127).map(np.int8),
    st.booleans().map(np.bool_),
)
junk_objects = st.one_of(
    st.sampled_from(
        [
            Color.RED,
            Color.GREEN,
            Level.LOW,
            Level.HIGH,
            Tag.A,
            FloatRaises(),
            StrRaises(),
            BothRaise(),
            object(),
            b"ab",
            bytearray(b"x"),
            complex(1, 2),
            decimal.Decimal("NaN"),
            decimal.Decimal("1.25"),
            fractions.Fraction(1, 3),
            np.array(2.5),
        ]
    ),
    good_float.map(FloatLike),
    st.integers(-(2**64), 2**64).map(IndexLike),
)
scalars = st.one_of(
    any_float, any_int, st.booleans(), st.none(), any_text, numpy_scalars, junk_objects
)
nested = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(small_text, inner, max_size=2),
    ),
    max_leaves=6,
)


def wide_vector(width: int, seed: int, kind: str) -> Any:
    """A cheap vector of any width (hypothesis draws only its shape)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(width)
    if kind == "int":
        return (v * 100).astype(np.int64)
    if width and seed % 3 == 0:
        v[seed % width] = np.nan
    if kind == "list":
        return v.tolist()
    if kind == "tuple":
        return tuple(v.tolist())
    if kind == "f32":
        return v.astype(np.float32)
    if kind == "strided":
        return np.repeat(v, 2)[::2]
    return v


widths = st.one_of(st.integers(0, 20), st.sampled_from([1, 2, 16, 17, 1024, 1025, 3000]))
vectors = st.builds(
    wide_vector,
    widths,
    st.integers(0, 2**16),
    st.sampled_from(["list", "tuple", "f32", "int", "strided", "f64"]),
)
predictions = st.one_of(
    st.none(),
    any_float,
    any_int,
    st.booleans(),
    small_text,
    any_text,
    numpy_scalars,
    vectors,
    st.lists(scalars, max_size=5),
    junk_objects,
    st.dictionaries(small_text, good_float, max_size=2),
    good_float.map(Reentrant),
)
probabilities = st.one_of(
    st.none(),
    st.none(),
    vectors,
    st.lists(st.one_of(good_float, scalars), max_size=6),
    scalars,
)
latencies = st.one_of(st.none(), st.none(), good_float, any_float, scalars)
errors = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    any_text.map(ValueError),
    any_text.map(CustomError),
    any_text,
    st.sampled_from([StrRaises(), KeyboardInterrupt("stop"), 0, Color.RED]),
)
attributes = st.one_of(
    st.none(),
    st.none(),
    st.dictionaries(st.one_of(small_text, st.integers(0, 3)), nested, max_size=3),
    st.sampled_from([[1, 2], "k=v", 5]),
)


def cat_value() -> st.SearchStrategy[Any]:
    return st.one_of(
        small_text,
        small_text,
        st.integers(-3, 3),
        st.sampled_from([None, NAN, 1.0, 1.5, 1e16, 1e-7, True, np.bool_(False), Color.RED, Tag.B]),
        scalars,
    )


def feature_value(categorical: bool) -> st.SearchStrategy[Any]:
    if categorical:
        return cat_value()
    return st.one_of(good_float, good_float, good_float, scalars, good_float.map(Reentrant))


@st.composite
def feature_args(draw: Any, schema: Schema | None, declared: list[str] | None) -> Any:
    """Features for one ``log``: mostly right, often wrong, sometimes absurd."""
    if schema is not None:
        names, cats = schema.names, schema.cats
    elif declared is not None:
        names, cats = declared, frozenset()
    else:
        names = [f"f{i}" for i in range(draw(st.integers(0, 5)))]
        cats = frozenset()
    nf = len(names)
    form = draw(
        st.sampled_from(
            ["list"] * 6
            + ["tuple", "ndarray", "ndarray", "dict", "dict", "wrong", "junk", "series"]
        )
    )
    row = [draw(feature_value(n in cats)) for n in names]
    if form == "list":
        return row
    if form == "tuple":
        return tuple(row)
    if form == "ndarray":
        if cats:
            return np.array(
                [draw(st.one_of(good_float, st.integers(-2, 2))) for _ in names], dtype=float
            )
        x = np.array([draw(any_float) for _ in names], dtype=np.float64)
        how = draw(st.sampled_from(["c", "strided", "f32", "int", "be", "object"]))
        if how == "strided":
            return np.repeat(x, 2)[::2]
        if how == "f32":
            return np.array([draw(st.floats(width=32)) for _ in names], dtype=np.float32)
        if how == "int":
            return np.arange(nf, dtype=np.int64) - 1
        if how == "be":
            return x.astype(">f8")
        if how == "object":
            return np.array([*row, None], dtype=object)[:nf]
        return x
    if form == "dict":
        d: dict[Any, Any] = {}
        for n, v in zip(names, row, strict=True):
            if draw(st.integers(0, 5)) > 0:
                d[n] = v
        if draw(st.integers(0, 4)) == 0:
            d[draw(st.one_of(small_text, st.integers(0, 2)))] = 1.0
        return d
    if form == "wrong":
        k = draw(st.sampled_from([-2, -1, 1, 2, 40]))
        return [draw(good_float) for _ in range(max(nf + k, 0))]
    if form == "series":
        return pd.Series([draw(good_float) for _ in names], dtype=float)
    junk = [
        None,
        5,
        "abc",
        b"ab",
        object(),
        {1, 2},
        range(nf),
        np.zeros((1, max(nf, 1))),
        (x for x in range(nf)),
        [[1.0] * 2] * nf,
        Color.RED,
        RaisingIterable(),
    ]
    return draw(st.sampled_from(junk))


@st.composite
def request_id_args(draw: Any, counter: int) -> Any:
    kind = draw(
        st.sampled_from(["none"] * 5 + ["text", "int", "surrogate", "unprintable", "empty"])
    )
    if kind == "none":
        return None
    if kind == "text":
        return f"u{counter}:{draw(any_text)}"
    if kind == "int":
        return 10**30 + counter
    if kind == "surrogate":
        return f"s{counter}\ud800x"
    if kind == "unprintable":
        return StrRaises()
    return "" if counter % 7 == 0 else f"e{counter}"


@dataclass
class Config:
    schema: str
    features: list[str] | None
    categorical: list[str]
    buffer_size: int
    buffer_bytes: int | None
    batch_size: int
    max_pending_records: int
    on_full: str
    sample_rate: float
    strict: bool
    flush_interval: float


@st.composite
def configs(draw: Any) -> Config:
    schema = draw(st.sampled_from(["inferred", "declared", "categorical", "reference"]))
    features: list[str] | None = None
    cats: list[str] = []
    if schema == "declared":
        features = ["a", "b", "c"][: draw(st.integers(1, 3))]
    elif schema == "categorical":
        features = ["a", "k", "b"]
        cats = ["k"] if draw(st.booleans()) else ["k", "b"]
    elif schema == "reference":
        features, cats = ["a", "b", "k"], ["k"]
    sample_rate = 1.0
    if draw(st.integers(0, 3)) == 0 or (schema == "reference" and draw(st.booleans())):
        sample_rate = draw(st.sampled_from([0.1, 0.5, 0.9]))
    return Config(
        schema=schema,
        features=features,
        categorical=cats,
        buffer_size=draw(st.integers(8, 64)),
        buffer_bytes=draw(st.sampled_from([None, None, 1 << 20])),
        batch_size=draw(st.integers(1, 16)),
        max_pending_records=draw(st.integers(8, 64)),
        on_full=draw(st.sampled_from(["drop", "drop", "block"])),
        sample_rate=sample_rate,
        strict=draw(st.integers(0, 5)) == 0,
        flush_interval=draw(st.sampled_from([0.02, 0.2, 1.0])),
    )


_REFERENCE: modeltap.Reference | None = None


def reference() -> modeltap.Reference:
    global _REFERENCE
    if _REFERENCE is None:
        rng = np.random.default_rng(7)
        df = pd.DataFrame(
            {
                "a": rng.standard_normal(500),
                "b": rng.uniform(0, 10, 500),
                "k": rng.choice(["abc", "x", "y", "é"], 500),
            }
        )
        _REFERENCE = modeltap.Reference.from_data(
            df,
            categorical=["k"],
            predictions=rng.standard_normal(500),
            probabilities=rng.uniform(0, 1, (500, 2)),
        )
    return _REFERENCE


# -- batch generators ---------------------------------------------------------


@st.composite
def batch_matrices(draw: Any, n: int, nf: int, valid: bool) -> Any:
    if valid:
        forms = ["f64"] * 4 + ["f32", "fortran", "strided", "int", "list", "be"]
        if n == 1:
            forms.append("1d")
    else:
        forms = ["wrong", "1d", "3d", "junk"]
    form = draw(st.sampled_from(forms))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, nf))
    if n and nf and draw(st.booleans()):
        k = draw(st.integers(1, 3))
        for _ in range(k):
            X[draw(st.integers(0, n - 1)), draw(st.integers(0, nf - 1))] = draw(special_floats)
    if form == "f32":
        with np.errstate(over="ignore"):
            return X.astype(np.float32)
    if form == "fortran":
        return np.asfortranarray(X)
    if form == "strided":
        return np.repeat(X, 2, axis=1)[:, ::2]
    if form == "int":
        return (np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0).clip(-1e6, 1e6) * 10).astype(
            np.int32
        )
    if form == "list":
        return X.tolist()
    if form == "wrong":
        return rng.standard_normal((n, nf + draw(st.sampled_from([1, 2]))))
    if form == "1d":
        return X[0] if n else np.empty(0)
    if form == "3d":
        return X.reshape(n, nf, 1)
    if form == "be":
        return X.astype(">f8")
    if form == "junk":
        return draw(st.sampled_from([None, "abc", 5.0, [[1.0, "x"]] * n, [[1.0], [1.0, 2.0]]]))
    return X


@st.composite
def batch_predictions(draw: Any, n: int, valid: bool) -> Any:
    if valid:
        forms = ["f64", "f64", "i64", "f32", "2d", "labels", "scalars", "vectors", "vectors"]
    else:
        forms = ["wrong", "none"]
    form = draw(st.sampled_from(forms))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if form == "f64":
        p = rng.standard_normal(n)
        if n and draw(st.booleans()):
            p[0] = draw(special_floats)
        return p
    if form == "i64":
        return rng.integers(-5, 5, n)
    if form == "f32":
        return rng.standard_normal(n).astype(np.float32)
    if form == "2d":
        w = draw(st.sampled_from([0, 1, 2, 16, 17, 40]))
        return rng.standard_normal((n, w))
    if form == "labels":
        return [draw(st.sampled_from(["cat", "dog", "", "é"])) for _ in range(n)]
    if form == "scalars":
        return [
            draw(st.one_of(any_float, any_int, st.none(), small_text, numpy_scalars))
            for _ in range(n)
        ]
    if form == "vectors":
        w = draw(st.sampled_from([1, 2, 3, 20]))
        out = []
        for i in range(n):
            k: Any = w
            if i > 0:
                k = draw(st.sampled_from([w, w, w - 1, w + 1, 0, "scalar"]))
            if k == "scalar":
                out.append(float(rng.standard_normal()))
            elif draw(st.integers(0, 5)) == 0:
                out.append(None)
            else:
                out.append(rng.standard_normal(max(k, 0)).tolist())
        return out
    if form == "wrong":
        return rng.standard_normal(n + 1)
    return None


@st.composite
def batch_probabilities(draw: Any, n: int, valid: bool) -> Any:
    forms = ["none", "none", "2d", "f32", "list"] if valid else ["wrong", "1d", "ragged"]
    form = draw(st.sampled_from(forms))
    if form == "none":
        return None
    w = draw(st.sampled_from([0, 2, 3, 1100]))
    P = np.random.default_rng(draw(st.integers(0, 99))).uniform(0, 1, (n, w))
    if form == "f32":
        return P.astype(np.float32)
    if form == "wrong":
        return P[: max(n - 1, 0)] if n else np.zeros((1, 2))
    if form == "1d":
        return P[:, 0] if w else np.zeros(n)
    if form == "list":
        return P.tolist()
    if form == "ragged":
        rows = P.tolist()
        return [[*r, 0.5] if i % 2 else r for i, r in enumerate(rows)] if n > 1 else [[0.5], []]
    return P


@st.composite
def batch_latencies(draw: Any, n: int, valid: bool) -> Any:
    forms = ["none", "none", "scalar", "vector", "list"] if valid else ["wrong", "text"]
    form = draw(st.sampled_from(forms))
    if form == "scalar":
        return draw(st.one_of(any_float, any_int, numpy_scalars))
    if form == "vector":
        return np.linspace(0.0, 1.0, n)
    if form == "list":
        return [draw(st.one_of(good_float, st.none(), small_text)) for _ in range(n)]
    if form == "wrong":
        return np.zeros(n + 1)
    if form == "text":
        return "slow"
    return None


@st.composite
def batch_request_ids(draw: Any, n: int, counter: int, valid: bool) -> Any:
    form = draw(st.sampled_from(["none", "none", "given"] if valid else ["wrong"]))
    if form == "given":
        return [f"b{counter}-{i}" for i in range(n)]
    if form == "wrong":
        return [f"w{counter}-{i}" for i in range(n + 1)]
    return None


@st.composite
def frames(
    draw: Any, schema: Schema | None, declared: list[str] | None, cats: frozenset[str], n: int
) -> pd.DataFrame:
    names = schema.names if schema else (declared or ["p", "q"])
    is_cat = {nm: (nm in (schema.cats if schema else cats)) for nm in names}
    cols: dict[str, Any] = {}
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    for nm in names:
        if is_cat[nm]:
            kind = draw(st.sampled_from(["text", "text", "int", "float"]))
            if kind == "text":
                cols[nm] = pd.Series(
                    [draw(st.one_of(small_text, st.none())) for _ in range(n)], dtype=object
                )
            elif kind == "int":
                cols[nm] = rng.integers(-3, 3, n)
            else:
                odd = [] if "frame_float_category_spelling" in KNOWN_BUGS else [1e-7, 1e20]
                cols[nm] = rng.choice([0.5, 1.0, 2.0, np.nan, *odd], n)
        else:
            kind = draw(st.sampled_from(["float", "float", "int", "bool", "text"]))
            if kind == "float":
                col = rng.standard_normal(n)
                if n and draw(st.booleans()):
                    col[0] = draw(special_floats)
                cols[nm] = col
            elif kind == "int":
                cols[nm] = rng.integers(-100, 100, n)
            elif kind == "bool":
                cols[nm] = rng.integers(0, 2, n).astype(bool)
            else:
                cols[nm] = pd.Series([draw(small_text) for _ in range(n)], dtype=object)
    df = pd.DataFrame(cols, index=range(n))
    change = draw(st.sampled_from(["none"] * 4 + ["drop", "extra", "shuffle"]))
    if change == "drop" and names:
        df = df.drop(columns=[names[-1]])
    elif change == "extra":
        df["zz"] = 1.0
    elif change == "shuffle":
        df = df[list(reversed(df.columns))]
    return df
