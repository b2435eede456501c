"""Agents → real collector processes → DuckDB: exactly once, no data lost."""

from __future__ import annotations

import os
import shutil
import time

import grpc
import numpy as np
import pytest

import modeltap
from collector_util import (
    NOT_SERVING,
    SERVING,
    Collector,
    expected_features,
    finish_agent,
    free_port,
    run_agent,
    start_agent,
)

pytestmark = pytest.mark.timeout(240)


def stored(store_path):
    with modeltap.Store(store_path) as s:
        t = s.sql("SELECT request_id, features, agent_id, batch_seq FROM predictions ORDER BY ts")
    feats = np.asarray(t.column("features").combine_chunks().flatten()).reshape(t.num_rows, -1)
    return t, feats


def check_exact(store_path, ks, n):
    t, feats = stored(store_path)
    assert t.num_rows == len(ks) * n
    ids = t.column("request_id").to_pylist()
    assert len(set(ids)) == len(ks) * n
    order = np.lexsort((feats[:, 0],))
    got = feats[order]
    want = np.concatenate([expected_features(k, n) for k in sorted(ks)])
    np.testing.assert_array_equal(got, want)  # every value, bit for bit


def test_four_agents_exactly_once(tmp_path):
    col = Collector(tmp_path / "store.duckdb").start()
    procs = [start_agent("--collector", col.addr, "--k", str(k)) for k in range(4)]
    stats = [finish_agent(p) for p in procs]
    col.stop()
    for s in stats:
        assert s["shipped"] == 50_000, s
        assert s["flushed"]
    check_exact(tmp_path / "store.duckdb", range(4), 50_000)
    with modeltap.Store(tmp_path / "store.duckdb") as s:
        b = s.sql("SELECT count(*) AS n, sum(n_records) AS r FROM batches").to_pylist()[0]
        assert b["r"] == 200_000
        sm = s.sql("SELECT count(*) AS n, count(gpu_index) AS g FROM system_metrics").to_pylist()[0]
        assert sm["n"] > 0
        assert "stored" in col.output


def test_collector_sigkill_mid_run_then_restart(tmp_path):
    port = free_port()
    store = tmp_path / "store.duckdb"
    col = Collector(store, port).start()
    procs = [
        start_agent("--collector", col.addr, "--k", str(k), "--pause", "0.02", "--chunk", "500")
        for k in range(4)
    ]
    time.sleep(1.0)
    col.kill()  # SIGKILL: no clean shutdown, in-flight transactions lost
    time.sleep(1.0)
    col = Collector(store, port).start()
    stats = [finish_agent(p, timeout=200) for p in procs]
    col.stop()
    for s in stats:
        assert s["shipped"] == 50_000, s
    check_exact(store, range(4), 50_000)


