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

# What Destination.deliver may answer: a final outcome, or SPOOL (the
# exporter then appends the batch to the destination's spool itself, so that
# a batch is spooled at most once even when close() takes it over).
SPOOL = "spool"


class Destination(Protocol):
    """Where batches go. ``deliver`` returns the outcome for the batch:
    ``"shipped"``, ``"discarded"``, or ``"spool"`` (to be appended to
    ``spool``, which is then not None)."""

    spool: Spool | None

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


class _Throttle:
    """Logs one message per ``interval_s`` per kind; counts the rest and says
    how many were left out in the next one."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            msg += f" ({held} similar messages left out)"
        log.log(level, msg, *args)


class DiscardDestination:
    """Local-only agents (no collector, no sink): batches are released after
    the agent has counted and profiled their records."""

    spool: Spool | None = None

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

    spool: Spool | None = None

    def __init__(self, sink: Callable[[bytes], object], on_error: Callable[[], None]) -> None:
        self._sink = sink
        self._on_error = on_error

    def deliver(self, data: bytes, n_records: int) -> str:
        try:
            self._sink(data)
        except BaseException:  # a sink raising SystemExit must not kill the thread
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
# The collector is away, slow, overloaded, or our own channel closed under a
# call at shutdown: retry with backoff, then spool.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
# The collector may or may not have stored the batch, or failed for a reason
# unrelated to it (a proxy hiccup, an unexpected exception): a few quick
# retries, then the spool. Resending is safe, the collector deduplicates.
AMBIGUOUS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
# The batch is fine, the credentials or the route are not (a token being
# rotated, a proxy pointing elsewhere, a collector older than the agent that
# does not read its batch version yet, FAILED_PRECONDITION): keep the data
# until someone fixes it.
HELD = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
# This batch can never succeed, wherever and whenever it is sent.
NEVER = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Ambiguous answers to one batch before it goes to the spool.
AMBIGUOUS_TRIES = 3


def classify(code: grpc.StatusCode | None, details: str) -> str:
    """What to do about a failed Export call: "retry", "ambiguous", "held"
    or "never" (see the sets above). A message larger than the collector (or
    our channel) accepts can never succeed either."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        return "never"
    if code in NEVER:
        return "never"
    if code in HELD:
        return "held"
    if code in RETRYABLE:
        return "retry"
    return "ambiguous"


