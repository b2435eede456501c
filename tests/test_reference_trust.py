"""References and window profiles from outside are checked completely before
use: a hostile or damaged file raises a documented error naming the column
and the problem; it never panics a thread, never allocates without bound,
never counts into the wrong bin. Every native function of references and
profiles raises only documented ``Exception`` subclasses on any input."""

from __future__ import annotations

import copy
import gc
import struct
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeltap
from collector_util import Collector
from modeltap import _core

# -- a small protobuf codec for the messages of profile.proto ------------------
# Encodes canonically (fields in number order, defaults left out), as prost
# does, so that fingerprints computed here match the native ones.

U, D, X, S, M = "varint", "double", "fixed64", "string", "message"
SCHEMA: dict[str, dict[int, tuple[str, str, bool, str | None]]] = {
    "Reference": {
        1: ("format_version", U, False, None),
        2: ("model", S, False, None),
        3: ("version", S, False, None),
        4: ("columns", M, True, "ColumnSpec"),
        5: ("profiles", M, True, "ColumnProfile"),
        6: ("created_unix_nano", X, False, None),
        7: ("rows", U, False, None),
        8: ("fingerprint", S, False, None),
    },
    "ColumnSpec": {
        1: ("name", S, False, None),
        2: ("kind", U, False, None),
        3: ("role", U, False, None),
        4: ("class_index", U, False, None),
        5: ("numeric", M, False, "NumericSpec"),
        6: ("categorical", M, False, "CategoricalSpec"),
    },
    "NumericSpec": {
        1: ("cuts", D, True, None),
        2: ("psi_bin", U, True, None),
        3: ("n_psi_bins", U, False, None),
        4: ("equal_width", U, False, None),
    },
    "CategoricalSpec": {
        1: ("categories", S, True, None),
        2: ("complete", U, False, None),
    },
    "ColumnProfile": {
        1: ("counts", U, True, None),
        2: ("missing", U, False, None),
        3: ("n", U, False, None),
        4: ("sum", D, False, None),
        5: ("sum_sq", D, False, None),
        6: ("shift", D, False, None),
        7: ("min", D, False, None),
        8: ("max", D, False, None),
        9: ("below_min", U, False, None),
        10: ("above_max", U, False, None),
        11: ("below_sum", D, False, None),
        12: ("above_sum", D, False, None),
        13: ("ref_min", D, False, None),
        14: ("ref_max", D, False, None),
        15: ("nonfinite", U, False, None),
    },
    "WindowProfile": {
        1: ("window_start_unix_nano", X, False, None),
        2: ("window_nano", U, False, None),
        3: ("reference_fingerprint", S, False, None),
        4: ("records", U, False, None),
        5: ("errors", U, False, None),
        6: ("flagged", U, False, None),
        7: ("columns", M, True, "ColumnProfile"),
        8: ("latency_counts", U, True, None),
        9: ("latency_sum", D, False, None),
    },
}
MAGIC = b"MTREF\x00\x01\x00"


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def _scalar(kind: str, v: Any) -> bytes:
    if kind == U:
        return _varint(int(v))
    if kind == D:
        return struct.pack("<d", float(v))
    return struct.pack("<Q", int(v))


def encode(msg: str, d: dict[str, Any]) -> bytes:
    out = bytearray()
    for num, (name, kind, rep, sub) in sorted(SCHEMA[msg].items()):
        v = d.get(name)
        if rep:
            if not v:
                continue
            if kind in (U, D, X):  # packed
                body = b"".join(_scalar(kind, x) for x in v)
                out += _varint(num << 3 | 2) + _varint(len(body)) + body
            else:
                for x in v:
                    body = encode(sub, x) if kind == M else x.encode()
                    out += _varint(num << 3 | 2) + _varint(len(body)) + body
        elif kind == M:
            if v is not None:
                body = encode(sub, v)  # type: ignore[arg-type]
                out += _varint(num << 3 | 2) + _varint(len(body)) + body
        elif kind == S:
            if v:
                out += _varint(num << 3 | 2) + _varint(len(v.encode())) + v.encode()
        elif v:  # scalars: 0, 0.0 and False are left out
            wire = {U: 0, D: 1, X: 1}[kind]
            out += _varint(num << 3 | wire) + _scalar(kind, v)
    return bytes(out)


