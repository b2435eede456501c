"""The collector under hostile input and overload: no message can wedge it,
kill its writer, fail its neighbours or grow it without bound."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import modeltap
from collector_util import (
    FIXED64,
    LEN,
    NOT_SERVING,
    SERVING,
    VARINT,
    Collector,
    encoded_batches,
    export,
    pack_varints,
    packed_varints,
    pb_build,
    pb_get,
    pb_parse,
    rebuild_reference,
    reference_fingerprint,
)
from modeltap import _core
from modeltap.collector import BackgroundCollector
from modeltap.collector.store import (
    MAX_UNIX_NANO,
    BatchRejected,
    Overloaded,
    StoreWriter,
    WriterError,
    decode,
)

pytestmark = pytest.mark.timeout(240)

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def edit(data: bytes, num: int, fn) -> bytes:
    """Applies ``fn`` to the first field ``num`` of a message (appending
    the field when absent: ``fn`` gets None)."""
    fields = pb_parse(data)
    hit = pb_get(fields, num)
    if hit:
        hit[0][2] = fn(hit[0][2])
    else:
        fields.append([num, *fn(None)])
    return pb_build(fields)


def edit_in(num: int, inner: int, fn):
    """``fn`` applied to field ``inner`` of the sub-message in field ``num``."""
    return lambda data: edit(data, num, lambda sub: edit(sub, inner, fn))


def stored_keys(path) -> dict[tuple[str, int], int]:
    with modeltap.Store(path) as s:
        rows = s.sql("SELECT agent_id, batch_seq, n_records FROM batches").to_pylist()
        n = s.sql("SELECT count(*) AS n FROM predictions").to_pylist()[0]["n"]
    keys = {(r["agent_id"], r["batch_seq"]): r["n_records"] for r in rows}
    assert n == sum(keys.values())  # every record of every batch, no more
    return keys


def batch_key(data: bytes) -> tuple[str, int]:
    d = _core.decode_batch(data, columns=True)
    return d["agent_id"], int(d["batch_seq"])


def psi_out_of_range(ref_bytes: bytes) -> bytes:
    """A reference whose first numeric column maps a bin to PSI bin 99 of
    10 (with a fingerprint that matches: only a full check finds it)."""

    def bad(col):
        for f in col:
            if f[0] == 5:  # NumericSpec
                spec = pb_parse(f[2])
                for g in spec:
                    if g[0] == 2:  # psi_bin
                        vals = packed_varints(g[2])
                        vals[0] = 99
                        g[2] = pack_varints(vals)
                f[2] = pb_build(spec)
                return col
        return None

    return rebuild_reference(ref_bytes, bad)


@pytest.fixture(scope="module")
def ref():
    rng = np.random.default_rng(3)
    return modeltap.Reference.from_data(rng.normal(size=(2000, 3)))


# -- item 3: the writer thread survives everything ---------------------------


def test_deadline_passing_while_queued_leaves_the_writer_alive(tmp_path):
    """A client gives up on a batch queued behind a slow job: grpc cancels
    the call, so the batch's future is cancelled; resolving it later used
    to raise InvalidStateError and kill the writer for good."""
    good = encoded_batches(3, 50)
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        w = col.server.writer
        gate = threading.Event()
        w.run(lambda con: gate.wait(20))
        codes = []
        t = threading.Thread(target=lambda: codes.append(export(col.addr, good[0], timeout=1)[0]))
        t.start()
        deadline = time.monotonic() + 10
        while w.queued()["batches"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.queued()["batches"] == 1
        t.join()
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED]
        gate.set()
        time.sleep(0.3)
        assert w.alive()
        assert w.abandoned == 1  # not written: nobody waited for it
        assert export(col.addr, good[1])[0] == OK
        assert export(col.addr, good[0])[0] == OK  # the resend is stored once
        assert col.server.serving()[0]
    keys = stored_keys(tmp_path / "s.duckdb")
    assert set(keys) == {batch_key(good[0]), batch_key(good[1])}


class FakePanic(BaseException):
    """Stands for pyo3's PanicException: not an Exception."""


