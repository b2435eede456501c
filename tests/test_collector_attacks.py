"""Regressions of what hostile or unlucky clients did to the collector: a
commit out of memory took the store down for everyone; OTLP retries stored
spans twice."""

from __future__ import annotations

import asyncio
import time

import duckdb
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

import modeltap
from collector_util import encoded_batches, export
from modeltap.collector import BackgroundCollector

OK = grpc.StatusCode.OK
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
SERVING = health_pb2.HealthCheckResponse.SERVING

PIN = (
    "TransactionContext Error: Failed to commit: could not allocate block of size 256.0 KiB "
    "(64.0 MiB/64.0 MiB used); failed to pin block"
)


def _otlp_export(ch: grpc.Channel):
    return ch.unary_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        request_serializer=lambda b: b,
        response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
    )


def _otlp_request(n: int, first: int = 1) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "gateway"
    ss = rs.scope_spans.add()
    for i in range(first, first + n):
        sp = ss.spans.add()
        sp.trace_id, sp.span_id = (i // 4 + 1).to_bytes(16, "big"), i.to_bytes(8, "big")
        sp.name = "call"
        sp.start_time_unix_nano = 1_700_000_000_000_000_000 + i * 1000
        sp.end_time_unix_nano = sp.start_time_unix_nano + 500
    return req.SerializeToString()


def test_a_commit_out_of_memory_fails_only_its_culprit(tmp_path):
    """A group whose commit runs out of memory ("failed to pin block", a
    TransactionException) is memory, not the store: the group is written
    again batch by batch, only the culprit is answered RESOURCE_EXHAUSTED,
    the store stays open (a running read goes on), health stays SERVING."""
    raw = encoded_batches(6, 200, features=4)
    culprit = modeltap.decode_batch(raw[3])
    key = (culprit["agent_id"], culprit["batch_seq"])
    with BackgroundCollector(tmp_path / "s.duckdb", writer_options={"linger_s": 0.5}) as col:
        backend = col.server.writer.backend
        real = backend.append_group
        calls: list[int] = []

        def append_group(keys, build):
            calls.append(len(keys))
            if key in keys:
                raise duckdb.TransactionException(PIN)
            return real(keys, build)

        backend.append_group = append_group
        reader = modeltap.Client(col.addr).stream("SELECT * FROM range(3000000)")
        first = reader.read_next_batch()

        async def burst() -> list[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(col.addr) as ch:
                call = ch.unary_unary("/modeltap.v1.Collector/Export")

                async def one(b: bytes) -> grpc.StatusCode:
                    try:
                        await call(b, timeout=30)
                        return OK
                    except grpc.aio.AioRpcError as e:
                        return e.code()

                return await asyncio.gather(*(one(b) for b in raw))

        codes = asyncio.run(burst())
        assert codes[3] == EXHAUSTED
        assert codes[:3] + codes[4:] == [OK] * 5
        assert max(calls) > 1  # they met in one group, then went one by one
        assert col.server.writer.healthy
        assert col.server.writer.out_of_memory == 1
        rows = first.num_rows + sum(b.num_rows for b in reader)  # the read was not cut
        assert rows == 3_000_000
        with grpc.insecure_channel(col.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        backend.append_group = real
        assert export(col.addr, raw[3])[0] == OK  # the culprit's retry is stored
        with modeltap.Client(col.addr) as c:
            n = c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py()
        assert n == 6 * 200


def test_otlp_out_of_memory_is_retryable(tmp_path):
    """OTLP exporters retry RESOURCE_EXHAUSTED and UNAVAILABLE, never
    PERMISSION_DENIED: a store out of memory says the former."""
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        backend = col.server.writer.backend
        real = backend.append_spans

        def append_spans(table):
            raise duckdb.TransactionException(PIN)

        backend.append_spans = append_spans
        with grpc.insecure_channel(col.addr) as ch:
            with pytest.raises(grpc.RpcError) as e:
                _otlp_export(ch)(_otlp_request(10), timeout=10)
            assert e.value.code() == EXHAUSTED
            backend.append_spans = real
            _otlp_export(ch)(_otlp_request(10), timeout=10)
        assert col.server.writer.healthy


def test_an_otlp_request_sent_twice_is_stored_once(tmp_path):
    """What every OTLP exporter does after a lost answer: the same request
    again, and one overlapping it. Each span is stored once."""
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        with grpc.insecure_channel(col.addr) as ch:
            send = _otlp_export(ch)
            req = _otlp_request(40)
            send(req, timeout=10)
            send(req, timeout=10)
            send(_otlp_request(40, first=21), timeout=10)  # 20 old, 20 new
        assert col.server.otlp_received == 60
        assert col.server.otlp_duplicates == 60
        with modeltap.Client(col.addr) as c:
            t = c.sql(
                "SELECT count(*) AS n, count(DISTINCT (trace_id, span_id)) AS d FROM spans"
            ).to_pylist()[0]
        assert t == {"n": 60, "d": 60}


def test_a_trace_of_very_many_spans_is_capped(tmp_path, monkeypatch):
    """A trace read never takes a whole huge trace into memory: the spans
    come back up to a cap, with the trace's total beside them."""
    import modeltap.analysis.traces as traces

    monkeypatch.setattr(traces, "MAX_TRACE_SPANS", 25)
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        req = trace_service_pb2.ExportTraceServiceRequest()
        ss = req.resource_spans.add().scope_spans.add()
        for i in range(1, 101):
            sp = ss.spans.add()
            sp.trace_id, sp.span_id, sp.name = b"\x07" * 16, i.to_bytes(8, "big"), "s"
            sp.start_time_unix_nano, sp.end_time_unix_nano = 1000 + i, 2000 + i
        with grpc.insecure_channel(col.addr) as ch:
            _otlp_export(ch)(req.SerializeToString(), timeout=10)
        with modeltap.Client(col.addr) as c:
            got = c.trace("07" * 16)
    assert len(got["spans"]) == 25
    assert got["spans_total"] == 100
    assert got["truncated"] is True
    assert [s["start_unix_nano"] for s in got["spans"]] == list(range(1001, 1026))


LONG = "fraud-detector-" + "x" * 69  # 84 characters, an ordinary model name


def _batches(agent_kw: dict, fill) -> list[bytes]:
    got: list[bytes] = []
    a = modeltap.Agent(
        LONG,
        "2026.12.07-build.1234567+" + "y" * 40,
        sink=got.append,
        metrics_interval=None,
        buffer_bytes=256 << 20,  # batches up to the agent's own limit, 16 MiB
        flush_interval=600,
        **agent_kw,
    )
    fill(a)
    a.close()
    return got


def _span_heavy(a) -> None:
    x = np.ones(20)
    for i in range(40_000):
        with a.span("request-handler-" + "z" * 40) as s:
            s.set_attribute("http.route", "/v1/models/" + LONG + "/predict")
            with a.span("preprocess"):
                pass
            with a.span("inference"):
                a.log(x, float(i % 2))
            with a.span("postprocess"):
                pass


def _wide(a) -> None:
    a.log_batch(np.random.default_rng(0).normal(size=(400, 5_000)), np.zeros(400))


def _long_strings(a) -> None:
    for i in range(3_000):
        a.log(
            [float(i), "category-" + "c" * 200 + str(i % 50)],
            "label-" + "l" * 100 + str(i % 3),
            request_id=f"req-{i:08d}-" + "r" * 100,
            error=ValueError("m" * 500) if i % 10 == 0 else None,
            attributes={"tenant": "t" * 200, "region": "eu-west-1"},
        )


@pytest.mark.parametrize(
    ("shape", "kw", "fill"),
    [
        ("span-heavy", {"sample_rate": 0.05, "batch_size": 65_536}, _span_heavy),
        ("wide", {"batch_size": 65_536}, _wide),
        ("long strings", {"categorical": ("c",), "features": ["f", "c"]}, _long_strings),
    ],
)
def test_the_largest_batches_an_agent_builds_are_stored(tmp_path, shape, kw, fill):
    """Whatever an agent builds by its own rules is never refused as an
    expansion: the span table holds a batch's model, version, agent and
    host once (dictionary-encoded), not on every span."""
    from modeltap.collector.store import MAX_EXPANSION, decode

    batches = _batches(kw, fill)
    assert batches
    biggest = max(len(b) for b in batches)
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        for b in batches:
            code, details, _ = export(col.addr, b, timeout=60)
            assert code == OK, (shape, len(b), details)
        ratio = max(decode(b).nbytes / len(b) for b in batches)
        print(f"\n{shape}: {len(batches)} batches, largest {biggest:,} bytes, expands {ratio:.2f}x")
        assert ratio < MAX_EXPANSION / 2
        with modeltap.Client(col.addr) as c:
            n = c.sql("SELECT count(*) AS n FROM batches").column("n")[0].as_py()
        assert n == len(batches)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 MiB filesystem of its own (tmpfs) for a store."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_read_that_spills_cannot_fill_the_stores_disk(small_disk):
    """A hashing SELECT past the memory limit spills to the store's temp
    directory: it fails at the temp budget (a quarter of the free space at
    most), and ingestion beside it stays SERVING and stores every batch."""
    import shutil
    import threading

    with BackgroundCollector(
        small_disk / "s.duckdb", memory_limit="64MB", read_timeout_s=120
    ) as col:
        budget = col.server.writer.backend.temp_budget
        assert 0 < budget <= 256 * 2**20 // 4
        errors: list[grpc.RpcError] = []
        peak = [0]

        def hostile() -> None:
            with modeltap.Client(col.addr) as c:
                try:
                    c.sql(
                        "SELECT x, count(*) AS n FROM range(400000000) t(x) "
                        "GROUP BY x ORDER BY n DESC LIMIT 1"
                    )
                except grpc.RpcError as e:
                    errors.append(e)

        def watch_disk(stop: threading.Event) -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], shutil.disk_usage(small_disk).used)
                time.sleep(0.05)

        stop = threading.Event()
        watcher = threading.Thread(target=watch_disk, args=(stop,))
        watcher.start()
        reader = threading.Thread(target=hostile)
        reader.start()
        results: list[bool] = []

        def serve(k: int) -> None:
            a = modeltap.Agent(f"m{k}", "1", collector=col.addr, batch_size=1_000)
            for _ in range(20):
                a.log_batch(np.ones((1_000, 8)), np.zeros(1_000))
                time.sleep(0.05)
            results.append(a.flush(60))
            a.close()

        agents = [threading.Thread(target=serve, args=(k,)) for k in range(4)]
        for t in agents:
            t.start()
        for t in agents:
            t.join(120)
        reader.join(120)
        stop.set()
        watcher.join()
        assert results == [True] * 4
        assert len(errors) == 1
        assert errors[0].code() == EXHAUSTED
        assert "max_temp_directory_size" in errors[0].details()
        assert peak[0] < 256 * 2**20 * 0.9  # the disk never filled
        assert col.server.writer.healthy
        with grpc.insecure_channel(col.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        with modeltap.Client(col.addr) as c:
            n = c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py()
        assert n == 4 * 20 * 1_000


SLOW = "SELECT len(list_sort(list_reverse(range(30000000)))) AS n"  # not interruptible midway


def test_uninterruptible_queries_leave_the_other_reads_answering(tmp_path):
    """Two queries DuckDB cannot interrupt hold both Query threads past
    their deadline: drift, traces, latency and SQL of the collector's own
    reads still answer, and the stuck sessions' closes take no read thread."""
    import threading

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1_000, 4))
    ref = modeltap.Reference.from_data(x)
    with BackgroundCollector(tmp_path / "s.duckdb", max_reads=2, read_timeout_s=1.0) as col:
        with modeltap.Client(col.addr) as c:
            c.register_reference(ref, "m", "1")
        a = modeltap.Agent("m", "1", collector=col.addr, reference=ref)
        with a.span("request"):
            a.log_batch(x, np.zeros(len(x)))
        assert a.flush(30)
        a.close()
        codes: list[grpc.StatusCode] = []

        def stuck() -> None:
            with modeltap.Client(col.addr) as c:
                try:
                    c.sql(SLOW)
                    codes.append(OK)
                except grpc.RpcError as e:
                    codes.append(e.code())

        threads = [threading.Thread(target=stuck) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.5)  # both past their deadline, both still running
        t0 = time.monotonic()
        with modeltap.Client(col.addr, timeout_s=10) as c:
            assert c.drift("m", "1").records == len(x)
            assert c.traces("m", slowest=5) is not None
            assert c.stage_latency("m")
        assert time.monotonic() - t0 < 8
        for t in threads:
            t.join(120)
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2


