"""close() accounts for every record, keeps to its deadline, survives a
failing agent and a SIGTERM arriving in the middle of it."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import modeltap
from collector_util import ScriptedCollector, invariant
from modeltap.spool import Frame, Spool

pytestmark = pytest.mark.timeout(120)


class BlockingSink:
    """Takes batches, but blocks on the first one until released."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self, data: bytes) -> None:
        self.entered.set()
        self.go.wait(30)
        self.got.append(data)


def _settled(s: dict[str, int]) -> None:
    assert s["pending"] == 0, s
    assert invariant(s), s


def test_close_after_timed_out_flush_counts_batches_behind_the_marker(caplog):
    """The named case: the exporter holds a batch, an earlier flush() timed
    out (its marker is queued), more batches are queued behind the marker,
    and close() times out: every queued record is counted and warned about."""
    sink = BlockingSink()
    a = modeltap.Agent("m", sink=sink, batch_size=100, flush_interval=60, metrics_interval=None)
    for i in range(100):
        a.log([float(i)], 0)
    assert sink.entered.wait(10)  # the exporter holds batch 0
    assert not a.flush(0.2)  # times out: its marker stays queued
    for i in range(100, 600):
        a.log([float(i)], 0)
    caplog.set_level(logging.WARNING, logger="modeltap")
    t0 = time.monotonic()
    a.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 2.0
    s = a.stats()
    _settled(s)
    assert s["logged"] == 600
    assert s["discarded"] == 600  # a sink has no spool: counted, not lost track of
    warned = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert warned
    assert "600 records" in warned[-1]
    sink.go.set()  # the sink finally returns: nothing is counted twice
    time.sleep(0.2)
    s2 = a.stats()
    assert s2 == s


def test_close_spools_the_batch_in_hand_and_the_queue(tmp_path):
    """With a spool: the batch whose call hangs and the batches queued
    behind a flush marker all go to the spool, each exactly once."""
    col = ScriptedCollector(lambda key, attempt: "hang")
    try:
        a = modeltap.Agent(
            "m",
            collector=col.addr,
            spool_dir=tmp_path / "spool",
            batch_size=100,
            flush_interval=60,
            export_timeout=30,
            retry_window=60,
            metrics_interval=None,
        )
        ids = [a.log([float(i)], 0) for i in range(100)]
        deadline = time.monotonic() + 10
        while not col.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert col.calls  # the first batch's call hangs
        assert not a.flush(0.2)
        ids += [a.log([float(i)], 0) for i in range(100, 450)]
        t0 = time.monotonic()
        a.close(timeout_s=1.0)
        took = time.monotonic() - t0
        s = a.stats()
        _settled(s)
        assert s["spooled"] == 450, s
        assert took < 2.5, f"close took {took:.1f} s for a 1 s shutdown_timeout"
    finally:
        col.stop()
    sp = Spool(tmp_path / "spool", "reader", 1 << 30)
    seen: list[str] = []
    while (nxt := sp.next()) is not None:
        item, adopted = nxt
        assert isinstance(item, Frame)
        seen += modeltap.decode_batch(item.payload)["request_ids"]
        sp.ack(item, adopted)
    sp.close()
    assert sorted(seen) == sorted(ids)  # every record, once


@pytest.mark.parametrize("spool", [False, True])
def test_close_keeps_to_its_deadline_with_a_long_export_timeout(tmp_path, spool):
    """A collector that never answers and a 30 s export_timeout: close()
    takes about shutdown_timeout, not another export_timeout."""
    col = ScriptedCollector(lambda key, attempt: "hang")
    try:
        a = modeltap.Agent(
            "m",
            collector=col.addr,
            spool_dir=tmp_path / "spool" if spool else None,
            batch_size=50,
            export_timeout=30,
            retry_window=60,
            shutdown_timeout=0.8,
            metrics_interval=None,
        )
        for i in range(200):
            a.log([float(i)], 0)
        deadline = time.monotonic() + 10
        while not col.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        a.close()
        took = time.monotonic() - t0
        s = a.stats()
        _settled(s)
        assert took < 2.0, took
        if spool:
            assert s["spooled"] == 200
        else:
            assert s["discarded"] == 200
    finally:
        col.stop()


def test_close_with_a_reachable_collector_ships_everything():
    col = ScriptedCollector()
    try:
        a = modeltap.Agent("m", collector=col.addr, batch_size=64, metrics_interval=None)
        ids = [a.log([float(i)], 0) for i in range(1000)]
        a.close()
        s = a.stats()
        _settled(s)
        assert s["shipped"] == 1000
        assert sorted(col.records()) == sorted(ids)
    finally:
        col.stop()


def test_second_close_waits_for_the_first():
    sink = BlockingSink()
    a = modeltap.Agent("m", sink=sink, batch_size=10, metrics_interval=None)
    for i in range(10):
        a.log([float(i)], 0)
    assert sink.entered.wait(10)
    first = threading.Thread(target=a.close, kwargs={"timeout_s": 5})
    first.start()
    time.sleep(0.1)
    threading.Timer(0.3, sink.go.set).start()
    a.close(timeout_s=5)  # returns once the first close() is done
    _settled(a.stats())
    assert a.stats()["shipped"] == 10
    first.join(5)
    assert not first.is_alive()


