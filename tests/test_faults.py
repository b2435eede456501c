"""Faults with real processes and real servers: the collector SIGKILLed and
restarted under load, the spool on a full filesystem, and a gRPC server
answering every status code."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

import modeltap
from collector_util import ScriptedCollector, invariant

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benches"))
import faults

pytestmark = pytest.mark.timeout(240)


def test_collector_sigkilled_five_times_under_four_agents(tmp_path):
    r = faults.sigkill_loop(agents=4, records=250_000, kills=5, workdir=tmp_path)
    assert r["sent"] == 1_000_000
    assert r["stored"] == 1_000_000, r
    assert r["lost"] == 0, r
    assert r["duplicated"] == 0, r
    assert r["unexpected"] == 0, r
    assert r["distinct_request_ids"] == 1_000_000, r
    assert r["own_values"], r
    assert r["kills_while_logging"] >= 3, r  # the faults hit while records flowed
    assert r["agents_spool_writes"] > 0, r  # the spool carried records over the gaps
    assert r["agents_logged"] == 1_000_000
    assert r["agents_shipped"] == 1_000_000, r
    assert r["agents_pending"] == 0
    assert r["agents_dropped"] == 0
    assert r["agents_discarded"] == 0
    assert r["counters_add_up"], r
    assert r["all_flushed"], r
    assert r["tracebacks"] == 0


def test_spool_on_a_full_filesystem(tmp_path):
    r = faults.full_disk_spool(records=30_000, size="2m", workdir=tmp_path)
    assert r["dropped_spool"] > 0, r  # the filesystem filled up: drops counted
    assert r["spooled"] > 0, r
    assert r["spooled"] + r["dropped_spool"] == r["sent"], r
    assert r["first_pending"] == 0
    assert r["first_counters_add_up"], r
    assert r["first_errors"] > 0  # each failed write is one of the agent's errors
    assert r["tracebacks"] == 0, r  # nothing raised, in the caller or a thread
    # After the collector returns: exactly what was spooled, no torn frame.
    assert r["spool_corrupt"] == 0, r
    assert r["recovered"] == r["spooled"], r
    assert r["stored"] == r["spooled"], r
    assert r["lost"] == 0, r
    assert r["duplicated"] == 0, r
    assert r["unexpected"] == 0, r
    assert r["own_values"], r
    assert r["spool_files_left"] == 0


# -- status codes -------------------------------------------------------------

C = grpc.StatusCode
EXPECT = {
    C.UNAVAILABLE: "retry",
    C.RESOURCE_EXHAUSTED: "retry",
    C.DEADLINE_EXCEEDED: "retry",
    C.ABORTED: "retry",
    C.CANCELLED: "retry",
    C.UNKNOWN: "ambiguous",
    C.INTERNAL: "ambiguous",
    C.DATA_LOSS: "ambiguous",
    C.ALREADY_EXISTS: "ambiguous",
    "garbage": "ambiguous",  # a call that succeeds with a response we cannot read
    C.UNAUTHENTICATED: "held",
    C.PERMISSION_DENIED: "held",
    C.UNIMPLEMENTED: "held",
    C.NOT_FOUND: "held",
    C.FAILED_PRECONDITION: "held",  # a collector older than the batch version
    C.INVALID_ARGUMENT: "never",
    C.OUT_OF_RANGE: "never",
}
FAILS = 4  # answers per batch before the scripted collector accepts it


def _agent(col: ScriptedCollector, spool: Path | None, **kw: Any) -> modeltap.Agent:
    return modeltap.Agent(
        "m",
        collector=col.addr,
        spool_dir=spool,
        batch_size=100,
        buffer_size=1024,
        flush_interval=0.05,
        metrics_interval=None,
        **kw,
    )


def _log(a: modeltap.Agent, n: int) -> list[str]:
    return [a.log([float(i)], 0) for i in range(n)]


@pytest.mark.parametrize("code", list(EXPECT), ids=str)
def test_status_codes_without_a_spool(code):
    """Only a batch that can never succeed is discarded; everything else is
    retried until the collector takes it."""
    col = ScriptedCollector(lambda key, attempt: code if attempt < FAILS else None)
    try:
        a = _agent(col, None, retry_window=60)
        ids = _log(a, 100)
        a.flush(20)
        a.close()
        s = a.stats()
        assert invariant(s)
        assert s["pending"] == 0
        calls = list(col.calls.values())
        if EXPECT[code] == "never":
            assert s["discarded"] == 100, s
            assert s["errors"] >= 1
            assert calls == [1], calls  # never resent
            assert col.records() == []
        else:
            assert s["shipped"] == 100, s
            assert s["discarded"] == 0
            assert calls == [FAILS + 1], calls
            assert sorted(col.records()) == sorted(ids)
    finally:
        col.stop()


# Answers before acceptance that show each rule with a spool: retryable codes
# are retried within the retry window (no spool); the third ambiguous answer
# sends the batch to the spool; a held code spools it at the first answer.
WITH_SPOOL_FAILS = {"retry": 4, "ambiguous": 3, "held": 1, "never": 1}


@pytest.mark.parametrize("code", list(EXPECT), ids=str)
def test_status_codes_with_a_spool(tmp_path, code):
    """With a spool: retryable codes are retried within the retry window,
    ambiguous ones a bounded number of times, then spooled; held ones
    spooled at once; all of them delivered by replay once the collector
    accepts. Codes meaning "never" discard the batch, not spooled."""
    kind = EXPECT[code]
    fails = WITH_SPOOL_FAILS[kind]
    col = ScriptedCollector(lambda key, attempt: code if attempt < fails else None)
    try:
        a = _agent(col, tmp_path / "spool", retry_window=60)
        ids = _log(a, 100)
        assert a.flush(30)  # nothing left to wait for, whatever the outcome
        a.close()
        s = a.stats()
        assert invariant(s)
        assert s["pending"] == 0
        assert s["spooled"] == 0
        spool_writes = a._exporter.spooled_records
        calls = list(col.calls.values())
        assert calls == [fails + 1] if kind != "never" else [1], calls
        if kind == "never":
            assert s["discarded"] == 100, s
            assert s["errors"] >= 1
            assert spool_writes == 0
            return
        assert s["shipped"] == 100, s
        assert sorted(col.records()) == sorted(ids)
        assert spool_writes == (0 if kind == "retry" else 100)
    finally:
        col.stop()


@pytest.mark.parametrize("code", [C.UNKNOWN, C.INTERNAL, "garbage"], ids=str)
def test_ambiguous_answers_below_the_bound_are_not_spooled(tmp_path, code):
    col = ScriptedCollector(lambda key, attempt: code if attempt < 2 else None)
    try:
        a = _agent(col, tmp_path / "spool", retry_window=60)
        _log(a, 100)
        assert a.flush(30)
        a.close()
        assert a.stats()["shipped"] == 100
        assert a._exporter.spooled_records == 0
        assert list(col.calls.values()) == [3]
    finally:
        col.stop()


@pytest.mark.parametrize(
    ("code", "kept"),
    [(C.INVALID_ARGUMENT, False), (C.INTERNAL, True), (C.UNAUTHENTICATED, True)],
    ids=str,
)
def test_replayed_frames_follow_the_same_rules(tmp_path, code, kept):
    state = {"answer": C.UNAVAILABLE}
    col = ScriptedCollector(lambda key, attempt: state["answer"])
    try:
        a = _agent(col, tmp_path / "spool", retry_window=0.1)
        ids = _log(a, 100)
        deadline = time.monotonic() + 10
        while a.stats()["spooled"] < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.stats()["spooled"] == 100
        before = sum(col.calls.values())
        state["answer"] = code  # the replays get this answer
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if kept and sum(col.calls.values()) >= before + 2:
                break  # two replays answered with the code
            if not kept and a.stats()["discarded"] == 100:
                break
            time.sleep(0.02)
        s = a.stats()
        if kept:
            assert s["spooled"] == 100, s  # still there, tried again later
            state["answer"] = None
            assert a.flush(20)
            assert a.stats()["shipped"] == 100
            assert sorted(col.records()) == sorted(ids)
        else:
            assert s["discarded"] == 100, s
            assert s["spooled"] == 0
        a.close()
        assert invariant(a.stats())
    finally:
        col.stop()


def test_message_larger_than_the_collector_accepts_is_discarded(tmp_path):
    col = ScriptedCollector(max_receive_bytes=512)
    try:
        a = _agent(col, tmp_path / "spool", retry_window=60)
        _log(a, 100)
        a.flush(10)
        a.close()
        s = a.stats()
        assert s["discarded"] == 100, s
        assert s["errors"] >= 1
        assert a._exporter.spooled_records == 0
        assert invariant(s)
    finally:
        col.stop()


def test_held_without_a_spool_keeps_retrying_until_fixed():
    """A token being rotated: the collector refuses (UNAUTHENTICATED) for a
    while, then accepts; nothing is lost without a spool either."""
    ok = threading.Event()
    col = ScriptedCollector(lambda key, attempt: None if ok.is_set() else C.UNAUTHENTICATED)
    try:
        a = _agent(col, None)
        ids = _log(a, 300)
        threading.Timer(1.5, ok.set).start()
        assert a.flush(30)
        a.close()
        assert a.stats()["shipped"] == 300
        assert sorted(col.records()) == sorted(ids)
    finally:
        col.stop()
