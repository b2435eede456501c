"""What every store backend guarantees (``collector/store/backend.py``):
atomic group commit, the dedup keys, read isolation, errors classified,
versioned schema. Parametrised over the backends there are; a new one
joins ``BACKENDS`` and must pass all of it."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from collector_util import encoded_batches
from modeltap.collector.store import (
    SCHEMA_VERSION,
    DuckDBBackend,
    StoreUnavailable,
    decode,
    group_tables,
    open_backend,
)
from modeltap.collector.store.decode import span_rows_table

BACKENDS = ["duckdb"]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    if request.param == "duckdb":
        b = open_backend(tmp_path / "b.duckdb", memory_limit="256MB")
    assert b.schema_version() == 0 or not b.is_open()
    b.open()
    yield b
    b.close()


def _count(backend, table: str) -> int:
    cur = backend.cursor()
    try:
        return int(cur.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    finally:
        cur.close()


def _append(backend, batches):
    def build(fresh):
        return group_tables([batches[i] for i in fresh], set())[0]

    return backend.append_group([(b.agent_id, b.batch_seq) for b in batches], build)


def test_opens_at_the_current_schema_version(backend):
    assert backend.is_open()
    assert backend.schema_version() == SCHEMA_VERSION


def test_a_group_is_deduplicated_on_agent_and_sequence(backend):
    raw = encoded_batches(3, 10, features=2)
    batches = [decode(b) for b in raw]
    assert _append(backend, batches) == [0, 1, 2]
    assert _count(backend, "predictions") == 30
    # stored already, or twice in one group: the first counts, once
    again = [decode(raw[1]), decode(raw[1]), decode(raw[2])]
    assert _append(backend, again) == []
    assert _count(backend, "predictions") == 30
    assert _count(backend, "batches") == 3


def test_a_failed_group_leaves_nothing(backend):
    batches = [decode(b) for b in encoded_batches(4, 10, features=2)]

    def build(fresh):
        tables = group_tables([batches[i] for i in fresh], set())[0]
        bad = tables["predictions"][-1]
        i = bad.schema.get_field_index("flags")
        tables["predictions"][-1] = bad.set_column(i, "flags", pa.array(["x"] * bad.num_rows))
        return tables

    with pytest.raises(Exception, match=r"flags|UINTEGER|convert|uint32") as e:
        backend.append_group([(b.agent_id, b.batch_seq) for b in batches], build)
    assert backend.classify(e.value) == "data"
    assert backend.rollback()
    assert _count(backend, "predictions") == 0
    assert _count(backend, "batches") == 0
    assert _append(backend, batches) == [0, 1, 2, 3]  # usable afterwards
    assert _count(backend, "predictions") == 40


def _spans(n: int, start: int = 1_000) -> pa.Table:
    return span_rows_table(
        {
            "trace_id": [f"{i // 4 + 1:032x}" for i in range(n)],
            "span_id": [f"{i + 1:016x}" for i in range(n)],
            "name": ["s"] * n,
            "start_ts": [start + i for i in range(n)],
            "start_unix_nano": [start + i for i in range(n)],
            "duration_ns": [5] * n,
            "source": ["otlp"] * n,
        }
    )


def test_spans_are_deduplicated_on_trace_and_span_id(backend):
    t = _spans(20)
    assert backend.append_spans(t) == 20
    assert backend.append_spans(t) == 0  # an exporter's retry
    # repeated within one request, and half of it already stored
    mixed = pa.concat_tables([_spans(10), _spans(30)])
    assert backend.append_spans(mixed) == 10
    assert _count(backend, "spans") == 30


def test_a_read_sees_what_was_committed_when_it_began(backend):
    raw = encoded_batches(2, 10, features=2)
    _append(backend, [decode(raw[0])])
    cur = backend.cursor()
    try:
        cur.execute("BEGIN TRANSACTION READ ONLY")
        assert cur.execute("SELECT count(*) FROM predictions").fetchone()[0] == 10
        done = threading.Event()

        def write():
            _append(backend, [decode(raw[1])])
            done.set()

        threading.Thread(target=write).start()
        assert done.wait(30)
        assert cur.execute("SELECT count(*) FROM predictions").fetchone()[0] == 10
        with pytest.raises(Exception, match="read-only"):
            cur.execute("DELETE FROM predictions")
        cur.execute("ROLLBACK")
        assert cur.execute("SELECT count(*) FROM predictions").fetchone()[0] == 20
    finally:
        cur.close()


def test_a_closed_store_is_the_stores_failure(backend):
    backend.close()
    assert not backend.is_open()
    with pytest.raises(StoreUnavailable):
        backend.cursor()
    with pytest.raises(StoreUnavailable) as e:
        _append(backend, [decode(encoded_batches(1, 5, features=2)[0])])
    assert backend.classify(e.value) == "store"
    backend.close()  # twice is fine


def test_memory_errors_are_memory_not_the_store(backend):
    import duckdb

    if isinstance(backend, DuckDBBackend):
        # what a commit past the memory limit raises
        err = duckdb.TransactionException(
            "TransactionContext Error: Failed to commit: could not allocate block of size "
            "256.0 KiB (256.0 MiB/256.0 MiB used); failed to pin block"
        )
        assert backend.classify(err) == "memory"
        assert backend.classify(duckdb.OutOfMemoryException("Out of Memory Error")) == "memory"
        assert backend.classify(duckdb.IOException("disk full")) == "store"
    assert backend.classify(MemoryError()) == "memory"
    assert backend.fits(1 << 20)
    assert not backend.fits(1 << 40)