def test_flush_and_close_timeouts_never_panic():
    a = modeltap.Agent("m", sink=lambda b: None, metrics_interval=None)
    a.log([1.0], 0)
    assert a.flush(math.inf) is True
    assert a.flush(1e20) is True
    assert a.flush(-1.0) in (True, False)
    with pytest.raises(ValueError, match="NaN"):
        a.flush(math.nan)
    with pytest.raises(ValueError, match="NaN"):
        a.close(math.nan)
    a.close(math.inf)
    _settled(a.stats())


AT_EXIT = r"""
import json, sys, modeltap
import modeltap.agent as ma
out = {}
agents = [modeltap.Agent(f"m{k}", sink=lambda b: None, metrics_interval=None) for k in range(3)]
for a in agents:
    for i in range(100):
        a.log([float(i)], 0)
def boom(timeout_s=None):
    raise RuntimeError("boom")
agents[1].close = boom  # the second agent fails to close
ma._close_all_at_exit()
print(json.dumps([a.stats() for a in agents]))
"""


def test_one_failing_agent_does_not_leave_the_others_open():
    p = subprocess.run([sys.executable, "-c", AT_EXIT], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    import json

    stats = json.loads(p.stdout.strip().splitlines()[-1])
    assert stats[0]["shipped"] == 100
    assert stats[2]["shipped"] == 100
    assert stats[0]["pending"] == 0
    assert stats[2]["pending"] == 0
    assert stats[1]["errors"] >= 1  # the failure is counted
    assert "closing agent 'm1' failed" in p.stderr
    assert "boom" in p.stderr


# Agent A's sink is slow, so its close() takes a while; SIGTERM arrives in
# the middle of it (its handler runs on the main thread, inside close()).
SIGTERM_IN_CLOSE = r"""
import os, signal, sys, threading, time, modeltap
out = sys.argv[1]
def sink_for(name, pause):
    def sink(data):
        time.sleep(pause)
        with open(os.path.join(out, name), "a") as f:
            for r in modeltap.decode_batch(data)["request_ids"]:
                f.write(r + "\n")
    return sink
a = modeltap.Agent("a", sink=sink_for("a", 0.25), batch_size=100, flush_interval=60,
                   metrics_interval=None, shutdown_timeout=20)
b = modeltap.Agent("b", sink=sink_for("b", 0.0), batch_size=100, flush_interval=60,
                   metrics_interval=None, shutdown_timeout=20)
with open(os.path.join(out, "logged-a"), "w") as f:
    for i in range(800):
        f.write(a.log([float(i)], 0) + "\n")
with open(os.path.join(out, "logged-b"), "w") as f:
    for i in range(300):
        f.write(b.log([float(i)], 0) + "\n")
threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGTERM)).start()
a.close()  # the deferred SIGTERM ends the process when this returns
with open(os.path.join(out, "after-close"), "w") as f:
    f.write("not reached\n")
time.sleep(30)
"""


def test_sigterm_during_close_neither_deadlocks_nor_loses_records(tmp_path):
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN_CLOSE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - t0
    assert p.returncode == -signal.SIGTERM, p.stderr  # still dies of SIGTERM
    for name in ("a", "b"):
        logged = (tmp_path / f"logged-{name}").read_text().split()
        got = (tmp_path / name).read_text().split()
        assert sorted(got) == sorted(logged), name  # every record, once
    assert took < 15, took  # 8 batches x 0.25 s, no deadlock
    assert not (tmp_path / "after-close").exists()  # died right after close()


def _child_closing_from_handler() -> None:  # pragma: no cover (runs in a child)
    a = modeltap.Agent("a", sink=lambda b: None, metrics_interval=None)
    a.log([1.0], 0)
    calls = []

    def handler(signum: int, frame: object) -> None:
        calls.append(signum)
        a.close()  # re-entering close() on the thread already inside it

    signal.signal(signal.SIGUSR1, handler)
    real = a._exporter.close

    def slow_close(timeout_s: float) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # the handler runs here, inside close()
        real(timeout_s)

    a._exporter.close = slow_close  # type: ignore[method-assign]
    a.close()
    assert calls == [signal.SIGUSR1]
    s = a.stats()
    assert s["pending"] == 0
    os._exit(0 if s["shipped"] == 1 else 3)


def test_close_reentered_from_a_signal_handler_returns_at_once():
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import test_shutdown as t; "
        "t._child_closing_from_handler()"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr


PARALLEL_CLOSE = r"""
import json, sys, time, modeltap
import modeltap.agent as ma
addr, spool = sys.argv[1], sys.argv[2]
agents = [
    modeltap.Agent(f"m{k}", collector=addr, metrics_interval=None, shutdown_timeout=2.0,
                   spool_dir=f"{spool}/{k}", retry_window=60)
    for k in range(6)
]
for a in agents:
    for i in range(200):
        a.log([float(i)], 0)
t0 = time.monotonic()
ma._close_all_at_exit()
print(json.dumps({"seconds": time.monotonic() - t0, "stats": [a.stats() for a in agents]}))
"""


def test_agents_close_together_under_one_deadline(tmp_path):
    """Six agents whose collector hangs: closing them at exit (or on
    SIGTERM) takes one shutdown_timeout, not six, and each spools what it
    held (30 s of serial waits would outlast a pod's grace period)."""
    import json

    col = ScriptedCollector(lambda key, attempt: "hang")
    try:
        p = subprocess.run(
            [sys.executable, "-c", PARALLEL_CLOSE, col.addr, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        col.stop()
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["seconds"] < 2.0 * 2.5, out["seconds"]  # serial: 6 x 2 s at least
    for s in out["stats"]:
        assert s["pending"] == 0
        assert s["spooled"] + s["shipped"] == 200, s
        assert invariant(s), s
