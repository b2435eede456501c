"""The record path under pressure: every row lands once with its own values
or is counted as dropped; bound methods survive fork; interning is atomic;
wide records stay within the byte budget; no call raises a BaseException."""

from __future__ import annotations

import enum
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import modeltap
from modeltap import _core

pytestmark = pytest.mark.filterwarnings("ignore:This process:DeprecationWarning")


class SlowSink:
    """Takes batches, sleeping on the first one (an exporter that stalls)."""

    def __init__(self, first_sleep: float = 0.03) -> None:
        self.raw: list[bytes] = []
        self.first_sleep = first_sleep
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        if not self.raw and self.first_sleep:
            time.sleep(self.first_sleep)
        with self.lock:
            self.raw.append(bytes(data))

    def rows(self) -> tuple[list[str], np.ndarray]:
        ids: list[str] = []
        feats = []
        for raw in self.raw:
            b = modeltap.decode_batch(raw)
            if b["n_records"]:
                ids += b["request_ids"]
                feats.append(b["features"])
        return ids, (np.concatenate(feats) if feats else np.empty((0, 2)))


def check_delivered(sink: SlowSink, logged: dict[str, float], stats: dict[str, int]) -> int:
    """Every delivered row is one that was logged, with its own values, once."""
    ids, feats = sink.rows()
    assert len(ids) == len(set(ids)), "a request id was delivered twice"
    for rid, row in zip(ids, feats, strict=True):
        assert logged[rid] == row[0], "a delivered row holds another record's values"
    assert stats["shipped"] == len(ids)
    assert stats["shipped"] + stats["dropped_full"] == stats["logged"]
    assert stats["pending"] == 0
    return len(ids)


@pytest.mark.parametrize("block", [False, True])
def test_log_batch_into_a_stalled_exporter_never_publishes_stale_rows(block):
    sink = SlowSink()
    agent = modeltap.Agent(
        "m",
        sink=sink,
        buffer_size=64,
        batch_size=16,
        max_pending_records=32,
        metrics_interval=None,
        on_full="block" if block else "drop",
    )
    n = 400_000 if not block else 20_000
    x = np.column_stack([np.arange(n, dtype=np.float64), np.ones(n)])
    ids = agent.log_batch(x, np.zeros(n))
    assert agent.flush(30)
    s = agent.stats()
    agent.close()
    delivered = check_delivered(sink, dict(zip(ids, x[:, 0], strict=True)), s)
    if block:
        assert delivered == n
        assert s["dropped_full"] == 0
    else:
        assert delivered > 0
        assert s["dropped_full"] > 0


def test_log_batch_in_drop_mode_does_not_wait_on_a_stuck_exporter():
    """With an exporter stuck for good, a bulk call gives up within the
    stall window instead of waiting on the caller's thread."""
    release = threading.Event()
    taken: list[bytes] = []

    def stuck(data: bytes) -> None:
        taken.append(data)
        release.wait(30)

    agent = modeltap.Agent(
        "m",
        sink=stuck,
        buffer_size=64,
        batch_size=16,
        max_pending_records=32,
        metrics_interval=None,
    )
    n = 400_000
    t0 = time.monotonic()
    agent.log_batch(np.ones((n, 3)), np.zeros(n))
    elapsed = time.monotonic() - t0
    s = agent.stats()
    release.set()
    agent.close()
    assert elapsed < 5.0, f"log_batch waited {elapsed:.1f} s on a stuck exporter"
    assert s["dropped_full"] >= n - 64 - 32 - 16 - 16
    assert s["logged"] == n


def test_log_into_a_stalled_exporter_keeps_each_records_values():
    sink = SlowSink(first_sleep=0.05)
    agent = modeltap.Agent(
        "m",
        sink=sink,
        buffer_size=8,
        batch_size=4,
        max_pending_records=8,
        metrics_interval=None,
    )
    logged = {}
    for i in range(20_000):
        logged[agent.log([float(i), 1.0], 0)] = float(i)
    assert agent.flush(30)
    s = agent.stats()
    agent.close()
    check_delivered(sink, logged, s)


