"""What the store's writer and readers raise, whatever the backend."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The store cannot be written right now; the batch was not stored."""


class Overloaded(Exception):
    """The writer's queue is full, or a write ran out of memory: the batch
    was not stored (retry later)."""


class BatchRejected(ValueError):
    """The store refused this batch's data; it can never be stored."""


class WriterError(Exception):
    """The writer failed on this batch or job for a reason of its own."""


class StoreVersionError(Exception):
    """The store was written by a newer release (its schema version is
    past the ones this release knows), or cannot be migrated."""


class LimitReached(Exception):
    """A bound of the store's is reached (the number of reference names):
    the call cannot succeed until something changes."""
