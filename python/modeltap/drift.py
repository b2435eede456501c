"""Drift reports: one row per column (features and model outputs), the
statistics computed natively from profiles against a reference."""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from modeltap import _core

STATS = ("psi", "ks", "js", "wasserstein", "chi2", "hellinger")
COLUMNS = (
    "feature",
    "kind",
    "role",
    "psi",
    "ks",
    "ks_pvalue",
    "js",
    "wasserstein",
    "chi2",
    "chi2_pvalue",
    "hellinger",
    "missing_ref",
    "missing_cur",
    "out_of_range",
    "mean_ref",
    "mean_cur",
    "std_ref",
    "std_cur",
    "n_ref",
    "n_cur",
    "statistic",
    "threshold",
    "drifted",
    "insufficient",
)

Rules = Mapping[str, tuple[str, float]]

# The columns tables (HTML, the CLI) show.
TABLE = (
    "feature",
    "kind",
    "psi",
    "ks",
    "ks_pvalue",
    "js",
    "wasserstein",
    "chi2",
    "hellinger",
    "missing_cur",
    "out_of_range",
    "drifted",
)


def compute(
    reference: bytes,
    profile: bytes | Sequence[bytes],
    rules: Rules | None = None,
    defaults: Rules | None = None,
) -> DriftReport:
    """Drift of an encoded window profile (or a list of them, merged; those
    that do not fit the reference are left out, see ``DriftReport.notes``)
    against a reference file's bytes.

    ``rules`` maps a column to ``(statistic, threshold)`` (statistic one of
    psi, js, ks, wasserstein, hellinger); ``defaults`` does the same for
    "numeric" and "categorical" columns. Without them: numeric columns drift
    at PSI ≥ 0.2, categorical ones at Jensen-Shannon distance ≥ 0.1."""
    d = _core.drift(reference, profile, dict(rules or {}), dict(defaults or {}))
    return DriftReport(d)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.4f}"
    return str(v)


class DriftReport:
    """Drift of one profile (a window, a merged time range, a set of agents)
    against a reference. Rows: one per column, with ``feature``, ``psi``,
    ``ks``, ``ks_pvalue``, ``js``, ``wasserstein``, ``chi2``,
    ``chi2_pvalue``, ``hellinger``, missing and out-of-range rates, means,
    the deciding ``statistic`` and ``threshold``, and ``drifted``.
    ``notes`` says what was left out and why: a profile, or a column of
    one, that does not fit the reference is ignored rather than counted
    into the wrong bins."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.rows: list[dict[str, Any]] = [dict(r) for r in data["columns"]]
        self.notes: list[str] = [str(n) for n in data.get("notes", ())]
        self.records = int(data["records"])
        self.errors = int(data["errors"])
        self.flagged = int(data["flagged"])
        start = int(data["window_start_unix_nano"])
        width = int(data["window_nano"])
        self.start = dt.datetime.fromtimestamp(start / 1e9, dt.timezone.utc) if start else None
        self.end = (
            dt.datetime.fromtimestamp((start + width) / 1e9, dt.timezone.utc) if start else None
        )

    @property
    def drifted(self) -> list[str]:
        """Columns whose drift decision is positive."""
        return [r["feature"] for r in self.rows if r["drifted"]]

    def __getitem__(self, feature: str) -> dict[str, Any]:
        for r in self.rows:
            if r["feature"] == feature:
                return r
        raise KeyError(feature)

    def __len__(self) -> int:
        return len(self.rows)

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame indexed by column name."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS)).set_index("feature")

    def _span(self) -> str:
        if self.start is None or self.end is None:
            return "no records"
        return f"{self.start:%Y-%m-%d %H:%M:%S} to {self.end:%Y-%m-%d %H:%M:%S} UTC"

    def __repr__(self) -> str:
        head = ("feature", "kind", "psi", "ks", "js", "wasserstein", "chi2", "hellinger", "drifted")
        table = [head] + [tuple(_fmt(r[h]) for h in head) for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        lines = [
            f"DriftReport: {self.records:,} records, {self._span()}, "
            f"{len(self.drifted)} of {len(self.rows)} columns drifted"
        ]
        for row in table:
            lines.append(
                "  ".join(
                    c.rjust(w) if i else c.ljust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = TABLE
        rows = []
        for r in self.rows:
            style = ' style="background:#fde2e1"' if r["drifted"] else ""
            cells = "".join(f"<td>{html.escape(_fmt(r[h]))}</td>" for h in head)
            rows.append(f"<tr{style}>{cells}</tr>")
        return (
            f"<p><b>DriftReport</b>: {self.records:,} records, {html.escape(self._span())}, "
            f"{len(self.drifted)} of {len(self.rows)} columns drifted</p>"
            "<table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )
