"""Reading a running collector: what a heavy read and a Prometheus scrape
every second cost ingestion, and how long a report takes.

    python benches/bench_live.py            # 4 agents x 250,000 records a phase; 1M-record report
    python benches/bench_live.py --quick    # 4 x 25,000; 200,000-record report

Ingest: one collector process (``--http`` on), four agent processes
calling ``log_batch`` flat out, three phases on the same store: alone,
then with a reader process streaming ``SELECT * FROM predictions`` (the
whole table, over and over, through the Query RPC) and a scraper fetching
``/metrics`` every second, then alone again. Records/s is first record
logged to last batch acknowledged (committed); the ratio compares the
loaded phase with the mean of the two phases around it (the store grows
between them).

Report: a store of 1M records whose timestamps and profile windows are
spread over 24 hours (logged in 3 ms windows, then moved in time with SQL
onto the minutes of a day), with a reference registered; the time
to build the report through a running collector (``Client.report``) and
from the stopped store (``Store.report``), and to render its HTML.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

AGENT = r"""
import sys, time, json
import numpy as np
import modeltap
addr, k, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
window, pause = float(sys.argv[5]), float(sys.argv[6])
ref = modeltap.Reference.load(sys.argv[7]) if len(sys.argv) > 7 else None
rng = np.random.default_rng(k)
X = rng.normal(size=(n, 20))
y = rng.integers(0, 3, size=n).astype(float)
P = np.full((n, 3), 1 / 3)
agent = modeltap.Agent("bench", "1.0", collector=addr, metrics_interval=0.5, on_full="block",
                       reference=ref, window_s=window)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
for s in range(0, n, chunk):
    agent.log_batch(X[s:s + chunk], y[s:s + chunk], P[s:s + chunk], latency_s=0.002)
    if pause:
        time.sleep(pause)
ok = agent.flush(600)
t1 = time.time()
agent.close()
print(json.dumps({"t0": t0, "t1": t1, "ok": ok, **agent.stats()}), flush=True)
"""

READER = r"""
import sys, time, json, threading, urllib.request
import modeltap
addr, http, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
import os
scrapes, scrape_s, rows, reads = 0, 0.0, 0, 0
def scrape():
    global scrapes, scrape_s
    while not os.path.exists(stop_file):
        t = time.perf_counter()
        with urllib.request.urlopen(http + "/metrics", timeout=30) as r:
            r.read()
        scrape_s += time.perf_counter() - t
        scrapes += 1
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))
th = threading.Thread(target=scrape)
th.start()
t0 = time.perf_counter()
with modeltap.Client(addr) as c:
    while not os.path.exists(stop_file):
        for b in c.stream("SELECT * FROM predictions"):
            rows += b.num_rows
        reads += 1
th.join()
print(json.dumps({"rows": rows, "reads": reads, "seconds": time.perf_counter() - t0,
                  "scrapes": scrapes, "scrape_s": scrape_s}), flush=True)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def collector(store: str, http: bool = True) -> tuple[subprocess.Popen[str], str, str]:
    port, hport = free_port(), free_port()
    cmd = [sys.executable, "-m", "modeltap", "collector", "--listen", f"127.0.0.1:{port}",
           "--store", store]  # fmt: skip
    if http:
        cmd += ["--http", f"127.0.0.1:{hport}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    for _ in range(20):
        line = p.stdout.readline()
        if "listening on" in line:
            break
    else:
        raise RuntimeError("the collector did not start")
    return p, f"127.0.0.1:{port}", f"http://127.0.0.1:{hport}"


def stop(p: subprocess.Popen[str]) -> None:
    p.terminate()
    p.communicate(timeout=120)


def agents(
    addr: str,
    k0: int,
    count: int,
    n: int,
    window: float,
    ref: str | None = None,
    chunk: int = 10_000,
    pause: float = 0.0,
) -> dict:
    cmd = [sys.executable, "-c", AGENT, addr]
    procs = [
        subprocess.Popen(
            [*cmd, str(k0 + k), str(n), str(chunk), str(window), str(pause)]
            + ([ref] if ref else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(count)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1]) for p in procs]
    total = sum(r["shipped"] for r in results)
    assert total == count * n, results
    assert all(r["ok"] for r in results), results
    t0 = min(r["t0"] for r in results)
    t1 = max(r["t1"] for r in results)
    return {"records": total, "seconds": t1 - t0, "records_per_s": total / (t1 - t0)}


def ingest(n: int, tmp: str) -> dict:
    store = str(Path(tmp) / "ingest.duckdb")
    col, addr, http = collector(store)
    try:
        agents(addr, 100, 2, 20_000, 60.0)  # warm the store: reads have rows from the start
        a1 = agents(addr, 0, 4, n, 60.0)
        stop_file = str(Path(tmp) / "stop")
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, addr, http, stop_file], stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        time.sleep(1.0)
        loaded = agents(addr, 10, 4, n, 60.0)
        Path(stop_file).touch()
        read = json.loads(reader.communicate(timeout=600)[0].strip().splitlines()[-1])
        a2 = agents(addr, 20, 4, n, 60.0)
    finally:
        stop(col)
    base = (a1["records_per_s"] + a2["records_per_s"]) / 2
    return {"alone_1": a1, "loaded": loaded, "alone_2": a2, "read": read,
            "ratio": loaded["records_per_s"] / base}  # fmt: skip


