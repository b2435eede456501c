"""Ground truth from label services that have no agent: label columns read
from what users hold (sequences, numpy arrays, a DataFrame, a CSV or
Parquet file), checked row by row, and sent to a collector in batches that
are stored exactly once (``Client.submit_labels``, ``modeltap labels
import``).

A label is a class (an int or a string, spelled as predictions are) or a
number (a float: regression). It joins the prediction of the same model and
request id whenever both are stored, in either order; a second label for an
id is a correction (the latest by event time wins, every one is kept)."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modeltap._agent_labels import MAX_UNIX_NANO, _time_ns

MAX_ID_BYTES = 256  # as request ids of Agent.log

CHUNK_LABELS = 100_000  # labels a SubmitLabels batch carries at most
MAX_LISTED = 20  # bad rows named in a summary


@dataclass
class LabelColumns:
    """Checked label columns: ids, labels (an int64, float64 or object array)
    and event times in Unix nanoseconds."""

    request_ids: list[str]
    labels: np.ndarray
    unix_nano: np.ndarray

    def __len__(self) -> int:
        return len(self.request_ids)

    def chunks(self, size: int = CHUNK_LABELS) -> Iterator[LabelColumns]:
        for i in range(0, len(self), size):
            yield LabelColumns(
                self.request_ids[i : i + size],
                self.labels[i : i + size],
                self.unix_nano[i : i + size],
            )


@dataclass
class BadRows:
    """Rows left out, counted, the first few named with why."""

    count: int = 0
    first: list[tuple[int, str]] = field(default_factory=list)

    def add(self, row: int, why: str) -> None:
        self.count += 1
        if len(self.first) < MAX_LISTED:
            self.first.append((row, why))

    def __str__(self) -> str:
        named = "; ".join(f"row {r}: {w}" for r, w in self.first)
        more = f" (and {self.count - len(self.first)} more)" if self.count > len(self.first) else ""
        return f"{self.count} bad rows left out: {named}{more}"


def _now_ns() -> int:
    return time.time_ns()


def _ns_of(t: Any) -> int:
    """Unix nanoseconds of one time, as ``Agent.log_label`` reads it (a
    datetime, naive ones UTC; a datetime64; float Unix seconds; int Unix
    nanoseconds), or an ISO time spelled out (a CSV)."""
    if isinstance(t, str):
        try:
            t = dt.datetime.fromisoformat(t.strip())
        except ValueError:
            raise ValueError(f"not a time: {t!r}") from None
    try:
        return _time_ns(t)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"not a time: {t!r} ({e})") from None


def _times(ts: Any, n: int, bad: BadRows, keep: np.ndarray, first_row: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    if ts is None:
        out[:] = _now_ns()
        return out
    if isinstance(ts, (str, bytes)) or not hasattr(ts, "__len__"):
        out[:] = _ns_of(ts)
        return out
    arr = np.asarray(ts)
    if arr.dtype.kind == "M":
        ns = arr.astype("datetime64[ns]").astype(np.int64)
        invalid = np.isnat(arr) | (ns < 0)
        out[:] = np.where(invalid, 0, ns).astype(np.uint64)
        for r in np.flatnonzero(invalid & keep):
            bad.add(first_row + int(r), "no time")
            keep[r] = False
        return out
    if len(arr) != n:
        raise ValueError(f"{len(arr)} times for {n} labels")
    if arr.dtype.kind in "iuf":  # checked all at once: floats seconds, ints ns
        approx = arr.astype(np.float64) * (1e9 if arr.dtype.kind == "f" else 1.0)
        invalid = ~np.isfinite(approx) | (approx < 0) | (approx > MAX_UNIX_NANO)
        exact: np.ndarray = approx if arr.dtype.kind == "f" else arr
        out[:] = np.where(invalid, 0, exact).astype(np.uint64)
        for r in np.flatnonzero(invalid & keep):
            bad.add(first_row + int(r), f"not a time: {arr[r]}")
            keep[r] = False
        return out
    for i, t in enumerate(list(ts) if arr.dtype == object else arr.tolist()):
        if not keep[i]:
            out[i] = 0
            continue
        try:
            out[i] = _ns_of(t)
        except ValueError as e:
            bad.add(first_row + i, str(e))
            keep[i] = False
            out[i] = 0
    return out


def _frame_columns(frame: Any) -> tuple[Any, Any, Any]:
    cols = list(getattr(frame, "columns", None) or getattr(frame, "column_names", []))
    if "request_id" not in cols or "label" not in cols:
        raise ValueError(f"a frame of labels needs columns request_id and label (it has {cols})")

    def column(name: str) -> Any:
        c = frame[name]
        if hasattr(c, "to_numpy"):
            try:
                return c.to_numpy(zero_copy_only=False)
            except TypeError:
                return c.to_numpy()
        return c

    return column("request_id"), column("label"), column("ts") if "ts" in cols else None


def _label_array(labels: Any, n: int) -> np.ndarray:
    arr = labels if isinstance(labels, np.ndarray) else None
    if arr is None:
        items = list(labels)
        if len(items) != n:
            raise ValueError(f"{len(items)} labels for {n} request ids")
        if all(type(x) is int for x in items):
            return np.asarray(items, dtype=np.int64)
        if all(type(x) is float for x in items):
            return np.asarray(items, dtype=np.float64)
        arr = np.empty(n, dtype=object)
        arr[:] = items
        return arr
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"labels of shape {arr.shape} for {n} request ids")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind in "US":
        return arr.astype(object)
    return arr


def columns(
    request_ids: Any, labels: Any = None, ts: Any = None, *, first_row: int = 0
) -> tuple[LabelColumns, BadRows]:
    """Label columns from ids and labels (sequences, numpy arrays, a
    ``RequestIds``) or from a frame with columns ``request_id``, ``label``
    and optionally ``ts`` (pandas, polars, pyarrow) given alone. Rows with
    no id, an id past 256 bytes, no label, a NaN or infinite number, or a
    time that is none are left out and counted (``first_row`` numbers them
    within a larger file); the others are kept in order."""
    if labels is None:
        if not hasattr(request_ids, "columns") and not hasattr(request_ids, "column_names"):
            raise ValueError("labels is required unless a frame of request_id, label is given")
        request_ids, labels, frame_ts = _frame_columns(request_ids)
        ts = frame_ts if ts is None else ts
    ids_in: Sequence[Any] = (
        request_ids.tolist() if isinstance(request_ids, np.ndarray) else list(request_ids)
    )
    n = len(ids_in)
    lab = _label_array(labels, n)
    bad = BadRows()
    keep = np.ones(n, dtype=bool)
    ids: list[str] = []
    for i, rid in enumerate(ids_in):
        if not isinstance(rid, str) or not rid:
            bad.add(first_row + i, "no request id")
            keep[i] = False
        elif len(rid) > MAX_ID_BYTES // 4 and len(rid.encode()) > MAX_ID_BYTES:
            bad.add(first_row + i, f"a request id past {MAX_ID_BYTES} bytes")
            keep[i] = False
        ids.append(rid if isinstance(rid, str) else "")
    if lab.dtype == np.float64:
        for r in np.flatnonzero(~np.isfinite(lab) & keep):
            bad.add(first_row + int(r), "a label that is NaN or infinite")
            keep[r] = False
    elif lab.dtype == object:
        for i, x in enumerate(lab):
            if not keep[i]:
                continue
            why = _bad_label(x)
            if why:
                bad.add(first_row + i, why)
                keep[i] = False
    ns = _times(ts, n, bad, keep, first_row)
    bad.first.sort()
    if keep.all():
        return LabelColumns(ids, lab, ns), bad
    rows = np.flatnonzero(keep)
    return LabelColumns([ids[i] for i in rows], lab[rows], ns[rows]), bad


def _bad_label(x: Any) -> str | None:
    if x is None:
        return "no label"
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, (int, np.integer, str)):
        return None if not isinstance(x, str) or x else "an empty label"
    if isinstance(x, (float, np.floating)):
        return None if math.isfinite(float(x)) else "a label that is NaN or infinite"
    return f"a label of type {type(x).__name__} (a class is an int or a string, a number a float)"


Progress = Callable[[int], None]
