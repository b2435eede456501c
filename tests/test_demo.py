"""`modeltap demo` runs end to end and says what it measured."""

from __future__ import annotations

import subprocess
import sys

import modeltap
from modeltap.collector import BackgroundCollector


def test_demo_end_to_end(tmp_path):
    store = tmp_path / "demo.duckdb"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "modeltap",
            "demo",
            "--requests",
            "2000",
            "--batch-rows",
            "5000",
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "== shipped" in out
    assert "errors: ValueError 5" in out
    # 2000 logs + 200 monitored + 5 failing + 5000 batch rows
    with modeltap.Store(store) as s:
        n = s.sql("SELECT count(*) AS n FROM predictions").to_pylist()[0]["n"]
    assert n == 7205
    assert "7,205" in out
    # 200 traced requests (request, preprocess, inference, postprocess) and
    # 5 failing ones (request, inference)
    assert "traces (810 spans stored" in out
    assert "request (end to end)         205 spans" in out
    assert "inference                    205 spans" in out
    assert "errors 5" in out
    trace_id = out.split("modeltap trace ")[1].split()[0]
    with modeltap.Store(store) as s:
        got = s.trace(trace_id)
    assert {sp["name"] for sp in got["spans"]} >= {"request", "inference"}


def test_background_collector(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        a = modeltap.Agent("m", collector=col.addr, metrics_interval=None)
        for i in range(100):
            a.log([float(i)], i)
        assert a.flush(10)
        a.close()
    with modeltap.Store(tmp_path / "s.duckdb") as s:
        t = s.predictions("m")
    assert sorted(t.column("f0").to_pylist()) == [float(i) for i in range(100)]


def test_cli_errors_are_one_line_without_a_traceback(tmp_path):
    for args in (
        ["reference", "build", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")],
        ["latency", "--model", "m", "--store", str(tmp_path / "nope" / "s.duckdb")],
    ):
        p = subprocess.run(
            [sys.executable, "-m", "modeltap", *args], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, p.stderr
        assert lines[0].startswith(f"modeltap {args[0]}: ")
        assert "Traceback" not in p.stderr
