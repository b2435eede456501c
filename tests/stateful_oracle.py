"""The oracle of tests/test_agent_stateful.py: the run's settings from the
environment, hostile values, and what the documented contract says a call
to ``log`` or ``log_batch`` (of arrays or DataFrames) must do (rejected
or kept, and exactly what each kept row decodes to)."""

from __future__ import annotations

import contextlib
import decimal
import enum
import math
import operator
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

EXAMPLES = int(os.environ.get("MODELTAP_STATEFUL_EXAMPLES", "0") or 0)
STEPS = int(os.environ.get("MODELTAP_STATEFUL_STEPS", "0") or 0)
LONG_RUN = EXAMPLES > 0
TRACE = bool(os.environ.get("MODELTAP_STATEFUL_TRACE"))
# Steps (initialisation included) before `close` may be drawn, so that most
# programs spend their time logging into a live agent.
CLOSE_AFTER = 8

# Open bugs this machine finds: the generators avoid their inputs (so the
# rest of the machine stays useful) until the bug is fixed; then the entry
# goes. MODELTAP_STATEFUL_KNOWN=name,name (or "all") exercises them anyway.
# Every bug it found before (an iterator that raises, ragged vector
# predictions, unreadable frames, a vocabulary announced after the drain's
# read, a sink raising SystemExit, a fork forgetting the schema, an empty
# batch, a strict frame counted twice, categories and labels past a full
# vocabulary) has a regression test in tests/test_record_path.py.
_ENABLED = {n.strip() for n in os.environ.get("MODELTAP_STATEFUL_KNOWN", "").split(",")}
KNOWN_BUGS: frozenset[str] = frozenset(
    name for name in () if "all" not in _ENABLED and name not in _ENABLED
)

MISSING, NONFINITE, BAD_VALUE, ERROR, NO_PREDICTION = 1, 2, 4, 8, 16
PROBLEMS = MISSING | NONFINITE | BAD_VALUE | NO_PREDICTION
MONOTONIC = (
    "logged",
    "shipped",
    "dropped_full",
    "dropped_spool",
    "discarded",
    "sampled_out",
    "invalid",
    "flagged",
    "inference_errors",
    "errors",
    "batches",
    "bytes",
)
SETTLED = (
    "shipped",
    "spooled",
    "discarded",
    "dropped_full",
    "dropped_spool",
    "invalid",
    "sampled_out",
)
HEX32 = re.compile(r"[0-9a-f]{32}")
NAN = float("nan")
INF = float("inf")


# -- hostile values ---------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 7


class Tag(str, enum.Enum):
    A = "tag-a"
    B = "tag-b"


class FloatRaises:
    """A number-like whose conversion fails."""

    def __float__(self) -> float:
        raise ArithmeticError("no float for you")

    def __repr__(self) -> str:
        return "FloatRaises()"


class StrRaises:
    """Nothing about it can be printed."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        return "StrRaises()"


class BothRaise(StrRaises):
    def __float__(self) -> float:
        raise OverflowError("nope")


class FloatLike:
    def __init__(self, x: float) -> None:
        self.x = x

    def __float__(self) -> float:
        return self.x

    def __str__(self) -> str:
        return f"FloatLike<{self.x!r}>"


class IndexLike:
    def __init__(self, i: int) -> None:
        self.i = i

    def __index__(self) -> int:
        return self.i

    def __str__(self) -> str:
        return f"IndexLike<{self.i}>"


class CustomError(Exception):
    pass


class Reentrant:
    """Its ``__float__`` logs another record into the agent under test,
    from inside the agent's own parsing of the outer record."""

    def __init__(self, x: float) -> None:
        self.x = x

    def __float__(self) -> float:
        hook = _REENTRY.get("machine")
        if hook is not None and not _REENTRY.get("oracle"):
            hook.inner_log()
        return self.x

    def __str__(self) -> str:
        return f"Reentrant<{self.x!r}>"


class RaisingIterable:
    """Has a length, but its iterator raises on every step."""

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> RaisingIterable:
        return self

    def __next__(self) -> float:
        raise ValueError("broken iterator")


_REENTRY: dict[str, Any] = {}


@contextlib.contextmanager
def oracle_mode():
    """While the oracle inspects values, ``Reentrant`` only converts."""
    _REENTRY["oracle"] = True
    try:
        yield
    finally:
        _REENTRY["oracle"] = False


