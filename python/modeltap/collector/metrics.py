"""The collector's HTTP port: ``/metrics`` in the Prometheus exposition
format (through ``prometheus-client``), ``/healthz`` and ``/readyz``.

Two kinds of figures:

- Live ones, read at each scrape from the server and its store writer:
  batches and records ingested, duplicates, refusals, pending bytes, OTLP
  spans in and forwarded, the store's size, ingest lag.
- Figures of the store, computed every ``refresh_s`` by a job on the store
  writer's thread (a scrape never touches DuckDB) and kept as a snapshot:
  per model and version, predictions, errors by type, predicted classes,
  prediction latency and stage latency histograms (from the window
  profiles, read incrementally: each stored profile is added once), drift
  per feature over the last ``drift_window_s`` (the statistic and the
  decision), and the latest system sample of every agent.

Label cardinality is bounded: no request or trace ids; per model at most
``MAX_FEATURES`` features (those with the largest PSI; the rest are
summed up in ``modeltap_features_drifted``), ``MAX_CLASSES`` classes and
``MAX_ERROR_TYPES`` error types (the rest under ``"other"``); stage names
are at most 64 per window profile already.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from modeltap import _core

log = logging.getLogger("modeltap.collector")

MAX_FEATURES = 100
MAX_STAGES = 64  # stage names per model and version (the rest: "(other)")
OTHER_STAGE = "(other)"
MAX_LABEL = 200  # characters of a label value kept
PROFILES_PER_STEP = 2048  # stored profiles read per job of a refresh
PREDICTIONS_PER_STEP = 1_000_000  # prediction rows counted per job of a refresh
MAX_DRIFT_SERIES = 64  # (model, version) pairs whose drift a refresh computes
# HTTP: a connection must send its whole request head within
# REQUEST_HEAD_S; at most MAX_WAITING connections wait for theirs (past
# that the one waiting longest is dropped for the newcomer, so a client
# dribbling bytes cannot hold the port); at most MAX_CONNECTIONS requests
# for pages and /metrics are served at once (more get 503); /healthz and
# /readyz are never refused.
MAX_CONNECTIONS = 64
MAX_WAITING = 128
REQUEST_HEAD_S = 5.0
HTTP_TIMEOUT_S = 10.0  # each send or receive
HEALTH_PATHS = ("/healthz", "/readyz")
MAX_CLASSES = 20
MAX_ERROR_TYPES = 20
OTHER = "other"
# Latency buckets of the profiles are 2^(1/4) µs apart; Prometheus buckets
# take every fourth: 1 µs, 2 µs, ... 2^23 µs (8.4 s), then +Inf.
BOUNDS = [(2.0**k) * 1e-6 for k in range(24)]


def histogram_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets of profile latency counts."""
    out = []
    total = 0
    upto = 0
    for k, le in enumerate(BOUNDS):
        last = 4 * k  # bucket j covers up to 2^(j/4) µs
        while upto <= last and upto < len(counts):
            total += counts[upto]
            upto += 1
        out.append((repr(le), float(total)))
    out.append(("+Inf", float(sum(counts))))
    return out