def decode(msg: str, buf: bytes) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _num, (name, kind, rep, _sub) in SCHEMA[msg].items():
        if rep:
            d[name] = []
        elif kind == M:
            d[name] = None
        elif kind == S:
            d[name] = ""
        else:
            d[name] = 0.0 if kind == D else 0
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        name, kind, rep, sub = SCHEMA[msg][num]
        if wire == 0:
            v, i = _read_varint(buf, i)
            vals: list[Any] = [v]
        elif wire == 1:
            raw = buf[i : i + 8]
            i += 8
            vals = [struct.unpack("<d" if kind == D else "<Q", raw)[0]]
        else:
            n, i = _read_varint(buf, i)
            body = buf[i : i + n]
            i += n
            if kind == M:
                vals = [decode(sub, body)]  # type: ignore[arg-type]
            elif kind == S:
                vals = [body.decode()]
            elif kind == U:
                vals, j = [], 0
                while j < len(body):
                    v, j = _read_varint(body, j)
                    vals.append(v)
            else:
                vals = list(struct.unpack(f"<{len(body) // 8}{'d' if kind == D else 'Q'}", body))
        if rep:
            d[name].extend(vals)
        else:
            d[name] = vals[-1]
    return d


def fingerprint(columns: list[dict[str, Any]]) -> str:
    h = 0xCBF29CE484222325
    for c in columns:
        for b in encode("ColumnSpec", c):
            h = ((h ^ b) * 0x100000001B3) & ((1 << 64) - 1)
    return f"{h:016x}"


def ref_bytes(r: dict[str, Any], refingerprint: bool = True) -> bytes:
    r = copy.deepcopy(r)
    if refingerprint:
        r["fingerprint"] = fingerprint(r["columns"])
    return MAGIC + encode("Reference", r)


def ref_dict(data: bytes) -> dict[str, Any]:
    assert data.startswith(MAGIC)
    return decode("Reference", data[len(MAGIC) :])


# -- fixtures --------------------------------------------------------------


def _reference() -> modeltap.Reference:
    rng = np.random.default_rng(7)
    import pandas as pd

    n = 3000
    X = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "y": rng.exponential(size=n),
            "color": rng.choice(["red", "green", "blue"], size=n),
        }
    )
    return modeltap.Reference.from_data(
        X,
        categorical=["color"],
        predictions=rng.integers(0, 4, size=n),
        probabilities=rng.dirichlet([1, 1, 1], size=n),
        model="m",
        version="1",
    )


REF = _reference()
GOOD = ref_dict(REF.to_bytes())
COL = {c["name"]: i for i, c in enumerate(GOOD["columns"])}


def test_codec_round_trips_a_real_reference():
    # The helpers above must reproduce the native encoding byte for byte,
    # or the hostile files below would fail for the wrong reason.
    assert ref_bytes(GOOD) == REF.to_bytes()
    assert fingerprint(GOOD["columns"]) == REF.fingerprint


def _mutate(edit: Any) -> bytes:
    r = copy.deepcopy(GOOD)
    edit(r)
    return ref_bytes(r)


def _num(r: dict[str, Any], col: str = "x") -> dict[str, Any]:
    return r["columns"][COL[col]]["numeric"]  # type: ignore[no-any-return]


def _set(d: dict[str, Any], key: str, value: Any) -> None:
    d[key] = value


def _cat_only(r: dict[str, Any]) -> None:
    c = r["columns"][COL["x"]]
    c["numeric"] = None
    c["categorical"] = {"categories": ["a"], "complete": True}
    r["profiles"][COL["x"]]["counts"] = [r["profiles"][COL["x"]]["n"], 0, 0]


def _psi_out_of_range(r: dict[str, Any]) -> None:
    _num(r)["psi_bin"][-1] = _num(r)["n_psi_bins"] + 5


def _too_many_fine_bins(r: dict[str, Any]) -> None:
    k = 5000
    n = _num(r)
    n["cuts"] = [i / k for i in range(k)]
    n["psi_bin"] = [0] * (k + 1)
    n["n_psi_bins"] = 1
    p = r["profiles"][COL["x"]]
    p["counts"] = [0] * (k + 1)
    p["counts"][0] = p["n"]


def _too_many_categories(r: dict[str, Any]) -> None:
    k = 65_537
    c = r["columns"][COL["color"]]["categorical"]
    c["categories"] = [str(i) for i in range(k)]
    p = r["profiles"][COL["color"]]
    p["counts"] = [0] * (k + 2)
    p["counts"][0] = p["n"]


def _huge_psi_bins(r: dict[str, Any]) -> None:
    _num(r)["n_psi_bins"] = 4_000_000_000


