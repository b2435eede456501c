"""``modeltap labels import``, ``modeltap labels status`` and
``modeltap performance``: ground truth in, and what it says of a model."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from modeltap.labels import CHUNK_LABELS, BadRows, columns


def labels_command(args: argparse.Namespace) -> int:
    if args.labels_command == "import":
        return _import(args)
    return _status(args)


def _digest(path: str) -> str:
    """The file's content digest: importing the same file again sends the
    same batches, which the collector stores once."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _pieces(path: str) -> tuple[Iterator[Any], int | None]:
    """The file's record batches of at most CHUNK_LABELS rows, and its
    number of rows when the format says (Parquet)."""
    import pyarrow as pa

    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        _need(names, path)
        cols = ["request_id", "label"] + (["ts"] if "ts" in names else [])
        return pf.iter_batches(batch_size=CHUNK_LABELS, columns=cols), pf.metadata.num_rows
    if lower.endswith((".csv", ".csv.gz", ".tsv")):
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=8 << 20),
            parse_options=pcsv.ParseOptions(delimiter="\t" if lower.endswith(".tsv") else ","),
            convert_options=pcsv.ConvertOptions(
                column_types={"request_id": pa.string()}, strings_can_be_null=True
            ),
        )
        _need(set(reader.schema.names), path)

        def split() -> Iterator[Any]:
            for batch in reader:
                for i in range(0, batch.num_rows, CHUNK_LABELS):
                    yield batch.slice(i, CHUNK_LABELS)

        return split(), None
    raise ValueError(f"{path}: not a .csv, .tsv or .parquet file")


def _need(names: set[str], path: str) -> None:
    missing = [c for c in ("request_id", "label") if c not in names]
    if missing:
        raise ValueError(f"{path} has no column {' or '.join(missing)} (it has {sorted(names)})")


def _column(batch: Any, name: str) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = batch.column(batch.schema.get_field_index(name))
    t = col.type
    if name == "label" and col.null_count and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return np.array(col.to_pylist(), dtype=object)  # None stays "no label"
    if pa.types.is_integer(t):
        return col.to_numpy().astype(np.int64)
    if pa.types.is_floating(t):
        return col.to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_boolean(t):
        return np.array(col.to_pylist(), dtype=object)
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pc.cast(col, pa.timestamp("ns")).to_numpy(zero_copy_only=False)
    return np.array(col.cast(pa.string()).to_pylist(), dtype=object)


def _import(args: argparse.Namespace) -> int:
    from modeltap.client import Client

    path = args.file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path}")
    pieces, total = _pieces(path)
    source = _digest(path)
    bad = BadRows()
    sent = stored = 0
    row = 0
    progress = _progress(total, quiet=args.json)
    with Client(args.collector) as client, progress as bar:
        task = bar.add_task("labels", total=total)
        for seq, batch in enumerate(pieces):
            ids = batch.column(batch.schema.get_field_index("request_id")).to_pylist()
            labels = _column(batch, "label")
            ts = _column(batch, "ts") if "ts" in batch.schema.names else None
            if ts is not None and ts.dtype.kind in "iu":  # a file's numbers: Unix seconds
                ts = ts.astype(np.float64)
            cols, rows_bad = columns(ids, labels, ts, first_row=row)
            for r, why in rows_bad.first:
                bad.add(r, why)
            bad.count += rows_bad.count - len(rows_bad.first)
            if len(cols):
                stored += client._send_labels(
                    args.model, args.version, cols, source, None, 60.0, first_seq=seq
                )
                sent += len(cols)
            row += batch.num_rows
            bar.update(task, advance=batch.num_rows)
    out: dict[str, Any] = {
        "rows": row,
        "sent": sent,
        "stored": stored,
        "already_stored": sent - stored,
        "bad_rows": bad.count,
        "bad": [{"row": r, "why": w} for r, w in bad.first],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{path}: {row:,} rows, {stored:,} labels stored for {args.model}"
            + (f", {sent - stored:,} already stored" if sent > stored else "")
        )
        if bad.count:
            print(str(bad), file=sys.stderr)
    return 0 if not bad.count else 1


class _Quiet:
    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        return None


def _progress(total: int | None, *, quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():
        return _Quiet()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _status(args: argparse.Namespace) -> int:
    from modeltap._cli_commands import _json_row, _source

    with _source(args) as src:
        counts = src.label_counts(args.model)
        unjoined = src.unjoined_labels(args.model, limit=args.unjoined).to_pylist()
    if args.json:
        print(
            json.dumps({**counts, "unjoined_first": [_json_row(r) for r in unjoined]}, default=str)
        )
        return 0
    print(
        f"{counts['labels']:,} labels ({counts['corrections']:,} corrections) for "
        f"{counts['labelled']:,} request ids: {counts['joined']:,} joined a prediction, "
        f"{counts['unjoined']:,} not (yet)"
    )
    for r in unjoined:
        label = r["label_text"] if r["label_text"] is not None else r["label"]
        print(f"  {r['model']} {r['request_id']} = {label} at {r['ts']}")
    return 0


def performance_command(args: argparse.Namespace) -> int:
    from modeltap._cli_commands import _json_row, _source

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    with _source(args) as src:
        t = src.performance(
            args.model, args.version, args.since, args.to, window_s=args.window, metrics=metrics
        )
    rows = t.to_pylist()
    if args.json:
        print(json.dumps([_json_row(r) for r in rows], default=str))
        return 0
    if not rows:
        print(f"no predictions of {args.model} in the range")
        return 0
    from rich.console import Console
    from rich.table import Table

    from modeltap.analysis.performance import CLASSIFIER_METRICS, REGRESSOR_METRICS

    shown = ["window_start", "n", "n_labelled"] + [
        c for c in (*CLASSIFIER_METRICS, *REGRESSOR_METRICS) if c in t.column_names
    ]
    table = Table(title=f"{args.model}: realised performance per {args.window:g} s window")
    for c in shown:
        table.add_column(c, justify="left" if c == "window_start" else "right")
    for r in rows:
        cells = []
        for c in shown:
            v = r[c]
            if c == "window_start":
                cells.append(str(v))
            elif isinstance(v, float):
                lo, hi = r.get(f"{c}_lo"), r.get(f"{c}_hi")
                band = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
                cells.append(f"{v:.4f}{band}")
            else:
                cells.append("-" if v is None else f"{v:,}")
        table.add_row(*cells)
    Console().print(table)
    notes = {n for r in rows for k, n in r.items() if k.endswith("_note") and n}
    for n in sorted(notes):
        print(f"note: {n}")
    return 0