# -- the oracle: what the agent must do with a value --------------------------


def to_str(obj: Any) -> str:
    """``str(obj)`` as the agent spells it (lone surrogates replaced), or the
    documented placeholder when ``str`` raises."""
    try:
        s = str(obj)
    except Exception:
        return "<unprintable>"
    return lossy(s)


def lossy(s: str) -> str:
    return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def as_double(v: Any) -> float | None:
    """The C-level float conversion (``__float__``, then ``__index__``); no
    parsing of text or buffers."""
    if isinstance(v, float):
        return float.__float__(v)
    if isinstance(v, (str, bytes, bytearray, memoryview)):
        return None
    try:
        return float(v)
    except Exception:
        return None


def index_i64(v: Any) -> int | None:
    try:
        i = operator.index(v)
    except Exception:
        return None
    return i if -(2**63) <= i < 2**63 else None


def check(x: float) -> int:
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        return NONFINITE
    return 0


def number(v: Any) -> tuple[float, int]:
    """A numeric feature value: (value, flags)."""
    if isinstance(v, float):
        x = float.__float__(v)
        return x, check(x)
    if isinstance(v, int):
        x = as_double(v)
        x = NAN if x is None else x
        return x, check(x)
    if v is None:
        return NAN, MISSING
    if isinstance(v, str):
        return NAN, BAD_VALUE
    x = as_double(v)
    if x is None:
        return NAN, BAD_VALUE
    return x, check(x)


def rust_float(x: float) -> str:
    """Rust's ``Display`` of an f64: the shortest digits that round-trip,
    positional. Where two shortest spellings are equally close (the exact
    value ends in 5), Rust rounds half up and Python's ``repr`` half even."""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    short = decimal.Decimal(repr(x)).normalize()
    digits = len(short.as_tuple().digits)
    exact = decimal.Decimal(x)
    ctx = decimal.Context(prec=digits, rounding=decimal.ROUND_HALF_UP)
    up = ctx.plus(exact)
    if up != short and float(up) == x:
        short = up.normalize()
    return format(short, "f")


def repr_float(x: float) -> str:
    """Python's ``repr`` layout of the shortest digits Rust picks (see
    :func:`rust_float` for where those differ from Python's own): fixed for
    decimal exponents -4..15 (".0" when integral), else "1.5e+20"."""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    short = decimal.Decimal(rust_float(x)).normalize()
    sign, digits, _ = short.as_tuple()
    exp = short.adjusted()
    text = "".join(map(str, digits))
    minus = "-" if sign else ""
    if -4 <= exp < 16:
        fixed = format(short.copy_abs(), "f")
        return minus + (fixed if "." in fixed else fixed + ".0")
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def float_spelling(x: float) -> str | None:
    if math.isnan(x):
        return None
    if math.isfinite(x) and x == math.floor(x) and abs(x) < 9.0e15:
        return str(int(x))
    return repr_float(x)


def is_numpy_bool(v: Any) -> bool:
    t = type(v)
    return t.__name__ in ("bool", "bool_") and t.__module__ == "numpy"


def canonical(v: Any) -> str | None:
    """A categorical value's one spelling (the one references use)."""
    if isinstance(v, str):
        return lossy(str.__str__(v))
    if v is None:
        return None
    if isinstance(v, bool) or is_numpy_bool(v):
        try:
            t = bool(v)
        except Exception:
            t = False
        return "true" if t else "false"
    if isinstance(v, float):
        return float_spelling(float.__float__(v))
    if not isinstance(v, int):
        x = as_double(v)
        if x is not None:
            return float_spelling(x)
    return to_str(v)


def vector(v: Any) -> tuple[list[float], int] | None:
    """A 1-D sequence of numbers: (values, flags), or None."""
    if isinstance(v, np.ndarray):
        if v.ndim != 1:
            return None
        if v.dtype.kind == "f" and v.dtype.itemsize in (4, 8):
            vals = [float(x) for x in v.astype(np.float64)]
        else:
            try:
                vals = [float(x) for x in v.astype("float64")]
            except Exception:
                return None
        f = 0
        for x in vals:
            f |= check(x)
        return vals, f
    if isinstance(v, (list, tuple)):
        vals, f = [], 0
        for item in v:
            x, g = number(item)
            vals.append(x)
            f |= g
        return vals, f
    return None


