"""Bad input never raises into the caller by default; strict mode raises."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import modeltap


def make(collected, **kw):
    return modeltap.Agent("m", features=["a", "b"], sink=collected, metrics_interval=None, **kw)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ([1.0, 2.0, 3.0], "expected 2 features"),
        ([1.0], "expected 2 features"),
        (np.zeros(5), "expected 2 features"),
        ({"a": 1.0, "b": 2.0, "zzz": 3.0}, 'unknown feature keys ["zzz"]'),
        (object(), "features must be"),
    ],
)
def test_rejected_records_are_counted_and_warned(collected, caplog, features, message):
    a = make(collected)
    with caplog.at_level(logging.WARNING, logger="modeltap"):
        rid = a.log(features, 1)
    assert isinstance(rid, str)
    s = a.stats()
    assert s["invalid"] == 1
    assert s["logged"] == 1
    assert any(message in r.getMessage() for r in caplog.records if r.name == "modeltap")
    a.close()


@pytest.mark.parametrize(
    ("features", "flag"),
    [
        ([math.nan, 1.0], 1),  # NaN counts as missing
        ([None, 1.0], 1),
        ({"a": 1.0}, 1),  # a missing key is a missing value
        ([math.inf, 1.0], 2),
        (["abc", 1.0], 4),  # non-numeric value for a numeric feature
        (np.array([1.0, -np.inf]), 2),
    ],
)
def test_problem_values_are_kept_and_flagged(collected, features, flag):
    a = make(collected)
    a.log(features, 1)
    a.flush(10)
    a.close()
    b = collected.batches()[0]
    assert b["n_records"] == 1
    assert b["flags"][0] & flag
    s = a.stats()
    assert s["flagged"] == 1
    assert s["invalid"] == 0
    assert s["shipped"] == 1


def test_missing_prediction_is_flagged(collected):
    a = make(collected)
    a.log([1.0, 2.0], None)
    a.flush(10)
    a.close()
    assert collected.batches()[0]["flags"][0] & 16


def test_warnings_are_rate_limited(collected, caplog):
    a = make(collected)
    with caplog.at_level(logging.WARNING, logger="modeltap"):
        for _ in range(100):
            a.log([1.0, 2.0, 3.0], 0)
    assert a.stats()["invalid"] == 100
    assert len([r for r in caplog.records if r.name == "modeltap"]) == 1
    a.close()


@pytest.mark.parametrize(
    "features",
    [[1.0, 2.0, 3.0], [math.nan, 1.0], ["abc", 2.0], {"a": 1.0, "c": 2.0}, [math.inf, 0.0]],
)
def test_strict_mode_raises_invalid_record(collected, features):
    a = make(collected, strict=True)
    with pytest.raises(modeltap.InvalidRecord) as e:
        a.log(features, 1)
    assert str(e.value)
    assert isinstance(e.value, ValueError)
    s = a.stats()
    assert s["invalid"] == 1
    assert s["logged"] == 1
    a.log([1.0, 2.0], 1)  # a good record still goes through
    assert a.flush(10)
    assert a.stats()["shipped"] == 1
    a.close()


def test_strict_log_batch_raises(collected):
    a = make(collected, strict=True)
    with pytest.raises(modeltap.InvalidRecord):
        a.log_batch(np.array([[1.0, np.nan]]), np.array([1.0]))
    with pytest.raises(modeltap.InvalidRecord):
        a.log_batch(np.zeros((3, 5)), np.zeros(3))
    a.close()


def test_bad_arguments_of_other_kinds_never_raise(collected):
    a = make(collected)
    a.log([1.0, 2.0], 1, probabilities="nope", latency_s="slow", attributes=[1, 2])
    a.log([1.0, 2.0], object())
    a.log_batch("not an array", [1])
    a.log_batch(np.zeros((2, 2)), [1, 2, 3])
    a.flush(10)
    s = a.stats()
    assert s["logged"] == s["shipped"] + s["invalid"]
    assert s["invalid"] == 3
    a.close()


def test_categorical_not_among_features_is_a_config_error():
    with pytest.raises(ValueError, match="categorical"):
        modeltap.Agent("m", features=["a"], categorical=["b"], metrics_interval=None)


def test_bad_configuration_raises_at_construction():
    with pytest.raises(ValueError, match="on_full"):
        modeltap.Agent("m", on_full="wait")
    with pytest.raises(ValueError, match="model"):
        modeltap.Agent("")
    with pytest.raises(ValueError, match="metrics_interval"):
        modeltap.Agent("m", metrics_interval=0)
