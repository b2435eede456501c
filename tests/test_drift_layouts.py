"""Drift does not depend on how the data is laid out: the same values as a
row-major or column-major array (float64 or float32), a pandas frame with
object, ``category``, Arrow-backed or nullable columns, an Arrow table or a
polars frame give the same report (counts exactly, sums to 1e-12)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import modeltap
from report_util import same_reports

ROWS = 30_011  # not a multiple of any tile or thread split
NAMES = [f"x{i}" for i in range(6)]


def _values() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    # float32-representable values, so the float32 layouts hold the same ones
    X = rng.normal(size=(ROWS, len(NAMES)))
    X[:, 1] += 0.8
    X = X.astype(np.float32).astype(np.float64)
    X[::97, 2] = np.nan
    X[5, 3] = np.inf
    X[6, 3] = -np.inf
    country = rng.choice(np.array(["de", "fr", "it", "es"], dtype=object), size=ROWS)
    country[::53] = None
    device = rng.choice(np.array(["ios", "android", "web"], dtype=object), size=ROWS)
    return X, country, device


def _reference() -> tuple[modeltap.Reference, modeltap.Reference]:
    rng = np.random.default_rng(3)
    R = rng.normal(size=(5_000, len(NAMES)))
    ref_num = modeltap.Reference.from_data(R, feature_names=NAMES)
    df = pd.DataFrame(R, columns=NAMES)
    df["country"] = rng.choice(["de", "fr", "it"], size=5_000)
    df["device"] = rng.choice(["ios", "android", "web"], size=5_000)
    return ref_num, modeltap.Reference.from_data(df)


def _same(a: modeltap.DriftReport, b: modeltap.DriftReport, rel: float = 1e-12) -> None:
    same_reports(a, b, rel)


def _each_same(ref: modeltap.Reference, want: modeltap.DriftReport, inputs: dict) -> None:
    """``ref.drift`` of every input equals ``want``; a failure names the input."""
    for name, data in inputs.items():
        try:
            _same(want, ref.drift(data))
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


def test_numeric_layouts_give_one_report():
    X, _, _ = _values()
    ref, _ = _reference()
    want = ref.drift(np.ascontiguousarray(X))
    assert want.records == ROWS
    assert "x1" in want.drifted
    layouts = {
        "F-order float64": np.asfortranarray(X),
        "C-order float32": np.ascontiguousarray(X, dtype=np.float32),
        "F-order float32": np.asfortranarray(X, dtype=np.float32),
        "strided view": np.hstack([X, X])[:, : len(NAMES)],
        "every other row": np.repeat(X, 2, axis=0)[::2],
        "pandas": pd.DataFrame(X, columns=NAMES),
        "pandas Float64 (nullable)": pd.DataFrame(X, columns=NAMES).astype("Float64"),
        "arrow": pa.Table.from_pandas(pd.DataFrame(X, columns=NAMES), preserve_index=False),
    }
    _each_same(ref, want, layouts)


def _frames(X: np.ndarray, country: np.ndarray, device: np.ndarray) -> dict[str, object]:
    base = pd.DataFrame(X, columns=NAMES)

    def with_cats(kind: str | None) -> pd.DataFrame:
        df = base.copy()
        for name, col in (("country", country), ("device", device)):
            df[name] = pd.Series(col, dtype=kind) if kind else pd.Series(col, dtype=object)
        return df

    # As constructed from a matrix, no copy: under pandas 2 its floats stay
    # one row-major block (each column strided) beside object strings.
    built = pd.DataFrame(X, columns=NAMES)
    built["country"], built["device"] = country, device
    frames: dict[str, object] = {
        "pandas from a matrix": built,
        "pandas object": with_cats(None),
        "pandas category": with_cats("category"),
        "pandas string[pyarrow]": with_cats("string[pyarrow]"),
        "pandas string[python]": with_cats("string[python]"),
    }
    table = pa.Table.from_pandas(with_cats(None), preserve_index=False)
    frames["arrow"] = table
    frames["arrow dictionary"] = table.set_column(
        table.schema.get_field_index("country"),
        "country",
        pa.compute.dictionary_encode(table.column("country")),
    )
    polars = pytest.importorskip("polars")
    frames["polars"] = polars.from_arrow(table)
    frames["polars categorical"] = polars.from_arrow(table).with_columns(
        polars.col("country").cast(polars.Categorical)
    )
    return frames


def test_frame_layouts_give_one_report():
    X, country, device = _values()
    _, ref = _reference()
    frames = _frames(X, country, device)
    want = ref.drift(frames["pandas object"])
    assert want.records == ROWS
    assert want["country"]["missing_cur"] > 0
    _each_same(ref, want, frames)


def test_string_views_long_short_sliced_and_null():
    """polars strings are read as Arrow string views where they lie: values
    held inline (at most 12 bytes) and in data buffers, non-ASCII, nulls,
    a sliced frame; the same report as the same values in pandas."""
    polars = pytest.importorskip("polars")
    rng = np.random.default_rng(4)
    n = 20_000
    X = rng.normal(size=(n, len(NAMES)))
    words = np.array(["de", "fr", "it", "a value past twelve bytes", "größer-als-zwölf", ""])
    country = rng.choice(words, size=n).astype(object)
    country[::13] = None
    device = rng.choice(["ios", "android", "web", "a-long-device-name-x"], size=n).astype(object)
    _, ref = _reference()
    df = pd.DataFrame(X, columns=NAMES)
    df["country"], df["device"] = country, device
    pl_df = polars.from_pandas(df)
    assert pa.types.is_string_view(
        pl_df.to_arrow(compat_level=polars.CompatLevel.newest()).schema.field("country").type
    )
    _same(ref.drift(df), ref.drift(pl_df))
    _same(ref.drift(df.iloc[777:15_000]), ref.drift(pl_df.slice(777, 15_000 - 777)))


def test_polars_categorical_enum_and_chunked_strings():
    """polars Categorical and Enum columns (dictionaries) and strings in
    several chunks: the same reference and report as their plain text."""
    polars = pytest.importorskip("polars")
    words = ["alpha", "beta", None, "a-much-longer-word-than-twelve"] * 500
    plain = polars.DataFrame({"c": words, "x": np.arange(len(words), dtype=float)})
    want_ref = modeltap.Reference.from_data(plain.to_pandas(), categorical=["c"])
    want = want_ref.drift(plain.to_pandas())
    enum = polars.Enum(["alpha", "beta", "a-much-longer-word-than-twelve"])
    for kind in (polars.Categorical, enum):
        coded = plain.with_columns(polars.col("c").cast(kind))
        ref = modeltap.Reference.from_data(coded, categorical=["c"])
        assert ref.columns[0]["categories"] == want_ref.columns[0]["categories"]
        _same(want, ref.drift(coded))
    chunked = polars.concat([plain.head(700), plain.tail(len(words) - 700)], rechunk=False)
    assert chunked["c"].n_chunks() == 2
    _same(want, want_ref.drift(chunked))
    _same(want, modeltap.Reference.from_data(chunked, categorical=["c"]).drift(plain))


def test_python_code_run_while_encoding_cannot_free_what_is_read():
    """Spelling a mixed column runs Python code (``__str__``) between rows,
    which may drop strings read before or put new ones at their addresses:
    every row keeps its own code (in a child process: a crash fails here)."""
    script = """
