"""The JSON arguments of the collector's read RPCs (Query, Trace, Traces,
Latency, Drift rules), checked before anything runs."""

from __future__ import annotations

import json
import math
from typing import Any

from modeltap import _core
from modeltap.collector.store import MAX_UNIX_NANO

MAX_JSON_REQUEST = 1 << 20  # bytes of a JSON request (a query's text, with params)


def json_request(request: bytes) -> dict[str, Any]:
    if len(request) > MAX_JSON_REQUEST + 16:
        raise ValueError(f"the request is {len(request):,} bytes (at most {MAX_JSON_REQUEST:,})")
    try:
        q = json.loads(_core.decode_text_response(request) or "{}")
    except (ValueError, _core.BatchDecodeError) as e:
        raise ValueError(f"not a JSON request: {e}") from None
    if not isinstance(q, dict):
        raise ValueError("the request must be a JSON object")
    return q


def query_params(v: Any) -> list[Any] | None:
    """The ``params`` of a Query: a list of JSON scalars or lists of them
    (or none)."""
    if v is None:
        return None
    if not isinstance(v, list) or len(v) > 1000:
        raise ValueError("params must be a list of at most 1000 values")
    scalar = (str, int, float, bool)
    for x in v:
        if isinstance(x, list):
            if len(x) > 10_000 or not all(y is None or isinstance(y, scalar) for y in x):
                raise ValueError("a list in params holds at most 10000 scalars")
        elif x is not None and not isinstance(x, scalar):
            raise ValueError("each of params must be a string, number, boolean, null or a list")
    return v


def text_arg(q: dict[str, Any], key: str) -> str | None:
    """A string argument of a JSON request (None when absent or empty)."""
    v = q.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a string")
    return v


def time_args(q: dict[str, Any]) -> tuple[int | None, int | None]:
    """``from_unix_nano`` and ``to_unix_nano`` of a JSON request, checked."""
    out: list[int | None] = []
    for key in ("from_unix_nano", "to_unix_nano"):
        t = q.get(key)
        if t is not None and (type(t) is not int or not 0 <= t <= MAX_UNIX_NANO):
            raise ValueError(f"{key} must be Unix nanoseconds in 0..{MAX_UNIX_NANO}")
        out.append(t)
    return out[0], out[1]


def parse_rules(texts: list[str]) -> dict[str, tuple[str, float]]:
    """``column=statistic:threshold`` texts as drift rules."""
    out: dict[str, tuple[str, float]] = {}
    for t in texts:
        try:
            name, rule = t.split("=", 1)
            stat, thr = rule.split(":", 1)
            out[name] = (stat, float(thr))
        except ValueError:
            raise ValueError(f"bad rule {t!r}: expected column=statistic:threshold") from None
    return out


def json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v
