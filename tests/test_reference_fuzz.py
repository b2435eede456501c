"""Every native function of references and window profiles, fed mutated
bytes, forged fields and hostile arguments, raises only documented
``Exception`` subclasses."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap import _core
from reference_util import (
    COL,
    DATA,
    GOOD,
    REF,
    _window,
    decode,
    encode,
    fingerprint,
    ref_bytes,
)

# -- hostile inputs: only documented exceptions ---------------------------------

ALLOWED = (ValueError, TypeError, OverflowError)


def _only_documented(fn: Any, *args: Any) -> None:
    escaped: BaseException | None = None
    try:
        fn(*args)
    except ALLOWED:
        return
    except BaseException as e:
        escaped = e
    # PanicException (a BaseException) or InternalError (a caught panic)
    # mean a bug; anything else is undocumented.
    assert escaped is None, f"{fn.__name__} raised {type(escaped).__mro__}: {escaped}"


def _flip(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, val in ops:
        if not buf:
            break
        i = pos % len(buf)
        if kind == 0:
            buf[i] = val
        elif kind == 1:
            del buf[i:]
        elif kind == 2:
            buf.insert(i, val)
        else:
            del buf[i : i + val % 8 + 1]
    return bytes(buf)


OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**20), st.integers(0, 255)), max_size=6)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WINDOW = _window()
FIELDS = st.dictionaries(
    st.sampled_from(
        [
            "n",
            "missing",
            "nonfinite",
            "below_min",
            "above_max",
            "n_psi_bins",
            "kind",
            "role",
            "records",
        ]
    ),
    st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 300)),
    max_size=3,
)


@FUZZ
@given(ops=OPS)
def test_reference_readers_on_mutated_bytes(ops: list[tuple[int, int, int]]):
    data = _flip(REF.to_bytes(), ops)
    _only_documented(_core.reference_info, data)
    _only_documented(_core.drift, data, WINDOW)
    _only_documented(_core.profile_columns, data, [(0, DATA[:, 0].copy())], [])


@FUZZ
@given(
    col=st.integers(0, 6),
    fields=FIELDS,
    psi=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 2**32 - 1)), max_size=2),
    cuts=st.lists(st.tuples(st.integers(0, 300), st.floats()), max_size=2),
)
def test_reference_readers_on_forged_fields(col: int, fields: dict[str, int], psi, cuts):
    # Forged fields under a matching fingerprint, and a profile that claims
    # the forged reference: what a hostile file registered with a collector
    # and used by an agent looks like.
    r = copy.deepcopy(GOOD)
    c, p = r["columns"][col], r["profiles"][col]
    for k, v in fields.items():
        if k == "n_psi_bins" and c["numeric"] is not None:
            c["numeric"][k] = v % 2**32
        elif k in ("kind", "role"):
            c[k] = v % 2**32
        elif k != "records":
            p[k] = v
    if c["numeric"] is not None:
        for i, v in psi:
            if c["numeric"]["psi_bin"]:
                c["numeric"]["psi_bin"][i % len(c["numeric"]["psi_bin"])] = v
        for i, x in cuts:
            if c["numeric"]["cuts"]:
                c["numeric"]["cuts"][i % len(c["numeric"]["cuts"])] = x
    data = ref_bytes(r)
    w = decode("WindowProfile", WINDOW)
    w["reference_fingerprint"] = fingerprint(r["columns"])
    window = encode("WindowProfile", w)
    _only_documented(_core.reference_info, data)
    _only_documented(_core.drift, data, window)
    _only_documented(_core.drift, data, [window, b"\x00"])
    _only_documented(_core.profile_columns, data, [(0, DATA[:, 0].copy())], [])


@FUZZ
@given(ops=OPS, fields=FIELDS, col=st.integers(0, 6))
def test_profile_readers_on_hostile_windows(ops, fields: dict[str, int], col: int):
    w = decode("WindowProfile", WINDOW)
    for k, v in fields.items():
        if k == "records":
            w["records"] = v
        elif k in ("n", "missing", "nonfinite", "below_min", "above_max"):
            w["columns"][col][k] = v
    data = _flip(encode("WindowProfile", w), ops)
    _only_documented(_core.profile_fingerprint, data)
    _only_documented(_core.merge_profiles, [WINDOW, data])
    _only_documented(_core.merge_profiles, [data, data])
    _only_documented(_core.drift, REF.to_bytes(), data)
    _only_documented(_core.drift, REF.to_bytes(), [data, WINDOW])


@FUZZ
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50),
    bins=st.integers(-5, 2000),
    names=st.lists(st.text(max_size=5), max_size=8),
    counts=st.lists(st.integers(0, 2**64 - 1), max_size=8),
    cap=st.integers(-1, 2**40),
    role=st.sampled_from(["feature", "prediction", "probability", "bogus"]),
)
def test_builders_on_hostile_arguments(values, bins, names, counts, cap, role):
    arr = np.array(values, dtype=np.float64)
    _only_documented(_core.build_numeric_column, "x", role, 0, arr, bins)
    _only_documented(_core.build_categorical_column, "c", role, 0, names, counts, 0, cap)
    try:
        spec, prof = _core.build_numeric_column("x", "feature", 0, arr, max(1, min(bins, 1000)))
    except ValueError:
        return
    for cols in ([(spec, prof)], [(spec, prof), (spec, prof)], [(prof, spec)], [(b"\xff", b"")]):
        _only_documented(_core.assemble_reference, "m", "v", cols, 0, 0)


@FUZZ
@given(
    codes=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=30),
    dictionary=st.lists(st.text(max_size=3), max_size=5),
    col=st.integers(-1, 20),
    start=st.integers(0, 2**64 - 1),
    width=st.integers(0, 2**64 - 1),
)
def test_profile_columns_on_hostile_arguments(codes, dictionary, col, start, width):
    arr = np.array(codes, dtype=np.int32)
    floats = np.linspace(-3, 3, len(codes))
    _only_documented(
        _core.profile_columns, REF.to_bytes(), [(col, floats)], [(COL["color"], arr, dictionary)]
    )
    _only_documented(_core.profile_columns, REF.to_bytes(), [], [(col, arr, dictionary)], start)
    _only_documented(_core.profile_columns, REF.to_bytes(), [(0, floats)], [], start, width)


def test_hostile_rules_and_window_types():
    for rules in ({"x": ("bogus", 1.0)}, {"x": ("psi", float("nan"))}):
        with pytest.raises(ValueError, match=r"statistic|NaN"):
            _core.drift(REF.to_bytes(), WINDOW, rules)
    with pytest.raises(TypeError, match="bytes or a list of bytes"):
        _core.drift(REF.to_bytes(), 5)  # type: ignore[arg-type]
