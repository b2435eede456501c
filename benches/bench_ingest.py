"""End-to-end ingest: agent processes → collector → DuckDB, against the
naive design a user might write (one Python protobuf message per record,
sent over the same grpcio channel kind to a Python server that stores the
records in DuckDB in bulk), in the same run, on this machine.

    python benches/bench_ingest.py               # 4 agents x 250,000 records
    python benches/bench_ingest.py --quick       # 4 x 50,000

Reports records/s (first record logged → last batch acknowledged, i.e.
committed), the collector's CPU seconds per million records and its peak RSS
(sampled every 20 ms). Needs
grpcio-tools (to compile benches/naive.proto for the baseline).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
FEATURES = 20

AGENT = r"""
import sys, time, json
import numpy as np
import modeltap
addr, k, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
X = np.random.default_rng(k).normal(size=(n, 20))
y = np.zeros(n)
P = np.full((n, 3), 1 / 3)
agent = modeltap.Agent("bench", "1.0", collector=addr, metrics_interval=1.0, on_full="block")
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
c0 = time.process_time()
for s in range(0, n, chunk):
    agent.log_batch(X[s:s + chunk], y[s:s + chunk], P[s:s + chunk])
ok = agent.flush(300)
t1 = time.time()
cpu = time.process_time() - c0
agent.close()
print(json.dumps({"t0": t0, "t1": t1, "ok": ok, "cpu": cpu, **agent.stats()}), flush=True)
"""

NAIVE_CLIENT = r"""
import sys, time, json, uuid
import numpy as np
import grpc
sys.path.insert(0, sys.argv[5])
import naive_pb2
addr, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
X = np.random.default_rng(k).normal(size=(n, 20))
ch = grpc.insecure_channel(addr)
log = ch.unary_unary("/naive.Naive/Log",
    request_serializer=naive_pb2.Record.SerializeToString,
    response_deserializer=naive_pb2.Ack.FromString)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
c0 = time.process_time()
for i in range(n):
    r = naive_pb2.Record(model="bench", version="1.0", request_id=uuid.uuid4().hex,
        ts_unix_nano=time.time_ns(), features=X[i].tolist(), prediction=0.0,
        probabilities=[1/3, 1/3, 1/3], latency_s=0.001)
    log(r, timeout=30)
t1 = time.time()
cpu = time.process_time() - c0
print(json.dumps({"t0": t0, "t1": t1, "ok": True, "cpu": cpu, "shipped": n}), flush=True)
"""

NAIVE_SERVER = r"""
import sys, time, signal, threading
from concurrent import futures
import grpc, duckdb, pyarrow as pa
sys.path.insert(0, sys.argv[3])
import naive_pb2
addr, store = sys.argv[1], sys.argv[2]
con = duckdb.connect(store)
con.execute("CREATE TABLE IF NOT EXISTS predictions (ts BIGINT, model VARCHAR, "
            "version VARCHAR, request_id VARCHAR, features DOUBLE[], prediction DOUBLE, "
            "probabilities DOUBLE[], latency_s DOUBLE)")
lock = threading.Lock()
rows = []

def flush():
    global rows
    if not rows:
        return
    t = pa.table({k: [r[i] for r in rows] for i, k in enumerate(
        ["ts", "model", "version", "request_id", "features", "prediction",
         "probabilities", "latency_s"])})
    con.register("b", t)
    con.execute("INSERT INTO predictions SELECT * FROM b")
    con.unregister("b")
    rows = []

def log(req, ctx):
    with lock:
        rows.append((req.ts_unix_nano, req.model, req.version, req.request_id,
                     list(req.features), req.prediction, list(req.probabilities),
                     req.latency_s))
        if len(rows) >= 1000:
            flush()   # acknowledged once its group is committed
    return naive_pb2.Ack(ok=True)

