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
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import duckdb
import pyarrow as pa

from modeltap.collector.store.errors import Overloaded, StoreUnavailable
from modeltap.reads import Reads, arrow_reader

DEFAULT_MAX_READS = 4
DEFAULT_MAX_ADMITTED = 64
DEFAULT_READ_TIMEOUT_S = 300.0
CHUNK_BYTES = 1 << 20  # Arrow bytes per streamed piece (about)
FETCH_ROWS = 1_024  # rows DuckDB hands over at a time (a wide row is kilobytes)
PAGE_TIMEOUT_S = 60.0  # a live page waits this long for each of its reads
MAX_SQL_BYTES = 1 << 20  # a longer query text is refused, not parsed
READ_NICE = 10  # how much lower read threads are scheduled than ingestion
# What a read may call. Table functions (in FROM): only these, which
# compute rows or read the catalog; every other one (query, query_table and
# json_execute_serialized_sql run SQL held in a string; checkpoint, logging
# and profiling functions act on the database; read_*, glob and parquet_*
# touch files) is refused. Functions in expressions: any scalar, aggregate,
# window or macro function DuckDB lists, except those that act (write to
# the log, change a sequence or the random seed) or only wait.
TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "repeat_row",
        "json_each",
        "json_tree",
        "summary",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_dependencies",
        "duckdb_functions",
        "duckdb_indexes",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_sequences",
        "duckdb_settings",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_views",
        "pragma_table_info",
        "table_info",
        "pg_timezone_names",
        "icu_calendar_names",
    }
)
DENIED_FUNCTIONS = frozenset(
    {
        "write_log",
        "nextval",
        "setval",
        "setseed",
        "currval",
        "pg_sleep",
        "sleep_ms",
        # quadratic in their inputs' lengths, and not interruptible midway:
        # two long strings hold a read thread for as long as they run
        "levenshtein",
        "editdist3",
        "damerau_levenshtein",
        "jaro_similarity",
        "jaro_winkler_similarity",
    }
)
# Expression functions the parser names but the catalog lists otherwise.
PARSER_FUNCTIONS = frozenset({"unnest", "unlist"})


_Call = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonPool(Executor):
    """A fixed set of daemon threads running submitted calls. A
    ``ThreadPoolExecutor``'s threads are joined at interpreter exit, so one
    stuck in a call DuckDB cannot interrupt would keep a stopped collector
    alive; these are not."""

    def __init__(self, n: int, name: str, initializer: Callable[[], None] | None = None) -> None:
        self._q: queue.SimpleQueue[_Call | None]
        self._q = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._initializer = initializer
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            f: Future[Any] = Future()
            self._q.put((f, fn, args, kwargs))
            return f

    def _work(self) -> None:
        if self._initializer is not None:
            with contextlib.suppress(Exception):
                self._initializer()
        while True:
            item = self._q.get()
            if item is None:
                return
            f, fn, args, kwargs = item
            if not f.set_running_or_notify_cancel():
                continue
            try:
                f.set_result(fn(*args, **kwargs))
            except BaseException as e:  # the thread outlives any call
                f.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._q.put(None)
        if wait:
            for t in self._threads:
                t.join()

    def join(self, timeout_s: float) -> bool:
        """Waits (at most ``timeout_s`` in all) for the threads to end after
        :meth:`shutdown`; whether they all did."""
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


def close_off_pool(fn: Callable[..., Any], *args: Any) -> None:
    """Runs a close on a daemon thread of its own: a close may wait for a
    call DuckDB cannot interrupt, and must hold no read thread meanwhile."""
    threading.Thread(target=fn, args=args, name="modeltap-read-close", daemon=True).start()


class ReadRefused(ValueError):
    """A query that is not one read-only statement."""


class ReadTimeout(Exception):
    """A read interrupted at its deadline."""


_parser_state = threading.local()


def _calls(node: Any, out: list[tuple[str, bool]], in_table: bool = False) -> None:
    """Every function the parsed statement calls: (name, whether it is a
    table function)."""
    if isinstance(node, dict):
        if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
            fn = node["function"]
            name = fn.get("function_name")
            if isinstance(name, str):
                out.append((name.lower(), True))
            for k, v in fn.items():
                if k != "function_name":
                    _calls(v, out)
            for k, v in node.items():
                if k != "function":
                    _calls(v, out)
            return
        name = node.get("function_name")
        if isinstance(name, str):
            out.append((name.lower(), False))
        for v in node.values():
            _calls(v, out)
    elif isinstance(node, list):
        for v in node:
            _calls(v, out)


