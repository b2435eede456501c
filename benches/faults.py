"""Fault scenarios with real processes: agents, a `modeltap collector`
process, DuckDB, and the faults a production host sees.

Each scenario is a function returning a dict (``scenario``, ``sent``,
``stored``, ``lost``, ``duplicated``, and what else it measured), so tests
assert on them and ``python benches/faults.py`` prints them as a table:

- :func:`sigkill_loop`: agent processes log records while the collector is
  SIGKILLed and restarted, again and again; every agent spools while it is
  away and replays when it is back.
- :func:`full_disk_spool`: the collector is away and the spool lives on a
  filesystem that fills up (a 2 MiB tmpfs); then the collector comes back and
  a new agent process replays the spool.

The same file is also the agent process of both scenarios
(``python benches/faults.py agent ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
# The scenario functions, for tables (benches/bench_trust.py).
SCENARIOS = ["sigkill_loop", "full_disk_spool"]
N_FEATURES = 4
# Record i of agent k has features (k * KEY_BASE + i, i / 2, -i, i % 13):
# stored rows can be checked for being a logged record with its own values.
KEY_BASE = 10_000_000


def features(k: int, start: int, stop: int) -> np.ndarray:
    """The features of records ``start..stop`` of agent ``k``."""
    i = np.arange(start, stop, dtype=np.float64)
    return np.stack([k * KEY_BASE + i, i / 2, -i, i % 13], axis=1)


# -- processes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CollectorProcess:
    """A `modeltap collector` on a fixed port, its output in a file (a pipe
    nobody reads would fill and stall it)."""

    def __init__(self, store: Path, port: int, log: Path) -> None:
        self.store = store
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "modeltap",
                    "collector",
                    "--listen",
                    self.addr,
                    "--store",
                    str(self.store),
                    "--log-level",
                    "WARNING",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count("listening on") >= self.starts:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"collector did not start:\n{self.log.read_text(errors='replace')}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


def start_agent(out: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f, open(str(out) + ".err", "wb") as err:
        return subprocess.Popen([sys.executable, str(HERE), "agent", *args], stdout=f, stderr=err)


def agent_result(p: subprocess.Popen[bytes], out: Path, timeout: float) -> dict[str, Any]:
    p.wait(timeout)
    err = Path(str(out) + ".err").read_text(errors="replace")
    text = out.read_text(errors="replace").strip()
    if p.returncode != 0 or not text:
        raise RuntimeError(f"agent failed ({p.returncode}):\n{text}\n{err}")
    res: dict[str, Any] = json.loads(text.splitlines()[-1])
    res["stderr"] = err
    return res


def stored_keys(store: Path) -> tuple[np.ndarray, int, bool]:
    """The key feature of every stored row, the number of distinct request
    ids, and whether every row holds its own record's values."""
    import modeltap

    with modeltap.Store(store) as s:
        t = s.sql(
            "SELECT features[1] AS k, features[2] AS a, features[3] AS b, features[4] AS c, "
            "request_id FROM predictions"
        )
        ids = s.sql("SELECT count(DISTINCT request_id) AS n FROM predictions").to_pylist()[0]["n"]
    k = np.asarray(t.column("k").to_numpy(zero_copy_only=False), dtype=np.float64)
    i = k % KEY_BASE
    own = bool(
        np.array_equal(np.asarray(t.column("a")), i / 2)
        and np.array_equal(np.asarray(t.column("b")), -i)
        and np.array_equal(np.asarray(t.column("c")), i % 13)
    )
    return k, int(ids), own


def _account(expected: np.ndarray, keys: np.ndarray) -> dict[str, int]:
    uniq = np.unique(keys)
    return {
        "stored": len(keys),
        "lost": len(np.setdiff1d(expected, uniq)),
        "duplicated": len(keys) - len(uniq),
        "unexpected": len(np.setdiff1d(uniq, expected)),
    }


def _adds_up(s: dict[str, int]) -> bool:
    return bool(
        s["logged"]
        == s["pending"]
        + s["shipped"]
        + s["spooled"]
        + s["discarded"]
        + s["dropped_full"]
        + s["dropped_spool"]
        + s["invalid"]
        + s["sampled_out"]
    )


# -- scenario: the collector SIGKILLed again and again -------------------------