class GrpcDestination:
    """Sends batches to a ``modeltap collector`` with grpcio, bytes in and
    bytes out (no Python protobuf objects).

    What a failed call leads to depends on its status (see :func:`classify`):

    - UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED:
      retried with exponential backoff and full jitter; once
      ``retry_window_s`` has passed (or the agent is shutting down) the batch
      goes to the spool.
    - UNKNOWN, INTERNAL, DATA_LOSS, ALREADY_EXISTS and exceptions that are
      not RPC errors (the collector may have the batch or not): retried
      ``AMBIGUOUS_TRIES`` times, then spooled.
    - UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED, NOT_FOUND (the batch
      is fine, the credentials or the route are not) and FAILED_PRECONDITION
      (a collector too old for the batch's version): spooled at once.
    - INVALID_ARGUMENT, OUT_OF_RANGE, and a message
      larger than the collector accepts: the batch can never succeed; it is
      discarded, counted and logged.

    Without a spool, everything but the last kind is retried until it goes
    through (the agent's ring then fills and drops, counted) or, at
    shutdown, discarded and counted. While the spool holds a backlog, new
    batches are appended behind it so delivery stays in order, and the spool
    is replayed whenever the collector answers again; a replayed frame is
    kept until the collector takes it or refuses it for good.

    Every call's deadline and every pause is clamped to the shutdown
    deadline once one is set."""

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
        self._closed = False
        # One replayer at a time (the exporter thread, or close()).
        self._replay_lock = threading.Lock()
        self._replay_attempt = 0
        self._next_replay = 0.0
        self._say = _Throttle()
        self.recovered = 0  # records from earlier processes' spools, delivered
        self.spool_corrupt = 0  # records lost to spool damage (where a header told)
        self.spool_corrupt_stretches = 0  # damaged stretches skipped
        self.last_error = ""

    # -- one call ------------------------------------------------------------

    def _call_timeout(self) -> float | None:
        """This call's deadline: ``timeout_s``, clamped to the shutdown
        deadline; None when that has passed."""
        if self._deadline is None:
            return self.timeout_s
        left = self._deadline - time.monotonic()
        return min(self.timeout_s, left) if left > 0 else None

    def _send(self, data: bytes) -> str:
        """One Export call: "ok", or what :func:`classify` says."""
        timeout = self._call_timeout()
        if timeout is None:
            self.last_error = "shutdown deadline reached"
            return "retry"
        try:
            resp = self._export(data, timeout=timeout, compression=self._compression)
            _core.decode_export_response(resp)
            return "ok"
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = str(e.details() if hasattr(e, "details") else e)
            self.last_error = f"{code}: {details}"
            return classify(code, details)
        except Exception as e:
            self.last_error = repr(e)
            return "ambiguous"

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff_s, 0.05 * 2**attempt))

    def _sleep(self, seconds: float) -> None:
        if self._deadline is not None:
            seconds = min(seconds, max(self._deadline - time.monotonic(), 0.0))
        if seconds > 0:
            time.sleep(seconds)

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
        timeout = self._call_timeout()
        if timeout is None:
            return
        model, version, ref = self._reference
        try:
            call: Any = self._channel.unary_unary("/modeltap.v1.Collector/RegisterReference")
            call(_core.encode_reference_upload(model, version, ref), timeout=timeout)
            self._reference = None
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = str(e.details() if hasattr(e, "details") else e)
            if classify(code, details) == "never":
                self._rec.count_error()
                log.error("modeltap: collector refused the reference: %s", e)
                self._reference = None
        except Exception as e:
            self._rec.count_error()
            log.error("modeltap: registering the reference failed: %r", e)

    def deliver(self, data: bytes, n_records: int) -> str:
        self._register_reference()
        if self.spool is not None and self.spool.backlog():
            return SPOOL
        started = time.monotonic()
        attempt = 0
        ambiguous = 0
        while True:
            result = self._send(data)
            if result == "ok":
                return "shipped"
            if result == "never":
                self._rec.count_error()
                log.error(
                    "modeltap: collector %s refused a batch for good (%s); %d records discarded",
                    self.target,
                    self.last_error,
                    n_records,
                )
                return "discarded"
            if result == "held":
                self._say(
                    "held",
                    logging.ERROR,
                    "modeltap: collector %s does not take batches (%s); %s",
                    self.target,
                    self.last_error,
                    "spooling" if self.spool is not None else "retrying",
                )
                if self.spool is not None:
                    return SPOOL
            if result == "ambiguous":
                ambiguous += 1
                self._say(
                    "ambiguous",
                    logging.WARNING,
                    "modeltap: collector %s answered %s; retrying",
                    self.target,
                    self.last_error,
                )
                if ambiguous >= AMBIGUOUS_TRIES and self.spool is not None:
                    return SPOOL
            if self._give_up(started):
                if self.spool is not None:
                    self._say(
                        "unavailable",
                        logging.WARNING,
                        "modeltap: collector %s unavailable (%s); spooling",
                        self.target,
                        self.last_error,
                    )
                    return SPOOL
                log.error(
                    "modeltap: collector %s unavailable at shutdown (%s); %d records discarded",
                    self.target,
                    self.last_error,
                    n_records,
                )
                return "discarded"
            attempt += 1
            self._sleep(self._backoff(attempt))

    def idle(self) -> float | None:
        """Replays the spool when the collector answers again."""
        if self.spool is None or self._closed or not self.spool.backlog():
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

    def replay(self, lock_timeout: float = -1) -> bool:
        """Sends spooled frames in order until the spool is empty (True) or a
        call fails (False). Only one replay runs at a time; one that cannot
        get its turn within ``lock_timeout`` returns False."""
        if self.spool is None:
            return True
        if not self._replay_lock.acquire(timeout=lock_timeout):
            return False
        try:
            return self._replay(self.spool)
        finally:
            self._replay_lock.release()

    def _replay(self, spool: Spool) -> bool:
        while not self._closed and (nxt := spool.next()) is not None:
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
            if result == "ok":
                if adopted:
                    self.recovered += item.n_records
                else:
                    self._rec.unspool(item.n_records, "shipped")
            elif result == "never":
                self._rec.count_error()
                log.error(
                    "modeltap: collector %s refused a spooled batch for good (%s); "
                    "%d records discarded",
                    self.target,
                    self.last_error,
                    item.n_records,
                )
                if not adopted:
                    self._rec.unspool(item.n_records, "discarded")
            else:
                return False  # kept: tried again after a backoff
            spool.ack(item, adopted)
        return True

    def close(self, timeout_s: float) -> None:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        self._deadline = min(deadline, self._deadline or deadline)
        while self.spool is not None and self.spool.backlog() and time.monotonic() < deadline:
            if not self.replay(lock_timeout=max(deadline - time.monotonic(), 0.0)):
                break
        self._closed = True
        if self.spool is not None:
            # A replay still running on the exporter thread stops at its next
            # frame; wait for it so the locks are not released under it.
            got = self._replay_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0) + 0.5)
            self.spool.close()
            if got:
                self._replay_lock.release()
        self._channel.close()


