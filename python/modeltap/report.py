"""HTML reports of one model over a time range: a summary (records, error
rate, latency, drifted features), the drift table with every statistic,
reference-against-current histograms per feature, drift over time,
predictions over time, latency over time, system metrics and errors by
type.

Every figure is computed from reads of the store (:class:`modeltap.reads.Reads`:
a :class:`modeltap.Store`, a :class:`modeltap.Client` of a running
collector, or the collector itself for its live pages), aggregated in SQL or
merged natively from the stored window profiles, so a report of millions of
records moves kilobytes. Plots are drawn by plotly.js; :meth:`Report.to_html`
inlines it, so the file opens offline.

>>> report = modeltap.connect("modeltap.duckdb").report("fraud", since="24h")  # doctest: +SKIP
>>> report.save("fraud.html")                                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modeltap._report_data import MAX_AGENTS as MAX_AGENTS
from modeltap._report_data import MAX_BUCKETS as MAX_BUCKETS
from modeltap._report_data import MAX_CLASSES as MAX_CLASSES
from modeltap._report_data import MAX_DRIFT_LINES as MAX_DRIFT_LINES
from modeltap._report_data import MAX_ERROR_TYPES as MAX_ERROR_TYPES
from modeltap._report_data import MAX_FEATURE_PLOTS as MAX_FEATURE_PLOTS
from modeltap._report_data import NICE_BUCKETS_S as NICE_BUCKETS_S
from modeltap._report_data import PROFILE_CHUNK as PROFILE_CHUNK
from modeltap._report_data import _build
from modeltap._report_html import CSS as CSS
from modeltap._report_html import DRIFT_COLUMNS as DRIFT_COLUMNS
from modeltap._report_html import FAVICON as FAVICON
from modeltap._report_html import _render
from modeltap._report_html import index_html as index_html
from modeltap._report_html import plotly_js as plotly_js
from modeltap.drift import DriftReport
from modeltap.reads import Reads, TimeArg, parse_time


class Reporting:
    """The ``report`` method of a read source (:class:`modeltap.Store`,
    :class:`modeltap.Client`): mixed in beside :class:`Reads`."""

    def report(
        self,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> Report:
        """An HTML report of ``model`` (its newest version unless given)
        over ``[since, until)``: a :class:`modeltap.report.Report`, with
        ``to_html()`` and ``save(path)``."""
        if not isinstance(self, Reads):
            raise TypeError("Reporting is mixed into a Reads source")
        return Report.build(self, model, version, since, until)


class Report:
    """The figures of one report (:meth:`build`) and their HTML."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def model(self) -> str:
        return str(self.data["model"])

    @property
    def summary(self) -> dict[str, Any]:
        """Records, errors, error rate, latency quantiles, drifted features."""
        out: dict[str, Any] = self.data["summary"]
        return out

    @property
    def drift(self) -> DriftReport | None:
        """The drift of the whole range (None without a reference)."""
        d = self.data.get("drift")
        return DriftReport(d) if d else None

    @classmethod
    def build(
        cls,
        source: Reads,
        model: str,
        version: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
    ) -> Report:
        """Reads every figure of ``model`` (its newest version unless given)
        over ``[since, until)`` (default: everything stored) from ``source``."""
        return cls(_build(source, model, version, parse_time(since), parse_time(until)))

    def to_html(self, *, plotly_src: str | None = None) -> str:
        """The report as one HTML page: plotly.js inlined (opens offline),
        or loaded from ``plotly_src`` (a URL) when given."""
        return _render(self.data, plotly_src)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the self-contained HTML to ``path``; returns it."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(self.to_html(), encoding="utf-8")
        os.replace(tmp, p)
        return p

    def _repr_html_(self) -> str:  # notebooks
        return self.to_html()
