"""The collector under hostile input and overload: no message can wedge it,
kill its writer, fail its neighbours or grow it without bound."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

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