class StoreFigures:
    """Figures of the store, refreshed incrementally by short jobs, one at a
    time, on the collector's read threads (read-only transactions beside
    the writer, never on its thread); each job reads a bounded amount (the
    profiles and predictions not read yet, a step at a time; drift of at
    most ``MAX_DRIFT_SERIES`` models), so the first refresh over a large
    store is many short jobs. Each finished refresh publishes a copy
    (``snapshot``) that scrapes read, so a scrape never sees one
    half-updated."""

    def __init__(self, drift_window_s: float) -> None:
        self.drift_window_s = drift_window_s
        self.last_profile_rowid = -1
        self.last_prediction_rowid = -1
        self.snapshot: StoreFigures | None = None
        self.latency: dict[tuple[str, str], dict[str, Any]] = {}
        self.stages: dict[tuple[str, str, str, bool], dict[str, Any]] = {}
        self.stage_names: dict[tuple[str, str], set[str]] = {}
        self.classes: dict[tuple[str, str], dict[str, int]] = {}
        self.models: list[tuple[str, str, int, int]] = []
        self.errors: list[tuple[str, str, str, int]] = []
        self.drift: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.system: list[dict[str, Any]] = []
        self.agents: list[dict[str, Any]] = []
        self.refreshed_at = 0.0

    def refresh(self, con: Any) -> None:
        """One whole refresh in one job (tests; the server runs it in steps)."""
        while self.step_profiles(con):
            pass
        while self.step_classes(con):
            pass
        self.finish(con)

    def finish(self, con: Any) -> None:
        """The rest of a refresh (bounded queries), then publishes it."""
        self.models = [
            (str(m), str(v), int(r or 0), int(b))
            for m, v, r, b in con.execute(
                "SELECT model, version, sum(n_records), count(*) FROM batches "
                "WHERE model IS NOT NULL GROUP BY ALL ORDER BY ALL"
            ).fetchall()
        ]
        errs = con.execute(
            "SELECT model, version, coalesce(error_type, ''), count(*) AS n FROM errors "
            "GROUP BY ALL ORDER BY n DESC"
        ).fetchall()
        self.errors = _cap_labels([(m, v, t, n) for m, v, t, n in errs], MAX_ERROR_TYPES)
        self._drift(con)
        self.system = [
            dict(zip(("model", "version", "agent_id", "host", "gpu_index"), r[:5], strict=True))
            | dict(
                zip(
                    (
                        "process_cpu_percent",
                        "rss_bytes",
                        "gpu_utilization_percent",
                        "gpu_memory_used_bytes",
                    ),
                    r[5:],
                    strict=True,
                )
            )
            for r in con.execute(
                "SELECT model, version, agent_id, host, gpu_index, process_cpu_percent, "
                "rss_bytes, gpu_utilization_percent, gpu_memory_used_bytes FROM system_metrics "
                "WHERE ts > now() - INTERVAL 5 MINUTE "
                "QUALIFY row_number() OVER (PARTITION BY agent_id, gpu_index ORDER BY ts DESC) = 1"
            ).fetchall()
        ]
        cur = con.execute(
            "SELECT * EXCLUDE (ts, batch_seq) FROM agent_counters "
            "WHERE ts > now() - INTERVAL 15 MINUTE "
            # the counters of the batch stored last (a forged batch_seq
            # cannot pin them; the agent's next batch replaces them)
            "QUALIFY row_number() OVER (PARTITION BY agent_id ORDER BY rowid DESC) = 1"
        )
        names = [x[0] for x in cur.description or ()]
        self.agents = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        self.refreshed_at = time.time()
        self.publish()

    def publish(self) -> None:
        """Copies the working state into ``snapshot`` (one assignment)."""
        snap = StoreFigures(self.drift_window_s)
        snap.latency = copy.deepcopy(self.latency)
        snap.stages = copy.deepcopy(self.stages)
        snap.classes = copy.deepcopy(self.classes)
        snap.models = list(self.models)
        snap.errors = list(self.errors)
        snap.drift = list(self.drift)
        snap.system = list(self.system)
        snap.agents = list(self.agents)
        snap.refreshed_at = self.refreshed_at
        self.snapshot = snap

    def step_profiles(self, con: Any) -> bool:
        """Adds up to PROFILES_PER_STEP stored profiles not read yet; returns
        whether more remain (a big store is read over many short jobs, so
        batches waiting for the writer go between them)."""
        cur = con.execute(
            "SELECT rowid, model, version, profile FROM window_profiles WHERE rowid > ? "
            "ORDER BY rowid LIMIT ?",
            [self.last_profile_rowid, PROFILES_PER_STEP],
        )
        n = 0
        while chunk := cur.fetchmany(1024):
            n += len(chunk)
            by_model: dict[tuple[str, str], list[bytes]] = {}
            for rowid, m, v, blob in chunk:
                by_model.setdefault((str(m), str(v)), []).append(bytes(blob))
                self.last_profile_rowid = max(self.last_profile_rowid, int(rowid))
            for key, blobs in by_model.items():
                try:
                    rec = _core.record_latency(blobs)
                    stages = _core.stage_latency(blobs)
                except _core.BatchDecodeError:
                    continue  # a damaged part: left out, as drift does
                acc = self.latency.setdefault(
                    key, {"records": 0, "errors": 0, "counts": [0] * 96, "sum": 0.0}
                )
                acc["records"] += rec["records"]
                acc["errors"] += rec["errors"]
                if math.isfinite(rec["sum"]) and rec["sum"] >= 0:
                    acc["sum"] += rec["sum"]
                acc["counts"] = [a + b for a, b in zip(acc["counts"], rec["counts"], strict=False)]
                for st in stages:
                    name = _label(st["name"])
                    named = self.stage_names.setdefault(key, set())
                    if name not in named:
                        if len(named) >= MAX_STAGES:
                            name = OTHER_STAGE
                        named.add(name)
                    skey = (*key, name, bool(st["root"]))
                    have = self.stages.setdefault(skey, {"counts": [0] * 96, "sum": 0.0})
                    have["counts"] = [
                        a + b for a, b in zip(have["counts"], st["counts"], strict=False)
                    ]
                    if math.isfinite(st["sum"]) and st["sum"] >= 0:
                        have["sum"] += st["sum"]
        return n >= PROFILES_PER_STEP

    def step_classes(self, con: Any) -> bool:
        """Counts the classes of up to PREDICTIONS_PER_STEP predictions not
        counted yet; returns whether more remain."""
        row = con.execute("SELECT max(rowid) FROM predictions").fetchone()
        top = int(row[0]) if row and row[0] is not None else -1
        if top <= self.last_prediction_rowid:
            return False
        upto = min(top, self.last_prediction_rowid + PREDICTIONS_PER_STEP)
        # Classes: labels, or integral predictions (class ids); a regression
        # model's values are no classes. The first MAX_CLASSES seen keep
        # their own series (a counter's labels never move), the rest "other".
        for m, v, cls, n in con.execute(
            "SELECT model, version, coalesce(prediction_label, CASE WHEN prediction = "
            "floor(prediction) AND abs(prediction) < 1e15 THEN CAST(CAST(prediction AS BIGINT) "
            "AS VARCHAR) END) AS cls, count(*) FROM predictions WHERE rowid > ? AND rowid <= ? "
            "GROUP BY ALL HAVING cls IS NOT NULL",
            [self.last_prediction_rowid, upto],
        ).fetchall():
            counts = self.classes.setdefault((str(m), str(v)), {})
            name = _label(cls)
            if name not in counts and len(counts) >= MAX_CLASSES:
                name = OTHER
            counts[name] = counts.get(name, 0) + int(n)
        self.last_prediction_rowid = upto
        return upto < top

    def _drift(self, con: Any) -> None:
        from modeltap.analysis import drift_over_range
        from modeltap.collector.reader import CursorReads

        since = time.time_ns() - int(self.drift_window_s * 1e9)
        out = []
        # Only models with profiles in the window, at most MAX_DRIFT_SERIES
        # (those with the most records): registering references under many
        # names cannot make a refresh compute drift for each.
        pairs = con.execute(
            "SELECT w.model, w.version FROM window_profiles w "
            "WHERE w.window_start >= make_timestamptz(? // 1000) "
            'AND EXISTS (SELECT 1 FROM "references" r '
            "WHERE r.model = w.model AND r.version = w.version) "
            "GROUP BY ALL ORDER BY sum(w.records) DESC, 1, 2 LIMIT ?",
            [since, MAX_DRIFT_SERIES],
        ).fetchall()
        for model, version in pairs:
            try:
                data = drift_over_range(CursorReads(con), str(model), str(version), since, None)
            except (LookupError, ValueError):
                continue  # nothing in the window, or nothing usable
            except Exception:
                log.debug("drift for %s %s left out of /metrics", model, version, exc_info=True)
                continue
            out.append((str(model), str(version), list(data["columns"])))
        self.drift = out


