"""The store's tables, named once for every backend: the schema version
and its history, the Arrow types of the columns built in Python, and the
bounds every value is checked against before it may join a commit group.

A backend (``duckdb_backend.py``) owns the DDL of each version in its own
dialect and the migrations between them; what each version added is listed
here (``VERSIONS``), so that every backend moves through the same steps.
"""

from __future__ import annotations

import pyarrow as pa

# The newest schema version this release writes. A store of an older
# version is migrated forward when opened; a newer one is refused.
SCHEMA_VERSION = 3
VERSIONS: dict[int, str] = {
    1: "batches, feature_schemas, predictions, errors, window_profiles, references, "
    "agent_counters, spans, system_metrics (the first release; no version recorded)",
    2: "modeltap_meta: the schema version recorded in the store",
    3: "labels (ground truth by request id, every correction kept) and the latest_labels "
    "view; agent_counters.labels and labels_dropped",
}

TABLES = (
    "batches",
    "feature_schemas",
    "predictions",
    "errors",
    "window_profiles",
    "references",
    "agent_counters",
    "spans",
    "system_metrics",
    "labels",
)
# Tables added after the first version, with the version that added them.
ADDED_IN = {"labels": 3}
# Tables whose rows carry a unique key of their own: a row whose key is
# already stored is left out of a group's append instead of failing it.
KEYED = {"feature_schemas": ("schema_id",)}

TS = pa.timestamp("ns", tz="UTC")

# Largest Unix time in nanoseconds a TIMESTAMPTZ column takes: int64's
# maximum itself reads back as DuckDB's "infinity".
MAX_UNIX_NANO = 2**63 - 2
# What one batch may grow to once decoded into Arrow columns, relative to
# its bytes on the wire (hex ids are 2.25x; anything far past that is a
# message built to expand).
MAX_EXPANSION = 8
MIN_DECODED_ALLOWANCE = 1 << 20


AGENT_COUNTERS = (
    "logged",
    "dropped_full",
    "dropped_spool",
    "discarded",
    "invalid",
    "sampled_out",
    "errors",
    "spans",
    "spans_dropped",
    "spans_lost",
    "labels",
    "labels_dropped",
)
LABEL_KINDS = ("number", "int", "label")
SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
SPAN_STATUS = ("unset", "ok", "error")
SPAN_COLUMNS = [
    ("trace_id", pa.string()),
    ("span_id", pa.string()),
    ("parent_span_id", pa.string()),
    ("name", pa.string()),
    ("kind", pa.string()),
    ("start_ts", pa.int64()),
    ("start_unix_nano", pa.uint64()),
    ("duration_ns", pa.uint64()),
    ("status", pa.string()),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("attributes", pa.map_(pa.string(), pa.string())),
    ("trace_state", pa.string()),
    ("service", pa.string()),
    ("model", pa.string()),
    ("version", pa.string()),
    ("agent_id", pa.string()),
    ("host", pa.string()),
    ("request_id", pa.string()),
    ("source", pa.string()),
]