def test_logging_after_close_counts_drops_and_publishes_nothing():
    sink = SlowSink(first_sleep=0)
    agent = modeltap.Agent("m", sink=sink, metrics_interval=None, on_full="block")
    agent.log([1.0, 2.0], 0)
    agent.close()
    agent.log([3.0, 4.0], 0)
    agent.log_batch(np.ones((10, 2)), np.zeros(10))
    s = agent.stats()
    assert s["logged"] == 12
    assert s["shipped"] == 1
    assert s["dropped_full"] == 11
    ids, _ = sink.rows()
    assert len(ids) == 1


class DirSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, data: bytes) -> None:
        (self.path / f"{os.getpid()}-{uuid.uuid4().hex}.bin").write_bytes(data)


def test_a_method_bound_before_fork_logs_into_the_child(tmp_path):
    agent = modeltap.Agent("m", sink=DirSink(tmp_path), metrics_interval=None)
    log = agent.log  # cached native method, as serving code does
    log_batch = agent.log_batch
    stats = agent.stats

    @agent.monitor
    def predict(x):
        return 1

    log([0.0, 0.0], 0)
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for i in range(50):
                log([1.0, float(i)], 1)
            log_batch(np.full((25, 2), 2.0), np.zeros(25))
            predict([3.0, 3.0])
            s = stats()
            ok = agent.flush(10)
            s2 = agent.stats()
            code = 0 if (s["logged"] == 76 and ok and s2["shipped"] == 76) else 2
            agent.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    agent.close()
    child = [modeltap.decode_batch(p.read_bytes()) for p in tmp_path.glob(f"{pid}-*.bin")]
    rows = np.concatenate([b["features"] for b in child if b["n_records"]])
    assert len(rows) == 76
    assert {b["model"]["pid"] for b in child} == {pid}
    assert agent.stats()["logged"] == 1  # the parent's own record only


def test_forwarding_refuses_cycles():
    a = _core.Recorder(model="m", version="", agent_id="a" * 32)
    with pytest.raises(ValueError, match="itself"):
        a.forward_to(a)
    b = _core.Recorder(model="m", version="", agent_id="b" * 32)
    a.forward_to(b)
    with pytest.raises(ValueError, match="itself"):
        b.forward_to(a)
    assert a.agent_id == "b" * 32
    a.shutdown()
    b.shutdown()


class _Slow:
    def __str__(self) -> str:
        time.sleep(0)  # releases the GIL between reading and interning
        return str(self.value)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        time.sleep(0)
        return hash(self.value)  # type: ignore[attr-defined]


Color = enum.Enum("Color", [(f"C{i}", f"c{i}") for i in range(500)], type=_Slow)


def test_interning_is_atomic_across_threads():
    sink = SlowSink(first_sleep=0)
    agent = modeltap.Agent(
        "m", features=["x", "c"], categorical=["c"], sink=sink, metrics_interval=None
    )
    colors = list(Color)
    logged: dict[str, str] = {}
    assert str(colors[3]) == "c3"
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(1_000):
            c = colors[(i * 7 + k * 131) % len(colors)]
            rid = agent.log([float(i), c], 0)
            with lock:
                logged[rid] = c.value

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert agent.flush(10)
    agent.close()
    got = {}
    for raw in sink.raw:
        b = modeltap.decode_batch(raw)
        got.update(zip(b["request_ids"], b["categories"]["c"], strict=True))
    assert len(got) == 4_000
    wrong = {r: (got[r], v) for r, v in logged.items() if got[r] != v}
    assert not wrong, f"{len(wrong)} records got another value's category"


def test_categories_have_one_spelling_per_value():
    sink = SlowSink(first_sleep=0)
    agent = modeltap.Agent(
        "m", features=["x", "c"], categorical=["c"], sink=sink, metrics_interval=None
    )
    for v in [True, np.bool_(True), "true", 1, 1.0, np.int64(1), "1", False, None]:
        agent.log([0.0, v], 0)
    agent.flush(5)
    agent.close()
    cats = [c for raw in sink.raw for c in modeltap.decode_batch(raw)["categories"]["c"]]
    assert cats == ["true", "true", "true", "1", "1", "1", "1", "false", None]


def test_one_wide_first_record_does_not_widen_the_rest():
    sink = SlowSink(first_sleep=0)
    agent = modeltap.Agent("m", sink=sink, metrics_interval=None)
    agent.log([1.0, 2.0], np.arange(30_000, dtype=np.float64))
    for i in range(2_000):
        agent.log([1.0, 2.0], float(i))
    assert agent.flush(10)
    agent.close()
    counts = []
    total = 0
    for raw in sink.raw:
        d = modeltap.decode_batch(raw)
        total += d["n_records"]
        counts.append(len(raw))
    assert total == 2_001
    # 2,000 scalar rows of two features: well under 100 bytes each on the wire.
    assert sum(counts) < 30_000 * 8 + 2_000 * 100, counts
    assert agent.stats()["shipped"] == 2_001


