"""A real Prometheus server (Debian's `prometheus` package: `make test` and
`.ci/run` install it) scrapes a running collector's /metrics: PromQL
through its HTTP API returns the record count and the drift the collector
computes; the alert rules load and pass `promtool test rules`; every query
of the Grafana dashboard runs without error."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import modeltap
from collector_util import free_port
from modeltap.collector import BackgroundCollector

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: `make test` installs Debian's prometheus package"
    return path


def test_alert_rules_pass_promtool():
    promtool = _binary("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_the_dashboard_is_current():
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("mk", ROOT / "scripts" / "make_grafana_dashboard.py")
    assert spec
    assert spec.loader
    mk = module_from_spec(spec)
    spec.loader.exec_module(mk)
    on_disk = json.loads((DEPLOY / "grafana" / "modeltap.json").read_text())
    assert on_disk == mk.dashboard(), "run python scripts/make_grafana_dashboard.py"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _query(base: str, q: str) -> list:
    out = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
    assert out["status"] == "success", out
    return out["data"]["result"]


def test_a_real_prometheus_scrapes_the_collector(tmp_path):
    prometheus = _binary("prometheus")
    rng = np.random.default_rng(3)
    ref = modeltap.Reference.from_data(rng.normal(size=(3_000, 2)), feature_names=["a", "b"])
    with BackgroundCollector(
        tmp_path / "s.duckdb", http="127.0.0.1:0", metrics_refresh_s=3600
    ) as col:
        with modeltap.Client(col.addr) as c:
            c.register_reference(ref, "fraud", "3")
        a = modeltap.Agent("fraud", "3", collector=col.addr, reference=ref, metrics_interval=None)
        for i in range(400):
            a.log(rng.normal(0.3, 1, 2), i % 2, latency_s=0.002)
        a.close()
        assert col.server.metrics.refresh()
        with modeltap.Client(col.addr) as c:
            drift = {r["feature"]: r for r in c.drift("fraud", "3", since="1h").rows}

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n  - job_name: modeltap\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{col.server.metrics.port}']\n"
        )
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            result: list = []
            while time.monotonic() < deadline:
                try:
                    result = _query(base, "modeltap_records_ingested_total")
                except OSError:
                    result = []
                if result:
                    break
                time.sleep(0.5)
            assert result, "Prometheus never scraped the collector"
            assert float(result[0]["value"][1]) == 400
            (up,) = _query(base, 'up{job="modeltap"}')
            assert up["value"][1] == "1"
            (psi,) = _query(
                base, 'modeltap_feature_drift{model="fraud",feature="a",statistic="psi"}'
            )
            assert float(psi["value"][1]) == pytest.approx(drift["a"]["psi"], rel=1e-12)
            (n,) = _query(base, 'modeltap_predictions_total{model="fraud",version="3"}')
            assert float(n["value"][1]) == 400
            (p50,) = _query(
                base,
                "histogram_quantile(0.5, sum by (le) "
                '(modeltap_prediction_latency_seconds_bucket{model="fraud"}))',
            )
            assert 0.001 <= float(p50["value"][1]) <= 0.004  # 2 ms, within its bucket
            # the alert rules loaded and evaluate
            rules = _get(f"{base}/api/v1/rules")["data"]["groups"][0]["rules"]
            assert len(rules) == 7
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(r.get("health") != "ok" for r in rules):
                time.sleep(0.5)
                rules = _get(f"{base}/api/v1/rules")["data"]["groups"][0]["rules"]
            assert all(r["health"] == "ok" for r in rules), rules
            # every query of the Grafana dashboard runs
            dash = json.loads((DEPLOY / "grafana" / "modeltap.json").read_text())
            exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
            assert len(exprs) >= 18
            for e in exprs:
                _query(base, e.replace("$model", ".*").replace("$version", ".*"))
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
