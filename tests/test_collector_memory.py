"""The collector's memory budget: batches shed while the process is near it
and work is in hand, never when nothing waits; every batch stored once."""

from __future__ import annotations

import math
import threading

import grpc
import numpy as np
import pytest

import modeltap
from modeltap.collector import BackgroundCollector
from modeltap.collector.memory import MemoryGuard


def _batches(n_batches: int, rows: int = 50) -> list[bytes]:
    got: list[bytes] = []
    a = modeltap.Agent("mem", "1", sink=got.append, metrics_interval=None, batch_size=rows)
    for _ in range(n_batches):
        a.log_batch(np.random.default_rng(0).normal(size=(rows, 4)), np.zeros(rows))
        a.flush(10)
    a.close()
    assert len(got) == n_batches
    return got


def test_guard_sheds_only_near_its_budget_and_with_backlog():
    tiny = MemoryGuard(1.0)  # any process is past 1 MiB
    assert tiny.refusal(backlog=False) is None  # nothing to wait for
    why = tiny.refusal(backlog=True)
    assert why is not None
    assert "--max-memory-mb" in why
    assert "retry later" in why
    assert tiny.shed == 1
    assert tiny.peak_rss > 1 << 20
    assert MemoryGuard(None).refusal(backlog=True) is None
    assert MemoryGuard(1 << 30).refusal(backlog=True) is None  # 1 PiB budget
    for bad in (0.0, -5.0, math.nan):
        with pytest.raises(ValueError, match="max_memory_mb"):
            MemoryGuard(bad)


def test_batches_past_the_budget_wait_and_every_one_is_stored_once(tmp_path):
    batches = _batches(6)
    with BackgroundCollector(str(tmp_path / "s.duckdb"), max_memory_mb=1.0) as col:
        gate = threading.Event()
        held = col.server.writer.call(lambda con: gate.wait(30))  # the writer is busy
        with grpc.insecure_channel(col.addr) as ch:
            export = ch.unary_unary("/modeltap.v1.Collector/Export")
            first = export.future(batches[0], timeout=30)  # nothing waits: admitted
            deadline = 0
            while col.server.writer.queued()["batches"] == 0 and deadline < 2000:
                threading.Event().wait(0.005)
                deadline += 1
            refused = []
            for b in batches[1:]:
                with pytest.raises(grpc.RpcError) as e:
                    export(b, timeout=10)
                refused.append(e.value)
            assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "budget" in refused[0].details()
            gate.set()
            held.result(30)
            first.result()
            # With nothing waiting, each comes in (one at a time, as a
            # backing-off agent sends them).
            for b in batches[1:]:
                export(b, timeout=30)
            for b in batches:  # a resend is a duplicate, not a second copy
                export(b, timeout=30)
        assert col.server.memory.shed == len(batches) - 1
        assert col.server.writer.stored_batches == len(batches)
        assert col.server.writer.duplicates == len(batches)
        with modeltap.Client(col.addr) as c:
            n = c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py()
    assert n == 50 * len(batches)