def report_store(records: int, tmp: str) -> tuple[str, int, float]:
    """A store of ``records`` records over 24 h of one-minute windows."""
    import duckdb
    import numpy as np

    import modeltap

    ref_path = str(Path(tmp) / "ref.mtref")
    rng = np.random.default_rng(7)
    modeltap.Reference.from_data(
        rng.normal(size=(50_000, 20)), predictions=rng.integers(0, 3, size=50_000).astype(float)
    ).save(ref_path)
    store = str(Path(tmp) / "report.duckdb")
    col, addr, _ = collector(store, http=False)
    t0 = time.perf_counter()
    try:
        with modeltap.Client(addr) as c:
            c.register_reference(modeltap.Reference.load(ref_path), "bench", "1.0")
        # Calls of 500 rows 3 ms apart in 3 ms windows: thousands of
        # windows, moved onto the 1,440 minutes of a day below.
        agents(addr, 50, 4, records // 4, 0.003, ref_path, chunk=500, pause=0.003)
    finally:
        stop(col)
    # Spread over 24 h: each time t in the logged span [a, b] goes to
    # end - 24h + (t - a) / (b - a) * 24h; windows to whole minutes.
    con = duckdb.connect(store)
    a, b = con.execute("SELECT epoch_ns(min(ts)), epoch_ns(max(ts)) FROM predictions").fetchone()
    end = time.time_ns()
    scale = 86_400e9 / max(b - a, 1)

    def moved(col: str) -> str:
        return (f"make_timestamptz(CAST(({end - 86_400 * 10**9} + (epoch_ns({col}) - {a}) * "
                f"{scale}) // 1000 AS BIGINT))")  # fmt: skip

    for table, column in (("predictions", "ts"), ("system_metrics", "ts"), ("errors", "ts"),
                          ("spans", "start_ts")):  # fmt: skip
        con.execute(f"UPDATE {table} SET {column} = {moved(column)}")
    con.execute(
        f"UPDATE window_profiles SET window_start = "
        f"to_timestamp(floor(epoch({moved('window_start')}) / 60) * 60), window_s = 60"
    )
    windows = con.execute("SELECT count(DISTINCT window_start) FROM window_profiles").fetchone()[0]
    con.execute("CHECKPOINT")
    con.close()
    return store, windows, time.perf_counter() - t0


def report(records: int, tmp: str) -> dict:
    import modeltap

    store, windows, build_s = report_store(records, tmp)
    col, addr, _ = collector(store, http=False)
    try:
        with modeltap.Client(addr) as c:
            t0 = time.perf_counter()
            live = c.report("bench", since="25h")
            live_s = time.perf_counter() - t0
    finally:
        stop(col)
    with modeltap.Store(store) as s:
        t0 = time.perf_counter()
        rep = s.report("bench", since="25h")
        store_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    html = rep.to_html()
    html_s = time.perf_counter() - t0
    assert live.summary["records"] == rep.summary["records"] == records
    return {
        "records": records,
        "windows": windows,
        "profiles": rep.data["drift"]["profiles_merged"],
        "buckets": len(rep.data["latency"]),
        "client_s": live_s,
        "store_s": store_s,
        "html_s": html_s,
        "html_mb": len(html.encode()) / 2**20,
        "setup_s": build_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    from envinfo import environment

    n = 25_000 if args.quick else 250_000
    records = 200_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        ing = ingest(n, tmp)
        rep = report(records, tmp)
    print(environment())
    print()
    print("| ingest (4 agents, log_batch of 10,000 rows) | records | seconds | records/s |")
    print("|---|---:|---:|---:|")
    for key, label in (("alone_1", "alone"), ("loaded", "with a heavy read + 1 s scrape"),
                       ("alone_2", "alone again")):  # fmt: skip
        r = ing[key]
        print(f"| {label} | {r['records']:,} | {r['seconds']:.1f} | {r['records_per_s']:,.0f} |")
    rd = ing["read"]
    print(
        f"\nLoaded / alone: **{ing['ratio']:.2f}x**. The reader streamed {rd['rows']:,} rows "
        f"({rd['reads']} full-table reads, {rd['rows'] / rd['seconds']:,.0f} rows/s) while the "
        f"scraper fetched /metrics {rd['scrapes']} times "
        f"(mean {1e3 * rd['scrape_s'] / max(rd['scrapes'], 1):.0f} ms)."
    )
    print()
    print("| report of 1 model | records | windows | profiles merged | build | HTML render |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| through a running collector (`Client.report`) | {rep['records']:,} | "
          f"{rep['windows']:,} | {rep['profiles']:,} | {rep['client_s']:.2f} s | "
          f"{rep['html_s']:.2f} s |")  # fmt: skip
    print(f"| from the stopped store (`Store.report`) | {rep['records']:,} | "
          f"{rep['windows']:,} | {rep['profiles']:,} | {rep['store_s']:.2f} s | "
          f"{rep['html_s']:.2f} s |")  # fmt: skip
    print(f"\nThe HTML: {rep['html_mb']:.1f} MiB (plotly.js inlined), "
          f"{rep['buckets']} time buckets.")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"ingest": ing, "report": rep}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