def _parser() -> duckdb.DuckDBPyConnection:
    con = getattr(_parser_state, "con", None)
    if con is None:  # a private in-memory database, only to parse
        con = duckdb.connect(
            ":memory:",
            config={
                "enable_external_access": False,
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
            },
        )
        _parser_state.con = con
        _parser_state.functions = frozenset(
            str(r[0]).lower()
            for r in con.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() "
                "WHERE function_type IN ('scalar', 'aggregate', 'window', 'macro')"
            ).fetchall()
        )
    return con


def check_read_only(sql: str) -> None:
    """Raises ``ReadRefused`` unless ``sql`` is exactly one SELECT statement
    that calls only what a read may (``TABLE_FUNCTIONS`` in FROM; in
    expressions any function DuckDB lists but ``DENIED_FUNCTIONS``). The
    read-only transaction it then runs in refuses any write regardless, and
    the store's locked configuration any setting; this says early and
    plainly what was wrong. Parsing takes time: call it off the event
    loop."""
    if not isinstance(sql, str) or not sql.strip():
        raise ReadRefused("no query given")
    if len(sql) > MAX_SQL_BYTES:
        raise ReadRefused(f"the query is {len(sql):,} characters long (at most {MAX_SQL_BYTES:,})")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise ReadRefused(f"cannot parse the query: {_one_line(e)}") from None
    if len(statements) != 1:
        raise ReadRefused(f"one statement at a time (got {len(statements)})")
    kind = statements[0].type.name
    if kind != "SELECT":
        raise ReadRefused(f"only SELECT statements are run here (got {kind})")
    con = _parser()
    row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {}
    if tree.get("error"):
        raise ReadRefused(f"cannot parse the query: {tree.get('error_message', '')}")
    calls: list[tuple[str, bool]] = []
    _calls(tree.get("statements"), calls)
    known: frozenset[str] = _parser_state.functions
    refused = sorted(
        {
            name
            for name, table in calls
            if (
                name not in TABLE_FUNCTIONS
                if table
                else name in DENIED_FUNCTIONS
                or (name not in known and name not in PARSER_FUNCTIONS)
            )
        }
    )
    if refused:
        raise ReadRefused(
            f"a read may not call {', '.join(refused)} (a read calls the functions that "
            "compute values; no table function that runs SQL, touches a file or acts on "
            "the store)"
        )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


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
            if self._closed or self.interrupted:
                raise ReadTimeout("the read passed its deadline before it began")
            cur = self.reader.cursor()
            self._cur = cur
            try:
                cur.execute("BEGIN TRANSACTION READ ONLY")
                if self.interrupted:  # an interrupt before the query began is not kept
                    raise ReadTimeout("the read passed its deadline before it began")
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
            if len(data) > self.reader.max_piece_bytes:
                raise ReadRefused(
                    f"a row of the result takes {len(data):,} bytes, more than a message may "
                    f"carry ({self.reader.max_piece_bytes:,}): select fewer or narrower columns"
                )
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

    def close(self, wait_s: float | None = None) -> None:
        """Ends the transaction and closes the cursor (waiting at most
        ``wait_s`` for a call still running on it, when given)."""
        self._closed = True
        self.interrupt()
        if not self._lock.acquire(timeout=-1 if wait_s is None else wait_s):
            return
        try:
            self._batches = None
            self._pending = None
            cur, self._cur = self._cur, None
            if cur is not None:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                with contextlib.suppress(duckdb.Error):
                    cur.close()
        finally:
            self._lock.release()