def test_a_job_raising_anything_fails_only_its_own_call(tmp_path, ref):
    good = encoded_batches(2, 20)
    bad_ref = psi_out_of_range(ref.to_bytes())

    def real_panic(con):
        return _core.drift(bad_ref, b"")  # a real PanicException (until drift checks)

    def fake_panic(con):
        raise FakePanic("boom")

    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        w = col.server.writer
        with pytest.raises(WriterError, match="FakePanic: boom"):
            w.run(fake_panic).result(10)
        with pytest.raises((WriterError, ValueError)):
            w.run(real_panic).result(10)
        with pytest.raises(ZeroDivisionError):
            w.run(lambda con: 1 / 0).result(10)
        assert w.alive()
        assert export(col.addr, good[0])[0] == OK
        # and the same inside a group write: the batch fails, the thread lives
        orig = w.backend._fresh

        def exploding(con, keys):
            w.backend._fresh = orig
            raise FakePanic("in a group")

        w.backend._fresh = exploding
        code, details, _ = export(col.addr, good[1])
        assert code == grpc.StatusCode.INTERNAL, details
        assert "FakePanic: in a group" in details
        assert w.alive()
        assert export(col.addr, good[1])[0] == OK  # the agent's retry succeeds
        assert col.server.serving()[0]
    assert set(stored_keys(tmp_path / "s.duckdb")) == {batch_key(b) for b in good}


def test_dead_writer_is_restarted_and_exports_never_hang(tmp_path):
    good = encoded_batches(3, 20)
    with BackgroundCollector(tmp_path / "s.duckdb", watchdog_s=3600) as col:
        w = col.server.writer
        orig = w._step

        def die():  # the thread returns as if it had died
            w._step = orig
            return True

        w._step = die
        w.run(lambda con: None)  # wake it
        deadline = time.monotonic() + 5
        while w.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not w.alive()
        assert not col.server.serving()[0]
        t0 = time.monotonic()
        code, details, _ = export(col.addr, good[0], timeout=10)
        assert code == UNAVAILABLE, details  # at once, not after the deadline
        assert time.monotonic() - t0 < 2
        assert w.alive()
        assert w.restarts == 1
        assert export(col.addr, good[0])[0] == OK

    statuses = []
    with BackgroundCollector(tmp_path / "t.duckdb", watchdog_s=0.05) as col:
        w = col.server.writer
        real_set = col.server.health.set

        async def recording_set(name, status):
            statuses.append(status)
            await real_set(name, status)

        col.server.health.set = recording_set
        orig = w._step

        def die2():
            w._step = orig
            return True

        w._step = die2
        w.run(lambda con: None)
        deadline = time.monotonic() + 10
        while w.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert w.restarts == 1
        assert w.alive()
        assert NOT_SERVING in statuses  # the watchdog said so while it was dead
        assert statuses[-1] == SERVING
        assert export(col.addr, good[1])[0] == OK
        assert export(col.addr, good[2])[0] == OK
    assert len(stored_keys(tmp_path / "t.duckdb")) == 2