def test_wide_schemas_get_fewer_slots_within_the_byte_budget():
    agent = modeltap.Agent("m", sink=lambda b: None, metrics_interval=None)
    agent.log(np.zeros(20), 1, np.full(1_000, 1e-3))
    slot_bytes = 8 * (20 + 1 + 1_000)
    assert agent.buffer_size * slot_bytes <= 32 << 20
    assert agent.buffer_size >= 2_048
    agent.close()
    narrow = modeltap.Agent("m", sink=lambda b: None, metrics_interval=None)
    narrow.log(np.zeros(20), 1, [0.5, 0.5])
    assert narrow.buffer_size == 65_536
    narrow.close()


def test_a_schema_wider_than_the_budget_is_refused_clearly():
    agent = modeltap.Agent("m", buffer_bytes=1 << 20, metrics_interval=None)
    rid = agent.log(np.zeros(20_000), 1.0)  # 8 slots of 160 KB > 512 KiB
    assert isinstance(rid, str)
    assert agent.stats()["invalid"] == 1
    agent.close()
    strict = modeltap.Agent("m", buffer_bytes=1 << 20, metrics_interval=None, strict=True)
    with pytest.raises(modeltap.InvalidRecord, match="buffer_bytes"):
        strict.log(np.zeros(20_000), 1.0)
    strict.close()


def test_wide_vectors_beside_the_slot_respect_the_side_budget():
    """Vectors wider than the slot travel beside it, charged to an eighth of
    the budget: a stalled exporter makes them drop (counted), never grow."""
    release = threading.Event()

    def stuck(data: bytes) -> None:
        release.wait(30)

    agent = modeltap.Agent(
        "m", sink=stuck, buffer_bytes=8 << 20, metrics_interval=None, batch_size=64
    )
    agent.log([0.0], 1.0)  # scalar schema: vectors go beside the slot
    wide = np.ones(10_000)
    for _ in range(500):  # 500 x 80 KB = 40 MB offered
        agent.log([0.0], wide)
    s = agent.stats()
    assert s["side_bytes"] <= 1 << 20
    assert s["dropped_full"] > 0
    assert s["logged"] == 501
    release.set()
    agent.close()
    s = agent.stats()
    assert s["shipped"] + s["dropped_full"] == s["logged"] == 501


@pytest.mark.parametrize("timeout", [float("inf"), 1e20, -1.0, 0.0, 1e300, float("-inf")])
def test_absurd_timeouts_never_panic(timeout):
    agent = modeltap.Agent("m", sink=lambda b: None, metrics_interval=None)
    agent.log([1.0], 1)
    assert agent.flush(timeout) in (True, False)
    agent.close()


