"""The ``modeltap collector`` daemon: a grpc.aio server that takes batches
from agents, decodes them natively and writes them durably, exactly once, to
an embedded DuckDB store."""

from modeltap.collector.server import BackgroundCollector, CollectorServer, serve
from modeltap.collector.store import Store, StoreUnavailable, StoreWriter

__all__ = [
    "BackgroundCollector",
    "CollectorServer",
    "Store",
    "StoreUnavailable",
    "StoreWriter",
    "serve",
]
