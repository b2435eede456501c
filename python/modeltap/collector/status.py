"""The status of every failed call of the collector: one place maps what
went wrong to what the caller should do (see the table in ``server``)."""

from __future__ import annotations

import logging

import duckdb
import grpc

from modeltap import _core
from modeltap.collector.reader import ReadTimeout
from modeltap.collector.store import (
    BatchRejected,
    LimitReached,
    Overloaded,
    StoredDataInvalid,
    StoreUnavailable,
)

log = logging.getLogger("modeltap.collector")

Code = grpc.StatusCode

_DUCKDB_CODES: list[tuple[type[BaseException] | tuple[type[BaseException], ...], Code]] = [
    ((duckdb.OutOfMemoryException,), Code.RESOURCE_EXHAUSTED),
    ((duckdb.PermissionException, duckdb.TransactionException), Code.PERMISSION_DENIED),
    ((duckdb.ConnectionException, duckdb.IOException), Code.UNAVAILABLE),
    ((duckdb.InterruptException,), Code.DEADLINE_EXCEEDED),
    (
        (
            duckdb.ParserException,
            duckdb.BinderException,
            duckdb.CatalogException,
            duckdb.ConversionException,
            duckdb.InvalidInputException,
            duckdb.OutOfRangeException,
            duckdb.NotImplementedException,
            duckdb.SyntaxException,
            duckdb.DataError,
            duckdb.ProgrammingError,
        ),
        Code.INVALID_ARGUMENT,
    ),
]


MAX_DETAILS = 4096  # characters of a status's details (they travel in a header)


class Refusal(Exception):
    """An RPC answered with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        if len(details) > MAX_DETAILS:  # an error quoting a huge input
            details = details[: MAX_DETAILS - 16] + " ... (cut)"
        super().__init__(details)
        self.code = code
        self.details = details


def status_for(e: BaseException, *, arguments: bool = False) -> Refusal:
    """The status for a failure. ``arguments``: a plain ValueError is the
    caller's bad argument (drift rules), not a bug of ours."""
    if isinstance(e, Refusal):
        return e
    if isinstance(e, _core.UnsupportedSchemaVersion):
        return Refusal(Code.FAILED_PRECONDITION, str(e))
    if isinstance(e, (_core.BatchDecodeError, BatchRejected, _core.ReferenceFormatError)):
        return Refusal(Code.INVALID_ARGUMENT, str(e))
    if isinstance(e, (StoredDataInvalid, LimitReached)):
        return Refusal(Code.FAILED_PRECONDITION, str(e))
    if isinstance(e, LookupError):
        return Refusal(Code.NOT_FOUND, str(e))
    if isinstance(e, Overloaded):
        return Refusal(Code.RESOURCE_EXHAUSTED, f"collector overloaded, retry later: {e}")
    if isinstance(e, StoreUnavailable):
        return Refusal(Code.UNAVAILABLE, f"store unavailable: {e}")
    if isinstance(e, ReadTimeout):
        return Refusal(Code.DEADLINE_EXCEEDED, str(e))
    if isinstance(e, duckdb.Error):  # of a read: the caller's query, mostly
        for kinds, code in _DUCKDB_CODES:
            if isinstance(e, kinds):
                return Refusal(code, str(e))
    if arguments and isinstance(e, ValueError):
        return Refusal(Code.INVALID_ARGUMENT, str(e))
    log.error("internal error", exc_info=e)
    return Refusal(Code.INTERNAL, f"internal error: {type(e).__name__}: {e}")
