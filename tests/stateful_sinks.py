"""Sinks for the stateful agent tests: one that keeps every batch it took and
can be switched, while the agent runs, to stall or to fail."""

from __future__ import annotations

import os
import time


class SinkFailure(Exception):
    """What a failing sink raises."""


class ModalSink:
    """Keeps the bytes of every batch it accepted, in order.

    ``mode`` is ``"ok"`` (take the batch), ``"stall"`` (sleep ``stall_s``,
    then take it), ``"raise"`` (refuse it with :class:`SinkFailure`) or
    ``"exit"`` (refuse it with ``SystemExit``, a ``BaseException``). A
    refused batch is not kept: the agent counts it as discarded.

    No lock: ``list.append`` is atomic under the GIL, and a lock held by the
    parent's exporter thread at the moment of a ``fork()`` would stay held
    for ever in the child.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.stall_s = 0.0
        self.raw: list[bytes] = []
        self.calls = 0
        self.refused = 0
        self.in_call = 0
        self.pid = os.getpid()

    def __call__(self, data: bytes) -> None:
        self.calls += 1
        self.in_call += 1
        try:
            mode = self.mode
            if mode == "stall":
                time.sleep(self.stall_s)
            elif mode == "raise":
                self.refused += 1
                raise SinkFailure("sink refused the batch")
            elif mode == "exit":
                self.refused += 1
                raise SystemExit("sink exited")
            self.raw.append(bytes(data))
        finally:
            self.in_call -= 1

    def snapshot(self, start: int = 0) -> list[bytes]:
        """The batches taken so far, from index ``start``."""
        return list(self.raw[start:])
