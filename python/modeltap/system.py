"""Resource sampling of the serving process: CPU, memory and threads through
psutil, and per-GPU utilisation, memory and temperature through NVML
(pynvml) where a GPU and its driver are present.

Without NVML the GPU readings are *absent* (``gpus is None``), never zeros,
and an NVML error never reaches the logging path: it is counted and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

log = logging.getLogger("modeltap")


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML reports it."""

    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_celsius: float


@dataclass(frozen=True)
class SystemReading:
    """One sample of the process and host."""

    unix_nano: int
    process_cpu_percent: float
    rss_bytes: int
    threads: int
    system_cpu_percent: float
    system_memory_used_bytes: int
    system_memory_total_bytes: int
    gpus: list[GpuReading] | None = field(default=None)


class Nvml:
    """NVML through pynvml, opened once. ``available`` is False when the
    library, the driver or a GPU is missing; every reading then returns
    ``None``."""

    def __init__(self) -> None:
        self.available = False
        self.reason = ""
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
            self.available = count > 0
            if not self.available:
                self.reason = "NVML reports no GPU"
        except Exception as e:  # no driver, no library, no device
            self.reason = f"NVML unavailable: {e}"

    def read(self) -> list[GpuReading] | None:
        """Current readings, or ``None`` when NVML is not available."""
        if not self.available:
            return None
        nv = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            name = nv.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            util = nv.nvmlDeviceGetUtilizationRates(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            temp = nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
            out.append(
                GpuReading(
                    index=i,
                    name=str(name),
                    utilization_percent=float(util.gpu),
                    memory_used_bytes=int(mem.used),
                    memory_total_bytes=int(mem.total),
                    temperature_celsius=float(temp),
                )
            )
        return out


class SystemSampler:
    """Samples the process every ``interval_s`` on a daemon thread and hands
    each :class:`SystemReading` to ``emit``. Failures are counted through
    ``on_error`` and never stop the sampler."""

    def __init__(
        self,
        emit: Callable[[SystemReading], None],
        interval_s: float = 5.0,
        on_error: Callable[[], None] | None = None,
        nvml: Nvml | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("metrics interval must be positive")
        self.interval_s = interval_s
        self._emit = emit
        self._on_error = on_error or (lambda: None)
        self._nvml = nvml
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpu_warned = False

    def start(self) -> None:
        """Starts the sampling thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="modeltap-metrics", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stops the thread (waiting up to ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def sample(self) -> SystemReading:
        """Takes one reading now."""
        p = self._proc
        with p.oneshot():
            cpu = p.cpu_percent(None)
            rss = p.memory_info().rss
            threads = p.num_threads()
        vm = psutil.virtual_memory()
        gpus = None
        if self._nvml is None:
            self._nvml = Nvml()
        try:
            gpus = self._nvml.read()
        except Exception as e:
            self._on_error()
            if not self._gpu_warned:
                self._gpu_warned = True
                log.warning("modeltap: NVML reading failed, GPU metrics absent: %s", e)
        return SystemReading(
            unix_nano=time.time_ns(),
            process_cpu_percent=float(cpu),
            rss_bytes=int(rss),
            threads=int(threads),
            system_cpu_percent=float(psutil.cpu_percent(None)),
            system_memory_used_bytes=int(vm.total - vm.available),
            system_memory_total_bytes=int(vm.total),
            gpus=gpus,
        )

    def _run(self) -> None:
        # The first cpu_percent call only sets the baseline.
        try:
            self._proc.cpu_percent(None)
            psutil.cpu_percent(None)
        except Exception:
            self._on_error()
        while not self._stop.wait(self.interval_s):
            try:
                self._emit(self.sample())
            except Exception as e:
                self._on_error()
                log.warning("modeltap: system metrics sample failed: %s", e)
