"""System metrics ride on the batches; GPU readings are absent without NVML."""

from __future__ import annotations

import sys
import time
import types

import psutil

import modeltap
from modeltap import system


def samples(collected):
    return [s for b in collected.batches() for s in b["system"]]


def test_process_metrics_are_sampled_and_shipped(collected):
    a = modeltap.Agent("m", sink=collected, metrics_interval=0.05, flush_interval=0.1)
    a.log([1.0], 0)
    deadline = time.time() + 10
    while len(samples(collected)) < 3 and time.time() < deadline:
        a.log([1.0], 0)
        time.sleep(0.05)
    a.close()
    got = samples(collected)
    assert len(got) >= 3
    s = got[-1]
    assert s["rss_bytes"] > 10 * 1024 * 1024
    assert s["threads"] >= 3  # main, drain, exporter, sampler
    assert 0 <= s["process_cpu_percent"] <= 100 * psutil.cpu_count()
    assert s["system_memory_total_bytes"] == psutil.virtual_memory().total
    assert s["unix_nano"] <= time.time_ns()


def test_gpu_fields_absent_without_nvml(collected, monkeypatch):
    monkeypatch.setattr(system.Nvml, "__init__", _no_nvml)
    a = modeltap.Agent("m", sink=collected, metrics_interval=0.05, flush_interval=0.1)
    time.sleep(0.4)
    a.close()
    got = samples(collected)
    assert got, "system samples are shipped even without records"
    assert all("gpus" not in s for s in got)  # absent, not zeros


def _no_nvml(self):
    self.available = False
    self.reason = "test"
    self._nvml = None
    self._handles = []


class FakeNvml(types.ModuleType):
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, fail_reads=False):
        super().__init__("pynvml")
        self.fail_reads = fail_reads

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"Fake GPU"

    def nvmlDeviceGetUtilizationRates(self, h):
        if self.fail_reads:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return types.SimpleNamespace(gpu=40 + h, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=1000 * (h + 1), total=8000)

    def nvmlDeviceGetTemperature(self, h, kind):
        return 60 + h


def test_gpu_readings_through_pynvml(collected, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    a = modeltap.Agent("m", sink=collected, metrics_interval=0.05, flush_interval=0.1)
    time.sleep(0.4)
    a.close()
    got = samples(collected)
    assert got
    gpus = got[-1]["gpus"]
    assert [g["index"] for g in gpus] == [0, 1]
    assert gpus[1]["utilization_percent"] == 41
    assert gpus[1]["memory_used_bytes"] == 2000
    assert gpus[0]["memory_total_bytes"] == 8000
    assert gpus[0]["temperature_celsius"] == 60
    assert gpus[0]["name"] == "Fake GPU"


def test_nvml_errors_never_break_logging(collected, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_reads=True))
    a = modeltap.Agent("m", sink=collected, metrics_interval=0.05, flush_interval=0.1)
    for i in range(20):
        a.log([float(i)], 0)
        time.sleep(0.02)
    a.close()
    s = a.stats()
    assert s["errors"] >= 1
    assert s["shipped"] == 20
    got = samples(collected)
    assert got
    assert all("gpus" not in x for x in got)
    assert any("NVML" in r.getMessage() for r in caplog.records)
