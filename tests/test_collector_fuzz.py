"""gRPC fuzzing of a real collector process: thousands of mutated batches
(bit flips, truncations, field-level edits of real encoded batches) and
references, interleaved with good batches from real agent processes.

The collector must stay SERVING, answer every call promptly with a status
that says what the caller should do (OK, INVALID_ARGUMENT,
FAILED_PRECONDITION; never INTERNAL, UNKNOWN or a hang), acknowledge every
good batch, store exactly what it acknowledged, and keep its memory bounded.

Reproduce or lengthen a run with MODELTAP_FUZZ_SEED, MODELTAP_FUZZ_BATCHES
and MODELTAP_FUZZ_REFERENCES.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pandas as pd
import pytest

import modeltap
from collector_util import (
    FIXED64,
    LEN,
    REF_MAGIC,
    SERVING,
    VARINT,
    Collector,
    pb_build,
    pb_parse,
    rebuild_reference,
)
from modeltap import _core

pytestmark = pytest.mark.timeout(300)

SEED = int(os.environ.get("MODELTAP_FUZZ_SEED", "7317"))
N_BATCHES = int(os.environ.get("MODELTAP_FUZZ_BATCHES", "6000"))
N_REFERENCES = int(os.environ.get("MODELTAP_FUZZ_REFERENCES", "500"))

OK = grpc.StatusCode.OK
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}

# Fields holding a sub-message, per message: RecordBatch, and below it.
SUBMESSAGES: dict[int, dict[int, dict]] = {
    4: {3: {}},  # ModelInfo (params map entries)
    14: {},  # CategoryDictionary
    15: {},  # RowCategory
    18: {},  # labels
    19: {},  # RowVector (prediction overflow)
    22: {},  # RowVector (probability overflow)
    27: {},  # RowError
    28: {2: {}},  # RowAttributes (map entries)
    29: {6: {}},  # SystemSample, GpuSample
    30: {9: {}},  # SpanColumns
    32: {7: {}},  # WindowProfile, ColumnProfile
}
REFERENCE_SUBMESSAGES: dict[int, dict[int, dict]] = {
    4: {5: {}, 6: {}},  # ColumnSpec: NumericSpec, CategoricalSpec
    5: {},  # ColumnProfile
}
VARINTS = [0, 1, 2, 3, 4, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
FIXED = [0, 1, 2**63 - 2, 2**63 - 1, 2**63, 2**64 - 1]
FLOATS = [float("nan"), float("inf"), -float("inf"), -0.0, 1e308, -1e308, 5e-324]


def _interesting_bytes(rng: np.random.Generator, v: bytes) -> bytes:
    """Edits of a length-delimited value that is not a known sub-message:
    packed numbers, ids, strings."""
    op = rng.integers(7)
    if op == 0 or not v:
        return b"" if v else bytes(rng.integers(0, 256, rng.integers(1, 40), dtype=np.uint8))
    if op == 1:
        return v[: rng.integers(0, len(v))]
    if op == 2 and len(v) >= 8:  # one packed double or fixed64 becomes extreme
        i = 8 * rng.integers(0, len(v) // 8)
        word = (
            struct.pack("<d", FLOATS[rng.integers(len(FLOATS))])
            if rng.random() < 0.5
            else struct.pack("<Q", FIXED[rng.integers(len(FIXED))])
        )
        return v[:i] + word + v[i + 8 :]
    if op == 3:  # not UTF-8
        i = rng.integers(0, len(v))
        return v[:i] + b"\xff\xfe" + v[i + 1 :]
    if op == 4:
        return v + v
    if op == 5:  # one varint of a packed run made huge
        i = rng.integers(0, len(v))
        return v[:i] + b"\xff" * 9 + b"\x01" + v[i + 1 :]
    b = bytearray(v)
    b[rng.integers(len(b))] ^= 1 << rng.integers(8)
    return bytes(b)


def mutate_fields(
    rng: np.random.Generator,
    data: bytes,
    subs: dict[int, dict],
    donors: list[bytes],
    depth: int = 0,
) -> bytes:
    """One field-level edit somewhere in a message (recursing into known
    sub-messages)."""
    try:
        fields = pb_parse(data)
    except ValueError:
        return data
    if not fields:
        return data
    i = int(rng.integers(len(fields)))
    num, wt, v = fields[i]
    op = rng.integers(9)
    if op == 0:
        del fields[i]
    elif op == 1:
        fields.insert(i, [num, wt, v])
    elif op == 2 and donors:  # the same field from another message
        donor = donors[rng.integers(len(donors))]
        try:
            same = [f for f in pb_parse(donor) if f[0] == num]
        except ValueError:
            same = []
        if same:
            fields[i] = list(same[rng.integers(len(same))])
    elif op == 3:  # a field of a wire type its number does not have
        fields[i] = [num, [VARINT, FIXED64, LEN][rng.integers(3)], v if wt == LEN else b"\x01"]
        if fields[i][1] != LEN:
            fields[i][2] = int(rng.integers(0, 2**62))
    elif wt == VARINT:
        fields[i][2] = VARINTS[rng.integers(len(VARINTS))]
    elif wt == FIXED64:
        fields[i][2] = FIXED[rng.integers(len(FIXED))]
    elif wt == LEN and num in subs and depth < 2:
        fields[i][2] = mutate_fields(rng, v, subs[num], [], depth + 1)
    elif wt == LEN:
        fields[i][2] = _interesting_bytes(rng, v)
    else:  # an unknown field number
        fields.insert(i, [int(rng.integers(33, 200)), VARINT, int(rng.integers(0, 1000))])
    try:
        return pb_build(fields)
    except (ValueError, TypeError, OverflowError):
        return data


def mutate(rng: np.random.Generator, data: bytes, corpus: list[bytes]) -> bytes:
    """A mutated batch: byte-level or field-level, sometimes stacked."""
    out = data
    for _ in range(1 + int(rng.random() < 0.3) + int(rng.random() < 0.1)):
        op = rng.integers(6)
        if op == 0:  # bit flips
            b = bytearray(out)
            for _ in range(rng.integers(1, 9)):
                if b:
                    b[rng.integers(len(b))] ^= 1 << rng.integers(8)
            out = bytes(b)
        elif op == 1:  # truncation
            out = out[: rng.integers(0, max(1, len(out)))]
        elif op == 2:  # trailing garbage or a repeated slice (duplicate fields)
            if rng.random() < 0.5:
                out = out + bytes(rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8))
            else:
                a = int(rng.integers(0, max(1, len(out))))
                out = out + out[a : a + int(rng.integers(1, 400))]
        else:
            out = mutate_fields(rng, out, SUBMESSAGES, corpus)
    return out


def mutate_reference(rng: np.random.Generator, data: bytes, refs: list[bytes]) -> bytes:
    """A mutated reference file. Half the edits keep the fingerprint in step
    with the columns, so that only a full check finds them."""
    op = rng.integers(4)
    if op == 0:
        b = bytearray(data)
        for _ in range(rng.integers(1, 5)):
            b[rng.integers(len(b))] ^= 1 << rng.integers(8)
        return bytes(b)
    if op == 1:
        return data[: rng.integers(0, len(data))]
    body = data[len(REF_MAGIC) :]
    if op == 2:  # anywhere in the message, fingerprint left as it was
        return REF_MAGIC + mutate_fields(rng, body, REFERENCE_SUBMESSAGES, [])
    spec_subs = REFERENCE_SUBMESSAGES[4]
    target = int(rng.integers(0, 8))
    seen = [0]

    def edit(col):
        seen[0] += 1
        if seen[0] - 1 != target:
            return None
        return pb_parse(mutate_fields(rng, pb_build(col), spec_subs, []))

    try:
        return rebuild_reference(data, edit)
    except (ValueError, AssertionError):
        return data


AGENT = """
import json, sys, time, numpy as np, modeltap
addr, k = sys.argv[1], int(sys.argv[2])
a = modeltap.Agent("real", "1", collector=addr, metrics_interval=0.5, batch_size=500)
rng = np.random.default_rng(k)
for i in range(120):
    a.log_batch(rng.normal(size=(250, 5)), np.full(250, k))
    time.sleep(0.05)
