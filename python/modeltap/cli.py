"""The ``modeltap`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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
        help="serve a synthetic model, log its traffic, print the agent's counters",
        description=(
            "Start a collector (on a thread of this process, writing a DuckDB store), "
            "serve a small synthetic 3-class model (20 features) whose every "
            "prediction is logged through a modeltap Agent (Agent.log, "
            "@agent.monitor, log_batch) and shipped to that collector, then query "
            "the store with SQL and print the agent's counters, the cost of logging "
            "and what the store holds."
        ),
    )
    demo.add_argument(
        "--requests", type=int, default=20_000, help="single requests to serve (default 20000)"
    )
    demo.add_argument(
        "--batch-rows",
        type=int,
        default=100_000,
        help="rows of the log_batch call (default 100000)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--store",
        metavar="PATH",
        help="DuckDB file the demo's collector writes (default: a temporary file, removed after)",
    )

    col = sub.add_parser(
        "collector",
        help="run the collector daemon (gRPC in, DuckDB store)",
        description=(
            "Run the collector daemon: a gRPC server (modeltap.v1.Collector plus the "
            "standard grpc.health.v1 service) that decodes agents' batches and stores "
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from modeltap import demo

        return demo.main(args)
    if args.command == "collector":
        from modeltap.collector import serve

        return serve(args.listen, args.store, args.max_message_mb)
    return 2


if __name__ == "__main__":
    sys.exit(main())
