"""References: the profile of training (or validation) data that production
traffic is compared with."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from modeltap import _core

DEFAULT_BINS = 10


def _to_columns(data: Any, feature_names: Sequence[str] | None) -> tuple[list[str], dict[str, Any]]:
    """Column name → a NumPy array or an Arrow array, from a 2-D array, a
    pandas or polars DataFrame, or an Arrow table."""
    mod = type(data).__module__
    if mod.startswith("polars"):
        data = _polars_to_arrow(data)
        mod = "pyarrow"
    if mod.startswith("pyarrow"):
        names = list(data.column_names)
        return names, {n: data.column(n) for n in names}
    if mod.startswith("pandas"):
        names = [str(c) for c in data.columns]
        return names, {str(c): data[c] for c in data.columns}
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise ValueError(f"reference data must be 2-D (rows x features), got shape {arr.shape}")
    names = (
        list(feature_names) if feature_names is not None else [f"f{i}" for i in range(arr.shape[1])]
    )
    if len(names) != arr.shape[1]:
        raise ValueError(f"{len(names)} feature names for {arr.shape[1]} columns")
    return names, {n: arr[:, i] for i, n in enumerate(names)}


def _polars_to_arrow(df: Any) -> Any:
    """A polars DataFrame as an Arrow table without copies: its ``String``
    columns stay ``string_view`` (the compatibility default copies them into
    ``large_string``); every other column as that default gives it."""
    import polars as pl
    import pyarrow as pa

    level = getattr(pl, "CompatLevel", None)
    text = [n for n, t in df.schema.items() if t == pl.String]
    if level is None or not text or not _has_views():
        return df.to_arrow()
    try:
        views = df.select(text).to_arrow(compat_level=level.newest())
    except TypeError:  # a polars whose to_arrow takes no level
        return df.to_arrow()
    others = [n for n in df.columns if n not in set(text)]
    rest = df.select(others).to_arrow() if others else None
    columns = [
        views.column(n) if n in views.column_names else rest.column(n)  # type: ignore[union-attr]
        for n in df.columns
    ]
    return pa.table(columns, names=list(df.columns))


def _is_numeric(col: Any) -> bool:
    import pyarrow as pa

    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        t = col.type
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))
    dtype = getattr(col, "dtype", None)
    if dtype is None:
        return False
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.number) or np.dtype(dtype) == np.bool_)
    except TypeError:
        # pandas extension dtypes: nullable Int64/Float64/boolean and Arrow
        # numbers are numeric ("category", "string" and the like are not).
        return getattr(dtype, "kind", None) in ("i", "u", "f", "b")


def _numeric_values(col: Any) -> np.ndarray:
    """A contiguous float64 copy-free where possible (building references)."""
    return np.ascontiguousarray(_numeric_view(col), dtype=np.float64)


def _numeric_view(col: Any) -> np.ndarray:
    """A numeric column as a 1-D float64 or float32 array, missing values as
    NaN: a view, strided or not, whenever the data already is one (a column
    of a row-major matrix, a pandas float column), otherwise converted once."""
    import pyarrow as pa

    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        col = col.cast(pa.float64())
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    if isinstance(col, np.ndarray):
        if col.dtype in (np.float64, np.float32) and col.ndim == 1:
            return col
        return np.asarray(col, dtype=np.float64)
    dtype = getattr(col, "dtype", None)
    if type(col).__module__.startswith("pandas") and hasattr(col, "to_numpy"):
        if dtype in (np.float64, np.float32):
            return np.asarray(col.to_numpy())
        # Nullable and Arrow-backed dtypes: <NA> becomes NaN.
        return np.asarray(col.to_numpy(dtype=np.float64, na_value=np.nan))
    return np.asarray(col, dtype=np.float64)


def _arrow_text(col: Any) -> Any:
    """The column as one Arrow ``string``/``large_string`` array when it
    already is text in Arrow memory (Arrow, polars, pandas Arrow-backed
    strings), else None."""
    import pyarrow as pa

    mod = type(col).__module__
    if mod.startswith("pandas"):
        dtype = getattr(col, "dtype", None)
        storage = getattr(dtype, "storage", None)
        arrow_dtype = type(dtype).__name__ == "ArrowDtype"
        if not (storage in ("pyarrow", "pyarrow_numpy") or arrow_dtype):
            return None
        col = pa.Array.from_pandas(col)  # Arrow-backed: no copy
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks != 1:
            return None
        col = col.chunk(0)
    if not isinstance(col, pa.Array):
        return None
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or _is_view(col):
        return col
    return None


# Category spellings a float column gives the same way in every path: the
# agent's (integral values as integers) and Arrow's (used to build
# references; integral when every value is).
_INTEGER_SPELLING = re.compile(r"0|-?[1-9][0-9]{0,14}")


def _integer_categories(column: dict[str, Any]) -> bool:
    """Whether every category the reference kept for ``column`` is spelled
    as an integer (so float data is binned the same whichever path reads it)."""
    return all(_INTEGER_SPELLING.fullmatch(str(c)) for c in column.get("categories") or ())


def _float_categories(col: Any) -> np.ndarray | None:
    """A categorical column of floats (codes in a float matrix, a pandas or
    Arrow float column) as a float array, in place where it already is one,
    missing values as NaN, for the profiling threads; else None."""
    import pyarrow as pa

    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        if not pa.types.is_floating(col.type):
            return None
        return np.asarray(col.to_numpy(zero_copy_only=False))
    if type(col).__module__.startswith("pandas"):
        dtype = getattr(col, "dtype", None)
        if dtype in (np.float64, np.float32):
            col = col.to_numpy()
        elif str(dtype) in ("Float64", "Float32"):
            col = col.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            return None
    if isinstance(col, np.ndarray) and col.ndim == 1 and col.dtype in (np.float64, np.float32):
        return col
    return None


def _has_views() -> bool:
    """Whether this pyarrow knows ``string_view`` (16 and later)."""
    import pyarrow as pa

    return hasattr(pa.types, "is_string_view")


def _is_view(arr: Any) -> bool:
    import pyarrow as pa

    return _has_views() and bool(pa.types.is_string_view(arr.type))


def _view_buffers(arr: Any) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None, int]:
    """Views (16 bytes a row), data buffers, validity bitmap (or None) and
    its bit offset of an Arrow ``string_view`` array, as zero-copy NumPy
    views."""
    validity, views, *data = arr.buffers()
    raw = np.frombuffer(views, dtype=np.uint8)[16 * arr.offset : 16 * (arr.offset + len(arr))]
    buffers = [np.frombuffer(b, dtype=np.uint8) for b in data if b is not None]
    bits = None
    if validity is not None and arr.null_count:
        bits = np.frombuffer(validity, dtype=np.uint8)
    return raw, buffers, bits, arr.offset


def _text_buffers(arr: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Offsets (rows + 1), UTF-8 bytes, validity bitmap (or None) and its
    bit offset of an Arrow string array, as zero-copy NumPy views."""
    import pyarrow as pa

    validity, offsets, data = arr.buffers()
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offs = np.frombuffer(offsets, dtype=width)[arr.offset : arr.offset + len(arr) + 1]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    bits = None
    if validity is not None and arr.null_count:
        bits = np.frombuffer(validity, dtype=np.uint8)
    return offs, raw, bits, arr.offset


