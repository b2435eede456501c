"""Random programs against a real ``modeltap.Agent`` (Hypothesis stateful).

A state machine drives one sink-based agent with small rings and batches
through random sequences of ``log`` and ``log_batch`` with arbitrary Python
values, ``flush`` with sane and absurd timeouts, a sink that stalls or fails
at random, ``fork()`` (the child logs through a method bound before the
fork), ``drift()`` and ``close()``. An oracle written from the documented
contract predicts, for every call, whether it is rejected (or raises, in
strict mode) and exactly what each kept row must decode to; after every
step the machine checks:

- ``logged == pending + shipped + spooled + discarded + dropped_full +
  dropped_spool + invalid + sampled_out``, every counter non-negative, the
  monotonic ones never going back, ``logged`` and ``invalid`` equal to what
  the oracle counted;
- every batch the sink took decodes, carries this agent's id and pid and a
  new ``batch_seq``, and each of its rows equals what was logged under its
  request id (features with NaN == NaN and the sign of zero, prediction kind,
  values and label, probabilities, flags, latency, error, attributes, an
  event time inside the call); no request id arrives twice;
- the sink holds at least ``shipped`` rows (exactly that many after a flush
  that returned True, and after close);
- nothing raises out of a public call but documented ``Exception``
  subclasses, and nothing at all out of ``log``/``log_batch`` outside strict
  mode; after ``close()`` the ring is empty, ``pending`` reaches 0 and later
  records count as dropped.

CI runs a fixed set of 100 programs (derandomized). Run longer locally with
``MODELTAP_STATEFUL_EXAMPLES=2000 MODELTAP_STATEFUL_STEPS=60 python -m pytest
tests/test_agent_stateful.py`` (random seeds; a failure prints a blob to
replay with ``@reproduce_failure``; ``MODELTAP_STATEFUL_TRACE=1`` prints each
call). ``MODELTAP_STATEFUL_KNOWN=name`` (or ``all``) also generates the inputs
of the open bugs listed in ``KNOWN_BUGS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import traceback
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import modeltap
from stateful_checks import Failure, MachineChecks, guarded
from stateful_oracle import (
    _REENTRY,
    CLOSE_AFTER,
    EXAMPLES,
    HEX32,
    INF,
    KNOWN_BUGS,
    LONG_RUN,
    NAN,
    STEPS,
    TRACE,
    Row,
    Schema,
    Verdict,
    expect_batch,
    expect_frame,
    expect_log,
    infer_names,
    oracle_mode,
    to_str,
)
from stateful_sinks import ModalSink
from stateful_strategies import (
    Config,
    attributes,
    batch_latencies,
    batch_matrices,
    batch_predictions,
    batch_probabilities,
    batch_request_ids,
    configs,
    errors,
    feature_args,
    frames,
    latencies,
    predictions,
    probabilities,
    reference,
    request_id_args,
)

pytestmark = pytest.mark.filterwarnings("ignore:This process:DeprecationWarning")

# -- the machine --------------------------------------------------------------


class AgentMachine(MachineChecks, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.agent: modeltap.Agent | None = None
        self.forks = 0

    # -- setup ------------------------------------------------------------

    @initialize(cfg=configs())
    @guarded
    def start(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sink = ModalSink()
        kwargs: dict[str, Any] = {}
        if cfg.schema == "reference":
            kwargs["reference"] = reference()
        else:
            kwargs["features"] = cfg.features
            kwargs["categorical"] = cfg.categorical
        self.agent = modeltap.Agent(
            "m",
            "1",
            sink=self.sink,
            metrics_interval=None,
            buffer_size=cfg.buffer_size,
            buffer_bytes=cfg.buffer_bytes,
            batch_size=cfg.batch_size,
            max_pending_records=cfg.max_pending_records,
            on_full=cfg.on_full,
            sample_rate=cfg.sample_rate,
            strict=cfg.strict,
            flush_interval=cfg.flush_interval,
            shutdown_timeout=3.0,
            **kwargs,
        )
        # Bound once, before any fork: the child must still reach its agent.
        self.bound_log = self.agent.log
        self.agent_id = self.agent.agent_id
        self.declared = cfg.features
        self.declared_cats = frozenset(cfg.categorical)
        self.schema: Schema | None = None
        self.expected: dict[str, list[Row]] = {}
        self.delivered: dict[str, int] = {}
        self.seen = 0
        self.rows_stored = 0
        self.last_seq = -1
        self.prev: dict[str, int] = {}
        self.m_logged = 0
        self.m_invalid = 0
        self.counter = 0
        self.closed = False
        self.inner: list[tuple[bool, Verdict]] = []
        self.failures: list[AssertionError] = []
        _REENTRY["machine"] = self

    def teardown(self) -> None:
        _REENTRY.pop("machine", None)
        agent = self.agent
        if agent is None:
            return
        if not getattr(self, "clean", False):
            agent.close(0.0)
            return
        try:
            closed_before = self.closed
            self.sink.mode = "ok"
            agent.close(5.0)
            self.closed = True
            self.wait_settled()
            self.check_counters()
            self.check_deliveries()
            self.raise_deferred()
            s = agent.stats()
            assert s["pending"] == 0, s
            assert s["in_ring"] == 0, s
            assert s["side_bytes"] == 0, s
            late = self.rows_stored - s["shipped"]
            if closed_before:
                # A batch still in the sink's hands when an earlier close()
                # ran out of time was counted as discarded, and may yet have
                # arrived (README, "discarded").
                assert 0 <= late <= min(self.cfg.batch_size, s["discarded"]), (late, s)
            else:
                assert late == 0, (self.rows_stored, s)
        finally:
            agent.close(0.0)

    # -- helpers ----------------------------------------------------------

    def current_schema(self) -> Schema | None:
        assert self.agent is not None
        names = self.agent.feature_names
        if names is None:
            return None
        return Schema(list(names), frozenset(self.agent.categorical))

    def schema_for_log(self, features: Any) -> Schema:
        if self.schema is not None:
            return self.schema
        names = self.declared if self.declared is not None else infer_names(features)
        return Schema(list(names), self.declared_cats)

    def note_schema(self, predicted: Schema | None) -> None:
        now = self.current_schema()
        if predicted is not None and now is not None and self.schema is None:
            assert now.names == predicted.names, (now, predicted)
            assert now.cats == predicted.cats, (now, predicted)
        if self.schema is not None:
            assert now == self.schema, (now, self.schema)
        self.schema = now

    def stats(self) -> dict[str, int]:
        assert self.agent is not None
        try:
            s = self.agent.stats()
        except BaseException as e:
            raise Failure(f"stats() raised {e!r}") from e
        return s

    def register(self, v: Verdict, returned: list[Any], t0: int, t1: int) -> None:
        """Remembers the rows of an accepted call under their request ids."""
        for row, given, ret in zip(v.rows, v.ids, returned, strict=True):
            row.t0, row.t1 = t0, t1
            row.agent_id = self.agent_id
            key = given
            if key is None:
                assert isinstance(ret, str), ret
                assert HEX32.fullmatch(ret), ret
                key = ret
            self.expected.setdefault(key, []).append(row)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None]:
        try:
            return fn(*args, **kwargs), None
        except BaseException as e:
            return None, e

    def check_raised(self, what: str, raised: BaseException | None, v: Verdict) -> None:
        if v.raises:
            if not isinstance(raised, modeltap.InvalidRecord):
                raise Failure(f"{what}: strict mode must raise InvalidRecord, got {raised!r}")
            return
        if raised is not None:
            tb = "".join(traceback.format_exception(raised))
            raise Failure(f"{what} raised {raised!r} ({v.why}):\n{tb}")

    def inner_log(self) -> None:
        """A record logged from inside the agent's parsing of another one."""
        assert self.agent is not None
        schema = self.schema or self.current_schema()
        if schema is None:
            return
        feats = ["x" if schema.is_cat(i) else 0.25 for i in range(len(schema.names))]
        self.counter += 1
        rid = f"inner{self.counter}"
        with oracle_mode():
            v = expect_log(schema, self.cfg.strict, feats, 3, None, None, rid, None, None)
        t0 = time.time_ns()
        ret, raised = self.call(self.agent.log, feats, 3, request_id=rid)
        t1 = time.time_ns()
        self.check_raised("inner log", raised, v)
        self.m_logged += 1
        if not v.rejected:
            self.register(v, [ret], t0, t1)
        self.inner.append((not v.rejected, v))

    # -- rules: recording -------------------------------------------------

    # Recording is what most programs do: three rules share `log`, two
    # `log_batch` (Hypothesis picks among rules uniformly).
    @rule(data=st.data())
    @guarded
    def log(self, data: Any) -> None:
        self.log_one(data)

    @rule(data=st.data())
    @guarded
    def log_again(self, data: Any) -> None:
        self.log_one(data)

    @rule(data=st.data())
    @guarded
    def log_once_more(self, data: Any) -> None:
        self.log_one(data)

    @rule(data=st.data())
    @guarded
    def log_batch(self, data: Any) -> None:
        self.log_many(data)

    @rule(data=st.data())
    @guarded
    def log_batch_again(self, data: Any) -> None:
        self.log_many(data)

    def log_one(self, data: Any) -> None:
        assert self.agent is not None
        features = data.draw(feature_args(self.schema, self.declared), label="features")
        pred = data.draw(predictions, label="prediction")
        probs = data.draw(probabilities, label="probabilities")
        latency = data.draw(latencies, label="latency_s")
        self.counter += 1
        rid = data.draw(request_id_args(self.counter), label="request_id")
        err = data.draw(errors, label="error")
        attrs = data.draw(attributes, label="attributes")
        bound = data.draw(st.booleans(), label="bound")
        schema = self.schema_for_log(features)
        with oracle_mode():
            v = expect_log(schema, self.cfg.strict, features, pred, probs, latency, rid, err, attrs)
        before = self.stats()
        self.inner = []
        fn = self.bound_log if bound else self.agent.log
        kwargs = {"latency_s": latency, "request_id": rid, "error": err, "attributes": attrs}
        t0 = time.time_ns()
        ret, raised = self.call(fn, features, pred, probs, **kwargs)
        t1 = time.time_ns()
        self.check_raised("log", raised, v)
        self.note_schema(schema)
        self.m_logged += 1
        self.m_invalid += int(v.rejected)
        if raised is None:
            if rid is None:
                assert isinstance(ret, str), ret
                assert HEX32.fullmatch(ret), ret
            else:
                try:
                    want = str(rid)
                except Exception:
                    want = rid
                assert ret == want or ret is rid, (ret, rid)
        if not v.rejected:
            self.register(v, [ret], t0, t1)
        if self.closed:
            after = self.stats()
            kept = int(not v.rejected) + sum(ok for ok, _ in self.inner)
            assert after["dropped_full"] - before["dropped_full"] == kept, (before, after)
            assert after["shipped"] == before["shipped"], (before, after)

    def log_many(self, data: Any) -> None:
        assert self.agent is not None
        schema = self.schema
        nf = (
            len(schema.names)
            if schema
            else len(self.declared or []) or data.draw(st.integers(0, 4))
        )
        n = data.draw(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 21, 40, 300]), label="rows")
        # Mostly calls the agent must take, so their rows reach the checks;
        # otherwise one argument at a time is wrong.
        bad = data.draw(st.sampled_from(["none"] * 5 + ["X", "preds", "probs", "latency", "ids"]))
        use_frame = data.draw(st.integers(0, 4)) == 0
        if use_frame:
            X = data.draw(frames(schema, self.declared, self.declared_cats, n), label="X")
        else:
            X = data.draw(batch_matrices(n, nf, bad != "X"), label="X")
        preds = data.draw(batch_predictions(n, bad != "preds"), label="predictions")
        probs = data.draw(batch_probabilities(n, bad != "probs"), label="probabilities")
        latency = data.draw(batch_latencies(n, bad != "latency"), label="latency_s")
        self.counter += 1
        ids = data.draw(batch_request_ids(n, self.counter, bad != "ids"), label="request_ids")
        with oracle_mode():
            if isinstance(X, pd.DataFrame):
                v, new_schema = expect_frame(
                    schema,
                    self.declared,
                    self.declared_cats,
                    self.cfg.strict,
                    X,
                    preds,
                    probs,
                    latency,
                    ids,
                )
            else:
                v, new_schema = expect_batch(
                    schema,
                    self.declared,
                    self.declared_cats,
                    self.cfg.strict,
                    X,
                    preds,
                    probs,
                    latency,
                    ids,
                )
        if TRACE:
            print("oracle:", v.n, v.rejected, v.raises, v.known, v.why)
        if v.known in KNOWN_BUGS:
            return
        before = self.stats()
        t0 = time.time_ns()
        ret, raised = self.call(
            self.agent.log_batch, X, preds, probs, latency_s=latency, request_ids=ids
        )
        t1 = time.time_ns()
        if TRACE:
            print("agent:", ret, repr(raised), self.stats()["logged"] - before["logged"])
        self.check_raised("log_batch", raised, v)
        self.note_schema(new_schema)
        self.m_logged += v.n
        self.m_invalid += v.n if v.rejected else 0
        if raised is None:
            assert isinstance(ret, modeltap.RequestIds), ret
            if v.rejected:
                assert ret == [], ret
            else:
                assert len(ret) == v.n, (len(ret), v.n)
                if ids is not None and v.n:
                    assert ret == [to_str(i) for i in ids]
                self.register(v, ret, t0, t1)
        if self.closed and not v.rejected:
            after = self.stats()
            assert after["dropped_full"] - before["dropped_full"] == v.n, (before, after)

    @rule(
        k=st.integers(2, 3),
        m=st.integers(1, 40),
        labels=st.booleans(),
        batches=st.booleans(),
    )
    @guarded
    def log_threads(self, k: int, m: int, labels: bool, batches: bool) -> None:
        """Several threads log at once (fresh categories and labels, a bound
        method and the agent's own, one-row batches)."""
        assert self.agent is not None
        schema = self.schema_for_log([0.0, 0.0])
        nf = len(schema.names)
        self.counter += 1
        tag = self.counter
        work: list[list[tuple[str, list[Any], Any]]] = []
        verdicts: dict[str, Verdict] = {}
        with oracle_mode():
            for t in range(k):
                mine = []
                for i in range(m):
                    feats = [
                        f"t{tag}.{t}.{i % 5}" if schema.is_cat(j) else float(t * 1000 + i)
                        for j in range(nf)
                    ]
                    pred: Any = f"L{tag}.{t}.{i}" if labels else float(i)
                    rid = f"th{tag}.{t}.{i}"
                    v = expect_log(
                        schema, self.cfg.strict, feats, pred, None, None, rid, None, None
                    )
                    verdicts[rid] = v
                    mine.append((rid, feats, pred))
                work.append(mine)
        errors: list[BaseException] = []
        barrier = threading.Barrier(k)
        agent = self.agent

        def run(t: int) -> None:
            try:
                barrier.wait(10.0)
                log = self.bound_log if t % 2 else agent.log
                for rid, feats, pred in work[t]:
                    if (
                        batches
                        and not schema.cats
                        and not labels
                        and int(rid.rsplit(".", 1)[1]) % 4 == 0
                    ):
                        out = agent.log_batch(
                            np.array([feats], dtype=np.float64),
                            np.array([pred]),
                            request_ids=[rid],
                        )
                        assert out == [rid], out
                    else:
                        assert log(feats, pred, request_id=rid) == rid
            except BaseException as e:
                errors.append(e)

        before = self.stats()
        threads = [threading.Thread(target=run, args=(t,)) for t in range(k)]
        t0 = time.time_ns()
        for th in threads:
            th.start()
        for th in threads:
            th.join(60.0)
        t1 = time.time_ns()
        if any(th.is_alive() for th in threads):
            raise Failure(f"logging threads still running after 60 s: {self.stats()}")
        if errors:
            tb = "".join(traceback.format_exception(errors[0]))
            raise Failure(f"a logging thread raised {errors[0]!r}:\n{tb}")
        self.note_schema(schema)
        for rid, v in verdicts.items():
            self.m_logged += v.n
            self.m_invalid += v.n if v.rejected else 0
            if not v.rejected:
                self.register(v, [rid], t0, t1)
        if self.closed:
            after = self.stats()
            assert after["dropped_full"] - before["dropped_full"] == k * m, (before, after)

    # -- rules: delivery --------------------------------------------------

    @rule(
        mode=st.sampled_from(["ok", "ok", "stall", "raise", "exit"]),
        stall_s=st.sampled_from([0.001, 0.005, 0.02]),
    )
    def sink_mode(self, mode: str, stall_s: float) -> None:
        self.sink.stall_s = stall_s
        self.sink.mode = mode

    @rule(timeout=st.sampled_from([0.0, -1.0, -1e300, -INF, 0.001, 0.05, 0.5]))
    @guarded
    def flush_short(self, timeout: float) -> None:
        assert self.agent is not None
        t = time.monotonic()
        ok, raised = self.call(self.agent.flush, timeout)
        took = time.monotonic() - t
        if raised is not None:
            raise Failure(f"flush({timeout!r}) raised {raised!r}")
        assert isinstance(ok, bool), ok
        # One stalled sink call may overrun a short flush, nothing more.
        assert took < max(timeout, 0.0) + 2.0, took

    @rule(timeout=st.sampled_from([5.0, 30.0, INF, 1e20, 1e300]))
    @guarded
    def flush_long(self, timeout: float) -> None:
        assert self.agent is not None
        box: dict[str, Any] = {}

        def run() -> None:
            box["ok"], box["raised"] = self.call(self.agent.flush, timeout)  # type: ignore[union-attr]

        th = threading.Thread(target=run, daemon=True)
        th.start()
        th.join(60.0)
        if th.is_alive():
            raise Failure(f"flush({timeout!r}) still waiting after 60 s: {self.stats()}")
        if box["raised"] is not None:
            raise Failure(f"flush({timeout!r}) raised {box['raised']!r}")
        if self.closed:
            return
        s = self.stats()
        assert box["ok"] is True, (timeout, s)
        assert s["pending"] == 0, s
        self.check_deliveries()
        assert self.rows_stored == s["shipped"], (self.rows_stored, s)

    @rule()
    @guarded
    def flush_nan(self) -> None:
        assert self.agent is not None
        _, raised = self.call(self.agent.flush, NAN)
        assert isinstance(raised, ValueError), raised

    @precondition(lambda self: self.agent is not None and self.agent.reference is not None)
    @rule()
    @guarded
    def drift(self) -> None:
        assert self.agent is not None
        report, raised = self.call(self.agent.drift)
        if raised is not None:
            tb = "".join(traceback.format_exception(raised))
            raise Failure(f"drift() raised {raised!r}:\n{tb}")
        assert isinstance(report, modeltap.DriftReport)

    @precondition(lambda self: getattr(self, "steps", 0) >= CLOSE_AFTER)
    @rule(timeout=st.sampled_from([None, 0.0, 0.01, 0.5, 2.0]), twice=st.booleans())
    @guarded
    def close(self, timeout: float | None, twice: bool) -> None:
        assert self.agent is not None
        limit = 3.0 if timeout is None else max(timeout, 0.0)
        for _ in range(2 if twice else 1):
            t = time.monotonic()
            _, raised = self.call(self.agent.close, timeout)
            took = time.monotonic() - t
            if raised is not None:
                raise Failure(f"close({timeout!r}) raised {raised!r}")
            # Within its timeout, plus one sink call already under way.
            assert took <= limit + self.sink.stall_s + 1.0, (timeout, took)
        self.closed = True
        s = self.stats()
        assert s["in_ring"] == 0, s
        self.wait_settled()
        assert self.sink.calls <= self.stats()["batches"], (self.sink.calls, self.stats())

    @precondition(lambda self: getattr(self, "steps", 0) >= CLOSE_AFTER)
    @rule(
        m=st.integers(50, 3000),
        delay=st.sampled_from([0.0, 0.001, 0.01]),
        timeout=st.sampled_from([0.0, 0.05, 1.0]),
    )
    @guarded
    def close_while_logging(self, m: int, delay: float, timeout: float) -> None:
        """``close()`` from one thread while another logs flat out (and, with
        ``on_full="block"``, may be waiting for room): the logger must come
        back, and every record must end up counted."""
        assert self.agent is not None
        schema = self.schema_for_log([0.0, 0.0])
        feats = ["c" if schema.is_cat(j) else 0.5 for j in range(len(schema.names))]
        self.counter += 1
        tag = self.counter
        with oracle_mode():
            v = expect_log(schema, self.cfg.strict, feats, 1.0, None, None, "x", None, None)
        agent = self.agent
        box: dict[str, Any] = {"n": 0, "raised": None}
        started = threading.Event()
        t0 = time.time_ns()

        def run() -> None:
            try:
                started.set()
                for i in range(m):
                    agent.log(feats, 1.0, request_id=f"cw{tag}.{i}")
                    box["n"] += 1
            except BaseException as e:
                box["raised"] = e

        th = threading.Thread(target=run)
        th.start()
        started.wait(10.0)
        time.sleep(delay)
        _, raised = self.call(agent.close, timeout)
        th.join(30.0)
        t1 = time.time_ns()
        if th.is_alive():
            raise Failure(f"a logging thread is stuck after close(): {self.stats()}")
        if raised is not None or box["raised"] is not None:
            raise Failure(f"close() raised {raised!r}, the logger {box['raised']!r}")
        self.note_schema(schema)
        self.m_logged += m
        self.m_invalid += m if v.rejected else 0
        if not v.rejected:
            for i in range(m):
                rid = f"cw{tag}.{i}"
                one = Verdict(1, rows=[dataclasses.replace(v.rows[0])], ids=[rid])
                self.register(one, [rid], t0, t1)
        self.closed = True
        self.wait_settled()

    def wait_settled(self) -> None:
        """After close, the exporter may still be inside one (stalled) sink
        call; once it returns nothing may stay pending."""
        deadline = time.monotonic() + 10.0
        while self.stats()["pending"] and time.monotonic() < deadline:
            time.sleep(0.005)
        s = self.stats()
        assert s["pending"] == 0, s

    # -- rules: fork ------------------------------------------------------

    @precondition(lambda self: self.agent is not None and self.forks < 2 and hasattr(os, "fork"))
    @rule(k=st.integers(1, 4))
    @guarded
    def fork(self, k: int) -> None:
        assert self.agent is not None
        self.forks += 1
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 3
            try:
                os.close(r)
                msg = self.child(k)
                code = 0 if msg == "" else 1
            except BaseException:
                msg = traceback.format_exc()
                code = 2
            finally:
                with contextlib.suppress(BaseException):
                    os.write(w, msg.encode("utf-8", "replace")[:60000])
                os._exit(code)
        os.close(w)
        deadline = time.monotonic() + 30.0
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(r)
            raise Failure("forked child did not finish within 30 s (deadlock?)")
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode("utf-8", "replace")
        code = os.waitstatus_to_exitcode(status)
        assert code == 0, f"child exited with {code}: {msg}"

    def child(self, k: int) -> str:
        """In the forked child: log ``k`` records through the method bound
        before the fork, flush, and check what arrived. Returns '' or what
        went wrong."""
        assert self.agent is not None
        _REENTRY.pop("machine", None)
        agent, sink = self.agent, self.sink
        sink.mode = "ok"
        start = len(sink.raw)
        before = agent.stats()
        schema = self.schema or self.schema_for_log([0.0, 0.0])
        ids = []
        for i in range(k):
            feats = ["c" if schema.is_cat(j) else float(i) for j in range(len(schema.names))]
            ids.append(self.bound_log(feats, i))
        if self.closed:
            s = agent.stats()
            if (
                s["logged"] - before["logged"] != k
                or s["dropped_full"] - before["dropped_full"] != k
            ):
                return f"closed agent in child: {before} -> {s}"
            return ""
        if agent.agent_id == self.agent_id:
            return "child kept the parent's agent id"
        if agent.feature_names != schema.names or set(agent.categorical) != schema.cats:
            return f"child schema {agent.feature_names} {agent.categorical}, parent's {schema}"
        if not agent.flush(20.0):
            return f"flush in child timed out: {agent.stats()}"
        s = agent.stats()
        if s["logged"] != k or s["pending"] != 0:
            return f"child counters: {s}"
        if s["shipped"] + s["sampled_out"] + s["dropped_full"] != k:
            return f"child counters do not add up: {s}"
        got = []
        for raw in sink.snapshot(start):
            b = modeltap.decode_batch(raw)
            if b["agent_id"] != agent.agent_id:
                continue
            if b["model"]["pid"] != os.getpid():
                return f"child batch with pid {b['model']['pid']}"
            for r, rid in enumerate(b["request_ids"]):
                got.append(rid)
                feats = b["features"][r]
                i = ids.index(rid) if rid in ids else -1
                if i < 0:
                    return f"child delivered an id it never logged: {rid}"
                for j in range(len(schema.names)):
                    if not schema.is_cat(j) and feats[j] != float(i):
                        return f"child row {i} has features {feats.tolist()}"
        if len(got) != len(set(got)) or len(got) != s["shipped"]:
            return f"child delivered {got} for {ids}, stats {s}"
        return ""

    # -- invariants -------------------------------------------------------

    @invariant()
    @guarded
    def counters_add_up(self) -> None:
        if self.agent is not None:
            self.check_counters()

    @invariant()
    @guarded
    def deliveries_match(self) -> None:
        if self.agent is not None:
            self.check_deliveries()


AgentMachine.TestCase.settings = settings(
    max_examples=EXAMPLES or 100,
    stateful_step_count=STEPS or 25,
    deadline=None,
    derandomize=not LONG_RUN,
    database=None if not LONG_RUN else settings.default.database,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    # The explain phase traces every line of a failing program; with this
    # machine's threads and forks that takes minutes per replay.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)
TestAgentStateful = AgentMachine.TestCase
