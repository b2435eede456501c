"""``Agent.log_batch``: arrays, and pandas/polars DataFrames or Arrow
tables read column by column (large ones a slice at a time)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modeltap import _core
from modeltap._agent_state import _AgentState
from modeltap.reference import category_codes

log = logging.getLogger("modeltap")


class _AgentBatches(_AgentState):
    """Logging many predictions in one call."""

    def log_batch(
        self,
        X: Any,
        predictions: Any,
        probabilities: Any = None,
        *,
        latency_s: Any = None,
        request_ids: Sequence[str] | None = None,
    ) -> _core.RequestIds:
        """Logs a batch of predictions and returns their request ids.

        ``X`` is a 2-D array of shape (rows, features); float32 and float64
        arrays, C or F order, are read in place, other array-likes converted
        once. ``X`` may also be a pandas or polars DataFrame or an Arrow table
        whose columns are the features (any order), categorical (string)
        columns included: each distinct value is interned once, with no
        per-row Python loop. ``predictions`` holds one value (or vector) per row;
        ``probabilities`` is an optional (rows, classes) array; ``latency_s``
        is one number for all rows or one per row.

        The ids come back as a :class:`modeltap.RequestIds`, a read-only
        sequence of ``str`` in row order (``len``, indexing, slicing,
        iteration, ``==`` with a list) that keeps the ids as 16-byte values
        and spells each only when read: a million-row batch builds no
        million strings. ``ids.tolist()`` gives a ``list[str]``; rows that
        were rejected give an empty one.

        A DataFrame of more than 65,536 rows is read in slices of that many
        (outside strict mode, when every per-row argument has one entry per
        row), so converting it never takes more memory than one slice: a
        slice that cannot be read is rejected on its own and contributes no
        ids.
        """
        if (
            not self.strict
            and _is_frame(X)
            and _n_rows(X) > FRAME_SLICE_ROWS
            and _per_row(_n_rows(X), predictions, probabilities, latency_s, request_ids)
        ):
            return self._log_frame_slices(X, predictions, probabilities, latency_s, request_ids)
        try:
            coded = False
            overflow: dict[int, list[tuple[int, str]]] | None = None
            if _is_frame(X):
                try:
                    X, overflow = self._frame_matrix(X, predictions, probabilities)
                except _core.InvalidRecord:
                    # Already counted (strict mode raises it after counting).
                    raise
                except Exception as e:
                    # Its rows were handed over: count them (InvalidRecord
                    # in strict mode), never lose them silently.
                    self._rec.reject(_n_rows(X), f"the DataFrame could not be read: {e!r}")
                    return _core.RequestIds()
                if X is None:
                    return _core.RequestIds()
                coded = True
            elif not (isinstance(X, np.ndarray) and X.dtype in (np.float32, np.float64)):
                # What cannot be converted, the recorder rejects with a clear message.
                with contextlib.suppress(TypeError, ValueError):
                    X = np.asarray(X, dtype=np.float64)
            if isinstance(X, np.ndarray) and X.ndim == 1 and X.size > 0:
                X = X.reshape(1, -1)
            if isinstance(probabilities, (list, tuple)):
                # Rows of class probabilities as lists: one array (a ragged
                # one stays as it is, for the recorder to reject clearly).
                with contextlib.suppress(TypeError, ValueError):
                    probabilities = np.asarray(probabilities, dtype=np.float64)
            return self._rec.log_batch(
                X,
                predictions,
                probabilities,
                latency_s=latency_s,
                request_ids=request_ids,
                coded=coded,
                overflow=overflow,
            )
        except _core.InvalidRecord:
            raise
        except Exception:
            if self.strict:
                raise
            self._rec.count_error()
            log.exception("modeltap: log_batch failed")
            return _core.RequestIds()

    def _log_frame_slices(
        self,
        X: Any,
        predictions: Any,
        probabilities: Any,
        latency_s: Any,
        request_ids: Sequence[str] | None,
    ) -> _core.RequestIds:
        """``log_batch`` of a large frame, ``FRAME_SLICE_ROWS`` rows at a time."""
        n = _n_rows(X)
        predictions = _rows_of(predictions)
        probabilities = _rows_of(probabilities)
        per_row_latency = latency_s is not None and _sized(latency_s)
        latency = _rows_of(latency_s) if per_row_latency else latency_s
        ids = _rows_of(request_ids)
        parts = []
        for start in range(0, n, FRAME_SLICE_ROWS):
            stop = min(start + FRAME_SLICE_ROWS, n)
            try:
                args = (
                    _frame_rows(X, start, stop),
                    predictions[start:stop],
                    None if probabilities is None else probabilities[start:stop],
                    latency[start:stop] if per_row_latency else latency,
                    None if ids is None else ids[start:stop],
                )
            except Exception as e:
                # Handed over, never readable: counted, never lost silently.
                self._rec.reject(n - start, f"rows {start}: of the DataFrame unreadable: {e!r}")
                break
            x, p, pr, lat, rid = args
            parts.append(self.log_batch(x, p, pr, latency_s=lat, request_ids=rid))
        return _core.RequestIds.join(parts)

    def _frame_matrix(
        self, X: Any, predictions: Any, probabilities: Any
    ) -> tuple[np.ndarray | None, dict[int, list[tuple[int, str]]] | None]:
        """A pandas/polars DataFrame or Arrow table as a float64 matrix in
        schema order, categorical columns as vocabulary codes (each distinct
        value interned once, no per-row Python loop), and the values that
        did not fit a full vocabulary: ``{feature: [(row, value), ...]}``,
        carried beside their records."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = _as_arrow(X)
        names = [str(c) for c in table.column_names]
        if not names:
            # Arrow sees no rows in a table without columns; the frame may
            # have had some.
            if n_rows := _n_rows(X):
                self._rec.reject(n_rows, "a DataFrame without columns has no features")
            return None, None
        if self._rec.feature_names is None:
            strings = [
                n
                for n in names
                if not (
                    pa.types.is_integer(table.column(n).type)
                    or pa.types.is_floating(table.column(n).type)
                    or pa.types.is_boolean(table.column(n).type)
                )
            ]
            pred = np.asarray(predictions) if not isinstance(predictions, list) else None
            out_w = pred.shape[1] if pred is not None and pred.ndim == 2 else 1
            prob_w = None if probabilities is None else np.asarray(probabilities).shape[1]
            self._rec.init_schema(names, strings, out_w, prob_w)
        schema = self._rec.feature_names or []
        missing = [n for n in schema if n not in names]
        extra = [n for n in names if n not in schema]
        if missing or extra:
            self._rec.reject(
                table.num_rows,
                f"DataFrame columns do not match the features: missing {missing}, unknown {extra}",
            )
            return None, None
        cats = set(self._rec.categorical)
        overflow: dict[int, list[tuple[int, str]]] = {}
        out = np.empty((table.num_rows, len(schema)), dtype=np.float64)
        for i, name in enumerate(schema):
            col = table.column(name).combine_chunks()
            if name in cats:
                # Encoded as the values are, only the distinct ones spelled
                # (the same codes `Reference.drift` reads).
                idx, values = category_codes(col)
                codes = np.asarray(self._rec.intern(i, values), dtype=np.float64)
                full = np.isnan(codes)
                if full.any():
                    # The vocabulary is full: these values travel as strings.
                    rows = np.flatnonzero((idx >= 0) & full[np.maximum(idx, 0)])
                    overflow[i] = [(int(r), str(values[idx[r]])) for r in rows]
                vals = np.where(
                    idx >= 0, codes[np.maximum(idx, 0)] if len(codes) else np.nan, np.nan
                )
                out[:, i] = vals
            else:
                out[:, i] = (
                    pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
                )
        return out, overflow or None