def test_nan_timeouts_are_value_errors():
    rec = _core.Recorder(model="m", version="", agent_id="c" * 32)
    with pytest.raises(ValueError, match="NaN"):
        rec.flush(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        rec.take_batch(float("nan"))
    assert rec.take_batch(0.0) is None
    rec.shutdown()


def test_recorder_arguments_are_checked_not_panicking():
    # Past a century means "as long as it takes", not a panic.
    rec = _core.Recorder(model="m", version="", agent_id="d" * 32, flush_interval_s=1e300)
    rec.shutdown()
    for kw in [
        {"window_s": float("inf")},
        {"warn_interval_s": float("nan")},
        {"buffer_size": 1 << 40},
        {"buffer_bytes": 10},
        {"sample_rate": float("nan")},
    ]:
        with pytest.raises(ValueError, match=next(iter(kw))):
            _core.Recorder(model="m", version="", agent_id="d" * 32, **kw)


def test_huge_strings_are_cut_not_kept_whole():
    sink = SlowSink(first_sleep=0)
    agent = modeltap.Agent(
        "m", features=["x", "c"], categorical=["c"], sink=sink, metrics_interval=None
    )
    huge = "x" * (10 << 20)
    agent.log(
        [1.0, huge],
        "label-" + huge,
        request_id="r" * 100_000,
        error=RuntimeError(huge),
        attributes={f"k{i}": huge[:100_000] for i in range(1_000)},
    )
    assert agent.flush(10)
    agent.close()
    (raw,) = [r for r in sink.raw if modeltap.decode_batch(r)["n_records"]]
    assert len(raw) < 2 << 20, "a record kept megabytes of text"
    b = modeltap.decode_batch(raw)
    assert b["request_ids"][0].startswith("r" * 200)
    assert "bytes cut" in b["request_ids"][0]
    assert len(b["request_ids"][0]) <= 256
    assert b["errors"][0][1] == "RuntimeError"
    assert len(b["errors"][0][2]) <= 16 * 1024
    assert len(b["attributes"][0]) == 64
    assert len(b["categories"]["c"][0]) <= 1024
    assert len(b["labels"][0]) <= 1024
    assert agent.stats()["shipped"] == 1


@pytest.mark.parametrize("on_full", ["block", "drop"])
def test_a_record_too_large_to_ever_fit_is_refused_not_waited_on(on_full):
    agent = modeltap.Agent("m", buffer_bytes=1 << 20, on_full=on_full, metrics_interval=None)
    agent.log([1.0, 2.0], 0.5, [0.5, 0.5])
    t0 = time.monotonic()
    agent.log([1.0, 2.0], 0.5, np.full(20_000, 5e-5))  # 160 KB > the 128 KiB side budget
    agent.log_batch(np.ones((3, 2)), np.ones(3), np.full((3, 20_000), 5e-5))
    assert time.monotonic() - t0 < 5
    s = agent.stats()
    assert s["invalid"] == 4
    assert s["dropped_full"] == 0
    agent.close()
    strict = modeltap.Agent("m", buffer_bytes=1 << 20, strict=True, metrics_interval=None)
    strict.log([1.0, 2.0], 0.5, [0.5, 0.5])
    with pytest.raises(modeltap.InvalidRecord, match="buffer_bytes"):
        strict.log([1.0, 2.0], 0.5, np.full(20_000, 5e-5))
    strict.close()


def test_batches_stay_under_the_message_limit_whatever_the_budget():
    sizes: list[int] = []
    agent = modeltap.Agent(
        "m",
        sink=lambda b: sizes.append(len(b)),
        buffer_bytes=1 << 30,
        batch_size=1 << 20,
        flush_interval=5,
        metrics_interval=None,
    )
    for _ in range(6):
        agent.log_batch(np.random.default_rng(0).random((1_000, 1_000)), np.zeros(1_000))
    assert agent.flush(60)
    agent.close()
    assert max(sizes) <= 17 << 20, sizes
    assert agent.stats()["shipped"] == 6_000


def test_logging_while_close_runs_leaves_nothing_in_the_ring():
    for _ in range(20):
        agent = modeltap.Agent("m", sink=lambda b: None, batch_size=256, metrics_interval=None)

        def flood(a=agent):
            for _ in range(3):
                a.log_batch(np.ones((20_000, 4)), np.zeros(20_000))

        threads = [threading.Thread(target=flood) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.002)
        agent.close(5)
        for t in threads:
            t.join()
        s = agent.stats()
        assert s["pending"] == 0, s
        assert s["in_ring"] == 0, s
        assert s["logged"] == s["shipped"] + s["dropped_full"] + s["discarded"]


def test_drop_mode_log_batch_wait_is_bounded_for_a_slow_pipeline():
    agent = modeltap.Agent(
        "m",
        buffer_size=64,
        batch_size=16,
        max_pending_records=32,
        sink=lambda b: time.sleep(0.002),  # about 8,000 rows/s
        metrics_interval=None,
    )
    t0 = time.monotonic()
    agent.log_batch(np.ones((40_000, 3)), np.zeros(40_000))
    elapsed = time.monotonic() - t0
    s = agent.stats()
    agent.close()
    # At most 20 ms + 40,000 rows / 100,000 rows/s, with slack for a loaded machine.
    assert elapsed < 2.0, elapsed
    assert s["dropped_full"] > 0


def test_vocabularies_share_one_budget():
    """Eight categorical features with thousands of distinct values under a
    1 MiB budget: past the shared vocabulary budget, values travel as strings
    beside their record, every one still arriving as logged."""
    sink = SlowSink(first_sleep=0)
    agent = modeltap.Agent(
        "m",
        features=[f"c{i}" for i in range(8)],
        categorical=[f"c{i}" for i in range(8)],
        buffer_bytes=1 << 20,
        sink=sink,
        metrics_interval=None,
    )
    logged = {}
    for i in range(3_000):
        values = [f"value-{i}-{k}" for k in range(8)]
        logged[agent.log(values, 0)] = values
        if i % 50 == 0:
            agent.flush(10)
    assert agent.flush(10)
    s = agent.stats()
    agent.close()
    assert s["shipped"] == 3_000
    for raw in sink.raw:
        b = modeltap.decode_batch(raw)
        cats = b["categories"]
        for r, rid in enumerate(b["request_ids"]):
            assert [cats[f"c{k}"][r] for k in range(8)] == logged[rid]


def test_a_frame_past_the_vocabulary_budget_keeps_its_categories():
    """The same for whole DataFrames (interned per distinct value): values
    that no longer fit travel beside their rows, none read as missing."""
    import pandas as pd

    sink = SlowSink(first_sleep=0)
    agent = modeltap.Agent(
        "m",
        features=["a", "k"],
        categorical=["k"],
        buffer_bytes=1 << 20,
        sink=sink,
        metrics_interval=None,
    )
    logged = {}
    for start in range(0, 6_000, 1_000):
        df = pd.DataFrame(
            {
                "a": np.arange(start, start + 1_000, dtype=np.float64),
                "k": [f"v{i}" if i % 7 else None for i in range(start, start + 1_000)],
            }
        )
        ids = agent.log_batch(df, np.zeros(1_000))
        logged.update(zip(ids, [None if pd.isna(v) else v for v in df["k"]], strict=True))
        assert agent.flush(10)
    s = agent.stats()
    agent.close()
    assert s["shipped"] == 6_000, s
    assert (s["invalid"], s["flagged"]) == (0, sum(v is None for v in logged.values())), s
    seen = 0
    for raw in sink.raw:
        b = modeltap.decode_batch(raw)
        for r, rid in enumerate(b["request_ids"]):
            assert b["categories"]["k"][r] == logged[rid]
            assert bool(b["flags"][r] & 1) == (logged[rid] is None)
            seen += 1
    assert seen == 6_000


def test_batch_labels_past_the_vocabulary_budget_arrive_as_logged():
    sink = SlowSink(first_sleep=0)
    agent = modeltap.Agent("m", buffer_bytes=1 << 20, sink=sink, metrics_interval=None)
    logged = {}
    for start in range(0, 6_000, 500):
        labels = [f"label-{i}" for i in range(start, start + 500)]
        ids = agent.log_batch(np.zeros((500, 2)), labels)
        logged.update(zip(ids, labels, strict=True))
        assert agent.flush(10)
    s = agent.stats()
    agent.close()
    assert s["shipped"] == 6_000, s
    assert s["flagged"] == 0, s
    got = {}
    for raw in sink.raw:
        b = modeltap.decode_batch(raw)
        got.update(zip(b["request_ids"], b["labels"], strict=True))
    assert got == logged


@pytest.mark.parametrize(
    "kw",
    [
        {"shutdown_timeout": float("nan")},
        {"export_timeout": float("inf")},
        {"export_timeout": -1},
        {"metrics_interval": float("nan")},
        {"metrics_interval": 1e-9},
        {"flush_interval": 0},
        {"retry_window": float("nan")},
        {"params": {str(i): "" for i in range(10_000)}},
    ],
)
def test_agent_arguments_are_checked(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        modeltap.Agent("m", **kw)


def test_drift_time_bounds_are_checked():
    ref = modeltap.Reference.from_data(np.random.default_rng(0).normal(size=(100, 2)))
    agent = modeltap.Agent("m", reference=ref, metrics_interval=None)
    assert agent.drift(since=-1).records == 0
    with pytest.raises(ValueError, match="since"):
        agent.drift(since=float("nan"))
    agent.close()


class _RaisingSeq:
    def __len__(self) -> int:
        return 2

    def __iter__(self):
        return self

    def __next__(self):
        raise RuntimeError("broken iterator")


class _Endless:
    def __len__(self) -> int:
        return 2

    def __iter__(self):
        i = 0
        while True:
            yield float(i)
            i += 1


def test_iterators_that_raise_or_never_end_are_rejected_not_looped_on():
    agent = modeltap.Agent("m", features=["a", "b"], metrics_interval=None)
    agent.log(_RaisingSeq(), 1)
    agent.log(_Endless(), 1)
    agent.log_batch(np.ones((2, 2)), _RaisingSeq())
    agent.log_batch(np.ones((2, 2)), np.zeros(2), request_ids=_RaisingSeq())
    s = agent.stats()
    assert s["invalid"] == 6
    assert s["logged"] == 6
    agent.close()


def test_a_sink_raising_system_exit_does_not_stop_delivery():
    calls = []

    def sink(data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 1:
            raise SystemExit(3)

    agent = modeltap.Agent("m", sink=sink, batch_size=4, metrics_interval=None)
    for i in range(40):
        agent.log([float(i)], 0)
        if i % 4 == 3:
            agent.flush(5)
    assert agent.flush(5)
    s = agent.stats()
    agent.close()
    assert len(calls) > 1
    assert s["discarded"] >= 1
    assert s["shipped"] + s["discarded"] == 40


def test_a_frame_that_cannot_be_read_counts_its_rows():
    import pandas as pd

    agent = modeltap.Agent("m", features=["a", "b"], metrics_interval=None)
    agent.log([0.0, 0.0], 0)  # both numeric
    bad = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]})  # text in a numeric column
    assert agent.log_batch(bad, np.zeros(3)) == []
    s = agent.stats()
    assert s["logged"] == 4
    assert s["invalid"] == 3
    agent.close()
    strict = modeltap.Agent("m", features=["a", "b"], metrics_interval=None, strict=True)
    strict.log([0.0, 0.0], 0)
    with pytest.raises(modeltap.InvalidRecord, match="DataFrame"):
        strict.log_batch(bad, np.zeros(3))
    assert strict.stats()["invalid"] == 3
    # Rejected by the frame reader itself (an unknown column): counted once.
    extra = pd.DataFrame({"a": [1.0] * 5, "b": [2.0] * 5, "zz": [0.0] * 5})
    with pytest.raises(modeltap.InvalidRecord, match="zz"):
        strict.log_batch(extra, np.zeros(5))
    s = strict.stats()
    assert (s["logged"], s["invalid"]) == (9, 8), s
    # No columns: Arrow sees no rows, but the frame's rows were handed over.
    with pytest.raises(modeltap.InvalidRecord, match="without columns"):
        strict.log_batch(pd.DataFrame(index=range(4)), np.zeros(4))
    assert strict.log_batch(pd.DataFrame(), np.zeros(0)) == []
    s = strict.stats()
    assert (s["logged"], s["invalid"]) == (13, 12), s
    strict.close()