ok = a.flush(60)
a.close()
s = a.stats()
s["flushed"], s["agent_id"] = ok, a.agent_id
print(json.dumps(s))
"""


def _corpus(ref: modeltap.Reference) -> list[bytes]:
    """Real batches covering every column: categories (with overflow
    values), labels, int and vector predictions of several widths,
    probabilities, errors, attributes, caller ids, system samples,
    window profiles."""
    out: list[bytes] = []
    rng = np.random.default_rng(SEED)
    a = modeltap.Agent(
        "m",
        "1",
        sink=out.append,
        reference=ref,
        metrics_interval=0.01,
        batch_size=40,
        features=["a", "b", "c", "shop"],
        categorical=["shop"],
    )
    for i in range(200):
        if i % 40 == 0:
            time.sleep(0.03)  # a system sample for each batch
        x = [*rng.normal(size=3).tolist(), ["n", "s", "e", f"new{i}"][i % 4]]
        kind = i % 5
        if kind == 0:
            a.log(x, float(i), [0.3, 0.7], latency_s=0.01)
        elif kind == 1:
            a.log(x, ["cat", "dog"][i % 2], request_id=f"req-{i}")
        elif kind == 2:
            a.log(x, np.arange(float(i % 7 + 1)), attributes={"k": str(i)})
        elif kind == 3:
            a.log(x, i % 3, error=ValueError(f"e{i}"))
        else:
            a.log(x, None)
    a.close()
    plain: list[bytes] = []
    b = modeltap.Agent("p", "2", sink=plain.append, metrics_interval=None, batch_size=300)
    b.log_batch(rng.normal(size=(900, 6)), rng.integers(0, 3, 900))
    b.close()
    return out + plain


def test_fuzzed_batches_and_references_never_hurt_the_collector(tmp_path):
    rng = np.random.default_rng(SEED)
    df = pd.DataFrame(np.random.default_rng(1).normal(size=(3000, 3)), columns=list("abc"))
    df["shop"] = np.random.default_rng(2).choice(["n", "s", "e"], 3000)
    ref = modeltap.Reference.from_data(df)
    corpus = _corpus(ref)
    assert len(corpus) >= 6
    refs = [ref.to_bytes(), modeltap.Reference.from_data(df[["a", "b"]]).to_bytes()]

    col = Collector(tmp_path / "s.duckdb").start()
    stop = threading.Event()
    health: list[int] = []
    rss: list[int] = []

    def watch() -> None:
        while not stop.is_set():
            try:
                health.append(col.health())
            except grpc.RpcError as e:
                health.append(-int(e.code().value[0]))
            rss.append(col.rss())
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    agents = [
        subprocess.Popen(
            [sys.executable, "-c", AGENT, col.addr, str(k)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    channel = grpc.insecure_channel(col.addr)
    export = channel.unary_unary("/modeltap.v1.Collector/Export")
    register = channel.unary_unary("/modeltap.v1.Collector/RegisterReference")
    drift = channel.unary_unary("/modeltap.v1.Collector/Drift")

    def call(method, data: bytes) -> tuple[grpc.StatusCode, bytes | str]:
        try:
            return OK, method(data, timeout=20)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""

    t0 = time.monotonic()
    try:
        assert call(register, _core.encode_reference_upload("m", "1", refs[0]))[0] == OK
        for b in corpus:  # the corpus itself is good
            code, resp = call(export, b)
            assert code == OK, resp
        batches = [mutate(rng, corpus[rng.integers(len(corpus))], corpus) for _ in range(N_BATCHES)]
        references = [
            mutate_reference(rng, refs[rng.integers(len(refs))], refs) for _ in range(N_REFERENCES)
        ]
        with ThreadPoolExecutor(8) as pool:
            batch_results = list(pool.map(lambda b: call(export, b), batches))

            def reference_round(i: int) -> list[tuple[str, grpc.StatusCode, object]]:
                up = _core.encode_reference_upload("fz", f"r{i}", references[i])
                code, resp = call(register, up)
                out = [("register", code, resp)]
                if code == OK:  # then drift against it, with no profiles
                    req = _core.encode_drift_request("fz", f"r{i}", 0, 0)
                    out.append(("drift", *call(drift, req)))
                if i % 25 == 0:  # and drift over the fuzzed profiles stored so far
                    out.append(("drift m", *call(drift, _core.encode_drift_request("m", "", 0, 0))))
                return out

            ref_results = [r for rs in pool.map(reference_round, range(N_REFERENCES)) for r in rs]
        stats = []
        for p in agents:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            stats.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        elapsed = time.monotonic() - t0
        stop.set()
        watcher.join()
        channel.close()
        output = col.stop()

    codes = Counter(code.name for code, _ in batch_results)
    ref_codes = Counter(f"{what} {code.name}" for what, code, _ in ref_results)
    print(
        f"\nfuzz seed {SEED}: {len(batches)} batches {dict(codes)}; {len(references)} "
        f"references {dict(ref_codes)}; {elapsed:.1f} s; collector RSS peak "
        f"{max(rss) / 2**20:.0f} MiB\n{output.strip().splitlines()[-1]}"
    )
    bad = [
        (i, code, resp)
        for i, (code, resp) in enumerate(batch_results)
        if code != OK and code not in REFUSED
    ]
    assert not bad, f"seed {SEED}: {bad[:5]}"
    bad_refs = [
        r
        for r in ref_results
        if r[1] not in (OK, *REFUSED) and not (r[0] != "register" and r[1].name == "NOT_FOUND")
    ]
    assert not bad_refs, f"seed {SEED}: {bad_refs[:5]}"
    assert codes["INVALID_ARGUMENT"] > N_BATCHES // 4  # the mutations did reach the checks
    assert set(health) == {SERVING}, Counter(health)
    assert max(rss) < 600 * 2**20

    # every acknowledged batch stored once, nothing else
    acked: dict[tuple[str, int], int] = {}
    for data, (code, resp) in zip(batches, batch_results, strict=True):
        if code != OK:
            continue
        _, duplicate, n = _core.decode_export_response(resp)
        d = _core.decode_batch(data, columns=True)
        key = (d["agent_id"], int(d["batch_seq"]))
        if not duplicate:
            assert key not in acked, key  # at most one first acknowledgement
            acked[key] = n
    for b in corpus:
        d = _core.decode_batch(b, columns=True)
        acked[(d["agent_id"], int(d["batch_seq"]))] = int(d["n_records"])
    for s in stats:
        assert s["flushed"], s
        assert s["shipped"] == s["logged"] == 30_000, s
    with modeltap.Store(tmp_path / "s.duckdb") as st:
        rows = st.sql(
            "SELECT b.agent_id, b.batch_seq, b.n_records, "
            "(SELECT count(*) FROM predictions p WHERE p.agent_id = b.agent_id "
            "AND p.batch_seq = b.batch_seq) AS n FROM batches b"
        ).to_pylist()
        real = st.sql(
            "SELECT agent_id, count(*) AS n FROM predictions WHERE model = 'real' GROUP BY 1"
        ).to_pylist()
    stored = {(r["agent_id"], r["batch_seq"]): r["n_records"] for r in rows}
    assert all(r["n"] == r["n_records"] for r in rows)  # each batch's records, whole
    real_ids = {s["agent_id"] for s in stats}
    assert {k: v for k, v in stored.items() if k[0] not in real_ids} == acked
    assert {r["agent_id"]: r["n"] for r in real} == {i: 30_000 for i in real_ids}