def _object_values(col: Any) -> np.ndarray | None:
    """A column of Python objects (a pandas object column, a NumPy object
    array) as a 1-D object array, else None."""
    if type(col).__module__.startswith("pandas") and getattr(col, "dtype", None) == np.dtype(
        object
    ):
        col = col.to_numpy()
    if isinstance(col, np.ndarray) and col.dtype == object and col.ndim == 1:
        return col
    return None


def category_codes(col: Any) -> tuple[np.ndarray, list[str]]:
    """A categorical column as integer codes (negative: missing) into a
    dictionary of canonically spelled values, with no per-row Python work:
    a pandas ``category`` column or an Arrow dictionary array gives its own
    codes; anything else is dictionary-encoded by Arrow."""
    import pyarrow as pa

    if type(col).__module__.startswith("pandas") and hasattr(col, "cat"):
        try:
            cats = col.cat.categories
            codes = np.asarray(col.cat.codes.to_numpy())
            spelled = categorical_strings(pa.array(np.asarray(cats), from_pandas=True))
        except (AttributeError, TypeError, pa.ArrowException):
            pass  # categories Arrow cannot read as they are: the path below
        else:
            return codes, _clipped([str(v) for v in spelled.to_pylist()])
    if isinstance(col, pa.ChunkedArray) and col.num_chunks == 1:
        col = col.chunk(0)
    if isinstance(col, pa.DictionaryArray):
        spelled = categorical_strings(col.dictionary)
        if spelled.null_count == 0:
            indices = col.indices
            if pa.types.is_unsigned_integer(indices.type):  # polars: uint32
                indices = indices.cast(pa.int64())
            codes = indices.fill_null(-1).to_numpy(zero_copy_only=False)
            return np.asarray(codes), _clipped([str(v) for v in spelled.to_pylist()])
    values = col
    if type(col).__module__.startswith("pandas") and getattr(col, "dtype", None) == np.dtype(
        object
    ):
        values = col.to_numpy()
    if isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1:
        # Python strings (a pandas object column): encoded natively by their
        # UTF-8; anything else in the column goes through Arrow below.
        done = _core.encode_strings(values)
        if done is not None:
            return done[0], done[1]
    # Encode the values as they are (numbers hash faster than their
    # spellings), then spell only the distinct ones; types Arrow cannot
    # encode as they are (extension types) are spelled first.
    try:
        enc = _arrow_values(col).dictionary_encode()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        enc = categorical_strings(col).dictionary_encode()
    spelled = categorical_strings(enc.dictionary)
    codes = np.asarray(enc.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int32)
    return codes, _clipped([str(v) for v in spelled.to_pylist()])


