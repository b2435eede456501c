"""@agent.monitor wraps sync and async predict functions."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest


def test_sync_function_logs_inputs_outputs_latency(agent, collected):
    @agent.monitor
    def predict(x):
        return float(sum(x))

    assert predict([1.0, 2.0]) == 3.0
    assert predict.__name__ == "predict"
    agent.flush(10)
    b = collected.batches()[0]
    np.testing.assert_array_equal(b["features"], [[1.0, 2.0]])
    np.testing.assert_array_equal(b["predictions"], [3.0])
    assert b["latency_s"][0] >= 0


def test_exception_is_recorded_and_reraised_unchanged(agent, collected):
    class ModelDown(RuntimeError):
        pass

    err = ModelDown("gpu fell off the bus")

    @agent.monitor
    def predict(x):
        raise err

    with pytest.raises(ModelDown) as e:
        predict([1.0, 2.0])
    assert e.value is err
    agent.flush(10)
    b = collected.batches()[0]
    assert b["errors"][0][0] == 0
    assert b["errors"][0][1].endswith("ModelDown")
    assert b["errors"][0][2] == "gpu fell off the bus"
    assert b["flags"][0] & (8 | 16)  # ERROR, no prediction
    assert agent.stats()["inference_errors"] == 1


def test_async_function(agent, collected):
    @agent.monitor
    async def predict(x):
        await asyncio.sleep(0.01)
        return 1

    assert asyncio.run(predict([5.0])) == 1
    agent.flush(10)
    b = collected.batches()[0]
    np.testing.assert_array_equal(b["features"], [[5.0]])
    assert b["latency_s"][0] >= 0.01


def test_async_exception(agent, collected):
    @agent.monitor
    async def predict(x):
        raise KeyError("k")

    with pytest.raises(KeyError):
        asyncio.run(predict([5.0]))
    agent.flush(10)
    assert collected.batches()[0]["errors"][0][1] == "KeyError"


def test_method_and_named_argument(agent, collected):
    class Model:
        @agent.monitor
        def predict(self, x, scale=1.0):
            return x[0] * scale

    m = Model()
    assert m.predict([2.0], scale=3.0) == 6.0
    assert m.predict(x=[4.0]) == 4.0
    agent.flush(10)
    b = collected.batches()[0]
    np.testing.assert_array_equal(b["features"], [[2.0], [4.0]])


def test_explicit_features_arg(agent, collected):
    @agent.monitor(features_arg="features")
    def predict(model_name, features):
        return 7

    predict("m", [1.0, 1.0])
    agent.flush(10)
    np.testing.assert_array_equal(collected.batches()[0]["features"], [[1.0, 1.0]])


def test_batch_input_is_logged_as_batch(agent, collected):
    @agent.monitor
    def predict(X):
        return X.sum(axis=1)

    X = np.arange(12.0).reshape(4, 3)
    predict(X)
    agent.flush(10)
    b = collected.batches()[0]
    np.testing.assert_array_equal(b["features"], X)
    np.testing.assert_array_equal(b["predictions"], X.sum(axis=1))


def test_a_recording_problem_never_breaks_the_call(agent):
    @agent.monitor
    def predict():  # no input argument to record
        return 1

    assert predict() == 1
    assert agent.stats()["errors"] == 1