def test_functions_quadratic_in_their_inputs_are_refused(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col, modeltap.Client(col.addr) as c:
        for fn in ("levenshtein", "damerau_levenshtein", "jaro_winkler_similarity"):
            with pytest.raises(grpc.RpcError) as e:
                c.sql(f"SELECT {fn}(repeat('a', 1000000), repeat('b', 1000000))")
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fn in e.value.details()


def test_the_metrics_refresh_never_holds_the_writer(tmp_path, monkeypatch):
    """The /metrics refresh reads beside the writer, in bounded steps: it
    finishes while the writer is busy, and over many steps counts exactly
    what one pass does."""
    import threading

    import modeltap.collector.metrics as metrics

    monkeypatch.setattr(metrics, "PREDICTIONS_PER_STEP", 300)
    monkeypatch.setattr(metrics, "PROFILES_PER_STEP", 2)
    with BackgroundCollector(
        tmp_path / "s.duckdb", http="127.0.0.1:0", metrics_refresh_s=3600
    ) as col:
        a = modeltap.Agent("m", "1", collector=col.addr, batch_size=250)
        for i in range(2_000):
            a.log([float(i)], float(i % 3))
        assert a.flush(30)
        a.close()
        gate = threading.Event()
        col.server.writer.run(lambda con: gate.wait(30))  # the writer is busy
        try:
            t0 = time.monotonic()
            assert col.server.metrics.refresh(timeout_s=20)
            assert time.monotonic() - t0 < 10
        finally:
            gate.set()
        snap = col.server.metrics.figures.snapshot
        assert snap.classes[("m", "1")] == {"0": 667, "1": 667, "2": 666}
        assert snap.latency[("m", "1")]["records"] == 2_000


def test_reference_names_are_capped(tmp_path, monkeypatch):
    import modeltap.collector.server as server

    monkeypatch.setattr(server, "MAX_REFERENCE_PAIRS", 5)
    ref = modeltap.Reference.from_data(np.random.default_rng(0).normal(size=(200, 2)))
    with BackgroundCollector(tmp_path / "s.duckdb") as col, modeltap.Client(col.addr) as c:
        for k in range(5):
            c.register_reference(ref, f"m{k}", "1")
        with pytest.raises(grpc.RpcError) as e:
            c.register_reference(ref, "m5", "1")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "at most 5" in e.value.details()
        c.register_reference(ref, "m2", "1")  # again under an existing name: fine
        n = c.sql('SELECT count(DISTINCT model) AS n FROM "references"').column("n")[0].as_py()
        assert n == 5
