"""The agent's lifecycle: starting its recorder and threads, flush,
close, re-initialisation in a forked child, and the process-wide closing of
every live agent at interpreter exit and on SIGTERM."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import weakref
from typing import TYPE_CHECKING

from modeltap import _core, tracing
from modeltap._agent_state import _AgentState
from modeltap.exporter import (
    Destination,
    DiscardDestination,
    Exporter,
    GrpcDestination,
    SinkDestination,
)
from modeltap.spool import open_spool
from modeltap.system import SystemReading, SystemSampler

if TYPE_CHECKING:
    from modeltap.agent import Agent

log = logging.getLogger("modeltap")

_live: weakref.WeakSet[Agent] = weakref.WeakSet()
# Recorders inherited from a parent process across fork(). Their threads do
# not exist in the child, and a lock may have been held by one of them at the
# moment of the fork, so they are never touched again, not even to be freed.
_abandoned: list[object] = []


def _after_fork_in_child() -> None:
    _core._after_fork()
    for agent in list(_live):
        agent._reinit_after_fork()


def _close_one(agent: Agent, timeout_s: float | None = None) -> None:
    try:
        agent.close(timeout_s)
    except Exception:
        with contextlib.suppress(Exception):
            agent._rec.count_error()
        log.exception("modeltap: closing agent %r failed", getattr(agent, "model", "?"))


def _close_all_at_exit() -> bool:
    """Closes every live agent, all at once under one deadline (the longest
    ``shutdown_timeout`` among them): six agents whose collector does not
    answer take one timeout, not six, so each spools or counts what it held
    within a pod's grace period. One that fails is counted and logged and
    does not leave the others open. Returns True when an agent was left
    alone because its ``close()`` is in progress lower on this thread's
    stack (a signal handler interrupted it)."""
    interrupted = False
    agents: list[Agent] = []
    for agent in list(_live):
        try:
            if agent._closing_on_this_thread():
                interrupted = True
                continue
        except Exception:
            continue
        agents.append(agent)
    if not agents:
        return interrupted
    budget = max(a.shutdown_timeout for a in agents)
    deadline = time.monotonic() + budget
    if len(agents) == 1:
        _close_one(agents[0])
        return interrupted
    threads: list[threading.Thread] = []
    for agent in agents:
        t = threading.Thread(target=_close_one, args=(agent,), name="modeltap-close", daemon=True)
        try:
            t.start()
        except RuntimeError:  # no new threads at this point of shutdown
            _close_one(agent, max(deadline - time.monotonic(), 0.0))
            continue
        threads.append(t)
    for t in threads:
        # each close() ends within its own timeout; a little slack for the
        # spooling and counting that follow it
        t.join(max(deadline - time.monotonic(), 0.0) + 1.0)
    return interrupted


_sigterm_installed = False
# A SIGTERM that arrived while close() ran on the main thread: acted on once
# that close() has finished.
_sigterm_deferred = False
# Thread ident -> close() calls in progress on that thread.
_closing_depth: dict[int, int] = {}


def _on_sigterm(signum: int, frame: object) -> None:
    """Delivers (or spools) what the agents hold, then dies of SIGTERM as the
    process would have without modeltap. A handler that interrupted a
    ``close()`` cannot wait for it (it is lower on the same stack): it closes
    the other agents and leaves dying to that ``close()`` when it ends."""
    global _sigterm_deferred
    if _close_all_at_exit():
        _sigterm_deferred = True
        return
    _sigterm_deferred = False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    """Only where nobody else handles SIGTERM: servers that install their own
    handler exit through it, and interpreter exit closes the agents."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True
    except (ValueError, OSError):
        pass


def _seconds(value: float, what: str) -> float:
    """A timeout argument: NaN is an error, negative means 0, and anything
    beyond a (very generous) bound is clamped so that native durations never
    overflow."""
    t = float(value)
    if t != t:
        raise ValueError(f"{what} must be a number of seconds, not NaN")
    return min(max(t, 0.0), _MAX_TIMEOUT_S)


_MAX_TIMEOUT_S = 1e9


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