def sigkill_loop(
    agents: int = 4,
    records: int = 250_000,
    kills: int = 5,
    workdir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """``agents`` processes log ``records`` records each (``log_batch`` in
    chunks, ``on_full="block"``, a spool each) while the collector is
    SIGKILLed ``kills`` times and restarted. Then the agents flush and close,
    and the store is checked record by record."""
    t0 = time.monotonic()
    with _workdir(workdir) as wd:
        store = wd / "store.duckdb"
        col = CollectorProcess(store, free_port(), wd / "collector.log")
        col.start()
        chunk = 5_000
        # Spread the records over the kill loop (a kill, 0.3 s down, a
        # restart of about a second, 1.2 s up).
        pause = 2.5 * kills / max(records // chunk, 1)
        procs = [
            start_agent(
                wd / f"agent{k}.out",
                "--collector",
                col.addr,
                "--k",
                str(k),
                "--n",
                str(records),
                "--chunk",
                str(chunk),
                "--pause",
                f"{pause:.4f}",
                "--spool",
                str(wd / f"spool{k}"),
            )
            for k in range(agents)
        ]
        killed_at = []
        try:
            for _ in range(kills):
                time.sleep(1.2)
                killed_at.append(time.time())
                col.kill()  # no clean shutdown: in-flight transactions lost
                time.sleep(0.3)
                col.start()
            results = [agent_result(p, wd / f"agent{k}.out", 300) for k, p in enumerate(procs)]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            col.stop()
        keys, ids, own = stored_keys(store)
    expected = np.concatenate([features(k, 0, records)[:, 0] for k in range(agents)])
    acct = _account(expected, keys)
    return {
        "scenario": f"collector SIGKILLed {kills}x, {agents} agents",
        "sent": agents * records,
        **acct,
        "distinct_request_ids": ids,
        "own_values": own,
        "kills": kills,
        # Kills that hit while every agent was still logging.
        "kills_while_logging": sum(t < min(r["done_logging"] for r in results) for t in killed_at),
        "agents_spool_writes": sum(r["spool_writes"] for r in results),
        "agents_logged": sum(r["logged"] for r in results),
        "agents_shipped": sum(r["shipped"] for r in results),
        "agents_spooled": sum(r["spooled"] for r in results),
        "agents_dropped": sum(r["dropped_full"] + r["dropped_spool"] for r in results),
        "dropped": sum(r["dropped_full"] + r["dropped_spool"] for r in results),
        "agents_discarded": sum(r["discarded"] for r in results),
        "agents_pending": sum(r["pending"] for r in results),
        "counters_add_up": all(_adds_up(r) for r in results),
        "all_flushed": all(r["flushed"] for r in results),
        "tracebacks": sum(r["stderr"].count("Traceback") for r in results),
        "seconds": round(time.monotonic() - t0, 1),
    }


# -- scenario: the spool on a full filesystem ----------------------------------


def full_disk_spool(
    records: int = 30_000,
    size: str = "2m",
    workdir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """With the collector away, an agent spools onto a ``size`` tmpfs until
    it is full; then the collector starts and a second agent process with the
    same spool directory replays it.

    The filesystem: a tmpfs mounted here when running as root, else one
    mounted in a new user and mount namespace (``unshare -rm``), else (no
    way to mount) the same agent with RLIMIT_FSIZE set, so that its writes
    fail with EFBIG instead of ENOSPC. ``filesystem`` in the result says
    which."""
    if os.geteuid() == 0:
        return _full_disk(records, size, workdir, mount=True)
    unshare = shutil.which("unshare")
    if unshare:
        p = subprocess.run(
            [unshare, "-rm", sys.executable, str(HERE), "full-disk-inner", str(records), size]
            + ([str(workdir)] if workdir else []),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if p.returncode == 0:
            res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
            res["filesystem"] += " (user namespace)"
            return res
    return _full_disk(records, size, workdir, mount=False)


def _size_bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].isalpha() else int(size)


def _full_disk(
    records: int, size: str, workdir: str | os.PathLike[str] | None, *, mount: bool
) -> dict[str, Any]:
    t0 = time.monotonic()
    with _workdir(workdir) as wd:
        spool = wd / "small"
        spool.mkdir()
        limit: list[str] = []
        if mount:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(spool)], check=True
            )
            fs = f"tmpfs {size}"
        else:
            limit = ["--fsize", str(_size_bytes(size))]
            fs = f"RLIMIT_FSIZE {size} (EFBIG)"
        try:
            port = free_port()
            addr = f"127.0.0.1:{port}"
            # Phase 1: nobody listens; the spool fills the filesystem.
            first = agent_result(
                start_agent(
                    wd / "first.out",
                    "--collector",
                    addr,
                    "--k",
                    "1",
                    "--n",
                    str(records),
                    "--chunk",
                    "1000",
                    "--spool",
                    str(spool),
                    "--retry-window",
                    "0.2",
                    "--flush-timeout",
                    "1",
                    "--shutdown-timeout",
                    "3",
                    *limit,
                ),
                wd / "first.out",
                120,
            )
            spool_files = sorted(p.name for p in spool.glob("*.spool"))
            # Phase 2: the collector is back; a new process replays the spool.
            store = wd / "store.duckdb"
            col = CollectorProcess(store, port, wd / "collector.log")
            col.start()
            try:
                second = agent_result(
                    start_agent(
                        wd / "second.out",
                        "--collector",
                        addr,
                        "--k",
                        "2",
                        "--n",
                        "0",
                        "--spool",
                        str(spool),
                    ),
                    wd / "second.out",
                    120,
                )
            finally:
                col.stop()
            left = sorted(p.name for p in spool.glob("*.spool"))
        finally:
            if mount:
                subprocess.run(["umount", "-l", str(spool)], check=False)
        keys, ids, own = stored_keys(store)
    expected = features(1, 0, records)[:, 0]
    acct = _account(expected, keys)
    return {
        "scenario": f"spool on a full filesystem ({fs})",
        "filesystem": fs,
        "sent": records,
        **acct,
        # Records dropped on the full disk are counted (dropped_spool); lost
        # are those missing beyond them.
        "missing": acct["lost"],
        "lost": acct["lost"] - first["dropped_spool"],
        "distinct_request_ids": ids,
        "own_values": own,
        "spooled": first["spooled"],
        "dropped_spool": first["dropped_spool"],
        "dropped": first["dropped_spool"] + first["dropped_full"],
        "first_errors": first["errors"],
        "first_counters_add_up": _adds_up(first),
        "first_pending": first["pending"],
        "spool_files": len(spool_files),
        "spool_files_left": len(left),
        "recovered": second["spool_recovered"],
        "spool_corrupt": second["spool_corrupt"],
        "tracebacks": first["stderr"].count("Traceback") + second["stderr"].count("Traceback"),
        "seconds": round(time.monotonic() - t0, 1),
    }


@contextlib.contextmanager
def _workdir(path: str | os.PathLike[str] | None) -> Any:
    if path is not None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="modeltap-faults-") as d:
        yield Path(d)


