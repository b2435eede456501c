"""Reads of a running collector's store: the Query RPC (one SELECT, read-only,
streamed as Arrow IPC pieces), Client's read API equal to Store's on the same
data, what a query may not do, bounds (admission, deadline) and reads beside
ingestion; ``modeltap.connect`` and ``modeltap query``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import grpc
import numpy as np
import pyarrow as pa
import pytest

import modeltap
from modeltap import _core
from modeltap.collector import BackgroundCollector
from modeltap.collector.reader import CHUNK_BYTES

N = 3_000


def _log(addr: str, n: int = N, model: str = "m", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20))
    a = modeltap.Agent(model, "1", collector=addr, features=[f"f{i}" for i in range(20)])
    for i in range(n):
        a.log(
            x[i], float(i % 3), latency_s=0.001, error=RuntimeError("x") if i % 500 == 0 else None
        )
    assert a.flush(30)
    a.close()
    return x


def _settled(col: BackgroundCollector) -> None:
    """Waits for every read to be closed and counted out (a read's close
    runs on a read thread after its RPC ended)."""
    deadline = time.monotonic() + 10
    while col.server.reader.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert col.server.reader.in_flight == 0


@pytest.fixture
def live(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb", read_timeout_s=30) as col:
        x = _log(col.addr)
        yield col, x


def _raw_query(addr: str, sql: str, params=None, timeout=30):
    req = _core.encode_text_response(json.dumps({"sql": sql, "params": params}))
    with grpc.insecure_channel(addr) as ch:
        call = ch.unary_stream("/modeltap.v1.Collector/Query")(req, timeout=timeout)
        return [_core.decode_query_chunk(p) for p in call]


def test_client_reads_what_was_logged_while_running(live):
    col, x = live
    with modeltap.Client(col.addr) as c:
        assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == N
        t = c.predictions("m", "1")
        assert t.num_rows == N
        got = np.column_stack([t.column(f"f{i}").to_numpy() for i in range(20)])
        np.testing.assert_array_equal(got, x)  # every value, in logging order
        assert c.predictions("m", limit=7).num_rows == 7
        cols = c.predictions("m", columns=["request_id", "prediction"])
        assert cols.column_names == ["request_id", "prediction"]
        assert c.errors("m").num_rows == N // 500
        assert set(c.errors("m").column("error_type").to_pylist()) == {"RuntimeError"}
        assert c.predictions("m", since="1h").num_rows == N
        assert c.predictions("m", until="1h").num_rows == 0
        assert c.predictions("other").num_rows == 0
        df = c.sql("SELECT model, count(*) AS n FROM predictions GROUP BY 1", as_pandas=True)
        assert df.to_dict("records") == [{"model": "m", "n": N}]
        models = c.models()
        assert models.column("records").to_pylist() == [N]
        params = c.sql("SELECT ?::INT + 1 AS v, ? AS s", [41, "é"]).to_pylist()
        assert params == [{"v": 42, "s": "é"}]
    live_rows = c_rows = None
    with modeltap.Client(col.addr) as c:
        live_rows = c.predictions("m").to_pylist()
    col.stop()
    with modeltap.Store(col.server.store_path) as s:
        c_rows = s.predictions("m").to_pylist()
        assert s.errors("m").num_rows == N // 500
    assert live_rows == c_rows  # one read API, the same answer


def test_large_results_stream_in_pieces(live):
    col, _ = live
    pieces = _raw_query(col.addr, "SELECT p.* FROM predictions p, range(5)")
    assert len(pieces) > 3  # the schema, then pieces of about CHUNK_BYTES
    schema = pa.ipc.open_stream(pieces[0]).schema
    assert pa.ipc.open_stream(pieces[0]).read_all().num_rows == 0
    rows = 0
    for p in pieces[1:]:
        t = pa.ipc.open_stream(p).read_all()
        assert t.schema == schema
        assert len(p) < 2 * CHUNK_BYTES
        rows += t.num_rows
    assert rows == 5 * N
    with modeltap.Client(col.addr) as c:
        reader = c.stream("SELECT p.* FROM predictions p, range(5) ORDER BY ts")
        first = reader.read_next_batch()
        assert 0 < first.num_rows < 5 * N
        reader.close()  # dropped early: the collector's read is freed
        _settled(col)


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM predictions",
        "DROP TABLE predictions",
        "INSERT INTO errors SELECT * FROM errors",
        "UPDATE predictions SET prediction = 0",
        "CREATE TABLE x AS SELECT 1",
        "SELECT 1; DROP TABLE predictions",
        "ATTACH '/tmp/other.duckdb'",
        "COPY predictions TO '/tmp/leak.csv'",
        "EXPORT DATABASE '/tmp/leak'",
        "SET enable_external_access = true",
        "PRAGMA disable_checkpoint_on_shutdown",
        "CHECKPOINT",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CALL duckdb_tables()",
        "EXPLAIN SELECT 1",
        "EXPLAIN ANALYZE SET GLOBAL memory_limit = '3MB'",
        "EXPLAIN ANALYZE CHECKPOINT",
        "SELECT * FROM enable_logging(storage := 'file', storage_path := '/tmp/logs')",
        "SELECT * FROM enable_logging(level := 'trace')",
        "SELECT * FROM enable_profiling()",
        "SELECT * FROM checkpoint()",
        "WITH c AS (SELECT * FROM force_checkpoint()) SELECT 1",
        "SELECT 1 AS x" + " UNION ALL SELECT 1" * 100_000,
        "BEGIN TRANSACTION",
        "ROLLBACK",
        "",
        "not sql at all",
    ],
)
def test_queries_that_write_or_escape_are_refused(live, sql):
    col, _ = live
    with pytest.raises(grpc.RpcError) as e:
        _raw_query(col.addr, sql)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with modeltap.Client(col.addr) as c:
        assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == N
        limit = c.sql("SELECT current_setting('memory_limit') AS m").column("m")[0].as_py()
        assert limit.startswith(("256.0 MiB", "244.1 MiB", "256MB")), limit
    _log(col.addr, 100, seed=3)  # ingestion goes on
    with modeltap.Client(col.addr) as c:
        assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == N + 100


def test_settings_cannot_be_changed_by_any_statement(live):
    col, _ = live
    con = col.server.writer.read_root().cursor()
    with pytest.raises(Exception, match="locked"):
        con.execute("SET GLOBAL memory_limit = '3MB'")
    con.close()


def _wal_size(col) -> int:
    wal = Path(str(col.server.writer.path) + ".wal")
    return wal.stat().st_size if wal.exists() else 0


def test_sql_held_in_a_string_cannot_act_on_the_store(live):
    """query() and query_table() run the SQL of a string literal: a read
    through them must not checkpoint the live store (or anything else)."""
    col, _ = live
    wal = _wal_size(col)
    assert wal > 0  # committed batches wait in the WAL for a checkpoint
    for sql in (
        "SELECT * FROM query('SELECT * FROM checkpoint()')",
        "SELECT * FROM query('SELECT * FROM force_checkpoint()')",
        "SELECT * FROM query_table('predictions')",
        "SELECT (SELECT count(*) FROM query('SELECT 1'))",
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
        "SELECT write_log('x', level := 'error')",
        "SELECT setseed(0.5)",
    ):
        with pytest.raises(grpc.RpcError) as e:
            _raw_query(col.addr, sql)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, sql
        assert "may not call" in e.value.details(), sql
    assert _wal_size(col) == wal  # no checkpoint ran
    _settled(col)


def test_every_table_function_outside_the_allowed_ones_is_refused(live):
    """Whatever DuckDB lists: a table function a read may call computes
    rows or reads the catalog; every other one (running SQL, touching a
    file, a setting, the log, a checkpoint) is refused before it runs."""
    from modeltap.collector.reader import TABLE_FUNCTIONS

    col, _ = live
    con = duckdb.connect()
    listed = sorted(
        {
            r[0]
            for r in con.execute(
                "SELECT function_name FROM duckdb_functions() "
                "WHERE function_type IN ('table', 'table_macro', 'pragma')"
            ).fetchall()
        }
    )
    con.close()
    refused = [f for f in listed if f not in TABLE_FUNCTIONS]
    for needed in ("query", "query_table", "checkpoint", "enable_logging", "read_text", "glob"):
        assert needed in refused
    with modeltap.Client(col.addr) as c:
        for f in refused:
            with pytest.raises(grpc.RpcError) as e:
                c.sql(f'SELECT * FROM "{f}"()')
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f
            assert f"may not call {f}" in e.value.details(), (f, e.value.details())
        # the allowed ones answer (or fail on their arguments, not the check)
        assert c.sql("SELECT count(*) AS n FROM range(10)").column("n")[0].as_py() == 10
        names = c.sql("SELECT table_name FROM duckdb_tables()").column(0).to_pylist()
        assert "predictions" in names
    _settled(col)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
        "SELECT nextval('no_such_sequence')",
    ],
)
def test_selects_cannot_reach_files(live, sql):
    col, _ = live
    with pytest.raises(grpc.RpcError) as e:
        _raw_query(col.addr, sql)
    assert e.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    assert "root:" not in (e.value.details() or "")  # nothing of the file comes back


def test_bad_requests_are_refused_plainly(live):
    col, _ = live
    with grpc.insecure_channel(col.addr) as ch:
        fn = ch.unary_stream("/modeltap.v1.Collector/Query")
        for req, needle in [
            (b"\xff\xff", "JSON"),
            (_core.encode_text_response("[1]"), "object"),
            (_core.encode_text_response('{"sql": 5}'), "sql"),
            (_core.encode_text_response('{"sql": "SELECT ?", "params": [{"a": 1}]}'), "params"),
            (_core.encode_text_response('{"sql": "SELECT ?", "params": [[[1]]]}'), "list"),
            (_core.encode_text_response('{"sql": "SELECT no_such_column"}'), "no_such_column"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                list(fn(req, timeout=10))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
            assert needle in e.value.details(), (needle, e.value.details())
    _settled(col)


def test_a_read_past_its_deadline_is_interrupted(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb", read_timeout_s=0.5) as col:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            _raw_query(col.addr, "SELECT count(*) FROM range(1000000000000) a")
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 10
        _settled(col)
        assert col.server.reader.timed_out == 1
        with modeltap.Client(col.addr) as c:  # the store reads on
            assert c.sql("SELECT 1 AS one").column("one")[0].as_py() == 1


def test_reads_past_the_admission_bound_are_shed_and_ingest_goes_on(tmp_path):
    with BackgroundCollector(
        tmp_path / "s.duckdb",
        max_reads=2,
        max_admitted=3,
        max_query_streams=3,
        max_query_streams_per_peer=3,
    ) as col:
        _log(col.addr, 500)
        # Three clients start big reads and stop taking pieces: they hold
        # their admission (and a read transaction each).
        channels = [grpc.insecure_channel(col.addr) for _ in range(4)]
        req = _core.encode_text_response(
            json.dumps({"sql": "SELECT * FROM predictions, range(50)"})
        )
        calls = [
            ch.unary_stream("/modeltap.v1.Collector/Query")(req, timeout=60) for ch in channels[:3]
        ]
        for call in calls:
            next(call)
        deadline = time.monotonic() + 10
        while col.server.reader.in_flight < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert col.server.reader.in_flight == 3
        with pytest.raises(grpc.RpcError) as e:
            list(channels[3].unary_stream("/modeltap.v1.Collector/Query")(req, timeout=10))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert col.server.reader.refused == 1
        # ... while the store goes on taking batches, committed and visible.
        _log(col.addr, 700, seed=1)
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()
        _settled(col)
        with modeltap.Client(col.addr) as c:
            assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == 1200


def test_a_heavy_read_does_not_hold_up_ingestion(tmp_path):
    """Exports are acknowledged at their usual pace while a read runs."""
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        _log(col.addr, 2_000)
        done = threading.Event()
        read_rows: list[int] = []

        def heavy() -> None:
            with modeltap.Client(col.addr) as c:
                while not done.is_set():
                    t = c.sql("SELECT p.request_id, q.x FROM predictions p, range(30) q(x)")
                    read_rows.append(t.num_rows)

        th = threading.Thread(target=heavy)
        th.start()
        a = modeltap.Agent("m", "1", collector=col.addr, batch_size=200, flush_interval=0.02)
        for i in range(5_000):
            a.log([float(i)], 1.0)
        assert a.flush(60)
        stats = a.stats()
        a.close()
        done.set()
        th.join(60)
        assert read_rows
        assert all(r >= 60_000 for r in read_rows)
        assert stats["shipped"] == 5_000
        assert stats["logged"] == 5_000
        with modeltap.Client(col.addr) as c:
            assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == 7_000


def test_connect_picks_store_or_client(tmp_path, live):
    col, _ = live
    c = modeltap.connect(col.addr)
    assert isinstance(c, modeltap.Client)
    assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == N
    c.close()
    with pytest.raises(ValueError, match="neither"):
        modeltap.connect(tmp_path / "missing.duckdb")
    col.stop()
    s = modeltap.connect(col.server.store_path)
    assert isinstance(s, modeltap.Store)
    assert s.predictions("m").num_rows == N
    s.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modeltap", *args], capture_output=True, text=True, timeout=120
    )


def test_query_command(live):
    col, _ = live
    q = "SELECT model, count(*) AS n FROM predictions GROUP BY model"
    r = _cli("query", q, "--collector", col.addr, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"model": "m", "n": N}]
    r = _cli(
        "query",
        "SELECT request_id, prediction FROM predictions ORDER BY ts",
        "--collector",
        col.addr,
        "--csv",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].replace('"', "") == "request_id,prediction"
    assert len(lines) == N + 1
    r = _cli("query", q, "--collector", col.addr)
    assert r.returncode == 0
    assert "3000" in r.stdout
    r = _cli("query", "DROP TABLE predictions", "--collector", col.addr)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "only SELECT" in r.stderr
    col.stop()
    r = _cli("query", q, "--store", str(col.server.store_path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"model": "m", "n": N}]


def test_callers_gone_before_their_read_ran_are_counted_out(tmp_path):
    """Drift/latency calls whose deadline passes while they wait for a read
    thread: admitted, never run, still counted out (no admission leak)."""
    with BackgroundCollector(tmp_path / "s.duckdb", max_reads=1, max_admitted=8) as col:
        _log(col.addr, 200)
        # The collector's own reads have their threads (beside Query's):
        # hold every one of them.
        reader = col.server.reader
        gate = threading.Event()
        held = [reader.run(lambda cur: gate.wait(20)) for _ in reader.analysis_pool._threads]
        time.sleep(0.3)
        for _ in range(5):
            with modeltap.Client(col.addr, timeout_s=0.3) as c, pytest.raises(grpc.RpcError):
                c.stage_latency("m")
        gate.set()
        for f in held:
            assert f.result(10) is True
        _settled(col)
        with modeltap.Client(col.addr) as c:
            assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == 200


def test_a_client_dropping_a_stream_is_not_an_error_of_ours(live):
    col, _ = live
    with modeltap.Client(col.addr) as c:
        for _ in range(3):
            r = c.stream("SELECT p.* FROM predictions p, range(20)")
            r.read_next_batch()
            r.close()
    _settled(col)
    assert col.server.internal == 0


def test_stopping_with_reads_in_flight_closes_them(tmp_path):
    col = BackgroundCollector(tmp_path / "s.duckdb", read_timeout_s=60).start()
    _log(col.addr, 2_000)
    req = _core.encode_text_response(
        json.dumps({"sql": "SELECT p.* FROM predictions p, range(200)"})
    )
    channels = [grpc.insecure_channel(col.addr) for _ in range(3)]
    calls = [ch.unary_stream("/modeltap.v1.Collector/Query")(req, timeout=60) for ch in channels]
    for call in calls:
        next(call)  # then never read again
    t0 = time.monotonic()
    col.stop(grace_s=1)
    assert time.monotonic() - t0 < 30
    assert col.server.reader.in_flight == 0
    for ch in channels:
        ch.close()
    with modeltap.Store(tmp_path / "s.duckdb") as s:  # the store was closed
        assert s.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == 2_000


def test_times_past_the_store_range_mean_everything(live):
    col, _ = live
    with modeltap.Client(col.addr) as c:
        assert c.predictions("m", until="9999-12-31").num_rows == N
        assert c.predictions("m", since="0001-01-01").num_rows == N
        assert c.predictions("m", since="99999999999999d").num_rows == N


def test_query_command_errors_are_one_line(live):
    col, _ = live
    r = _cli("query", "SELEC 1", "--collector", col.addr)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1, r.stderr
    r = _cli("query", "SELECT 'nan'::DOUBLE AS x, 1 AS y", "--collector", col.addr, "--json")
    assert json.loads(r.stdout) == [{"x": None, "y": 1}]
    r = _cli("query", "SELECT 1", "--store", "/nonexistent/s.duckdb")
    assert r.returncode == 1
    assert "no store file" in r.stderr


def test_absurd_read_arguments_get_plain_errors(live):
    col, _ = live
    with modeltap.Client(col.addr) as c:
        with pytest.raises(ValueError, match="limit"):
            c.predictions("m", limit=2**70)
        with pytest.raises(TypeError, match="trace_id"):
            c.spans(trace_id=5)
        assert c.predictions("m", columns="request_id", limit=3).column_names == ["request_id"]
        with pytest.raises(grpc.RpcError) as e:
            c.predictions("m", columns=["a" * 100_000])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(e.value.details()) <= 4096
