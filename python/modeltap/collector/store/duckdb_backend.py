"""The embedded default: one DuckDB database file, written in bulk from
Arrow columns, one transaction per group of batches.

Durability: DuckDB appends each committed transaction to its write-ahead log
(``<store>.wal``) and calls ``fdatasync`` on it before ``COMMIT`` returns
(checked with ``strace -e trace=fdatasync``). When a commit creates the WAL
file (the first one after a checkpoint), the backend also ``fsync``-s the
store's directory so the new file's entry survives a power cut. A batch is
acknowledged to its agent only after all of that, so an acknowledged batch
is on disk.

Reads (``collector/reader.py``) take cursors of the same database: DuckDB
lets one process write a file, and within it any number of connections
read it, each in its own transaction.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from modeltap.collector.store.backend import FailureKind, StoreBackend, TableBuilder
from modeltap.collector.store.errors import LimitReached, StoreUnavailable, StoreVersionError
from modeltap.collector.store.schema import KEYED, SCHEMA_VERSION, TABLES

CHECKPOINT_THRESHOLD = "256MB"
# What DuckDB may spill to its temp directory (<store>.tmp, beside the
# store): a sorting or hashing read past the memory limit spills there, and
# DuckDB's own bound is 90 % of the free disk, so one read could fill the
# filesystem the writer commits to. The bound is the smaller of these, set
# when the store opens; a read past it fails (RESOURCE_EXHAUSTED), and the
# store keeps room to commit.
TEMP_MAX_BYTES = 1 << 30
TEMP_SHARE_OF_FREE = 0.25

# Version 1: the first release's tables (it recorded no version).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS batches (
    agent_id VARCHAR NOT NULL,
    batch_seq UBIGINT NOT NULL,
    model VARCHAR,
    version VARCHAR,
    host VARCHAR,
    pid UINTEGER,
    agent_start TIMESTAMPTZ,
    agent_version VARCHAR,
    params MAP(VARCHAR, VARCHAR),
    n_records UINTEGER,
    n_bytes UBIGINT,
    created_at TIMESTAMPTZ,
    received_at TIMESTAMPTZ,
    PRIMARY KEY (agent_id, batch_seq)
);
CREATE TABLE IF NOT EXISTS feature_schemas (
    schema_id VARCHAR PRIMARY KEY,
    model VARCHAR,
    version VARCHAR,
    feature_names VARCHAR[],
    feature_kinds VARCHAR[],
    categorical_names VARCHAR[],
    first_seen TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS predictions (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    batch_seq UBIGINT,
    schema_id VARCHAR,
    request_id VARCHAR,
    trace_id VARCHAR,
    span_id VARCHAR,
    features DOUBLE[],
    categories VARCHAR[],
    prediction DOUBLE,
    prediction_label VARCHAR,
    outputs DOUBLE[],
    probabilities DOUBLE[],
    latency_s DOUBLE,
    flags UINTEGER,
    error_type VARCHAR,
    error_message VARCHAR,
    attributes MAP(VARCHAR, VARCHAR)
);
CREATE TABLE IF NOT EXISTS errors (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    request_id VARCHAR,
    error_type VARCHAR,
    error_message VARCHAR
);
CREATE TABLE IF NOT EXISTS window_profiles (
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    batch_seq UBIGINT,
    window_start TIMESTAMPTZ,
    window_s DOUBLE,
    reference_fingerprint VARCHAR,
    records UBIGINT,
    profile BLOB
);
CREATE TABLE IF NOT EXISTS "references" (
    model VARCHAR,
    version VARCHAR,
    fingerprint VARCHAR,
    registered_at TIMESTAMPTZ,
    reference BLOB,
    PRIMARY KEY (model, version, fingerprint)
);
CREATE TABLE IF NOT EXISTS agent_counters (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    host VARCHAR,
    batch_seq UBIGINT,
    logged UBIGINT,
    dropped_full UBIGINT,
    dropped_spool UBIGINT,
    discarded UBIGINT,
    invalid UBIGINT,
    sampled_out UBIGINT,
    errors UBIGINT,
    spans UBIGINT,
    spans_dropped UBIGINT,
    spans_lost UBIGINT
);
CREATE TABLE IF NOT EXISTS spans (
    trace_id VARCHAR,
    span_id VARCHAR,
    parent_span_id VARCHAR,
    name VARCHAR,
    kind VARCHAR,
    start_ts TIMESTAMPTZ,
    start_unix_nano UBIGINT,
    duration_ns UBIGINT,
    status VARCHAR,
    error_type VARCHAR,
    error_message VARCHAR,
    attributes MAP(VARCHAR, VARCHAR),
    trace_state VARCHAR,
    service VARCHAR,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    host VARCHAR,
    request_id VARCHAR,
    source VARCHAR
);
CREATE TABLE IF NOT EXISTS system_metrics (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    host VARCHAR,
    pid UINTEGER,
    process_cpu_percent DOUBLE,
    rss_bytes UBIGINT,
    threads UINTEGER,
    system_cpu_percent DOUBLE,
    system_memory_used_bytes UBIGINT,
    system_memory_total_bytes UBIGINT,
    gpu_index INTEGER,
    gpu_name VARCHAR,
    gpu_utilization_percent DOUBLE,
    gpu_memory_used_bytes UBIGINT,
    gpu_memory_total_bytes UBIGINT,
    gpu_temperature_celsius DOUBLE
);
"""

# Forward migrations: MIGRATIONS[v] brings a store of version v - 1 to v
# (schema.VERSIONS says what each adds). Each runs in one transaction
# together with the version it records.
MIGRATIONS: dict[int, str] = {
    2: "CREATE TABLE modeltap_meta (key VARCHAR PRIMARY KEY, value VARCHAR);",
    # Ground truth: one row per label received, corrections included (the
    # history); latest_labels keeps the newest of each (model, request_id)
    # by event time, then arrival. A number or an int class is in `label`,
    # a class spelled as text in `label_text` (as predictions keep theirs in
    # prediction and prediction_label).
    3: """
CREATE TABLE labels (
    ts TIMESTAMPTZ,
    model VARCHAR,
    version VARCHAR,
    agent_id VARCHAR,
    batch_seq UBIGINT,
    seq UINTEGER,
    request_id VARCHAR,
    kind VARCHAR,
    label DOUBLE,
    label_text VARCHAR,
    received_at TIMESTAMPTZ
);
CREATE VIEW latest_labels AS
SELECT unnest(arg_max(labels, (ts, received_at, agent_id, batch_seq, seq)))
FROM labels GROUP BY model, request_id;
ALTER TABLE agent_counters ADD COLUMN labels UBIGINT;
ALTER TABLE agent_counters ADD COLUMN labels_dropped UBIGINT;
""",
}

_MEMORY = re.compile(r"out of memory|failed to pin|memory limit", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def check_memory_limit(limit: str) -> str:
    """Checks a DuckDB ``memory_limit`` setting (``"1GB"``, ``"512MiB"``,
    ``"50%"``); raises ``ValueError`` for one DuckDB does not take."""
    try:
        duckdb.connect(":memory:", config={"memory_limit": limit}).close()
    except duckdb.Error as e:
        raise ValueError(f"bad memory limit {limit!r}: {e}") from None
    return limit


def _bytes(setting: str) -> int | None:
    """``"953.6 MiB"`` (DuckDB's spelling of a size) in bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]+)\s*", setting)
    if m is None or m[2].lower() not in _UNITS:
        return None
    return int(float(m[1]) * _UNITS[m[2].lower()])


def _unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drops a registered Arrow view. In a transaction a failed statement
    has aborted, DuckDB refuses even this: it must not replace the error
    that says what failed (the next registration replaces the view)."""
    with contextlib.suppress(duckdb.Error):
        con.unregister(name)


class DuckDBBackend(StoreBackend):
    """A DuckDB file; DuckDB's memory capped at ``memory_limit``."""

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "1GB",
        checkpoint_threshold: str = CHECKPOINT_THRESHOLD,
        temp_max_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.location = str(path)
        self.memory_limit = memory_limit
        self.checkpoint_threshold = checkpoint_threshold
        self.memory_limit_bytes: int | None = None
        self.temp_max_bytes = temp_max_bytes
        self.temp_budget = 0  # bytes reads may spill, as set at the last open
        self._con: duckdb.DuckDBPyConnection | None = None
        self._read_root: duckdb.DuckDBPyConnection | None = None
        self._wal_ino: int | None = None
        self._version = 0

    # -- opening and the schema ------------------------------------------------

    def open(self) -> None:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temp_budget = self._temp_budget()
        # One thread: the collector is one writer on a small machine, and
        # DuckDB's parallel insert costs more than it gains at this size.
        con = duckdb.connect(
            str(self.path),
            config={
                "threads": 1,
                # Checkpoints compress the newest row group again each time;
                # a larger WAL between checkpoints means each row group is
                # compressed about once instead of at every commit.
                "checkpoint_threshold": self.checkpoint_threshold,
                # DuckDB's own default is 80 % of the machine's memory.
                "memory_limit": self.memory_limit,
                "max_temp_directory_size": f"{self.temp_budget}B",
                # Reads of the running store (collector/reader.py) run any
                # SELECT a client sends: no query may touch a file
                # (read_csv, COPY, ATTACH) or fetch an extension.
                "enable_external_access": False,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                # ... nor change a setting (logging, memory limit, threads).
                "lock_configuration": True,
            },
        )
        try:
            self._version = self._migrate(con)
            con.execute("CHECKPOINT")
            row = con.execute("SELECT current_setting('memory_limit')").fetchone()
            self.memory_limit_bytes = _bytes(str(row[0])) if row else None
            read_root = con.cursor()
        except BaseException:
            with contextlib.suppress(Exception):
                con.close()
            raise
        self._con = con
        self._read_root = read_root

    def _temp_budget(self) -> int:
        """Bytes DuckDB may spill: ``temp_max_bytes`` when given, else the
        smaller of ``TEMP_MAX_BYTES`` and a quarter of the free space."""
        if self.temp_max_bytes is not None:
            return max(0, int(self.temp_max_bytes))
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return TEMP_MAX_BYTES
        return max(1 << 20, min(TEMP_MAX_BYTES, int(free * TEMP_SHARE_OF_FREE)))

    @staticmethod
    def stored_version(con: duckdb.DuckDBPyConnection) -> int:
        """The schema version of a store (0: an empty database)."""
        tables = {
            str(r[0])
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
            ).fetchall()
        }
        if "modeltap_meta" in tables:
            row = con.execute(
                "SELECT value FROM modeltap_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None or not str(row[0]).isdigit():
                raise StoreVersionError(f"the store's modeltap_meta holds no schema version: {row}")
            return int(row[0])
        return 1 if "batches" in tables else 0

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> int:
        version = self.stored_version(con)
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.path} has schema version {version}, written by a newer modeltap "
                f"(this one knows versions up to {SCHEMA_VERSION}): upgrade modeltap to open it"
            )
        if version == 0:  # a new store: every table at once
            con.execute("BEGIN TRANSACTION")
            con.execute(SCHEMA_V1)
            for v in range(2, SCHEMA_VERSION + 1):
                con.execute(MIGRATIONS[v])
            self._record_version(con, SCHEMA_VERSION)
            con.execute("COMMIT")
            return SCHEMA_VERSION
        if version == 1:  # tables of the first release may be missing
            con.execute(SCHEMA_V1)
        for v in range(version + 1, SCHEMA_VERSION + 1):
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(MIGRATIONS[v])
                self._record_version(con, v)
                con.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise StoreVersionError(
                    f"cannot migrate {self.path} from schema version {v - 1} to {v}: {e}"
                ) from e
        return SCHEMA_VERSION

    @staticmethod
    def _record_version(con: duckdb.DuckDBPyConnection, v: int) -> None:
        con.execute("INSERT OR REPLACE INTO modeltap_meta VALUES ('schema_version', ?)", [str(v)])

    def schema_version(self) -> int:
        return self._version

    def close(self) -> None:
        root, self._read_root = self._read_root, None
        if root is not None:
            with contextlib.suppress(Exception):
                root.close()
        con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()

    def is_open(self) -> bool:
        return self._con is not None

    # -- writes ----------------------------------------------------------------

    def _writer(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreUnavailable("the store is not open")
        return self._con

    def append_group(self, keys: Sequence[tuple[str, int]], build: TableBuilder) -> list[int]:
        con = self._writer()
        con.execute("BEGIN TRANSACTION")
        try:
            fresh = self._fresh(con, keys)
            if fresh:
                for table, parts in build(fresh).items():
                    self._append(con, table, parts)
            con.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self._sync_directory()
        return fresh

    @staticmethod
    def _fresh(con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[str, int]]) -> list[int]:
        """Positions of the keys not stored yet (the first of a repeated one)."""
        con.register(
            "_keys",
            pa.table(
                {
                    "agent_id": pa.array([a for a, _ in keys], pa.string()),
                    "batch_seq": pa.array([q for _, q in keys], pa.uint64()),
                }
            ),
        )
        try:
            known = {
                (a, int(q))
                for a, q in con.execute(
                    "SELECT agent_id, batch_seq FROM batches JOIN _keys USING (agent_id, batch_seq)"
                ).fetchall()
            }
        finally:
            _unregister(con, "_keys")
        fresh = []
        for i, key in enumerate(keys):
            if key not in known:
                known.add(key)
                fresh.append(i)
        return fresh

    @staticmethod
    def _append(con: duckdb.DuckDBPyConnection, table: str, parts: Sequence[pa.Table]) -> None:
        if table not in TABLES:
            raise ValueError(f"no table {table!r} in the store")
        tables = [t for t in parts if t is not None]
        if not tables:
            return
        data = pa.concat_tables(tables, promote_options="permissive")
        con.register("_incoming", data)
        try:
            verb = "INSERT OR IGNORE" if table in KEYED else "INSERT"
            con.execute(f'{verb} INTO "{table}" SELECT * FROM _incoming')
        finally:
            _unregister(con, "_incoming")

    def append_spans(self, table: pa.Table) -> int:
        con = self._writer()
        con.execute("BEGIN TRANSACTION")
        con.register("_spans_in", table)
        try:
            # A resent span has the same start as the stored one, so the
            # look-up reads only the stored spans starting within a second
            # of the request's range (zone maps skip the rest).
            row = con.execute(
                """
                INSERT INTO spans
                SELECT * FROM (
                    SELECT * FROM _spans_in
                    QUALIFY row_number() OVER (PARTITION BY trace_id, span_id) = 1
                ) AS s
                WHERE NOT EXISTS (
                    SELECT 1 FROM spans AS t
                    WHERE t.start_ts
                          BETWEEN (SELECT min(start_ts) FROM _spans_in) - INTERVAL 1 SECOND
                              AND (SELECT max(start_ts) FROM _spans_in) + INTERVAL 1 SECOND
                      AND t.trace_id = s.trace_id AND t.span_id = s.span_id
                )
                """
            ).fetchone()
            con.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        finally:
            _unregister(con, "_spans_in")
        self._sync_directory()
        return int(row[0]) if row else 0

    def register_reference(
        self,
        model: str,
        version: str,
        data: bytes,
        fingerprint: str,
        *,
        max_pairs: int | None = None,
    ) -> None:
        con = self._writer()
        con.execute("BEGIN TRANSACTION")
        try:
            if max_pairs is not None:
                row = con.execute(
                    "SELECT count(DISTINCT (model, version)), count(*) FILTER "
                    '(WHERE model = ? AND version = ?) FROM "references"',
                    [model, version],
                ).fetchone()
                pairs, mine = (int(row[0]), int(row[1])) if row else (0, 0)
                if not mine and pairs >= max_pairs:
                    raise LimitReached(
                        f"references are registered for {pairs:,} (model, version) pairs, "
                        f"at most {max_pairs:,}: register under an existing one"
                    )
            con.execute(
                'INSERT OR REPLACE INTO "references" VALUES (?, ?, ?, now(), ?)',
                [model, version, fingerprint, data],
            )
            con.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> bool:
        con = self._con
        if con is None:
            return False
        try:
            con.execute("ROLLBACK")
        except duckdb.TransactionException as e:
            # Nothing to roll back (the failed COMMIT ended it): usable.
            if "no transaction is active" not in str(e):
                return False
        except BaseException:
            return False
        for name in ("_keys", "_incoming", "_spans_in"):  # release the group's data
            _unregister(con, name)
        return True

    def _sync_directory(self) -> None:
        """fsync the store's directory when a commit has created the WAL."""
        wal = Path(str(self.path) + ".wal")
        try:
            ino = wal.stat().st_ino
        except FileNotFoundError:
            self._wal_ino = None
            return
        if ino != self._wal_ino:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._wal_ino = ino

    # -- reads -----------------------------------------------------------------

    def connection(self) -> duckdb.DuckDBPyConnection:
        return self._writer()

    def read_root(self) -> duckdb.DuckDBPyConnection | None:
        return self._read_root

    def cursor(self) -> duckdb.DuckDBPyConnection:
        root = self._read_root
        if root is None:
            raise StoreUnavailable("the store is not open")
        try:
            return root.cursor()
        except duckdb.ConnectionException as e:
            raise StoreUnavailable(f"the store is not open ({e})") from None

    # -- failures --------------------------------------------------------------

    def classify(self, e: BaseException) -> FailureKind:
        if isinstance(e, (duckdb.OutOfMemoryException, MemoryError)):
            return "memory"
        # A commit over the memory limit fails as a transaction error
        # ("failed to pin block"): memory, not the store.
        if isinstance(e, duckdb.Error) and _MEMORY.search(str(e)):
            return "memory"
        if isinstance(
            e,
            (
                duckdb.IOException,
                duckdb.PermissionException,
                duckdb.FatalException,
                duckdb.InternalException,
                duckdb.TransactionException,
                duckdb.ConnectionException,
                StoreUnavailable,
                OSError,
            ),
        ):
            return "store"
        if isinstance(
            e,
            (
                duckdb.DataError,
                duckdb.IntegrityError,
                duckdb.InvalidInputException,
                pa.ArrowException,
                OverflowError,
                UnicodeError,
                ValueError,
                TypeError,
            ),
        ):
            return "data"
        return "bug"

    def fits(self, nbytes: int) -> bool:
        """Whether a write of ``nbytes`` decoded bytes could ever fit the
        memory limit (DuckDB holds a transaction's rows, and their
        compressed copy, in memory until it commits)."""
        limit = self.memory_limit_bytes
        return limit is None or 2 * nbytes < limit
