"""``Agent.log_label`` / ``log_labels``: ground truth for earlier
predictions, joined to them by request id at any delay. Times are turned
into Unix nanoseconds here; the labels themselves are read natively."""

from __future__ import annotations

import datetime as _dt
import logging
import math
from typing import Any

import numpy as np

from modeltap import _core
from modeltap._agent_batch import _is_frame
from modeltap._agent_state import _AgentState

log = logging.getLogger("modeltap")

# What the recorder reads as "this label's time could not be read".
_BAD_TIME = 2**64 - 1
MAX_UNIX_NANO = 2**63 - 2  # the last time a TIMESTAMPTZ column holds
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class _AgentLabels(_AgentState):
    """Logging ground truth (labels)."""

    def log_label(self, request_id: str, label: Any, *, ts: Any = None) -> None:
        """Logs the ground truth of the prediction logged with ``request_id``
        (the id ``log`` returned or was given), known at ``ts``.

        ``label`` is a class (``int``, ``str``, ``bool``, numpy integer or
        string scalars; ``True`` is the integer class 1, as for a
        prediction) or a number (``float``, numpy floats; NaN and inf are
        invalid). The type decides: ``1.0`` is a number, ``1`` a class.
        ``ts`` is when the truth became known: ``None`` (now), Unix seconds
        (float), a ``datetime`` (naive ones read as UTC), a
        ``numpy.datetime64`` or Unix nanoseconds (int).

        A label is no record: it is counted in ``stats()["labels"]`` (or
        ``labels_dropped`` when the ring is full under ``on_full="drop"``).
        A label that cannot be read (a bad value, id or time) is counted
        ``invalid`` and warned about, or raises :class:`InvalidRecord` in
        strict mode.
        """
        try:
            ns = None if ts is None else _time_ns(ts)
        except (TypeError, ValueError, OverflowError) as e:
            self._rec.reject(1, f"label for {request_id!r}: ts {ts!r} is not a time ({e})")
            return
        self._rec.log_label(request_id, label, unix_nano=ns)

    def log_labels(self, request_ids: Any, labels: Any = None, ts: Any = None) -> int:
        """Logs many labels; returns how many were accepted into the ring.

        ``request_ids``: a sequence of ``str``, a numpy array of strings or
        objects, or the :class:`RequestIds` ``log_batch`` returned (read
        without spelling them). ``labels``: one per id, a sequence or numpy
        array (int, float, str, bool or object), each read as
        :meth:`log_label` reads one. Or a pandas/polars DataFrame with
        columns ``request_id``, ``label`` and optionally ``ts`` as the
        first argument, ``labels`` left out. ``ts``: ``None`` (now), one
        time for all, or one per label, in the forms :meth:`log_label`
        takes.

        Each label is checked on its own: a bad one is counted ``invalid``
        and the others still go in (strict mode raises
        :class:`InvalidRecord` after they did). Lengths that do not match
        refuse the whole call the same way.
        """
        try:
            if labels is None and _is_frame(request_ids):
                frame = request_ids
                cols = [str(c) for c in frame.columns]
                if "request_id" not in cols or "label" not in cols:
                    self._rec.reject(
                        len(frame), f"a label frame needs request_id and label columns, not {cols}"
                    )
                    return 0
                request_ids = _column(frame, "request_id")
                labels = _column(frame, "label")
                if ts is None and "ts" in cols:
                    ts = _column(frame, "ts")
            if labels is None:
                self._rec.reject(_length(request_ids), "log_labels needs labels")
                return 0
            labels = _label_array(labels)
            if isinstance(request_ids, np.ndarray) or _is_series(request_ids):
                request_ids = np.asarray(request_ids, dtype=object)
            try:
                times = _times(ts, _length(labels))
            except (TypeError, ValueError, OverflowError) as e:
                self._rec.reject(_length(labels), f"ts {ts!r} is not a time ({e})")
                return 0
            return int(self._rec.log_labels(request_ids, labels, unix_nano=times))
        except _core.InvalidRecord:
            raise
        except Exception:
            if self.strict:
                raise
            self._rec.count_error()
            log.exception("modeltap: log_labels failed")
            return 0


def _is_series(v: Any) -> bool:
    return type(v).__module__.startswith(("pandas", "polars")) and hasattr(v, "to_numpy")


def _column(frame: Any, name: str) -> Any:
    return frame[name]


def _length(v: Any) -> int:
    try:
        return len(v)
    except Exception:
        return 1


def _label_array(labels: Any) -> Any:
    """Labels as the recorder reads them fastest: float64 and int64 arrays
    as they are, other numeric arrays converted (bools to int64: a bool
    label is the integer class 0 or 1), anything else left as it is."""
    if _is_series(labels):
        labels = labels.to_numpy()
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            return list(labels)
        kind = labels.dtype.kind
        if kind == "f":
            return np.ascontiguousarray(labels, dtype=np.float64)
        if kind in "iub":
            if kind == "u" and labels.size and int(labels.max()) >= 2**63:
                return labels.astype(object)
            return np.ascontiguousarray(labels, dtype=np.int64)
    return labels


def _time_ns(t: Any) -> int:
    """One time as Unix nanoseconds (see ``Agent.log_label``)."""
    ns: int
    if isinstance(t, (bool, np.bool_)):
        raise TypeError("a bool is not a time")
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        delta = t - _EPOCH
        ns = delta // _dt.timedelta(microseconds=1) * 1000
        ns += int(getattr(t, "nanosecond", 0))  # pandas.Timestamp
    elif isinstance(t, np.datetime64):
        if np.isnat(t):
            raise ValueError("NaT")
        ns = int(t.astype("datetime64[ns]").astype(np.int64))
    elif isinstance(t, (int, np.integer)):
        ns = int(t)
    elif isinstance(t, (float, np.floating)):
        if not math.isfinite(t):
            raise ValueError("not finite")
        ns = int(float(t) * 1e9)
    else:
        raise TypeError(f"{type(t).__name__} is not a time")
    if not 0 <= ns <= MAX_UNIX_NANO:
        # What the store's timestamps hold: a later time would have the
        # collector refuse the whole batch it travels in.
        raise ValueError("outside 1970..2262")
    return ns


def _times(ts: Any, n: int) -> int | np.ndarray | None:
    """``None``, one time, or one per label as a uint64 array, where a time
    that cannot be read is ``_BAD_TIME`` (that label alone is refused)."""
    if ts is None:
        return None
    if _is_series(ts):
        ts = ts.to_numpy()
    if isinstance(ts, (str, bytes)) or not hasattr(ts, "__len__"):
        return _time_ns(ts)
    if isinstance(ts, np.ndarray) and ts.ndim == 0:
        return _time_ns(ts[()])
    if isinstance(ts, np.ndarray) and ts.dtype.kind == "M":
        nat = np.isnat(ts)
        ns = ts.astype("datetime64[ns]").astype(np.int64)
        bad = nat | (ns < 0) | (ns > MAX_UNIX_NANO)
        return np.where(bad, _BAD_TIME, ns.astype(np.uint64)).astype(np.uint64)
    out = np.empty(len(ts), dtype=np.uint64)
    for i, t in enumerate(ts):
        try:
            out[i] = _time_ns(t)
        except (TypeError, ValueError, OverflowError):
            out[i] = _BAD_TIME
    return out