def _second_prediction(r: dict[str, Any]) -> None:
    c = copy.deepcopy(r["columns"][COL["prediction"]])
    c["name"] = "prediction2"
    r["columns"].append(c)
    r["profiles"].append(copy.deepcopy(r["profiles"][COL["prediction"]]))


def _swap_cuts(r: dict[str, Any]) -> None:
    cuts = _num(r)["cuts"]
    cuts[3], cuts[4] = cuts[4], cuts[3]


HOSTILE = {
    # (edit, column named in the message or None, words of the problem)
    "psi bin index out of range": (_psi_out_of_range, "x", "PSI bin index"),
    "numeric kind with only a categorical spec": (_cat_only, "x", "without a numeric spec"),
    "numeric kind without a spec": (
        lambda r: _set(r["columns"][COL["y"]], "numeric", None),
        "y",
        "without a numeric spec",
    ),
    "categorical kind without a spec": (
        lambda r: _set(r["columns"][COL["color"]], "categorical", None),
        "color",
        "without a categorical spec",
    ),
    "both specs": (
        lambda r: _set(r["columns"][COL["color"]], "numeric", copy.deepcopy(_num(r))),
        "color",
        "both",
    ),
    "unknown kind": (lambda r: _set(r["columns"][COL["y"]], "kind", 7), "y", "unknown column kind"),
    "unknown role": (lambda r: _set(r["columns"][COL["y"]], "role", 9), "y", "unknown column role"),
    "cuts out of order": (_swap_cuts, "x", "strictly increasing"),
    "cut NaN": (lambda r: _num(r)["cuts"].__setitem__(5, float("nan")), "x", "not finite"),
    "cut infinite": (lambda r: _num(r)["cuts"].__setitem__(-1, float("inf")), "x", "not finite"),
    "psi map too short": (lambda r: _num(r)["psi_bin"].pop(), "x", "PSI bin map"),
    "psi map jumps": (
        lambda r: _num(r)["psi_bin"].__setitem__(1, 2),
        "x",
        "jumps",
    ),
    "zero psi bins": (lambda r: _set(_num(r), "n_psi_bins", 0), "x", "PSI bins"),
    "absurd psi bins": (_huge_psi_bins, "x", "PSI bins"),
    "too many fine bins": (_too_many_fine_bins, "x", "fine bins"),
    "too many categories": (_too_many_categories, "color", "categories"),
    "category listed twice": (
        lambda r: r["columns"][COL["color"]]["categorical"]["categories"].__setitem__(
            1, r["columns"][COL["color"]]["categorical"]["categories"][0]
        ),
        "color",
        "listed twice",
    ),
    "counts longer than the bins": (
        lambda r: r["profiles"][COL["y"]]["counts"].append(0),
        "y",
        "counts for",
    ),
    "counts disagree with n": (
        lambda r: _set(r["profiles"][COL["y"]], "n", r["profiles"][COL["y"]]["n"] + 1),
        "y",
        "add up to",
    ),
    "counts overflow": (
        lambda r: r["profiles"][COL["y"]]["counts"].__setitem__(0, 2**64 - 1),
        "y",
        "overflow",
    ),
    "more infinities than values": (
        lambda r: _set(r["profiles"][COL["y"]], "nonfinite", 10**9),
        "y",
        "infinite",
    ),
    "range upside down": (
        lambda r: _set(r["profiles"][COL["x"]], "ref_min", 1e9),
        "x",
        "above its maximum",
    ),
    "range not finite": (
        lambda r: _set(r["profiles"][COL["x"]], "ref_max", float("nan")),
        "x",
        "not finite",
    ),
    "column listed twice": (
        lambda r: _set(r["columns"][COL["y"]], "name", "x"),
        "x",
        "listed twice",
    ),
    "second prediction column": (_second_prediction, "prediction2", "second prediction"),
    "a profile missing": (lambda r: r["profiles"].pop(), None, "profiles for"),
}


@pytest.fixture(params=sorted(HOSTILE), name="hostile")
def _hostile(request: pytest.FixtureRequest) -> tuple[str, bytes, str | None, str]:
    edit, column, words = HOSTILE[request.param]
    return request.param, _mutate(edit), column, words


def _raises_format_error(fn: Any, column: str | None, words: str) -> str:
    with pytest.raises(modeltap.ReferenceFormatError) as e:
        fn()
    msg = str(e.value)
    if column is not None:
        assert f'column "{column}"' in msg, msg
    assert words in msg, msg
    return msg