class Exporter:
    """A daemon thread moving batches from a recorder to a destination.

    One taker at a time: the thread takes batches under ``_take_lock`` and
    registers the one it holds as ``_current``; ``close()`` takes over both
    (the batch in hand and those still queued) when its deadline passes, so
    every record ends up counted by the time it returns."""

    def __init__(self, recorder: _core.Recorder, destination: Destination) -> None:
        self._rec = recorder
        self.destination = destination
        self._thread = threading.Thread(target=self._run, name="modeltap-exporter", daemon=True)
        # Re-entrant: close() may run from a signal handler on a thread that
        # is inside one of these already.
        self._take_lock = threading.RLock()
        self._claim_lock = threading.RLock()
        self._current: tuple[int, int, bytes] | None = None
        self._abandoned = False
        self._say = _Throttle()
        self.spooled_records = 0  # records ever written to the spool

    def start(self) -> None:
        """Starts the thread."""
        self._thread.start()

    def _spool_batch(self, data: bytes, n: int) -> str:
        """Appends a batch to the destination's spool: "spooled", or
        "dropped_spool" (over the cap, or the write failed)."""
        spool = self.destination.spool
        if spool is None:
            return "discarded"
        try:
            if spool.append(data, n):
                self.spooled_records += n
                return "spooled"
            self._say(
                "spool-full",
                logging.WARNING,
                "modeltap: spool full; %d records dropped",
                n,
            )
        except OSError as e:
            self._rec.count_error()
            self._say(
                "spool-error",
                logging.ERROR,
                "modeltap: spool write failed (%s); %d records dropped",
                e,
                n,
            )
        return "dropped_spool"

    def _deliver(self, seq: int, n: int, data: bytes) -> None:
        try:
            outcome = self.destination.deliver(data, n)
        except BaseException:  # nothing one batch does may end this thread
            self._rec.count_error()
            log.exception("modeltap: delivery failed; %d records discarded", n)
            outcome = "discarded"
        with self._claim_lock:
            if self._current is None or self._current[0] != seq:
                return  # close() took this batch over and counted it
            if outcome == SPOOL:
                outcome = self._spool_batch(data, n)
            self._rec.settle(seq, outcome)
            self._current = None

    def _run(self) -> None:
        wait = 1.0
        while True:
            with self._take_lock:
                if self._abandoned:
                    return
                item = self._rec.take_batch(wait)
                if item is not None:
                    self._current = item
            if item is not None:
                self._deliver(*item)
            elif self._rec.finished():
                return
            try:
                again = self.destination.idle()
            except BaseException:
                self._rec.count_error()
                log.exception("modeltap: spool replay failed")
                again = 1.0
            wait = 1.0 if again is None else min(max(again, 0.0), 1.0)

    def close(self, timeout_s: float) -> None:
        """Waits up to ``timeout_s`` for the thread to deliver what the
        (already shut down) recorder queued. Whatever is still queued or in
        the thread's hands then goes to the destination's spool if it has
        one, else is discarded; either way it is counted, and a warning says
        how many records it was."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        self.destination.set_deadline(deadline)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        fates: dict[str, int] = {}

        def settle(seq: int, n: int, data: bytes) -> None:
            outcome = self._spool_batch(data, n) if self.destination.spool else "discarded"
            if self._rec.settle(seq, outcome):
                fates[outcome] = fates.get(outcome, 0) + n

        # The thread takes a batch within at most its wait (one second); the
        # recorder is shut down, so that take returns at once.
        if self._take_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0) + 2.0):
            try:
                self._abandoned = True
                with self._claim_lock:
                    current, self._current = self._current, None
                if current is not None:
                    settle(*current)
                while (item := self._rec.take_batch(0.0)) is not None:
                    settle(*item)
            finally:
                self._take_lock.release()
        else:  # never seen; the counters will show what is left pending
            self._rec.count_error()
            log.error("modeltap: exporter thread unresponsive at shutdown")
        if fates:
            log.warning(
                "modeltap: shutdown timeout reached; %d records not delivered (%s)",
                sum(fates.values()),
                ", ".join(f"{k} {v}" for k, v in sorted(fates.items())),
            )
        self.destination.close(max(deadline - time.monotonic(), 0.0))