@dataclass
class Pred:
    kind: str = "number"
    values: list[float] = field(default_factory=list)
    label: str | None = None
    flags: int = 0


def prediction(v: Any) -> Pred:
    if v is None:
        return Pred(flags=NO_PREDICTION)
    if isinstance(v, float):
        return Pred("number", [float.__float__(v)])
    if isinstance(v, bool):
        return Pred("int", [1.0 if v else 0.0])
    if isinstance(v, int):
        i = index_i64(v)
        if i is not None:
            return Pred("int", [float(i)])
        x = as_double(v)
        return Pred("number", [NAN if x is None else x])
    if isinstance(v, str):
        return Pred("label", [], canonical(v))
    vec = vector(v)
    if vec is not None:
        return Pred("vector", vec[0], None, vec[1])
    i = index_i64(v)
    if i is not None:
        return Pred("int", [float(i)])
    x = as_double(v)
    if x is not None:
        return Pred("number", [x])
    return Pred(flags=BAD_VALUE | NO_PREDICTION)


def error_parts(e: Any) -> tuple[str, str]:
    if isinstance(e, str):
        return "", lossy(str.__str__(e))
    t = type(e)
    mod = getattr(t, "__module__", "") or ""
    name = t.__qualname__
    full = name if mod in ("", "builtins") else f"{mod}.{name}"
    return full, to_str(e)


@dataclass
class Row:
    """What one kept record must decode to."""

    features: list[Any]  # float (numeric) or str/None (categorical)
    pred: Pred
    probs: list[float]
    flags: int
    latency: float
    error: tuple[str, str] | None
    attrs: dict[str, str]
    t0: int = 0
    t1: int = 0
    agent_id: str = ""


@dataclass
class Verdict:
    """The oracle's answer for one call."""

    n: int  # records handed to the agent (what `logged` grows by)
    rejected: bool = False  # counted as invalid
    raises: bool = False  # strict mode: InvalidRecord
    rows: list[Row] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)  # given ids, per row
    known: str = ""  # the KNOWN_BUGS entry this verdict departs from current code by
    why: str = ""


@dataclass
class Schema:
    names: list[str]
    cats: frozenset[str]

    def is_cat(self, i: int) -> bool:
        return self.names[i] in self.cats


def len_or(v: Any, default: int) -> int:
    try:
        return len(v)
    except Exception:
        return default


def infer_names(features: Any) -> list[str]:
    """The schema a first record fixes when no features were declared."""
    if isinstance(features, dict):
        return [to_str(k) for k in dict.keys(features)]
    return [f"f{i}" for i in range(len_or(features, 0))]


def parse_features(schema: Schema, v: Any) -> tuple[list[Any], int] | str:
    """(row, flags), or the reason the record is rejected."""
    nf = len(schema.names)
    row: list[Any] = [None] * nf
    flags = 0

    def one(i: int, item: Any) -> None:
        nonlocal flags
        if schema.is_cat(i):
            c = canonical(item)
            if c is None:
                flags |= MISSING
            row[i] = c
        else:
            x, g = number(item)
            flags |= g
            row[i] = x

    if isinstance(v, dict):
        matched = 0
        sentinel = object()
        for i, name in enumerate(schema.names):
            try:
                item = dict.get(v, name, sentinel)
            except Exception:
                item = sentinel
            if item is sentinel:
                flags |= MISSING
                row[i] = None if schema.is_cat(i) else NAN
            else:
                matched += 1
                one(i, item)
        if dict.__len__(v) > matched:
            return "unknown feature keys"
        return row, flags
    if isinstance(v, (list, tuple)):
        items = list(v)
    elif hasattr(v, "__len__") and not isinstance(v, str):
        try:
            items = list(iter(v))
        except Exception:
            return "not iterable"
    else:
        return "not a sequence"
    if len(items) != nf:
        return "wrong length"
    for i, item in enumerate(items):
        one(i, item)
    return row, flags


