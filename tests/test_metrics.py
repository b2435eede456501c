"""The collector's HTTP port: /metrics in the Prometheus exposition format
(parsed with prometheus-client's own parser), /healthz, /readyz; values
checked against what was logged and against the collector's own drift."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import modeltap
from modeltap.collector import BackgroundCollector
from modeltap.collector.metrics import MAX_CLASSES, OTHER


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(samples: dict[str, list], name: str, **labels: str) -> float:
    hits = [
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


@pytest.fixture
def loaded(tmp_path):
    rng = np.random.default_rng(0)
    names = ["a", "b"]
    ref = modeltap.Reference.from_data(
        rng.normal(size=(3_000, 2)), feature_names=names, predictions=rng.choice(["x", "y"], 3_000)
    )
    with BackgroundCollector(
        tmp_path / "s.duckdb", http="127.0.0.1:0", metrics_refresh_s=3600
    ) as col:
        with modeltap.Client(col.addr) as c:
            c.register_reference(ref, "m", "1")
        a = modeltap.Agent("m", "1", collector=col.addr, reference=ref, metrics_interval=0.05)
        latencies = []
        for i in range(300):
            lat = 0.001 * (1 + i % 5)
            latencies.append(lat)
            with a.span("request", kind="server"):
                a.log(
                    rng.normal(0.5, 1, 2),
                    "x" if i % 3 else "y",
                    latency_s=lat,
                    error=KeyError("k") if i % 50 == 0 else None,
                )
        time.sleep(0.2)  # a system sample or two
        assert a.flush(10)
        a.close()
        b = modeltap.Agent("many", collector=col.addr, metrics_interval=None)
        for i in range(60):
            b.log([1.0], f"class{i % 30}")
        b.close()
        assert col.server.metrics.refresh()
        yield col, np.array(latencies)


def test_metrics_hold_what_was_logged(loaded):
    col, latencies = loaded
    s = _scrape(col.server.metrics.port)
    assert _value(s, "modeltap_records_ingested_total") == 360
    assert _value(s, "modeltap_predictions_total", model="m", version="1") == 300
    assert _value(s, "modeltap_prediction_errors_total", model="m", type="KeyError") == 6
    assert _value(s, "modeltap_predictions_by_class_total", model="m", **{"class": "x"}) == 200
    assert _value(s, "modeltap_predictions_by_class_total", model="m", **{"class": "y"}) == 100
    assert _value(s, "modeltap_ready") == 1
    assert _value(s, "modeltap_store_size_bytes") > 0
    # latency histogram: count, sum and every bucket against the values logged
    assert _value(s, "modeltap_prediction_latency_seconds_count", model="m") == 300
    assert _value(s, "modeltap_prediction_latency_seconds_sum", model="m") == pytest.approx(
        latencies.sum()
    )
    for b in s["modeltap_prediction_latency_seconds_bucket"]:
        if b.labels["model"] != "m":
            continue
        le = float(b.labels["le"])
        assert b.value == np.sum(latencies <= le), b
    # stage latency from the spans, end to end and per stage
    for root in ("true", "false"):
        assert (
            _value(s, "modeltap_stage_latency_seconds_count", stage="request", end_to_end=root)
            == 300
        )
    # label cardinality: at most MAX_CLASSES classes, the rest under "other"
    many = [x for x in s["modeltap_predictions_by_class_total"] if x.labels["model"] == "many"]
    assert len(many) == MAX_CLASSES + 1
    assert sum(x.value for x in many) == 60
    assert any(x.labels["class"] == OTHER for x in many)
    # agents' system samples (GPU series only where NVML read a GPU: never zeros)
    assert any(x.labels["model"] == "m" for x in s.get("modeltap_agent_rss_bytes", []))
    assert all(x.value > 0 for x in s.get("modeltap_agent_rss_bytes", []))
    # what the agents counted themselves, carried by their batches
    assert _value(s, "modeltap_agent_records_logged_total", model="m") == 300
    assert _value(s, "modeltap_agent_records_logged_total", model="many") == 60
    for reason in ("full", "spool", "discarded", "invalid"):
        assert _value(s, "modeltap_agent_records_dropped_total", model="m", reason=reason) == 0
    assert _value(s, "modeltap_agent_spans_dropped_total", model="m") == 0
    # no request or trace ids anywhere in the labels
    for samples in s.values():
        for x in samples:
            assert not set(x.labels) & {"request_id", "trace_id", "span_id"}


def test_drift_gauges_equal_the_collectors_drift(loaded):
    col, _ = loaded
    s = _scrape(col.server.metrics.port)
    with modeltap.Client(col.addr) as c:
        rep = c.drift("m", "1", since="1h")
    rows = {r["feature"]: r for r in rep.rows}
    for feature in ("a", "b", "prediction"):
        for stat in ("psi", "js", "hellinger"):
            got = _value(s, "modeltap_feature_drift", feature=feature, statistic=stat)
            assert got == pytest.approx(rows[feature][stat], rel=1e-12)
        want = 1.0 if rows[feature]["drifted"] else 0.0
        assert _value(s, "modeltap_feature_drifted", feature=feature) == want
    assert _value(s, "modeltap_features_drifted", model="m") == len(rep.drifted)


def test_health_endpoints(loaded):
    col, _ = loaded
    port = col.server.metrics.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
        assert r.read() == b"ready\n"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope")
    assert e.value.code == 404
    e.value.close()


def test_scrapes_during_refreshes_always_answer(tmp_path):
    import threading

    with BackgroundCollector(
        tmp_path / "s.duckdb", http="127.0.0.1:0", metrics_refresh_s=0.1
    ) as col:
        stop = threading.Event()
        failures: list[BaseException] = []
        ok = 0

        def scrape() -> None:
            nonlocal ok
            while not stop.is_set():
                try:
                    _scrape(col.server.metrics.port)
                    ok += 1
                except BaseException as e:  # an HTTP 500 included
                    failures.append(e)
                time.sleep(0.005)

        threads = [threading.Thread(target=scrape) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for wave in range(3):  # new models, classes and stages each wave
                agents = [
                    modeltap.Agent(f"m{wave}-{i}", collector=col.addr, metrics_interval=None)
                    for i in range(4)
                ]
                for a in agents:
                    with a.span(f"stage{wave}"):
                        a.log([1.0], f"c{wave}")
                for a in agents:
                    a.close()
                assert col.server.metrics.refresh()
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not failures, failures[:3]
        assert ok > 0
        s = _scrape(col.server.metrics.port)
        assert len(s["modeltap_predictions_total"]) == 12


def test_label_values_are_capped(tmp_path):
    with BackgroundCollector(
        tmp_path / "s.duckdb", http="127.0.0.1:0", metrics_refresh_s=3600
    ) as col:
        a = modeltap.Agent("x" * 5_000, collector=col.addr, metrics_interval=None)
        a.log([1.0], "y" * 5_000)
        a.close()
        assert col.server.metrics.refresh()
        s = _scrape(col.server.metrics.port)
    (p,) = s["modeltap_predictions_total"]
    assert len(p.labels["model"]) == 200
    (c,) = s["modeltap_predictions_by_class_total"]
    assert len(c.labels["class"]) == 200