def categorical_strings(col: Any) -> Any:
    """A categorical column (NumPy, pandas, Arrow) as an Arrow string array,
    missing values (None, NaN) as nulls, integral numbers without a decimal
    point: the values as the agent and references spell them."""
    import pyarrow as pa

    arr = _arrow_values(col)
    if pa.types.is_floating(arr.type):
        # Spelled by the agent's own rule (integral values as integers,
        # others as Python's repr), one distinct value at a time.
        enc = arr.dictionary_encode()
        distinct = np.asarray(enc.dictionary.to_numpy(zero_copy_only=False), dtype=np.float64)
        words = pa.array(_core.spell_floats(distinct), pa.string())
        return pa.DictionaryArray.from_arrays(enc.indices, words).dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    return arr


def _clipped(values: list[str]) -> list[str]:
    """Category values cut as an agent cuts them (1,024 bytes), where any
    is that long."""
    if any(len(v) > _CLIP_CHARS_MIN for v in values):
        return _core.clip_values(values)
    return values


# A str of at most this many characters is within the 1,024 bytes an agent
# keeps of a category (UTF-8 takes at most 4 bytes a character).
_CLIP_CHARS_MIN = 1024 // 4


def spelled_objects(values: Any) -> Any:
    """Python objects of mixed types (strings and numbers in one column,
    which Arrow cannot read) as an Arrow string array, each value spelled as
    the agent spells it (integers and integral floats as integers, booleans
    as true/false), None and NaN as nulls."""
    import pyarrow as pa

    obj = np.asarray(values, dtype=object).ravel()
    done = _core.encode_strings(obj, spell_all=True)
    if done is None:
        raise ValueError("a categorical column with more than 2**31 distinct values")
    codes, dictionary = done
    indices = pa.array(codes, mask=codes < 0)
    return pa.DictionaryArray.from_arrays(
        indices, pa.array(dictionary, pa.string())
    ).dictionary_decode()


