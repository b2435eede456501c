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
