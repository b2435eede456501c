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
