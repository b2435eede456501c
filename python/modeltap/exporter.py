"""The exporter thread: takes encoded batches from the native pipeline and
delivers them to their destination, reporting each batch's fate back so the
agent's counters always add up."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from modeltap import _core
from modeltap.spool import Corrupt, Spool

log = logging.getLogger("modeltap")


class Destination(Protocol):
    """Where batches go. ``deliver`` returns the outcome for the batch:
    ``"shipped"``, ``"spooled"``, ``"dropped_spool"`` or ``"discarded"``."""

    def deliver(self, data: bytes, n_records: int) -> str:
        """Delivers one encoded batch."""
        ...

    def idle(self) -> float | None:
        """Background work between batches (spool replay); returns how soon
        to be called again, or None when there is nothing to do."""
        ...

    def close(self, timeout_s: float) -> None:
        """Releases resources."""
        ...

    def set_deadline(self, deadline: float) -> None:
        """From now on, give up retrying at ``deadline`` (monotonic)."""
        ...


class DiscardDestination:
    """Local-only agents (no collector, no sink): batches are released after
    the agent has counted and profiled their records."""

    def deliver(self, data: bytes, n_records: int) -> str:
        return "discarded"

    def idle(self) -> float | None:
        return None

    def close(self, timeout_s: float) -> None:
        return None

    def set_deadline(self, deadline: float) -> None:
        return None


class SinkDestination:
    """Hands each encoded batch (``bytes``) to a callable. A sink that
    returns normally has taken the batch (``shipped``); one that raises has
    not, and the batch is counted as ``discarded`` with the error logged."""

    def __init__(self, sink: Callable[[bytes], object], on_error: Callable[[], None]) -> None:
        self._sink = sink
        self._on_error = on_error

    def deliver(self, data: bytes, n_records: int) -> str:
        try:
            self._sink(data)
        except Exception:
            self._on_error()
            log.exception("modeltap: sink failed; %d records discarded", n_records)
            return "discarded"
        return "shipped"

    def idle(self) -> float | None:
        return None

    def close(self, timeout_s: float) -> None:
        return None

    def set_deadline(self, deadline: float) -> None:
        return None


EXPORT_METHOD = "/modeltap.v1.Collector/Export"
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        # Our own channel closing under an in-flight call at shutdown.
        grpc.StatusCode.CANCELLED,
    }
)


class GrpcDestination:
    """Sends batches to a ``modeltap collector`` with grpcio, bytes in and
    bytes out (no Python protobuf objects).

    A failed call with a retryable status (UNAVAILABLE, DEADLINE_EXCEEDED,
    RESOURCE_EXHAUSTED) is retried with exponential backoff and full jitter;
    once ``retry_window_s`` has passed (or the agent is shutting down) the
    batch goes to the spool. While the spool holds a backlog, new batches
    are appended behind it so delivery stays in order, and the spool is
    replayed whenever the collector answers again. Without a spool the
    batch is retried until it goes through (the agent's ring then fills and
    drops, counted) or, at shutdown, discarded and counted. Statuses that
    cannot succeed on retry (INVALID_ARGUMENT, UNAUTHENTICATED,
    PERMISSION_DENIED, ...), and a batch larger than the collector accepts,
    are logged and the batch discarded."""

    def __init__(
        self,
        target: str,
        recorder: _core.Recorder,
        *,
        spool: Spool | None = None,
        compression: str | None = None,
        timeout_s: float = 10.0,
        retry_window_s: float = 5.0,
        max_backoff_s: float = 5.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        reference: tuple[str, str, bytes] | None = None,
    ) -> None:
        self.target = target
        # (model, version, reference file) to register before the first batch
        self._reference = reference
        self._rec = recorder
        self.spool = spool
        self.timeout_s = timeout_s
        self.retry_window_s = retry_window_s
        self.max_backoff_s = max_backoff_s
        if compression not in (None, "gzip"):
            raise ValueError("compression must be None or 'gzip'")
        self._compression = grpc.Compression.Gzip if compression == "gzip" else None
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.enable_retries", 0),
            ],
        )
        self._export: Any = self._channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )
        self._deadline: float | None = None
        self._replay_attempt = 0
        self._next_replay = 0.0
        self.recovered = 0  # records from earlier processes' spools, delivered
        self.spool_corrupt = 0  # records lost to spool damage (where a header told)
        self.spool_corrupt_stretches = 0  # damaged stretches skipped
        self.last_error = ""

    # -- one call ------------------------------------------------------------

    def _send(self, data: bytes) -> str:
        """One Export call: "ok", "retry" or "fatal"."""
        try:
            resp = self._export(data, timeout=self.timeout_s, compression=self._compression)
            _core.decode_export_response(resp)
            return "ok"
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = str(e.details() if hasattr(e, "details") else e)
            self.last_error = f"{code}: {details}"
            too_large = code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
            if code in RETRYABLE and not too_large:
                return "retry"
            log.error("modeltap: collector %s refused a batch: %s", self.target, self.last_error)
            return "fatal"
        except Exception as e:
            self.last_error = repr(e)
            log.error("modeltap: sending to %s failed: %r", self.target, e)
            return "retry"

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff_s, 0.05 * 2**attempt))

    def set_deadline(self, deadline: float) -> None:
        self._deadline = deadline

    def _give_up(self, started: float) -> bool:
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            return True
        return self.spool is not None and now - started >= self.retry_window_s

    # -- delivery ------------------------------------------------------------

    def _register_reference(self) -> None:
        """Registers the agent's reference, once; retried with later batches."""
        if self._reference is None:
            return
        model, version, ref = self._reference
        try:
            call: Any = self._channel.unary_unary("/modeltap.v1.Collector/RegisterReference")
            call(_core.encode_reference_upload(model, version, ref), timeout=self.timeout_s)
            self._reference = None
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code not in RETRYABLE:
                self._rec.count_error()
                log.error("modeltap: collector refused the reference: %s", e)
                self._reference = None

    def deliver(self, data: bytes, n_records: int) -> str:
        self._register_reference()
        if self.spool is not None and self.spool.backlog():
            return self._to_spool(data, n_records)
        started = time.monotonic()
        attempt = 0
        while True:
            result = self._send(data)
            if result == "ok":
                return "shipped"
            if result == "fatal":
                self._rec.count_error()
                return "discarded"
            if self._give_up(started):
                if self.spool is not None:
                    log.warning(
                        "modeltap: collector %s unavailable (%s); spooling",
                        self.target,
                        self.last_error,
                    )
                    return self._to_spool(data, n_records)
                log.error(
                    "modeltap: collector %s unavailable at shutdown; %d records discarded",
                    self.target,
                    n_records,
                )
                return "discarded"
            attempt += 1
            pause = self._backoff(attempt)
            if self._deadline is not None:
                pause = min(pause, max(self._deadline - time.monotonic(), 0.0))
            time.sleep(pause)

    def _to_spool(self, data: bytes, n_records: int) -> str:
        assert self.spool is not None
        try:
            if self.spool.append(data, n_records):
                return "spooled"
        except OSError as e:
            self._rec.count_error()
            log.error("modeltap: spool write failed: %s", e)
        log.warning("modeltap: spool full; %d records dropped", n_records)
        return "dropped_spool"

    def idle(self) -> float | None:
        """Replays the spool when the collector answers again."""
        if self.spool is None or not self.spool.backlog():
            return None
        now = time.monotonic()
        if now < self._next_replay:
            return self._next_replay - now
        if self.replay():
            self._replay_attempt = 0
            return None if not self.spool.backlog() else 0.0
        self._replay_attempt += 1
        self._next_replay = time.monotonic() + self._backoff(self._replay_attempt) + 0.05
        return self._next_replay - time.monotonic()

    def replay(self) -> bool:
        """Sends spooled frames in order until the spool is empty (True) or a
        call fails (False)."""
        spool = self.spool
        if spool is None:
            return True
        while (nxt := spool.next()) is not None:
            item, adopted = nxt
            if isinstance(item, Corrupt):
                log.error(
                    "modeltap: spool %s damaged (%s); %d records skipped",
                    item.segment.name,
                    item.reason,
                    item.n_records,
                )
                self.spool_corrupt += item.n_records
                self.spool_corrupt_stretches += 1
                if not adopted and item.n_records:
                    self._rec.unspool(item.n_records, "dropped_spool")
                spool.ack(item, adopted)
                continue
            result = self._send(item.payload)
            if result == "retry":
                return False
            if result == "ok":
                if adopted:
                    self.recovered += item.n_records
                else:
                    self._rec.unspool(item.n_records, "shipped")
            else:
                self._rec.count_error()
                if not adopted:
                    self._rec.unspool(item.n_records, "discarded")
            spool.ack(item, adopted)
        return True

    def close(self, timeout_s: float) -> None:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        self._deadline = deadline
        while self.spool is not None and self.spool.backlog() and time.monotonic() < deadline:
            if not self.replay():
                break
        if self.spool is not None:
            self.spool.close()
        self._channel.close()


