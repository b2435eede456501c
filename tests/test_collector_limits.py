"""Each class of call has room of its own: long-lived health Watch and
Query streams cannot take the room of exports, health checks or the other
reads; a Query whose client stopped reading is cut off."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

import modeltap
from modeltap import _core
from modeltap.collector import BackgroundCollector
from modeltap.collector.limits import peer_host

SERVING = health_pb2.HealthCheckResponse.SERVING
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _wait(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _query(ch: grpc.Channel, sql: str, timeout: float = 120):
    req = _core.encode_text_response(json.dumps({"sql": sql}))
    return ch.unary_stream("/modeltap.v1.Collector/Query")(req, timeout=timeout)


def test_peer_hosts():
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"


def test_idle_watch_and_query_streams_leave_room_for_everyone(tmp_path):
    """300 idle Watch streams and 200 idle Query streams (what a mesh
    sidecar or a careless client opens) while 4 agents export: every batch
    is stored, Check answers SERVING, drift-side reads and the pages answer."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2_000, 8))
    ref = modeltap.Reference.from_data(x)
    with BackgroundCollector(tmp_path / "s.duckdb", http="127.0.0.1:0") as col:
        with modeltap.Client(col.addr) as c:
            c.register_reference(ref, "m", "1")
        seed = modeltap.Agent("m", "1", collector=col.addr, reference=ref)
        seed.log_batch(x, np.zeros(len(x)))
        assert seed.flush(30)
        seed.close()
        hog = grpc.insecure_channel(col.addr)
        watches = [
            health_pb2_grpc.HealthStub(hog).Watch(health_pb2.HealthCheckRequest())
            for _ in range(300)
        ]
        queries = [_query(hog, "SELECT p.* FROM predictions p, range(1000)") for _ in range(200)]
        s = col.server
        assert _wait(lambda: s.watches.refused + s.watches.open == 300)
        assert _wait(lambda: sum(q.done() for q in queries) >= 200 - s.query_streams.per_peer)
        assert s.watches.open == s.watches.per_peer  # one host's share
        assert sum(not w.done() for w in watches) == s.watches.per_peer
        assert {w.code() for w in watches if w.done()} == {EXHAUSTED}
        assert s.query_streams.open == s.query_streams.per_peer
        assert {q.code() for q in queries if q.done()} == {EXHAUSTED}

        n, agents = 5_000, 4
        results: list[bool] = []

        def serve(k: int) -> None:
            a = modeltap.Agent("m", "1", collector=col.addr, reference=ref, batch_size=500)
            for i in range(n):
                a.log(x[(i + k) % len(x)], 0.0)
            results.append(a.flush(60))
            a.close()

        threads = [threading.Thread(target=serve, args=(k,)) for k in range(agents)]
        for t in threads:
            t.start()
        with grpc.insecure_channel(col.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        with modeltap.Client(col.addr) as c:
            assert c.drift("m", "1").records >= len(x)
            assert c.stage_latency("m") is not None
        page = f"http://127.0.0.1:{s.metrics.port}/models/m"
        with urllib.request.urlopen(page, timeout=30) as r:
            assert r.status == 200
        for t in threads:
            t.join(120)
        assert results == [True] * agents
        with grpc.insecure_channel(col.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        for call in watches + queries:
            call.cancel()
        hog.close()
        assert _wait(lambda: s.watches.open == 0 and s.query_streams.open == 0)
        assert _wait(lambda: s.reader.in_flight == 0)
        with modeltap.Client(col.addr) as c:
            stored = c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py()
        assert stored == len(x) + n * agents


def test_a_query_whose_client_stopped_reading_is_cut(tmp_path):
    with BackgroundCollector(tmp_path / "s.duckdb", query_idle_s=1.0) as col:
        a = modeltap.Agent("m", "1", collector=col.addr)
        a.log_batch(np.ones((2_000, 4)), np.zeros(2_000))
        assert a.flush(30)
        a.close()
        with grpc.insecure_channel(col.addr) as ch:
            call = _query(ch, "SELECT p.* FROM predictions p, range(2000)")
            next(call)  # the schema; then nothing more is taken
            s = col.server
            assert _wait(lambda: s.queries_idle_cut == 1, 30)
            assert _wait(lambda: s.reader.in_flight == 0 and s.query_streams.open == 0)
            call.cancel()
        # the slot is free: the next query answers
        with modeltap.Client(col.addr) as c:
            assert c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == 2_000


def test_slow_http_clients_cannot_take_health_or_metrics_away(tmp_path):
    """200 connections dribbling a request head a byte at a time (a
    slowloris client): /healthz, /readyz and /metrics answer at once
    throughout, and the dribblers are dropped."""
    import socket

    from modeltap.collector.metrics import MAX_WAITING, REQUEST_HEAD_S

    with BackgroundCollector(tmp_path / "s.duckdb", http="127.0.0.1:0") as col:
        port = col.server.metrics.port
        slow: list[socket.socket] = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"G")
            slow.append(s)
        t_end = time.monotonic() + REQUEST_HEAD_S + 2
        worst = 0.0
        answered = 0
        while time.monotonic() < t_end:
            for s in slow:  # one more byte each, never the end of the head
                with contextlib.suppress(OSError):
                    s.sendall(b"E")
            for path in ("/healthz", "/readyz", "/metrics"):
                t0 = time.monotonic()
                url = f"http://127.0.0.1:{port}{path}"
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.status == 200
                    r.read()
                worst = max(worst, time.monotonic() - t0)
                answered += 1
            time.sleep(0.5)
        assert answered >= 3 * 5
        assert worst < 2.0, worst
        httpd = col.server.metrics.httpd
        # those past the waiting room were dropped at once, the rest at the deadline
        assert _wait(lambda: httpd.dropped_slow >= 200, 10), httpd.dropped_slow
        assert len(httpd._waiting) == 0
        assert 200 - MAX_WAITING > 0
        for s in slow:
            s.close()