class _AgentLifecycle(_AgentState):
    """Starting, flushing and closing an agent, and its fresh start in a
    forked child."""

    def _start(self) -> None:
        self.agent_id = _core.random_id()
        self.pid = os.getpid()
        self.start_unix_nano = time.time_ns()
        self._rec = _core.Recorder(
            model=self.model,
            version=self.version,
            agent_id=self.agent_id,
            params=self.params,
            host=socket.gethostname(),
            pid=self.pid,
            start_unix_nano=self.start_unix_nano,
            agent_version=_core.__version__,
            features=self._features,
            categorical=self._categorical,
            strict=self.strict,
            **self._cfg,
        )
        if self._capture_bytes > 0:
            self._rec.set_capture(
                tracing.make_capture(self._capture_bytes, self._redact, self._rec.count_error)
            )
        # The hot path: no Python frame between the caller and the ring.
        self.log = self._rec.log
        self.__dict__["span"] = self._rec.span  # Agent.span, without a frame
        dest: Destination
        if self.collector is not None:
            spool = (
                open_spool(
                    self._spool_dir, self.agent_id, self._spool_max_bytes, self._rec.count_error
                )
                if self._spool_dir is not None
                else None
            )
            dest = GrpcDestination(
                self.collector,
                self._rec,
                spool=spool,
                compression=self._compression,
                timeout_s=self._export_timeout,
                retry_window_s=self._retry_window,
                reference=(
                    (self.model, self.version, self.reference.to_bytes())
                    if self.reference is not None
                    else None
                ),
            )
        elif self._sink is not None:
            dest = SinkDestination(self._sink, self._rec.count_error)
        else:
            dest = DiscardDestination()
        self._exporter = Exporter(self._rec, dest)
        self._exporter.start()
        self._sampler: SystemSampler | None = None
        if self._metrics_interval is not None:
            self._sampler = SystemSampler(
                self._emit_system, self._metrics_interval, on_error=self._rec.count_error
            )
            self._sampler.start()

    def _emit_system(self, r: SystemReading) -> None:
        gpus = None
        if r.gpus is not None:
            gpus = [
                (
                    g.index,
                    g.name,
                    g.utilization_percent,
                    g.memory_used_bytes,
                    g.memory_total_bytes,
                    g.temperature_celsius,
                )
                for g in r.gpus
            ]
        self._rec.add_system_sample(
            unix_nano=r.unix_nano,
            process_cpu_percent=r.process_cpu_percent,
            rss_bytes=r.rss_bytes,
            threads=r.threads,
            system_cpu_percent=r.system_cpu_percent,
            system_memory_used_bytes=r.system_memory_used_bytes,
            system_memory_total_bytes=r.system_memory_total_bytes,
            gpus=gpus,
        )

    def _reinit_after_fork(self) -> None:
        """In a forked child: a new agent id, an empty ring, fresh threads.
        What was in the parent's ring is the parent's to ship."""
        if self._closed:
            return
        # The parent's recorder, exporter (its gRPC channel, its spool's
        # locks) stay referenced so that nothing of theirs runs in the child.
        parent = self._rec
        _abandoned.append((parent, self._exporter))
        # The child keeps the schema its parent's first record fixed (read
        # without locks: the schema is set once and never changes).
        names = parent.feature_names
        if names is not None:
            self._features = list(names)
            self._categorical = list(parent.categorical)
        self._start()
        # A bound `agent.log` the user took before the fork still points at
        # the parent's recorder: send everything it gets to the child's.
        parent.forward_to(self._rec)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Blocks until every record logged before the call has been
        acknowledged by its destination, retrying while ``timeout_s`` lasts.
        With a collector and a spool, batches the collector did not take
        within the retry window are in the spool (durable, replayed later).
        Returns True when every such record is settled with nothing left to
        wait for: delivered (spool included), or refused by the collector for
        good and counted in ``discarded``.
        Raises ValueError for a NaN timeout; an infinite one waits as long
        as it takes."""
        timeout = _seconds(timeout_s, "timeout_s")
        deadline = time.monotonic() + timeout
        ok = bool(self._rec.flush(timeout))
        spool = self._exporter.destination.spool
        while spool is not None and spool.pending_records() and time.monotonic() < deadline:
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0.0)))
        return ok and (spool is None or spool.pending_records() == 0)

    def close(self, timeout_s: float | None = None) -> None:
        """Delivers what is in the ring within ``timeout_s`` (default
        ``shutdown_timeout``) and stops the agent's threads. What could not
        be delivered by then is spooled (with a spool) or counted as
        ``discarded``, with a warning giving the count: afterwards
        ``pending`` is 0 and the counters add up. Records logged afterwards
        are counted as dropped. Idempotent; a second caller waits for the
        first to finish, and a call re-entering from a signal handler that
        interrupted this one returns at once."""
        timeout = _seconds(self.shutdown_timeout if timeout_s is None else timeout_s, "timeout_s")
        me = threading.get_ident()
        # A lock-free test-and-set (one dict operation under the GIL): a
        # signal handler running close() on a thread that is already inside
        # close() must neither wait for itself nor start a second one.
        token = object()
        done: threading.Event = self.__dict__.setdefault("_close_done", threading.Event())
        if self.__dict__.setdefault("_close_token", token) is not token:
            if self.__dict__.get("_close_thread") != me:
                done.wait(timeout + 1.0)
            return
        self._close_thread = me
        self._closed = True
        _closing_depth[me] = _closing_depth.get(me, 0) + 1
        try:
            deadline = time.monotonic() + timeout
            if self._sampler is not None:
                self._sampler.stop(min(1.0, timeout))
            self._rec.shutdown()
            self._exporter.close(max(deadline - time.monotonic(), 0.0))
        finally:
            done.set()
            depth = _closing_depth.get(me, 1) - 1
            if depth:
                _closing_depth[me] = depth
            else:
                _closing_depth.pop(me, None)
                if _sigterm_deferred and threading.current_thread() is threading.main_thread():
                    _on_sigterm(signal.SIGTERM, None)

    def _closing_on_this_thread(self) -> bool:
        """True while this thread is inside this agent's close()."""
        done = self.__dict__.get("_close_done")
        return (
            self.__dict__.get("_close_thread") == threading.get_ident()
            and done is not None
            and not done.is_set()
        )
