"""Latency per stage and end to end, summed from the stage histograms of
the stored window profiles (whatever their references)."""

from __future__ import annotations

import contextlib
from typing import Any

from modeltap import _core
from modeltap.analysis.drift import blob_chunks
from modeltap.reads import Reads, time_range


class StageTotals:
    """Stage latencies summed over window profiles (whatever their
    references); a damaged part is left out, not the range."""

    def __init__(self) -> None:
        self._acc: dict[tuple[str, bool], dict[str, Any]] = {}

    def add(self, blobs: list[bytes]) -> None:
        try:
            stages = _core.stage_latency(blobs)
        except _core.BatchDecodeError:
            stages = []
            for b in blobs:
                with contextlib.suppress(_core.BatchDecodeError):
                    stages.extend(_core.stage_latency([b]))
        for st in stages:
            key = (st["name"], st["root"])
            have = self._acc.get(key)
            if have is None:
                self._acc[key] = st
                continue
            have["counts"] = [a + b for a, b in zip(have["counts"], st["counts"], strict=False)]
            have["sum"] += st["sum"]
            have["errors"] += st["errors"]

    def summary(self) -> list[dict[str, Any]]:
        """Per stage and end to end: spans, errors, mean, p50/p95/p99."""
        from modeltap.tracing import stage_summary

        return stage_summary(list(self._acc.values()))


def stage_latency(
    reads: Reads,
    model: str,
    version: str | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> list[dict[str, Any]]:
    """Latency per stage and end to end of a model (every version unless
    given) over windows starting in ``[since, until)``, summed from every
    agent's stored window profiles (see ``tracing.stage_summary``)."""
    conds = ["model = ?"]
    params: list[Any] = [model]
    if version is not None:
        conds.append("version = ?")
        params.append(version)
    time_range(conds, params, "window_start", since_ns, until_ns)
    totals = StageTotals()
    query = f"SELECT profile FROM window_profiles WHERE {' AND '.join(conds)}"
    for blobs in blob_chunks(reads, query, params):
        totals.add(blobs)
    return totals.summary()
