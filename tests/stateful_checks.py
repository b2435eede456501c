"""The checks of tests/test_agent_stateful.py: its step guard and the
invariants' work (counters that add up, every delivered batch decoded and
compared row by row with what the oracle predicted)."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from typing import Any

import modeltap
from stateful_oracle import MONOTONIC, SETTLED, TRACE, Row


def floats_equal(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def vectors_equal(a: Any, b: Any) -> bool:
    return len(a) == len(b) and all(
        floats_equal(float(x), float(y)) for x, y in zip(a, b, strict=True)
    )


class Failure(AssertionError):
    pass


def guarded(fn: Any) -> Any:
    """Marks the machine unclean while a step runs: teardown then only
    closes the agent instead of piling its own failure on the step's."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        self.clean = False
        self.steps = getattr(self, "steps", 0) + 1
        t = time.perf_counter()
        fn(self, *args, **kwargs)
        if TRACE:
            print(f"{fn.__name__}: {time.perf_counter() - t:.3f}s", file=sys.stderr)
        self.clean = True

    return wrapper


class MachineChecks:
    """Checks of the machine's counters and deliveries, mixed into
    ``AgentMachine``."""

    def check_counters(self) -> None:
        s = self.stats()
        for k, val in s.items():
            assert isinstance(val, int), (k, s)
            assert val >= 0, (k, s)
        settled = sum(s[k] for k in SETTLED)
        assert settled <= s["logged"], s
        assert s["logged"] == s["pending"] + settled, s
        for k in MONOTONIC:
            assert s[k] >= self.prev.get(k, 0), (k, self.prev, s)
        assert s["logged"] == self.m_logged, (self.m_logged, s)
        assert s["invalid"] == self.m_invalid, (self.m_invalid, s)
        assert s["in_ring"] <= s["pending"], s
        if self.cfg.sample_rate == 1.0:
            assert s["sampled_out"] == 0, s
        self.prev = s
        # Rows reach the sink before they are counted as shipped.
        assert s["shipped"] <= self.rows_stored + self.count_new_rows(), (self.rows_stored, s)

    def count_new_rows(self) -> int:
        total = 0
        for raw in self.sink.snapshot(self.seen):
            total += modeltap.decode_batch(raw)["n_records"]
        return total

    def check_deliveries(self) -> None:
        """Checks the batches the sink took since the last call. When a batch
        arrives depends on thread timing, so a wrong row is remembered and
        raised at teardown: failing at a step that varies from run to run
        would make Hypothesis's replays (and shrinking) inconsistent."""
        for raw in self.sink.snapshot(self.seen):
            self.seen += 1
            try:
                self.check_batch(raw)
            except AssertionError as e:
                self.failures.append(e)

    def raise_deferred(self) -> None:
        if self.failures:
            first = self.failures[0]
            raise Failure(f"{len(self.failures)} bad deliveries; the first: {first}") from first

    def check_batch(self, raw: bytes) -> None:
        try:
            d = modeltap.decode_batch(raw)
            c = modeltap.decode_batch(raw, columns=True)
        except Exception as e:
            raise Failure(f"a delivered batch does not decode: {e!r}") from e
        assert d["model"]["model"] == "m", d["model"]
        assert d["model"]["version"] == "1", d["model"]
        assert d["agent_id"] == self.agent_id, (d["agent_id"], self.agent_id)
        assert d["model"]["pid"] == os.getpid(), d["model"]
        assert d["batch_seq"] > self.last_seq, (d["batch_seq"], self.last_seq)
        self.last_seq = d["batch_seq"]
        n = d["n_records"]
        assert len(d["request_ids"]) == n
        self.rows_stored += n
        if n == 0:
            return
        schema = self.schema or self.current_schema()
        assert schema is not None
        assert d["feature_names"] == schema.names, (d["feature_names"], schema)
        kinds = ["categorical" if schema.is_cat(i) else "numeric" for i in range(len(schema.names))]
        assert d["feature_kinds"] == kinds, (d["feature_kinds"], kinds)
        errs = {row: (t, m) for row, t, m in d["errors"]}
        attrs = d["attributes"]
        poff, pval = c["prediction_offsets"], c["prediction_values"]
        qoff, qval = c["probability_offsets"], c["probability_values"]
        for r in range(n):
            rid = d["request_ids"][r]
            assert rid is not None, (r, d["request_ids"])
            got_n = self.delivered.get(rid, 0) + 1
            self.delivered[rid] = got_n
            cands = self.expected.get(rid, [])
            assert got_n <= len(cands), (
                f"request id {rid!r} delivered {got_n} times, logged {len(cands)}"
            )
            got = {
                "features": [
                    d["categories"][name][r] if schema.is_cat(i) else float(d["features"][r][i])
                    for i, name in enumerate(schema.names)
                ],
                "kind": d["prediction_kind"][r],
                "values": pval[poff[r] : poff[r + 1]].tolist(),
                "label": d["labels"][r],
                "probs": qval[qoff[r] : qoff[r + 1]].tolist(),
                "flags": int(d["flags"][r]),
                "latency": float(d["latency_s"][r]),
                "error": errs.get(r),
                "attrs": attrs.get(r, {}),
                "ts": int(d["timestamp_unix_nano"][r]),
            }
            problems = [self.diff(want, got) for want in cands]
            if not any(p == "" for p in problems):
                raise Failure(
                    f"row {rid!r} does not match what was logged:\n  "
                    + "\n  ".join(problems)
                    + f"\n  got {got}"
                )

    @staticmethod
    def diff(want: Row, got: dict[str, Any]) -> str:
        out = []
        for i, (w, g) in enumerate(zip(want.features, got["features"], strict=False)):
            if w is None or isinstance(w, str):
                same = w == g
            else:
                same = g is not None and not isinstance(g, str) and floats_equal(w, g)
            if not same:
                out.append(f"feature {i}: want {w!r} got {g!r}")
        if len(want.features) != len(got["features"]):
            out.append("feature count")
        p = want.pred
        if got["kind"] != p.kind:
            out.append(f"kind: want {p.kind} got {got['kind']}")
        if p.kind == "label":
            if got["label"] != p.label or len(got["values"]) != 1:
                out.append(f"label: want {p.label!r} got {got['label']!r} {got['values']}")
        elif not vectors_equal(p.values, got["values"]):
            out.append(f"prediction: want {p.values[:8]} got {got['values'][:8]}")
        if not vectors_equal(want.probs, got["probs"]):
            out.append(f"probabilities: want {want.probs[:8]} got {got['probs'][:8]}")
        if got["flags"] != want.flags:
            out.append(f"flags: want {want.flags} got {got['flags']}")
        if not floats_equal(want.latency, got["latency"]):
            out.append(f"latency: want {want.latency!r} got {got['latency']!r}")
        if want.error != got["error"]:
            out.append(f"error: want {want.error!r} got {got['error']!r}")
        if want.attrs != got["attrs"]:
            out.append(f"attributes: want {want.attrs!r} got {got['attrs']!r}")
        if not (want.t0 <= got["ts"] <= want.t1):
            out.append(f"timestamp {got['ts']} outside the call [{want.t0}, {want.t1}]")
        return "; ".join(out)