def _arrow_values(col: Any) -> Any:
    """A column as one Arrow array of its own values (not yet spelled as
    strings), missing values (None, NaN) as nulls."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if type(arr).__module__.startswith("pandas"):
        try:
            arr = pa.Array.from_pandas(arr)  # Arrow-backed strings: no copy
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = spelled_objects(arr.to_numpy())  # mixed types
    if not isinstance(arr, pa.Array):
        values = arr.to_numpy() if hasattr(arr, "to_numpy") else np.asarray(arr)
        try:
            arr = pa.array(values, from_pandas=True)  # NaN and None become nulls
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = spelled_objects(values)  # mixed types
    # Arrow's kernels take few string views: as large strings (a dictionary's
    # values before it is decoded).
    if pa.types.is_dictionary(arr.type) and _is_view(arr.dictionary):
        arr = pa.DictionaryArray.from_arrays(arr.indices, arr.dictionary.cast(pa.large_string()))
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if _is_view(arr):
        arr = arr.cast(pa.large_string())
    if pa.types.is_floating(arr.type) and pc.any(pc.is_nan(arr)).as_py():
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    return arr


def _category_counts(col: Any) -> tuple[list[str], list[int], int]:
    """Distinct values as strings, their counts and the number of missing
    values, without a per-row Python loop."""
    import pyarrow.compute as pc

    arr = categorical_strings(col)
    vc = pc.value_counts(arr.drop_null())
    values = _clipped([str(v) for v in vc.field("values").to_pylist()])
    counts = [int(c) for c in vc.field("counts").to_pylist()]
    if len(set(values)) < len(values):
        # Long values that are one value once cut, as agents cut them.
        merged: dict[str, int] = {}
        for v, c in zip(values, counts, strict=True):
            merged[v] = merged.get(v, 0) + c
        values, counts = list(merged), list(merged.values())
    return values, counts, int(arr.null_count)


class Reference:
    """A profile of reference data: per numeric column, quantile bins (10 by
    default, or equal-width), a fine 200-quantile histogram that serves as a
    mergeable quantile sketch, min, max, mean, std and missing rate; per
    categorical column, category frequencies (the most frequent
    ``max_categories``, the rest as "other"). Production windows are binned
    against it, so drift is computed from counts."""

    def __init__(self, data: bytes) -> None:
        self._bytes = bytes(data)
        self._info = _core.reference_info(self._bytes)

    # -- building ------------------------------------------------------------

    @classmethod
    def from_data(
        cls,
        X: Any,
        feature_names: Sequence[str] | None = None,
        categorical: Iterable[str] = (),
        bins: int = DEFAULT_BINS,
        *,
        equal_width: bool = False,
        predictions: Any = None,
        probabilities: Any = None,
        max_categories: int = 1000,
        model: str = "",
        version: str = "",
    ) -> Reference:
        """Profiles ``X`` (a 2-D array, a pandas or polars DataFrame, or an
        Arrow table). Columns listed in ``categorical``, and non-numeric
        columns, are categorical. ``predictions`` (numbers: numeric; ints or
        strings: categorical) and ``probabilities`` (rows x classes) profile
        the model's outputs for prediction drift."""
        if bins < 1:
            raise ValueError("bins must be at least 1")
        names, cols = _to_columns(X, feature_names)
        cat = set(categorical)
        unknown = cat - set(names)
        if unknown:
            raise ValueError(f"categorical columns {sorted(unknown)} are not in the data")
        built: list[tuple[bytes, bytes]] = []
        rows = 0
        for name in names:
            col = cols[name]
            rows = max(rows, len(col))
            built.append(
                _build(name, "feature", 0, col, name in cat, bins, equal_width, max_categories)
            )
        if predictions is not None:
            pred = predictions
            numeric = _is_numeric(np.asarray(pred) if not hasattr(pred, "dtype") else pred)
            if numeric and np.issubdtype(np.asarray(pred).dtype, np.integer):
                numeric = False  # class ids
            built.append(
                _build(
                    "prediction",
                    "prediction",
                    0,
                    pred,
                    not numeric,
                    bins,
                    equal_width,
                    max_categories,
                )
            )
        if probabilities is not None:
            P = np.asarray(probabilities, dtype=np.float64)
            if P.ndim != 2:
                raise ValueError("probabilities must be 2-D (rows x classes)")
            for j in range(P.shape[1]):
                built.append(
                    _build(
                        f"probability_{j}",
                        "probability",
                        j,
                        P[:, j],
                        False,
                        bins,
                        equal_width,
                        max_categories,
                    )
                )
        data = _core.assemble_reference(model, version, built, rows, time.time_ns())
        return cls(data)

    # -- comparing data --------------------------------------------------------

    def profile(
        self,
        data: Any,
        *,
        predictions: Any = None,
        probabilities: Any = None,
        feature_names: Sequence[str] | None = None,
    ) -> bytes:
        """Profiles a whole dataset against this reference (natively, a
        column per thread): the encoded window profile that
        :func:`modeltap.drift.compute` and :meth:`drift` read."""

        _names, cols = _to_columns(data, feature_names or self.feature_names)
        numeric: list[tuple[int, np.ndarray]] = []  # float64/float32 views, any stride
        categorical: list[tuple[int, np.ndarray, list[str]]] = []
        text: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None, int]] = []
        number_categories: list[tuple[int, np.ndarray]] = []
        views: list[tuple[int, np.ndarray, list[np.ndarray], np.ndarray | None, int]] = []
        # Python strings (pandas object columns), read by the calling thread
        # while the profiling threads take the other columns.
        objects: list[tuple[int, np.ndarray]] = []
        index = {c["name"]: i for i, c in enumerate(self._info["columns"])}
        kinds = {c["name"]: c["kind"] for c in self._info["columns"]}
        wanted = dict(cols)
        if predictions is not None:
            wanted["prediction"] = predictions
        if probabilities is not None:
            P = np.asarray(probabilities, dtype=np.float64)
            if P.ndim != 2:
                raise ValueError("probabilities must be 2-D (rows x classes)")
            for j in range(P.shape[1]):
                wanted[f"probability_{j}"] = P[:, j]
        missing = [n for n in self.feature_names if n not in wanted]
        if missing:
            raise ValueError(f"data lacks the reference's features {missing}")
        for name, col in wanted.items():
            if name not in index:
                continue
            i = index[name]
            if kinds[name] == "numeric":
                numeric.append((i, _numeric_view(col)))
                continue
            column = self._info["columns"][i]
            floats = _float_categories(col) if _integer_categories(column) else None
            if floats is not None:
                number_categories.append((i, floats))
                continue
            arrow_text = _arrow_text(col)
            if arrow_text is not None:
                if _is_view(arrow_text):
                    views.append((i, *_view_buffers(arrow_text)))
                else:
                    text.append((i, *_text_buffers(arrow_text)))
                continue
            strings = _object_values(col)
            if strings is not None:
                objects.append((i, strings))
                continue
            codes, dictionary = category_codes(col)
            categorical.append((i, codes, dictionary))

        def run(objects: list[tuple[int, np.ndarray]]) -> bytes | None:
            return _core.profile_columns(
                self._bytes,
                numeric,
                categorical,
                text=text,
                number_categories=number_categories,
                views=views,
                objects=objects,
            )

        done = run(objects)
        if done is None:
            # An object column holds more than strings: spelled by Arrow.
            for i, values in objects:
                categorical.append((i, *category_codes(values)))
            done = run([])
        assert done is not None  # no object columns left to refuse
        return done

    def drift(
        self,
        data: Any,
        *,
        predictions: Any = None,
        probabilities: Any = None,
        rules: Any = None,
        defaults: Any = None,
    ) -> Any:
        """Drift of a whole dataset (a 2-D array, a pandas or polars
        DataFrame, an Arrow table) against this reference: a
        :class:`modeltap.DriftReport`."""
        from modeltap.drift import compute

        prof = self.profile(data, predictions=predictions, probabilities=probabilities)
        return compute(self._bytes, prof, rules, defaults)

    # -- files -----------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the reference file (atomically)."""
        tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self._bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Reference:
        """Reads a reference file; raises ``modeltap.ReferenceFormatError`` for
        a file that is not one, is damaged, or comes from a newer modeltap."""
        with open(path, "rb") as f:
            return cls(f.read())

    def to_bytes(self) -> bytes:
        """The file contents."""
        return self._bytes

    # -- description -----------------------------------------------------------

    @property
    def columns(self) -> list[dict[str, Any]]:
        """Per column: name, kind, role and its reference statistics."""
        return list(self._info["columns"])

    @property
    def feature_names(self) -> list[str]:
        """Feature columns, in order."""
        return [c["name"] for c in self._info["columns"] if c["role"] == "feature"]

    @property
    def categorical(self) -> list[str]:
        """Categorical feature columns."""
        return [
            c["name"]
            for c in self._info["columns"]
            if c["role"] == "feature" and c["kind"] == "categorical"
        ]

    @property
    def fingerprint(self) -> str:
        """Identifies the binning; profiles carry it."""
        return str(self._info["fingerprint"])

    @property
    def rows(self) -> int:
        """Rows profiled."""
        return int(self._info["rows"])

    @property
    def model(self) -> str:
        """Model name recorded in the reference (may be empty)."""
        return str(self._info["model"])

    @property
    def version(self) -> str:
        """Model version recorded in the reference (may be empty)."""
        return str(self._info["version"])

    def __repr__(self) -> str:
        kinds = [c["kind"][0] for c in self._info["columns"]]
        return (
            f"Reference({self.rows:,} rows, {kinds.count('n')} numeric and "
            f"{kinds.count('c')} categorical columns, fingerprint {self.fingerprint})"
        )


