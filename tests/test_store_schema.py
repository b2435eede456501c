"""The store's schema version and forward migrations, the store given as a
URL, a store file held by a running collector, and the package layering
(the read API imported by its sources, never the other way round)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

import modeltap
from collector_util import Collector
from modeltap.collector import BackgroundCollector
from modeltap.collector.store import (
    ADDED_IN,
    SCHEMA_VERSION,
    TABLES,
    DuckDBBackend,
    StoreLocked,
    StoreVersionError,
)

# A store written by the release before schema versions were recorded
# (version 1): 500 predictions (one with an error), 200 spans, one
# reference and one window profile of model "m" version "1".
V1_STORE = Path(__file__).parent / "data" / "store-v1.duckdb"


def _v1(tmp_path: Path) -> Path:
    p = tmp_path / "old.duckdb"
    shutil.copy(V1_STORE, p)
    return p


def _version(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return DuckDBBackend.stored_version(con)
    finally:
        con.close()


def test_the_committed_store_is_of_the_first_format():
    assert _version(V1_STORE) == 1
    con = duckdb.connect(str(V1_STORE), read_only=True)
    names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    con.close()
    assert names == set(TABLES) - set(ADDED_IN)


def test_a_store_of_the_first_release_is_read_and_migrated_forward(tmp_path):
    path = _v1(tmp_path)
    with modeltap.Store(path) as st:  # read as it is, not migrated by a read
        assert st.schema_version == 1
        before = st.drift("m", "1")
        n = st.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py()
        tid = st.sql("SELECT trace_id FROM spans LIMIT 1").column(0)[0].as_py()
        spans_before = st.trace(tid)["spans"]
        blob = st.sql('SELECT reference FROM "references"').column(0)[0].as_py()
    (tmp_path / "ref.bin").write_bytes(blob)
    ref = modeltap.Reference.load(tmp_path / "ref.bin")
    assert n == 500
    assert _version(path) == 1
    with BackgroundCollector(path) as col:
        assert col.server.writer.backend.schema_version() == SCHEMA_VERSION
        a = modeltap.Agent("m", "1", collector=col.addr, features=["a", "b", "c"], reference=ref)
        a.log_batch(np.ones((50, 3)), np.zeros(50))
        assert a.flush(20)
        a.close()
        with modeltap.Client(col.addr) as c:
            live = c.drift("m", "1")
            assert c.trace(tid)["spans"] == spans_before
    assert _version(path) == SCHEMA_VERSION
    with modeltap.Store(path) as st:
        assert st.schema_version == SCHEMA_VERSION
        assert st.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == 550
        assert st.sql("SELECT count(*) AS n FROM batches").column("n")[0].as_py() == 2
        after = st.drift("m", "1")
    # the old profile is still there, merged with the new one's records
    assert before.records == 500
    assert live.records == after.records == 550
    # opening it again migrates nothing more
    with BackgroundCollector(path) as col:
        assert col.server.writer.backend.schema_version() == SCHEMA_VERSION


def test_a_store_of_a_newer_release_is_refused_plainly(tmp_path):
    path = tmp_path / "new.duckdb"
    with BackgroundCollector(path):
        pass
    con = duckdb.connect(str(path))
    con.execute("UPDATE modeltap_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreVersionError, match=r"schema version 99.*newer"):
        modeltap.Store(path)
    with pytest.raises(StoreVersionError, match="schema version 99"):
        BackgroundCollector(path).start()
    c = Collector(path).start(wait=False)
    assert c.proc is not None
    out, _ = c.proc.communicate(timeout=60)
    assert c.proc.returncode == 1
    assert "schema version 99" in out
    assert "Traceback" not in out
    assert _version(path) == 99  # left as it was


@pytest.mark.parametrize(
    "url",
    ["postgresql://user:secret@db.example/modeltap", "s3://bucket/store", "mysql://h/db"],
)
def test_a_store_url_without_a_backend_fails_at_start(tmp_path, url):
    with pytest.raises(ValueError, match="no store backend") as e:
        BackgroundCollector(url)
    assert "secret" not in str(e.value)
    assert "duckdb://" in str(e.value)
    p = subprocess.run(
        [sys.executable, "-m", "modeltap", "collector", "--listen", "127.0.0.1:0", "--store", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert p.returncode == 1
    assert "no store backend" in p.stderr
    assert "secret" not in p.stderr + p.stdout
    assert list(tmp_path.iterdir()) == []  # no directory named after the URL


def test_a_duckdb_url_is_a_path(tmp_path):
    path = tmp_path / "u.duckdb"
    with BackgroundCollector(f"duckdb://{path}") as col:
        assert col.server.writer.backend.location == str(path)
    assert _version(path) == SCHEMA_VERSION


def test_a_store_held_by_a_running_collector_says_what_to_do(tmp_path):
    path = tmp_path / "held.duckdb"
    c = Collector(path).start()
    try:
        with pytest.raises(StoreLocked, match="--collector HOST:PORT"):
            modeltap.Store(path)
        p = subprocess.run(
            [sys.executable, "-m", "modeltap", "query", "SELECT 1", "--store", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1
        assert "running collector" in p.stderr, p.stderr
        assert "--collector" in p.stderr
        assert "Traceback" not in p.stderr
        with modeltap.connect(c.addr) as client:  # what the message says works
            assert client.sql("SELECT 1 AS x").column("x")[0].as_py() == 1
    finally:
        c.stop()


PACKAGE = Path(modeltap.__file__).parent


def _modeltap_imports(path: Path) -> set[str]:
    """Every modeltap module a file imports (at any depth of its code)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modeltap"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("modeltap"))
    return out


def test_the_read_api_imports_none_of_its_sources():
    assert _modeltap_imports(PACKAGE / "reads.py") == set()
    for consumer in ("analysis/drift.py", "analysis/latency.py", "analysis/traces.py"):
        imports = _modeltap_imports(PACKAGE / consumer)
        assert not {i for i in imports if i.startswith(("modeltap.collector", "modeltap.client"))}
    # the store's engine is named in its backend modules alone
    for f in (PACKAGE / "collector" / "store").glob("*.py"):
        if f.name not in ("duckdb_backend.py", "file.py", "__init__.py"):
            assert "import duckdb" not in f.read_text(), f.name


def test_integrations_import_no_framework():
    code = (
        "import sys, modeltap, modeltap.integrations\n"
        "heavy = {'torch', 'sklearn', 'fastapi', 'starlette', 'mlflow', 'wandb', 'xgboost'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
