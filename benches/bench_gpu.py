"""End-to-end GPU check: an agent's system metrics, through a real
``modeltap collector`` process and its DuckDB store, against NVML read
directly (and ``nvidia-smi`` where present) while a torch workload loads
the GPU.

    python benches/bench_gpu.py                    # GPU machine: ~30 s
    python benches/bench_gpu.py --no-gpu-expected  # no GPU: GPU columns must be NULL

With a GPU (NVML reports one, or ``nvidia-smi`` or ``/dev/nvidia*`` exists):
allocates ``--alloc-gib`` GiB with torch, runs float16 matmuls for
``--seconds`` while logging the "predictions" through the agent, and checks
that the stored ``system_metrics`` rows carry the GPU's readings (not NULL),
that memory used under load is at least the allocation and matches NVML
read at nearly the same time, that utilisation peaked above 50 %, that the
temperature is plausible, and that every logged prediction was stored.
Without a GPU (or with ``--no-gpu-expected``) it checks that the GPU
columns are NULL (absent, never zeros). Exit code 0 only when every check
holds; 1 when one fails; 2 when the check cannot run (no torch, no CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from envinfo import environment
from faults import CollectorProcess, free_port

MODEL = "gpu-check"
MIB = 1 << 20
GIB = 1 << 30
SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=utilization.gpu,memory.used",
    "--format=csv,noheader,nounits",
]


@dataclass
class Reading:
    """One direct reading of the GPU (NVML or nvidia-smi)."""

    t_ns: int
    util: float
    mem_used: int
    temp: float | None = None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def row(self, what: str, stored: object, direct: object = "", smi: object = "") -> None:
        self.rows.append((what, str(stored), str(direct), str(smi)))

    def print(self) -> None:
        if self.rows:
            print("\n| figure | modeltap store | pynvml (direct) | nvidia-smi |")
            print("|---|---:|---:|---:|")
            for r in self.rows:
                print("| " + " | ".join(r) + " |")
        print()
        for c in self.checks:
            print(
                f"[{'PASS' if c.ok else 'FAIL'}] {c.name}" + (f": {c.detail}" if c.detail else "")
            )

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


# -- the GPU, read directly ------------------------------------------------------


class DirectNvml:
    """pynvml opened by this script, independently of modeltap's sampler."""

    def __init__(self) -> None:
        self.nv: Any = None
        self.count = 0
        self.reason = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.count = int(pynvml.nvmlDeviceGetCount())
        except Exception as e:
            self.reason = f"{type(e).__name__}: {e}"

    @staticmethod
    def _str(v: object) -> str:
        return v.decode(errors="replace") if isinstance(v, bytes) else str(v)

    def describe(self) -> list[str]:
        if self.nv is None:
            return [f"NVML: unavailable ({self.reason})"]
        nv = self.nv
        lines = [
            f"NVML: driver {self._str(nv.nvmlSystemGetDriverVersion())}, "
            f"NVML {self._str(nv.nvmlSystemGetNVMLVersion())}, {self.count} GPU(s)"
        ]
        for i in range(self.count):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            mig = "n/a"
            with contextlib.suppress(Exception):
                mig = "on" if nv.nvmlDeviceGetMigMode(h)[0] else "off"
            lines.append(
                f"  GPU {i}: {self._str(nv.nvmlDeviceGetName(h))}, "
                f"{mem.total / GIB:.1f} GiB, {mem.used / MIB:.0f} MiB used, "
                f"UUID {self._str(nv.nvmlDeviceGetUUID(h))}, MIG {mig}"
            )
        return lines

    def index_of(self, uuid: str | None) -> int:
        """The NVML index of the GPU with this UUID (torch's device), else 0."""
        want = (uuid or "").lower().removeprefix("gpu-")
        for i in range(self.count if want else 0):
            h = self.nv.nvmlDeviceGetHandleByIndex(i)
            if self._str(self.nv.nvmlDeviceGetUUID(h)).lower().removeprefix("gpu-") == want:
                return i
        return 0

    def read(self, index: int) -> Reading:
        nv = self.nv
        h = nv.nvmlDeviceGetHandleByIndex(index)
        util = nv.nvmlDeviceGetUtilizationRates(h)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        temp = nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
        return Reading(time.time_ns(), float(util.gpu), int(mem.used), float(temp))


