"""Ground truth through a real collector: from agents (the ring, batches,
exactly once), from label services (SubmitLabels), from files
(``modeltap labels import``); joined to predictions at any delay, in either
order; corrections kept, the latest winning; bad rows named, the others
stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import modeltap
from modeltap import _core
from modeltap.collector import BackgroundCollector


def _predict(addr: str, ids: list[str], model: str = "m") -> None:
    a = modeltap.Agent(model, "1", collector=addr, metrics_interval=None)
    for i, rid in enumerate(ids):
        a.log(np.array([float(i), 1.0]), i % 3, request_id=rid)
    assert a.flush(30)
    a.close()


def test_labels_from_a_label_service_join_in_either_order_once(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col, modeltap.Client(col.addr) as c:
        ids = [f"req-{i}" for i in range(300)]
        _predict(col.addr, ids[:200])
        # Labels for 200 stored predictions and 100 to come.
        labels = np.arange(300) % 3
        stored = c.submit_labels("m", ids, labels, source_id="day-1")
        assert stored == 300
        assert c.submit_labels("m", ids, labels, source_id="day-1") == 0  # sent again: once
        counts = c.label_counts("m")
        assert counts == {
            "labels": 300,
            "labelled": 300,
            "corrections": 0,
            "joined": 200,
            "unjoined": 100,
        }
        _predict(col.addr, ids[200:])  # the predictions come after their labels
        assert c.label_counts("m")["joined"] == 300
        # A correction for one id: the latest (by event time) wins.
        assert c.submit_labels("m", ["req-5"], [0], ts=[2e9]) == 1
        row = c.labels("m", request_ids=["req-5"]).to_pylist()
        assert len(row) == 1
        assert row[0]["label"] == 0.0
        assert c.labels("m", request_ids=["req-5"], history=True).num_rows == 2
        joined = c.labelled("m").to_pylist()
        assert len(joined) == 300
        by_id = {r["request_id"]: r for r in joined}
        assert by_id["req-7"]["prediction"] == 7 % 3
        assert by_id["req-7"]["label"] == 7 % 3
        # Performance through the collector: the first 200 predictions
        # (i % 3) are right but the corrected one; the last 100 were logged
        # as j % 3 for req-(200 + j), whose labels are (200 + j) % 3.
        perf = c.performance("m", window_s=366 * 86400).to_pylist()
        assert len(perf) == 1
        assert (perf[0]["n"], perf[0]["n_labelled"]) == (300, 300)
        right = sum(1 for i in range(200) if i != 5) + sum(
            1 for j in range(100) if j % 3 == (200 + j) % 3
        )
        assert right == 199
        assert perf[0]["accuracy"] == pytest.approx(right / 300, abs=1e-12)
        assert perf[0]["accuracy_lo"] < perf[0]["accuracy"] < perf[0]["accuracy_hi"]


def test_class_text_and_number_labels_and_what_is_refused(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col, modeltap.Client(col.addr) as c:
        _predict(col.addr, ["a", "b", "c"])
        assert c.submit_labels("m", ["a", "b"], ["cat", "dog"]) == 2
        assert c.submit_labels("m", ["c"], [0.25]) == 1
        rows = {r["request_id"]: r for r in c.labels("m").to_pylist()}
        assert (rows["a"]["kind"], rows["a"]["label_text"]) == ("label", "cat")
        assert (rows["c"]["kind"], rows["c"]["label"]) == ("number", 0.25)
        with pytest.raises(ValueError, match="row 1: a label that is NaN"):
            c.submit_labels("m", ["a", "b"], [1.0, float("nan")])
        with pytest.raises(ValueError, match="row 0: no request id"):
            c.submit_labels("m", [""], [1])
        with pytest.raises(ValueError, match="2 labels for 1 request ids"):
            c.submit_labels("m", ["a"], [1, 2])
        with pytest.raises(grpc.RpcError) as e:
            c.submit_labels("no-such-model", ["a"], [1])
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no predictions of model 'no-such-model'" in (e.value.details() or "")
        assert c.label_counts("m")["labels"] == 3  # nothing of the refused calls


def test_a_label_batch_resent_after_a_restart_is_stored_once(tmp_path):
    path = tmp_path / "s.duckdb"
    data = _core.encode_label_batch("f" * 32, 7, "m", "", ["x", "y"], [1, 0], None)
    with BackgroundCollector(path) as col:
        _predict(col.addr, ["x", "y"])
        with grpc.insecure_channel(col.addr) as ch:
            ack = ch.unary_unary("/modeltap.v1.Collector/SubmitLabels")(data, timeout=10)
        assert _core.decode_export_response(ack) == (True, False, 0)
    with BackgroundCollector(path) as col:
        with grpc.insecure_channel(col.addr) as ch:
            ack = ch.unary_unary("/modeltap.v1.Collector/SubmitLabels")(data, timeout=10)
            accepted, duplicate, _ = _core.decode_export_response(ack)
            assert (accepted, duplicate) == (True, True)
            # Records go to Export, not SubmitLabels.
            record_batch = []
            a = modeltap.Agent("m", "1", sink=record_batch.append, metrics_interval=None)
            a.log([1.0, 2.0], 1)
            a.flush(10)
            a.close()
            with pytest.raises(grpc.RpcError) as e:
                ch.unary_unary("/modeltap.v1.Collector/SubmitLabels")(record_batch[0], timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with modeltap.Client(col.addr) as c:
            assert c.label_counts("m")["labels"] == 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modeltap", *args], capture_output=True, text=True, timeout=120
    )


def test_labels_import_of_csv_and_parquet_files(tmp_path: Path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        ids = [f"q{i}" for i in range(1000)]
        _predict(col.addr, ids)
        csv = tmp_path / "labels.csv"
        lines = ["request_id,label,ts"]
        lines += [f"q{i},{i % 2},2026-01-0{1 + i % 5}T00:00:00" for i in range(600)]
        lines[11] = "q10,,2026-01-01T00:00:00"  # no label: left out and named
        lines[21] = ",1,2026-01-01T00:00:00"  # no id
        csv.write_text("\n".join(lines) + "\n")
        out = _cli("labels", "import", str(csv), "--model", "m", "--collector", col.addr, "--json")
        assert out.returncode == 1, out.stderr  # bad rows: exit status says so
        got = json.loads(out.stdout)
        assert got["rows"] == 600
        assert got["stored"] == 598
        assert got["bad_rows"] == 2
        assert [b["row"] for b in got["bad"]] == [10, 20]
        again = json.loads(
            _cli(
                "labels", "import", str(csv), "--model", "m", "--collector", col.addr, "--json"
            ).stdout
        )
        assert (again["stored"], again["already_stored"]) == (0, 598)  # the same file: once
        pqf = tmp_path / "more.parquet"
        pq.write_table(
            pa.table({"request_id": ids[600:], "label": pa.array(["yes", "no"] * 200)}), pqf
        )
        out = _cli("labels", "import", str(pqf), "--model", "m", "--collector", col.addr)
        assert out.returncode == 0, out.stderr
        assert "400 labels stored for m" in out.stdout
        status = _cli("labels", "status", "--model", "m", "--collector", col.addr, "--json")
        s = json.loads(status.stdout)
        assert (s["labels"], s["joined"], s["unjoined"]) == (998, 998, 0)
        missing = _cli("labels", "import", str(tmp_path / "none.csv"), "--model", "m")
        assert missing.returncode != 0
        assert "no file" in missing.stderr


def test_labels_from_an_agent_reach_the_store_once_and_join(tmp_path):
    """An agent logs predictions and, later, their labels (one by one, a
    RequestIds, a correction): the collector stores each label once, joins
    them, and counts them among the agent's counters."""
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        a = modeltap.Agent("m", "1", collector=col.addr, metrics_interval=None)
        ids = a.log_batch(np.random.default_rng(0).normal(size=(500, 3)), np.arange(500) % 2)
        one = a.log([1.0, 2.0, 3.0], "cat", request_id="single")
        a.log_label(one, "dog")
        assert a.log_labels(ids, np.arange(500) % 2) == 500
        a.log_label(ids[3], 0, ts=2e9)  # a correction, later in event time
        assert a.flush(30)
        s = a.stats()
        a.close()
        assert s["labels"] == 502
        assert s["labels_dropped"] == 0
        with modeltap.Client(col.addr) as c:
            counts = c.label_counts("m")
            assert counts == {
                "labels": 502,
                "labelled": 501,
                "corrections": 1,
                "joined": 501,
                "unjoined": 0,
            }
            joined = {r["request_id"]: r for r in c.labelled("m").to_pylist()}
            assert joined["single"]["prediction_label"] == "cat"
            assert joined["single"]["label_text"] == "dog"
            assert joined[ids[3]]["label"] == 0.0
            assert joined[ids[4]]["label"] == 0.0
            assert joined[ids[5]]["label"] == 1.0
            got = c.sql("SELECT max(labels) AS n FROM agent_counters").column("n")[0].as_py()
            assert got == 502