def _cap_labels(rows: list[tuple[Any, Any, Any, int]], cap: int) -> list[tuple[str, str, str, int]]:
    """(model, version, label, n) rows, at most ``cap`` labels per model and
    version (the most frequent; the rest summed under "other")."""
    kept: dict[tuple[str, str], dict[str, int]] = {}
    for m, v, label, n in rows:
        per = kept.setdefault((str(m), str(v)), {})
        name = str(label)
        if name not in per and len(per) >= cap:
            name = OTHER
        per[name] = per.get(name, 0) + int(n)
    return [(m, v, lab, n) for (m, v), per in kept.items() for lab, n in per.items()]


def _label(x: Any) -> str:
    """A label value, cut to MAX_LABEL characters."""
    s = str(x)
    return s if len(s) <= MAX_LABEL else s[: MAX_LABEL - 1] + "…"


def _labels(*xs: Any) -> list[str]:
    return [_label(x) for x in xs]


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class _Collector:
    """prometheus-client's custom collector over the server and the snapshot."""

    def __init__(self, server: Any, figures: StoreFigures) -> None:
        self.server = server
        self.figures = figures

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s, w = self.server, self.server.writer
        f = self.figures.snapshot or StoreFigures(self.figures.drift_window_s)
        c = CounterMetricFamily
        g = GaugeMetricFamily
        yield c("modeltap_batches_ingested", "Batches stored.", value=w.stored_batches)
        yield c("modeltap_records_ingested", "Records stored.", value=w.stored_records)
        yield c("modeltap_duplicate_batches", "Batches received again.", value=w.duplicates)
        yield c("modeltap_export_calls", "Export calls received.", value=s.received)
        refused = c("modeltap_exports_refused", "Calls refused, by reason.", labels=["reason"])
        refused.add_metric(["invalid"], s.rejected)
        refused.add_metric(["overloaded"], s.shed - s.memory.shed)
        refused.add_metric(["memory"], s.memory.shed)
        refused.add_metric(["internal"], s.internal)
        yield refused
        yield g("modeltap_pending_bytes", "Bytes received, not yet stored.", value=s.pending_bytes)
        yield c("modeltap_otlp_spans_received", "OTLP spans stored.", value=s.otlp_received)
        yield c("modeltap_otlp_spans_rejected", "OTLP spans refused.", value=s.otlp_rejected)
        if s.forwarder is not None:
            st = s.forwarder.stats()
            fwd = c("modeltap_otlp_spans_forwarded", "Spans forwarded.", labels=["outcome"])
            fwd.add_metric(["sent"], st["sent"])
            fwd.add_metric(["dropped"], st["dropped"])
            yield fwd
        yield g("modeltap_store_size_bytes", "Store file and its WAL.", value=_store_bytes(w.path))
        yield g("modeltap_ready", "1 while batches can be stored.", value=float(s.serving()[0]))
        lag = g(
            "modeltap_ingest_lag_seconds",
            "Seconds from a batch's creation to its storage, the latest batch.",
        )
        if w.last_lag_s is not None:
            lag.add_metric([], w.last_lag_s)
        yield lag
        yield g(
            "modeltap_metrics_refreshed_timestamp_seconds",
            "When the store figures below were computed.",
            value=f.refreshed_at,
        )
        yield from self._store(f)

    def _store(self, f: StoreFigures) -> Iterator[Metric]:
        mv = ["model", "version"]
        preds = CounterMetricFamily("modeltap_predictions", "Predictions stored.", labels=mv)
        batches = CounterMetricFamily("modeltap_batches", "Batches stored.", labels=mv)
        for m, v, r, b in f.models:
            preds.add_metric(_labels(m, v), r)
            batches.add_metric(_labels(m, v), b)
        yield preds
        yield batches
        errs = CounterMetricFamily(
            "modeltap_prediction_errors", "Predictions logged with an error.", labels=[*mv, "type"]
        )
        for m, v, t, n in f.errors:
            errs.add_metric(_labels(m, v, t), n)
        yield errs
        cls = CounterMetricFamily(
            "modeltap_predictions_by_class",
            "Predictions by predicted class.",
            labels=[*mv, "class"],
        )
        for (m, v), counts in f.classes.items():
            for name, n in counts.items():
                cls.add_metric(_labels(m, v, name), n)
        yield cls
        lat = HistogramMetricFamily(
            "modeltap_prediction_latency_seconds", "Prediction latency.", labels=mv
        )
        for (m, v), acc in f.latency.items():
            lat.add_metric(_labels(m, v), histogram_buckets(acc["counts"]), sum_value=acc["sum"])
        yield lat
        stage = HistogramMetricFamily(
            "modeltap_stage_latency_seconds",
            "Span durations per stage (end_to_end: spans that began their trace).",
            labels=[*mv, "stage", "end_to_end"],
        )
        for (m, v, name, root), acc in f.stages.items():
            stage.add_metric(
                _labels(m, v, name, "true" if root else "false"),
                histogram_buckets(acc["counts"]),
                sum_value=acc["sum"],
            )
        yield stage
        stat = GaugeMetricFamily(
            "modeltap_feature_drift",
            f"Drift statistic per feature over the last window (at most {MAX_FEATURES} "
            "features per model: those with the largest PSI).",
            labels=[*mv, "feature", "statistic"],
        )
        drifted = GaugeMetricFamily(
            "modeltap_feature_drifted",
            "1 where the feature's drift decision is drifted.",
            labels=[*mv, "feature"],
        )
        total = GaugeMetricFamily(
            "modeltap_features_drifted", "Features (and outputs) drifted, all of them.", labels=mv
        )
        for m, v, cols in f.drift:
            total.add_metric(_labels(m, v), sum(1 for c in cols if c.get("drifted")))
            ranked = sorted(cols, key=lambda c: -(_finite(c.get("psi")) or 0.0))
            for col in ranked[:MAX_FEATURES]:
                name = str(col["feature"])
                for key in ("psi", "ks", "js", "wasserstein", "hellinger", "chi2"):
                    val = _finite(col.get(key))
                    if val is not None:
                        stat.add_metric(_labels(m, v, name, key), val)
                drifted.add_metric(_labels(m, v, name), 1.0 if col.get("drifted") else 0.0)
        yield stat
        yield drifted
        yield total
        agent_labels = ["model", "version", "agent_id", "host"]
        gauge = GaugeMetricFamily
        cpu = gauge("modeltap_agent_cpu_percent", "Agent process CPU.", labels=agent_labels)
        rss = gauge("modeltap_agent_rss_bytes", "Agent process RSS.", labels=agent_labels)
        gpu_l = [*agent_labels, "gpu"]
        gu = gauge("modeltap_agent_gpu_utilization_percent", "GPU use.", labels=gpu_l)
        gm = gauge("modeltap_agent_gpu_memory_used_bytes", "GPU memory used.", labels=gpu_l)
        seen: set[str] = set()
        for row in f.system:
            labels = _labels(*(row[k] or "" for k in agent_labels))
            if row["agent_id"] not in seen:
                seen.add(row["agent_id"])
                if (x := _finite(row["process_cpu_percent"])) is not None:
                    cpu.add_metric(labels, x)
                if (x := _finite(row["rss_bytes"])) is not None:
                    rss.add_metric(labels, x)
            if row["gpu_index"] is not None:  # absent without NVML: no series, never 0
                if (x := _finite(row["gpu_utilization_percent"])) is not None:
                    gu.add_metric([*labels, str(row["gpu_index"])], x)
                if (x := _finite(row["gpu_memory_used_bytes"])) is not None:
                    gm.add_metric([*labels, str(row["gpu_index"])], x)
        yield from (cpu, rss, gu, gm)
        # What agents counted themselves (each batch carries its agent's
        # counters; agents seen in the last 15 minutes).
        logged = CounterMetricFamily(
            "modeltap_agent_records_logged", "Records handed to each agent.", labels=agent_labels
        )
        dropped = CounterMetricFamily(
            "modeltap_agent_records_dropped",
            "Records an agent could not deliver, by reason (full: its ring or memory budget; "
            "spool: its spool was full; discarded: refused for good or left at close; "
            "invalid: rejected).",
            labels=[*agent_labels, "reason"],
        )
        spans_dropped = CounterMetricFamily(
            "modeltap_agent_spans_dropped",
            "Spans an agent dropped (no room) or lost (with a discarded batch).",
            labels=agent_labels,
        )
        for row in f.agents:
            labels = _labels(*(row[k] or "" for k in agent_labels))
            logged.add_metric(labels, row["logged"])
            for reason, key in (
                ("full", "dropped_full"),
                ("spool", "dropped_spool"),
                ("discarded", "discarded"),
                ("invalid", "invalid"),
            ):
                dropped.add_metric([*labels, reason], row[key])
            spans_dropped.add_metric(labels, row["spans_dropped"] + row["spans_lost"])
        yield from (logged, dropped, spans_dropped)


