"""The collector's memory budget: batches are shed (RESOURCE_EXHAUSTED, the
agents back off and send them again) while the process' resident memory is
near the budget and there is work in hand whose storing gives memory back.

Every buffer on the way in has a bound of its own (requests in flight,
bytes pending, the writer's queue, DuckDB's ``memory_limit``), but their
sum, the allocator's slack and what the reads hold can still pass what the
machine can give. This guard bounds the total: it reads the process' RSS
(at most every ``refresh_s``) on each Export and refuses new batches above
the high-water mark. It never sheds when nothing is pending or queued, so a
collector whose memory stays high for another reason (DuckDB's cached
blocks, the allocator keeping freed pages) keeps taking batches one group
at a time instead of refusing for good.
"""

from __future__ import annotations

import contextlib
import time

import psutil

# Default budget of the collector process' resident memory.
DEFAULT_MAX_MEMORY_MB = 512.0
# Room left below the budget for the requests already admitted.
HEADROOM_BYTES = 48 << 20


class MemoryGuard:
    """Decides whether a new batch may come in (see the module's text)."""

    def __init__(self, max_memory_mb: float | None, *, refresh_s: float = 0.02) -> None:
        if max_memory_mb is not None and not max_memory_mb > 0:
            raise ValueError(f"max_memory_mb must be positive, got {max_memory_mb!r}")
        self.max_bytes = None if max_memory_mb is None else int(max_memory_mb * 2**20)
        # Shed past this; never below half the budget however small it is.
        self.high_bytes: int | None = None
        if self.max_bytes is not None:
            self.high_bytes = max(self.max_bytes // 2, self.max_bytes - HEADROOM_BYTES)
        self.refresh_s = refresh_s
        self._proc = psutil.Process()
        self._rss = 0
        self._read_at = -float("inf")
        self.peak_rss = 0
        self.shed = 0  # batches refused for memory

    def rss(self) -> int:
        """The process' resident bytes, read at most every ``refresh_s``."""
        now = time.monotonic()
        if now - self._read_at >= self.refresh_s:
            with contextlib.suppress(psutil.Error):  # else the last reading
                self._rss = self._proc.memory_info().rss
            self._read_at = now
            self.peak_rss = max(self.peak_rss, self._rss)
        return self._rss

    def refusal(self, backlog: bool) -> str | None:
        """Why a new batch must wait, or None when it may come in;
        ``backlog``: batches are pending or queued (storing them frees
        memory)."""
        if self.high_bytes is None or not backlog:
            return None
        rss = self.rss()
        if rss < self.high_bytes:
            return None
        self.shed += 1
        assert self.max_bytes is not None
        return (
            f"collector memory {rss / 2**20:.0f} MiB is at its budget "
            f"({self.max_bytes / 2**20:.0f} MiB, --max-memory-mb) while stored batches "
            "free some; retry later"
        )