server = grpc.server(futures.ThreadPoolExecutor(8))
handler = grpc.method_handlers_generic_handler("naive.Naive", {
    "Log": grpc.unary_unary_rpc_method_handler(
        log, request_deserializer=naive_pb2.Record.FromString,
        response_serializer=naive_pb2.Ack.SerializeToString)})
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port(addr)
server.start()
print(f"listening on {port}", flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
done.wait()
server.stop(5).wait()
with lock:
    flush()
con.close()
"""


# Where the collector's time goes, stage by stage, in one process: the same
# records (encoded by a real agent into a sink) decoded natively into Arrow
# tables, then stored by the collector's writer (grouping, dedup, commit,
# checkpoint at close), then the same prediction tables appended to a bare
# DuckDB table by plain INSERTs in transactions of the writer's group size:
# what the engine alone costs on this machine.
STAGES = r"""
import json, os, sys, tempfile, time
import numpy as np, duckdb
import modeltap
from modeltap.collector.server import DEFAULT_MEMORY_LIMIT
from modeltap.collector.store import StoreWriter, decode

n, chunk = int(sys.argv[1]), int(sys.argv[2])
got = []
a = modeltap.Agent("bench", "1.0", sink=got.append, metrics_interval=None, on_full="block")
X = np.random.default_rng(0).normal(size=(n, 20))
y, P = np.zeros(n), np.full((n, 3), 1 / 3)
for s in range(0, n, chunk):
    a.log_batch(X[s:s + chunk], y[s:s + chunk], P[s:s + chunk])
assert a.flush(300)
a.close()
out = {"records": n, "wire_bytes_per_record": sum(map(len, got)) / n}
c0 = time.process_time()
decoded = [decode(b) for b in got]
out["decode_cpu_s_per_million"] = (time.process_time() - c0) / n * 1e6
tmp = tempfile.mkdtemp()
w = StoreWriter(os.path.join(tmp, "w.duckdb"), memory_limit=DEFAULT_MEMORY_LIMIT)
w.start()
t0, c0 = time.time(), time.process_time()
inflight = []
for d in decoded:  # a window of batches in flight, as Exports are
    inflight.append(w.submit(d))
    if len(inflight) >= 16:
        inflight.pop(0).result()
for f in inflight:
    f.result()
w.stop()
out["writer_cpu_s_per_million"] = (time.process_time() - c0) / n * 1e6
out["writer_records_per_s"] = n / (time.time() - t0)
tables = [d.predictions for d in decoded]
con = duckdb.connect(os.path.join(tmp, "bare.duckdb"))
con.execute(f"SET memory_limit = '{DEFAULT_MEMORY_LIMIT}'")
con.register("first", tables[0])
con.execute("CREATE TABLE predictions AS SELECT * FROM first LIMIT 0")
con.unregister("first")
group = max(1, w.group_records // chunk)
t0, c0 = time.time(), time.process_time()
for i in range(0, len(tables), group):
    con.execute("BEGIN TRANSACTION")
    for t in tables[i:i + group]:
        con.register("t", t)
        con.execute("INSERT INTO predictions SELECT * FROM t")
        con.unregister("t")
    con.execute("COMMIT")
con.execute("CHECKPOINT")
con.close()
out["duckdb_cpu_s_per_million"] = (time.process_time() - c0) / n * 1e6
out["duckdb_records_per_s"] = n / (time.time() - t0)
print(json.dumps(out))
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(server_cmd: list[str], client_cmd, agents: int, n: int) -> dict[str, float]:
    server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    assert "listening" in line, line
    sp = psutil.Process(server.pid)
    clients = [
        subprocess.Popen(client_cmd(k), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for k in range(agents)
    ]
    for c in clients:
        assert c.stdout is not None
        assert c.stdout.readline().strip() == "ready"
    peak = [sp.memory_info().rss]
    sampling = threading.Event()

    def sample_rss() -> None:
        while not sampling.wait(0.02):
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], sp.memory_info().rss)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    cpu0 = sum(sp.cpu_times()[:2])
    for c in clients:
        assert c.stdin is not None
        c.stdin.write("go\n")
        c.stdin.flush()
    results = []
    for c in clients:
        out, _ = c.communicate(timeout=1800)
        results.append(json.loads(out.strip().splitlines()[-1]))
    cpu1 = sum(sp.cpu_times()[:2])
    sampling.set()
    sampler.join()
    server.terminate()
    # Total CPU at exit, so work a store defers (its final checkpoint) counts.
    _, status, usage = os.wait4(server.pid, 0)
    server.returncode = os.waitstatus_to_exitcode(status)
    cpu_exit = usage.ru_utime + usage.ru_stime
    t0 = min(r["t0"] for r in results)
    t1 = max(r["t1"] for r in results)
    total = sum(r["shipped"] for r in results)
    assert total == agents * n, results
    return {
        "records": total,
        "seconds": t1 - t0,
        "records_per_s": total / (t1 - t0),
        "collector_cpu_s_per_million": (cpu1 - cpu0) / total * 1e6,
        "collector_cpu_incl_shutdown_s_per_million": (cpu_exit - cpu0) / total * 1e6,
        "agents_cpu_s_per_million": sum(r["cpu"] for r in results) / total * 1e6,
        "collector_peak_rss_mib": peak[0] / 2**20,
    }


def stages(n: int, rows: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", STAGES, str(n), str(rows)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--rows", type=int, default=10_000, help="rows per log_batch call")
    ap.add_argument("--json")
    args = ap.parse_args()
    n = 50_000 if args.quick else 250_000
    naive_n = 3_000 if args.quick else 10_000
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        from grpc_tools import protoc

        rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={tmp}", str(HERE / "naive.proto")])
        assert rc == 0, "protoc failed"
        port = free_port()
        mt = run(
            [
                py,
                "-m",
                "modeltap",
                "collector",
                "--listen",
                f"127.0.0.1:{port}",
                "--store",
                os.path.join(tmp, "mt.duckdb"),
            ],
            lambda k: [py, "-c", AGENT, f"127.0.0.1:{port}", str(k), str(n), str(args.rows)],
            args.agents,
            n,
        )
        port = free_port()
        nv = run(
            [py, "-c", NAIVE_SERVER, f"127.0.0.1:{port}", os.path.join(tmp, "naive.duckdb"), tmp],
            lambda k: [py, "-c", NAIVE_CLIENT, f"127.0.0.1:{port}", str(k), str(naive_n), "0", tmp],
            args.agents,
            naive_n,
        )
    import platform

    import duckdb
    import grpc

    import modeltap

    print(
        f"{args.agents} agent processes, {args.rows:,}-row log_batch calls, 20 features + "
        f"3 probabilities per record; modeltap {modeltap.__version__}, Python "
        f"{sys.version.split()[0]}, duckdb {duckdb.__version__}, grpcio {grpc.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; collector with default settings"
    )
    cols = [
        ("records", "records", "{:,}"),
        ("records/s", "records_per_s", "{:,.0f}"),
        ("collector CPU s/M", "collector_cpu_s_per_million", "{:,.1f}"),
        ("… incl. shutdown", "collector_cpu_incl_shutdown_s_per_million", "{:,.1f}"),
        ("agents CPU s/M", "agents_cpu_s_per_million", "{:,.1f}"),
        ("collector peak RSS MiB", "collector_peak_rss_mib", "{:,.0f}"),
    ]
    print("| design | " + " | ".join(c[0] for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, r in (
        ("modeltap (columnar batches, native decode)", mt),
        ("naive (one protobuf message per record)", nv),
    ):
        print(f"| {name} | " + " | ".join(fmt.format(r[key]) for _, key, fmt in cols) + " |")
    key = "collector_cpu_incl_shutdown_s_per_million"
    print(
        f"\nthroughput ratio: {mt['records_per_s'] / nv['records_per_s']:,.0f}x; "
        f"collector CPU per record ratio (incl. shutdown): {nv[key] / mt[key]:,.0f}x"
    )
    st = stages(n * args.agents, args.rows)
    print(
        f"\nWhere the collector's time goes ({st['records']:,} of the same records, "
        f"{st['wire_bytes_per_record']:.0f} wire bytes each, one process, no network):\n"
    )
    print("| stage | CPU s/M | records/s |")
    print("|---|---:|---:|")
    print(f"| native decode into Arrow tables | {st['decode_cpu_s_per_million']:.2f} | |")
    print(
        f"| the collector's store writer (group, dedup, commit, checkpoint) "
        f"| {st['writer_cpu_s_per_million']:.2f} | {st['writer_records_per_s']:,.0f} |"
    )
    print(
        f"| bare DuckDB: INSERT of the same prediction tables "
        f"| {st['duckdb_cpu_s_per_million']:.2f} | {st['duckdb_records_per_s']:,.0f} |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"modeltap": mt, "naive": nv, "stages": st}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