def _store_bytes(path: Any) -> float:
    total = 0
    for p in (str(path), str(path) + ".wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(p)
    return float(total)


class _QuietHandler(WSGIRequestHandler):
    timeout = HTTP_TIMEOUT_S

    def parse_request(self) -> bool:
        ok = bool(super().parse_request())
        server: _ThreadingServer = self.server  # type: ignore[assignment]
        server.head_received(self.connection)
        return ok

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _ThreadingServer(WSGIServer):
    """A thread per connection, each with a deadline for its request head
    (REQUEST_HEAD_S) and a timeout per send or receive; at most MAX_WAITING
    connections waiting for their head (the one waiting longest is dropped
    for a newcomer) and MAX_CONNECTIONS page or /metrics requests at once,
    health never refused: slow, idle or dribbling clients cannot hold the
    port, threads or file descriptors."""

    daemon_threads = True
    request_queue_size = 256  # the listen backlog (socketserver's default is 5)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.serving_slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._waiting: dict[Any, float] = {}  # socket -> accepted at (oldest first)
        self.dropped_slow = 0  # connections dropped for not sending their head

    def process_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HTTP_TIMEOUT_S)
        with self._lock:
            evict = None
            if len(self._waiting) >= MAX_WAITING:
                evict = next(iter(self._waiting))
                del self._waiting[evict]
                self.dropped_slow += 1
            self._waiting[request] = time.monotonic()
        if evict is not None:
            _drop(evict)
        t = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        t.start()

    def head_received(self, request: Any) -> None:
        with self._lock:
            self._waiting.pop(request, None)

    def _late(self, request: Any) -> None:
        with self._lock:
            if self._waiting.pop(request, None) is None:
                return  # its head came in time
            self.dropped_slow += 1
        _drop(request)

    def _handle(self, request: Any, client_address: Any) -> None:
        timer = threading.Timer(REQUEST_HEAD_S, self._late, (request,))
        timer.daemon = True
        timer.start()
        try:
            self.finish_request(request, client_address)
        except Exception:
            log.debug("http: a request failed", exc_info=True)
        finally:
            timer.cancel()
            self.head_received(request)
            self.shutdown_request(request)


