"""Every Performance and Trust table of the README, in README form, each
printed with the environment (CPU, Python, numpy, pandas, pyarrow, polars,
modeltap build) that produced it.

    make bench-readme                                   # builds what it needs, then this
    python benches/readme.py --pandas2-python PATH      # PATH: a Python with pandas 2
    python benches/readme.py --only drift --only layouts

The drift tables run twice when a pandas-2 interpreter is given (with
modeltap and Evidently installed in it: ``make bench-readme`` builds
``.bench/evidently-venv``): once here (pandas 3), once there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SECTIONS = {
    "agent": ("Agent.log and log_batch against logging and OpenTelemetry", ["bench_agent.py"]),
    "ingest": ("agents -> collector -> DuckDB against one message per record", ["bench_ingest.py"]),
    "drift": ("Reference.drift against scipy + numpy and Evidently", ["bench_drift.py"]),
    "layouts": ("Reference.drift by input layout", ["bench_drift.py", "--layouts"]),
    "frames": ("an Agent given a whole DataFrame against chunks", ["bench_drift.py", "--frames"]),
    "wide": ("3,000,000 x 1,000 features through log_batch", ["bench_wide.py"]),
    "tracing": ("spans against OpenTelemetry SDK spans", ["bench_tracing.py"]),
    "live": ("ingest beside a heavy read and a 1 s scrape; a 1M-record report", ["bench_live.py"]),
    "trust": ("faults, fuzzing, agent memory", ["bench_trust.py"]),
}
# Sections that depend on pandas, run again under pandas 2.
PANDAS = ("drift", "layouts", "frames")


def run(python: str, args: list[str], label: str) -> int:
    cmd = [python, str(HERE / args[0]), *args[1:]]
    shown = " ".join(["python", f"benches/{args[0]}", *args[1:]])
    print(f"\n### {label}\n\n`{shown}` ({python})\n", flush=True)
    t0 = time.monotonic()
    p = subprocess.run(cmd, check=False)
    print(f"\n({time.monotonic() - t0:.0f} s)", flush=True)
    return p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pandas2-python", help="a Python with pandas 2 (and modeltap, Evidently)")
    ap.add_argument("--only", action="append", choices=sorted(SECTIONS))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from envinfo import environment

    print(environment(), flush=True)
    failed = []
    for name in args.only or list(SECTIONS):
        label, cmd = SECTIONS[name]
        if name == "drift" and args.pandas2_python:
            cmd = [*cmd, "--evidently-python", args.pandas2_python]
        if run(sys.executable, cmd, label) != 0:
            failed.append(name)
        again = name in PANDAS and args.pandas2_python
        if again and run(args.pandas2_python, SECTIONS[name][1], f"{label}, pandas 2") != 0:
            failed.append(f"{name} (pandas 2)")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