def expect_log(
    schema: Schema,
    strict: bool,
    features: Any,
    pred: Any,
    probabilities: Any,
    latency: Any,
    request_id: Any,
    error: Any,
    attributes: Any,
) -> Verdict:
    rid = None if request_id is None else to_str(request_id)
    parsed = parse_features(schema, features)
    if isinstance(parsed, str):
        return Verdict(1, rejected=True, raises=strict, why=parsed)
    row, flags = parsed
    p = prediction(pred)
    flags |= p.flags
    probs: list[float] = []
    if probabilities is not None:
        vec = vector(probabilities)
        if vec is None:
            flags |= BAD_VALUE
        else:
            probs = vec[0]
            flags |= vec[1] & BAD_VALUE
    lat = NAN
    if latency is not None:
        lat, g = number(latency)
        flags |= g & BAD_VALUE
    err = None
    if error is not None:
        flags |= ERROR
        err = error_parts(error)
    attrs: dict[str, str] = {}
    if attributes is not None:
        if isinstance(attributes, dict):
            for k, val in dict.items(attributes):
                attrs[to_str(k)] = to_str(val)
        else:
            flags |= BAD_VALUE
    if strict and flags & PROBLEMS:
        return Verdict(1, rejected=True, raises=True, why="strict")
    return Verdict(1, rows=[Row(row, p, probs, flags, lat, err, attrs)], ids=[rid])


def _x_matrix(X: Any) -> Any:
    """What ``Agent.log_batch`` hands the recorder for a non-frame ``X``."""
    if not (isinstance(X, np.ndarray) and X.dtype in (np.float32, np.float64)):
        with contextlib.suppress(TypeError, ValueError):
            X = np.asarray(X, dtype=np.float64)
    if isinstance(X, np.ndarray) and X.ndim == 1 and X.size > 0:
        X = X.reshape(1, -1)
    return X


def _batch_preds(preds: Any, n: int) -> list[Pred] | str:
    if isinstance(preds, np.ndarray) and preds.dtype == np.float64 and preds.ndim == 1:
        if len(preds) != n:
            return "prediction rows"
        return [Pred("number", [float(x)]) for x in preds]
    if isinstance(preds, np.ndarray) and preds.dtype == np.int64 and preds.ndim == 1:
        if len(preds) != n:
            return "prediction rows"
        return [Pred("int", [float(x)]) for x in preds]
    if isinstance(preds, np.ndarray) and preds.dtype == np.float64 and preds.ndim == 2:
        if preds.shape[0] != n:
            return "prediction rows"
        if preds.shape[1] == 0:
            return "prediction rows of no values"
        return [Pred("vector", [float(x) for x in r]) for r in preds]
    try:
        items = list(iter(preds))
    except Exception:
        return "predictions not iterable"
    if len(items) != n:
        return "prediction rows"
    # Each row is read on its own: a vector keeps its own width.
    return [prediction(item) for item in items]


def _batch_latency(latency: Any, n: int) -> list[float] | str:
    if latency is None:
        return [NAN] * n
    if not isinstance(latency, (str, bytes)):
        x = as_double(latency)
        if x is not None:
            return [x] * n
    vec = vector(latency)
    if vec is None or len(vec[0]) != n:
        return "latency"
    return vec[0]


def _probability_rows(probabilities: Any) -> np.ndarray | None:
    """Probabilities as log_batch reads them: an array, or rows given as
    lists (one array unless ragged), else None (rejected)."""
    try:
        if isinstance(probabilities, (list, tuple)):
            return np.asarray(probabilities, dtype=np.float64)
        return np.asarray(probabilities.__array__(), dtype=np.float64)
    except Exception:
        return None


def _batch_rows(
    schema: Schema,
    strict: bool,
    M: np.ndarray,
    preds: Any,
    probabilities: Any,
    latency: Any,
    request_ids: Any,
    coded_cats: list[list[str | None]] | None,
) -> Verdict:
    n, nf_in = M.shape
    ps = _batch_preds(preds, n)
    if isinstance(ps, str):
        return Verdict(n, rejected=True, raises=strict, why=ps)
    probs: np.ndarray | None = None
    if probabilities is not None:
        a = _probability_rows(probabilities)
        if a is None or a.ndim != 2 or a.shape[0] != n:
            return Verdict(n, rejected=True, raises=strict, why="probabilities")
        probs = a
    if nf_in != len(schema.names):
        return Verdict(n, rejected=True, raises=strict, why="feature count")
    lat = _batch_latency(latency, n)
    if isinstance(lat, str):
        return Verdict(n, rejected=True, raises=strict, why=lat)
    ids: list[str | None] = [None] * n
    if request_ids is not None:
        try:
            given = [to_str(i) for i in iter(request_ids)]
        except Exception:
            given = []
        if len(given) != n:
            return Verdict(n, rejected=True, raises=strict, why="request ids")
        ids = list(given)
    rows = []
    problems = 0
    for r in range(n):
        flags = ps[r].flags
        feats: list[Any] = []
        for c in range(nf_in):
            x = float(M[r, c])
            if schema.is_cat(c):
                s = coded_cats[r][c] if coded_cats is not None else float_spelling(x)
                if s is None:
                    flags |= MISSING
                feats.append(s)
            else:
                flags |= check(x)
                feats.append(x)
        pr = [] if probs is None else [float(x) for x in probs[r]]
        problems |= flags & PROBLEMS
        rows.append(Row(feats, ps[r], pr, flags, lat[r], None, {}))
    if strict and problems:
        return Verdict(n, rejected=True, raises=True, why="strict")
    return Verdict(n, rows=rows, ids=ids)