import numpy as np
from modeltap import _core

class Evil:
    def __init__(self, arr):
        self.arr = arr
    def __str__(self):
        self.arr[0] = None  # frees a short string read before...
        self.arr[1] = None  # ... and a big one
        self.arr[3] = "".join(["y"] * 5)  # may take the first one's address
        return "evil"

arr = np.empty(5, dtype=object)
arr[0] = "".join(["x"] * 5)
arr[1] = "".join(["A"] * (1 << 20))
arr[2] = Evil(arr)
arr[4] = "".join(["A"] * (1 << 20))
codes, words = _core.encode_strings(arr, spell_all=True)
print(codes.tolist(), [w[:5] for w in words])
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[0, 1, 2, 3, 1] ['xxxxx', 'AAAAA', 'evil', 'yyyyy']"


def test_hostile_string_views_are_refused():
    from modeltap import _core

    _, ref = _reference()
    col = ref.feature_names.index("country")
    data = np.frombuffer(b"a value past twelve bytes", dtype=np.uint8)

    def view(length: int, buffer: int = 0, offset: int = 0) -> bytes:
        return np.array([length, 0, buffer, offset], dtype="<i4").tobytes()

    def run(views: bytes, buffers: list, bits: np.ndarray | None = None, bit: int = 0) -> bytes:
        raw = np.frombuffer(views, dtype=np.uint8)
        return _core.profile_columns(ref.to_bytes(), [], [], views=[(col, raw, buffers, bits, bit)])

    inline = np.array([2, 0, 0, 0], dtype="<i4").tobytes()
    inline = inline[:4] + b"de" + inline[6:]
    good = inline + view(20, 0, 5)
    prof = run(good, [data])
    assert modeltap.drift.compute(ref.to_bytes(), prof, None, None).records == 2
    for views, buffers, bits, bit in (
        (view(-1), [data], None, 0),  # negative length
        (view(20, 1, 0), [data], None, 0),  # no such buffer
        (view(20, 0, 10), [data], None, 0),  # past the buffer
        (view(20, 0, -4), [data], None, 0),  # negative offset
        (view(20, -1, 0), [data], None, 0),  # negative buffer index
        (good[:20], [data], None, 0),  # not whole entries
        (good, [data], np.zeros(0, np.uint8), 0),  # bitmap too short
    ):
        with pytest.raises(ValueError, match="text column"):
            run(views, buffers, bits, bit)
    # A null row's view is never read, whatever it holds.
    nulls = np.array([0b01], dtype=np.uint8)
    prof = run(inline + view(-5, 9, 9), [], nulls)
    assert modeltap.drift.compute(ref.to_bytes(), prof, None, None).records == 2