class StoreReader:
    """The collector's reads (see the module's docstring)."""

    def __init__(
        self,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        *,
        max_reads: int = DEFAULT_MAX_READS,
        max_admitted: int = DEFAULT_MAX_ADMITTED,
        timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_piece_bytes: int = 64 << 20,
    ) -> None:
        if max_reads < 1:
            raise ValueError("max_reads must be at least 1")
        self._connect = connect
        self.max_reads = max_reads
        self.max_admitted = max(max_reads, max_admitted)
        self.timeout_s = timeout_s
        self.max_piece_bytes = max_piece_bytes
        # Query streams run on `pool`; the collector's own reads (drift,
        # traces, latency, the pages, `run`) on `analysis_pool`, so that
        # misbehaving queries cannot keep those from answering.
        self.pool = DaemonPool(max_reads, "modeltap-read", initializer=lower_priority)
        self.analysis_pool = DaemonPool(
            max(2, max_reads // 2), "modeltap-analysis", initializer=lower_priority
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
        self._cursors: set[duckdb.DuckDBPyConnection] = set()  # of run() jobs

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the store (shares the writer's database)."""
        with self._lock:
            return self._connect()

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
        """Closes a session (on a read thread) and counts it out (once:
        :meth:`close` may have counted it out already)."""
        try:
            s.close()
        finally:
            with self._lock:
                mine = s in self._sessions
                self._sessions.discard(s)
                self.rows_sent += s.rows
                self.bytes_sent += s.bytes
            if mine:
                self.release(ok, timed_out)

    def run(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Future[Any]:
        """Runs ``fn(cursor)`` in a read-only transaction on a read thread
        (admitted like any read: ``Overloaded`` past ``max_admitted``). The
        read is counted out however it ends, also when its future is
        cancelled before it ran (a caller gone)."""
        self.admit()
        deadline = time.monotonic() + self.timeout_s
        ran = threading.Event()

        def interrupt(cur: duckdb.DuckDBPyConnection) -> None:
            with contextlib.suppress(Exception):  # closed meanwhile
                cur.interrupt()

        def job() -> Any:
            ran.set()
            ok = timed_out = False
            cur = None
            timer: threading.Timer | None = None
            try:
                if time.monotonic() >= deadline:
                    timed_out = True
                    raise ReadTimeout(f"the read waited over {self.timeout_s:g} s to run")
                cur = self.cursor()
                with self._lock:
                    self._cursors.add(cur)
                timer = threading.Timer(max(0.0, deadline - time.monotonic()), interrupt, [cur])
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
                    with self._lock:
                        self._cursors.discard(cur)
                    with contextlib.suppress(duckdb.Error):
                        cur.execute("ROLLBACK")
                    with contextlib.suppress(duckdb.Error):
                        cur.close()
                self.release(ok, timed_out)

        try:
            fut = self.analysis_pool.submit(job)
        except RuntimeError:  # the pool is shut down
            self.release(False)
            raise StoreUnavailable("the collector is stopping") from None

        def done(f: Future[Any]) -> None:
            if f.cancelled() and not ran.is_set():
                self.release(False)

        fut.add_done_callback(done)
        return fut

    def close(self, wait_s: float = 5.0) -> None:
        """Stops every read: queued ones are cancelled, running ones
        interrupted, and every session's transaction and cursor closed
        (a query DuckDB cannot interrupt is waited for at most
        ``wait_s``), so that the store can be closed."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.analysis_pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            sessions = list(self._sessions)
            cursors = list(self._cursors)
        for s in sessions:
            s.interrupt()
        for c in cursors:
            with contextlib.suppress(Exception):
                c.interrupt()
        deadline = time.monotonic() + wait_s
        for s in sessions:
            s.close(max(0.0, deadline - time.monotonic()))
            with self._lock:
                if s not in self._sessions:
                    continue  # counted out by its own finish meanwhile
                self._sessions.discard(s)
            self.release(False)
        # The interrupted calls end soon: wait for them (bounded), so that no
        # read thread is inside the database when it closes.
        for pool in (self.pool, self.analysis_pool):
            pool.join(max(0.0, deadline - time.monotonic()))


class CollectorReads(Reads):
    """The read API inside the collector (its live pages): each query runs
    on a read thread like a client's, admitted and bounded the same way,
    its result (small: the pages aggregate in SQL) returned whole."""

    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader

    def stream(
        self, query: str, params: Sequence[Any] | None = None, *, rows: int | None = None
    ) -> pa.RecordBatchReader:
        check_read_only(query)
        fut = self.reader.run(lambda cur: arrow_reader(cur, query, params, FETCH_ROWS).read_all())
        try:
            table = fut.result(PAGE_TIMEOUT_S)
        except FutureTimeout:
            fut.cancel()
            raise ReadTimeout(f"the store did not answer within {PAGE_TIMEOUT_S:g} s") from None
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


class CursorReads(Reads):
    """The read API over one read connection, inside a read the collector
    runs (:meth:`StoreReader.run`): the analyses run on it there exactly as
    they do on a store file or through a client."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def stream(
        self, query: str, params: Sequence[Any] | None = None, *, rows: int | None = None
    ) -> pa.RecordBatchReader:
        return arrow_reader(self.cur, query, params, rows or FETCH_ROWS)
