"""Reads on a running collector's store, beside its writer.

DuckDB lets one process write a database file; within that process any
number of connections read it. Every read here runs on a connection of its
own (a cursor of the writer's database), in a ``READ ONLY`` transaction:
it sees the store as committed when it began, while the writer goes on
committing batches. The database is opened with external access disabled,
so no query reads, writes or attaches a file, installs or loads anything.

Bounds: ``max_reads`` reads run at once, each on a thread of a pool whose
threads run at a lower scheduling priority than ingestion
(``os.setpriority``); at most ``max_admitted`` are admitted (running,
waiting for a thread or for their client to take a piece; more are answered
RESOURCE_EXHAUSTED); each is interrupted past its deadline, and
answers streamed in pieces of about ``CHUNK_BYTES`` so that no result sits
whole in the collector's memory (a piece waits for the client to take the
one before: gRPC's flow control).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import duckdb
import pyarrow as pa

from modeltap.collector.store import Overloaded, StoreUnavailable
from modeltap.reads import Reads, arrow_reader

DEFAULT_MAX_READS = 4
DEFAULT_MAX_ADMITTED = 64
DEFAULT_READ_TIMEOUT_S = 300.0
CHUNK_BYTES = 1 << 20  # Arrow bytes per streamed piece (about)
FETCH_ROWS = 65_536  # rows DuckDB hands over at a time
READ_NICE = 10  # how much lower read threads are scheduled than ingestion
READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})


class ReadRefused(ValueError):
    """A query that is not one read-only statement."""


class ReadTimeout(Exception):
    """A read interrupted at its deadline."""


def check_read_only(sql: str) -> None:
    """Raises ``ReadRefused`` unless ``sql`` is exactly one SELECT (or
    EXPLAIN) statement. The read-only transaction it then runs in refuses
    any write regardless; this says early and plainly what was wrong."""
    if not isinstance(sql, str) or not sql.strip():
        raise ReadRefused("no query given")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise ReadRefused(f"cannot parse the query: {e}") from None
    if len(statements) != 1:
        raise ReadRefused(f"one statement at a time (got {len(statements)})")
    kind = statements[0].type.name
    if kind not in READ_STATEMENTS:
        raise ReadRefused(f"only SELECT statements are run here (got {kind})")


def lower_priority() -> None:
    """Schedules the calling thread below ingestion (Linux: per thread)."""
    # Linux schedules threads one by one: this lowers only the reader's.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READ_NICE)


def _ipc(schema: pa.Schema, batch: pa.RecordBatch | None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as w:
        if batch is not None:
            w.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


class ReadSession:
    """One streamed query: its cursor, transaction and the batches left.
    Each method runs on one of the reader's threads, one at a time (a lock:
    a cancelled call's ``close`` may be scheduled while its ``next`` still
    runs)."""

    def __init__(self, reader: StoreReader, sql: str, params: Sequence[Any] | None) -> None:
        self.reader = reader
        self.sql = sql
        self.params = list(params) if params else None
        self._lock = threading.Lock()
        self._cur: duckdb.DuckDBPyConnection | None = None
        self._batches: pa.RecordBatchReader | None = None
        self._pending: pa.RecordBatch | None = None
        self._offset = 0
        self._closed = False
        self.interrupted = False
        self.rows = 0
        self.bytes = 0

    def start(self) -> bytes | None:
        """Runs the query; returns the first piece (the schema alone)."""
        with self._lock:
            if self._closed:
                raise ReadTimeout("the read was cancelled before it began")
            cur = self.reader.cursor()
            self._cur = cur
            try:
                cur.execute("BEGIN TRANSACTION READ ONLY")
                self._batches = arrow_reader(cur, self.sql, self.params, FETCH_ROWS)
            except duckdb.InterruptException:
                raise ReadTimeout("the read passed its deadline") from None
            return _ipc(self._batches.schema, None)

    def next(self) -> bytes | None:
        """The next piece, or None at the end."""
        with self._lock:
            if self.interrupted:
                raise ReadTimeout("the read passed its deadline")
            if self._closed or self._batches is None:
                return None
            try:
                while self._pending is None or self._offset >= self._pending.num_rows:
                    try:
                        self._pending = self._batches.read_next_batch()
                    except StopIteration:
                        return None
                    self._offset = 0
            except duckdb.InterruptException:
                raise ReadTimeout("the read passed its deadline") from None
            except pa.ArrowException as e:  # DuckDB's error, through Arrow's reader
                if self.interrupted:
                    raise ReadTimeout("the read passed its deadline") from None
                raise duckdb.Error(str(e)) from None
            b = self._pending
            n = b.num_rows - self._offset
            per_row = max(1, b.nbytes // max(1, b.num_rows))
            take = max(1, min(n, CHUNK_BYTES // per_row))
            piece = b.slice(self._offset, take)
            self._offset += take
            data = _ipc(b.schema, piece)
            self.rows += take
            self.bytes += len(data)
            return data

    def interrupt(self) -> None:
        """Stops the query where it is (any thread)."""
        self.interrupted = True
        cur = self._cur
        if cur is not None:
            with contextlib.suppress(duckdb.Error):
                cur.interrupt()

    def close(self) -> None:
        """Ends the transaction and closes the cursor."""
        self._closed = True
        self.interrupt()
        with self._lock:
            self._batches = None
            self._pending = None
            cur, self._cur = self._cur, None
            if cur is not None:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                with contextlib.suppress(duckdb.Error):
                    cur.close()


class StoreReader:
    """The collector's reads (see the module's docstring)."""

    def __init__(
        self,
        root: Callable[[], duckdb.DuckDBPyConnection | None],
        *,
        max_reads: int = DEFAULT_MAX_READS,
        max_admitted: int = DEFAULT_MAX_ADMITTED,
        timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        if max_reads < 1:
            raise ValueError("max_reads must be at least 1")
        self._root = root
        self.max_reads = max_reads
        self.max_admitted = max(max_reads, max_admitted)
        self.timeout_s = timeout_s
        self.pool = ThreadPoolExecutor(
            max_reads, thread_name_prefix="modeltap-read", initializer=lower_priority
        )
        self._lock = threading.Lock()
        self.in_flight = 0
        self.reads = 0  # reads answered in full
        self.refused = 0  # reads refused: too many at once
        self.failed = 0  # reads that ended in an error (theirs or ours)
        self.timed_out = 0
        self.rows_sent = 0
        self.bytes_sent = 0
        self._sessions: set[ReadSession] = set()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the store (shares the writer's database)."""
        with self._lock:
            root = self._root()
            if root is None:
                raise StoreUnavailable("the store is not open")
            try:
                return root.cursor()
            except duckdb.ConnectionException as e:
                raise StoreUnavailable(f"the store is not open ({e})") from None

    def admit(self) -> None:
        """Counts a read in, or raises ``Overloaded`` past ``max_admitted``."""
        with self._lock:
            if self.in_flight >= self.max_admitted:
                self.refused += 1
                raise Overloaded(f"{self.in_flight} reads in flight (at most {self.max_admitted})")
            self.in_flight += 1

    def release(self, ok: bool, timed_out: bool = False) -> None:
        with self._lock:
            self.in_flight -= 1
            if ok:
                self.reads += 1
            else:
                self.failed += 1
            if timed_out:
                self.timed_out += 1

    def session(self, sql: str, params: Sequence[Any] | None = None) -> ReadSession:
        """A session for an admitted read of ``sql`` (checked by
        :func:`check_read_only` first)."""
        s = ReadSession(self, sql, params)
        with self._lock:
            self._sessions.add(s)
        return s

    def finished(self, s: ReadSession, ok: bool, timed_out: bool) -> None:
        """Closes a session (on a read thread) and counts it out."""
        try:
            s.close()
        finally:
            with self._lock:
                self._sessions.discard(s)
                self.rows_sent += s.rows
                self.bytes_sent += s.bytes
            self.release(ok, timed_out)

    def run(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Future[Any]:
        """Runs ``fn(cursor)`` in a read-only transaction on a read thread
        (admitted like any read: ``Overloaded`` past ``max_admitted``)."""
        self.admit()
        deadline = time.monotonic() + self.timeout_s

        def job() -> Any:
            ok = timed_out = False
            cur = None
            timer: threading.Timer | None = None
            try:
                cur = self.cursor()
                timer = threading.Timer(max(0.0, deadline - time.monotonic()), cur.interrupt)
                timer.daemon = True
                timer.start()
                cur.execute("BEGIN TRANSACTION READ ONLY")
                try:
                    out = fn(cur)
                except duckdb.InterruptException:
                    timed_out = True
                    raise ReadTimeout(f"the read took over {self.timeout_s:g} s") from None
                ok = True
                return out
            finally:
                if timer is not None:
                    timer.cancel()
                if cur is not None:
                    with contextlib.suppress(duckdb.Error):
                        cur.execute("ROLLBACK")
                    with contextlib.suppress(duckdb.Error):
                        cur.close()
                self.release(ok, timed_out)

        try:
            return self.pool.submit(job)
        except RuntimeError:  # the pool is shut down
            self.release(False)
            raise StoreUnavailable("the collector is stopping") from None

    def close(self) -> None:
        """Interrupts every read still running and stops the pool."""
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            s.interrupt()
        self.pool.shutdown(wait=True, cancel_futures=True)


class CollectorReads(Reads):
    """The read API inside the collector (its live pages): each query runs
    on a read thread like a client's, admitted and bounded the same way,
    its result (small: the pages aggregate in SQL) returned whole."""

    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader

    def stream(self, query: str, params: Sequence[Any] | None = None) -> pa.RecordBatchReader:
        check_read_only(query)
        table = self.reader.run(
            lambda cur: arrow_reader(cur, query, params, FETCH_ROWS).read_all()
        ).result(self.reader.timeout_s + 30)
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
