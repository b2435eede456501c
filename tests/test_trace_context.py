"""W3C Trace Context Level 1, both directions, table-driven. The cases
follow the specification's sections (traceparent: version, trace-id,
parent-id, trace-flags, future versions; tracestate: list syntax, keys,
values, limits; header handling: case, duplicates, combination) and the
categories of its test suite. An invalid header never raises: it starts a
new trace (traceparent) or is dropped (tracestate)."""

from __future__ import annotations

import pytest

import modeltap
from modeltap import tracing

T = "4bf92f3577b34da6a3ce929d0e0e4736"
P = "00f067aa0ba902b7"
VALID = f"00-{T}-{P}-01"

TRACEPARENT = [
    # (case, header value, expected (trace, parent, sampled) or None)
    ("version 00, sampled", VALID, (T, P, True)),
    ("version 00, not sampled", f"00-{T}-{P}-00", (T, P, False)),
    ("other flag bits ignored, sampled kept", f"00-{T}-{P}-09", (T, P, True)),
    ("other flag bits ignored, not sampled", f"00-{T}-{P}-fe", (T, P, False)),
    ("surrounding spaces and tabs (OWS)", f" \t{VALID} \t", (T, P, True)),
    ("version ff is invalid", f"ff-{T}-{P}-01", None),
    ("version not hex", f"0g-{T}-{P}-01", None),
    ("uppercase version", f"0A-{T}-{P}-01", None),
    ("version 00 with more data", f"{VALID}-extra", None),
    ("version 00 with one char more", f"{VALID}0", None),
    ("future version, exact length", f"cc-{T}-{P}-01", (T, P, True)),
    ("future version with more fields", f"cc-{T}-{P}-01-what-the-future-holds", (T, P, True)),
    ("future version, more data not after a dash", f"cc-{T}-{P}-01what", None),
    ("future version, invalid trace id still invalid", f"cc-{'0' * 32}-{P}-01", None),
    ("all-zero trace id", f"00-{'0' * 32}-{P}-01", None),
    ("all-zero parent id", f"00-{T}-{'0' * 16}-01", None),
    ("uppercase trace id", f"00-{T.upper()}-{P}-01", None),
    ("uppercase parent id", f"00-{T}-{P.upper()}-01", None),
    ("uppercase flags", f"00-{T}-{P}-0A", None),
    ("trace id too short", f"00-{T[:-1]}-{P}-01", None),
    ("trace id too long", f"00-{T}0-{P}-01", None),
    ("parent id too short", f"00-{T}-{P[:-1]}-01", None),
    ("parent id too long", f"00-{T}-{P}0-01", None),
    ("flags one digit", f"00-{T}-{P}-1", None),
    ("flags not hex", f"00-{T}-{P}-0x", None),
    ("trace id not hex", f"00-{T[:-1]}z-{P}-01", None),
    ("wrong delimiter", f"00_{T}_{P}_01", None),
    ("missing field", f"00-{T}-01", None),
    ("empty", "", None),
    ("garbage", "not a traceparent", None),
    ("non-ASCII", f"00-{T[:-1]}é-{P}-01", None),
]


@pytest.mark.parametrize(("case", "value", "want"), TRACEPARENT, ids=[c[0] for c in TRACEPARENT])
def test_traceparent_parsing(case, value, want):
    got = tracing.parse_traceparent(value)
    if want is None:
        assert got is None, case
        ctx = modeltap.Agent.extract({"traceparent": value})
        assert ctx is None
    else:
        t, p, sampled = want
        assert got == (int(t, 16), int(p, 16), sampled), case
        ctx = modeltap.Agent.extract({"traceparent": value})
        assert ctx is not None
        assert (ctx.trace_id_hex, ctx.span_id_hex, ctx.sampled) == want
        assert ctx.is_remote


