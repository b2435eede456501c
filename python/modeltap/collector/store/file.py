"""``modeltap.Store``: the read API on a store file no collector is
writing (DuckDB lets one process write a database file; a running
collector is read through its address, see :func:`modeltap.connect`)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from modeltap import analysis
from modeltap.analysis.performance import PerformanceReads
from modeltap.collector.store.duckdb_backend import DuckDBBackend
from modeltap.collector.store.errors import StoreVersionError
from modeltap.collector.store.schema import SCHEMA_VERSION
from modeltap.reads import Reads, TimeArg, arrow_reader, parse_time
from modeltap.report import Reporting

STREAM_ROWS = 1_000_000  # rows of a streamed result a batch at a time


class StoreLocked(OSError):
    """The store file is held by another process (a running collector)."""


def _open(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(path, read_only=read_only)
    except duckdb.IOException as e:
        text = str(e)
        if "lock" not in text.lower():
            raise
        pid = re.search(r"PID (\d+)", text)
        holder = f" (process {pid.group(1)})" if pid else ""
        raise StoreLocked(
            f"{path} is held by a running collector{holder}: DuckDB lets one process "
            "write a store file and no other process open it meanwhile; read it through "
            "the collector instead (--collector HOST:PORT on the command line, "
            "modeltap.connect('HOST:PORT') or modeltap.Client in Python), or stop the "
            "collector first"
        ) from None


class Store(Reporting, PerformanceReads, Reads):
    """Reads a collector's store file from Python, returning Arrow tables
    (or pandas DataFrames): the read API of :class:`modeltap.Client`, on a
    store no collector is writing. Raises :class:`StoreLocked` (an
    ``OSError``) when a running collector holds the file, and
    ``StoreVersionError`` for a store written by a newer modeltap.

    >>> with modeltap.Store("modeltap.duckdb") as store:           # doctest: +SKIP
    ...     df = store.predictions("fraud", since="2026-01-01", as_pandas=True)
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool = True) -> None:
        self.path = str(path)
        self.con = _open(self.path, read_only)
        try:
            version = DuckDBBackend.stored_version(self.con)
        except BaseException:
            self.con.close()
            raise
        if version > SCHEMA_VERSION:
            self.con.close()
            raise StoreVersionError(
                f"{self.path} has schema version {version}, written by a newer modeltap "
                f"(this one reads versions up to {SCHEMA_VERSION}): upgrade modeltap to read it"
            )
        self.schema_version = version

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection."""
        self.con.close()

    def stream(
        self, query: str, params: Sequence[Any] | None = None, *, rows: int | None = None
    ) -> pa.RecordBatchReader:
        """Runs one SQL query; its result a batch (of ``rows`` rows) at a time."""
        return arrow_reader(self.con.cursor(), query, params, rows or STREAM_ROWS)

    def drift(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        rules: Mapping[str, tuple[str, float]] | None = None,
    ) -> Any:
        """Drift of a model (newest version unless given) over a time range,
        merged from the stored window profiles of every agent."""
        from modeltap.drift import DriftReport

        return DriftReport(
            analysis.drift_over_range(
                self, model, version, parse_time(since), parse_time(until), rules
            )
        )

    def trace(self, trace_id: str) -> dict[str, Any]:
        """One trace: its spans and the prediction records logged in it."""
        return analysis.trace(self, trace_id)

    def traces(
        self,
        model: str | None = None,
        slowest: int = 10,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> list[dict[str, Any]]:
        """The slowest traces with their stage breakdown."""
        return analysis.slowest_traces(self, model, slowest, parse_time(since), parse_time(until))

    def stage_latency(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> list[dict[str, Any]]:
        """Latency per stage and end to end (p50/p95/p99 seconds), merged
        from the stored window profiles of every agent."""
        return analysis.stage_latency(self, model, version, parse_time(since), parse_time(until))
