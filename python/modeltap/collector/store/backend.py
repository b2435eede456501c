"""The interface between the store's writer and readers and a database
engine. The writer (``writer.py``) owns queueing, grouping, culprit
isolation and health; a backend owns the engine: opening it, the schema and
its migrations, appending a group of batches with dedup in one
transaction, the connections reads run on, and what its errors mean.

What a backend must guarantee (``docs/architecture.md`` says it for
whoever adds one):

- **Atomic group commit.** :meth:`StoreBackend.append_group` stores every
  row of every fresh batch of the group, or none of them; it returns only
  once the transaction is durable (an acknowledged batch survives a power
  cut).
- **Dedup key.** A batch is identified by ``(agent_id, batch_seq)``: one
  already stored, or twice in the group, adds no row. ``spans`` rows
  appended by :meth:`StoreBackend.append_spans` are identified by
  ``(trace_id, span_id)`` the same way.
- **Read isolation.** A read runs in a read-only transaction on a
  connection of its own (:meth:`StoreBackend.cursor`): it sees the store as
  committed when it began, never a group half written, and cannot write.
- **Errors classified.** :meth:`StoreBackend.classify` says whether a
  failed write is the store's (I/O: close and reopen), memory's (smaller
  writes may pass), the data's (the culprit is refused alone) or a bug.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

FailureKind = Literal["store", "memory", "data", "bug"]
# Builds the tables of a group's fresh batches (their positions in the
# group): table name -> Arrow tables to append.
TableBuilder = Callable[[list[int]], Mapping[str, Sequence[pa.Table]]]


class StoreBackend(abc.ABC):
    """One store on one engine, used by one writer thread (every method
    but :meth:`cursor` and :meth:`read_root` runs on it)."""

    #: What the store is, for logs and health reasons.
    location: str

    @abc.abstractmethod
    def open(self) -> None:
        """Opens (or creates) the store and brings its schema to
        ``schema.SCHEMA_VERSION``, each migration in a transaction of its
        own. Raises ``StoreVersionError`` for a store of a newer release,
        anything else when the engine cannot open it now."""

    @abc.abstractmethod
    def close(self) -> None:
        """Closes the store (every connection, reads' included); safe to
        call twice or on a store that never opened."""

    @abc.abstractmethod
    def is_open(self) -> bool:
        """Whether the store is open for writing."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version of the open store."""

    @abc.abstractmethod
    def append_group(self, keys: Sequence[tuple[str, int]], build: TableBuilder) -> list[int]:
        """In one transaction: finds which of ``keys`` (``(agent_id,
        batch_seq)`` of each batch of the group) are not stored yet (and
        not twice in the group: the first counts), appends the tables
        ``build(fresh)`` gives, and commits durably. Returns the fresh
        positions. On any failure rolls back and raises the engine's error
        (see :meth:`classify`)."""

    @abc.abstractmethod
    def append_spans(self, table: pa.Table) -> int:
        """Appends ``spans`` rows (OTLP's) in one transaction, leaving out
        every ``(trace_id, span_id)`` already stored or repeated in the
        table; returns how many rows it added."""

    @abc.abstractmethod
    def register_reference(
        self,
        model: str,
        version: str,
        data: bytes,
        fingerprint: str,
        *,
        max_pairs: int | None = None,
    ) -> None:
        """Stores a reference file for (model, version) (replacing one with
        the same fingerprint). Raises ``LimitReached`` when the pair is new
        and ``max_pairs`` (model, version) pairs have references already."""

    @abc.abstractmethod
    def connection(self) -> Any:
        """The writer's own connection (for the writer thread's jobs)."""

    @abc.abstractmethod
    def read_root(self) -> Any:
        """Where reads take their connections from (None while closed)."""

    @abc.abstractmethod
    def cursor(self) -> Any:
        """A new connection for one read (any thread); raises
        ``StoreUnavailable`` while the store is not open."""

    @abc.abstractmethod
    def rollback(self) -> bool:
        """Ends a failed transaction on the writer's connection; False when
        the connection is unusable."""

    @abc.abstractmethod
    def classify(self, e: BaseException) -> FailureKind:
        """What a failed write says: ``"store"`` (the store itself cannot be
        written: I/O, permissions, a closed or invalidated database),
        ``"memory"`` (over a memory limit: smaller writes may pass),
        ``"data"`` (something in the batches) or ``"bug"``."""

    def fits(self, nbytes: int) -> bool:
        """Whether a write of ``nbytes`` decoded bytes could ever fit the
        engine's memory (a batch that cannot is refused for good instead
        of retried)."""
        return True


# A store given as a URL: scheme://...; one letter before ":" is a Windows
# drive, not a scheme.
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+)://")
SCHEMES = ("duckdb",)


def open_backend(target: str | os.PathLike[str], **options: Any) -> StoreBackend:
    """The backend for a store: a path (or ``duckdb://PATH``) is an
    embedded DuckDB file. Raises ``ValueError`` for a URL of a scheme no
    backend serves, naming the ones there are."""
    text = os.fspath(target)
    m = _URL.match(text)
    if m is not None:
        scheme = m[1].lower()
        if scheme not in SCHEMES:
            shown = re.sub(r"//[^@/]*@", "//...@", text)  # never a password in a log
            raise ValueError(
                f"no store backend for {scheme}:// URLs ({shown!r}); a store is a DuckDB file "
                f"path or one of: {', '.join(s + '://' for s in SCHEMES)}"
            )
        text = text[m.end() :]
    from modeltap.collector.store.duckdb_backend import DuckDBBackend

    return DuckDBBackend(Path(text), **options)