def _build(
    name: str,
    role: str,
    class_index: int,
    col: Any,
    categorical: bool,
    bins: int,
    equal_width: bool,
    max_categories: int,
) -> tuple[bytes, bytes]:
    if not categorical and _is_numeric(col):
        return _core.build_numeric_column(
            name, role, class_index, _numeric_values(col), bins, equal_width
        )
    # Spelled once; the counts below read the spelled strings.
    arr = categorical_strings(col)
    values, counts, missing = _category_counts(arr)
    if len(values) <= max_categories:
        return _core.build_categorical_column(
            name, role, class_index, values, counts, missing, max_categories
        )
    # More levels than are kept: which ones are kept is decided on half
    # the rows and their counts taken from the other half. Chosen and counted on
    # the same rows, the kept categories' counts would carry the luck that
    # made them frequent, and identical data would look drifted.
    import pyarrow as pa

    seen = values
    # A fixed pseudo-random half (not every other row: rows ordered by
    # region or time would give the halves different categories).
    half = np.random.default_rng(0x5EED).random(len(arr)) < 0.5
    pick_values, pick_counts, _ = _category_counts(arr.filter(pa.array(half)))
    ranked = sorted(zip(pick_counts, pick_values, strict=True), key=lambda t: (-t[0], t[1]))
    chosen = [v for _, v in ranked[:max_categories]]
    values, counts, missing = _category_counts(arr.filter(pa.array(~half)))
    # Every value held goes into the filter that tells "other" (held, not
    # kept) from "unseen" (never held) in production data.
    return _core.build_categorical_column(
        name, role, class_index, values, counts, missing, max_categories, chosen, seen
    )
