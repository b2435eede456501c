"""HTML reports: the figures against what was logged (and against the
collector's own drift), the same report from a running collector and from
the stopped store, the file self-contained and safe with hostile names, and
the page rendered in a real headless Chromium (no console errors, every plot
drawn; a screenshot kept in $MODELTAP_TEST_ARTIFACTS, default
./test-artifacts), from a file and live from the collector's HTTP port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import modeltap
from modeltap.collector import BackgroundCollector
from modeltap.report import Report

N = 2_400
NAMES = [f"f{i}" for i in range(6)]
ARTIFACTS = Path(os.environ.get("MODELTAP_TEST_ARTIFACTS", "test-artifacts"))


def _fill(addr: str, model: str = "m", *, hostile: bool = False) -> dict:
    """Two phases a bucket apart, the second with f0 shifted; two error
    types; every request traced through two stages."""
    rng = np.random.default_rng(1)
    names = [*NAMES, "<b>x</b>"] if hostile else NAMES
    ref = modeltap.Reference.from_data(
        rng.normal(size=(5_000, len(names))),
        feature_names=names,
        predictions=rng.choice(["cat", "dog", "<i>"], 5_000),
    )
    with modeltap.Client(addr) as c:
        c.register_reference(ref, model, "1")
    a = modeltap.Agent(
        model, "1", collector=addr, reference=ref, window_s=1.0, metrics_interval=0.1
    )
    latencies = []
    errors = {"ValueError": 0, "KeyError": 0}
    for i in range(N):
        if i == N // 2:
            time.sleep(1.2)  # the second phase in later windows
        x = rng.normal(size=len(names))
        if i >= N // 2:
            x[0] += 3.0
        err = None
        if i % 50 == 0:
            err = ValueError("bad input") if i % 100 == 0 else KeyError("missing")
            errors[type(err).__name__] += 1
        lat = 0.001 + 0.0001 * (i % 17)
        latencies.append(lat)
        with a.span("request", kind="server"), a.span("inference"):
            a.log(x, ["cat", "dog", "<i>"][i % 3], latency_s=lat, error=err)
    assert a.flush(30)
    a.close()
    return {"latencies": np.array(latencies), "errors": errors}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    store = tmp_path_factory.mktemp("report") / "s.duckdb"
    col = BackgroundCollector(store, http="127.0.0.1:0", metrics_refresh_s=3600).start()
    logged = _fill(col.addr)
    yield col, logged
    col.stop()


def test_figures_are_what_was_logged(live):
    col, logged = live
    with modeltap.Client(col.addr) as c:
        rep = c.report("m")
        drift = c.drift("m", "1")
    s = rep.summary
    assert s["records"] == N
    assert s["errors"] == sum(logged["errors"].values())
    assert s["error_rate"] == pytest.approx(s["errors"] / N)
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        assert s[key] == pytest.approx(np.quantile(logged["latencies"], q), rel=1e-9)
    assert s["drifted"] == ["f0"]
    # The drift table is the collector's own drift of the same profiles.
    mine = {r["feature"]: r for r in rep.drift.rows}
    for r in drift.rows:
        for k in ("psi", "ks", "js", "wasserstein", "hellinger", "n_cur", "drifted"):
            a, b = mine[r["feature"]][k], r[k]
            if isinstance(b, float) and np.isnan(b):
                assert a is None or np.isnan(a)
            else:
                assert a == pytest.approx(b, rel=1e-12), (r["feature"], k)
    # Histograms: every current value counted once, in the bins PSI uses.
    hists = {h["feature"]: h for h in rep.data["histograms"]}
    assert sum(hists["f0"]["cur"]) == N
    assert sum(hists["f0"]["ref"]) == 5_000
    assert len(hists["f0"]["edges"]) == len(hists["f0"]["cur"]) + 1
    assert sum(hists["prediction"]["cur"]) == N
    # Drift over time: the shift shows in the later buckets only.
    times = rep.data["drift_times"]
    assert sum(t["records"] for t in times) == N
    big = [t for t in times if t["records"] >= 300]  # a phase may straddle a window
    assert len(big) >= 2
    assert big[0]["psi"]["f0"] < 0.2 < big[-1]["psi"]["f0"]
    # Predictions, latency and errors over time add up to the records.
    assert sum(r["n"] for r in rep.data["latency"]) == N
    assert sum(r["n"] for r in rep.data["predictions"]["rows"]) == N
    assert {e["type"]: e["n"] for e in rep.data["errors"]} == logged["errors"]
    stages = {r["stage"]: r for r in rep.data["stages"] if not r["end_to_end"]}
    assert stages["inference"]["spans"] == N
    assert rep.data["system"]  # agents' samples are there
    assert all(r["gpu"] is None for r in rep.data["system"]) or any(
        r["gpu"] is not None for r in rep.data["system"]
    )


def test_the_same_report_live_and_from_the_stopped_store(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        _fill(col.addr)
        with modeltap.Client(col.addr) as c:
            live_data = c.report("m", "1").data
    with modeltap.Store(tmp_path / "s.duckdb") as s:
        stored = s.report("m", "1").data
    for d in (live_data, stored):
        d.pop("generated")
        d.pop("build_s")
    # Equal, floats to 1e-12: DuckDB sums in parallel on the stopped store
    # (one thread in the collector), so averages may differ in the last bit.
    _same(
        json.loads(json.dumps(live_data, default=str)), json.loads(json.dumps(stored, default=str))
    )


def _same(a, b, where="") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-300), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_the_file_is_self_contained_and_escapes_names(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        _fill(col.addr, model="<script>alert(1)</script>", hostile=True)
        # An infinite latency and a link for an error type: still a report.
        a = modeltap.Agent("<script>alert(1)</script>", "1", collector=col.addr)
        a.log([0.0] * 7, "cat", latency_s=float("inf"))

        class Phish(Exception):
            pass

        Phish.__name__ = "<a href='https://evil.example'>x</a>"
        a.log([0.0] * 7, "cat", latency_s=0.001, error=Phish("<a href='https://evil.example'>"))
        assert a.flush(30)
        a.close()
        with modeltap.Client(col.addr) as c:
            rep = c.report("<script>alert(1)</script>")
            with pytest.raises(LookupError):
                Report.build(c, "missing")
            with pytest.raises(LookupError):
                Report.build(c, "<script>alert(1)</script>", version="no-such-version")
            far = c.report("<script>alert(1)</script>", since="0001-01-01", until="9999-12-31")
            assert far.summary["records"] == rep.summary["records"] == N + 2
    assert rep.summary["p99"] is not None
    page = rep.to_html()
    figures = json.loads(
        page.split("id='modeltap-figures'>")[1].split("</script>")[0].replace("\\u0026", "&")
    )
    texts = json.dumps(figures)
    assert "<a href" not in texts  # plotly would draw a link
    assert "<b>" not in texts
    assert "<script>alert(1)</script>" not in page
    assert "<b>x</b>" not in page  # a feature name
    assert "<i>" not in page  # a predicted class
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    # nothing fetched from anywhere
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=['\"](?!data:)", page)
    assert "plotly.js" in page


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,2400",
    ):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


DRAWN = """
const plots = Array.from(document.querySelectorAll('.plot'));
return plots.map(p => [p.id,
  !!p.querySelector('svg.main-svg'),
  p.querySelectorAll('g.trace, g.point, path.point').length]);
