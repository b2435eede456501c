"""References and window profiles from outside are checked completely before
use: a hostile or damaged file raises a documented error naming the column
and the problem; it never panics a thread, never allocates without bound,
never counts into the wrong bin. Every native function of references and
profiles raises only documented ``Exception`` subclasses on any input
(tests/test_reference_fuzz.py)."""

from __future__ import annotations

import copy
import gc
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

import modeltap
from collector_util import Collector
from modeltap import _core
from reference_util import (
    COL,
    GOOD,
    REF,
    _read_varint,
    _varint,
    _window,
    decode,
    encode,
    fingerprint,
    ref_bytes,
    ref_dict,
)


def test_codec_round_trips_a_real_reference():
    # The codec of reference_util.py must reproduce the native encoding byte for byte,
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
