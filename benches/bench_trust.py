"""The trust figures of the README, in one run: what happens to every record
under faults, what the fuzzers executed and found, and what a wide record
costs the agent's memory.

    python benches/bench_trust.py                 # everything (a few minutes)
    python benches/bench_trust.py --only memory   # one part: memory, faults, fuzz, attacks
    python benches/bench_trust.py --fuzz-seconds 60

Prints Markdown tables (the README's form) with the environment beside them.
Needs a release build of modeltap (``pip install .``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from envinfo import environment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- memory -------------------------------------------------------------------

# Each case runs in a fresh process: create an agent whose exporter is stuck
# (the worst case: ring, side budget and pending batches all fill up), log
# records of the given shape, and report RSS growth. A second figure logs
# the same records into an agent whose sink keeps up.
MEMORY_CHILD = textwrap.dedent(
    """
    import gc, json, sys, threading, time
    import numpy as np, psutil
    import modeltap

    case, stuck, n = sys.argv[1], sys.argv[2] == "stuck", int(sys.argv[3])
    proc = psutil.Process()
    release = threading.Event()

    def sink(data):
        if stuck:
            release.wait(600)

    shapes = {
        "20 features": (20, None, 1),
        "20 features + 1,000-class probabilities": (20, 1000, 1),
        "1,000 features": (1000, None, 1),
        "20 features, first prediction 30,000 wide": (20, None, 30000),
    }
    nf, k, first_w = shapes[case]
    rng = np.random.default_rng(0)
    x = rng.normal(size=nf)
    probs = rng.dirichlet(np.ones(k)) if k else None
    gc.collect()
    before = proc.memory_info().rss
    agent = modeltap.Agent("bench", sink=sink, metrics_interval=None)
    if first_w > 1:
        agent.log(x, np.arange(first_w, dtype=np.float64), probs)
    for i in range(n):
        agent.log(x, i % 3, probs)
    if not stuck:
        agent.flush(120)
    gc.collect()
    after = proc.memory_info().rss
    s = agent.stats()
    out = {
        "case": case,
        "stuck": stuck,
        "records": n,
        "rss_growth_mib": (after - before) / 2**20,
        "ring_slots": agent.buffer_size,
        "shipped": s["shipped"],
        "dropped_full": s["dropped_full"],
        "pending": s["pending"],
    }
    release.set()
    agent.close(timeout_s=30)
    print(json.dumps(out))
    """
)

MEMORY_CASES = [
    "20 features",
    "20 features + 1,000-class probabilities",
    "1,000 features",
    "20 features, first prediction 30,000 wide",
]


def memory(records: int) -> list[dict[str, object]]:
    rows = []
    for case in MEMORY_CASES:
        for mode in ("stuck", "flowing"):
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, case, mode, str(records)],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def memory_table(rows: list[dict[str, object]]) -> str:
    base = {r["stuck"]: r["rss_growth_mib"] for r in rows if r["case"] == "20 features"}
    lines = [
        "| records of | ring slots | RSS growth, exporter stuck (MiB) | vs 20 features "
        "| dropped (counted) | RSS growth, exporter keeping up (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in MEMORY_CASES:
        stuck = next(r for r in rows if r["case"] == case and r["stuck"])
        flowing = next(r for r in rows if r["case"] == case and not r["stuck"])
        ratio = float(stuck["rss_growth_mib"]) / max(float(base[True]), 1e-9)
        lines.append(
            f"| {case} | {stuck['ring_slots']:,} | {float(stuck['rss_growth_mib']):.1f} "
            f"| {ratio:.1f}× | {int(stuck['dropped_full']):,} "  # noqa: RUF001
            f"| {float(flowing['rss_growth_mib']):.1f} |"
        )
    return "\n".join(lines)


# -- attacks --------------------------------------------------------------------

# The "now" column of two rows of the README's table of hostile clients, in
# fresh processes: a traced service holding heavy spans of unsampled
# traces, and a flood of huge Export messages against a collector.
HELD_CHILD = textwrap.dedent(
    """
    import contextvars, gc, json
    import psutil
    import modeltap

    proc = psutil.Process()
    agent = modeltap.Agent("hold", "1", sink=lambda b: None, metrics_interval=None,
                           trace_sample_rate=0.0, buffer_bytes=16 << 20)
    value = "v" * 16_384

    def stages():
        for _ in range(256):
            with agent.span("step") as s:
                for k in range(64):
                    s.set_attribute(f"a{k}", value)

    gc.collect()
    before = proc.memory_info().rss
    roots = [(agent.span(f"request-{i}"), contextvars.Context()) for i in range(4)]
    for r, ctx in roots:
        ctx.run(r.__enter__)
        ctx.run(stages)
    gc.collect()
    grown = proc.memory_info().rss - before
    s = agent.stats()
    for r, ctx in roots:
        ctx.run(r.__exit__, None, None, None)
    agent.close(timeout_s=10)
    print(json.dumps({"rss_growth_mib": grown / 2**20, "held_span_bytes": s["held_span_bytes"],
                      "spans_released": s["spans_released"]}))
    """
)

FLOOD_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, socket, subprocess, sys, tempfile, threading, time
    import grpc, psutil

    calls, mib = int(sys.argv[1]), int(sys.argv[2])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = os.path.join(tempfile.mkdtemp(), "s.duckdb")
    col = subprocess.Popen([sys.executable, "-m", "modeltap", "collector", "--listen",
                            f"127.0.0.1:{port}", "--store", store],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while "listening on" not in col.stdout.readline():
        pass
    proc = psutil.Process(col.pid)
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample():
        global peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    garbage = os.urandom(mib << 20)
    codes = {}

    async def flood():
        opts = [("grpc.max_send_message_length", 1 << 30)]
        chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) for _ in range(4)]

        async def one(i):
            try:
                export = chans[i % 4].unary_unary("/modeltap.v1.Collector/Export")
                await export(garbage, timeout=120)
                name = "OK"
            except grpc.aio.AioRpcError as e:
                name = e.code().name
            codes[name] = codes.get(name, 0) + 1

        await asyncio.gather(*(one(i) for i in range(calls)))

    asyncio.run(flood())
    done.set()
    col.terminate()
    col.communicate(timeout=60)
    print(json.dumps({"calls": calls, "mib": mib, "codes": codes,
                      "rss_growth_mib": (peak - base) / 2**20}))
    """
)


