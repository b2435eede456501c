"""modeltap: a native-accelerated telemetry agent for ML models in production.

Attach an :class:`Agent` in serving code and log every prediction; records are
copied into a lock-free native ring and shipped in compact columnar batches.
"""

from __future__ import annotations

from collections.abc import Sequence

from modeltap._core import (
    SCHEMA_VERSION,
    BatchDecodeError,
    InternalError,
    InvalidRecord,
    ReferenceFormatError,
    RequestIds,
    Span,
    SpanContext,
    UnsupportedSchemaVersion,
    current_span_context,
    decode_batch,
    random_id,
)
from modeltap._core import __version__ as __version__
from modeltap.agent import Agent
from modeltap.client import Client
from modeltap.drift import DriftReport
from modeltap.reference import Reference
from modeltap.sources import connect

Sequence.register(RequestIds)


def __getattr__(name: str) -> object:
    # The collector side needs duckdb and pyarrow; import it only when used.
    if name == "Store":
        try:
            from modeltap.collector.store import Store
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(
                f"modeltap.Store needs {e.name}, which the agent-only install leaves out: "
                "pip install 'modeltap[collector]'",
                name=e.name,
            ) from e
        return Store
    raise AttributeError(f"module 'modeltap' has no attribute {name!r}")


__all__ = [
    "SCHEMA_VERSION",
    "Agent",
    "BatchDecodeError",
    "Client",
    "DriftReport",
    "InternalError",
    "InvalidRecord",
    "Reference",
    "ReferenceFormatError",
    "RequestIds",
    "Span",
    "SpanContext",
    "Store",
    "UnsupportedSchemaVersion",
    "__version__",
    "connect",
    "current_span_context",
    "decode_batch",
    "random_id",
]