def test_category_codes_of_every_width_and_unused_categories():
    """A pandas ``category`` column's own codes are read whatever their
    width (int8 for a few categories, int16 past 127), unused categories and
    missing values included."""
    _, ref = _reference()
    rng = np.random.default_rng(1)
    n = 4_000
    X = rng.normal(size=(n, len(NAMES)))
    many = [f"c{i}" for i in range(300)] + ["de", "fr"]
    country = rng.choice(["de", "fr", "it"], size=n).astype(object)
    country[::11] = None
    device = rng.choice(["ios", "web"], size=n).astype(object)
    plain = pd.DataFrame(X, columns=NAMES)
    plain["country"], plain["device"] = country, device
    coded = plain.copy()
    coded["country"] = pd.Categorical(country, categories=[*many, "it"])
    coded["device"] = pd.Categorical(device, categories=["web", "ios", "tv"])
    assert coded["country"].cat.codes.dtype == np.int16
    _same(ref.drift(plain), ref.drift(coded))


def test_categorical_columns_of_a_numeric_matrix():
    """Integer category codes inside a float matrix (and the same as int
    columns of a frame) are one set of categories, spelled "0", "1", ..."""
    rng = np.random.default_rng(5)
    R = rng.normal(size=(5_000, len(NAMES)))
    R[:, 4] = rng.integers(0, 4, 5_000)
    R[:, 5] = rng.integers(0, 3, 5_000)
    ref = modeltap.Reference.from_data(R, feature_names=NAMES, categorical=["x4", "x5"])
    X = rng.normal(size=(ROWS, len(NAMES)))
    X[:, 4] = rng.choice([0, 1, 2, 3, 7], size=ROWS, p=[0.1, 0.2, 0.3, 0.3, 0.1])
    X[:, 5] = rng.integers(0, 3, ROWS)
    X[::31, 5] = np.nan
    X[1, 4] = -0.0  # the same category as 0
    X = X.astype(np.float32).astype(np.float64)
    want = ref.drift(X)
    assert "x4" in want.drifted
    assert want["x5"]["missing_cur"] > 0
    df = pd.DataFrame(X, columns=NAMES)
    df["x4"] = df["x4"].astype(np.int64)
    df["x5"] = df["x5"].astype("Int64")  # nullable: NaN becomes <NA>
    layouts = {
        "F-order": np.asfortranarray(X),
        "float32": X.astype(np.float32),
        "pandas int columns": df,
        "arrow": pa.Table.from_pandas(df, preserve_index=False),
    }
    _each_same(ref, want, layouts)


def test_many_number_categories_in_a_matrix():
    """More distinct codes than the per-column lookup table holds (values
    sharing its entries): counts equal those of the same codes as an int
    column."""
    rng = np.random.default_rng(9)
    R = np.column_stack([rng.normal(size=20_000), rng.integers(0, 400, 20_000)])
    ref = modeltap.Reference.from_data(R, feature_names=["x", "c"], categorical=["c"])
    X = np.column_stack([rng.normal(size=ROWS), rng.integers(0, 500, ROWS).astype(float)])
    X[::17, 1] = np.nan
    want = ref.drift(pd.DataFrame({"x": X[:, 0], "c": pd.array(X[:, 1], dtype="Int64")}))
    assert want["c"]["missing_cur"] > 0
    _each_same(ref, want, {"matrix": X, "F-order": np.asfortranarray(X)})


