"""The read API shared by :class:`modeltap.Store` (a store file, opened while
no collector writes it) and :class:`modeltap.Client` (a running collector):
the same methods, the same Arrow tables, whichever :func:`modeltap.connect`
returns.

This module is imported by its sources (the store file, the client, the
collector's own reads) and by what reads through them (the analyses, the
report), never the other way round: it imports none of them."""

from __future__ import annotations

import abc
import datetime as dt
import re
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pyarrow is imported when a read is made, not by agents
    import pyarrow as pa

TimeArg = dt.datetime | str | int | float | None

# Labels a part of a join over labels holds (see Reads.label_counts).
LABEL_PART = 2_000_000

_DURATION = re.compile(r"(\d+(?:\.\d*)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(t: TimeArg, now: float | None = None) -> int | None:
    """Unix nanoseconds from a datetime (naive ones are UTC), an ISO time,
    a duration back from now ("90s", "15m", "1h", "7d") or Unix seconds
    (an int or a float, as ``time.time()`` gives)."""
    if t is None:
        return None
    if isinstance(t, bool):
        raise TypeError("a time cannot be a bool")
    if isinstance(t, (int, float)):
        if t != t or t in (float("inf"), float("-inf")):
            raise ValueError(f"not a time: {t}")
        return _clamp(t * 1e9)
    if isinstance(t, str):
        m = _DURATION.fullmatch(t.strip())
        if m:
            return _clamp(((now or time.time()) - float(m[1]) * _UNITS[m[2]]) * 1e9)
        try:
            t = dt.datetime.fromisoformat(t.strip())
        except ValueError:
            raise ValueError(
                f"not a time: {t!r} (an ISO time such as 2026-01-31T12:00, "
                "or a duration back from now such as 15m, 1h, 7d)"
            ) from None
    if not isinstance(t, dt.datetime):
        raise TypeError(f"not a time: {type(t).__name__}")
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return _clamp(t.timestamp() * 1e9)


MAX_UNIX_NANO = 2**63 - 1


def _clamp(ns: float) -> int:
    """Unix ns within what the store's timestamps hold (1970 to 2262):
    a time before or after that means "from the start" or "to the end"."""
    return int(min(max(ns, 0.0), float(MAX_UNIX_NANO - 1024)))


def arrow_reader(
    cur: Any, query: str, params: Sequence[Any] | None, rows: int
) -> pa.RecordBatchReader:
    """Runs ``query`` on a DuckDB connection and returns its result as a
    RecordBatchReader of ``rows`` rows a batch, streamed (not materialized
    first, as a DB-API ``execute`` result would be)."""
    import pyarrow as pa

    rel = cur.sql(query, params=list(params) if params else None)
    if rel is None:  # a statement with no result
        return pa.RecordBatchReader.from_batches(pa.schema([]), [])
    # The method's name differs across DuckDB versions.
    fn = getattr(rel, "to_arrow_reader", None) or getattr(rel, "fetch_arrow_reader", None)
    reader: pa.RecordBatchReader = fn(rows) if fn is not None else rel.record_batch(rows)
    return reader


def _checked_limit(limit: int) -> int:
    """A row limit, checked: an int in 0..2^63-1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**63:
        raise ValueError("limit must be an integer in 0..2^63-1")
    return limit


def quote(name: str) -> str:
    """A SQL identifier, quoted."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"not a column name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def time_range(
    conds: list[str], params: list[Any], column: str, since: int | None, until: int | None
) -> None:
    """Adds ``since <= column < until`` (Unix ns, either may be None)."""
    if since is not None:
        conds.append(f"{column} >= make_timestamptz(? // 1000)")
        params.append(since)
    if until is not None:
        conds.append(f"{column} < make_timestamptz(? // 1000)")
        params.append(until)


class Reads(abc.ABC):
    """Queries over a store's tables (``predictions``, ``errors``,
    ``spans``, ``system_metrics``, ``window_profiles``, ``batches``,
    ``agent_counters``, ``feature_schemas``, ``references``, ``labels`` and
    the ``latest_labels`` view); every method
    returns a ``pyarrow.Table`` (a pandas DataFrame with ``as_pandas=True``).
    Times: datetimes, ISO strings, durations back from now ("1h") or Unix
    seconds."""

    @abc.abstractmethod
    def stream(
        self, query: str, params: Sequence[Any] | None = None, *, rows: int | None = None
    ) -> pa.RecordBatchReader:
        """Runs one SQL query; its result a batch at a time (each subclass
        reads its own source: a store file, a collector, the collector's
        own read connections). ``rows`` asks for batches of at most that
        many rows (a source streaming by bytes may give fewer)."""

    def sql(
        self, query: str, params: Sequence[Any] | None = None, *, as_pandas: bool = False
    ) -> Any:
        """Runs one SQL query (``?`` placeholders bound to ``params``)."""
        t = self.stream(query, params).read_all()
        return t.to_pandas() if as_pandas else t

    def models(self, *, as_pandas: bool = False) -> Any:
        """Each (model, version) with its record count and time range."""
        return self.sql(
            "SELECT model, version, count(*) AS records, min(ts) AS first, max(ts) AS last "
            "FROM predictions GROUP BY ALL ORDER BY model, version",
            as_pandas=as_pandas,
        )

    def _select(
        self,
        table: str,
        columns: Iterable[str] | None,
        conds: list[str],
        params: list[Any],
        order: str,
        limit: int | None,
    ) -> tuple[str, list[Any]]:
        if isinstance(columns, str):
            columns = [columns]
        cols = "*" if columns is None else ", ".join(quote(c) for c in columns)
        if cols == "":
            raise ValueError("name at least one column")
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        q = f"SELECT {cols} FROM {table} {where} ORDER BY {order}"
        if limit is not None:
            q += f" LIMIT {_checked_limit(limit)}"
        return q, params

    @staticmethod
    def _filter(
        model: str | None,
        version: str | None,
        since: TimeArg,
        until: TimeArg,
        column: str = "ts",
        of: str = "",
    ) -> tuple[list[str], list[Any]]:
        """Conditions on model, version and time (of the table aliased
        ``of``, when given)."""
        conds: list[str] = []
        params: list[Any] = []
        at = f"{of}." if of else ""
        if model is not None:
            conds.append(f"{at}model = ?")
            params.append(model)
        if version is not None:
            conds.append(f"{at}version = ?")
            params.append(version)
        time_range(conds, params, column, parse_time(since), parse_time(until))
        return conds, params

    def predictions(
        self,
        model: str | None = None,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        columns: Iterable[str] | None = None,
        limit: int | None = None,
        expand: bool = True,
        as_pandas: bool = False,
    ) -> Any:
        """Predictions of a model (and version) in ``[since, until)``, oldest
        first; ``columns`` of the ``predictions`` table (all by default),
        at most ``limit`` rows. With ``expand`` (and one feature schema in
        the result) each feature and each categorical value becomes a column
        of its own in place of ``features`` and ``categories``."""
        conds, params = self._filter(model, version, since, until)
        q, params = self._select("predictions", columns, conds, params, "ts", limit)
        t = self.sql(q, params)
        if expand and t.num_rows:
            t = self._expand(t)
        return t.to_pandas() if as_pandas else t

    def errors(
        self,
        model: str | None = None,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        limit: int | None = None,
        as_pandas: bool = False,
    ) -> Any:
        """Errors logged with predictions, oldest first."""
        conds, params = self._filter(model, version, since, until)
        return self.sql(
            *self._select("errors", None, conds, params, "ts", limit), as_pandas=as_pandas
        )

    def system_metrics(
        self,
        model: str | None = None,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        limit: int | None = None,
        as_pandas: bool = False,
    ) -> Any:
        """Agents' system samples, oldest first (GPU columns are NULL where
        NVML read no GPU)."""
        conds, params = self._filter(model, version, since, until)
        return self.sql(
            *self._select("system_metrics", None, conds, params, "ts", limit), as_pandas=as_pandas
        )

    def spans(
        self,
        trace_id: str | None = None,
        model: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        limit: int | None = None,
        as_pandas: bool = False,
    ) -> Any:
        """Spans (of one trace, or of a model), oldest first."""
        conds, params = self._filter(model, None, since, until, "start_ts")
        if trace_id is not None:
            if not isinstance(trace_id, str):
                raise TypeError(f"trace_id must be a string, not {type(trace_id).__name__}")
            conds.append("trace_id = ?")
            params.append(trace_id.strip().lower())
        return self.sql(
            *self._select("spans", None, conds, params, "start_unix_nano", limit),
            as_pandas=as_pandas,
        )

    def labels(
        self,
        model: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        request_ids: Sequence[str] | None = None,
        history: bool = False,
        limit: int | None = None,
        as_pandas: bool = False,
    ) -> Any:
        """Ground truth by request id, oldest first: the latest label of each
        (model, request id) (by event time, then arrival), or with
        ``history`` every label received, corrections included. A number or
        an int class is in ``label``, a class spelled as text in
        ``label_text``."""
        conds, params = self._filter(model, None, since, until)
        if request_ids is not None:
            ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
            if not all(isinstance(r, str) for r in ids):
                raise TypeError("request_ids must be strings")
            conds.append("list_contains(?, request_id)")
            params.append(ids)
        table = "labels" if history else "latest_labels"
        return self.sql(
            *self._select(table, None, conds, params, "ts, received_at, batch_seq, seq", limit),
            as_pandas=as_pandas,
        )

    def labelled(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        *,
        limit: int | None = None,
        as_pandas: bool = False,
    ) -> Any:
        """Predictions of a model in ``[since, until)`` (their event time)
        joined to the latest label of their request id, oldest first; only
        predictions with a label. Columns: ``ts``, ``model``, ``version``,
        ``request_id``, ``prediction``, ``prediction_label``,
        ``probabilities``, ``label``, ``label_text``, ``label_ts``."""
        conds, params = self._filter(model, version, since, until, "p.ts")
        conds = [
            c.replace("model =", "p.model =").replace("version =", "p.version =") for c in conds
        ]
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        q = (
            "SELECT p.ts, p.model, p.version, p.request_id, p.prediction, p.prediction_label, "
            "p.probabilities, l.label, l.label_text, l.ts AS label_ts "
            "FROM predictions p JOIN latest_labels l "
            "ON l.model = p.model AND l.request_id = p.request_id "
            f"{where} ORDER BY p.ts"
        )
        if limit is not None:
            q += f" LIMIT {_checked_limit(limit)}"
        return self.sql(q, params, as_pandas=as_pandas)

    def _label_parts(self, where: str, params: list[Any]) -> tuple[int, int]:
        """How many labels match, and in how many parts (by a hash of the
        request id) a join over them is done so that each part's hash table
        stays small (LABEL_PART labels a part)."""
        n = int(self.sql(f"SELECT count(*) AS n FROM labels {where}", params).to_pylist()[0]["n"])
        return n, max(1, -(-n // LABEL_PART))

    def unjoined_labels(
        self, model: str | None = None, *, limit: int | None = 1000, as_pandas: bool = False
    ) -> Any:
        """Latest labels whose request id matches no stored prediction of
        their model (yet: a label may come before its prediction), oldest
        first within each part of the ids (all of them when they are few)."""
        import pyarrow as pa

        conds, params = self._filter(model, None, None, None)
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        _, parts = self._label_parts(where, params)
        if limit is not None:
            _checked_limit(limit)
        got: list[pa.Table] = []
        rows = 0
        for part in range(parts):
            cond = " AND ".join([*conds, f"hash(request_id) % {parts} = {part}"])
            q = (
                f"SELECT l.* FROM (SELECT * FROM latest_labels WHERE {cond}) l "
                "ANTI JOIN predictions p ON p.model = l.model AND p.request_id = l.request_id "
                "ORDER BY l.ts"
            )
            if limit is not None:
                q += f" LIMIT {limit - rows}"
            t = self.sql(q, params)
            got.append(t)
            rows += t.num_rows
            if limit is not None and rows >= limit:
                break
        out = pa.concat_tables(got) if len(got) > 1 else got[0]
        return out.to_pandas() if as_pandas else out

    def label_counts(self, model: str | None = None) -> dict[str, int]:
        """``labels`` received (corrections included), ``labelled``
        request ids, ``corrections``, ``joined`` (ids with a stored
        prediction) and ``unjoined``; counted in parts of the ids, exactly."""
        conds, params = self._filter(model, None, None, None)
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        labels, parts = self._label_parts(where, params)
        labelled = joined = 0
        for part in range(parts):
            cond = " AND ".join([*conds, f"hash(request_id) % {parts} = {part}"])
            row = self.sql(
                "SELECT count(*) AS labelled, count(*) FILTER (EXISTS (SELECT 1 FROM "
                "predictions p WHERE p.model = l.model AND p.request_id = l.request_id)) "
                f"AS joined FROM (SELECT DISTINCT model, request_id FROM labels WHERE {cond}) l",
                params,
            ).to_pylist()[0]
            labelled += int(row["labelled"] or 0)
            joined += int(row["joined"] or 0)
        return {
            "labels": labels,
            "labelled": labelled,
            "corrections": labels - labelled,
            "joined": joined,
            "unjoined": labelled - joined,
        }

    def _expand(self, t: pa.Table) -> pa.Table:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not {"schema_id", "features", "categories"} <= set(t.column_names):
            return t
        ids = pc.unique(t.column("schema_id")).to_pylist()
        if len(ids) != 1 or ids[0] is None:
            return t
        row = self.sql(
            "SELECT feature_names, feature_kinds, categorical_names FROM feature_schemas "
            "WHERE schema_id = ?",
            [ids[0]],
        ).to_pylist()
        if not row:
            return t
        r = row[0]
        names, kinds, cats = r["feature_names"], r["feature_kinds"], r["categorical_names"]
        if len(names) != len(kinds):
            return t  # an inconsistent stored schema: the lists as stored
        feats = t.column("features")
        catcol = t.column("categories")
        cat_at = {n: j for j, n in enumerate(cats or [])}
        out = t.drop_columns(["features", "categories"])
        # One table built at the end: appending column by column copies the
        # table each time (seconds for 10,000 features).
        arrays = list(out.columns)
        fields = list(out.schema)
        for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
            if kind == "categorical":
                if name not in cat_at:
                    return t
                col = pc.list_element(catcol, cat_at[name])
            else:
                col = pc.list_element(feats, i)
            arrays.append(col)
            fields.append(pa.field(name, col.type))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
