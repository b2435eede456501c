"""Drift of a model over a time range, from the stored window profiles of
every agent merged natively, against the newest reference registered for
it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from modeltap import _core
from modeltap.reads import Reads, time_range

MERGE_CHUNK = 1024  # window profile parts merged at a time


class StoredDataInvalid(ValueError):
    """Data already in the store (a reference, a profile) cannot be used."""


def blob_chunks(
    reads: Reads, query: str, params: Sequence[Any], n: int | None = None
) -> Iterator[list[bytes]]:
    """The first column of ``query`` (blobs), ``n`` rows at a time (at most
    ``MERGE_CHUNK`` when not given): only one chunk is held at once."""
    size = n or MERGE_CHUNK
    chunk: list[bytes] = []
    for batch in reads.stream(query, params, rows=size):
        col = batch.column(0)
        for i in range(0, len(col), size):
            for v in col.slice(i, size).to_pylist():
                chunk.append(bytes(v))
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


def _one(reads: Reads, query: str, params: list[Any]) -> dict[str, Any] | None:
    rows = reads.sql(query, params).to_pylist()
    return rows[0] if rows else None


def drift_over_range(
    reads: Reads,
    model: str,
    version: str | None,
    since_ns: int | None,
    until_ns: int | None,
    rules: Mapping[str, tuple[str, float]] | None = None,
) -> dict[str, Any]:
    """Drift of (model, version) over ``[since, until)`` from the stored
    window profiles, merged natively (a chunk at a time), against the newest
    reference registered for it (with a matching fingerprint). Raises
    ``LookupError`` when there is nothing to compare, ``StoredDataInvalid``
    when the stored reference or profiles cannot be used, ``ValueError``
    for a bad rule."""
    if not version:
        row = _one(
            reads,
            "SELECT version FROM window_profiles WHERE model = ? "
            "ORDER BY window_start DESC LIMIT 1",
            [model],
        )
        if row is None:
            raise LookupError(f"no profiles stored for model {model!r}")
        version = str(row["version"])
    ref = _one(
        reads,
        'SELECT reference, fingerprint FROM "references" WHERE model = ? AND version = ? '
        "ORDER BY registered_at DESC LIMIT 1",
        [model, version],
    )
    if ref is None:
        raise LookupError(f"no reference registered for {model} {version}")
    data, fingerprint = bytes(ref["reference"]), str(ref["fingerprint"])
    try:  # stored by an older collector that checked less, or damaged since
        info = _core.reference_info(data)
    except _core.ReferenceFormatError as e:
        raise StoredDataInvalid(
            f"the reference stored for {model} {version} is invalid ({e}); register a valid one"
        ) from e
    conds = ["model = ?", "version = ?", "reference_fingerprint = ?"]
    params: list[Any] = [model, version, fingerprint]
    time_range(conds, params, "window_start", since_ns, until_ns)
    if info["fingerprint"] != fingerprint:
        raise StoredDataInvalid(
            f"the reference stored for {model} {version} as {fingerprint} is "
            f"{info['fingerprint']}; register it again"
        )
    # Merged a chunk at a time: a long range holds many parts, and only the
    # merge so far and one chunk need to be in memory.
    merged: bytes | None = None
    parts = 0
    skipped: list[str] = []
    query = f"SELECT profile FROM window_profiles WHERE {' AND '.join(conds)}"
    for blobs in blob_chunks(reads, query, params):
        try:
            merged = _core.merge_profiles(blobs if merged is None else [merged, *blobs])
            parts += len(blobs)
        except ValueError:
            # A damaged part (stored by an older collector, or since) is left
            # out with a note; it must not take every later drift down.
            for b in blobs:
                try:
                    merged = _core.merge_profiles([b] if merged is None else [merged, b])
                    parts += 1
                except ValueError as e:
                    skipped.append(str(e))
    try:
        out = dict(_core.drift(data, merged or b"", dict(rules or {}), {}))
    except (_core.ReferenceFormatError, _core.BatchDecodeError) as e:
        raise StoredDataInvalid(f"drift of {model} {version} from stored data: {e}") from e
    out["model"], out["version"] = model, version
    out["profiles_merged"] = parts
    if skipped:
        out["profiles_skipped"] = len(skipped)
        notes = list(out.get("notes") or [])
        notes.append(f"{len(skipped)} stored window profile(s) left out: {skipped[0]}")
        out["notes"] = notes
    return out