def _drop(sock: Any) -> None:
    """Ends a connection another thread is reading (its read returns)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Pages:
    """The collector's live pages: ``/`` (every model in the store) and
    ``/models/NAME?version=V&since=1h&until=...`` (the model's report, built
    from the store when opened; plotly.js from ``/static/plotly.min.js``)."""

    PLOTLY = "/static/plotly.min.js"

    def __init__(self, server: Any) -> None:
        from modeltap.collector.reader import CollectorReads

        self.reads = CollectorReads(server.reader)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        from urllib.parse import parse_qs

        from modeltap import report
        from modeltap.collector.reader import lower_priority

        # Each request has a thread of its own (the server's ThreadingMixIn):
        # merging profiles and rendering run below ingestion, as reads do.
        lower_priority()
        path = environ.get("PATH_INFO", "")
        html_type = ("Content-Type", "text/html; charset=utf-8")
        try:
            if path == self.PLOTLY:
                body = report.plotly_js().encode()
                start_response(
                    "200 OK",
                    [
                        ("Content-Type", "text/javascript; charset=utf-8"),
                        ("Cache-Control", "public, max-age=86400"),
                    ],
                )
                return [body]
            if path == "/":
                page = report.index_html(self.reads.models())
                start_response("200 OK", [html_type, ("Cache-Control", "no-store")])
                return [page.encode()]
            if path.startswith("/models/") and len(path) > len("/models/"):
                # PATH_INFO is already percent-decoded (as Latin-1 bytes)
                name = path[len("/models/") :].encode("latin-1").decode("utf-8", "replace")
                q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
                rep = report.Report.build(
                    self.reads,
                    name,
                    q.get("version") or None,
                    q.get("since") or None,
                    q.get("until") or None,
                )
                page = rep.to_html(plotly_src=self.PLOTLY)
                start_response("200 OK", [html_type, ("Cache-Control", "no-store")])
                return [page.encode()]
        except LookupError as e:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: {e}\n".encode()]
        except (ValueError, TypeError) as e:
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"bad request: {e}\n".encode()]
        except Exception as e:
            log.warning("page %s failed", path, exc_info=True)
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")]
            )
            return [f"cannot build the page now: {type(e).__name__}: {e}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]


class MetricsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on ``listen`` (HOST:PORT;
    port 0 picks one), with the store figures refreshed every ``refresh_s``."""

    def __init__(
        self,
        server: Any,
        listen: str,
        *,
        refresh_s: float = 15.0,
        drift_window_s: float = 3600.0,
    ) -> None:
        self.server = server
        self.refresh_s = refresh_s
        self.figures = StoreFigures(drift_window_s)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(server, self.figures))
        host, _, port = listen.rpartition(":")
        metrics_app = make_wsgi_app(self.registry)
        pages = Pages(server)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if path in HEALTH_PATHS:
                return routes(path, environ, start_response)
            slots = self.httpd.serving_slots
            if not slots.acquire(blocking=False):
                start_response(
                    "503 Service Unavailable",
                    [("Content-Type", "text/plain"), ("Retry-After", "1")],
                )
                return [f"{MAX_CONNECTIONS} requests in progress; retry\n".encode()]
            try:
                # the body is produced here, inside the slot
                return list(routes(path, environ, start_response))
            finally:
                slots.release()

        def routes(
            path: str, environ: dict[str, Any], start_response: Callable[..., Any]
        ) -> list[bytes]:
            if path == "/metrics":
                out: list[bytes] = metrics_app(environ, start_response)
                return out
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                ok, why = server.serving()
                status = "200 OK" if ok else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain")])
                return [(("ready" if ok else f"not ready: {why}") + "\n").encode()]
            if path == "/" or path.startswith(("/models/", "/static/")):
                return pages(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /, /models/NAME, /metrics, /healthz, /readyz\n"]

        self.httpd = make_server(
            host or "127.0.0.1",
            int(port),
            app,
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
        self.port = int(self.httpd.server_port)
        self._stop = threading.Event()
        self._inflight: Any = None  # the refresh job queued last, until it ran
        self._refresh_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self.httpd.serve_forever, name="modeltap-http", daemon=True),
            threading.Thread(target=self._refresh_loop, name="modeltap-figures", daemon=True),
        ]

    def start(self) -> MetricsServer:
        for t in self._threads:
            t.start()
        return self

    def refresh(self, timeout_s: float = 60.0) -> bool:
        """Recomputes the store figures now, in short read jobs beside the
        writer (one at a time). A job still queued from an earlier call is
        waited for, never queued again."""
        deadline = time.monotonic() + timeout_s
        with self._refresh_lock:
            return self._refresh(deadline)

    def _refresh(self, deadline: float) -> bool:
        reader = self.server.reader
        try:
            for step in (self.figures.step_profiles, self.figures.step_classes):
                while True:
                    if self._inflight is None:
                        self._inflight = reader.run(step)
                    more = self._inflight.result(max(deadline - time.monotonic(), 0.0))
                    self._inflight = None
                    if not more:
                        break
            if self._inflight is None:
                self._inflight = reader.run(self.figures.finish)
            self._inflight.result(max(deadline - time.monotonic(), 0.0))
            self._inflight = None
            return True
        except FutureTimeout:
            log.warning("refreshing the store figures for /metrics: the store is busy")
            return False
        except Exception:
            self._inflight = None
            log.warning("refreshing the store figures for /metrics failed", exc_info=True)
            return False

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_s)

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(5)
