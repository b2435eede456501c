from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import modeltap


class Collected:
    """Batches an agent delivered to its sink, decoded on demand."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self.lock:
            self.raw.append(bytes(data))

    def batches(self) -> list[dict[str, Any]]:
        with self.lock:
            return [modeltap.decode_batch(b) for b in self.raw]

    def rows(self) -> dict[str, Any]:
        """All records of all batches, concatenated column by column."""
        bs = [b for b in self.batches() if b["n_records"] > 0]
        assert bs, "no records delivered"
        return {
            "features": np.concatenate([b["features"] for b in bs]),
            "request_ids": [r for b in bs for r in b["request_ids"]],
            "predictions": np.concatenate([b["predictions"] for b in bs]),
            "flags": np.concatenate([b["flags"] for b in bs]),
            "latency_s": np.concatenate([b["latency_s"] for b in bs]),
            "batches": bs,
        }


@pytest.fixture
def collected() -> Collected:
    return Collected()


@pytest.fixture
def agent(collected: Collected) -> Iterator[modeltap.Agent]:
    a = modeltap.Agent("fraud", "3.2.0", sink=collected, metrics_interval=None)
    yield a
    a.close()