def test_a_label_time_past_what_the_store_holds_is_refused_alone(tmp_path):
    """A time the store cannot hold (past 2262) is the label's own fault:
    it is counted invalid, and the records and labels of its batch are
    stored (the collector would refuse a whole batch carrying it)."""
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        a = modeltap.Agent("m", "1", collector=col.addr, metrics_interval=None)
        a.log([1.0, 2.0], 1, request_id="r1")
        a.log_label("r1", 1, ts=2**63)  # int: Unix nanoseconds, past 2262
        a.log_label("r1", 0, ts=1.9e9)  # float: Unix seconds
        assert a.log_labels(["r1", "r1"], [1, 1], ts=[float("inf"), 2**63 - 1]) == 0
        assert a.flush(30)
        s = a.stats()
        a.close()
        assert s["invalid"] == 3
        assert s["labels"] == 1
        with modeltap.Client(col.addr) as c:
            assert c.label_counts("m")["labels"] == 1
            assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == 1
            with pytest.raises(ValueError, match="row 0: not a time"):
                c.submit_labels("m", ["r1"], [1], ts=[2**64 - 1])
            assert c.submit_labels("m", ["r1"], [1], ts=[1_900_000_000 * 10**9]) == 1
            ts = c.labels("m", history=True).column("ts").to_pylist()
            assert sorted(t.timestamp() for t in ts) == [1.9e9, 1.9e9]
