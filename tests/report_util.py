"""Comparing drift reports in tests."""

from __future__ import annotations

import math

import pytest

import modeltap


def same_reports(a: modeltap.DriftReport, b: modeltap.DriftReport, rel: float = 1e-12) -> None:
    """Every row and value of ``a`` equals ``b``'s: floats to ``rel`` (NaN
    matching NaN), everything else exactly."""
    assert a.records == b.records
    assert len(a.rows) == len(b.rows)
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra.keys() == rb.keys()
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float) and isinstance(vb, float):
                if math.isnan(va):
                    assert math.isnan(vb), (ra["feature"], k, va, vb)
                else:
                    assert vb == pytest.approx(va, rel=rel, abs=1e-12), (ra["feature"], k, va, vb)
            else:
                assert va == vb, (ra["feature"], k, va, vb)
