"""Agent.log: every accepted input form round-trips exactly through a batch."""

from __future__ import annotations

import os
import re
import socket
import time

import numpy as np
import pytest

import modeltap

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_numpy_list_tuple_rows_round_trip(agent, collected):
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(30, 20))
    ids = []
    for i, r in enumerate(rows):
        form = (r, r.tolist(), tuple(r.tolist()))[i % 3]
        ids.append(agent.log(form, float(i), latency_s=0.001 * i))
    assert agent.flush(10)
    got = collected.rows()
    np.testing.assert_array_equal(got["features"], rows)  # exact, bit for bit
    np.testing.assert_array_equal(got["predictions"], np.arange(30.0))
    np.testing.assert_array_equal(got["latency_s"], 0.001 * np.arange(30))
    assert got["request_ids"] == ids
    assert all(HEX32.match(i) for i in ids)
    assert len(set(ids)) == 30


def test_dict_features_take_names_from_first_record(collected):
    a = modeltap.Agent("m", sink=collected, metrics_interval=None)
    a.log({"b": 2.0, "a": 1.0}, 0)
    a.log({"a": 10.0, "b": 20.0}, 1)  # order of keys does not matter
    a.flush(10)
    a.close()
    b = collected.batches()[0]
    assert b["feature_names"] == ["b", "a"]
    np.testing.assert_array_equal(b["features"], [[2.0, 1.0], [20.0, 10.0]])
    assert a.feature_names == ["b", "a"]


def test_declared_features_name_array_columns(collected):
    a = modeltap.Agent("m", features=["x", "y"], sink=collected, metrics_interval=None)
    a.log(np.array([1.0, 2.0]), 0)
    a.flush(10)
    a.close()
    assert collected.batches()[0]["feature_names"] == ["x", "y"]


def test_default_names_for_arrays(agent, collected):
    agent.log([1, 2, 3], 0)
    agent.flush(10)
    assert collected.batches()[0]["feature_names"] == ["f0", "f1", "f2"]


def test_categorical_strings_and_ints_travel_as_codes(collected):
    a = modeltap.Agent(
        "m",
        features=["amount", "country", "bucket"],
        categorical=["country", "bucket"],
        sink=collected,
        metrics_interval=None,
    )
    values = [("de", 3), ("fr", 7), ("de", 3), (None, 7), ("jp", 1)]
    for i, (c, k) in enumerate(values):
        a.log([float(i), c, k], 0)
    a.log({"amount": 9.5, "country": "fr", "bucket": 1}, 1)
    a.flush(10)
    a.close()
    b = collected.batches()[0]
    assert b["feature_kinds"] == ["numeric", "categorical", "categorical"]
    assert b["categories"]["country"] == ["de", "fr", "de", None, "jp", "fr"]
    assert b["categories"]["bucket"] == ["3", "7", "3", "7", "1", "1"]
    # codes are small integers, equal for equal values
    codes = b["features"][:, 1]
    assert codes[0] == codes[2]
    assert codes[1] == codes[5]
    assert np.isnan(codes[3])
    np.testing.assert_array_equal(b["features"][:, 0], [0, 1, 2, 3, 4, 9.5])


def test_prediction_forms(agent, collected):
    agent.log([0.0], 0.25)  # number
    agent.log([1.0], 2)  # int class
    agent.log([2.0], "spam")  # str class label
    agent.log([3.0], np.int64(5))  # numpy int
    agent.log([4.0], "ham")
    agent.log([5.0], "spam")
    agent.flush(10)
    b = collected.batches()[0]
    assert b["prediction_kind"] == ["number", "int", "label", "int", "label", "label"]
    assert b["labels"] == [None, None, "spam", None, "ham", "spam"]
    np.testing.assert_array_equal(b["predictions"][[0, 1, 3]], [0.25, 2, 5])


