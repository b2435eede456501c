"""What the parts of :class:`modeltap.Agent` share: the attributes its
constructor sets, and the conversions more than one part uses."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from modeltap import _core
from modeltap.exporter import Exporter
from modeltap.reference import Reference


class _AgentState:
    """The attributes :class:`modeltap.Agent` sets up, declared once for the
    mixins that make up the class."""

    model: str
    version: str
    collector: str | None
    strict: bool
    shutdown_timeout: float
    reference: Reference | None
    params: dict[str, str]
    agent_id: str
    pid: int
    start_unix_nano: int
    log: Callable[..., str]
    _features: list[str] | None
    _categorical: list[str]
    _cfg: dict[str, Any]
    _metrics_interval: float | None
    _capture_bytes: int
    _redact: Callable[[str, str, Any], Any] | None
    _sink: Callable[[bytes], object] | None
    _spool_dir: str | os.PathLike[str] | None
    _spool_max_bytes: int
    _compression: str | None
    _export_timeout: float
    _retry_window: float
    _closed: bool
    _rec: _core.Recorder
    _exporter: Exporter

    if TYPE_CHECKING:

        def log_batch(
            self,
            X: Any,
            predictions: Any,
            probabilities: Any = None,
            *,
            latency_s: Any = None,
            request_ids: Sequence[str] | None = None,
        ) -> _core.RequestIds: ...


def _unix_ns(name: str, t: Any) -> int:
    """Unix seconds as nanoseconds within the range of a window start."""
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be Unix seconds, not {t!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite Unix seconds, not {t!r}")
    return min(max(int(v * 1e9), 0), 2**64 - 1)