def test_collector_down_at_start_then_up(tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    procs = [
        start_agent(
            "--collector",
            addr,
            "--k",
            str(k),
            "--n",
            "20000",
            "--spool",
            str(tmp_path / f"spool{k}"),
            "--retry-window",
            "1",
        )
        for k in range(2)
    ]
    time.sleep(10)
    col = Collector(tmp_path / "store.duckdb", port).start()
    stats = [finish_agent(p, timeout=200) for p in procs]
    col.stop()
    for s in stats:
        assert s["flushed"], s
        assert s["shipped"] == 20_000, s
        assert s["spooled"] == 0
    check_exact(tmp_path / "store.duckdb", range(2), 20_000)
    for k in range(2):
        assert not list((tmp_path / f"spool{k}").glob("*.spool")), "spool emptied"


def test_next_process_delivers_the_spool(tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    spool = tmp_path / "spool"
    first = run_agent(
        "--collector",
        addr,
        "--k",
        "1",
        "--n",
        "6000",
        "--spool",
        str(spool),
        "--retry-window",
        "0.3",
        "--flush-timeout",
        "1",
        "--shutdown-timeout",
        "2",
    )
    assert first["spooled"] == 6000, first  # nobody listening: all of it spooled
    assert first["shipped"] == 0
    assert list(spool.glob("*.spool"))
    col = Collector(tmp_path / "store.duckdb", port).start()
    second = run_agent("--collector", addr, "--k", "2", "--n", "100", "--spool", str(spool))
    col.stop()
    assert second["spool_recovered"] == 6000, second
    assert second["shipped"] == 100
    _, feats = stored(tmp_path / "store.duckdb")
    assert len(feats) == 6100
    assert not list(spool.glob("*.spool"))


def test_damaged_spool_delivers_every_valid_record(tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    spool = tmp_path / "spool"
    first = run_agent(
        "--collector",
        addr,
        "--k",
        "1",
        "--n",
        "8000",
        "--spool",
        str(spool),
        "--retry-window",
        "0.3",
        "--flush-timeout",
        "1",
        "--shutdown-timeout",
        "2",
    )
    assert first["spooled"] == 8000
    from modeltap.spool import Frame, read_frames

    seg = sorted(spool.glob("*.spool"))[0]
    frames = [f for f in read_frames(seg) if isinstance(f, Frame)]
    assert len(frames) >= 3
    data = bytearray(seg.read_bytes())
    # flip bits inside the second frame's payload, and tear the last frame
    start2 = frames[0].end
    data[start2 + 200] ^= 0xFF
    data = data[: len(data) - 100]
    seg.write_bytes(bytes(data))
    lost = frames[1].n_records + frames[-1].n_records
    col = Collector(tmp_path / "store.duckdb", port).start()
    second = run_agent("--collector", addr, "--k", "2", "--n", "10", "--spool", str(spool))
    col.stop()
    assert second["spool_recovered"] == 8000 - lost, second
    assert second["spool_corrupt"] == lost
    _, feats = stored(tmp_path / "store.duckdb")
    assert len(feats) == 8000 - lost + 10


def test_bad_messages_get_the_right_status(tmp_path):
    col = Collector(tmp_path / "store.duckdb", None, "--max-message-mb", "1").start()
    try:
        ok = run_agent("--collector", col.addr, "--k", "0", "--n", "100")
        assert ok["shipped"] == 100
        with grpc.insecure_channel(col.addr) as ch:
            export = ch.unary_unary("/modeltap.v1.Collector/Export")
            with pytest.raises(grpc.RpcError) as e:
                export(b"\xff\xfe not a batch", timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed" in e.value.details()
            with pytest.raises(grpc.RpcError) as e:
                export(os.urandom(2 * 1024 * 1024), timeout=5)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            got = []
            a = modeltap.Agent("m", sink=got.append, metrics_interval=None)
            a.log([1.0], 1)
            a.close()
            future = got[0] + b"\x08\x63"  # schema_version = 99
            with pytest.raises(grpc.RpcError) as e:
                export(future, timeout=5)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "99" in e.value.details()
            inconsistent = got[0] + b"\x38\x05"  # n_records = 5, columns hold 1
            with pytest.raises(grpc.RpcError) as e:
                export(inconsistent, timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert col.health() == SERVING
        again = run_agent("--collector", col.addr, "--k", "1", "--n", "100")
        assert again["shipped"] == 100
    finally:
        col.stop()
    _, feats = stored(tmp_path / "store.duckdb")
    assert len(feats) == 200


def test_agent_refused_for_good_does_not_retry(tmp_path):
    col = Collector(tmp_path / "store.duckdb", None, "--max-message-mb", "0.01").start()
    try:
        a = modeltap.Agent("m", collector=col.addr, metrics_interval=None)
        a.log_batch(np.zeros((2000, 20)), np.zeros(2000))  # one batch, far over 10 KiB
        t0 = time.monotonic()
        a.flush(30)  # a batch over the collector's limit can never succeed: not retried
        assert time.monotonic() - t0 < 10
        a.close()
        s = a.stats()
        assert s["shipped"] == 0
        assert s["discarded"] == 2000
        assert s["errors"] >= 1
    finally:
        col.stop()


def test_store_unwritable_then_writable_again(tmp_path):
    store = tmp_path / "store.duckdb"
    col = Collector(store).start()
    try:
        col.wait_health(SERVING)
        wal = tmp_path / "store.duckdb.wal"
        wal.mkdir()  # the next commit cannot create its WAL: the store is unwritable
        a = modeltap.Agent(
            "m",
            collector=col.addr,
            spool_dir=tmp_path / "spool",
            retry_window=1.0,
            metrics_interval=None,
        )
        for i in range(300):
            a.log([float(i), 1.0], 0)
        assert not a.flush(4)  # not acknowledged...
        s = a.stats()
        assert s["shipped"] == 0
        assert s["spooled"] + s["pending"] == 300  # ...and kept
        col.wait_health(NOT_SERVING)
        shutil.rmtree(wal)
        col.wait_health(SERVING)
        assert a.flush(30)
        a.close()
        s = a.stats()
        assert s["shipped"] == 300
        assert s["spooled"] == 0
    finally:
        col.stop()
    _, feats = stored(store)
    np.testing.assert_array_equal(np.sort(feats[:, 0]), np.arange(300.0))


@pytest.mark.filterwarnings("ignore:This process:DeprecationWarning")
def test_prefork_agent_with_collector(tmp_path):
    import multiprocessing as mp

    col = Collector(tmp_path / "store.duckdb").start()
    agent = modeltap.Agent("m", collector=col.addr, metrics_interval=None)
    agent.log([-1.0, 0.0], 0)
    agent.flush(10)  # the parent's channel is live when the workers fork

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_fork_worker, args=(agent, k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    agent.close()
    col.stop()
    with modeltap.Store(tmp_path / "store.duckdb") as s:
        rows = s.sql(
            "SELECT b.pid, count(*) AS n FROM predictions p JOIN batches b "
            "USING (agent_id, batch_seq) GROUP BY b.pid"
        ).to_pylist()
    counts = {r["pid"]: r["n"] for r in rows}
    assert counts[os.getpid()] == 1
    for p in procs:
        assert counts[p.pid] == 1000


def _fork_worker(agent, k):
    for i in range(1000):
        agent.log([float(k), float(i)], k)
    agent.close()


def test_gzip_compression(tmp_path):
    col = Collector(tmp_path / "store.duckdb").start()
    s = run_agent("--collector", col.addr, "--k", "3", "--n", "4000", "--gzip")
    col.stop()
    assert s["shipped"] == 4000
    check_exact(tmp_path / "store.duckdb", [3], 4000)


def test_spool_cap_drops_only_the_overflow(tmp_path):
    addr = f"127.0.0.1:{free_port()}"  # nobody listening
    a = modeltap.Agent(
        "m",
        collector=addr,
        spool_dir=tmp_path / "spool",
        spool_max_bytes=300_000,
        retry_window=0.2,
        batch_size=1000,
        metrics_interval=None,
    )
    for _ in range(10):
        a.log_batch(np.zeros((1000, 20)), np.zeros(1000))
    assert not a.flush(3)  # the spool is not empty: not delivered
    a.close(timeout_s=2)
    s = a.stats()
    assert s["dropped_spool"] > 0
    assert s["spooled"] > 0
    assert s["spooled"] + s["dropped_spool"] == 10_000
    assert s["logged"] == s["spooled"] + s["dropped_spool"]
    used = sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.spool"))
    assert used <= 300_000


SIGTERM_AGENT = """
import sys, time, modeltap
a = modeltap.Agent("m", collector=sys.argv[1], metrics_interval=None, flush_interval=60)
for i in range(5000):
    a.log([float(i)], 0)
print("ready", flush=True)
time.sleep(60)
"""


def test_sigterm_delivers_what_the_ring_holds(tmp_path):
    import signal
    import subprocess
    import sys

    col = Collector(tmp_path / "store.duckdb").start()
    p = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_AGENT, col.addr], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    p.stdout.close()
    assert p.returncode == -signal.SIGTERM  # still dies of SIGTERM
    col.stop()
    _, feats = stored(tmp_path / "store.duckdb")
    np.testing.assert_array_equal(np.sort(feats[:, 0]), np.arange(5000.0))


def test_spool_reader_skips_damage_and_resumes():
    import tempfile
    from pathlib import Path

    from modeltap.spool import Corrupt, Frame, Spool, encode_frame, read_frame_at

    with tempfile.TemporaryDirectory() as d:
        seg = Path(d) / "x-00000001.spool"
        frames = [encode_frame(bytes([i]) * (100 + i), i + 1) for i in range(5)]
        data = bytearray(b"".join(frames))
        start2 = len(frames[0])
        data[start2 + 5] ^= 0x40  # damage the second frame's header
        data += frames[0][:10]  # and a torn frame at the end
        seg.write_bytes(bytes(data))
        got, offset = [], 0
        while (item := read_frame_at(seg, offset)) is not None:
            got.append(item)
            offset = item.end
        kinds = [type(x).__name__ for x in got]
        assert kinds == ["Frame", "Corrupt", "Frame", "Frame", "Frame", "Corrupt"]
        assert [x.n_records for x in got if isinstance(x, Frame)] == [1, 3, 4, 5]
        assert isinstance(got[-1], Corrupt)
        # the same through a Spool adopting the segment
        sp = Spool(d, "other-agent", 1 << 20)
        assert sp.adopted_pending == 1 + 3 + 4 + 5
        seen = []
        while (nxt := sp.next()) is not None:
            item, adopted = nxt
            assert adopted
            seen.append(item.n_records if isinstance(item, Frame) else -1)
            sp.ack(item, adopted)
        assert [x for x in seen if x > 0] == [1, 3, 4, 5]
        assert not seg.exists()
        sp.close()