def test_vector_predictions_and_probabilities(collected):
    a = modeltap.Agent("m", sink=collected, metrics_interval=None)
    a.log([1.0], np.array([0.5, 1.5]), np.array([0.2, 0.3, 0.5]))
    a.log([2.0], [2.5, 3.5], [0.1, 0.9])  # fewer classes
    a.log([3.0], [4.5, 5.5, 6.5], [0.1, 0.1, 0.1, 0.1, 0.6])  # wider than the first
    a.log([4.0], [7.5, 8.5])
    a.flush(10)
    a.close()
    b = collected.batches()[0]
    np.testing.assert_array_equal(
        b["predictions"],
        [[0.5, 1.5, np.nan], [2.5, 3.5, np.nan], [4.5, 5.5, 6.5], [7.5, 8.5, np.nan]],
    )
    assert list(b["probability_count"]) == [3, 2, 5, 0]
    p = b["probabilities"]
    np.testing.assert_array_equal(p[0, :3], [0.2, 0.3, 0.5])
    np.testing.assert_array_equal(p[2], [0.1, 0.1, 0.1, 0.1, 0.6])
    assert np.isnan(p[3]).all()


def test_given_request_id_error_and_attributes(agent, collected):
    rid = agent.log([1.0, 2.0], None, request_id="req-42", error=TimeoutError("slow backend"))
    assert rid == "req-42"
    agent.log([1.0, 2.0], 1, attributes={"tenant": "acme", "retry": 2})
    agent.flush(10)
    b = collected.batches()[0]
    assert b["request_ids"][0] == "req-42"
    assert b["errors"] == [(0, "TimeoutError", "slow backend")]
    assert b["attributes"] == {1: {"tenant": "acme", "retry": "2"}}
    assert b["flags"][0] & 8  # ERROR
    assert agent.stats()["inference_errors"] == 1


def test_model_metadata_on_every_batch(collected):
    t0 = time.time_ns()
    a = modeltap.Agent(
        "fraud",
        "3.2.0",
        params={"threshold": 0.7, "temperature": 1},
        sink=collected,
        metrics_interval=None,
        batch_size=2,
    )
    for i in range(5):
        a.log([float(i)], i)
    a.flush(10)
    a.close()
    bs = collected.batches()
    assert [b["batch_seq"] for b in bs] == [0, 1, 2]
    for b in bs:
        m = b["model"]
        assert m["model"] == "fraud"
        assert m["version"] == "3.2.0"
        assert m["params"] == {"threshold": "0.7", "temperature": "1"}
        assert m["host"] == socket.gethostname()
        assert m["pid"] == os.getpid()
        assert m["agent_id"] == a.agent_id == b["agent_id"]
        assert HEX32.match(m["agent_id"])
        assert t0 <= m["agent_start_unix_nano"] <= time.time_ns()
        assert m["agent_version"] == modeltap.__version__
        assert b["schema_version"] == modeltap.SCHEMA_VERSION


def test_timestamps_are_event_times(agent, collected):
    before = time.time_ns()
    agent.log([1.0], 0)
    after = time.time_ns()
    agent.flush(10)
    ts = collected.batches()[0]["timestamp_unix_nano"]
    assert before <= int(ts[0]) <= after


def test_records_logged_from_many_threads(agent, collected):
    import threading

    def work(k):
        for i in range(2000):
            agent.log([float(k), float(i)], k)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert agent.flush(10)
    f = collected.rows()["features"]
    assert len(f) == 8000
    for k in range(4):
        np.testing.assert_array_equal(np.sort(f[f[:, 0] == k, 1]), np.arange(2000.0))


def test_flush_returns_immediately_without_records(agent):
    assert agent.flush(1.0)


@pytest.mark.parametrize("bad", [object(), "text", 3.5])
def test_features_of_the_wrong_type_are_rejected_not_raised(agent, bad):
    agent.log([1.0, 2.0], 0)
    agent.log(bad, 0)
    assert agent.stats()["invalid"] == 1
