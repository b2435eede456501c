"""The collector's store, one module a job:

- ``schema.py``: the tables, the schema version and its history, the
  bounds of every column;
- ``decode.py``: an agent's batch into checked Arrow tables;
- ``backend.py``: the :class:`StoreBackend` interface (open and migrate,
  append a group with dedup in one transaction, reads' connections, what
  an error means) and :func:`open_backend`, which picks one for a store;
- ``duckdb_backend.py``: the embedded default, a DuckDB file;
- ``writer.py``: :class:`StoreWriter`, the writer thread (bounded queue,
  group commit, culprit isolation, health);
- ``file.py``: :class:`Store`, the read API on a store file.

The analyses over a store's reads (drift, latency, traces) live in
:mod:`modeltap.analysis`.
"""

from modeltap.analysis.drift import StoredDataInvalid
from modeltap.collector.store.backend import SCHEMES, StoreBackend, open_backend
from modeltap.collector.store.decode import (
    DecodedBatch,
    decode,
    group_tables,
    span_rows_table,
    span_table,
)
from modeltap.collector.store.duckdb_backend import (
    CHECKPOINT_THRESHOLD,
    DuckDBBackend,
    check_memory_limit,
)
from modeltap.collector.store.errors import (
    BatchRejected,
    LimitReached,
    Overloaded,
    StoreUnavailable,
    StoreVersionError,
    WriterError,
)
from modeltap.collector.store.file import Store, StoreLocked
from modeltap.collector.store.schema import (
    ADDED_IN,
    AGENT_COUNTERS,
    MAX_EXPANSION,
    MAX_UNIX_NANO,
    MIN_DECODED_ALLOWANCE,
    SCHEMA_VERSION,
    SPAN_COLUMNS,
    SPAN_KINDS,
    SPAN_STATUS,
    TABLES,
    TS,
)
from modeltap.collector.store.writer import Job, StoreWriter

__all__ = [
    "ADDED_IN",
    "AGENT_COUNTERS",
    "CHECKPOINT_THRESHOLD",
    "MAX_EXPANSION",
    "MAX_UNIX_NANO",
    "MIN_DECODED_ALLOWANCE",
    "SCHEMA_VERSION",
    "SCHEMES",
    "SPAN_COLUMNS",
    "SPAN_KINDS",
    "SPAN_STATUS",
    "TABLES",
    "TS",
    "BatchRejected",
    "DecodedBatch",
    "DuckDBBackend",
    "Job",
    "LimitReached",
    "Overloaded",
    "Store",
    "StoreBackend",
    "StoreLocked",
    "StoreUnavailable",
    "StoreVersionError",
    "StoreWriter",
    "StoredDataInvalid",
    "WriterError",
    "check_memory_limit",
    "decode",
    "group_tables",
    "open_backend",
    "span_rows_table",
    "span_table",
]
