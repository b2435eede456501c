"""The exporter thread: takes encoded batches from the native pipeline and
delivers them to their destination, reporting each batch's fate back so the
agent's counters always add up."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from modeltap import _core

log = logging.getLogger("modeltap")


class Destination(Protocol):
    """Where batches go. ``deliver`` returns the outcome for the batch:
    ``"shipped"``, ``"spooled"``, ``"dropped_spool"`` or ``"discarded"``."""

    def deliver(self, data: bytes, n_records: int) -> str:
        """Delivers one encoded batch."""
        ...

    def close(self, timeout_s: float) -> None:
        """Releases resources."""
        ...


class DiscardDestination:
    """Local-only agents (no collector, no sink): batches are released after
    the agent has counted and profiled their records."""

    def deliver(self, data: bytes, n_records: int) -> str:
        return "discarded"

    def close(self, timeout_s: float) -> None:
        return None


class SinkDestination:
    """Hands each encoded batch (``bytes``) to a callable. A sink that
    returns normally has taken the batch (``shipped``); one that raises has
    not, and the batch is counted as ``discarded`` with the error logged."""

    def __init__(self, sink: Callable[[bytes], object], on_error: Callable[[], None]) -> None:
        self._sink = sink
        self._on_error = on_error

    def deliver(self, data: bytes, n_records: int) -> str:
        try:
            self._sink(data)
        except Exception:
            self._on_error()
            log.exception("modeltap: sink failed; %d records discarded", n_records)
            return "discarded"
        return "shipped"

    def close(self, timeout_s: float) -> None:
        return None


class Exporter:
    """A daemon thread moving batches from a recorder to a destination."""

    def __init__(self, recorder: _core.Recorder, destination: Destination) -> None:
        self._rec = recorder
        self._dest = destination
        self._thread = threading.Thread(target=self._run, name="modeltap-exporter", daemon=True)

    def start(self) -> None:
        """Starts the thread."""
        self._thread.start()

    def _deliver(self, seq: int, n: int, data: bytes) -> None:
        try:
            outcome = self._dest.deliver(data, n)
        except Exception:
            self._rec.count_error()
            log.exception("modeltap: delivery failed; %d records discarded", n)
            outcome = "discarded"
        self._rec.settle(seq, outcome)

    def _run(self) -> None:
        while True:
            item = self._rec.take_batch(1.0)
            if item is None:
                if self._rec.finished():
                    return
                continue
            self._deliver(*item)

    def close(self, timeout_s: float) -> None:
        """Waits up to ``timeout_s`` for the thread to deliver what the
        (already shut down) recorder queued; what is still queued after
        that is counted as discarded."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            left = 0
            while (item := self._rec.take_batch(0.0)) is not None:
                seq, n, _ = item
                self._rec.settle(seq, "discarded")
                left += n
            if left:
                log.warning("modeltap: shutdown timeout reached; %d records not delivered", left)
        self._dest.close(max(deadline - time.monotonic(), 0.0))
