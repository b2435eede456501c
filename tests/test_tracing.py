"""Spans: parent links through contextvars (threads, asyncio tasks),
records joined to their inference span, exceptions, head sampling that
keeps error traces, capture of inputs and outputs, and the counters."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import numpy as np
import pytest

import modeltap
from counters_util import settled


class Sink:
    def __init__(self) -> None:
        self.batches: list[bytes] = []

    def __call__(self, b: bytes) -> None:
        self.batches.append(b)

    def spans(self) -> list[dict]:
        out = []
        for b in self.batches:
            sp = modeltap.decode_batch(b)["spans"]
            if not sp:
                continue
            for i in range(len(sp["names"])):
                out.append({k: v[i] for k, v in sp.items()})
        return out

    def records(self) -> list[dict]:
        out = []
        for b in self.batches:
            d = modeltap.decode_batch(b)
            for i in range(d["n_records"]):
                out.append({"trace_id": d["trace_ids"][i], "span_id": d["span_ids"][i]})
        return out


def _agent(**kw) -> tuple[modeltap.Agent, Sink]:
    sink = Sink()
    kw.setdefault("metrics_interval", None)
    return modeltap.Agent("m", sink=sink, **kw), sink


def _by_name(spans: list[dict]) -> dict[str, dict]:
    return {s["names"]: s for s in spans}


def test_nested_spans_and_the_monitored_record_share_one_trace():
    a, sink = _agent()

    @a.monitor
    def predict(x):
        return float(np.sum(x))

    with a.span("request", kind="server", attributes={"route": "/predict"}) as root:
        with a.span("preprocess") as pre:
            pre.set_attribute("rows", 1)
        predict(np.ones(3))
        with a.span("postprocess"):
            pass
    assert a.flush(10)
    a.close()
    spans = _by_name(sink.spans())
    assert set(spans) == {"request", "preprocess", "inference", "postprocess"}
    tid = root.context.trace_id_hex
    assert {s["trace_ids"] for s in spans.values()} == {tid}
    assert spans["request"]["parent_span_ids"] is None
    for name in ("preprocess", "inference", "postprocess"):
        assert spans[name]["parent_span_ids"] == spans["request"]["span_ids"]
    assert spans["request"]["kinds"] == 2  # server
    assert spans["preprocess"]["kinds"] == 1
    assert spans["request"]["attributes"] == {"route": "/predict"}
    assert spans["preprocess"]["attributes"] == {"rows": "1"}
    # durations nest: the root lasts at least as long as its children
    total = sum(spans[n]["duration_nano"] for n in ("preprocess", "inference", "postprocess"))
    assert spans["request"]["duration_nano"] >= total
    starts = [spans[n]["start_unix_nano"] for n in ("preprocess", "inference", "postprocess")]
    assert starts == sorted(starts)
    # the record carries the inference span's ids: records and traces join
    (rec,) = sink.records()
    assert rec == {"trace_id": tid, "span_id": spans["inference"]["span_ids"]}
    s = a.stats()
    assert s["spans"] == 4
    assert s["spans_dropped"] == 0
    assert s["logged"] == s["shipped"] == 1
    assert settled(s) == s["logged"]


def test_a_record_outside_every_span_has_no_trace():
    a, sink = _agent()
    a.log([1.0, 2.0], 0.5)
    assert a.flush(10)
    a.close()
    assert sink.records() == [{"trace_id": None, "span_id": None}]


def test_an_exception_marks_its_span_and_passes_through_unchanged():
    a, sink = _agent()

    class Boom(Exception):
        pass

    err = Boom("bad input")
    with pytest.raises(Boom) as caught, a.span("request"), a.span("preprocess"):
        raise err
    assert caught.value is err
    assert a.flush(10)
    a.close()
    spans = _by_name(sink.spans())
    assert spans["preprocess"]["status"] == 2
    assert spans["preprocess"]["error_types"].endswith("Boom")
    assert spans["preprocess"]["error_messages"] == "bad input"
    assert spans["request"]["status"] == 2  # it left the request too


def test_decorators_sync_and_async():
    a, sink = _agent()

    @a.span("post", attributes={"stage": "2"})
    def post(x):
        return x + 1

    @a.span("fetch", kind="client")
    async def fetch(x):
        await asyncio.sleep(0)
        return x * 2

    assert post(1) == 2
    assert post.__name__ == "post"
    assert asyncio.run(fetch(3)) == 6
    with pytest.raises(ZeroDivisionError):
        a.span("div")(lambda: 1 / 0)()
    assert a.flush(10)
    a.close()
    spans = sink.spans()
    assert [s["names"] for s in spans] == ["post", "fetch", "div"]
    assert spans[0]["attributes"] == {"stage": "2"}
    assert spans[1]["kinds"] == 3
    assert spans[2]["status"] == 2
    assert len({s["trace_ids"] for s in spans}) == 3  # each call a trace of its own


def test_threads_keep_their_own_current_span():
    a, sink = _agent()
    barrier = threading.Barrier(4)
    seen: dict[int, tuple[str, str]] = {}

    def work(i: int) -> None:
        with a.span(f"root{i}") as root:
            barrier.wait(5)  # all four roots open at once
            with a.span(f"child{i}") as child:
                seen[i] = (root.context.span_id_hex, child.context.trace_id_hex)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.flush(10)
    a.close()
    spans = _by_name(sink.spans())
    for i in range(4):
        root_id, trace = seen[i]
        assert spans[f"child{i}"]["parent_span_ids"] == root_id
        assert spans[f"child{i}"]["trace_ids"] == trace == spans[f"root{i}"]["trace_ids"]
    assert len({spans[f"root{i}"]["trace_ids"] for i in range(4)}) == 4


def test_a_copied_context_carries_the_trace_into_a_thread():
    a, sink = _agent()
    with a.span("request") as root:
        ctx = contextvars.copy_context()
        out: list[str] = []

        def work() -> None:
            with a.span("worker") as w:
                out.append(w.context.trace_id_hex)

        t = threading.Thread(target=ctx.run, args=(work,))
        t.start()
        t.join()
    assert a.flush(10)
    a.close()
    assert out == [root.context.trace_id_hex]
    spans = _by_name(sink.spans())
    assert spans["worker"]["parent_span_ids"] == spans["request"]["span_ids"]


def test_asyncio_tasks_keep_their_own_spans():
    a, sink = _agent()

    async def handle(i: int) -> str:
        with a.span(f"req{i}") as r:
            await asyncio.sleep(0.01 * (3 - i))  # interleaved
            with a.span(f"step{i}"):
                await asyncio.sleep(0)
            return r.context.trace_id_hex

    async def main() -> list[str]:
        return list(await asyncio.gather(*(handle(i) for i in range(3))))

    traces = asyncio.run(main())
    assert a.flush(10)
    a.close()
    spans = _by_name(sink.spans())
    assert len(set(traces)) == 3
    for i in range(3):
        assert spans[f"step{i}"]["trace_ids"] == traces[i]
        assert spans[f"step{i}"]["parent_span_ids"] == spans[f"req{i}"]["span_ids"]
        assert spans[f"req{i}"]["parent_span_ids"] is None
    assert modeltap.current_span_context() is None


def test_tasks_created_inside_a_span_are_its_children():
    a, sink = _agent()

    async def child(i: int) -> None:
        with a.span(f"c{i}"):
            await asyncio.sleep(0)

    async def main() -> None:
        with a.span("parent"):
            await asyncio.gather(child(0), child(1))

    asyncio.run(main())
    assert a.flush(10)
    a.close()
    spans = _by_name(sink.spans())
    for i in range(2):
        assert spans[f"c{i}"]["parent_span_ids"] == spans["parent"]["span_ids"]


def test_head_sampling_drops_whole_traces_but_keeps_errors():
    a, sink = _agent(trace_sample_rate=0.0)
    for _ in range(20):
        with a.span("ok"), a.span("inner"):
            pass
    failing = a.span("failing")

    def failing_request() -> None:
        with failing:
            with a.span("early"):
                pass  # ended before the error: kept all the same
            with a.span("broken"):
                raise ValueError("x")

    with pytest.raises(ValueError, match="x"):
        failing_request()
    assert not failing.context.sampled
    assert a.flush(10)
    a.close()
    spans = _by_name(sink.spans())
    assert set(spans) == {"failing", "early", "broken"}
    assert spans["broken"]["status"] == 2
    assert {s["trace_ids"] for s in spans.values()} == {failing.context.trace_id_hex}
    assert spans["early"]["parent_span_ids"] == spans["failing"]["span_ids"]


def test_head_sampling_rate_is_honoured():
    a, sink = _agent(trace_sample_rate=0.25)
    for _ in range(2_000):
        with a.span("r"), a.span("c"):
            pass
    assert a.flush(10)
    a.close()
    spans = sink.spans()
    traces = {s["trace_ids"] for s in spans}
    assert 400 < len(traces) < 600
    assert len(spans) == 2 * len(traces)  # whole traces, never halves


def test_an_incoming_sampled_flag_decides():
    a, sink = _agent(trace_sample_rate=0.0)
    yes = modeltap.Agent.extract({"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"})
    no_ = modeltap.Agent.extract({"traceparent": f"00-{'c' * 32}-{'d' * 16}-00"})
    with a.span("server", kind="server", parent=yes), a.span("child"):
        pass
    a2, sink2 = _agent(trace_sample_rate=1.0)
    with a2.span("server", kind="server", parent=no_), a2.span("child"):
        pass
    for ag in (a, a2):
        assert ag.flush(10)
        ag.close()
    spans = _by_name(sink.spans())
    assert set(spans) == {"server", "child"}
    assert spans["server"]["trace_ids"] == "a" * 32
    assert spans["server"]["parent_span_ids"] == "b" * 16
    assert sink2.spans() == []


def test_capture_of_inputs_and_outputs_is_capped_and_redacted():
    def redact(stage, which, value):
        if isinstance(value, dict):
            return {k: ("***" if k == "password" else v) for k, v in value.items()}
        return value

    a, sink = _agent(capture_bytes=200, redact=redact)
    with a.span("preprocess") as s:
        s.set_input({"user": "ann", "password": "hunter2"})
        s.set_output(np.arange(10_000, dtype=np.float64))
    with a.span("postprocess") as s:
        s.set_output("x" * 10_000)
    assert a.flush(10)
    a.close()
    spans = _by_name(sink.spans())
    pre = spans["preprocess"]["attributes"]
    assert pre["modeltap.input"] == '{"user":"ann","password":"***"}'
    out = pre["modeltap.output"]
    assert len(out.encode()) <= 200
    assert out.startswith('{"shape":[10000],"dtype":"float64"')
    post = spans["postprocess"]["attributes"]["modeltap.output"]
    assert len(post.encode()) <= 200
    assert post.endswith("[10000 bytes]")


def test_capture_off_and_a_failing_redact_never_reach_the_caller():
    a, sink = _agent(capture_bytes=0)
    with a.span("s") as s:
        s.set_input({"a": 1})
    assert a.flush(10)
    a.close()
    assert sink.spans()[0]["attributes"] is None

    def broken(stage, which, value):
        raise RuntimeError("redactor bug")

    b, sink = _agent(redact=broken)
    with b.span("s") as s:
        s.set_input({"a": 1})
    assert b.flush(10)
    b.close()
    assert sink.spans()[0]["attributes"] is None
    assert b.stats()["errors"] == 1


def test_spans_before_the_first_record_are_kept():
    a, sink = _agent()
    with a.span("warmup"):
        pass
    a.log([1.0], 1.0)
    with a.span("after"):
        pass
    assert a.flush(10)
    a.close()
    assert [s["names"] for s in sink.spans()] == ["warmup", "after"]
    s = a.stats()
    assert s["spans"] == 2
    assert s["logged"] == 1
    assert settled(s) == 1


def test_a_full_ring_drops_spans_counted_and_records_stay_right():
    gate = threading.Event()
    sink = Sink()

    def stuck(b: bytes) -> None:
        gate.wait(10)
        sink(b)

    a = modeltap.Agent(
        "m", sink=stuck, metrics_interval=None, buffer_size=8, max_pending_records=8, batch_size=4
    )
    try:
        a.log([1.0], 1.0)
        for _ in range(500):
            with a.span("s"):
                a.log([1.0], 1.0)
        s = a.stats()
        assert s["spans_dropped"] > 0
        assert s["spans"] + s["spans_dropped"] == 500
        assert settled(s) == s["logged"] == 501
    finally:
        gate.set()
        a.close()


def test_an_oversized_tracestate_is_cut_by_whole_members_and_stays_a_valid_header():
    import http.client

    from modeltap import tracing

    members = [f"k{i}={'v' * 200}" for i in range(20)] + [f"s{i}=x" for i in range(12)]
    state = ",".join(members)  # 32 members, 4 KB: valid, but more than we propagate
    assert tracing.parse_tracestate(state) == state
    ctx = modeltap.Agent.extract(
        {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": state}
    )
    a, _ = _agent()
    try:
        with a.span("client", parent=ctx):
            h: dict[str, str] = {}
            a.inject(h)
    finally:
        a.close()
    out = h["tracestate"]
    assert len(out) <= 512
    assert tracing.parse_tracestate(out) == out  # still a valid list
    kept = out.split(",")
    assert all(m in members for m in kept)  # whole members only
    assert kept == [f"s{i}=x" for i in range(12)]  # the long ones went first
    # and a real HTTP client accepts it
    conn = http.client.HTTPConnection("127.0.0.1", 9)
    conn.putrequest("GET", "/")
    conn.putheader("tracestate", out)
    conn.close()
    assert modeltap.SpanContext(1, 1, trace_state="k=\u2026").trace_state is None


@pytest.mark.parametrize("otel", [False, True], ids=["alone", "opentelemetry loaded"])
def test_a_span_ended_out_of_order_or_elsewhere_does_not_stay_current(otel):
    if otel:
        import opentelemetry.trace  # noqa: F401  (the bridge publishes our spans)
    a, _sink = _agent()
    try:
        outer = a.span("outer").start()
        inner = a.span("inner").start()
        outer.end()  # out of order
        inner.end()
        with a.span("next") as nxt:
            pass
        assert nxt.context.trace_id != outer.context.trace_id  # a trace of its own
        assert modeltap.current_span_context() is None

        started = a.span("cross").start()
        t = threading.Thread(target=started.end)
        t.start()
        t.join()
        with a.span("after") as after:
            pass
        assert after.context.trace_id != started.context.trace_id
    finally:
        a.close()


def test_misuse_is_counted_not_raised_outside_strict():
    a, _ = _agent()
    try:
        s = a.span("once")
        with s:
            pass
        with s:  # reused: counted, the block still runs
            pass
        a.span("never").end()
        a.span("k", kind="weird")
        with a.span(12345) as odd:  # a name that is no str
            odd.set_status(False, 404)
        assert a.stats()["errors"] == 3
    finally:
        a.close()
    strict, _ = _agent(strict=True)
    try:
        with pytest.raises(ValueError, match="kind must be one of"):
            strict.span("k", kind="weird")
        s = strict.span("once")
        with s:
            pass
        with pytest.raises(ValueError, match="already started"), s:
            pass
    finally:
        strict.close()


def test_spans_before_the_first_record_stay_within_the_side_budget():
    a, sink = _agent(buffer_bytes=1 << 20)  # 128 KiB of side room
    big = {f"a{i}": "x" * 16_000 for i in range(60)}  # ~1 MB of attributes each
    try:
        for _ in range(50):
            with a.span("heavy", attributes=big):
                pass
        s = a.stats()
        assert s["spans_dropped"] == 50  # none fits; none is kept
        assert s["side_bytes"] == 0
        for _ in range(3_000):  # many small ones: drained as they come
            with a.span("light"):
                pass
        assert a.flush(10)
        s = a.stats()
        assert s["spans"] == 3_000
        assert s["spans_dropped"] == 50
    finally:
        a.close()
    assert sum(1 for x in sink.spans() if x["names"] == "light") == 3_000


def test_spans_in_a_discarded_batch_are_counted_lost():
    def refuse(_b: bytes) -> None:
        raise RuntimeError("sink down")

    a = modeltap.Agent("m", sink=refuse, metrics_interval=None)
    try:
        a.log([1.0], 1.0)
        for _ in range(10):
            with a.span("s"):
                pass
        a.flush(10)
        s = a.stats()
        assert s["discarded"] == 1
        assert s["spans"] == 10
        assert s["spans_lost"] == 10
    finally:
        a.close()


def test_absurd_capture_sizes_and_names_are_refused_or_kept_safely():
    for bad in (-1, 10**20):
        with pytest.raises(ValueError, match="capture_bytes"):
            modeltap.Agent("m", sink=lambda b: None, metrics_interval=None, capture_bytes=bad)
    a, sink = _agent()
    with a.span("bad\ud800name"):  # a lone surrogate: kept, not raised
        pass
    assert a.flush(10)
    a.close()
    (sp,) = sink.spans()
    assert sp["names"].startswith("bad")