class Poller(threading.Thread):
    """Calls ``read`` every ``period_s`` and keeps what it returns."""

    def __init__(self, read: Any, period_s: float) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.period_s = period_s
        self.readings: list[Reading] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                r = self.read()
                if r is not None:
                    self.readings.append(r)
            except Exception as e:
                self.errors.append(f"{type(e).__name__}: {e}")
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def smi_reader(index: int) -> Any:
    def read() -> Reading | None:
        t0 = time.time_ns()
        out = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=20, check=True)
        t1 = time.time_ns()
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        util, mem = (float(v) for v in lines[index].split(","))
        return Reading((t0 + t1) // 2, util, int(mem * MIB))

    return read


def gpu_present(direct: DirectNvml) -> tuple[bool, str]:
    """Whether this machine has an NVIDIA GPU, by any of three signs: a
    broken NVML on a GPU machine must fail the check, not skip it."""
    signs = []
    if direct.count > 0:
        signs.append(f"NVML reports {direct.count} GPU(s)")
    if shutil.which("nvidia-smi"):
        signs.append("nvidia-smi on PATH")
    if glob.glob("/dev/nvidia[0-9]*"):
        signs.append("/dev/nvidia* present")
    return bool(signs), ", ".join(signs) or "no NVML GPU, no nvidia-smi, no /dev/nvidia*"


# -- the workload ------------------------------------------------------------------


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cpu_workload(agent: Any, seconds: float) -> None:
    """No GPU: a small numpy "model" whose predictions are logged."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        x = rng.normal(size=(64, 8))
        s = x @ w
        agent.log_batch(x, s.argmax(axis=1), softmax(s))
        agent.log(x[0], int(s[0].argmax()))
        time.sleep(0.02)


@dataclass
class Load:
    start_ns: int = 0
    end_ns: int = 0
    iterations: int = 0
    matmuls: int = 0
    allocated: int = 0


def gpu_workload(torch: Any, agent: Any, alloc_bytes: int, seconds: float, n: int) -> Load:
    """Allocates ``alloc_bytes`` on the GPU, then runs float16 matmuls for
    ``seconds``, logging 64 "predictions" through the agent per round."""
    dev = torch.device("cuda", 0)
    load = Load()
    buf = torch.ones(alloc_bytes // 4, dtype=torch.float32, device=dev)
    a = torch.randn(n, n, dtype=torch.float16, device=dev)
    b = torch.randn(n, n, dtype=torch.float16, device=dev)
    c = torch.empty(n, n, dtype=torch.float16, device=dev)
    torch.matmul(a, b, out=c)  # cuBLAS workspace, allocator blocks: before the window
    _ = c[:64, :3].float().cpu(), a[:64, :8].float().cpu()
    torch.cuda.synchronize()
    load.allocated = int(torch.cuda.memory_allocated(dev))
    load.start_ns = time.time_ns()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        for _ in range(16):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize()  # releases the GIL: the sampler thread runs
        scores = c[:64, :3].float().cpu().numpy()
        x = a[:64, :8].float().cpu().numpy()
        agent.log_batch(
            x,
            scores.argmax(axis=1),
            softmax(scores.astype(np.float64) / 100.0),
            latency_s=time.perf_counter() - t0,
        )
        load.iterations += 1
        load.matmuls += 16
    load.end_ns = time.time_ns()
    if float(buf[-1]) != 1.0:
        raise RuntimeError("the allocation was not kept")
    del buf, a, b, c
    torch.cuda.empty_cache()
    return load


# -- the store ------------------------------------------------------------------------


def stored_samples(store_path: Path) -> tuple[list[dict[str, Any]], int]:
    """The model's system_metrics rows (``ts`` in Unix ns) and its stored
    prediction count, read with modeltap.Store."""
    import pyarrow as pa
    import pyarrow.compute as pc

    import modeltap

    with modeltap.Store(store_path) as store:
        t = store.system_metrics(MODEL)
        preds = store.sql("SELECT count(*) AS n FROM predictions WHERE model = ?", [MODEL])
    ts = pc.cast(t.column("ts"), pa.timestamp("ns", tz="UTC")).cast(pa.int64())
    t = t.set_column(t.schema.get_field_index("ts"), "ts", ts)
    return t.to_pylist(), int(preds.column("n")[0].as_py())


def closest(
    readings: list[Reading], t_ns: int, within_ns: int, value: Any, target: float
) -> float | None:
    """The smallest |value(r) - target| over the direct readings taken
    within ``within_ns`` of ``t_ns`` (None when there is none): a stored
    sample agrees with the reference if a reading at nearly the same time
    agrees with it, wherever the sampling threads happened to be scheduled."""
    near = [abs(float(value(r)) - target) for r in readings if abs(r.t_ns - t_ns) <= within_ns]
    return min(near) if near else None


GPU_COLS = [
    "gpu_index",
    "gpu_name",
    "gpu_utilization_percent",
    "gpu_memory_used_bytes",
    "gpu_memory_total_bytes",
    "gpu_temperature_celsius",
]


def check_common(
    rep: Report, rows: list[dict[str, Any]], stored: int, stats: dict[str, int]
) -> None:
    rep.check("system samples stored", len(rows) >= 3, f"{len(rows)} rows")
    rep.check(
        "process metrics present",
        bool(rows) and all(r["rss_bytes"] and r["threads"] for r in rows),
        f"last rss {rows[-1]['rss_bytes'] / MIB:.0f} MiB" if rows else "no rows",
    )
    rep.row(
        "predictions stored (logged, shipped)",
        f"{stored:,} ({stats['logged']:,}, {stats['shipped']:,})",
    )
    rep.check(
        "predictions stored == logged",
        stored == stats["logged"] == stats["shipped"] and stats["logged"] > 0,
        f"logged {stats['logged']}, shipped {stats['shipped']}, stored {stored}",
    )
    rep.check("agent errors == 0", stats["errors"] == 0, f"errors {stats['errors']}")


def check_no_gpu(rep: Report, rows: list[dict[str, Any]]) -> None:
    non_null = [r for r in rows if any(r[c] is not None for c in GPU_COLS)]
    rep.row("rows with any gpu_* column set", len(non_null))
    rep.check(
        "GPU columns NULL (absent, not zeros) on every row",
        bool(rows) and not non_null,
        f"{len(non_null)} of {len(rows)} rows have GPU values"
        + (f", e.g. {[non_null[0][c] for c in GPU_COLS]}" if non_null else ""),
    )


def check_gpu(
    rep: Report,
    rows: list[dict[str, Any]],
    gpu: int,
    load: Load,
    alloc_bytes: int,
    direct: DirectNvml,
    nvml: list[Reading],
    smi: list[Reading],
    tol_bytes: int,
) -> None:
    h = direct.nv.nvmlDeviceGetHandleByIndex(gpu)
    name = direct._str(direct.nv.nvmlDeviceGetName(h))
    total = int(direct.nv.nvmlDeviceGetMemoryInfo(h).total)
    mine = [r for r in rows if r["gpu_index"] == gpu]
    null_rows = [r for r in rows if r["gpu_index"] is None]
    rep.check(
        f"GPU {gpu} readings present in every sample",
        bool(mine) and not null_rows and all(r[c] is not None for r in mine for c in GPU_COLS),
        f"{len(mine)} rows for GPU {gpu}, {len(null_rows)} samples without GPU columns",
    )
    if not mine:
        return
    rep.row("gpu_name", mine[-1]["gpu_name"], name)
    rep.check("gpu_name matches NVML", all(r["gpu_name"] == name for r in mine), name)
    rep.row(
        "gpu_memory_total (MiB)",
        f"{mine[-1]['gpu_memory_total_bytes'] / MIB:,.0f}",
        f"{total / MIB:,.0f}",
    )
    rep.check(
        "gpu_memory_total matches NVML",
        all(r["gpu_memory_total_bytes"] == total for r in mine),
    )

    def during(rs: list[Any], key: Any) -> list[Any]:
        return [r for r in rs if load.start_ns <= key(r) <= load.end_ns]

    lrows = during(mine, lambda r: r["ts"])
    lnvml = during(nvml, lambda r: r.t_ns)
    lsmi = during(smi, lambda r: r.t_ns)
    rep.row("samples during the load", len(lrows), len(lnvml), len(lsmi))
    rep.check("samples during the load >= 3", len(lrows) >= 3, f"{len(lrows)}")
    if not lrows:
        return

    def rng(vals: list[float], scale: float = 1.0, fmt: str = ",.0f") -> str:
        return f"{min(vals) / scale:{fmt}} .. {max(vals) / scale:{fmt}}" if vals else "-"

    mem = [r["gpu_memory_used_bytes"] for r in lrows]
    rep.row(
        "memory used during load (MiB)",
        rng(mem, MIB),
        rng([r.mem_used for r in lnvml], MIB),
        rng([r.mem_used for r in lsmi], MIB),
    )
    rep.row(
        "allocated by torch (MiB)",
        f"{alloc_bytes / MIB:,.0f} (+{(load.allocated - alloc_bytes) / MIB:,.0f} operands)",
    )
    rep.check(
        "memory used during load >= allocated",
        min(mem) >= alloc_bytes,
        f"min {min(mem) / MIB:,.0f} MiB vs {alloc_bytes / MIB:,.0f} MiB",
    )
    devs = []
    for r in lrows:
        d = closest(nvml, r["ts"], 300_000_000, lambda x: x.mem_used, r["gpu_memory_used_bytes"])
        if d is not None:
            devs.append(d)
    rep.row(
        "max deviation from pynvml within 0.3 s, memory (MiB)",
        f"{max(devs) / MIB:,.1f}" if devs else "-",
        f"{len(devs)} pairs",
    )
    rep.check(
        f"memory used within {tol_bytes / MIB:.0f} MiB of pynvml read at nearly the same time",
        len(devs) >= max(1, len(lrows) // 2) and max(devs) <= tol_bytes,
        f"{len(devs)} of {len(lrows)} samples with pynvml readings within 0.3 s, max deviation "
        + (f"{max(devs) / MIB:,.1f} MiB" if devs else "-"),
    )
    if lsmi:
        rep.check(
            "nvidia-smi memory used during load >= allocated",
            min(r.mem_used for r in lsmi) >= alloc_bytes,
            f"min {min(r.mem_used for r in lsmi) / MIB:,.0f} MiB",
        )
    util = [r["gpu_utilization_percent"] for r in lrows]
    rep.row(
        "peak / mean utilisation during load (%)",
        f"{max(util):.0f} / {sum(util) / len(util):.0f}",
        f"{max(r.util for r in lnvml):.0f} / {sum(r.util for r in lnvml) / len(lnvml):.0f}"
        if lnvml
        else "-",
        f"{max(r.util for r in lsmi):.0f}" if lsmi else "-",
    )
    rep.check("peak utilisation during load > 50 %", max(util) > 50, f"{max(util):.0f} %")
    temps = [r["gpu_temperature_celsius"] for r in mine]
    dtemp = [
        d
        for r in mine
        if (
            d := closest(
                nvml, r["ts"], 1_000_000_000, lambda x: x.temp, r["gpu_temperature_celsius"]
            )
        )
        is not None
    ]
    rep.row("temperature (C)", rng(temps, fmt=".0f"), rng([r.temp or 0.0 for r in nvml], fmt=".0f"))
    rep.check(
        "temperature plausible (10..95 C, within 5 C of pynvml)",
        all(10 <= t <= 95 for t in temps) and bool(dtemp) and max(dtemp) <= 5,
        f"{min(temps):.0f}..{max(temps):.0f} C, max deviation "
        + (f"{max(dtemp):.0f} C" if dtemp else "-"),
    )


# -- main -------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--no-gpu-expected", action="store_true", help="check that the GPU columns are NULL"
    )
    mode.add_argument(
        "--expect-gpu", action="store_true", help="fail unless a GPU is found and measured"
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="GPU load duration (10)")
    ap.add_argument("--alloc-gib", type=float, default=4.0, help="GiB allocated on the GPU (4)")
    ap.add_argument("--matrix", type=int, default=8192, help="matmul size (8192)")
    ap.add_argument("--interval", type=float, default=0.25, help="metrics_interval, s (0.25)")
    ap.add_argument("--mem-tolerance-mib", type=float, default=128.0, help="vs pynvml (128)")
    ap.add_argument("--store", help="keep the store here (default: a temporary directory)")
    args = ap.parse_args()
    t_begin = time.monotonic()

    print(environment())
    direct = DirectNvml()
    for line in direct.describe():
        print(line)
    present, why = gpu_present(direct)
    gpu_mode = args.expect_gpu or (present and not args.no_gpu_expected)
    print(f"GPU present: {present} ({why}); mode: {'GPU' if gpu_mode else 'no GPU expected'}")

    torch: Any = None
    gpu = 0
    if gpu_mode:
        try:
            import torch
        except ImportError as e:
            print(f"torch is not importable ({e}): no GPU workload, the check is meaningless")
            return 2
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
        if not torch.cuda.is_available():
            print("torch.cuda.is_available() is False: no GPU workload")
            return 2
        if direct.count == 0:
            print(f"NVML sees no GPU ({direct.reason}): nothing to compare against")
            return 2
        props = torch.cuda.get_device_properties(0)
        uuid = str(getattr(props, "uuid", "") or "")
        gpu = direct.index_of(uuid)
        print(f"torch device 0: {props.name} = NVML GPU {gpu}")

    tmp = tempfile.TemporaryDirectory(prefix="modeltap-gpu-")
    workdir = Path(args.store).resolve().parent if args.store else Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = Path(args.store).resolve() if args.store else workdir / "gpu.duckdb"
    collector = CollectorProcess(store_path, free_port(), workdir / "collector.log")
    collector.start()
    print(f"collector on {collector.addr}, store {store_path}")

    import modeltap

    rep = Report()
    nvml_poll = smi_poll = None
    load = Load()
    alloc_bytes = int(args.alloc_gib * GIB) // 4 * 4
    try:
        agent = modeltap.Agent(
            MODEL,
            "1",
            collector=collector.addr,
            metrics_interval=args.interval,
            flush_interval=0.2,
            on_full="block",
        )
        if gpu_mode:
            nvml_poll = Poller(lambda: direct.read(gpu), 0.05)
            nvml_poll.start()
            if shutil.which("nvidia-smi"):
                smi_poll = Poller(smi_reader(gpu), 1.0)
                smi_poll.start()
            else:
                print("nvidia-smi not on PATH: pynvml is the only reference")
            cpu_workload(agent, 1.0)  # idle GPU first
            load = gpu_workload(torch, agent, alloc_bytes, args.seconds, args.matrix)
            print(
                f"load: {load.iterations} rounds, {load.matmuls} float16 {args.matrix}^2 "
                f"matmuls in {(load.end_ns - load.start_ns) / 1e9:.1f} s"
            )
            time.sleep(max(3 * args.interval, 0.5))  # a few samples after the release
            nvml_poll.stop()
            if smi_poll is not None:
                smi_poll.stop()
        else:
            cpu_workload(agent, max(3.0, 8 * args.interval))
        flushed = agent.flush(30)
        agent.close()
        stats = agent.stats()
    finally:
        collector.stop()
    log = (workdir / "collector.log").read_text(errors="replace")
    print("collector:", " | ".join(ln for ln in log.splitlines() if "stopped" in ln) or log[-2000:])
    rep.check("agent.flush() delivered everything", flushed)

    rows, stored = stored_samples(store_path)
    check_common(rep, rows, stored, stats)
    if gpu_mode:
        assert nvml_poll is not None
        if nvml_poll.errors:
            print(f"pynvml errors: {nvml_poll.errors[:3]}")
        if smi_poll is not None and smi_poll.errors:
            print(f"nvidia-smi errors: {smi_poll.errors[:3]}")
        check_gpu(
            rep,
            rows,
            gpu,
            load,
            alloc_bytes,
            direct,
            nvml_poll.readings,
            smi_poll.readings if smi_poll else [],
            int(args.mem_tolerance_mib * MIB),
        )
    else:
        check_no_gpu(rep, rows)
    rep.row("runtime (s)", f"{time.monotonic() - t_begin:.1f}")
    rep.print()
    tmp.cleanup()
    print(f"\nRESULT: {'PASS' if rep.ok else 'FAIL'} ({'GPU' if gpu_mode else 'no-GPU'} mode)")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