def attacks() -> dict[str, dict[str, object]]:
    out = {}
    for name, args in (("held", [HELD_CHILD]), ("flood", [FLOOD_CHILD, "64", "32"])):
        run = subprocess.run(
            [sys.executable, "-c", *args], capture_output=True, text=True, timeout=600, check=True
        )
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def attacks_table(rows: dict[str, dict[str, object]]) -> str:
    held, flood = rows["held"], rows["flood"]
    codes = ", ".join(f"{k} {v}" for k, v in sorted(dict(flood["codes"]).items()))  # type: ignore[call-overload]
    return "\n".join(
        [
            "| hostile client | what it tried | now |",
            "|---|---|---|",
            f"| a traced service | `trace_sample_rate=0`, `buffer_bytes=16 MiB`, 4 open "
            f"requests each ending 256 stages of 64 attributes of 16 KiB | RSS "
            f"{float(held['rss_growth_mib']):+.1f} MiB, {int(held['held_span_bytes']):,} bytes "
            f"held, {int(held['spans_released']):,} spans released |",
            f"| a flooder | {flood['calls']} Export calls at once, each a {flood['mib']} MiB "
            f"message of garbage | collector RSS {float(flood['rss_growth_mib']):+.0f} MiB; "
            f"{codes} |",
        ]
    )


# -- faults ---------------------------------------------------------------------


def faults() -> list[dict[str, object]]:
    sys.path.insert(0, str(HERE))
    import faults as scenarios  # benches/faults.py

    out = []
    for name in scenarios.SCENARIOS:
        out.append(getattr(scenarios, name)())
    return out


def faults_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| fault scenario | records sent | stored | lost | duplicated | counted as dropped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {int(r['sent']):,} | {int(r['stored']):,} "
            f"| {int(r['lost']):,} | {int(r['duplicated']):,} "
            f"| {int(r.get('dropped', 0)):,} |"
        )
    return "\n".join(lines)


# -- fuzzing --------------------------------------------------------------------

FUZZ_LINE = re.compile(r"fuzz target=(\S+) execs=(\d+) crashes=(\d+)")


def fuzz(seconds: int) -> list[tuple[str, int, int]]:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fuzz.sh"), str(seconds)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    found = [(m[1], int(m[2]), int(m[3])) for m in FUZZ_LINE.finditer(out.stdout)]
    if not found:
        raise RuntimeError(f"scripts/fuzz.sh printed no results:\n{out.stdout}\n{out.stderr}")
    return found


def fuzz_table(rows: list[tuple[str, int, int]], seconds: int) -> str:
    lines = [
        f"| fuzz target ({seconds} s each) | executions | crashes |",
        "|---|---:|---:|",
    ]
    for target, execs, crashes in rows:
        lines.append(f"| `{target}` | {execs:,} | {crashes} |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["memory", "faults", "fuzz", "attacks"], action="append")
    ap.add_argument("--records", type=int, default=200_000, help="records per memory case")
    ap.add_argument("--fuzz-seconds", type=int, default=30)
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    parts = args.only or ["faults", "fuzz", "memory", "attacks"]
    from modeltap import _core

    if _core.DEBUG_BUILD:
        print("refusing to measure a debug build: pip install .", file=sys.stderr)
        return 2
    print(environment())
    print()
    raw: dict[str, object] = {}
    if "faults" in parts:
        rows = faults()
        raw["faults"] = rows
        print(faults_table(rows))
        print()
    if "fuzz" in parts:
        found = fuzz(args.fuzz_seconds)
        raw["fuzz"] = found
        print(fuzz_table(found, args.fuzz_seconds))
        print()
    if "memory" in parts:
        mem = memory(args.records)
        raw["memory"] = mem
        print(f"Agent memory, {args.records:,} records logged (default settings, 64 MiB budget):")
        print()
        print(memory_table(mem))
        print()
    if "attacks" in parts:
        hostile = attacks()
        raw["attacks"] = hostile
        print(attacks_table(hostile))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
