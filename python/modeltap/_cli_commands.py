"""The ``modeltap`` commands that read a store or a collector (drift,
trace, traces, latency, query, report) and ``reference build``; each takes
the parsed arguments and returns the exit status."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _drift(args: argparse.Namespace) -> int:
    import json
    import math

    from modeltap.client import Client
    from modeltap.collector.requests import parse_rules

    rules = parse_rules(args.rule)
    since = args.since if args.since is not None else args.from_
    try:
        if args.store:
            from modeltap.collector.store import Store

            with Store(args.store) as store:
                report = store.drift(args.model, args.version, since, args.to, rules=rules)
        else:
            with Client(args.collector) as client:
                report = client.drift(args.model, args.version, since, args.to, rules=rules)
    except LookupError as e:
        print(f"modeltap drift: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        details = e.details() if hasattr(e, "details") else str(e)
        print(f"modeltap drift: {details}", file=sys.stderr)
        return 1
    if args.json:
        rows = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in report.rows
        ]
        print(json.dumps({"records": report.records, "columns": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    from modeltap.drift import TABLE, _fmt

    t = Table(title=f"{args.model} drift: {report.records:,} records, {report._span()}")
    heads = TABLE
    for h in heads:
        t.add_column(h, justify="left" if h in ("feature", "kind") else "right")
    for r in report.rows:
        style = "bold red" if r["drifted"] else None
        t.add_row(*(_fmt(r[h]) for h in heads), style=style)
    Console(width=None if sys.stdout.isatty() else 160).print(t)
    print(f"{len(report.drifted)} of {len(report.rows)} columns drifted")
    return 0


def _traces(args: argparse.Namespace) -> int:
    import json

    from modeltap.client import Client

    what = f"modeltap {args.command}"
    try:
        if args.store:
            from modeltap.collector.store import Store

            with Store(args.store) as store:
                if args.command == "trace":
                    data: object = store.trace(args.trace_id)
                else:
                    data = store.traces(args.model, args.slowest, args.since, args.to)
        else:
            with Client(args.collector) as client:
                if args.command == "trace":
                    data = client.trace(args.trace_id)
                else:
                    data = client.traces(args.model, args.slowest, args.since, args.to)
    except Exception as e:
        details = e.details() if hasattr(e, "details") else str(e)
        print(f"{what}: {details}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.command == "trace":
        assert isinstance(data, dict)
        if not data["spans"] and not data["records"]:
            print(f"{what}: no spans or records of trace {data['trace_id']}", file=sys.stderr)
            return 1
        console.print(_span_tree(data))
        if data["records"]:
            console.print(_records_table(data["records"]))
        return 0
    assert isinstance(data, list)
    console.print(_slowest_table(data, args.model))
    return 0


def _latency(args: argparse.Namespace) -> int:
    import json

    from modeltap.client import Client

    try:
        if args.store:
            from modeltap.collector.store import Store

            with Store(args.store) as store:
                rows = store.stage_latency(args.model, args.version, args.since, args.to)
        else:
            with Client(args.collector) as client:
                rows = client.stage_latency(args.model, args.version, args.since, args.to)
    except Exception as e:
        details = e.details() if hasattr(e, "details") else str(e)
        print(f"modeltap latency: {details}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"modeltap latency: no spans of {args.model} in that range", file=sys.stderr)
        return 1
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.model}: latency per stage")
    for h in ("stage", "spans", "errors", "mean", "p50", "p95", "p99"):
        t.add_column(h, justify="left" if h == "stage" else "right")
    for r in rows:
        name = f"{r['stage']} (end to end)" if r["end_to_end"] else r["stage"]
        t.add_row(
            name,
            f"{r['spans']:,}",
            f"{r['errors']:,}",
            *(f"{r[k] * 1e3:,.3f} ms" for k in ("mean_s", "p50_s", "p95_s", "p99_s")),
            style="bold" if r["end_to_end"] else None,
        )
    Console(width=None if sys.stdout.isatty() else 160).print(t)
    return 0


def _report(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    with (
        console.status(f"reading {args.model} from {args.store or args.collector}"),
        _source(args) as src,
    ):
        rep = src.report(args.model, args.version, args.since, args.to)
    path = rep.save(args.out)
    s = rep.summary
    drifted = s.get("drifted")
    print(
        f"{path}: {rep.model} {rep.data['version']}, {int(s.get('records') or 0):,} records, "
        + ("no reference" if drifted is None else f"{len(drifted)} drifted features")
        + f", built in {rep.data['build_s']:.2f} s"
    )
    return 0


def _source(args: argparse.Namespace) -> Any:
    """The store file (--store) or the collector (--collector) to read."""
    if args.store:
        import os

        from modeltap.collector.store import Store

        if not os.path.exists(args.store):
            raise FileNotFoundError(f"no store file {args.store}")
        return Store(args.store)
    from modeltap.client import Client

    return Client(args.collector)


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    import math

    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _query(args: argparse.Namespace) -> int:
    from rich.console import Console as _Console

    with _source(args) as src:
        # The collector answers once the query has run: a spinner meanwhile
        # (on a terminal only; stderr, so --json and --csv stay clean).
        with _Console(stderr=True).status(f"querying {args.store or args.collector}"):
            reader = src.stream(args.sql)
        if args.csv:
            import pyarrow.csv as pacsv

            out = sys.stdout.buffer
            with pacsv.CSVWriter(out, reader.schema) as w:
                for b in reader:
                    w.write_batch(b)
            out.flush()
            return 0
        if args.json:
            import json

            first = True
            sys.stdout.write("[")
            for b in reader:
                for row in b.to_pylist():
                    text = json.dumps(_json_row(row), default=str, allow_nan=False)
                    sys.stdout.write(("\n  " if first else ",\n  ") + text)
                    first = False
            sys.stdout.write("\n]\n" if not first else "]\n")
            return 0
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        t = Table(*(escape(f.name) for f in reader.schema))
        shown = total = 0
        for b in reader:
            total += b.num_rows
            for row in b.slice(0, max(0, args.max_rows - shown)).to_pylist():
                t.add_row(*(escape("NULL" if v is None else str(v)) for v in row.values()))
                shown += 1
        Console(width=None if sys.stdout.isatty() else 200).print(t)
        more = f" (the first {shown} shown; --json or --csv for all)" if total > shown else ""
        print(f"{total:,} rows{more}")
    return 0


def _ms(ns: object) -> str:
    return f"{int(ns or 0) / 1e6:,.3f} ms"  # type: ignore[call-overload]


def _span_tree(data: dict[str, Any]) -> object:
    from rich.markup import escape
    from rich.tree import Tree

    spans = data["spans"]
    ids = {s["span_id"] for s in spans}
    children: dict[object, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s["parent_span_id"] if s["parent_span_id"] in ids else None
        children.setdefault(parent, []).append(s)
    root = Tree(f"trace {data['trace_id']}: {len(spans)} spans")

    def label(s: dict[str, Any]) -> str:
        status = s["status"]
        mark = "[bold red]error[/]" if status == "error" else status
        where = s.get("service") or s.get("model") or ""
        text = f"[bold]{escape(s['name'])}[/] {_ms(s['duration_ns'])} {mark} [dim]{escape(where)}"
        text += f" {s['span_id']}[/]"
        if s.get("error_type") or s.get("error_message"):
            err = f"{s.get('error_type') or ''}: {s.get('error_message') or ''}"
            text += f" [red]{escape(err)}[/]"
        return text

    def add(node: object, parent: object) -> None:
        for s in children.get(parent, []):
            add(node.add(label(s)), s["span_id"])  # type: ignore[attr-defined]

    add(root, None)
    return root


def _records_table(records: list[dict[str, Any]]) -> object:
    from rich.table import Table

    t = Table(title="prediction records of this trace")
    for h in ("request_id", "span_id", "prediction", "latency", "error"):
        t.add_column(h)
    for r in records:
        pred = r.get("prediction_label") or r.get("prediction")
        err = r.get("error_type") or ""
        lat = r.get("latency_s")
        t.add_row(
            str(r.get("request_id")),
            str(r.get("span_id")),
            str(pred),
            "" if lat is None else f"{lat * 1e3:,.3f} ms",
            err,
        )
    return t


def _slowest_table(rows: list[dict[str, Any]], model: str | None) -> object:
    from rich.table import Table

    stages = sorted({k for r in rows for k in r["stages"]})
    t = Table(title=f"slowest traces{f' of {model}' if model else ''}")
    t.add_column("trace_id")
    t.add_column("root")
    t.add_column("total", justify="right")
    for st in stages:
        t.add_column(st, justify="right")
    t.add_column("spans", justify="right")
    t.add_column("error")
    for r in rows:
        t.add_row(
            r["trace_id"],
            str(r["root"]),
            _ms(r["duration_ns"]),
            *(_ms(r["stages"][st]) if st in r["stages"] else "" for st in stages),
            str(r["spans"]),
            "yes" if r["error"] else "",
            style="red" if r["error"] else None,
        )
    return t


def _reference_build(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from rich.progress import Progress

    from modeltap.reference import Reference

    path = args.data
    batches = []
    with Progress(transient=True) as progress:
        if path.endswith((".parquet", ".pq")):
            f = pq.ParquetFile(path)
            task = progress.add_task(f"reading {path}", total=f.metadata.num_rows)
            for b in f.iter_batches(batch_size=65536):
                batches.append(b)
                progress.advance(task, b.num_rows)
        elif path.endswith((".csv", ".csv.gz")):
            import os

            task = progress.add_task(f"reading {path}", total=os.path.getsize(path))
            reader = pacsv.open_csv(path)
            done = 0
            for b in reader:
                batches.append(b)
                done += b.nbytes
                progress.update(task, completed=min(done, os.path.getsize(path)))
        else:
            print("modeltap reference build: DATA must be .parquet or .csv", file=sys.stderr)
            return 2
    table = pa.Table.from_batches(batches)
    cats = [c for c in args.categorical.split(",") if c]
    preds = None
    if args.prediction:
        preds = table.column(args.prediction).to_numpy()
        table = table.drop_columns([args.prediction])
    ref = Reference.from_data(
        table,
        categorical=cats,
        bins=args.bins,
        equal_width=args.equal_width,
        predictions=preds,
        model=args.model,
        version=args.model_version,
    )
    ref.save(args.out)
    print(f"{ref!r} -> {args.out}")
    return 0
