"""The ``modeltap collector`` daemon: a grpc.aio server that takes batches
from agents, decodes them natively and writes them durably, exactly once, to
an embedded DuckDB store."""

from modeltap.collector.daemon import BackgroundCollector, serve
from modeltap.collector.server import CollectorServer
from modeltap.collector.store import (
    BatchRejected,
    Overloaded,
    Store,
    StoredDataInvalid,
    StoreUnavailable,
    StoreWriter,
    WriterError,
)

__all__ = [
    "BackgroundCollector",
    "BatchRejected",
    "CollectorServer",
    "Overloaded",
    "Store",
    "StoreUnavailable",
    "StoreWriter",
    "StoredDataInvalid",
    "WriterError",
    "serve",
]
