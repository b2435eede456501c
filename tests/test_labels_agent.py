"""Ground-truth labels travel through the ring, the batches and the sink
like records: each arrives once with its id, value and time; bad ones are
counted invalid (or raise in strict mode) without losing the good ones."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pandas as pd
import pytest

import modeltap
from modeltap import _core


def _agent(got: list[bytes], **kw):
    kw.setdefault("metrics_interval", None)
    return modeltap.Agent("m", "1", sink=got.append, **kw)


def _labels(got: list[bytes]) -> list[tuple[str, object, int]]:
    """(request id, label, unix_nano) of every label of every batch, read in
    both forms of decode_batch, which must agree."""
    out = []
    for b in got:
        d = _core.decode_batch(b)
        c = _core.decode_batch(b, columns=True)
        t, tc = d["truth"], c["truth"]
        if t is None:
            assert tc is None
            continue
        n = len(t["request_ids"])
        assert len(t["labels"]) == n == len(t["unix_nano"])
        assert t["unix_nano"].dtype == np.uint64
        assert tc["kind"].dtype == np.uint8
        assert tc["label_codes"].dtype == np.int32
        assert tc["values"].dtype == np.float64
        off = tc["request_id_offsets"]
        assert off.dtype == np.int64
        assert len(off) == n + 1
        assert int(off[-1]) == len(tc["request_id_data"])
        for i in range(n):
            rid = tc["request_id_data"][off[i] : off[i + 1]].decode()
            assert rid == t["request_ids"][i]
            kind, label = int(tc["kind"][i]), t["labels"][i]
            if kind == 2:
                assert np.isnan(tc["values"][i])
                assert tc["label_values"][tc["label_codes"][i]] == label
                assert isinstance(label, str)
            else:
                assert tc["label_codes"][i] == -1
                assert tc["values"][i] == label
                assert isinstance(label, int if kind == 1 else float)
            out.append((t["request_ids"][i], label, int(t["unix_nano"][i])))
    return out


def test_single_labels_of_every_kind_arrive_once():
    got: list[bytes] = []
    a = _agent(got)
    rid = a.log([1.0, 2.0], 1)
    t0 = dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc)
    ns0 = 1714564800250000000
    a.log_label(rid, "cat", ts=t0)
    a.log_label("req-1", 3, ts=1714564800.5)
    a.log_label("req-2", 2.0, ts=dt.datetime(2024, 5, 1, 12, 0, 0, 250000))  # naive: UTC
    a.log_label("req-3", True, ts=np.datetime64(ns0, "ns"))
    a.log_label("r" * 100, np.int64(7), ts=ns0 + 1)
    a.log_label("req-5", np.str_("dog"), ts=pd.Timestamp(ns0 + 3))
    a.log_label("req-6", np.float32(0.5))
    assert a.flush(10)
    got_labels = _labels(got)
    assert [(r, v) for r, v, _ in got_labels] == [
        (rid, "cat"),
        ("req-1", 3),
        ("req-2", 2.0),
        ("req-3", 1),
        ("r" * 100, 7),
        ("req-5", "dog"),
        ("req-6", 0.5),
    ]
    times = [t for _, _, t in got_labels]
    assert times[:6] == [ns0, int(1714564800.5 * 1e9), ns0, ns0, ns0 + 1, ns0 + 3]
    assert abs(times[6] / 1e9 - dt.datetime.now().timestamp()) < 60
    s = a.stats()
    assert s["labels"] == 7
    assert s["labels_dropped"] == 0
    assert s["invalid"] == 0
    # Labels are no records: the record counters add up without them.
    assert s["logged"] == s["shipped"] == 1
    counters = _core.decode_batch(got[-1])["agent_counters"]
    assert counters["labels"] == 7
    assert counters["labels_dropped"] == 0
    a.close()


def test_ten_thousand_labels_from_request_ids():
    got: list[bytes] = []
    a = _agent(got, batch_size=4096)
    n = 10_000
    ids = a.log_batch(np.random.default_rng(1).random((n, 3)), np.zeros(n))
    assert len(ids) == n
    values = np.arange(n, dtype=np.float64) / 7
    ts = np.arange(n, dtype=np.uint64) + 10**18
    assert a.log_labels(ids, values, ts=ts) == n
    assert a.flush(30)
    arrived = _labels(got)
    assert len(arrived) == n
    assert [r for r, _, _ in arrived] == ids.tolist()
    assert [v for _, v, _ in arrived] == values.tolist()
    assert [t for _, _, t in arrived] == ts.tolist()
    s = a.stats()
    assert s["labels"] == n
    assert s["logged"] == n
    assert s["shipped"] == n
    a.close()


def test_labels_from_a_dataframe_and_lists():
    got: list[bytes] = []
    a = _agent(got)
    frame = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "label": ["yes", "no", "yes"],
            "ts": pd.to_datetime([1, 2, 3], unit="s"),
        }
    )
    assert a.log_labels(frame) == 3
    assert a.log_labels(np.array(["d", "e"]), np.array([4, 5]), ts=7.0) == 2
    assert a.log_labels(["f", "g"], [1.5, "x"], ts=[8, np.datetime64(9, "ns")]) == 2
    assert a.log_labels(pd.DataFrame({"request_id": ["h"], "label": [0.25]})) == 1
    assert a.flush(10)
    arrived = _labels(got)
    assert arrived[:7] == [
        ("a", "yes", 1_000_000_000),
        ("b", "no", 2_000_000_000),
        ("c", "yes", 3_000_000_000),
        ("d", 4, 7_000_000_000),
        ("e", 5, 7_000_000_000),
        ("f", 1.5, 8),
        ("g", "x", 9),
    ]
    assert arrived[7][:2] == ("h", 0.25)
    # A batch of labels only: no records at all.
    assert all(_core.decode_batch(b)["n_records"] == 0 for b in got)
    assert a.stats()["logged"] == 0
    a.close()


BAD = [
    ("nan", float("nan")),
    ("inf", float("inf")),
    ("none", None),
    ("list", [1, 2]),
    ("bytes", b"x"),
]


def test_bad_labels_are_counted_invalid_and_the_good_ones_kept():
    got: list[bytes] = []
    a = _agent(got)
    ids = ["ok-1"] + [f"bad-{k}" for k, _ in BAD] + ["", "x" * 257, "ok-2"]
    labels = [1] + [v for _, v in BAD] + [1, 1, "fine"]
    assert a.log_labels(ids, labels) == 2
    a.log_label("single-bad", float("nan"))
    a.log_label("", 1)
    a.log_label("bad-ts", 1, ts="yesterday")
    assert a.log_labels(["x", "y"], [1]) == 0  # lengths differ
    assert a.log_labels(["p", "q"], np.array([1.0, np.nan])) == 1
    assert a.log_labels(["t1", "t2"], [1, 2], ts=[1.0, float("nan")]) == 1
    assert a.flush(10)
    assert [r for r, _, _ in _labels(got)] == ["ok-1", "ok-2", "p", "t1"]
    s = a.stats()
    bad = len(BAD) + 2 + 3 + 2 + 1 + 1
    assert s["invalid"] == bad
    assert s["labels"] == 4
    assert s["logged"] == s["invalid"] + s["shipped"] + s["pending"]
    a.close()


def test_strict_mode_raises_after_keeping_the_good_labels():
    got: list[bytes] = []
    a = _agent(got, strict=True)
    with pytest.raises(modeltap.InvalidRecord, match="label 1"):
        a.log_labels(["a", "b", "c"], [1, float("nan"), 2])
    with pytest.raises(modeltap.InvalidRecord):
        a.log_label("d", None)
    with pytest.raises(modeltap.InvalidRecord):
        a.log_label("e", 1, ts=float("inf"))
    with pytest.raises(modeltap.InvalidRecord):
        a.log_labels(["a"], [1, 2])
    a.log_label("f", "ok")
    assert a.flush(10)
    assert [r for r, _, _ in _labels(got)] == ["a", "c", "f"]
    assert a.stats()["invalid"] == 1 + 1 + 1 + 2
    a.close()


def test_a_full_ring_drops_labels_and_counts_them():
    release = threading.Event()

    def stuck(b: bytes) -> None:
        release.wait(30)

    a = modeltap.Agent(
        "m",
        sink=stuck,
        buffer_size=8,
        batch_size=2,
        max_pending_records=4,
        flush_interval=0.01,
        metrics_interval=None,
        shutdown_timeout=1,
    )
    a.log([1.0], 1)  # fixes the schema, so the ring exists
    for i in range(200):
        a.log_label(f"s{i}", i)  # never waits
    n = 2_000
    # Waits only while the drain thread makes progress: it has stopped.
    accepted = a.log_labels([f"r{i}" for i in range(n)], list(range(n)))
    s = a.stats()
    assert accepted < n
    assert s["labels_dropped"] >= n - accepted
    assert s["labels"] + s["labels_dropped"] == n + 200
    assert s["invalid"] == 0
    assert s["logged"] == 1
    release.set()
    a.close()


def test_labels_before_any_record_travel_on_their_own():
    got: list[bytes] = []
    a = _agent(got)
    a.log_label("early", "cat")
    assert a.flush(10)
    assert _labels(got)[0][:2] == ("early", "cat")
    assert _core.decode_batch(got[0])["n_records"] == 0
    a.log([1.0], 2)
    a.log_label("late", 2)
    assert a.flush(10)
    assert [r for r, _, _ in _labels(got)] == ["early", "late"]
    a.close()


def test_block_mode_waits_for_room():
    got: list[bytes] = []
    a = _agent(got, on_full="block", buffer_size=8, batch_size=4)
    a.log([1.0], 1)
    n = 3_000
    assert a.log_labels([f"b{i}" for i in range(n)], list(range(n))) == n
    assert a.flush(30)
    assert len(_labels(got)) == n
    assert a.stats()["labels_dropped"] == 0
    a.close()


def test_encode_label_batch_round_trips():
    hexid = modeltap.random_id()
    blob = _core.encode_label_batch(
        "a" * 32,
        5,
        "model",
        "v2",
        [hexid, "text-id", "z" * 100, "w"],
        [1, 2.0, "cat", True],
        np.array([10, 20, 30, 40], dtype=np.uint64),
    )
    d = _core.decode_batch(blob)
    assert d["n_records"] == 0
    assert d["batch_seq"] == 5
    assert d["agent_id"] == "a" * 32
    assert d["model"]["model"] == "model"
    assert d["model"]["version"] == "v2"
    assert d["schema_version"] == _core.SCHEMA_VERSION
    assert _labels([blob]) == [
        (hexid, 1, 10),
        ("text-id", 2.0, 20),
        ("z" * 100, "cat", 30),
        ("w", 1, 40),
    ]
    c = _core.decode_batch(blob, columns=True)["truth"]
    assert c["kind"].tolist() == [1, 0, 2, 1]
    assert c["request_id_data"][: c["request_id_offsets"][1]].decode() == hexid
    now = _core.decode_batch(_core.encode_label_batch("a", 0, "m", "", ["r"], [0.5]))
    assert abs(int(now["truth"]["unix_nano"][0]) / 1e9 - dt.datetime.now().timestamp()) < 60


@pytest.mark.parametrize(
    ("ids", "labels", "match"),
    [
        (["a", "b"], [1, float("nan")], "label 1:"),
        (["a"], [float("-inf")], "label 0:"),
        (["a", "b", "c"], [1, 2, None], "label 2:"),
        (["a", ""], [1, 2], "label 1:"),
        (["x" * 257], [1], "label 0:"),
        (["a"], [object()], "label 0:"),
        (["a", "b"], [1], "label 1:"),
    ],
)
def test_encode_label_batch_names_the_first_bad_label(ids, labels, match):
    with pytest.raises(ValueError, match=match):
        _core.encode_label_batch("a", 0, "m", "", ids, labels)


def test_encode_label_batch_checks_the_times():
    with pytest.raises(ValueError, match="unix_nano"):
        _core.encode_label_batch("a", 0, "m", "", ["a", "b"], [1, 2], [1])
