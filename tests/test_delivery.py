"""Counters add up; a full ring drops and counts; memory stays bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import modeltap
from counters_util import PLACES


def assert_adds_up(s):
    assert s["logged"] == sum(s[k] for k in PLACES), s


def test_full_ring_drops_and_counts(collected):
    gate = threading.Event()

    def slow_sink(data):
        gate.wait(30)
        collected(data)

    # At most two 8-record batches may wait for the stuck sink: past the
    # 64 ring slots the rest must drop, however the threads are scheduled.
    a = modeltap.Agent(
        "m",
        sink=slow_sink,
        buffer_size=64,
        batch_size=8,
        max_pending_records=16,
        metrics_interval=None,
    )
    ids = [a.log([float(i)], i) for i in range(3000)]
    s = a.stats()
    assert s["dropped_full"] > 0
    assert_adds_up(s)
    gate.set()
    assert a.flush(20)
    a.close()
    s = a.stats()
    assert_adds_up(s)
    assert s["pending"] == 0
    assert s["shipped"] + s["dropped_full"] == 3000
    got = collected.rows()
    # what was shipped is exactly what was not dropped, each once, in order
    assert len(got["request_ids"]) == s["shipped"]
    assert len(set(got["request_ids"])) == s["shipped"]
    pos = [ids.index(r) for r in got["request_ids"]]
    assert pos == sorted(pos)
    np.testing.assert_array_equal(got["features"][:, 0], np.array(pos, dtype=float))


def test_block_mode_loses_nothing(collected):
    def slow_sink(data):
        time.sleep(0.01)
        collected(data)

    a = modeltap.Agent(
        "m", sink=slow_sink, buffer_size=16, batch_size=8, on_full="block", metrics_interval=None
    )
    for i in range(2000):
        a.log([float(i)], i)
    assert a.flush(30)
    a.close()
    s = a.stats()
    assert s["dropped_full"] == 0
    assert s["shipped"] == 2000
    np.testing.assert_array_equal(collected.rows()["features"][:, 0], np.arange(2000.0))


def test_local_only_agent_discards_after_counting():
    a = modeltap.Agent("m", metrics_interval=None)
    for i in range(100):
        a.log([float(i)], 0)
    assert a.flush(10)
    s = a.stats()
    assert s["discarded"] == 100
    assert_adds_up(s)
    a.close()


def test_close_delivers_everything_and_later_logs_are_dropped(collected):
    a = modeltap.Agent("m", sink=collected, metrics_interval=None, flush_interval=60)
    for i in range(500):
        a.log([float(i)], 0)
    a.close()
    s = a.stats()
    assert s["shipped"] == 500
    assert s["in_ring"] == 0
    assert s["pending"] == 0
    a.log([1.0], 0)  # after close: counted, never raised
    s = a.stats()
    assert s["dropped_full"] == 1
    assert_adds_up(s)
    a.close()  # idempotent


def test_failing_sink_is_counted_not_raised():
    def bad_sink(data):
        raise OSError("disk full")

    a = modeltap.Agent("m", sink=bad_sink, metrics_interval=None)
    a.log([1.0], 0)
    a.flush(10)
    s = a.stats()
    assert s["errors"] >= 1
    assert s["discarded"] == 1
    assert_adds_up(s)
    a.close()


def test_memory_is_bounded_by_buffer_size():
    import psutil

    gate = threading.Event()
    a = modeltap.Agent(
        "m",
        sink=lambda d: gate.wait(60),
        buffer_size=1024,
        batch_size=256,
        max_pending_records=4096,
        metrics_interval=None,
    )
    x = np.zeros(20)
    for _ in range(50_000):
        a.log(x, 1)
    rss1 = psutil.Process().memory_info().rss
    for _ in range(300_000):
        a.log(x, 1)
    rss2 = psutil.Process().memory_info().rss
    s = a.stats()
    assert s["dropped_full"] >= 250_000
    # 300k more records (~70 MB if kept) grow the process by far less
    assert rss2 - rss1 < 8 * 1024 * 1024
    gate.set()
    a.close(timeout_s=10)


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(st.sampled_from(["log", "bad", "batch", "flush"]), min_size=1, max_size=60),
    buffer=st.sampled_from([2, 4, 16]),
)
def test_property_every_record_is_accounted_for(ops, buffer):
    got = []
    a = modeltap.Agent(
        "m",
        features=["a", "b"],
        sink=got.append,
        buffer_size=buffer,
        batch_size=3,
        metrics_interval=None,
    )
    accepted = []
    for i, op in enumerate(ops):
        if op == "log":
            accepted.append(a.log([float(i), 0.0], 0))
        elif op == "bad":
            a.log([1.0], 0)
        elif op == "batch":
            accepted.extend(a.log_batch(np.full((3, 2), float(i)), np.zeros(3)))
        else:
            a.flush(5)
        assert_adds_up(a.stats())
    a.close(timeout_s=10)
    s = a.stats()
    assert_adds_up(s)
    assert s["pending"] == 0
    shipped = [r for b in got for r in modeltap.decode_batch(b)["request_ids"]]
    assert len(shipped) == len(set(shipped)) == s["shipped"]
    assert set(shipped) <= set(accepted)
    assert s["shipped"] + s["dropped_full"] == len(accepted)


def test_log_batch_larger_than_the_ring_waits_for_a_healthy_drain(collected):
    a = modeltap.Agent("m", sink=collected, buffer_size=1024, metrics_interval=None)
    X = np.random.default_rng(0).normal(size=(50_000, 4))
    ids = a.log_batch(X, np.zeros(50_000))
    assert a.flush(20)
    a.close()
    s = a.stats()
    assert s["dropped_full"] == 0
    assert s["shipped"] == 50_000
    assert collected.rows()["request_ids"] == ids


def test_log_batch_against_a_stuck_exporter_drops_without_hanging():
    gate = threading.Event()
    a = modeltap.Agent(
        "m",
        sink=lambda d: gate.wait(60),
        buffer_size=256,
        batch_size=64,
        max_pending_records=1024,
        metrics_interval=None,
    )
    t0 = time.monotonic()
    a.log_batch(np.zeros((100_000, 4)), np.zeros(100_000))
    assert time.monotonic() - t0 < 10
    s = a.stats()
    assert s["dropped_full"] > 90_000
    assert_adds_up(s)
    gate.set()
    a.close(timeout_s=10)
    assert_adds_up(a.stats())
