"""How Export messages come in: a few received at a time (grpc holds each
whole before its size is known), the others waiting in a small flow-control
window; a call that never sends its message gives its room back; the
daemon runs without pandas."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector_util import Collector, encoded_batches, export, rss_bytes
from modeltap.collector import BackgroundCollector
from modeltap.collector.limits import Rooms
from modeltap.collector.store import Overloaded

EXPORT = "/modeltap.v1.Collector/Export"
SERVING = health_pb2.HealthCheckResponse.SERVING


def test_rooms_bound_all_and_each_host_first_come_first_served():
    async def go() -> None:
        rooms = Rooms("things", total=3, per_peer=2)
        a, b = "ipv4:10.0.0.1:5000", "ipv4:10.0.0.2:5000"
        await rooms.enter(a, 0)
        await rooms.enter(a, 0)
        with pytest.raises(Overloaded, match="2 from one host"):
            await rooms.enter(a, 0.01)  # a's share is taken
        await rooms.enter(b, 0)  # b still fits
        assert rooms.open == 3
        order: list[str] = []

        async def wait_then(peer: str, tag: str) -> None:
            await rooms.enter(peer, 5)
            order.append(tag)

        first = asyncio.ensure_future(wait_then(b, "b1"))
        second = asyncio.ensure_future(wait_then(b, "b2"))
        cancelled = asyncio.ensure_future(wait_then(b, "never"))
        await asyncio.sleep(0.01)
        cancelled.cancel()  # a waiter that leaves takes nothing with it
        await asyncio.sleep(0.01)
        rooms.leave(a)
        await asyncio.sleep(0.01)
        assert order == ["b1"]
        rooms.leave(b)
        await asyncio.sleep(0.01)
        assert order == ["b1", "b2"]
        await asyncio.gather(first, second)
        assert rooms.open == 3
        assert not rooms._waiting
        for peer in (a, b, b):
            rooms.leave(peer)
        assert rooms.open == 0
        assert not rooms._by_peer
        with pytest.raises(ValueError, match="at least 1"):
            Rooms("none", 0, 1)

    asyncio.run(go())


def test_calls_that_never_send_their_message_give_their_rooms_back(tmp_path):
    """Calls that open and send nothing hold a room (one host at most half
    of them) only until the receive timeout; batches beside them are
    stored."""
    with BackgroundCollector(tmp_path / "s.duckdb", max_receiving=2, receive_s=1.0) as col:
        stop = threading.Event()

        def silent():  # a request stream that never yields a message
            stop.wait(30)
            yield b""

        with grpc.insecure_channel(col.addr) as ch:
            call = ch.stream_unary(EXPORT)
            silent_calls = [call.future(silent(), timeout=20) for _ in range(3)]
            time.sleep(0.3)
            assert col.server.receiving == 1  # half the rooms for one host
            t0 = time.monotonic()
            batches = encoded_batches(4)
            for b in batches:
                code, details, _ = export(col.addr, b, timeout=15)
                assert code == grpc.StatusCode.OK, details
            assert time.monotonic() - t0 < 10
            for f in silent_calls:
                with pytest.raises(grpc.RpcError) as e:
                    f.result(timeout=20)
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "took longer than 1 s" in (e.value.details() or "")
            stop.set()
        assert col.server.receives_cut == 3
        assert col.server.receiving == 0
        assert col.server._rooms.open == 0
        assert col.server.writer.stored_batches == len(batches)


def test_a_flood_of_huge_messages_is_received_a_few_at_a_time(tmp_path):
    """40 concurrent 24 MiB messages of garbage (1.9 GiB once received and
    copied, as every one was before) while batches are exported beside
    them: the collector grows by a few messages' worth, every batch is
    stored, health answers SERVING."""
    col = Collector(tmp_path / "s.duckdb", None, "--max-memory-mb", "8192").start()
    try:
        assert col.proc is not None
        base = rss_bytes(col.proc.pid)
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            assert col.proc is not None
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes(col.proc.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        garbage = os.urandom(24 << 20)
        codes: dict[str, int] = {}

        async def flood() -> None:
            opts = [("grpc.max_send_message_length", 1 << 30)]
            chans = [grpc.aio.insecure_channel(col.addr, options=opts) for _ in range(4)]

            async def one(i: int) -> None:
                try:
                    await chans[i % 4].unary_unary(EXPORT)(garbage, timeout=120)
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] = codes.get(e.code().name, 0) + 1

            await asyncio.gather(*(one(i) for i in range(40)))
            for c in chans:
                await c.close()

        flooder = threading.Thread(target=lambda: asyncio.run(flood()))
        flooder.start()
        batches = encoded_batches(6)
        for b in batches:
            for _ in range(100):  # as an agent does: back off and retry
                code, details, _ = export(col.addr, b, timeout=30)
                if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
                time.sleep(0.2)
            assert code == grpc.StatusCode.OK, details
        with grpc.insecure_channel(col.addr) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == SERVING
        flooder.join(180)
        done.set()
        sampler.join(5)
        assert sum(codes.values()) == 40
        assert "OK" not in codes
        assert codes.get("INVALID_ARGUMENT", 0) >= 1  # garbage, read and refused
        growth = (peak[0] - base) / 2**20
        assert growth < 400, f"collector grew by {growth:.0f} MiB"
    finally:
        col.stop()
    out = col.output
    assert f"{len(batches)} batches" in out, out


def test_the_daemon_never_loads_pandas(tmp_path: Path):
    col = Collector(tmp_path / "s.duckdb").start()
    try:
        assert col.proc is not None
        for b in encoded_batches(2):
            code, details, _ = export(col.addr, b)
            assert code == grpc.StatusCode.OK, details
        maps = Path(f"/proc/{col.proc.pid}/maps").read_text()
        assert "pyarrow" in maps  # the batches went through it
        assert "/pandas/" not in maps
    finally:
        col.stop()