def test_an_empty_batch_counts_nothing():
    agent = modeltap.Agent("m", metrics_interval=None)
    assert list(agent.log_batch([], [])) == []
    assert agent.stats()["logged"] == 0
    agent.close()


def test_a_forked_child_keeps_the_schema_its_parent_fixed(tmp_path):
    agent = modeltap.Agent("m", sink=DirSink(tmp_path), metrics_interval=None)
    agent.log({"b": 1.0, "a": 2.0}, 0)  # the first record fixes the order b, a
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            agent.log([3.0, 4.0], 0)  # a list in the parent's order
            ok = agent.flush(5) and agent.feature_names == ["b", "a"]
            code = 0 if ok else 2
            agent.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    agent.close()
    child = [modeltap.decode_batch(p.read_bytes()) for p in tmp_path.glob(f"{pid}-*.bin")]
    assert [b["feature_names"] for b in child if b["n_records"]] == [["b", "a"]]


def test_ragged_vector_predictions_keep_their_own_widths():
    got: list[bytes] = []
    agent = modeltap.Agent("m", sink=got.append, metrics_interval=None)
    preds = [[1.0, 2.0, 3.0], [4.0], [5.0, 6.0], 7.0, None]
    agent.log_batch(np.ones((5, 2)), preds)
    assert agent.flush(5)
    agent.close()
    d = modeltap.decode_batch(got[0], columns=True)
    off = d["prediction_offsets"]
    rows = [list(d["prediction_values"][off[i] : off[i + 1]]) for i in range(5)]
    assert rows == [[1.0, 2.0, 3.0], [4.0], [5.0, 6.0], [7.0], []]
