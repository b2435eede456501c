"""An agent process for the collector tests. Logs records whose features
are a known function of (process index, record index), prints its stats as
JSON on the last line of stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import modeltap
from collector_util import expected_features

ap = argparse.ArgumentParser()
ap.add_argument("--collector", required=True)
ap.add_argument("--k", type=int, default=0)
ap.add_argument("--n", type=int, default=50_000)
ap.add_argument("--spool")
ap.add_argument("--retry-window", type=float, default=5.0)
ap.add_argument("--chunk", type=int, default=1000)
ap.add_argument("--pause", type=float, default=0.0, help="sleep between chunks")
ap.add_argument("--flush-timeout", type=float, default=60.0)
ap.add_argument("--shutdown-timeout", type=float, default=30.0)
ap.add_argument("--gzip", action="store_true")
args = ap.parse_args()

agent = modeltap.Agent(
    "worker",
    "1.0",
    collector=args.collector,
    spool_dir=args.spool,
    retry_window=args.retry_window,
    shutdown_timeout=args.shutdown_timeout,
    compression="gzip" if args.gzip else None,
    metrics_interval=0.5,
    batch_size=2048,
)
X = expected_features(args.k, args.n)
half = args.n // 2
for i in range(half):  # one at a time, as a server would
    agent.log(X[i], args.k, [0.25, 0.75], latency_s=0.001)
    if args.pause and i % args.chunk == args.chunk - 1:
        time.sleep(args.pause)
for start in range(half, args.n, args.chunk):  # and in bulk
    stop = min(start + args.chunk, args.n)
    agent.log_batch(X[start:stop], np.full(stop - start, args.k))
    if args.pause:
        time.sleep(args.pause)
flushed = agent.flush(args.flush_timeout)
agent.close()
s = agent.stats()
s["flushed"] = flushed
s["agent_id"] = agent.agent_id
print(json.dumps(s))
