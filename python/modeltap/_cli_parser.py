"""The ``modeltap`` command line's arguments: every command and its
options, and the argument types they share."""

from __future__ import annotations

import argparse

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
        "--max-receiving",
        type=_positive_int,
        default=4,
        metavar="N",
        help=(
            "Export messages read at once, at most half of them from one host (grpc "
            "holds each whole before its size is known: at most N times "
            "--max-message-mb); other calls wait up to 10 s (default 4)"
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
            "feature_schemas, references, labels (and the view latest_labels). Prints a "
            "table (the first --max-rows rows), or every row as JSON (--json) or CSV (--csv)."
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

    lab = sub.add_parser("labels", help="send ground truth to a collector, see how it joined")
    labsub = lab.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    imp = labsub.add_parser(
        "import",
        help="send the labels of a CSV or Parquet file to a running collector",
        description=(
            "Read ground truth from a CSV or Parquet file with columns request_id, label "
            "and optionally ts (a time, or Unix seconds: when the truth was known; default "
            "now), and send it to a running collector for a model with predictions "
            "stored. A label joins the prediction of the same request id whenever both "
            "are stored; a second label for an id is a correction (the latest wins, each "
            "is kept). The file is read in pieces of 100,000 rows, each stored exactly "
            "once: importing the same file again stores nothing twice. Bad rows (no id, "
            "no label, NaN, a bad time) are left out and named; the rest is sent."
        ),
    )
    imp.add_argument("file", metavar="FILE", help="a .csv or .parquet file")
    imp.add_argument("--model", required=True, help="model the labels are for")
    imp.add_argument("--version", default="", help="model version (default: any)")
    imp.add_argument(
        "--collector",
        default="127.0.0.1:7317",
        metavar="HOST:PORT",
        help="collector to send to (default 127.0.0.1:7317)",
    )
    imp.add_argument("--json", action="store_true", help="print the outcome as JSON")
    st = labsub.add_parser(
        "status",
        help="labels received, corrections, and those that joined no prediction (yet)",
    )
    st.add_argument("--model", help="model name (default: every model)")
    st.add_argument(
        "--unjoined",
        type=_positive_int,
        default=10,
        metavar="N",
        help="list at most N labels that joined no prediction (default 10)",
    )
    st.add_argument("--json", action="store_true", help="print as JSON")
    _source_args(st)

    perf = sub.add_parser(
        "performance",
        help="realised performance of a model per window, once labels have arrived",
        description=(
            "Predictions joined to their latest label, per window of prediction time: "
            "accuracy, macro precision, recall and F1, ROC AUC, log loss, Brier score and "
            "calibration error for classifiers; MAE, RMSE, MAPE and R² for regressors; "
            "each with its 95 %% interval where it has one. Reads a running collector "
            "(--collector) or a store file (--store)."
        ),
    )
    perf.add_argument("--model", required=True, help="model name")
    perf.add_argument("--version", help="model version (default: every version)")
    perf.add_argument("--since", help="a duration back from now (90s, 15m, 1h, 7d) or a time")
    perf.add_argument("--to", metavar="TIME", help="end (ISO time; default now)")
    perf.add_argument(
        "--window",
        type=_positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="window length in seconds (default 3600)",
    )
    perf.add_argument(
        "--metrics", metavar="A,B", help="metrics to show (default: every one that applies)"
    )
    perf.add_argument("--json", action="store_true", help="print every window as JSON")
    _source_args(perf)

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