TRACESTATE = [
    # (case, header value, expected normalised value or None)
    ("one member", "congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
    ("two members", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", None),
    ("spaces around members", " rojo=1 ,\tcongo=2\t", "rojo=1,congo=2"),
    ("empty members are skipped", "rojo=1,,  ,congo=2,", "rojo=1,congo=2"),
    ("multi-tenant key", "fw529a3039@dt=abc", "fw529a3039@dt=abc"),
    ("key with allowed punctuation", "a_b-c*d/e=1", "a_b-c*d/e=1"),
    ("value with spaces inside", "k=a b", "k=a b"),
    ("value with a trailing space (trimmed as OWS)", "k=ab ", "k=ab"),
    ("key starting with a digit", "1abc=x", None),
    ("uppercase key", "Rojo=1", None),
    ("key too long (257)", "k" * 257 + "=1", None),
    ("key of 256", "k" * 256 + "=1", "k" * 256 + "=1"),
    ("tenant too long", "t" * 242 + "@s=1", None),
    ("system too long", "t@" + "s" * 15 + "=1", None),
    ("value too long (257)", "k=" + "v" * 257, None),
    ("value of 256", "k=" + "v" * 256, "k=" + "v" * 256),
    ("value with =", "k=a=b", None),
    ("value with a comma cannot occur", "k=a,b", None),
    ("empty value", "k=", None),
    ("no equals sign", "k", None),
    ("non-printable value", "k=a\x01b", None),
    ("duplicate keys", "k=1,k=2", None),
    ("33 members", ",".join(f"k{i}=v" for i in range(33)), None),
    ("32 members", ",".join(f"k{i}=v" for i in range(32)), None),
    ("only empty members", " , ,", None),
]


@pytest.mark.parametrize(("case", "value", "want"), TRACESTATE, ids=[c[0] for c in TRACESTATE])
def test_tracestate_parsing(case, value, want):
    got = tracing.parse_tracestate(value)
    if case in ("two members", "32 members"):
        assert got == value, case
    else:
        assert got == want, case


def test_header_names_are_case_insensitive_and_tracestate_lists_combine():
    for name in ("traceparent", "TraceParent", "TRACEPARENT"):
        ctx = modeltap.Agent.extract({name: VALID, "TraceState": "rojo=1"})
        assert ctx is not None
        assert ctx.trace_id_hex == T
        assert ctx.trace_state == "rojo=1"
    # several tracestate headers are one list, in order
    ctx = modeltap.Agent.extract(
        [("traceparent", VALID), ("tracestate", "rojo=1"), ("tracestate", "congo=2")]
    )
    assert ctx is not None
    assert ctx.trace_state == "rojo=1,congo=2"
    # bytes headers (ASGI scope)
    ctx = modeltap.Agent.extract([(b"traceparent", VALID.encode())])
    assert ctx is not None
    assert ctx.span_id_hex == P


def test_duplicate_traceparent_headers_start_a_new_trace():
    assert modeltap.Agent.extract([("traceparent", VALID), ("traceparent", VALID)]) is None


def test_an_invalid_tracestate_is_dropped_not_the_trace():
    ctx = modeltap.Agent.extract({"traceparent": VALID, "tracestate": "k=1,k=2"})
    assert ctx is not None
    assert ctx.trace_id_hex == T
    assert ctx.trace_state is None


def test_tracestate_without_traceparent_is_ignored():
    assert modeltap.Agent.extract({"tracestate": "rojo=1"}) is None


@pytest.mark.parametrize(
    "headers",
    [None, 5, "traceparent", [("traceparent",)], {"traceparent": None}, {"traceparent": 7}],
)
def test_hostile_header_containers_never_raise(headers):
    assert modeltap.Agent.extract(headers) is None


def test_email_message_headers_work():
    from email.message import Message

    m = Message()
    m["Traceparent"] = VALID
    m["tracestate"] = "a=1"
    m["tracestate"] = "b=2"
    ctx = modeltap.Agent.extract(m)
    assert ctx is not None
    assert ctx.trace_state == "a=1,b=2"


def test_inject_writes_the_current_span_and_carries_tracestate():
    a = modeltap.Agent("m", metrics_interval=None)
    try:
        parent = modeltap.Agent.extract({"traceparent": VALID, "tracestate": "congo=2,rojo=1"})
        assert parent is not None
        with a.span("client", kind="client", parent=parent) as span:
            out = {"TraceParent": "stale", "TRACESTATE": "stale"}
            assert a.inject(out)
            ctx = span.context
        assert set(out) == {"traceparent", "tracestate"}
        assert out["traceparent"] == f"00-{T}-{ctx.span_id_hex}-01"
        assert out["tracestate"] == "congo=2,rojo=1"
        # what we write, we read back
        back = modeltap.Agent.extract(out)
        assert back is not None
        assert (back.trace_id, back.span_id, back.sampled) == (ctx.trace_id, ctx.span_id, True)
        # outside every span there is nothing to inject
        empty: dict[str, str] = {}
        assert not a.inject(empty)
        assert empty == {}
    finally:
        a.close()


def test_not_sampled_flag_is_propagated():
    a = modeltap.Agent("m", metrics_interval=None)
    try:
        parent = modeltap.Agent.extract({"traceparent": f"00-{T}-{P}-00"})
        with a.span("s", parent=parent):
            h: dict[str, str] = {}
            a.inject(h)
        assert h["traceparent"].endswith("-00")
        assert h["traceparent"].startswith(f"00-{T}-")
    finally:
        a.close()


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [(0, 1), (1, 0), ("z" * 32, P), (T, "0" * 16), (2**128, 1), (1, 2**64), (T, T)],
)
def test_span_context_refuses_invalid_ids(trace_id, span_id):
    with pytest.raises((ValueError, TypeError, OverflowError)):
        modeltap.SpanContext(trace_id, span_id)
