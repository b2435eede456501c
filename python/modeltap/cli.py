"""The ``modeltap`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import modeltap


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modeltap",
        description="Telemetry for machine-learning models in production.",
    )
    p.add_argument("--version", action="version", version=f"modeltap {modeltap.__version__}")
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of modeltap's own log messages (default: WARNING)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="the whole loop on a synthetic model: serve, log, trace, shift, drift, report",
        description=(
            "Start a collector (on a thread of this process, a temporary DuckDB store, "
            "live pages on an HTTP port), build a reference from a synthetic training "
            "set, serve a small 3-class model (20 numeric features and a region) with 4 "
            "concurrent workers whose every request is traced (preprocess, inference, "
            "postprocess) and logged through one agent; halfway through, four features "
            "shift and the region mix changes. Then print the drift table of the shifted "
            "half, the latency per stage and the agent's counters, and write the HTML "
            "report. About a minute with the defaults; --keep leaves the collector "
            "running to explore (its pages, modeltap query, modeltap trace)."
        ),
    )
    demo.add_argument(
        "--requests", type=_positive_int, default=40_000, help="requests to serve (default 40000)"
    )
    demo.add_argument(
        "--rate",
        type=_positive_float,
        default=1_000.0,
        help="requests per second, over all workers (default 1000)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--store",
        metavar="PATH",
        help="DuckDB file the demo's collector writes (default: a temporary file, removed after "
        "unless --keep)",
    )
    demo.add_argument(
        "--report",
        metavar="PATH",
        default="modeltap-demo-report.html",
        help="where to write the HTML report (default ./modeltap-demo-report.html)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the collector running (gRPC, live pages, /metrics) until Ctrl-C",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")

    col = sub.add_parser(
        "collector",
        help="run the collector daemon (gRPC in, DuckDB store)",
        description=(
            "Run the collector daemon: a gRPC server (modeltap.v1.Collector, OpenTelemetry's "
            "OTLP TraceService and the standard grpc.health.v1 service) that decodes "
            "agents' batches (and OTLP spans) and stores "
            "them exactly once in a DuckDB database, acknowledging a batch only after "
            "its transaction is durably committed. SIGTERM/SIGINT stop accepting "
            "calls, finish those in flight and close the store cleanly."
        ),
    )
    col.add_argument(
        "--listen",
        default="127.0.0.1:7317",
        metavar="HOST:PORT",
        help="address to serve gRPC on (default 127.0.0.1:7317; port 0 picks a free one)",
    )
    col.add_argument(
        "--store",
        default="./modeltap.duckdb",
        metavar="PATH",
        help="DuckDB database file (default ./modeltap.duckdb; created if missing)",
    )
    col.add_argument(
        "--max-message-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="largest batch accepted, in MiB; larger ones get RESOURCE_EXHAUSTED (default 64)",
    )
    col.add_argument(
        "--memory-limit",
        default="256MB",
        metavar="SIZE",
        help=(
            "DuckDB's memory limit (its memory_limit setting: 1GB, 512MiB, 25%%; "
            "default 256MB, reads spill past it to their temp budget; DuckDB's own "
            "default is 80%% of RAM)"
        ),
    )
    col.add_argument(
        "--max-memory-mb",
        type=_positive_float,
        default=512.0,
        metavar="MB",
        help=(
            "the collector process' resident memory, in MiB: near it, new batches get "
            "RESOURCE_EXHAUSTED while those received are stored, and agents back off "
            "(default 512)"
        ),
    )
    col.add_argument(
        "--max-concurrent-rpcs",
        type=_positive_int,
        default=256,
        metavar="N",
        help=(
            "batches taken at once; more get RESOURCE_EXHAUSTED and agents back off "
            "(default 256; health checks and reads have 32 calls of their own)"
        ),
    )
    col.add_argument(
        "--max-pending-mb",
        type=_positive_float,
        default=128.0,
        metavar="MB",
        help=(
            "batches received but not yet stored, in MiB; past it new batches get "
            "RESOURCE_EXHAUSTED and agents back off (default 128)"
        ),
    )
    col.add_argument(
        "--log-level",
        dest="collector_log_level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of the collector's log messages (default: INFO)",
    )
    col.add_argument(
        "--http",
        metavar="HOST:PORT",
        help=(
            "serve the live pages (/ and /models/NAME), /metrics (Prometheus), /healthz "
            "and /readyz on this address, e.g. 127.0.0.1:7318 (default: none)"
        ),
    )
    col.add_argument(
        "--max-reads",
        type=_positive_int,
        default=4,
        help="queries run at once (Query RPC, drift, traces, pages; default 4), each on a "
        "read-only connection beside the writer; at most 64 are admitted (running or "
        "waiting), more are refused with RESOURCE_EXHAUSTED",
    )
    col.add_argument(
        "--read-timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="a query running longer is interrupted (default 300)",
    )
    col.add_argument(
        "--otlp-endpoint",
        metavar="HOST:PORT",
        help=(
            "forward every stored span as OTLP/gRPC to Jaeger, Tempo or an "
            "OpenTelemetry Collector (batched, retried with backoff; a bounded queue "
            "whose drops are counted)"
        ),
    )
    col.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="[MODEL:VERSION=]PATH",
        help=(
            "register a reference file for drift (repeatable); MODEL:VERSION defaults to "
            "what the file records"
        ),
    )

    dr = sub.add_parser(
        "drift",
        help="drift of a model against its reference, from the collector's profiles",
        description=(
            "Print the drift of a model (per feature and model output: PSI, KS, "
            "Jensen-Shannon, Wasserstein, chi-square, Hellinger, and the decision) over "
            "a time range, merged from every agent's stored window profiles. Asks a "
            "running collector (--collector) or reads a store file (--store) directly."
        ),
    )
    dr.add_argument("--model", required=True, help="model name")
    dr.add_argument("--version", help="model version (default: the newest with profiles)")
    when = dr.add_mutually_exclusive_group()
    when.add_argument("--since", help="a duration back from now (90s, 15m, 1h, 7d) or a time")
    when.add_argument("--from", dest="from_", metavar="TIME", help="start (ISO time)")
    dr.add_argument("--to", metavar="TIME", help="end (ISO time; default now)")
    _source_args(dr)
    dr.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="COLUMN=STATISTIC:THRESHOLD",
        help="decide COLUMN by STATISTIC (psi, js, ks, wasserstein, hellinger) >= THRESHOLD",
    )
    dr.add_argument("--json", action="store_true", help="print JSON instead of a table")

    tr = sub.add_parser(
        "trace",
        help="one request's spans as a tree, with the prediction records of its trace",
        description=(
            "Print the span tree of one trace (each span's duration, status and service) "
            "and the prediction records logged inside it. Asks a running collector "
            "(--collector) or reads a store file (--store) directly."
        ),
    )
    tr.add_argument("trace_id", metavar="TRACE_ID", help="32 hex digits")
    _source_args(tr)
    tr.add_argument("--json", action="store_true", help="print JSON instead of a tree")

    trs = sub.add_parser(
        "traces",
        help="the slowest requests with their time per stage",
        description=(
            "List the slowest traces (by their end-to-end duration) that have a span of "
            "a model, each with the time spent in every stage (span name)."
        ),
    )
    trs.add_argument("--model", help="model name (default: every model)")
    trs.add_argument("--slowest", type=_positive_int, default=10, help="how many (default 10)")
    trs.add_argument("--since", help="a duration back from now (90s, 15m, 1h, 7d) or a time")
    trs.add_argument("--to", metavar="TIME", help="end (ISO time; default now)")
    _source_args(trs)
    trs.add_argument("--json", action="store_true", help="print JSON instead of a table")

    lat = sub.add_parser(
        "latency",
        help="latency per stage and end to end (p50/p95/p99), from the stored profiles",
        description=(
            "Print each stage's (span name's) latency and the end-to-end latency of "
            "requests (spans that began their trace) of a model over a time range: "
            "spans, errors, mean, p50, p95 and p99, merged from every agent's window "
            "profiles."
        ),
    )
    lat.add_argument("--model", required=True, help="model name")
    lat.add_argument("--version", help="model version (default: every version)")
    lat.add_argument("--since", help="a duration back from now (90s, 15m, 1h, 7d) or a time")
    lat.add_argument("--to", metavar="TIME", help="end (ISO time; default now)")
    _source_args(lat)
    lat.add_argument("--json", action="store_true", help="print JSON instead of a table")

    qry = sub.add_parser(
        "query",
        help="run one SQL SELECT on a running collector's store (or a store file)",
        description=(
            "Run one SELECT statement on the store: a running collector answers it on a "
            "read-only connection beside ingestion (--collector), or a store file no "
            "collector is writing is read directly (--store). Tables: predictions, errors, "
            "spans, system_metrics, window_profiles, batches, agent_counters, "
            "feature_schemas, references. Prints a table (the first --max-rows rows), "
            "or every row as JSON (--json) or CSV (--csv)."
        ),
    )
    qry.add_argument("sql", metavar="SQL", help='one SELECT statement, e.g. "SELECT ..."')
    _source_args(qry)
    fmt = qry.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print every row as a JSON array")
    fmt.add_argument("--csv", action="store_true", help="print every row as CSV")
    qry.add_argument(
        "--max-rows",
        type=_positive_int,
        default=100,
        help="rows shown in the table (default 100; --json and --csv print every row)",
    )

    rep = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a model",
        description=(
            "Write one HTML file (plots inlined: it opens offline) about a model over a "
            "time range: summary (records, error rate, latency p50/p95/p99, drifted "
            "features), the drift table with every statistic, reference-against-current "
            "histograms per feature, drift, predictions and latency over time, latency per "
            "stage, system metrics and errors by type. Reads a running collector "
            "(--collector) or a store file (--store). A collector started with --http "
            "serves the same page live at /models/NAME."
        ),
    )
    rep.add_argument("--model", required=True, help="model name")
    rep.add_argument("--version", help="model version (default: the newest)")
    rep.add_argument("--since", help="a duration back from now (90s, 15m, 1h, 7d) or a time")
    rep.add_argument("--to", metavar="TIME", help="end (ISO time; default now)")
    rep.add_argument("--out", required=True, metavar="PATH", help="HTML file to write")
    _source_args(rep)

    ref = sub.add_parser("reference", help="build reference files")
    refsub = ref.add_subparsers(dest="reference_command", required=True, metavar="ACTION")
    build = refsub.add_parser(
        "build",
        help="profile a Parquet or CSV file into a reference file",
        description=(
            "Profile training or validation data (a Parquet or CSV file) into a "
            "reference file: quantile bins, a fine quantile histogram, moments and "
            "missing rates per numeric column; category frequencies per categorical "
            "column. Non-numeric columns are categorical."
        ),
    )
    build.add_argument("data", help="a .parquet or .csv file")
    build.add_argument("--out", required=True, help="reference file to write")
    build.add_argument(
        "--categorical", default="", metavar="A,B", help="columns to treat as categorical"
    )
    build.add_argument(
        "--bins",
        type=int,
        default=10,
        help="PSI bins per numeric column between its minimum and maximum (10); "
        "values below the minimum and above the maximum get one bin each",
    )
    build.add_argument(
        "--equal-width", action="store_true", help="equal-width instead of quantile bins"
    )
    build.add_argument(
        "--prediction", metavar="COLUMN", help="column holding the model's predictions"
    )
    build.add_argument("--model", default="", help="model name to record in the file")
    build.add_argument("--model-version", default="", help="model version to record in the file")
    return p


def _source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--collector",
        default="127.0.0.1:7317",
        metavar="HOST:PORT",
        help="collector to ask (default 127.0.0.1:7317)",
    )
    src.add_argument("--store", metavar="PATH", help="read this store file instead")


def _positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return v


# What the collector, the reads, the reports and the CLI's tables need
# beyond the agent (the `collector` extra; see pyproject.toml).
COLLECTOR_EXTRA = frozenset(
    {
        "duckdb",
        "pyarrow",
        "plotly",
        "rich",
        "prometheus_client",
        "opentelemetry",
        "grpc_health",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    level = args.log_level
    if args.command == "collector":
        level = args.collector_log_level or "INFO"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:
        if level == "DEBUG" or (e.name or "").split(".")[0] not in COLLECTOR_EXTRA:
            raise
        print(
            f"modeltap {args.command}: needs {e.name}, which the agent-only install leaves "
            "out: pip install 'modeltap[collector]'",
            file=sys.stderr,
        )
        return 1
    except Exception as e:
        # One clear line and a non-zero status, never a traceback (unless
        # asked for with --log-level DEBUG).
        if level == "DEBUG":
            raise
        what = e.details() if hasattr(e, "details") else str(e)
        # DuckDB's messages span lines (the query, a caret): one line here.
        what = " ".join(str(what or "").split())
        print(f"modeltap {args.command}: {what or type(e).__name__}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from modeltap import demo

        return demo.main(args)
    if args.command == "collector":
        from modeltap.collector import serve

        return serve(
            args.listen,
            args.store,
            args.max_message_mb,
            args.reference,
            memory_limit=args.memory_limit,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_pending_mb=args.max_pending_mb,
            max_memory_mb=args.max_memory_mb,
            otlp_endpoint=args.otlp_endpoint,
            http=args.http,
            max_reads=args.max_reads,
            read_timeout_s=args.read_timeout,
        )
    if args.command == "drift":
        return _drift(args)
    if args.command in ("trace", "traces"):
        return _traces(args)
    if args.command == "latency":
        return _latency(args)
    if args.command == "query":
        return _query(args)
    if args.command == "report":
        return _report(args)
    if args.command == "reference":
        return _reference_build(args)
    return 2


def _drift(args: argparse.Namespace) -> int:
    import json
    import math

    from modeltap.client import Client
    from modeltap.collector.server import parse_rules

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


if __name__ == "__main__":
    sys.exit(main())