class Exporter:
    """A daemon thread moving batches from a recorder to a destination."""

    def __init__(self, recorder: _core.Recorder, destination: Destination) -> None:
        self._rec = recorder
        self.destination = destination
        self._thread = threading.Thread(target=self._run, name="modeltap-exporter", daemon=True)

    def start(self) -> None:
        """Starts the thread."""
        self._thread.start()

    def _deliver(self, seq: int, n: int, data: bytes) -> None:
        try:
            outcome = self.destination.deliver(data, n)
        except Exception:
            self._rec.count_error()
            log.exception("modeltap: delivery failed; %d records discarded", n)
            outcome = "discarded"
        self._rec.settle(seq, outcome)

    def _run(self) -> None:
        wait = 1.0
        while True:
            item = self._rec.take_batch(wait)
            if item is not None:
                self._deliver(*item)
            elif self._rec.finished():
                return
            try:
                again = self.destination.idle()
            except Exception:
                self._rec.count_error()
                log.exception("modeltap: spool replay failed")
                again = 1.0
            wait = 1.0 if again is None else min(max(again, 0.0), 1.0)

    def close(self, timeout_s: float) -> None:
        """Waits up to ``timeout_s`` for the thread to deliver what the
        (already shut down) recorder queued. Batches still queued after that
        go to the destination's spool if it has one, else are discarded;
        either way they are counted."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        self.destination.set_deadline(deadline)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        left = 0
        while (item := self._rec.take_batch(0.0)) is not None:
            seq, n, data = item
            spool = getattr(self.destination, "spool", None)
            outcome = "discarded"
            if isinstance(spool, Spool):
                try:
                    outcome = "spooled" if spool.append(data, n) else "dropped_spool"
                except OSError:
                    self._rec.count_error()
            self._rec.settle(seq, outcome)
            left += n
        if left:
            log.warning("modeltap: shutdown timeout reached; %d records not delivered", left)
        self.destination.close(max(deadline - time.monotonic(), 0.0))