def test_encoded_strings_do_not_depend_on_object_identity():
    """A distinct object per row (pandas 3's astype(object)), shared
    objects, str subclasses, non-ASCII text and lone surrogates: the same
    codes for the same text."""
    from modeltap import _core

    class Tagged(str):
        pass

    words = ["north", "süd", "東", "", "x" * 300, "north"]
    shared = np.array(words * 50, dtype=object)
    distinct = np.array(["".join(list(w)) for w in words] * 50, dtype=object)
    assert len({id(v) for v in distinct}) > len(set(words))
    subclassed = np.array([Tagged(w) for w in words] * 50, dtype=object)
    codes, dictionary = _core.encode_strings(shared)
    assert dictionary == ["north", "süd", "東", "", "x" * 300]
    for other in (distinct, subclassed):
        got, got_dictionary = _core.encode_strings(other)
        assert got.tolist() == codes.tolist()
        assert got_dictionary == dictionary
    surrogate = np.array(["a", "\ud800", "a"], dtype=object)
    assert _core.encode_strings(surrogate) is None  # Arrow's spelling decides
    spelled, spelled_dictionary = _core.encode_strings(surrogate, spell_all=True)
    assert spelled.tolist()[0] == spelled.tolist()[2] != spelled.tolist()[1]
    assert len(spelled_dictionary) == 2


def test_object_columns_with_other_values_fall_back_to_arrow_spelling():
    """Strings are encoded natively; a column that also holds numbers or
    booleans is spelled by Arrow, as the reference was."""
    from modeltap import _core

    strings = np.array(["a", None, "b", float("nan"), "a"], dtype=object)
    codes, dictionary = _core.encode_strings(strings)
    assert codes.tolist() == [0, -1, 1, -1, 0]
    assert dictionary == ["a", "b"]
    assert _core.encode_strings(np.array(["a", 1, True], dtype=object)) is None
    assert _core.encode_strings(np.array(["a", 1.5], dtype=object)) is None
    rng = np.random.default_rng(2)
    ref_df = pd.DataFrame({"k": rng.choice(["1", "2", "x"], size=2_000)})
    ref = modeltap.Reference.from_data(ref_df, categorical=["k"])
    mixed = pd.Series(rng.choice([1, 2, "x"], size=5_000).tolist(), dtype=object)
    as_text = pd.Series([str(v) for v in mixed], dtype=object)
    _same(ref.drift(pd.DataFrame({"k": as_text})), ref.drift(pd.DataFrame({"k": mixed})))


def test_hostile_text_buffers_are_refused():
    from modeltap import _core

    _, ref = _reference()
    col = ref.feature_names.index("country")
    data = np.frombuffer(b"defrit", dtype=np.uint8)
    good = np.array([0, 2, 4, 6], dtype=np.int32)
    prof = _core.profile_columns(ref.to_bytes(), [], [], text=[(col, good, data, None, 0)])
    assert modeltap.drift.compute(ref.to_bytes(), prof, None, None).records == 3
    for offsets, bits, bit in (
        (np.array([0, 4, 2, 6], dtype=np.int32), None, 0),  # out of order
        (np.array([0, 2, 4, 9], dtype=np.int32), None, 0),  # past the bytes
        (np.array([-1, 2, 4, 6], dtype=np.int64), None, 0),  # negative
        (np.array([], dtype=np.int32), None, 0),  # no offsets
        (good, np.zeros(0, np.uint8), 0),  # bitmap too short
        (good, np.zeros(1, np.uint8), 6),  # bit offset past the bitmap
    ):
        with pytest.raises(ValueError, match="text column"):
            _core.profile_columns(ref.to_bytes(), [], [], text=[(col, offsets, data, bits, bit)])
    with pytest.raises(TypeError):
        _core.profile_columns(
            ref.to_bytes(), [], [], text=[(col, good.astype(float), data, None, 0)]
        )


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([-0.0, 1.5], np.float64),
        ([1e-7, 0.5], np.float64),
        ([1e16, 0.5], np.float64),
        ([0.1, 0.2], np.float32),
        ([0.0, 1.0, 2.0], np.float64),
    ],
)
def test_float_categories_are_spelled_as_the_reference_spelled_them(values, dtype):
    """A reference's own data shows no drift, whichever layout it comes in."""
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=1_000), rng.choice(values, 1_000)]).astype(dtype)
    ref = modeltap.Reference.from_data(X, feature_names=["x", "c"], categorical=["c"])
    for data in (X, pd.DataFrame(X, columns=["x", "c"]), pa.table({"x": X[:, 0], "c": X[:, 1]})):
        row = ref.drift(data)["c"]
        assert row["js"] == 0.0
        assert row["out_of_range"] == 0.0


