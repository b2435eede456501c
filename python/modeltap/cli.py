"""The ``modeltap`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from modeltap._cli_commands import (
    _drift,
    _latency,
    _query,
    _reference_build,
    _report,
    _traces,
)
from modeltap._cli_parser import _parser

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
            max_receiving=args.max_receiving,
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
    if args.command == "performance":
        from modeltap._cli_labels import performance_command

        return performance_command(args)
    if args.command == "labels":
        from modeltap._cli_labels import labels_command

        return labels_command(args)
    if args.command == "reference":
        return _reference_build(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