def _n_rows(X: Any) -> int:
    try:
        return int(X.shape[0])
    except Exception:
        try:
            return len(X)
        except Exception:
            return 1


# A DataFrame larger than this is converted and logged a slice at a time.
FRAME_SLICE_ROWS = 65_536


def _sized(v: Any) -> bool:
    return hasattr(v, "__len__") and not isinstance(v, (str, bytes))


def _per_row(
    n: int, predictions: Any, probabilities: Any, latency_s: Any, request_ids: Any
) -> bool:
    """Whether the per-row arguments can be sliced with the frame: each has
    exactly ``n`` rows and takes a slice (``latency_s`` may also be one
    number, ``probabilities`` and ``request_ids`` None). Anything else (a
    generator, a scalar prediction, a mapping) goes to the one-call path,
    which reads or rejects it whole."""

    def rows(v: Any) -> bool:
        if not _sized(v) or isinstance(v, Mapping):
            return False
        try:
            return len(v) == n and len(_rows_of(v)[0:1]) == min(n, 1)
        except Exception:
            return False

    return (
        rows(predictions)
        and (probabilities is None or rows(probabilities))
        and (latency_s is None or not _sized(latency_s) or rows(latency_s))
        and (request_ids is None or rows(request_ids))
    )


def _rows_of(v: Any) -> Any:
    """Something sliceable by row position (a pandas object by its values)."""
    if v is not None and type(v).__module__.startswith("pandas") and hasattr(v, "to_numpy"):
        return v.to_numpy()
    return v


def _frame_rows(X: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of a pandas/polars DataFrame or Arrow table,
    without copying."""
    mod = type(X).__module__
    if mod.startswith("pandas"):
        return X.iloc[start:stop]
    return X.slice(start, stop - start)


def _is_frame(X: Any) -> bool:
    mod = type(X).__module__
    return mod.startswith(("pandas", "polars", "pyarrow")) and hasattr(X, "columns")


def _as_arrow(X: Any) -> Any:
    import pyarrow as pa

    mod = type(X).__module__
    if mod.startswith("pyarrow"):
        return X
    if mod.startswith("polars"):
        return X.to_arrow()
    try:
        return pa.Table.from_pandas(X, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # A column Arrow cannot read as it is (strings and numbers mixed):
        # its values spelled one by one, as log() spells them.
        from modeltap.reference import spelled_objects

        cols = {}
        for name in X.columns:
            try:
                cols[str(name)] = pa.Array.from_pandas(X[name])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                cols[str(name)] = spelled_objects(X[name].to_numpy())
        return pa.table(cols)