def test_stalled_writer_is_not_serving_and_exports_fail_fast(tmp_path):
    good = encoded_batches(1, 20)
    with BackgroundCollector(tmp_path / "s.duckdb", watchdog_s=0.05, stall_s=0.3) as col:
        gate = threading.Event()
        col.server.writer.run(lambda con: gate.wait(20))
        time.sleep(0.6)
        ok, why = col.server.serving()
        assert not ok
        assert "stuck" in why
        t0 = time.monotonic()
        code, details, _ = export(col.addr, good[0], timeout=10)
        assert code == UNAVAILABLE
        assert "stuck" in details
        assert time.monotonic() - t0 < 2
        gate.set()
        deadline = time.monotonic() + 5
        while not col.server.serving()[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert export(col.addr, good[0])[0] == OK


def _call(addr: str, method: str, data: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    with grpc.insecure_channel(addr) as ch:
        try:
            return OK, "", ch.unary_unary(f"/modeltap.v1.Collector/{method}")(data, timeout=20)
        except grpc.RpcError as e:
            return e.code(), e.details() or "", b""


def test_references_are_checked_before_they_are_stored(tmp_path, ref):
    good = ref.to_bytes()
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        bad = {
            "garbage upload": b"\xff\xff\xff",
            "not a reference": _core.encode_reference_upload("m", "1", b"hello"),
            "torn": _core.encode_reference_upload("m", "1", good[: len(good) // 2]),
            "fingerprint": _core.encode_reference_upload(
                "m", "1", good.replace(good[-16:], b"0" * 16)
            ),
        }
        for what, req in bad.items():
            code, details, _ = _call(col.addr, "RegisterReference", req)
            assert code == INVALID, (what, code, details)
        up = _core.encode_reference_upload("m", "1", good)
        assert _call(col.addr, "RegisterReference", up)[0] == OK
        assert col.server.writer.alive()
        assert col.server.serving()[0]


def test_register_refuses_a_reference_that_would_panic_in_drift(tmp_path, ref):
    """The PSI bin map must be checked at registration (reference_info
    validates every index), so a bad reference never reaches the store."""
    up = _core.encode_reference_upload("m", "1", psi_out_of_range(ref.to_bytes()))
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        code, details, _ = _call(col.addr, "RegisterReference", up)
        assert code == INVALID, details


def test_a_bad_stored_reference_fails_only_its_drift_call(tmp_path, ref):
    """References stored before the checks existed (or damaged since):
    Drift answers for that call alone; the writer and ingestion go on."""
    good = ref.to_bytes()
    panicky = psi_out_of_range(good)
    pfp = reference_fingerprint(panicky)

    def against(fp: str, data: bytes) -> bytes:  # profiles that name ``fp``
        fields = pb_parse(data)
        for f in fields:
            if f[0] == 32:
                f[2] = edit(f[2], 3, lambda v: fp.encode())
        return pb_build(fields)

    v1 = encoded_batches(2, 200, reference=ref)
    v2 = [against(pfp, b) for b in encoded_batches(1, 200, reference=ref, version="2")]
    v3 = encoded_batches(1, 200, reference=ref, version="3")
    cases = {  # version: (stored bytes, stored fingerprint, wanted statuses)
        "1": (good[: len(good) // 2], ref.fingerprint, {PRECONDITION}),
        # FAILED_PRECONDITION once reference_info checks every index;
        # INTERNAL (the panic, caught) is the floor: never a dead writer
        "2": (panicky, pfp, {PRECONDITION, grpc.StatusCode.INTERNAL}),
        "3": (good, "0123456789abcdef", {PRECONDITION}),
    }
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        for b in (v1[0], *v2, *v3):
            assert export(col.addr, b)[0] == OK
        w = col.server.writer
        for version, (blob, fp, want) in cases.items():
            w.run(
                lambda con, v=version, b=blob, f=fp: con.execute(
                    'INSERT INTO "references" VALUES (?, ?, ?, now(), ?)', ["m", v, f, b]
                )
            ).result(10)
            req = _core.encode_drift_request("m", version, 0, 0)
            code, details, _ = _call(col.addr, "Drift", req)
            assert code in want, (version, code, details)
            assert w.alive()
        assert export(col.addr, v1[1])[0] == OK
        assert col.server.serving()[0]


def test_drift_arguments_are_checked(tmp_path, ref):
    rows = encoded_batches(1, 200, reference=ref)
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        assert export(col.addr, rows[0])[0] == OK
        up = _core.encode_reference_upload("m", "1", ref.to_bytes())
        assert _call(col.addr, "RegisterReference", up)[0] == OK
        cases = {
            "malformed": (b"\xff\xff", INVALID),
            "rule syntax": (_core.encode_drift_request("m", "1", 0, 0, ["x"]), INVALID),
            "statistic": (_core.encode_drift_request("m", "1", 0, 0, ["x0=nope:1"]), INVALID),
            "time": (_core.encode_drift_request("m", "1", 2**64 - 1, 0), INVALID),
            "model": (_core.encode_drift_request("nobody", "", 0, 0), grpc.StatusCode.NOT_FOUND),
            "fine": (_core.encode_drift_request("m", "1", 0, 0), OK),
        }
        for what, (req, want) in cases.items():
            code, details, _ = _call(col.addr, "Drift", req)
            assert code == want, (what, code, details)


def test_bad_reference_flag_stops_the_collector_at_start(tmp_path, ref):
    path = tmp_path / "bad.mtref"
    path.write_bytes(psi_out_of_range(ref.to_bytes())[:-5])
    p = subprocess.run(
        [sys.executable, "-m", "modeltap", "collector", "--listen", "127.0.0.1:0",
         "--store", str(tmp_path / "s.duckdb"), "--reference", f"m:1={path}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 1
    assert "modeltap collector:" in p.stderr
    assert "reference" in p.stderr.lower()
    p = subprocess.run(
        [sys.executable, "-m", "modeltap", "collector", "--listen", "127.0.0.1:0",
         "--store", str(tmp_path / "s.duckdb"), "--memory-limit", "lots"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 1
    assert "memory limit" in p.stderr


# -- items 4 and 11: every value checked; a bad batch refused alone ---------

BIG = 2**63  # past int64: used to overflow TIMESTAMPTZ in the group's insert


def _ts_last(data: bytes) -> bytes:
    return data[:-8] + BIG.to_bytes(8, "little")


def _gpu(sample: bytes) -> bytes:
    gpu = pb_build([[1, VARINT, 2**31], [2, LEN, b"g"]])
    return pb_build([*pb_parse(sample), [5, VARINT, 1], [6, LEN, gpu]])


MUTATIONS = {
    "agent_start_unix_nano": edit_in(4, 7, lambda v: (FIXED64, BIG) if v is None else BIG),
    "created_unix_nano": lambda d: edit(d, 31, lambda v: (FIXED64, BIG) if v is None else BIG),
    "timestamp_unix_nano": lambda d: edit(d, 10, _ts_last),
    "timestamp int64 max (infinity)": lambda d: edit(
        d, 10, lambda v: v[:-8] + (2**63 - 1).to_bytes(8, "little")
    ),
    "system.unix_nano": edit_in(29, 1, lambda v: BIG),
    "system.gpus.index": lambda d: edit(d, 29, _gpu),
    "profiles.window_start": edit_in(32, 1, lambda v: BIG),
    "profiles.window_nano": edit_in(32, 2, lambda v: MAX_UNIX_NANO),
    "empty agent_id": lambda d: pb_build([f for f in pb_parse(d) if f[0] != 2]),
}


@pytest.fixture(scope="module")
def rich_batches(ref):
    """Batches with system samples and window profiles."""
    out = encoded_batches(16, 50, reference=ref, metrics=True, seed=5)
    out = [b for b in out if pb_get(pb_parse(b), 29) and pb_get(pb_parse(b), 32)]
    assert len(out) >= len(MUTATIONS)
    return out


def test_each_out_of_range_field_is_refused_alone(tmp_path, rich_batches):
    """Each column narrower than its wire type, pushed past its range: that
    batch gets INVALID_ARGUMENT, before it can join (and fail) a group."""
    col = Collector(tmp_path / "s.duckdb").start()
    try:
        for i, (what, mutate) in enumerate(MUTATIONS.items()):
            bad = mutate(rich_batches[i])
            with pytest.raises(_core.BatchDecodeError):
                decode(bad)
            code, details, _ = export(col.addr, bad)
            assert code == INVALID, (what, code, details)
            assert "agent_id" in details or "out of range" in details, (what, details)
        for b in rich_batches:
            assert export(col.addr, b)[0] == OK
        assert col.health() == SERVING
    finally:
        col.stop()
    keys = stored_keys(tmp_path / "s.duckdb")
    assert set(keys) == {batch_key(b) for b in rich_batches}


POISON_AGENT = """
import json, sys, numpy as np, modeltap
k, n = int(sys.argv[2]), int(sys.argv[3])
a = modeltap.Agent("m", "1", collector=sys.argv[1], metrics_interval=None, batch_size=500)
rng = np.random.default_rng(k)
for i in range(0, n, 250):
    a.log_batch(rng.normal(size=(250, 4)), np.full(250, k))
ok = a.flush(60)
a.close()
s = a.stats()
s["flushed"], s["agent_id"] = ok, a.agent_id
print(json.dumps(s))
"""


def test_poison_batches_among_good_agents(tmp_path, rich_batches):
    """Poison batches sent while four agent processes ship flat out: each
    poison batch is refused with INVALID_ARGUMENT, every good batch is
    stored exactly once, health stays SERVING throughout."""
    col = Collector(tmp_path / "s.duckdb").start()
    health: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            health.append(col.health())
            time.sleep(0.05)

    codes: list[grpc.StatusCode] = []

    def poison():
        with grpc.insecure_channel(col.addr) as ch:
            call = ch.unary_unary("/modeltap.v1.Collector/Export")
            i = 0
            while not stop.is_set():
                bad = MUTATIONS["agent_start_unix_nano"](rich_batches[i % len(rich_batches)])
                try:
                    call(bad, timeout=10)
                    codes.append(OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
                i += 1

    threads = [threading.Thread(target=watch), threading.Thread(target=poison)]
    for t in threads:
        t.start()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", POISON_AGENT, col.addr, str(k), "40000"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(4)
        ]
        stats = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            stats.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.set()
        for t in threads:
            t.join()
        col.stop()
    assert len(codes) >= 20
    assert set(codes) == {INVALID}
    assert health
    assert set(health) == {SERVING}
    for s in stats:
        assert s["flushed"], s
        assert s["shipped"] == 40_000, s
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        per_agent = {
            r["agent_id"]: r["n"]
            for r in st.sql(
                "SELECT agent_id, count(*) AS n FROM predictions GROUP BY agent_id"
            ).to_pylist()
        }
        dup = st.sql(
            "SELECT count(*) AS n FROM (SELECT request_id FROM predictions "
            "GROUP BY request_id HAVING count(*) > 1)"
        ).to_pylist()[0]["n"]
    assert per_agent == {s["agent_id"]: 40_000 for s in stats}
    assert dup == 0


def _group_writer(tmp_path, **kw) -> StoreWriter:
    """A writer that waits long enough for everything submitted to form one
    group."""
    w = StoreWriter(tmp_path / "w.duckdb", linger_s=0.5, **kw)
    w.start()
    return w


@pytest.mark.parametrize("culprit", ["python overflow", "duckdb conversion"])
def test_a_culprit_that_passes_decode_fails_alone_in_its_group(tmp_path, culprit):
    """Defence in depth: if a bad value still reaches a group, the group is
    written again batch by batch, so only the culprit fails (and with
    INVALID_ARGUMENT, never UNAVAILABLE), and health stays good."""
    import pyarrow as pa

    raw = encoded_batches(6, 40, features=2)
    w = _group_writer(tmp_path)
    try:
        batches = [decode(b) for b in raw]
        bad = batches[2]
        if culprit == "python overflow":
            bad.created_ns = 2**64  # the group's batches table overflows
        else:
            t = bad.predictions
            assert t is not None
            i = t.schema.get_field_index("flags")
            bad.predictions = t.set_column(i, "flags", pa.array(["x"] * t.num_rows))
        futures = [w.submit(b) for b in batches]
        results = []
        for f in futures:
            try:
                results.append(f.result(30))
            except Exception as e:
                results.append(e)
        assert isinstance(results[2], BatchRejected), results[2]
        assert [r for i, r in enumerate(results) if i != 2] == [(False, 40)] * 5
        assert w.healthy
        assert w.alive()
        assert w.stored_batches == 5
        assert w.rejected == 1
        # the schema of the rolled-back group was not remembered as stored
        n = w.run(lambda con: con.execute("SELECT count(*) FROM feature_schemas").fetchone()[0])
        assert n.result(10) == 1
    finally:
        w.stop()


# -- item 10: bounded queue, concurrency, maps and memory --------------------


def test_writer_queue_is_bounded_in_batches_records_and_bytes(tmp_path):
    raw = encoded_batches(8, 100, features=2)
    batches = [decode(b) for b in raw]
    nbytes = batches[0].nbytes
    for k, (limits, admitted) in enumerate(
        (
            ({"max_queued_batches": 3}, 3),
            ({"max_queued_records": 250}, 2),
            ({"max_queued_bytes": int(nbytes * 2.5)}, 2),
        )
    ):
        w = StoreWriter(tmp_path / f"q{k}.duckdb", **limits)
        w.start()
        gate = threading.Event()
        w.run(lambda con, g=gate: g.wait(20))
        time.sleep(0.1)
        futures = [w.submit(decode(r)) for r in raw[:admitted]]
        with pytest.raises(Overloaded):
            w.submit(decode(raw[admitted]))
        assert w.overloaded == 1
        jobs = [w.run(lambda con: None) for _ in range(w.max_queued_jobs)]
        with pytest.raises(Overloaded):
            w.run(lambda con: None)
        gate.set()
        assert [f.result(30) for f in futures] == [(False, 100)] * admitted
        assert [j.result(30) for j in jobs] == [None] * len(jobs)
        assert w.queued() == {"batches": 0, "records": 0, "bytes": 0, "jobs": 0}
        w.stop()


def test_pending_batches_and_concurrent_calls_are_shed(tmp_path):
    raw = encoded_batches(6, 100, features=2)
    with BackgroundCollector(
        tmp_path / "s.duckdb", max_pending_mb=1.5 * len(raw[0]) / 2**20
    ) as col:
        gate = threading.Event()
        col.server.writer.run(lambda con: gate.wait(20))
        results: list[grpc.StatusCode] = []
        ts = [
            threading.Thread(target=lambda b=b: results.append(export(col.addr, b)[0]))
            for b in raw[:3]
        ]
        for t in ts:
            t.start()
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(map(str, results)) == sorted(map(str, [EXHAUSTED, EXHAUSTED]))
        gate.set()
        for t in ts:
            t.join()
        assert results[-1] == OK
        assert col.server.shed == 2
        assert col.server.pending_bytes == 0

    async def burst(addr: str, data: list[bytes]) -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(addr) as ch:
            call = ch.unary_unary("/modeltap.v1.Collector/Export")

            async def one(b: bytes) -> grpc.StatusCode:
                try:
                    await call(b, timeout=20)
                    return OK
                except grpc.aio.AioRpcError as e:
                    return e.code()

            return await asyncio.gather(*(one(b) for b in data))

    with BackgroundCollector(tmp_path / "t.duckdb", max_concurrent_rpcs=2) as col:
        gate = threading.Event()
        col.server.writer.run(lambda con: gate.wait(20))
        health = []

        def probe():  # health checks still answer while exports are shed
            time.sleep(0.5)
            with grpc.insecure_channel(col.addr) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                health.append(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
            gate.set()

        threading.Thread(target=probe).start()
        codes = asyncio.run(burst(col.addr, raw))
        assert health == [SERVING]
        assert codes.count(OK) >= 1, codes
        assert codes.count(EXHAUSTED) >= 1, codes
        assert set(codes) <= {OK, EXHAUSTED}


def test_known_schemas_are_a_bounded_cache(tmp_path):
    raw = [encoded_batches(1, 10, features=k, model=f"m{k}")[0] for k in range(1, 7)]
    w = StoreWriter(tmp_path / "s.duckdb", max_known_schemas=3)
    w.start()
    try:
        for b in raw + raw[:2]:
            w.submit(decode(b)).result(30)
        assert len(w._schemas) == 3
        n = w.run(lambda con: con.execute("SELECT count(*) FROM feature_schemas").fetchone()[0])
        assert n.result(10) == 6
    finally:
        w.stop()


def test_memory_limit_reaches_duckdb(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb", memory_limit="300MB") as col:
        got = col.server.writer.run(
            lambda con: con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        )
        assert got.result(10).replace(" ", "") in ("286.1MiB", "300.0MB", "300MB")


OVERLOAD_AGENT = """
import json, sys, time, numpy as np, modeltap
addr, k, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
a = modeltap.Agent("load", "1", collector=addr, metrics_interval=None,
                   retry_window=120, shutdown_timeout=120)
X = np.random.default_rng(k).normal(size=(4096, 20))
y = np.zeros(4096)
end = time.monotonic() + seconds
while time.monotonic() < end:
    a.log_batch(X, y)
ok = a.flush(120)
a.close()
s = a.stats()
s["flushed"], s["agent_id"] = ok, a.agent_id
print(json.dumps(s))
"""


def test_overload_keeps_the_collector_bounded(tmp_path):
    """Agents call log_batch flat out against one collector: it sheds load
    instead of queueing it, its memory stays bounded, and the store holds
    exactly what the agents counted as shipped. Longer run for the figures:
    MODELTAP_OVERLOAD_S=20 MODELTAP_OVERLOAD_AGENTS=6 pytest -s -k overload"""
    import os

    seconds = float(os.environ.get("MODELTAP_OVERLOAD_S", "8"))
    n_agents = int(os.environ.get("MODELTAP_OVERLOAD_AGENTS", "4"))
    # small bounds, so that the run also sheds load (RESOURCE_EXHAUSTED)
    col = Collector(
        tmp_path / "s.duckdb",
        None,
        "--memory-limit",
        "256MB",
        "--max-pending-mb",
        "2",
        "--max-concurrent-rpcs",
        str(max(2, n_agents - 1)),
    ).start()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample():
        while not stop.is_set():
            samples.append((time.monotonic() - t0, col.rss()))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OVERLOAD_AGENT, col.addr, str(k), str(seconds)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(n_agents)
        ]
        stats = []
        for p in procs:
            out, err = p.communicate(timeout=seconds + 200)
            assert p.returncode == 0, err
            stats.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.set()
        sampler.join()
        output = col.stop()
    rss = np.array([r for _, r in samples]) / 2**20
    load = rss[: max(1, int(len(rss) * seconds / samples[-1][0]))]
    half = len(load) // 2
    shipped = sum(s["shipped"] for s in stats)
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        n = st.sql("SELECT count(*) AS n FROM predictions").to_pylist()[0]["n"]
        b = st.sql("SELECT count(*) AS n, count(DISTINCT (agent_id, batch_seq)) AS d FROM batches")
        batches = b.to_pylist()[0]
    print(
        f"\n{n_agents} agents x {seconds:.0f} s: logged {sum(s['logged'] for s in stats)}, "
        f"shipped {shipped}, dropped_full {sum(s['dropped_full'] for s in stats)}, "
        f"stored {n}; collector RSS MiB: first half peak {load[:half].max():.0f}, "
        f"second half peak {load[half:].max():.0f}, overall peak {rss.max():.0f}, "
        f"end {rss[-1]:.0f}\n{output.strip().splitlines()[-1]}"
    )
    for s in stats:
        assert s["flushed"], s
        logged = s["logged"]
        assert logged == s["shipped"] + s["dropped_full"] + s["spooled"] + s["discarded"], s
        assert s["discarded"] == 0, s
    assert n == shipped  # exactly what was acknowledged: none lost, none twice
    assert batches["n"] == batches["d"]
    shed = int(output.strip().splitlines()[-1].split(" refused, ")[1].split()[0])
    assert shed > 0  # the bounds were reached, and load was shed, not queued
    # MiB: DuckDB's 256MB, the pending batches and the process itself; an
    # 8 s run is too short to tell a plateau from a climb (see the README
    # for 40 s), but not to catch the queue or cache growing with the load
    assert rss.max() < 800


# -- item 5: what one message may expand to ----------------------------------


def _mixed_batch() -> bytes:
    got: list[bytes] = []
    a = modeltap.Agent(
        "m",
        "1",
        sink=got.append,
        metrics_interval=None,
        features=["x", "shop", "y"],
        categorical=["shop"],
    )
    a.log([1.0, "north", 2.0], 1.5)
    a.log([1.5, "south", 2.0], "cat", [0.2, 0.8])
    a.log(
        [2.0, None, 2.0], np.arange(5.0), latency_s=0.1, request_id="my-id", attributes={"k": "v"}
    )
    a.log([2.5, "x" * 1000, 2.0], 3, error=ValueError("bad"))
    a.log([3.0, "north", 2.0], "dog", [0.5, 0.25, 0.25])
    a.log([3.5, "south", 2.0], np.arange(7.0) / 2)
    a.close()
    assert len(got) == 1
    return got[0]


def test_stored_rows_hold_what_was_logged(tmp_path):
    """Vectors of any width, labels, categories, probabilities, errors,
    attributes and caller ids, stored from the flat columns without
    padding: each row holds its own values, scalar rows no vector."""
    data = _mixed_batch()
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        assert export(col.addr, data)[0] == OK
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        rows = st.sql("SELECT * FROM predictions").to_pylist()
        errors = st.sql("SELECT * FROM errors").to_pylist()
    rows.sort(key=lambda r: r["features"][0])
    assert [r["categories"] for r in rows] == [
        ["north"], ["south"], [None], ["x" * 1000], ["north"], ["south"]
    ]  # fmt: skip
    assert [r["prediction_label"] for r in rows] == [None, "cat", None, None, "dog", None]
    pred = [r["prediction"] for r in rows]
    assert pred[0] == 1.5
    assert pred[3] == 3.0
    assert pred[2] == 0.0  # a vector's first value
    assert np.isnan(pred[1]) or pred[1] is None
    assert [r["outputs"] for r in rows] == [
        None, None, [0.0, 1.0, 2.0, 3.0, 4.0], None, None, list(np.arange(7.0) / 2)
    ]  # fmt: skip
    assert [r["probabilities"] for r in rows] == [
        None, [0.2, 0.8], None, None, [0.5, 0.25, 0.25], None
    ]  # fmt: skip
    assert rows[2]["request_id"] == "my-id"
    assert rows[2]["attributes"] == [("k", "v")] or rows[2]["attributes"] == {"k": "v"}
    assert rows[2]["latency_s"] == 0.1
    assert [r["error_type"] for r in rows] == [None, None, None, "ValueError", None, None]
    assert [(e["error_type"], e["error_message"]) for e in errors] == [("ValueError", "bad")]
    assert errors[0]["request_id"] == rows[3]["request_id"]
    ids = [r["request_id"] for r in rows]
    assert len(set(ids)) == 6
    assert all(len(i) == 32 for i in ids[:2] + ids[3:])


WIDE_PROBE = """
import sys, tracemalloc, numpy as np, pyarrow as pa
from modeltap.collector.store import decode

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
decode(open(sys.argv[2], "rb").read())  # warm: code paths, pools
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS := current RSS
before = status("VmRSS:")
pool = pa.default_memory_pool()
arrow_before = pool.bytes_allocated()
tracemalloc.start()
b = decode(data)
_, py_peak = tracemalloc.get_traced_memory()
print(status("VmHWM:") - before, py_peak, pool.bytes_allocated() - arrow_before, b.nbytes)
"""


def test_one_wide_prediction_costs_the_collector_a_few_mib(tmp_path):
    """One 20,000-wide vector among 1,000 scalar predictions: the decoded
    batch is about as large as the message (padding every row to the
    widest made it 346 MiB), and scalar rows store no 20,000-wide list."""
    got: list[bytes] = []
    a = modeltap.Agent("m", "1", sink=got.append, metrics_interval=None, batch_size=1001)
    rng = np.random.default_rng(1)
    for i in range(1000):
        a.log(rng.normal(size=8), float(i))
        if i == 500:
            a.log(rng.normal(size=8), np.arange(20_000.0))
    a.close()
    assert len(got) == 1
    data = got[0]
    (tmp_path / "wide.bin").write_bytes(data)
    (tmp_path / "small.bin").write_bytes(encoded_batches(1, 1000, features=8)[0])
    p = subprocess.run(
        [sys.executable, "-c", WIDE_PROBE, str(tmp_path / "wide.bin"), str(tmp_path / "small.bin")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    rss_peak, py_peak, arrow, nbytes = map(int, p.stdout.split())
    mib = 2**20
    print(
        f"\nwide batch {len(data) / 1024:.0f} KiB: decode peak RSS +{rss_peak / mib:.1f} MiB, "
        f"Python peak {py_peak / mib:.1f} MiB, Arrow {arrow / mib:.1f} MiB, "
        f"decoded {nbytes / mib:.1f} MiB"
    )
    assert nbytes < 4 * len(data)
    assert arrow < 4 * mib
    assert py_peak < 4 * mib
    assert rss_peak < 16 * mib
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        assert export(col.addr, data)[0] == OK
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        r = st.sql(
            "SELECT count(*) AS n, count(outputs) AS vectors, max(len(outputs)) AS widest, "
            "sum(prediction) AS s FROM predictions"
        ).to_pylist()[0]
    assert r == {"n": 1001, "vectors": 1, "widest": 20_000, "s": sum(range(1000)) + 0.0}


def test_drift_merges_stored_parts_a_chunk_at_a_time(tmp_path, ref, monkeypatch):
    """Many stored profile parts are merged in chunks (bounded memory) to
    exactly what one merge of all of them gives."""
    import modeltap.analysis.drift as store

    rows = encoded_batches(12, 100, reference=ref, seed=4)
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        for b in rows:
            assert export(col.addr, b)[0] == OK
        up = _core.encode_reference_upload("m", "1", ref.to_bytes())
        assert _call(col.addr, "RegisterReference", up)[0] == OK
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        whole = st.drift("m", "1")
        monkeypatch.setattr(store, "MERGE_CHUNK", 5)
        chunked = st.drift("m", "1")
        blobs = [
            bytes(r[0]) for r in st.con.execute("SELECT profile FROM window_profiles").fetchall()
        ]
    assert len(blobs) >= 12
    assert whole.records == chunked.records == 1200
    assert _core.merge_profiles(blobs) is not None
    for a, b in zip(whole.rows, chunked.rows, strict=True):
        for k in ("psi", "ks", "js", "wasserstein"):
            assert (np.isnan(a[k]) and np.isnan(b[k])) or a[k] == b[k], (a["feature"], k)
