"""Spans of traces not sampled are held within a budget (a sixteenth of
``buffer_bytes``, at most 1,024 traces), and what is let go is counted."""

from __future__ import annotations

import contextvars

import psutil
import pytest

import modeltap


def _agent(got: list[bytes], **kw) -> modeltap.Agent:
    return modeltap.Agent(
        "hold",
        "1",
        sink=got.append,
        metrics_interval=None,
        trace_sample_rate=0.0,
        **kw,
    )


def _heavy_children(a: modeltap.Agent, n: int, value_bytes: int = 16_384) -> None:
    value = "v" * value_bytes
    for _ in range(n):
        with a.span("step") as s:
            for k in range(64):
                s.set_attribute(f"a{k}", value)


def _child(a: modeltap.Agent) -> None:
    with a.span("child"):
        pass


@pytest.mark.parametrize("value_bytes", [16_384, 1_024])
def test_held_spans_of_open_requests_stay_in_their_budget(value_bytes):
    """16 KiB values: a span alone passes the budget (none held); 1 KiB: a
    few of the newest are held."""
    got: list[bytes] = []
    a = _agent(got, buffer_bytes=16 << 20)
    rss0 = psutil.Process().memory_info().rss
    # Four requests open at once (each in a context of its own, as threads
    # or asyncio tasks have), each with 256 heavy stages.
    roots = [(a.span(f"request-{i}"), contextvars.Context()) for i in range(4)]
    for r, ctx in roots:
        ctx.run(r.__enter__)
        ctx.run(_heavy_children, a, 256, value_bytes)
    s = a.stats()
    grown = psutil.Process().memory_info().rss - rss0
    assert s["held_span_bytes"] <= (16 << 20) // 16, s
    assert (s["held_span_bytes"] > 0) == (value_bytes == 1_024), s
    assert s["spans_released"] > 0, s
    assert grown < 64 << 20, grown  # was about 1 GiB
    for r, ctx in roots:
        ctx.run(r.__exit__, None, None, None)
    s = a.stats()
    assert s["held_span_bytes"] == 0, s
    assert s["held_traces"] == 0, s
    # Every child span is counted once: let go early or sampled out.
    assert s["spans_released"] + s["spans_sampled_out"] == 4 * 256 + 4, s
    a.close()


def test_an_error_trace_keeps_what_its_hold_still_had():
    got: list[bytes] = []
    a = _agent(got, buffer_bytes=16 << 20)
    with a.span("request"):
        _heavy_children(a, 300, 256)  # 16 KiB a span: a 1 MiB hold keeps some
        try:
            with a.span("inference"):
                raise ValueError("boom")
        except ValueError:
            pass
    a.flush(10)
    s = a.stats()
    kept = s["spans"]
    assert kept > 2, s  # the failed stage, its root and the newest held ones
    assert kept + s["spans_released"] == 300 + 2, s
    assert s["held_span_bytes"] == 0, s
    a.close()


def test_traces_held_at_once_are_bounded():
    got: list[bytes] = []
    a = _agent(got)
    roots = [(a.span(f"r{i}"), contextvars.Context()) for i in range(1_100)]
    for r, ctx in roots:  # 1,100 requests open at once, one stage ended in each
        ctx.run(r.__enter__)
        ctx.run(_child, a)
    s = a.stats()
    assert s["held_traces"] == 1_024, s
    assert s["spans_released"] == 1_100 - 1_024, s
    for r, ctx in roots:
        ctx.run(r.__exit__, None, None, None)
    s = a.stats()
    assert s["held_traces"] == 0, s
    assert s["spans_released"] + s["spans_sampled_out"] == 2 * 1_100, s
    a.close()