def test_hostile_reference_rejected_everywhere(hostile, tmp_path: Path):
    _name, data, column, words = hostile
    _raises_format_error(lambda: _core.reference_info(data), column, words)
    _raises_format_error(lambda: modeltap.Reference(data), column, words)
    path = tmp_path / "bad.mtref"
    path.write_bytes(data)
    _raises_format_error(lambda: modeltap.Reference.load(path), column, words)
    _raises_format_error(lambda: _core.drift(data, b""), column, words)
    _raises_format_error(lambda: _core.profile_columns(data, [], []), column, words)


def test_psi_bin_out_of_range_no_longer_reaches_drift():
    # The case reported: accepted by reference_info, then Drift panicked
    # (PanicException, a BaseException) indexing the PSI bins.
    data = _mutate(_psi_out_of_range)
    with pytest.raises(modeltap.ReferenceFormatError, match=r'column "x": PSI bin index 17'):
        _core.reference_info(data)
    w = decode("WindowProfile", _window())
    w["reference_fingerprint"] = fingerprint(ref_dict(data)["columns"])
    with pytest.raises(modeltap.ReferenceFormatError, match="PSI bin index"):
        _core.drift(data, encode("WindowProfile", w))


def _forged(data: bytes) -> modeltap.Reference:
    """A Reference object carrying unchecked bytes, as a caller could build
    one, so the native agent's own check is what is tested."""
    r = object.__new__(modeltap.Reference)
    r._bytes = data
    r._info = copy.deepcopy(REF._info)
    return r


def test_agent_refuses_a_numeric_column_with_only_a_categorical_spec():
    # Before: the drain thread panicked mid-pop on the first record and the
    # ring stalled forever. Now the agent refuses the reference up front.
    data = _mutate(_cat_only)
    with pytest.raises(modeltap.ReferenceFormatError, match=r'column "x": numeric column without'):
        modeltap.Agent(model="m", collector=None, reference=_forged(data))


@pytest.mark.parametrize("name", ["psi bin index out of range", "absurd psi bins", "cut NaN"])
def test_agent_refuses_hostile_references(name: str):
    edit, column, words = HOSTILE[name]
    _raises_format_error(
        lambda: modeltap.Agent(model="m", collector=None, reference=_forged(_mutate(edit))),
        column,
        words,
    )


def test_valid_reference_still_profiles_through_the_agent():
    agent = modeltap.Agent(model="m", collector=None, reference=REF)
    try:
        rng = np.random.default_rng(1)
        for _ in range(200):
            agent.log(
                {"x": float(rng.normal()), "y": 1.0, "color": "red"},
                int(rng.integers(0, 4)),
                probabilities=[0.2, 0.3, 0.5],
            )
        assert agent.flush(5.0)
        rep = agent.drift()
        assert rep["x"]["n_cur"] == 200
        assert rep["color"]["n_cur"] == 200
        assert rep["prediction"]["n_cur"] == 200
        assert rep["probability_2"]["n_cur"] == 200
        assert rep.notes == []
    finally:
        agent.close()


def test_builders_refuse_absurd_sizes():
    v = np.arange(10.0)
    with pytest.raises(ValueError, match="bins must be from 1 to 1000"):
        _core.build_numeric_column("x", "feature", 0, v, 10**6)
    with pytest.raises(ValueError, match="bins must be from 1 to 1000"):
        modeltap.Reference.from_data(v.reshape(-1, 1), bins=1001)
    with pytest.raises(ValueError, match="max_categories must be from 1 to 65536"):
        _core.build_categorical_column("c", "feature", 0, ["a"], [1], 0, 10**9)
    with pytest.raises(ValueError, match="listed twice"):
        _core.build_categorical_column("c", "feature", 0, ["a", "a"], [1, 2], 0)
    spec, prof = _core.build_numeric_column("x", "feature", 0, v)
    with pytest.raises(modeltap.ReferenceFormatError, match='column "x": listed twice'):
        _core.assemble_reference("m", "1", [(spec, prof), (spec, prof)], 10, 0)


def test_extreme_values_build_a_valid_reference():
    # The mean of values near f64::MAX used to overflow to inf, which the
    # checks (rightly) refuse as a shift; it is now computed without overflow.
    big = np.array([1.7e308, 1.6e308, -1.0, 5.0])
    ref = modeltap.Reference.from_data(big.reshape(-1, 1), feature_names=["v"])
    col = ref.columns[0]
    assert col["max"] == 1.7e308
    assert np.isfinite(col["mean"])


# -- window profiles ----------------------------------------------------------

