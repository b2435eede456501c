"""Ground truth in the store: the labels table (every label kept), the
latest label of each request id, predictions joined to it, labels that
joined nothing (yet), and a store of the previous schema migrated to one
that has them."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

import modeltap
from modeltap.collector import BackgroundCollector
from modeltap.collector.store import SCHEMA_VERSION, DuckDBBackend
from modeltap.collector.store.duckdb_backend import MIGRATIONS

V1_STORE = Path(__file__).parent / "data" / "store-v1.duckdb"


def _store_with_predictions(path: Path, n: int = 20) -> None:
    with BackgroundCollector(path) as col:
        a = modeltap.Agent("m", "1", collector=col.addr, metrics_interval=None)
        for i in range(n):
            a.log(np.array([float(i), 1.0]), i % 2, request_id=f"r{i}")
        assert a.flush(20)
        a.close()


def _insert(path: Path, rows: list[tuple]) -> None:
    con = duckdb.connect(str(path))
    try:
        con.executemany(
            "INSERT INTO labels VALUES (make_timestamptz(? * 1000000), 'm', '', 'src', ?, ?, "
            "?, ?, ?, ?, make_timestamptz(? * 1000000))",
            rows,
        )
    finally:
        con.close()


def test_latest_label_wins_history_kept_and_joins_counted(tmp_path):
    path = tmp_path / "s.duckdb"
    _store_with_predictions(path)
    # (ts s, batch_seq, seq, request_id, kind, label, label_text, received s)
    _insert(
        path,
        [
            (100, 0, 0, "r1", "int", 1.0, None, 200),
            (100, 0, 1, "r2", "int", 0.0, None, 200),
            (150, 1, 0, "r1", "int", 0.0, None, 201),  # a correction: newer event time
            (90, 2, 0, "r2", "int", 1.0, None, 202),  # older event time, later arrival
            (100, 2, 1, "r3", "label", None, "cat", 202),
            (100, 2, 2, "nope", "int", 1.0, None, 202),  # no such prediction (yet)
        ],
    )
    with modeltap.Store(path) as st:
        assert st.schema_version == SCHEMA_VERSION
        latest = {r["request_id"]: r for r in st.labels("m").to_pylist()}
        assert set(latest) == {"r1", "r2", "r3", "nope"}
        assert latest["r1"]["label"] == 0.0  # the correction
        assert latest["r2"]["label"] == 0.0  # event time decides, not arrival
        assert latest["r3"]["label_text"] == "cat"
        assert latest["r3"]["label"] is None
        assert st.labels("m", history=True).num_rows == 6
        assert st.labels("m", request_ids=["r1"], history=True).num_rows == 2
        joined = st.labelled("m").to_pylist()
        assert [r["request_id"] for r in joined] == ["r1", "r2", "r3"]  # prediction order
        assert joined[0]["prediction"] == 1.0
        assert joined[0]["label"] == 0.0
        un = st.unjoined_labels("m").to_pylist()
        assert [r["request_id"] for r in un] == ["nope"]
        assert st.label_counts("m") == {
            "labels": 6,
            "labelled": 4,
            "corrections": 2,
            "joined": 3,
            "unjoined": 1,
        }
        assert st.label_counts("other")["labels"] == 0
        # Counted in parts of the ids (a large store's way), the same.
        import modeltap.reads as reads_mod

        whole = st.label_counts("m")
        old_part = reads_mod.LABEL_PART
        reads_mod.LABEL_PART = 2
        try:
            assert st.label_counts("m") == whole
            assert [r["request_id"] for r in st.unjoined_labels("m").to_pylist()] == ["nope"]
            assert st.unjoined_labels("m", limit=0).num_rows == 0
        finally:
            reads_mod.LABEL_PART = old_part
        with pytest.raises(TypeError, match="strings"):
            st.labels("m", request_ids=[1])


def test_a_store_of_the_previous_schema_gains_labels(tmp_path):
    """A store at version 2 (the version before labels: the first release's
    file brought to 2 by its own migration) opens at the current version
    with an empty labels table, its predictions untouched."""
    path = tmp_path / "v2.duckdb"
    shutil.copy(V1_STORE, path)
    con = duckdb.connect(str(path))
    con.execute("BEGIN TRANSACTION")
    con.execute(MIGRATIONS[2])
    con.execute("INSERT INTO modeltap_meta VALUES ('schema_version', '2')")
    con.execute("COMMIT")
    con.close()
    con = duckdb.connect(str(path), read_only=True)
    assert DuckDBBackend.stored_version(con) == 2
    con.close()
    with BackgroundCollector(path) as col:
        assert col.server.writer.backend.schema_version() == SCHEMA_VERSION
    with modeltap.Store(path) as st:
        assert st.schema_version == SCHEMA_VERSION
        assert st.labels().num_rows == 0
        assert st.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == 500
        cols = st.sql("SELECT * FROM agent_counters LIMIT 0").column_names
        assert {"labels", "labels_dropped"} <= set(cols)
