"""Analyses over the read API: each a function of a
:class:`modeltap.reads.Reads` (a store file, a running collector, or the
collector's own read connections), called alike by the collector's RPCs,
the CLI, the HTML report and the live pages. None is written twice for two
read sources.

- :func:`drift_over_range` (``drift.py``): drift of a model over a time
  range, from the stored window profiles merged natively.
- :func:`stage_latency` and :class:`StageTotals` (``latency.py``): latency
  per stage and end to end from the profiles' stage histograms.
- :func:`trace` and :func:`slowest_traces` (``traces.py``): one trace's
  spans and records; the slowest traces with their stage breakdown.
"""

from modeltap.analysis.drift import drift_over_range
from modeltap.analysis.latency import StageTotals, stage_latency
from modeltap.analysis.traces import slowest_traces, trace

__all__ = ["StageTotals", "drift_over_range", "slowest_traces", "stage_latency", "trace"]
