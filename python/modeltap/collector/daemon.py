"""Running a collector: ``serve`` (the ``modeltap collector`` daemon, until
SIGTERM or SIGINT) and ``BackgroundCollector`` (one on a thread of its own,
for tests and notebooks)."""

from __future__ import annotations

import asyncio
import importlib.abc
import logging
import os
import signal
import sys
import threading
from typing import Any

from modeltap import _core
from modeltap.collector.memory import DEFAULT_MAX_MEMORY_MB
from modeltap.collector.reader import DEFAULT_MAX_READS, DEFAULT_READ_TIMEOUT_S
from modeltap.collector.server import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_PENDING_MB,
    DEFAULT_MAX_RECEIVING,
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_STORE,
    CollectorServer,
    registrar,
)
from modeltap.collector.store import StoreVersionError

log = logging.getLogger("modeltap.collector")


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
    listen: str,
    store: str,
    max_message_mb: float,
    references: list[str] | None = None,
    **options: Any,
) -> int:
    refs = _load_references(references or [])
    server = CollectorServer(listen, store, max_message_mb=max_message_mb, **options)
    port = await server.start()
    for model, version, data in refs:
        fp = await asyncio.wrap_future(server.writer.call(registrar(model, version, data)))
        log.info("registered reference %s for %s %s", fp, model, version)
    host = listen.rsplit(":", 1)[0]
    print(f"modeltap collector listening on {host}:{port}, store {store}", flush=True)
    if server.metrics is not None:
        http_host = (server.http or "").rpartition(":")[0] or "127.0.0.1"
        print(
            f"pages on http://{http_host}:{server.metrics.port}/ (each model at /models/NAME; "
            "/metrics, /healthz, /readyz)",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight batches")
    await server.stop()
    w = server.writer
    print(
        f"modeltap collector stopped: {w.stored_batches} batches "
        f"({w.stored_records} records) stored, {w.duplicates} duplicates ignored, "
        f"{server.rejected} refused, {server.shed} shed under load "
        f"({server.memory.shed} for memory), "
        f"{w.abandoned} abandoned by their callers",
        flush=True,
    )
    if server.forwarder is not None:
        f = server.forwarder.stats()
        print(
            f"OTLP forwarding to {server.otlp_endpoint}: {f['sent']} spans sent, "
            f"{f['dropped']} dropped",
            flush=True,
        )
    return 0


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """Finds pandas absent, as pyarrow is used to when it is not installed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError("the collector daemon runs without pandas", name=fullname)
        return None


def serve(
    listen: str = DEFAULT_LISTEN,
    store: str = DEFAULT_STORE,
    max_message_mb: float = 64.0,
    references: list[str] | None = None,
    *,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    max_pending_mb: float = DEFAULT_MAX_PENDING_MB,
    max_receiving: int = DEFAULT_MAX_RECEIVING,
    max_memory_mb: float | None = DEFAULT_MAX_MEMORY_MB,
    otlp_endpoint: str | None = None,
    http: str | None = None,
    max_reads: int = DEFAULT_MAX_READS,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> int:
    """Runs a collector until SIGTERM or SIGINT; returns the exit status.

    The daemon never loads pandas (nothing it does needs it): pyarrow would
    import it on the first array it builds, a second of CPU and 40 MiB of
    memory for nothing."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    try:
        return asyncio.run(
            _main(
                listen,
                store,
                max_message_mb,
                references,
                memory_limit=memory_limit,
                max_concurrent_rpcs=max_concurrent_rpcs,
                max_pending_mb=max_pending_mb,
                max_receiving=max_receiving,
                max_memory_mb=max_memory_mb,
                otlp_endpoint=otlp_endpoint,
                http=http,
                max_reads=max_reads,
                read_timeout_s=read_timeout_s,
            )
        )
    except (OSError, ValueError, StoreVersionError, _core.ReferenceFormatError) as e:
        print(f"modeltap collector: {e}", file=sys.stderr)
        return 1


class BackgroundCollector:
    """A collector running on a thread of the current process (for demos,
    notebooks and tests). Use as a context manager; ``addr`` is where agents
    send."""

    def __init__(
        self, store: str | os.PathLike[str], listen: str = "127.0.0.1:0", **options: Any
    ) -> None:
        self.server = CollectorServer(listen, store, **options)
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
        """Finishes in-flight calls and closes the store (once)."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> BackgroundCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
