"""The collector's gRPC server (grpc.aio): ``modeltap.v1.Collector/Export``
plus the standard health checking service.

Batches arrive as bytes (no Python protobuf objects), are decoded natively
on a small thread pool, and are acknowledged only once the store has
committed them durably. Status codes: undecodable or inconsistent bytes →
INVALID_ARGUMENT; a batch from a newer schema version → FAILED_PRECONDITION;
a message over ``--max-message-mb`` → RESOURCE_EXHAUSTED (from grpc itself);
the store cannot be written → UNAVAILABLE (agents retry or spool), with the
health service reporting NOT_SERVING until writes succeed again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from modeltap import _core
from modeltap.collector.store import (
    StoreUnavailable,
    StoreWriter,
    decode,
    drift_data,
    register_reference,
)

log = logging.getLogger("modeltap.collector")

SERVICE = "modeltap.v1.Collector"
DEFAULT_LISTEN = "127.0.0.1:7317"
DEFAULT_STORE = "./modeltap.duckdb"


class CollectorServer:
    """One collector: a gRPC server in front of one store."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        store: str | os.PathLike[str] = DEFAULT_STORE,
        *,
        max_message_mb: float = 64.0,
        decode_workers: int = 2,
    ) -> None:
        self.listen = listen
        self.store_path = store
        self.max_message_bytes = int(max_message_mb * 1024 * 1024)
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="modeltap-decode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.health = health_aio.HealthServicer()
        self.writer = StoreWriter(store, on_health=self._health_changed)
        self.server: Any = None
        self.port = 0
        self.received = 0
        self.rejected = 0

    def _health_changed(self, ok: bool, reason: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

        def apply() -> None:
            for name in ("", SERVICE):
                task = asyncio.ensure_future(self.health.set(name, status))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        loop.call_soon_threadsafe(apply)

    async def start(self) -> int:
        """Opens the store, starts serving; returns the bound port."""
        self._loop = asyncio.get_running_loop()
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Export": grpc.unary_unary_rpc_method_handler(self._export),
                "RegisterReference": grpc.unary_unary_rpc_method_handler(self._register),
                "Drift": grpc.unary_unary_rpc_method_handler(self._drift),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(self.listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        await asyncio.to_thread(self.writer.start)
        self._health_changed(self.writer.healthy, self.writer.reason)
        await self.server.start()
        return int(self.port)

    async def _export(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        loop = asyncio.get_running_loop()
        self.received += 1
        try:
            batch = await loop.run_in_executor(self._pool, decode, request)
        except _core.UnsupportedSchemaVersion as e:
            self.rejected += 1
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except _core.BatchDecodeError as e:
            self.rejected += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            duplicate, n = await asyncio.wrap_future(self.writer.submit(batch))
        except StoreUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {e}")
        return _core.encode_export_response(True, duplicate, n)

    async def _register(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        try:
            model, version, data = _core.decode_reference_upload(request)
            _core.reference_info(data)
        except (_core.BatchDecodeError, _core.ReferenceFormatError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            fp = await asyncio.wrap_future(
                self.writer.run(lambda con: register_reference(con, model, version, data))
            )
        except StoreUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {e}")
        return _core.encode_text_response(fp)

    async def _drift(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        try:
            model, version, lo, hi, rule_texts = _core.decode_drift_request(request)
            rules = parse_rules(rule_texts)
        except (_core.BatchDecodeError, ValueError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            data = await asyncio.wrap_future(
                self.writer.run(
                    lambda con: drift_data(
                        con, model, version or None, lo or None, hi or None, rules
                    )
                )
            )
        except LookupError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except StoreUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {e}")
        return _core.encode_text_response(json.dumps(_json_safe(data)))

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stops accepting calls, finishes those in flight, closes the store."""
        if self.server is not None:
            await self.server.stop(grace_s)
        await asyncio.to_thread(self.writer.stop)
        self._pool.shutdown(wait=True)


def parse_rules(texts: list[str]) -> dict[str, tuple[str, float]]:
    """``column=statistic:threshold`` texts as drift rules."""
    out: dict[str, tuple[str, float]] = {}
    for t in texts:
        try:
            name, rule = t.split("=", 1)
            stat, thr = rule.split(":", 1)
            out[name] = (stat, float(thr))
        except ValueError:
            raise ValueError(f"bad rule {t!r}: expected column=statistic:threshold") from None
    return out


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _registrar(model: str, version: str, data: bytes) -> Any:
    def job(con: Any) -> str:
        return register_reference(con, model, version, data)

    return job


def _load_references(specs: list[str]) -> list[tuple[str, str, bytes]]:
    """``[MODEL:VERSION=]PATH`` specs as (model, version, file bytes)."""
    out = []
    for spec in specs:
        target, _, path = spec.rpartition("=")
        with open(path, "rb") as f:
            data = f.read()
        info = _core.reference_info(data)
        if target:
            model, _, version = target.partition(":")
        else:
            model, version = info["model"], info["version"]
        if not model:
            raise ValueError(f"{path}: give the model as MODEL:VERSION={path}")
        out.append((model, version, data))
    return out


async def _main(
    listen: str, store: str, max_message_mb: float, references: list[str] | None = None
) -> int:
    refs = _load_references(references or [])
    server = CollectorServer(listen, store, max_message_mb=max_message_mb)
    port = await server.start()
    for model, version, data in refs:
        fp = await asyncio.wrap_future(server.writer.run(_registrar(model, version, data)))
        log.info("registered reference %s for %s %s", fp, model, version)
    host = listen.rsplit(":", 1)[0]
    print(f"modeltap collector listening on {host}:{port}, store {store}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight batches")
    await server.stop()
    print(
        f"modeltap collector stopped: {server.writer.stored_batches} batches "
        f"({server.writer.stored_records} records) stored, "
        f"{server.writer.duplicates} duplicates ignored",
        flush=True,
    )
    return 0


def serve(
    listen: str = DEFAULT_LISTEN,
    store: str = DEFAULT_STORE,
    max_message_mb: float = 64.0,
    references: list[str] | None = None,
) -> int:
    """Runs a collector until SIGTERM or SIGINT; returns the exit status."""
    try:
        return asyncio.run(_main(listen, store, max_message_mb, references))
    except (OSError, ValueError, _core.ReferenceFormatError) as e:
        print(f"modeltap collector: {e}", file=sys.stderr)
        return 1


class BackgroundCollector:
    """A collector running on a thread of the current process (for demos,
    notebooks and tests). Use as a context manager; ``addr`` is where agents
    send."""

    def __init__(self, store: str | os.PathLike[str], listen: str = "127.0.0.1:0") -> None:
        self.server = CollectorServer(listen, store)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="modeltap-collector", daemon=True
        )
        self.addr = ""

    def start(self) -> BackgroundCollector:
        """Starts serving; returns self."""
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(30)
        self.addr = f"{self.server.listen.rsplit(':', 1)[0]}:{port}"
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Finishes in-flight calls and closes the store."""
        asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> BackgroundCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