"""


def _check_page(driver, url: str, shot: str) -> list:
    driver.get(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = driver.execute_script("return document.readyState") == "complete"
        if ready and driver.execute_script("return !!window.modeltapPlots"):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    plots = driver.execute_script(DRAWN)
    logs = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / shot))
    assert not logs, logs
    assert (ARTIFACTS / shot).stat().st_size > 10_000
    return plots


def test_the_report_renders_in_headless_chromium(live, tmp_path):
    col, _ = live
    with modeltap.Client(col.addr) as c:
        path = c.report("m").save(tmp_path / "report.html")
    driver = _browser()
    try:
        plots = _check_page(driver, path.as_uri(), "report.png")
        ids = {p[0] for p in plots}
        assert {"latency", "predictions", "drift_time", "errors", "hist0"} <= ids
        assert len(plots) >= 10
        assert all(svg and marks > 0 for _, svg, marks in plots), plots
        # Live from the collector: the index links to the model's page.
        port = col.server.metrics.port
        base = f"http://127.0.0.1:{port}"
        driver.get(base + "/")
        links = driver.execute_script(
            "return Array.from(document.querySelectorAll('a[href^=\"/models/\"]'))"
            ".map(a => a.getAttribute('href'))"
        )
        assert links == ["/models/m?version=1"]
        plots = _check_page(driver, base + links[0] + "&since=1h", "live.png")
        assert len(plots) >= 10
        assert all(svg and marks > 0 for _, svg, marks in plots), plots
    finally:
        driver.quit()


def test_live_pages_answer_plainly(live):
    col, _ = live
    base = f"http://127.0.0.1:{col.server.metrics.port}"
    with urllib.request.urlopen(base + "/static/plotly.min.js", timeout=30) as r:
        assert r.headers["Cache-Control"].startswith("public")
        assert len(r.read()) > 1_000_000
    for path, code in (("/models/nope", 404), ("/models/m?since=yesterday-ish", 400)):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=30)
        e.value.close()
        assert e.value.code == code, path


def test_report_command(live, tmp_path):
    col, _ = live
    out = tmp_path / "r.html"
    r = subprocess.run(
        [sys.executable, "-m", "modeltap", "report", "--model", "m", "--since", "1h",
         "--collector", col.addr, "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"{N:,} records" in r.stdout
    assert "1 drifted features" in r.stdout
    page = out.read_text()
    assert "Drift against the reference" in page
    r = subprocess.run(
        [sys.executable, "-m", "modeltap", "report", "--model", "nope", "--collector",
         col.addr, "--out", str(tmp_path / "x.html")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().startswith("modeltap report:")
    assert not (tmp_path / "x.html").exists()
