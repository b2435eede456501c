"""Traces end to end: across an HTTP hop (a real server on loopback), into
the collector's store and `modeltap trace`, out to a real OTLP/gRPC
receiver, and in from the OpenTelemetry SDK's own OTLP exporter."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import modeltap
from modeltap.collector import BackgroundCollector


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modeltap", *args], capture_output=True, text=True, timeout=60
    )


def test_a_trace_crosses_an_http_hop_and_shows_as_one_tree(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        gateway = modeltap.Agent("gateway", collector=col.addr, metrics_interval=None)
        model = modeltap.Agent("ranker", version="7", collector=col.addr, metrics_interval=None)

        @model.monitor
        def predict(x):
            return float(sum(x))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                ctx = model.extract(self.headers)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with model.span("handle", kind="server", parent=ctx):
                    with model.span("preprocess") as pre:
                        x = json.loads(body)
                        pre.set_input(x)
                    y = predict(x)
                out = json.dumps({"y": y}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            with (
                gateway.span("route", kind="server") as root,
                gateway.span("call ranker", kind="client"),
            ):
                headers = {"Content-Type": "application/json"}
                gateway.inject(headers)
                req = urllib.request.Request(
                    f"http://127.0.0.1:{server.server_port}/",
                    data=b"[1.0, 2.0, 3.5]",
                    headers=headers,
                )
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert json.loads(r.read()) == {"y": 6.5}
        finally:
            server.shutdown()
            server.server_close()
        tid = root.context.trace_id_hex
        assert gateway.flush(10)
        assert model.flush(10)
        gateway.close()
        model.close()
        with modeltap.Client(col.addr) as c:
            got = c.trace(tid)
        spans = {s["name"]: s for s in got["spans"]}
        assert set(spans) == {"route", "call ranker", "handle", "preprocess", "inference"}
        assert spans["route"]["parent_span_id"] is None
        assert spans["call ranker"]["parent_span_id"] == spans["route"]["span_id"]
        # the server's span continues the client's: the id in the header
        assert spans["handle"]["parent_span_id"] == spans["call ranker"]["span_id"]
        assert spans["inference"]["parent_span_id"] == spans["handle"]["span_id"]
        assert spans["handle"]["service"] == "ranker@7"
        assert spans["route"]["service"] == "gateway"
        assert spans["preprocess"]["attributes"]["modeltap.input"] == "[1.0,2.0,3.5]"
        (rec,) = got["records"]
        assert rec["span_id"] == spans["inference"]["span_id"]
        assert rec["prediction"] == 6.5
        assert spans["call ranker"]["duration_ns"] >= spans["handle"]["duration_ns"]

        r = _cli("trace", tid, "--collector", col.addr)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        order = [n for n in ("route", "call ranker", "handle", "preprocess", "inference")]
        at = [next(i for i, ln in enumerate(lines) if f" {n} " in ln) for n in order]
        assert at == sorted(at)
        # nesting shows as indentation
        indent = [len(lines[i]) - len(lines[i].lstrip(" │├└─")) for i in at]
        assert indent[0] < indent[1] < indent[2] < indent[3] == indent[4]
        assert "6.5" in r.stdout  # the record of the trace

        r = _cli("traces", "--model", "ranker", "--collector", col.addr, "--json")
        assert r.returncode == 0, r.stderr
        (row,) = json.loads(r.stdout)
        assert row["trace_id"] == tid
        assert row["root"] == "route"
        assert set(row["stages"]) == set(spans)

        bad = _cli("trace", "not-an-id", "--collector", col.addr)
        assert bad.returncode == 1
        assert "32 hex digits" in bad.stderr
        assert "Traceback" not in bad.stderr


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver; fails the first ``fail`` calls."""

    def __init__(self, fail: int = 0) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.fail = fail
        self.calls = 0

    def Export(self, request, context):
        self.calls += 1
        if self.calls <= self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict[str, str], object]]:
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                res = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((res, sp) for sp in ss.spans)
        return out