def expect_batch(
    schema: Schema | None,
    declared: list[str] | None,
    declared_cats: frozenset[str],
    strict: bool,
    X: Any,
    preds: Any,
    probabilities: Any,
    latency: Any,
    request_ids: Any,
) -> tuple[Verdict, Schema | None]:
    """The verdict, and the schema in force after the call."""
    M = _x_matrix(X)
    if not (isinstance(M, np.ndarray) and M.ndim == 2 and M.dtype in (np.float32, np.float64)):
        n = 1 if isinstance(M, str) else len_or(M, 1)
        if n == 0:
            # Nothing handed over: nothing counted, nothing raised.
            return Verdict(0, rows=[], ids=[]), schema
        return Verdict(n, rejected=True, raises=strict, why="not 2-D"), schema
    n = M.shape[0]
    ps = _batch_preds(preds, n)
    if isinstance(ps, str):
        return Verdict(n, rejected=True, raises=strict, why=ps), schema
    if probabilities is not None:
        a = _probability_rows(probabilities)
        if a is None or a.ndim != 2 or a.shape[0] != n:
            return Verdict(n, rejected=True, raises=strict, why="probabilities"), schema
    if schema is None:
        names = declared if declared is not None else [f"f{i}" for i in range(M.shape[1])]
        schema = Schema(list(names), declared_cats)
    v = _batch_rows(schema, strict, M, preds, probabilities, latency, request_ids, None)
    return v, schema


def _is_string_col(s: pd.Series) -> bool:
    return not (
        pd.api.types.is_integer_dtype(s)
        or pd.api.types.is_float_dtype(s)
        or pd.api.types.is_bool_dtype(s)
    )


def expect_frame(
    schema: Schema | None,
    declared: list[str] | None,
    declared_cats: frozenset[str],
    strict: bool,
    df: pd.DataFrame,
    preds: Any,
    probabilities: Any,
    latency: Any,
    request_ids: Any,
) -> tuple[Verdict, Schema | None]:
    cols = [str(c) for c in df.columns]
    n = len(df)
    if not cols:
        return Verdict(n, rejected=bool(n), raises=strict and bool(n), why="no columns"), schema
    failure = Verdict(n, rejected=True, raises=strict, why="python")
    if schema is None:
        strings = [c for c in cols if _is_string_col(df[c])]
        rows = _probability_rows(probabilities) if probabilities is not None else None
        if probabilities is not None and (rows is None or rows.ndim != 2):
            return failure, schema
        names = declared if declared is not None else cols
        if any(s not in names for s in strings):
            return failure, schema
        schema = Schema(list(names), declared_cats | frozenset(strings))
    if set(cols) != set(schema.names):
        return Verdict(n, rejected=True, raises=strict, why="frame columns"), schema
    M = np.empty((n, len(schema.names)))
    cats: list[list[str | None]] = [[None] * len(schema.names) for _ in range(n)]
    for i, name in enumerate(schema.names):
        col = df[name]
        if schema.is_cat(i):
            for r, item in enumerate(col.tolist()):
                if isinstance(item, float) and math.isnan(item):
                    item = None
                cats[r][i] = canonical(item)
            M[:, i] = 0.0
        else:
            if any(isinstance(x, str) for x in col.tolist()):
                return failure, schema
            M[:, i] = col.to_numpy(dtype=np.float64, na_value=np.nan)
    v = _batch_rows(schema, strict, M, preds, probabilities, latency, request_ids, cats)
    return v, schema


# -- generators ---------------------------------------------------------------
