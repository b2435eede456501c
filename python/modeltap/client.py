"""A small client for a running collector: register references, ask for
drift."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping
from typing import Any

import grpc

from modeltap import _core
from modeltap.drift import DriftReport
from modeltap.reference import Reference

SERVICE = "/modeltap.v1.Collector/"


def parse_time(t: dt.datetime | str | float | None, now: float | None = None) -> int | None:
    """Unix nanoseconds from a datetime, an ISO time, Unix seconds, or a
    duration back from now ("90s", "15m", "1h", "7d")."""
    if t is None:
        return None
    if isinstance(t, (int, float)):
        return int(t * 1e9)
    if isinstance(t, str):
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
            return int(((now or time.time()) - float(t[:-1]) * units[t[-1]]) * 1e9)
        t = dt.datetime.fromisoformat(t)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1e9)


def _range(
    since: dt.datetime | str | float | None, until: dt.datetime | str | float | None
) -> dict[str, int]:
    """The time range of a JSON query (keys only for the ends given)."""
    out = {}
    if since is not None:
        out["from_unix_nano"] = parse_time(since)
    if until is not None:
        out["to_unix_nano"] = parse_time(until)
    return {k: v for k, v in out.items() if v is not None}


class Client:
    """Talks to ``modeltap collector`` over gRPC."""

    def __init__(self, target: str = "127.0.0.1:7317", timeout_s: float = 30.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: bytes) -> bytes:
        fn: Any = self._channel.unary_unary(SERVICE + method)
        return bytes(fn(request, timeout=self.timeout_s))

    def register_reference(self, reference: Reference, model: str, version: str) -> str:
        """Registers ``reference`` for (model, version); returns its fingerprint."""
        req = _core.encode_reference_upload(model, version, reference.to_bytes())
        return _core.decode_text_response(self._call("RegisterReference", req))

    def drift(
        self,
        model: str,
        version: str | None = None,
        since: dt.datetime | str | float | None = None,
        until: dt.datetime | str | float | None = None,
        *,
        rules: Mapping[str, tuple[str, float]] | None = None,
    ) -> DriftReport:
        """Drift of a model (newest version unless given) over a time range,
        merged by the collector from every agent's stored window profiles."""
        texts = [f"{k}={s}:{t}" for k, (s, t) in (rules or {}).items()]
        req = _core.encode_drift_request(
            model, version or "", parse_time(since) or 0, parse_time(until) or 0, texts
        )
        data: dict[str, Any] = json.loads(_core.decode_text_response(self._call("Drift", req)))
        for row in data["columns"]:
            for k, v in list(row.items()):
                if v is None:
                    row[k] = float("nan")
        return DriftReport(data)

    def _json(self, method: str, query: Mapping[str, Any]) -> Any:
        req = _core.encode_text_response(json.dumps(dict(query)))
        return json.loads(_core.decode_text_response(self._call(method, req)))

    def trace(self, trace_id: str) -> dict[str, Any]:
        """One trace: ``{"trace_id", "spans": [...], "records": [...]}``."""
        data: dict[str, Any] = self._json("Trace", {"trace_id": trace_id})
        return data

    def traces(
        self,
        model: str | None = None,
        slowest: int = 10,
        since: dt.datetime | str | float | None = None,
        until: dt.datetime | str | float | None = None,
    ) -> list[dict[str, Any]]:
        """The slowest traces (of spans of ``model``), each with its total
        duration and time per stage."""
        q: dict[str, Any] = {"model": model, "slowest": slowest, **_range(since, until)}
        rows: list[dict[str, Any]] = self._json("Traces", q)
        return rows

    def stage_latency(
        self,
        model: str,
        version: str | None = None,
        since: dt.datetime | str | float | None = None,
        until: dt.datetime | str | float | None = None,
    ) -> list[dict[str, Any]]:
        """Latency per stage and end to end of a model (p50/p95/p99
        seconds), merged by the collector from every agent's profiles."""
        q: dict[str, Any] = {"model": model, "version": version, **_range(since, until)}
        rows: list[dict[str, Any]] = self._json("Latency", q)
        return rows