@pytest.fixture
def receiver():
    rec = Receiver(fail=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield rec, f"127.0.0.1:{port}"
    server.stop(0)


def test_spans_are_forwarded_to_an_otlp_receiver(tmp_path, receiver):
    rec, addr = receiver
    with BackgroundCollector(tmp_path / "s.duckdb", otlp_endpoint=addr) as col:
        a = modeltap.Agent("ranker", version="3", collector=col.addr, metrics_interval=None)
        t0 = time.time_ns()
        root = a.span("request", kind="server")

        def request() -> None:
            with root:
                with a.span("preprocess"):
                    time.sleep(0.005)
                with a.span("postprocess"):
                    raise KeyError("nope")

        with pytest.raises(KeyError):
            request()
        t1 = time.time_ns()
        assert a.flush(10)
        a.close()
        fwd = col.server.forwarder
        assert fwd.flush(20)
        stats = fwd.stats()
    assert stats["sent"] == 3
    assert stats["dropped"] == 0
    assert stats["retries"] >= 2  # the receiver refused the first calls
    got = rec.spans()
    assert len(got) == 3
    by = {sp.name: (res, sp) for res, sp in got}
    res, root_sp = by["request"]
    assert res["service.name"] == "ranker"
    assert res["service.version"] == "3"
    assert res["host.name"]
    assert root_sp.trace_id.hex() == root.context.trace_id_hex
    assert root_sp.span_id.hex() == root.context.span_id_hex
    assert root_sp.parent_span_id == b""
    assert root_sp.kind == 2  # SERVER
    for name in ("preprocess", "postprocess"):
        sp = by[name][1]
        assert sp.trace_id == root_sp.trace_id
        assert sp.parent_span_id == root_sp.span_id
        assert t0 <= sp.start_time_unix_nano <= sp.end_time_unix_nano <= t1
    pre = by["preprocess"][1]
    assert pre.end_time_unix_nano - pre.start_time_unix_nano >= 5_000_000
    post = by["postprocess"][1]
    assert post.status.code == 2  # ERROR
    assert post.status.message == "'nope'"
    ev = {kv.key: kv.value.string_value for kv in post.events[0].attributes}
    assert ev["exception.type"] == "KeyError"
    assert pre.status.code == 0


def test_an_opentelemetry_sdk_service_joins_the_same_trace(tmp_path):
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        provider = TracerProvider(resource=Resource.create({"service.name": "api-gateway"}))
        exporter = OTLPSpanExporter(endpoint=col.addr, insecure=True)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        a = modeltap.Agent("ranker", collector=col.addr, metrics_interval=None)
        try:
            # instrumentation inside our stage sees our span as parent
            with (
                tracer.start_as_current_span("gateway") as gw,
                a.span("model") as ours,
                tracer.start_as_current_span("feature-store"),
                a.span("decode"),
            ):
                pass
        finally:
            assert a.flush(10)
            a.close()
            provider.shutdown()
        tid = f"{gw.get_span_context().trace_id:032x}"
        assert ours.context.trace_id_hex == tid
        with modeltap.Client(col.addr) as c:
            got = c.trace(tid)
        spans = {s["name"]: s for s in got["spans"]}
        assert set(spans) == {"gateway", "model", "feature-store", "decode"}
        assert spans["gateway"]["source"] == "otlp"
        assert spans["gateway"]["service"] == "api-gateway"
        assert spans["model"]["parent_span_id"] == spans["gateway"]["span_id"]
        assert spans["feature-store"]["parent_span_id"] == spans["model"]["span_id"]
        assert spans["decode"]["parent_span_id"] == spans["feature-store"]["span_id"]
        r = _cli("trace", tid, "--collector", col.addr)
        assert r.returncode == 0, r.stderr
        assert "api-gateway" in r.stdout
        assert "feature-store" in r.stdout
    # the OpenTelemetry context is restored after our spans
    assert not trace.get_current_span().get_span_context().is_valid


def test_otlp_in_refuses_garbage_and_counts_bad_spans(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        ch = grpc.insecure_channel(col.addr)
        export = ch.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda b: b,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as e:
            export(b"\xff\xff\xff garbage", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        req = trace_service_pb2.ExportTraceServiceRequest()
        ss = req.resource_spans.add().scope_spans.add()
        good = ss.spans.add()
        good.trace_id, good.span_id, good.name = b"\x01" * 16, b"\x02" * 8, "ok"
        good.start_time_unix_nano, good.end_time_unix_nano = 10, 20
        for tid, sid in (
            (b"\x00" * 16, b"\x02" * 8),
            (b"\x01" * 3, b"\x02" * 8),
            (b"\x01" * 16, b""),
        ):
            bad = ss.spans.add()
            bad.trace_id, bad.span_id, bad.name = tid, sid, "bad"
        resp = export(req.SerializeToString(), timeout=10)
        assert resp.partial_success.rejected_spans == 3
        # a small request that would expand past 8x its size (one long
        # service name repeated on every span) is refused whole
        bomb = trace_service_pb2.ExportTraceServiceRequest()
        rs = bomb.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", "s" * 16_000
        spans = rs.scope_spans.add()
        for i in range(2_000):
            sp = spans.spans.add()
            sp.trace_id, sp.span_id = (i + 1).to_bytes(16, "big"), (i + 1).to_bytes(8, "big")
        with pytest.raises(grpc.RpcError) as e:
            export(bomb.SerializeToString(), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expands" in e.value.details()
        assert "16 bytes" in resp.partial_success.error_message
        ch.close()
        with modeltap.Client(col.addr) as c:
            got = c.trace("01" * 16)
        assert [s["name"] for s in got["spans"]] == ["ok"]
        assert got["spans"][0]["service"] == "unknown_service"
        assert got["spans"][0]["duration_ns"] == 10


def test_stage_latency_merges_across_replicas_and_time(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        replicas = [
            modeltap.Agent("ranker", version="1", collector=col.addr, metrics_interval=None)
            for _ in range(2)
        ]
        waits = {0: 0.001, 1: 0.004}  # replica 1 is slower at inference
        for i, a in enumerate(replicas):
            for _ in range(60):
                with a.span("request", kind="server"):
                    with a.span("preprocess"):
                        pass
                    with a.span("inference"):
                        time.sleep(waits[i])
            with pytest.raises(RuntimeError), a.span("request"):
                raise RuntimeError("x")
        for a in replicas:
            assert a.flush(10)
        local = replicas[1].stage_latency()
        for a in replicas:
            a.close()
        with modeltap.Client(col.addr) as c:
            rows = {(r["stage"], r["end_to_end"]): r for r in c.stage_latency("ranker")}
    inf = rows[("inference", False)]
    assert inf["spans"] == 120
    # half the spans take >= 1 ms, half >= 4 ms: p50 from the 1 ms half,
    # p99 from the 4 ms half (buckets are 2^(1/4) wide)
    assert 0.0009 < inf["p50_s"] < 0.004
    assert inf["p99_s"] >= 0.004 / 1.2
    req = rows[("request", True)]
    assert req["spans"] == 122
    assert req["errors"] == 2
    assert rows[("request", False)]["spans"] == 122
    assert rows[("preprocess", False)]["p99_s"] < inf["p50_s"]
    # one replica's own view
    mine = {(r["stage"], r["end_to_end"]): r for r in local}
    assert mine[("inference", False)]["spans"] == 60
    assert mine[("inference", False)]["p50_s"] >= 0.004 / 1.2
    # the CLI reads the same from the store
    r = _cli("latency", "--model", "ranker", "--store", str(tmp_path / "s.duckdb"), "--json")
    assert r.returncode == 0, r.stderr
    assert {(x["stage"], x["end_to_end"]): x["spans"] for x in json.loads(r.stdout)} == {
        k: v["spans"] for k, v in rows.items()
    }


def test_forwarding_to_a_hanging_endpoint_counts_every_span_and_closes(tmp_path):
    from modeltap.collector.otlp import OtlpForwarder
    from modeltap.collector.store import span_rows_table

    class Hang(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            time.sleep(3)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Hang(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        n = 5_000
        table = span_rows_table(
            {
                "trace_id": [f"{i + 1:032x}" for i in range(n)],
                "span_id": [f"{i + 1:016x}" for i in range(n)],
                "name": ["s"] * n,
                "start_ts": list(range(n)),
                "start_unix_nano": list(range(n)),
                "duration_ns": [1] * n,
            }
        )
        fwd = OtlpForwarder(
            f"127.0.0.1:{port}", max_queue=3_000, timeout_s=0.3, retry_s=0.5, interval_s=0.05
        )
        t0 = time.monotonic()
        fwd.offer(table)  # 2,000 past the queue: dropped at once
        assert fwd.stats()["dropped"] == 2_000
        fwd.close(timeout_s=0.5)
        took = time.monotonic() - t0
        s = fwd.stats()
        assert s["sent"] == 0
        assert s["dropped"] == n  # every span accounted for
        assert s["queued"] == 0
        assert not fwd._thread.is_alive()
        assert took < 5
        fwd.offer(table)  # after close: counted, not queued
        assert fwd.stats()["dropped"] == 2 * n
    finally:
        server.stop(0)


def _span_table(n: int, attr_bytes: int = 0, first: int = 1):
    from modeltap.collector.store import span_rows_table

    return span_rows_table(
        {
            "trace_id": [f"{i:032x}" for i in range(first, first + n)],
            "span_id": [f"{i:016x}" for i in range(first, first + n)],
            "name": ["s"] * n,
            "start_ts": list(range(n)),
            "start_unix_nano": list(range(n)),
            "duration_ns": [1] * n,
            "attributes": [[("payload", "p" * attr_bytes)] for _ in range(n)]
            if attr_bytes
            else None,
        }
    )


def test_forwarding_splits_requests_below_the_receivers_limit():
    """512 spans of 12 KiB attributes (6 MiB) to a receiver taking at most
    4 MiB a message: every span arrives, in requests below the limit; a
    span that alone could never fit is dropped and counted alone."""
    from modeltap.collector.otlp import OtlpForwarder

    rec = Receiver()
    limit = 4 << 20
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[("grpc.max_receive_message_length", limit)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        fwd = OtlpForwarder(f"127.0.0.1:{port}", interval_s=0.05, max_request_bytes=limit - 65536)
        fwd.offer(_span_table(512, 12 * 1024))
        assert fwd.flush(30)
        assert fwd.stats()["sent"] == 512
        assert fwd.stats()["dropped"] == 0
        assert len(rec.requests) >= 2
        assert all(r.ByteSize() < limit for r in rec.requests)
        assert len(rec.spans()) == 512
        small = OtlpForwarder(f"127.0.0.1:{port}", interval_s=0.05, max_request_bytes=64 << 10)
        small.offer(_span_table(3, 100 * 1024, first=1000))  # each alone too large
        small.offer(_span_table(5, 10, first=2000))
        assert small.flush(30)
        s = small.stats()
        assert (s["sent"], s["too_large"], s["dropped"]) == (5, 3, 3)
        fwd.close()
        small.close()
    finally:
        server.stop(0)


def test_the_forwarders_queue_is_bounded_in_bytes():
    """The endpoint away: what waits is bounded by max_queue_bytes, what
    does not fit is counted dropped, and every span is accounted for."""
    from modeltap.collector.otlp import OtlpForwarder

    fwd = OtlpForwarder(
        "127.0.0.1:1", max_queue_bytes=1 << 20, timeout_s=0.2, retry_s=0.3, interval_s=10
    )
    tables = [_span_table(200, 4 * 1024, first=1 + 200 * k) for k in range(20)]  # ~16 MiB
    for t in tables:
        fwd.offer(t)
    s = fwd.stats()
    assert s["queued_bytes"] <= 1 << 20
    assert s["dropped"] > 0
    assert s["queued"] + s["dropped"] == 20 * 200
    fwd.close(timeout_s=0.2)
    s = fwd.stats()
    assert s["sent"] == 0
    assert s["dropped"] == 20 * 200


def test_an_otlp_request_of_too_many_spans_is_refused_before_it_is_walked(tmp_path):
    from modeltap.collector.otlp import MAX_REQUEST_SPANS

    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i in range(MAX_REQUEST_SPANS + 1):
        sp = ss.spans.add()
        sp.trace_id, sp.span_id = b"\x01" * 16, (i + 1).to_bytes(8, "big")
    data = req.SerializeToString()
    with BackgroundCollector(tmp_path / "s.duckdb") as col, grpc.insecure_channel(col.addr) as ch:
        export = ch.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda b: b,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            export(data, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "smaller batches" in e.value.details()
        assert time.monotonic() - t0 < 5
