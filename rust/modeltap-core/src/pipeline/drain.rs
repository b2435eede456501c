//! The drain thread: slots into batches and window profiles, sealing and
//! queueing batches, and shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::exporter::{EncodedBatch, OutItem};
use super::{lock, now_unix_nano, Pipeline};
use crate::batch::{encode, BatchBuilder, Schema, VocabEntry, VocabMirror};
use crate::profile::{merge_window, Compiled, Profiler};
use crate::proto;
use crate::record::SlotKind;
use crate::ring::Ring;

impl Pipeline {
    /// The merged profile of the local windows starting in
    /// `[since, until)` (Unix ns), or `None` when there are none.
    pub fn profile(&self, since: u64, until: u64) -> Option<proto::WindowProfile> {
        let h = lock(&self.history);
        let mut out: Option<proto::WindowProfile> = None;
        for w in h.range(since..until).map(|(_, w)| w) {
            match out.as_mut() {
                Some(acc) => merge_window(acc, w),
                None => out = Some(w.clone()),
            }
        }
        out
    }

    fn remember(&self, parts: &[proto::WindowProfile]) {
        let mut h = lock(&self.history);
        for p in parts {
            h.entry(p.window_start_unix_nano)
                .and_modify(|w| merge_window(w, p))
                .or_insert_with(|| p.clone());
        }
        while h.len() > self.cfg.max_windows.max(1) {
            h.pop_first();
        }
    }

