"""`modeltap demo` runs end to end and says what it measured."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request

import modeltap
from modeltap.collector import BackgroundCollector


def test_demo_end_to_end(tmp_path):
    store = tmp_path / "demo.duckdb"
    report = tmp_path / "demo.html"
    p = subprocess.run(
        [sys.executable, "-m", "modeltap", "demo", "--requests", "2000", "--rate", "2000",
         "--store", str(store), "--report", str(report), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "served 2,000 requests with 4 workers" in out
    assert "(== shipped)" in out
    assert "12,000 spans" not in out  # 4 spans a request
    assert "8,000 spans" in out
    # The four shifted features drift; the drift table says so.
    drifted = {
        line.split()[1] for line in out.splitlines() if line.startswith("│") and "yes" in line
    }
    assert {"f0", "f1", "f2", "f3"} <= drifted
    assert not drifted & {f"f{i}" for i in range(8, 20)}
    with modeltap.Store(store) as s:
        n = s.sql("SELECT count(*) AS n FROM predictions").to_pylist()[0]["n"]
        errors = s.sql("SELECT count(*) AS n FROM errors").to_pylist()[0]["n"]
        trace_id = out.split("modeltap trace ")[1].split()[0]
        got = s.trace(trace_id)
    assert n == 2000
    assert f"ValueError {errors}" in out
    assert {sp["name"] for sp in got["spans"]} == {
        "request",
        "preprocess",
        "inference",
        "postprocess",
    }
    assert "inference (end to end)" not in out
    assert "request (end to end)" in out
    page = report.read_text()
    assert "Drift against the reference" in page
    assert str(report) in out


def test_demo_keep_leaves_the_collector_running(tmp_path):
    p = subprocess.Popen(
        [sys.executable, "-m", "modeltap", "demo", "--requests", "500", "--rate", "2000",
         "--report", str(tmp_path / "r.html"), "--keep", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = []
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        out = "".join(lines)
        pages = out.split("live pages: ")[1].split("/ ")[0]
        addr = out.split("--collector ")[-1].split()[0]
        with urllib.request.urlopen(pages + "/models/demo-credit", timeout=60) as r:
            assert "demo-credit" in r.read().decode()
        with modeltap.Client(addr) as c:
            assert c.sql("SELECT count(*) AS n FROM predictions").to_pylist()[0]["n"] == 500
    finally:
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=60)
        rc = p.returncode
    assert rc == 0, rest[-4000:]


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