DATA = np.random.default_rng(3).normal(size=(400, 2))


def _window() -> bytes:
    import pandas as pd

    X = pd.DataFrame({"x": DATA[:, 0], "y": DATA[:, 1], "color": ["red"] * 400})
    return REF.profile(X, predictions=np.ones(400, dtype=np.int64))


def _wmut(edit: Any) -> bytes:
    w = decode("WindowProfile", _window())
    edit(w)
    return encode("WindowProfile", w)


BAD_WINDOWS = {
    "counts disagree with n": lambda w: _set(w["columns"][0], "n", w["columns"][0]["n"] + 1),
    "more values than records": lambda w: _set(w, "records", 3),
    "window end overflows": lambda w: (
        _set(w, "window_start_unix_nano", 2**64 - 5),
        _set(w, "window_nano", 10),
    ),
    "too many latency buckets": lambda w: _set(w, "latency_counts", [0] * 97),
    "more errors than records": lambda w: _set(w, "errors", w["records"] + 1),
    "too many counts": lambda w: w["columns"][0]["counts"].extend([0] * 70_000),
    "shift not finite": lambda w: _set(w["columns"][0], "shift", float("inf")),
}


@pytest.mark.parametrize("name", sorted(BAD_WINDOWS))
def test_inconsistent_window_profiles_are_rejected(name: str):
    bad = _wmut(BAD_WINDOWS[name])
    for fn in (
        lambda: _core.profile_fingerprint(bad),
        lambda: _core.merge_profiles([_window(), bad]),
        lambda: _core.drift(REF.to_bytes(), bad),
    ):
        with pytest.raises(modeltap.BatchDecodeError, match="inconsistent window profile"):
            fn()
    # In a list, it is left out with a note; the good part still counts.
    d = _core.drift(REF.to_bytes(), [_window(), bad])
    assert d["profiles_skipped"] == 1
    assert d["notes"][0].startswith("profile 1 left out: inconsistent window profile")
    assert d["columns"][COL["x"]]["n_cur"] == 400


def _extra_bin(w: dict[str, Any]) -> None:
    c = w["columns"][COL["x"]]
    c["counts"].append(0)


def test_profile_that_does_not_fit_its_reference():
    good, bad = _window(), _wmut(_extra_bin)
    # merge: a clear error, never a merge into the wrong bins
    with pytest.raises(modeltap.BatchDecodeError, match=r"profile 1: .*column 0: 203 counts"):
        _core.merge_profiles([good, bad])
    # drift of one such profile: the column counts as empty, with a note
    d = _core.drift(REF.to_bytes(), bad)
    assert d["columns"][COL["x"]]["n_cur"] == 0
    assert d["columns"][COL["y"]]["n_cur"] == 400
    assert d["notes"] == ['column "x": the profile has 203 counts, the reference 202; ignored'], d[
        "notes"
    ]
    # a list: the misfit is left out, the rest merged
    d = _core.drift(REF.to_bytes(), [bad, good, good])
    assert d["profiles_skipped"] == 1
    assert "profile 0 left out" in d["notes"][0]
    assert d["columns"][COL["x"]]["n_cur"] == 800
    report = modeltap.drift.compute(REF.to_bytes(), [bad, good])
    assert report["x"]["n_cur"] == 400
    assert len(report.notes) == 1
    assert "note: profile 0 left out" in repr(report)


def test_profile_with_missing_or_extra_columns():
    def drop(w: dict[str, Any]) -> None:
        w["columns"].pop()

    def extra(w: dict[str, Any]) -> None:
        w["columns"].append(copy.deepcopy(w["columns"][0]))

    for edit, want in ((drop, "has 6 columns, the reference 7"), (extra, "has 8 columns")):
        d = _core.drift(REF.to_bytes(), _wmut(edit))
        assert any(want in n for n in d["notes"]), d["notes"]
        d = _core.drift(REF.to_bytes(), [_wmut(edit), _window()])
        assert d["profiles_skipped"] == 1
        assert d["columns"][COL["x"]]["n_cur"] == 400


def test_list_drift_equals_merge_then_drift():
    parts = [_window(), _window(), _window()]
    merged = _core.merge_profiles(parts)
    assert merged is not None
    a = _core.drift(REF.to_bytes(), merged)
    b = _core.drift(REF.to_bytes(), parts)
    assert b["notes"] == []
    assert b["profiles_skipped"] == 0
    nan = float("nan")
    for x, y in zip(a["columns"], b["columns"], strict=True):
        # NaN-aware: statistics that do not apply are NaN on both sides
        assert repr({k: (nan if v != v else v) for k, v in x.items()}) == repr(
            {k: (nan if v != v else v) for k, v in y.items()}
        )