def test_categories_arrow_cannot_encode_as_they_are():
    import uuid

    for data in (
        pd.DataFrame({"c": pd.period_range("2020-01", periods=3, freq="M")}),
        pd.DataFrame({"c": pd.Categorical(pd.period_range("2020-01", periods=3, freq="M"))}),
        pa.table({"c": pa.array([uuid.UUID(int=i).bytes for i in (1, 2, 1)], pa.uuid())}),
    ):
        ref = modeltap.Reference.from_data(data, categorical=["c"])
        assert ref.drift(data)["c"]["js"] == 0.0


def test_nullable_and_arrow_numbers_are_numeric():
    """pandas Int64, Float64, boolean and Arrow-backed numbers build numeric
    reference columns; <NA> counts as missing; the report equals the one of
    the same values as float64 with NaN."""
    rng = np.random.default_rng(9)
    n = 20_000
    base = pd.DataFrame(
        {
            "i": rng.integers(0, 50, n).astype(np.float64),
            "f": rng.normal(size=n),
            "b": rng.integers(0, 2, n).astype(np.float64),
            "a": rng.normal(size=n),
        }
    )
    base.loc[::37, ["i", "f", "b", "a"]] = np.nan
    typed = pd.DataFrame(
        {
            "i": base["i"].astype("Int64"),
            "f": base["f"].astype("Float64"),
            "b": base["b"].astype("boolean"),
            "a": base["a"].astype("double[pyarrow]"),
        }
    )
    ref_plain = modeltap.Reference.from_data(base)
    ref_typed = modeltap.Reference.from_data(typed)
    assert [c["kind"] for c in ref_typed.columns] == ["numeric"] * 4
    assert ref_typed.to_bytes() != b""
    for col_plain, col_typed in zip(ref_plain.columns, ref_typed.columns, strict=True):
        assert col_typed["kind"] == col_plain["kind"]
    want = ref_plain.drift(base)
    got = ref_typed.drift(typed)
    _same(want, got)
    assert got["f"]["missing_cur"] > 0
    assert not got.drifted


def test_a_column_mixing_strings_and_numbers():
    """Arrow cannot read a column of str and int together: its values are
    spelled one by one (as log() spells them), for the reference, the
    dataset drift and an agent's DataFrame batches alike."""
    rng = np.random.default_rng(4)
    n = 3_000
    mixed = pd.Series(rng.choice(np.array(["a", 1, 2, True, None], dtype=object), n), dtype=object)
    as_text = pd.Series([None if v is None else str(v) for v in mixed], dtype=object)
    as_text = as_text.replace({"True": "true"})
    df = pd.DataFrame({"x": rng.normal(size=n), "k": mixed})
    ref = modeltap.Reference.from_data(df, categorical=["k"])
    cats = sorted(ref.columns[1]["categories"])
    assert cats == ["1", "2", "a", "true"]
    _same(ref.drift(pd.DataFrame({"x": df["x"], "k": as_text})), ref.drift(df))
    assert ref.drift(df)["k"]["js"] == 0.0
    batches: list[bytes] = []
    agent = modeltap.Agent("m", reference=ref, sink=batches.append, metrics_interval=None)
    agent.log_batch(df, np.zeros(n))
    agent.flush(10)
    s = agent.stats()
    report = agent.drift()
    agent.close()
    assert (s["logged"], s["invalid"], s["errors"]) == (n, 0, 0), s
    assert report["k"]["js"] == pytest.approx(0.0, abs=1e-12)
    got = [v for b in batches for v in modeltap.decode_batch(b)["categories"]["k"]]
    assert got == as_text.tolist()