    /// Stops the drain thread after it has moved everything in the ring into
    /// batches; waits for it unless called in a process other than the one
    /// that started it (a forked child, where the thread does not exist).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_drain();
        {
            let _q = lock(&self.out);
            self.space_cv.notify_all();
        }
        if std::process::id() != self.pid {
            return;
        }
        let handle = lock(&self.handle).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        self.sweep();
    }

    /// After the drain thread has finished: closes the ring (if the drain
    /// thread did not get to) and counts any record still in it as dropped,
    /// so nothing stays pending. Normally there is none; only a ring created
    /// by a first record racing the shutdown could hold one.
    fn sweep(&self) {
        let finished = lock(&self.out).finished;
        let Some(ring) = self.ring.get().filter(|_| finished) else {
            return;
        };
        ring.close();
        let mut n = 0u64;
        while let Some(counted) = ring.pop_with(|slot| {
            self.side_used
                .fetch_sub(std::mem::take(&mut slot.side_charge), Ordering::AcqRel);
            slot.side = None;
            slot.profiled = false;
            if matches!(
                slot.kind,
                SlotKind::Profile | SlotKind::Span | SlotKind::Label
            ) {
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
            }
            if slot.kind == SlotKind::Span {
                self.counters.spans_dropped.fetch_add(1, Ordering::Relaxed);
            }
            if slot.kind == SlotKind::Label {
                self.counters.labels_dropped.fetch_add(1, Ordering::Relaxed);
            }
            slot.kind == SlotKind::Record
        }) {
            n += u64::from(counted);
        }
        if n > 0 {
            self.counters.dropped_full.fetch_add(n, Ordering::AcqRel);
        }
    }

    fn seal(
        &self,
        builder: &mut BatchBuilder,
        vocab: &mut VocabMirror,
        mut profiler: Option<&mut Profiler>,
        seq: &mut u64,
    ) {
        // Every code in the batch was announced before its record was
        // pushed, but maybe after this pass last read the announcements:
        // learn them now, so no category or label is sealed without its value.
        let fresh: Vec<VocabEntry> = lock(&self.vocab).drain(..).collect();
        if !fresh.is_empty() {
            if let Some(p) = profiler.as_deref_mut() {
                p.on_vocab(&fresh);
            }
            vocab.extend(fresh);
        }
        if let Some(p) = profiler.as_deref_mut() {
            vocab.extend(p.drain_learned());
        }
        let profiles = profiler.map(Profiler::take).unwrap_or_default();
        let system = std::mem::take(&mut *lock(&self.system));
        if builder.is_empty() && system.is_empty() && profiles.is_empty() {
            return;
        }
        let n = builder.len() as u64;
        let n_spans = builder.n_spans() as u64;
        self.remember(&profiles);
        let mut msg = builder.seal(&self.cfg.model, *seq, &*vocab, system, now_unix_nano());
        msg.profiles = profiles;
        let c = self.stats();
        msg.agent_counters = Some(proto::AgentCounters {
            logged: c.logged,
            dropped_full: c.dropped_full,
            dropped_spool: c.dropped_spool,
            discarded: c.discarded,
            invalid: c.invalid,
            sampled_out: c.sampled_out,
            errors: c.errors,
            spans: c.spans,
            spans_dropped: c.spans_dropped,
            spans_lost: c.spans_lost,
            labels: c.labels,
            labels_dropped: c.labels_dropped,
        });
        let bytes = encode(&msg);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.enqueue(OutItem::Batch(EncodedBatch {
            seq: *seq,
            n_records: n,
            n_spans,
            bytes,
        }));
        *seq += 1;
    }

    /// Runs `f`; a panic in it is counted as one of the agent's own errors
    /// and reported (once per pipeline) instead of killing the drain thread.
    /// Returns whether `f` completed.
    fn contained(&self, what: &str, f: impl FnOnce()) -> bool {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(()) => true,
            Err(payload) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let mut last = lock(&self.last_error);
                if last.is_none() {
                    *last = Some(format!("{what} failed ({msg}); profiling is off"));
                }
                false
            }
        }
    }

    pub(super) fn drain_loop(self: Arc<Self>) {
        use rand::{Rng, SeedableRng};
        // Idle wake-ups cost CPU on every serving host; a quarter of the
        // flush interval keeps batches on time without waking per record.
        let tick = (self.cfg.flush_interval / 4)
            .clamp(Duration::from_millis(1), Duration::from_millis(250));
        let window_ns = u64::try_from(self.cfg.window.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(crate::ids::random_u64());
        let sample_rate = self.cfg.sample_rate;
        let mut builder: Option<BatchBuilder> = None;
        let mut profiler: Option<Profiler> = None;
        let mut vocab = VocabMirror::default();
        let mut seq: u64 = 0;
        let mut popped: u64 = 0;
        let mut marked: u64 = 0;
        let mut batch_started: Option<Instant> = None;
        let mut last_system = Instant::now();
        // Off for good once the profiler failed: records still flow.
        let mut profiling = true;
        let mut profiler_fixed = false;
        let empty_schema = Arc::new(Schema {
            feature_names: Vec::new(),
            categorical: Vec::new(),
            out_cap: 0,
            prob_cap: 0,
        });
        loop {
            let stopping = self.is_stopping();
            let b = builder.get_or_insert_with(|| {
                BatchBuilder::new(Arc::clone(self.schema.get().unwrap_or(&empty_schema)))
            });
            if let Some(schema) = self.schema.get() {
                if !Arc::ptr_eq(b.schema(), schema) {
                    // Spans batched before the schema was fixed go first.
                    if !b.is_empty() {
                        self.seal(b, &mut vocab, None, &mut seq);
                        batch_started = None;
                    }
                    *b = BatchBuilder::new(Arc::clone(schema));
                }
            }
            // The profiler: on the empty schema until the first record fixes
            // one (spans still count their stage latencies), then rebuilt
            // for it, keeping the windows profiled so far.
            let fixed = self.schema.get().is_some();
            if profiling && (profiler.is_none() || (fixed && !profiler_fixed)) {
                let compiled = self
                    .cfg
                    .reference
                    .clone()
                    .unwrap_or_else(|| Arc::new(Compiled::new(proto::Reference::default())));
                let schema = self.schema.get().unwrap_or(&empty_schema);
                let mut fresh = Profiler::new(compiled, schema, window_ns);
                if let Some(mut old) = profiler.take() {
                    for w in old.take() {
                        fresh.absorb(&w, 0);
                    }
                }
                profiler = Some(fresh);
                profiler_fixed = fixed;
            }
            {
                let mut early = lock(&self.early_parts);
                if !early.is_empty() {
                    self.early_taken
                        .fetch_add(early.len() as u64, Ordering::AcqRel);
                    for mut slot in early.drain(..) {
                        self.side_used
                            .fetch_sub(std::mem::take(&mut slot.side_charge), Ordering::AcqRel);
                        // Labels are no records: never profiled.
                        if let Some(prof) =
                            profiler.as_mut().filter(|_| slot.kind == SlotKind::Span)
                        {
                            if !self.contained("profiling a span", || prof.add_span(&slot)) {
                                profiler = None;
                                profiling = false;
                            }
                        }
                        b.push(&mut slot);
                    }
                    batch_started.get_or_insert_with(Instant::now);
                }
            }
            if let Some(ring) = self.ring.get().filter(|_| fixed) {
                // Categories and labels announced before the records that use
                // them: learn them before popping.
                let fresh: Vec<VocabEntry> = lock(&self.vocab).drain(..).collect();
                if !fresh.is_empty() {
                    if let Some(prof) = profiler.as_mut() {
                        if !self.contained("learning the vocabulary", || prof.on_vocab(&fresh)) {
                            profiler = None;
                            profiling = false;
                        }
                    }
                    vocab.extend(fresh);
                }
                let mut sampled_out = 0u64;
                let side_used = &self.side_used;
                let batch_bytes = self.cfg.batch_bytes();
                loop {
                    // Labels count towards a full batch as records do.
                    while b.len().max(b.n_labels()) < self.cfg.batch_size
                        && b.byte_size() < batch_bytes
                    {
                        let got = ring.pop_with(|slot| {
                            side_used
                                .fetch_sub(std::mem::take(&mut slot.side_charge), Ordering::AcqRel);
                            // Profiled and sampled by its writer already.
                            let profiled = std::mem::take(&mut slot.profiled);
                            if slot.kind == SlotKind::Profile {
                                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                                let (part, from) = slot
                                    .side
                                    .take()
                                    .map_or((None, 0), |s| (s.profile, s.profile_columns_from));
                                if let (Some(prof), Some(part)) = (profiler.as_mut(), part) {
                                    let absorb = || prof.absorb(&part, from);
                                    if !self.contained("merging a profile", absorb) {
                                        profiler = None;
                                        profiling = false;
                                    }
                                }
                                return;
                            }
                            if slot.kind == SlotKind::Span {
                                // No record: not sampled (its trace was
                                // when it began); its duration counts in
                                // the window's stage latencies.
                                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                                if let Some(prof) = profiler.as_mut() {
                                    if !self.contained("profiling a span", || prof.add_span(slot)) {
                                        profiler = None;
                                        profiling = false;
                                    }
                                }
                                b.push(slot);
                                return;
                            }
                            if slot.kind == SlotKind::Label {
                                // No record: neither profiled nor sampled.
                                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                                b.push(slot);
                                return;
                            }
                            if let Some(prof) = profiler.as_mut().filter(|_| !profiled) {
                                let add = || {
                                    prof.add(slot, &mut || lock(&self.vocab).drain(..).collect())
                                };
                                if !self.contained("profiling a record", add) {
                                    profiler = None;
                                    profiling = false;
                                }
                            }
                            if profiled || sample_rate >= 1.0 || rng.random::<f64>() < sample_rate {
                                b.push(slot);
                            } else {
                                slot.side = None;
                                sampled_out += 1;
                            }
                        });
                        if got.is_none() {
                            break;
                        }
                        popped += 1;
                        batch_started.get_or_insert_with(Instant::now);
                    }
                    if b.len().max(b.n_labels()) >= self.cfg.batch_size
                        || b.byte_size() >= batch_bytes
                    {
                        if let Some(prof) = profiler.as_mut() {
                            vocab.extend(prof.drain_learned());
                        }
                        self.seal(b, &mut vocab, profiler.as_mut(), &mut seq);
                        batch_started = None;
                    } else {
                        break;
                    }
                }
                if let Some(prof) = profiler.as_mut() {
                    vocab.extend(prof.drain_learned());
                }
                if sampled_out > 0 {
                    self.counters
                        .sampled_out
                        .fetch_add(sampled_out, Ordering::AcqRel);
                }
            }
            let target = self.flush_target.load(Ordering::Acquire);
            let flush_now = target > marked && popped >= target;
            let age_due = batch_started.is_some_and(|t| t.elapsed() >= self.cfg.flush_interval);
            let system_due = last_system.elapsed() >= self.cfg.flush_interval;
            let seals_asked = self.seals_asked.load(Ordering::Acquire);
            let seal_asked = seals_asked > self.seals_done.load(Ordering::Acquire);
            if flush_now
                || age_due
                || stopping
                || seal_asked
                || (system_due && !lock(&self.system).is_empty())
            {
                self.seal(b, &mut vocab, profiler.as_mut(), &mut seq);
                batch_started = None;
                last_system = Instant::now();
            }
            if seal_asked {
                let _q = lock(&self.out);
                self.seals_done.store(seals_asked, Ordering::Release);
                self.settled_cv.notify_all();
            }
            if flush_now || stopping {
                marked = popped;
                self.enqueue(OutItem::Marker(popped));
            }
            if stopping {
                // Closed here, not by `shutdown`, so that the thread that
                // finishes is the one that closed: nothing can be pushed
                // after the last pop.
                if let Some(r) = self.ring.get() {
                    r.close();
                }
            }
            if stopping && self.ring.get().is_none_or(Ring::is_drained) {
                let mut q = lock(&self.out);
                q.finished = true;
                drop(q);
                self.items_cv.notify_all();
                self.settled_cv.notify_all();
                return;
            }
            let waiting_flush = self.flush_target.load(Ordering::Acquire) > marked;
            std::thread::park_timeout(if waiting_flush || stopping {
                Duration::from_millis(1)
            } else {
                tick
            });
        }
    }
}