def test_collector_refuses_hostile_reference_and_keeps_serving(tmp_path: Path):
    bad = _mutate(_psi_out_of_range)
    c = Collector(tmp_path / "s.duckdb").start()
    try:
        ch = grpc.insecure_channel(c.addr)
        register = ch.unary_unary(
            "/modeltap.v1.Collector/RegisterReference",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as e:
            register(_core.encode_reference_upload("m", "1", bad), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "PSI bin index" in str(e.value.details())
        # the good one still registers: the collector was not harmed
        fp = _core.decode_text_response(
            register(_core.encode_reference_upload("m", "1", REF.to_bytes()), timeout=10)
        )
        assert fp == REF.fingerprint
        assert c.health() == 1  # SERVING
        ch.close()
    finally:
        c.stop()


def _fields(buf: bytes) -> list[tuple[int, bytes]]:
    """The top-level fields of a message: (number, the field's raw bytes)."""
    out, i = [], 0
    while i < len(buf):
        start = i
        key, i = _read_varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            n, i = _read_varint(buf, i)
            i += n
        out.append((key >> 3, buf[start:i]))
    return out


def test_collector_refuses_a_batch_carrying_a_bad_profile(tmp_path: Path):
    # A batch is only as good as the profiles it carries: one whose profile
    # is inconsistent is refused alone (INVALID_ARGUMENT), and the same
    # batch with its own profile is then stored.
    batches: list[bytes] = []
    agent = modeltap.Agent(
        model="m", version="1", collector=None, sink=batches.append, reference=REF
    )
    agent.log({"x": 0.5, "y": 1.0, "color": "red"}, 2, probabilities=[0.2, 0.3, 0.5])
    assert agent.flush(10.0)
    agent.close()
    (good,) = batches
    profiles = [raw for num, raw in _fields(good) if num == 32]
    assert profiles, "the batch carries its window profile"
    _key, i = _read_varint(profiles[0], 0)
    size, i = _read_varint(profiles[0], i)
    w = decode("WindowProfile", profiles[0][i : i + size])
    w["columns"][0]["n"] += 7
    body = encode("WindowProfile", w)
    bad = b"".join(raw for num, raw in _fields(good) if num != 32)
    bad += _varint(32 << 3 | 2) + _varint(len(body)) + body
    c = Collector(tmp_path / "s.duckdb").start()
    try:
        ch = grpc.insecure_channel(c.addr)
        export = ch.unary_unary(
            "/modeltap.v1.Collector/Export",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as e:
            export(bad, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inconsistent window profile" in str(e.value.details())
        accepted, duplicate, n = _core.decode_export_response(export(good, timeout=10))
        assert accepted
        assert not duplicate
        assert n == 1
        assert c.health() == 1  # SERVING
        ch.close()
    finally:
        c.stop()


# -- int predictions: bounded memory, exact buckets -----------------------------


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def test_distinct_int_predictions_keep_memory_flat():
    # Before: one map entry per distinct integer prediction, forever
    # (3M distinct: +82 MiB). Now the map holds the reference's integer
    # categories only; every other integer is "unseen", counted.
    rng = np.random.default_rng(5)
    ref = modeltap.Reference.from_data(
        rng.normal(size=(1000, 1)),
        feature_names=["x"],
        predictions=rng.integers(0, 10, size=1000),
    )
    agent = modeltap.Agent(model="m", collector=None, reference=ref, window_s=3600.0)
    try:
        X = np.zeros((100_000, 1))
        tracked = np.arange(100_000) % 10
        agent.log_batch(X, tracked)  # warm up: ring, batches, windows
        assert agent.flush(30.0)
        before = _rss()
        n = 3_000_000
        step = 100_000
        t0 = time.monotonic()
        for start in range(0, n, step):
            agent.log_batch(X, np.arange(10 + start, 10 + start + step))
            assert agent.flush(30.0)
        grown = _rss() - before
        assert grown < 24 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over {n:,} distinct ints"
        rep = agent.drift()
        row = rep["prediction"]
        total = n + 100_000
        assert row["n_cur"] == total
        # the tracked values kept their buckets; the rest are unseen
        assert row["out_of_range"] == pytest.approx(n / total)
        assert agent.stats()["logged"] == total, time.monotonic() - t0
    finally:
        agent.close()


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
