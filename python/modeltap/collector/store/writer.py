"""The store's writer: one thread that owns the backend's write
connection and writes groups of batches, each group in one transaction
(group commit), deduplicated on ``(agent_id, batch_seq)``; a failed group
is written again batch by batch so that only its culprit fails. Its queue
is bounded in batches, records, decoded bytes and jobs, and it reports its
health (serving, or why not) to the server.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from modeltap.collector.store.backend import StoreBackend, open_backend
from modeltap.collector.store.decode import DecodedBatch, group_tables
from modeltap.collector.store.errors import (
    BatchRejected,
    Overloaded,
    StoreUnavailable,
    StoreVersionError,
    WriterError,
)

log = logging.getLogger("modeltap.collector")


@dataclass
class Job:
    """Work for the writer thread (reads, reference writes)."""

    fn: Callable[[Any], Any]
    future: Future[Any] = field(default_factory=Future)
    nbytes: int = 0
    n_records: int = 0
    backend: bool = False  # fn takes the backend (else its write connection)


Item = DecodedBatch | Job


def _settle(future: Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    """Resolves a future once; one its caller cancelled (the RPC's deadline
    passed) or that is already resolved is left alone."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled by its caller in between
        pass


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class StoreWriter:
    """Owns the backend's write connection on one thread and writes groups of
    batches, each group in one transaction (group commit: up to
    ``group_records`` records, waiting at most ``linger_s`` for more after
    the first). Reports its health through ``on_health(serving, reason)``.

    The queue holds at most ``max_queued_batches`` batches,
    ``max_queued_records`` records and ``max_queued_bytes`` decoded bytes
    (one batch is always taken when the queue is empty), and
    ``max_queued_jobs`` jobs; past that :meth:`submit` and :meth:`run` raise
    :class:`Overloaded`. A batch whose caller gave up before the writer took
    it (future cancelled, or ``deadline`` passed) is not written. DuckDB's
    memory is capped at ``memory_limit``."""

    def __init__(
        self,
        path: str | os.PathLike[str] | StoreBackend,
        on_health: Callable[[bool, str], None] | None = None,
        max_group: int = 64,
        retry_s: float = 1.0,
        linger_s: float = 0.02,
        group_records: int = 65_536,
        *,
        max_queued_batches: int = 1024,
        max_queued_records: int = 1 << 21,
        max_queued_bytes: int = 256 << 20,
        max_queued_jobs: int = 64,
        memory_limit: str = "1GB",
        max_known_schemas: int = 10_000,
    ) -> None:
        self.backend = (
            path
            if isinstance(path, StoreBackend)
            else open_backend(path, memory_limit=memory_limit)
        )
        self.path = self.backend.location
        self.linger_s = linger_s
        self.group_records = group_records
        self._on_health = on_health or (lambda ok, why: None)
        self.max_group = max_group
        self.retry_s = retry_s
        self.max_queued_batches = max_queued_batches
        self.max_queued_records = max_queued_records
        self.max_queued_bytes = max_queued_bytes
        self.max_queued_jobs = max_queued_jobs
        self.memory_limit = memory_limit
        self.max_known_schemas = max_known_schemas
        self._q: collections.deque[Item | None] = collections.deque()
        self._cv = threading.Condition()
        self._queued_batches = 0
        self._queued_records = 0
        self._queued_bytes = 0
        self._queued_jobs = 0
        self._thread: threading.Thread | None = None
        # feature schemas known to be stored (an LRU: one evicted is only
        # inserted again, OR IGNORE)
        self._schemas: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._held: list[Item] = []  # taken off the queue, not resolved yet
        self._busy_since: float | None = None
        self._stopping = False
        self.healthy = False
        self.reason = "not opened yet"
        self.stored_batches = 0
        self.stored_records = 0
        self.last_lag_s: float | None = None  # creation to storage, latest batch
        self.duplicates = 0
        self.rejected = 0  # batches the store refused (their data)
        self.abandoned = 0  # batches whose caller gave up before the write
        self.overloaded = 0  # submissions refused because the queue was full
        self.restarts = 0  # writer threads started again after dying
        self.internal_errors = 0
        self.out_of_memory = 0  # batches answered "retry later" for want of memory

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Opens the store (or keeps trying) and starts the writer thread.
        Raises :class:`StoreVersionError` for a store of a newer release."""
        self._open()
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modeltap-store", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Whether the writer thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def busy_for(self) -> float:
        """Seconds the writer has spent on its current group or job (0 when
        idle): a store stuck in I/O shows here."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def revive(self) -> bool:
        """Starts a new writer thread if the current one has died (it should
        not: every failure is caught; this is the last line). What the dead
        thread held fails with :class:`StoreUnavailable`; what is queued is
        written by the new one. Returns whether it had to."""
        with self._cv:
            if self._thread is None or self._thread.is_alive() or self._stopping:
                return False
            held, self._held = self._held, []
            self.restarts += 1
            log.error("store writer thread died; starting a new one")
            for item in held:
                _settle(item.future, exc=StoreUnavailable("the store writer restarted"))
            self._start_thread()
            return True

    def queued(self) -> dict[str, int]:
        """What waits in the queue now."""
        return {
            "batches": self._queued_batches,
            "records": self._queued_records,
            "bytes": self._queued_bytes,
            "jobs": self._queued_jobs,
        }

    def submit(self, batch: DecodedBatch) -> Future[tuple[bool, int]]:
        """Queues a batch; the future gives ``(duplicate, n_records)`` once
        the batch is durably stored, or raises :class:`StoreUnavailable`
        (transient), :class:`BatchRejected` (never storable),
        :class:`Overloaded` (memory) or :class:`WriterError`. Raises
        :class:`Overloaded` at once when the queue is full."""
        with self._cv:
            if self._stopping:
                raise StoreUnavailable("the collector is shutting down")
            if self._queued_batches and (
                self._queued_batches >= self.max_queued_batches
                or self._queued_records + batch.n_records > self.max_queued_records
                or self._queued_bytes + batch.nbytes > self.max_queued_bytes
            ):
                self.overloaded += 1
                raise Overloaded(
                    f"store queue full ({self._queued_batches} batches, "
                    f"{self._queued_records} records, {self._queued_bytes} bytes)"
                )
            self._queued_batches += 1
            self._queued_records += batch.n_records
            self._queued_bytes += batch.nbytes
            self._q.append(batch)
            self._cv.notify()
        return batch.future

    def run(self, fn: Callable[[Any], Any]) -> Future[Any]:
        """Runs ``fn(connection)`` on the writer thread, between groups,
        with the backend's own write connection (an engine's job).
        Raises :class:`Overloaded` when ``max_queued_jobs`` are waiting."""
        return self._job(Job(fn))

    def call(self, fn: Callable[[StoreBackend], Any]) -> Future[Any]:
        """Runs ``fn(backend)`` on the writer thread, between groups (a job
        through the backend's interface, for any engine)."""
        return self._job(Job(fn, backend=True))

    def _job(self, job: Job) -> Future[Any]:
        with self._cv:
            if self._stopping:
                raise StoreUnavailable("the collector is shutting down")
            if self._queued_jobs >= self.max_queued_jobs:
                self.overloaded += 1
                raise Overloaded(f"{self._queued_jobs} store jobs queued")
            self._queued_jobs += 1
            self._q.append(job)
            self._cv.notify()
        return job.future

    def stop(self, timeout_s: float = 30.0) -> None:
        """Writes what is queued, then closes the store cleanly."""
        with self._cv:
            self._stopping = True
            self._q.append(None)
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _set_health(self, ok: bool, reason: str) -> None:
        if ok != self.healthy or reason != self.reason:
            (log.info if ok else log.error)("store %s: %s", self.path, reason)
        self.healthy, self.reason = ok, reason
        with contextlib.suppress(Exception):
            self._on_health(ok, reason)

    def _open(self) -> bool:
        try:
            self.backend.open()
        except StoreVersionError as e:
            self._set_health(False, f"cannot open: {e}")
            raise
        except Exception as e:
            self.backend.close()
            self._set_health(False, f"cannot open: {e}")
            return False
        self._set_health(True, "serving")
        return True

    def read_root(self) -> Any:
        """Where readers take their connections from (None while the store
        is not open)."""
        return self.backend.read_root()

    def cursor(self) -> Any:
        """A new connection to the open store for one read."""
        return self.backend.cursor()

    def _close(self) -> None:
        self.backend.close()

    # -- the writer thread ---------------------------------------------------

    def _take(self, timeout: float) -> Item | bool | None:
        """The next item (None: stop), or False when nothing came in time."""
        with self._cv:
            if not self._q and timeout > 0:
                self._cv.wait(timeout)
            if not self._q:
                return False
            item = self._q.popleft()
            if isinstance(item, DecodedBatch):
                self._queued_batches -= 1
                self._queued_records -= item.n_records
                self._queued_bytes -= item.nbytes
            elif isinstance(item, Job):
                self._queued_jobs -= 1
            if item is not None:
                self._held.append(item)
            return item

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except BaseException as e:  # the thread must outlive any job
                self.internal_errors += 1
                err = WriterError(f"internal error in the store writer: {_describe(e)}")
                for item in self._held:
                    with contextlib.suppress(BaseException):
                        _settle(item.future, exc=err)
                with contextlib.suppress(BaseException):
                    log.error("store writer: unexpected failure", exc_info=e)
                    self.backend.rollback()
                time.sleep(0.01)  # a failure that repeats must not spin
            finally:
                self._held = []
                self._busy_since = None

    def _step(self) -> bool:
        """Takes and handles one group or job; True when stopping."""
        first = self._take(self.retry_s)
        if first is False:
            if not self.backend.is_open():
                with contextlib.suppress(StoreVersionError):
                    self._open()
            return False
        self._busy_since = time.monotonic()
        if isinstance(first, Job):
            self._run_job(first)
            return False
        group: list[DecodedBatch] = []
        jobs: list[Job] = []
        records = 0
        stopping = first is None
        if isinstance(first, DecodedBatch):
            group.append(first)
            records = first.n_records
        # Group commit: a transaction costs about the same for one batch
        # as for many, so wait a little for more to arrive.
        deadline = time.monotonic() + self.linger_s
        while not stopping and len(group) < self.max_group and records < self.group_records:
            nxt = self._take(deadline - time.monotonic())
            if nxt is False:
                break
            if nxt is None:
                stopping = True
            elif isinstance(nxt, Job):
                jobs.append(nxt)
            elif isinstance(nxt, DecodedBatch):
                group.append(nxt)
                records += nxt.n_records
        group = self._claim(group)
        if group:
            self._write_group(group)
        for job in jobs:
            self._run_job(job)
        if stopping:
            self._close()
            return True
        return False

    def _claim(self, group: list[DecodedBatch]) -> list[DecodedBatch]:
        """The batches someone still waits for. Once claimed, a future can
        no longer be cancelled, so resolving it cannot fail."""
        now = time.monotonic()
        out = []
        for b in group:
            if b.deadline is not None and now > b.deadline:
                self.abandoned += 1
                _settle(b.future, exc=StoreUnavailable("deadline passed while queued"))
            elif not b.future.set_running_or_notify_cancel():
                self.abandoned += 1
            else:
                out.append(b)
        return out

    def _reopen(self) -> bool:
        if self.backend.is_open():
            return True
        try:
            return self._open()
        except StoreVersionError:
            return False

    def _run_job(self, job: Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        if not self._reopen():
            job.future.set_exception(StoreUnavailable(self.reason))
            return
        try:
            arg = self.backend if job.backend else self.backend.connection()
            job.future.set_result(job.fn(arg))
        except BaseException as e:  # a job fails its own call, never the thread
            with contextlib.suppress(BaseException):
                # a job may have failed inside a transaction of its own
                self.backend.rollback()
            if isinstance(e, Exception):
                job.future.set_exception(e)
            else:  # e.g. a native panic: not an Exception, must not escape
                job.future.set_exception(WriterError(_describe(e)))

    def _write_group(self, group: list[DecodedBatch]) -> None:
        if not self._reopen():
            for b in group:
                _settle(b.future, exc=StoreUnavailable(self.reason))
            return
        added: list[str] = []

        def build(fresh: list[int]) -> Any:
            tables, new = group_tables([group[i] for i in fresh], self._schemas)
            added[:] = new
            return tables

        try:
            fresh = set(
                self.backend.append_group([(b.agent_id, b.batch_seq) for b in group], build)
            )
        except BaseException as e:  # classified below
            self._failed(group, e)
            return
        for sid in added:
            self._remember_schema(sid)
        for i, b in enumerate(group):
            is_dup = i not in fresh
            if is_dup:
                self.duplicates += 1
            else:
                self.stored_batches += 1
                self.stored_records += b.n_records
                if b.created_ns:
                    self.last_lag_s = max(time.time_ns() - b.created_ns, 0) / 1e9
            _settle(b.future, (is_dup, b.n_records))

    def _failed(self, group: list[DecodedBatch], e: BaseException) -> None:
        """A group's transaction failed: find out whose fault it was."""
        rolled_back = self.backend.is_open() and self.backend.rollback()
        kind = self.backend.classify(e)
        if kind == "store" or not rolled_back:
            self._store_failed(group, e)
        elif len(group) > 1:
            # One batch's data (or size) failed the group: write them one by
            # one so the others commit and only the culprit fails.
            log.warning(
                "a group of %d batches failed (%s); writing them one by one",
                len(group),
                _describe(e),
            )
            for b in group:
                self._write_group([b])
        elif kind == "data":
            self.rejected += 1
            b = group[0]
            log.warning(
                "batch %s/%d refused by the store: %s", b.agent_id, b.batch_seq, _describe(e)
            )
            _settle(b.future, exc=BatchRejected(f"the store refused this batch: {_describe(e)}"))
        elif kind == "memory":
            b = group[0]
            if not self.backend.fits(b.nbytes):
                self.rejected += 1
                log.warning(
                    "batch %s/%d can never fit the store's memory: %s",
                    b.agent_id,
                    b.batch_seq,
                    _describe(e),
                )
                _settle(
                    b.future,
                    exc=BatchRejected(
                        f"a batch of {b.nbytes:,} decoded bytes cannot fit the store's memory "
                        f"limit: {_describe(e)}"
                    ),
                )
            else:
                self.out_of_memory += 1
                _settle(b.future, exc=Overloaded(f"store out of memory: {_describe(e)}"))
        else:
            self.internal_errors += 1
            log.error(
                "batch %s/%d: unexpected store failure",
                group[0].agent_id,
                group[0].batch_seq,
                exc_info=e,
            )
            _settle(group[0].future, exc=WriterError(_describe(e)))

    def _store_failed(self, group: list[DecodedBatch], e: BaseException) -> None:
        self._close()
        self._set_health(False, f"write failed: {_describe(e)}")
        for b in group:
            _settle(b.future, exc=StoreUnavailable(str(e)))

    def _remember_schema(self, sid: str) -> None:
        self._schemas[sid] = None
        self._schemas.move_to_end(sid)
        while len(self._schemas) > self.max_known_schemas:
            self._schemas.popitem(last=False)