# -- the agent process ---------------------------------------------------------


def _agent_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="faults.py agent")
    ap.add_argument("--collector", required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--chunk", type=int, default=5000)
    ap.add_argument("--pause", type=float, default=0.0)
    ap.add_argument("--spool")
    ap.add_argument("--retry-window", type=float, default=0.5)
    ap.add_argument("--flush-timeout", type=float, default=120.0)
    ap.add_argument("--shutdown-timeout", type=float, default=30.0)
    ap.add_argument("--fsize", type=int, help="RLIMIT_FSIZE for this process, in bytes")
    args = ap.parse_args(argv)
    if args.fsize:
        import resource

        # Writes past the limit fail with EFBIG instead of killing us.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
    import modeltap

    agent = modeltap.Agent(
        "faults",
        "1",
        collector=args.collector,
        spool_dir=args.spool,
        spool_max_bytes=1 << 30,  # the filesystem, not the cap, is the limit
        retry_window=args.retry_window,
        shutdown_timeout=args.shutdown_timeout,
        export_timeout=5.0,
        on_full="block",
        batch_size=2048,
        metrics_interval=None,
    )
    for start in range(0, args.n, args.chunk):
        stop = min(start + args.chunk, args.n)
        agent.log_batch(features(args.k, start, stop), np.arange(start, stop) % 7)
        if args.pause:
            time.sleep(args.pause)
    done_logging = time.time()
    flushed = agent.flush(args.flush_timeout)
    agent.close()
    s: dict[str, Any] = dict(agent.stats())
    s["flushed"] = flushed
    s["done_logging"] = done_logging
    s["spool_writes"] = agent._exporter.spooled_records
    print(json.dumps(s), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "agent":
        _agent_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "full-disk-inner":
        # Inside `unshare -rm`: root of a user namespace, allowed to mount.
        rest = sys.argv[2:]
        res = _full_disk(int(rest[0]), rest[1], rest[2] if len(rest) > 2 else None, mount=True)
        print(json.dumps(res), flush=True)
        return
    rows = [globals()[name]() for name in SCENARIOS]
    cols = ["scenario", "sent", "stored", "lost", "duplicated", "dropped", "seconds"]
    widths = [
        max(len(str(r[c])) for r in [*rows, dict(zip(cols, cols, strict=True))]) for c in cols
    ]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k not in cols or k == "scenario"}))


if __name__ == "__main__":
    main()
