"""Helpers to run real collector and agent processes in tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Collector:
    """A `modeltap collector` subprocess on a fixed port."""

    def __init__(self, store: Path, port: int | None = None, *args: str) -> None:
        self.store = store
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self, wait: bool = True) -> Collector:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modeltap",
                "collector",
                "--listen",
                self.addr,
                "--store",
                str(self.store),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if wait:
            assert self.proc.stdout is not None
            for _ in range(50):  # log lines may come first
                line = self.proc.stdout.readline()
                self.output += line
                if "listening on" in line or not line:
                    break
            assert "listening on" in line, self.output
        return self

    def health(self) -> int:
        with grpc.insecure_channel(self.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            return int(resp.status)

    def wait_health(self, status: int, timeout: float = 20.0) -> None:
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.health()
                if last == status:
                    return
            except grpc.RpcError as e:
                last = e.code()
            time.sleep(0.1)
        raise AssertionError(f"health stayed {last}, wanted {status}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> str:
        if self.proc is None:
            return self.output
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        self.output += out or ""
        self.proc = None
        return self.output

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def rss(self) -> int:
        """The collector process's resident memory, in bytes."""
        assert self.proc is not None
        return rss_bytes(self.proc.pid)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def run_agent(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Runs tests/agent_worker.py and returns the JSON it prints last."""
    p = subprocess.run(
        [sys.executable, str(HERE / "agent_worker.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def start_agent(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "agent_worker.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_agent(p: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, out + err
    return json.loads(out.strip().splitlines()[-1])


def expected_features(k: int, n: int, nf: int = 20):
    import numpy as np

    i = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(nf, dtype=np.float64)[None, :]
    return k * 1_000_000 + i + j / 64


# -- protobuf wire format, for building hostile messages from real ones --------

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = data[i]
        out |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return out, i
        shift += 7


def _put_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_parse(data: bytes) -> list[list[Any]]:
    """A message's fields, in wire order, as ``[number, wire_type, value]``
    (value: int for varint and fixed, bytes for length-delimited)."""
    fields: list[list[Any]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == VARINT:
            v, i = _varint(data, i)
        elif wt == FIXED64:
            v = int.from_bytes(data[i : i + 8], "little")
            i += 8
        elif wt == FIXED32:
            v = int.from_bytes(data[i : i + 4], "little")
            i += 4
        elif wt == LEN:
            n, i = _varint(data, i)
            v = data[i : i + n]
            i += n
        else:
            raise ValueError(f"wire type {wt}")
        fields.append([num, wt, v])
    return fields


def pb_build(fields: list[list[Any]]) -> bytes:
    """The inverse of :func:`pb_parse` (same order, so prost's canonical
    encoding round-trips byte for byte)."""
    out = bytearray()
    for num, wt, v in fields:
        out += _put_varint(num << 3 | wt)
        if wt == VARINT:
            out += _put_varint(v)
        elif wt == FIXED64:
            out += (v & ((1 << 64) - 1)).to_bytes(8, "little")
        elif wt == FIXED32:
            out += (v & 0xFFFFFFFF).to_bytes(4, "little")
        else:
            out += _put_varint(len(v)) + bytes(v)
    return bytes(out)


def pb_get(fields: list[list[Any]], num: int) -> list[Any]:
    return [f for f in fields if f[0] == num]


def pb_set(fields: list[list[Any]], num: int, wt: int, value: Any) -> list[list[Any]]:
    """Replaces field ``num`` (or appends it), keeping field order."""
    out = [f for f in fields if f[0] != num]
    out.append([num, wt, value])
    out.sort(key=lambda f: f[0])
    return out


def packed_varints(data: bytes) -> list[int]:
    out, i = [], 0
    while i < len(data):
        v, i = _varint(data, i)
        out.append(v)
    return out


def pack_varints(values: list[int]) -> bytes:
    return b"".join(_put_varint(v) for v in values)


REF_MAGIC = b"MTREF\x00\x01\x00"


def fnv_fingerprint(columns: list[bytes]) -> str:
    """The reference's fingerprint (FNV-1a of its encoded column specs)."""
    h = 0xCBF29CE484222325
    for c in columns:
        for b in c:
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def rebuild_reference(data: bytes, edit_column: Any) -> bytes:
    """A reference file whose column specs went through ``edit_column``
    (fields of a ColumnSpec → fields, or None to keep it), with a fingerprint
    that matches them: damage the fingerprint check cannot see."""
    assert data.startswith(REF_MAGIC)
    top = pb_parse(data[len(REF_MAGIC) :])
    cols = []
    for f in top:
        if f[0] == 4:
            edited = edit_column(pb_parse(f[2]))
            if edited is not None:
                f[2] = pb_build(edited)
            cols.append(f[2])
    for f in top:
        if f[0] == 8:
            f[2] = fnv_fingerprint(cols).encode()
    return REF_MAGIC + pb_build(top)


def reference_fingerprint(data: bytes) -> str:
    """The fingerprint a reference file's columns hash to."""
    top = pb_parse(data[len(REF_MAGIC) :])
    return fnv_fingerprint([f[2] for f in top if f[0] == 4])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise LookupError(pid)


def export(addr: str, data: bytes, timeout: float = 10.0) -> tuple[grpc.StatusCode, str, bytes]:
    """One Export call: (status code, details, response bytes)."""
    with grpc.insecure_channel(addr) as ch:
        call = ch.unary_unary("/modeltap.v1.Collector/Export")
        try:
            return grpc.StatusCode.OK, "", call(data, timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details() or "", b""


def encoded_batches(
    n_batches: int = 1,
    rows: int = 100,
    *,
    model: str = "m",
    version: str = "1",
    features: int = 3,
    reference: Any = None,
    metrics: bool = False,
    seed: int = 0,
) -> list[bytes]:
    """Real batches, encoded by a real agent (sink instead of a collector)."""
    import numpy as np

    import modeltap

    got: list[bytes] = []
    a = modeltap.Agent(
        model,
        version,
        sink=got.append,
        reference=reference,
        metrics_interval=0.01 if metrics else None,
        batch_size=rows,
    )
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        if metrics:
            time.sleep(0.03)
        a.log_batch(rng.normal(size=(rows, features)), rng.integers(0, 3, rows))
        a.flush(10)
    a.close()
    return got


class ScriptedCollector:
    """A real grpcio server speaking `modeltap.v1.Collector/Export` whose
    answers a test scripts: `answer(key, attempt)` gets the batch's
    `(agent_id, batch_seq)` and how many times that batch was sent before,
    and returns None (accept), a `grpc.StatusCode` (or `(code, details)`) to
    fail the call with, `"garbage"` (an OK call whose response is not an
    ExportResponse), or `"hang"` (block until `release()`).

    Accepted batches are kept once each, decoded: `stored` maps
    `(agent_id, batch_seq)` to the batch; `calls` counts every call per key."""

    def __init__(self, answer: Any = None, *, max_receive_bytes: int | None = None) -> None:
        import threading
        from concurrent import futures

        import modeltap

        self._decode = modeltap.decode_batch
        self._encode_ok = modeltap._core.encode_export_response
        self.answer = answer or (lambda key, attempt: None)
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, int], int] = {}
        self.stored: dict[tuple[str, int], dict[str, Any]] = {}
        self._release = threading.Event()
        options = []
        if max_receive_bytes is not None:
            options.append(("grpc.max_receive_message_length", max_receive_bytes))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
        handler = grpc.method_handlers_generic_handler(
            "modeltap.v1.Collector",
            {
                "Export": grpc.unary_unary_rpc_method_handler(self._export),
                "RegisterReference": grpc.unary_unary_rpc_method_handler(lambda r, c: b""),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.addr = f"127.0.0.1:{self.port}"
        self.server.start()

    def _export(self, request: bytes, context: Any) -> bytes:
        batch = self._decode(request)
        key = (batch["agent_id"], int(batch["batch_seq"]))
        with self.lock:
            attempt = self.calls.get(key, 0)
            self.calls[key] = attempt + 1
        verdict = self.answer(key, attempt)
        if verdict == "hang":
            self._release.wait(60)
            context.abort(grpc.StatusCode.UNAVAILABLE, "released")
        if verdict == "garbage":
            return b"\xff\xfe not a response"
        if verdict is not None:
            code, details = verdict if isinstance(verdict, tuple) else (verdict, "scripted")
            context.abort(code, details)
        with self.lock:
            self.stored.setdefault(key, batch)
        return self._encode_ok(True, False, int(batch["n_records"]))

    def records(self) -> list[str]:
        """Request ids of every stored record."""
        with self.lock:
            return [r for b in self.stored.values() for r in b["request_ids"]]

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        self._release.set()
        self.server.stop(0).wait(5)


def invariant(s: dict[str, int]) -> bool:
    """The counters add up: every record logged is in exactly one place."""
    return s["logged"] == (
        s["pending"]
        + s["shipped"]
        + s["spooled"]
        + s["discarded"]
        + s["dropped_full"]
        + s["dropped_spool"]
        + s["invalid"]
        + s["sampled_out"]
    )
