//! The record pipeline of one agent: the ring, the drain thread that turns
//! slots into encoded batches, the queue of batches waiting for the exporter,
//! and the delivery counters.
//!
//! Every record handed to the agent is counted in `logged` and, at any
//! moment, in exactly one of: the ring or a pending batch (`pending`),
//! `shipped`, `spooled`, `discarded`, `dropped_full`, `dropped_spool`,
//! `invalid` or `sampled_out`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch::{encode, BatchBuilder, Schema, VocabEntry, VocabMirror};
use crate::profile::{merge_window, Compiled, Profiler};
use crate::proto;
use crate::record::{Slot, SlotKind};
use crate::ring::Ring;

/// Settings of a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Ring slots (rounded up to a power of two).
    pub capacity: usize,
    /// Records per batch.
    pub batch_size: usize,
    /// A non-empty batch is sealed at the latest this long after its first record.
    pub flush_interval: Duration,
    /// Encoded batches that may wait for the exporter before the drain thread
    /// stops taking records from the ring (which then fills and drops).
    pub max_pending_batches: usize,
    /// Identity and metadata written on every batch.
    pub model: proto::ModelInfo,
    /// The reference window profiles are binned against (without one,
    /// windows count records, errors and latencies only).
    pub reference: Option<Arc<Compiled>>,
    /// Width of the tumbling event-time windows.
    pub window: Duration,
    /// Share of records kept as raw rows in batches; every record is
    /// profiled either way.
    pub sample_rate: f64,
    /// Windows kept locally for `Pipeline::profile`.
    pub max_windows: usize,
    /// Memory budget of the record path in bytes, whatever the width of a
    /// record: three eighths for the ring's slots, an eighth for the
    /// variable-length parts beside them (wide vectors, strings), an eighth
    /// for the vocabularies of categories and labels, an eighth for the
    /// batch being built and a quarter for sealed batches waiting for the
    /// exporter.
    pub buffer_bytes: usize,
}

/// Largest batch the drain thread builds (bytes), well below the gRPC
/// message limit (64 MiB by default) whatever `buffer_bytes` is.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// Default [`PipelineConfig::buffer_bytes`]: 64 MiB.
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;
/// Fewest slots a ring may have; a schema too wide for that many slots in
/// half the budget is refused.
pub const MIN_SLOTS: usize = 8;
/// Bytes a slot costs besides its value row.
pub const SLOT_OVERHEAD: usize = std::mem::size_of::<Slot>() + 16;

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            batch_size: 4_096,
            flush_interval: Duration::from_secs(1),
            max_pending_batches: 64,
            model: proto::ModelInfo::default(),
            reference: None,
            window: Duration::from_secs(60),
            sample_rate: 1.0,
            max_windows: 1440,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
        }
    }
}

impl PipelineConfig {
    /// Bytes the ring's slots may take.
    pub fn ring_bytes(&self) -> usize {
        self.buffer_bytes / 8 * 3
    }

    /// Bytes the variable-length parts of records in the ring may take.
    pub fn side_bytes(&self) -> usize {
        self.buffer_bytes / 8
    }

    /// Bytes the vocabularies (categories, labels) may take, all together.
    pub fn vocab_bytes(&self) -> usize {
        self.buffer_bytes / 8
    }

    /// Bytes at which the batch being built is sealed.
    pub fn batch_bytes(&self) -> usize {
        (self.buffer_bytes / 8).clamp(1, MAX_BATCH_BYTES)
    }

    /// Most bytes one record's variable-length parts may take: a record
    /// that needs more can never fit, and is refused as invalid.
    pub fn max_record_side_bytes(&self) -> usize {
        self.side_bytes().min(self.batch_bytes())
    }

    /// Bytes of sealed batches that may wait for the exporter.
    pub fn pending_bytes(&self) -> usize {
        self.buffer_bytes / 4
    }

    /// Ring slots for value rows of `stride` values: `capacity` rounded up
    /// to a power of two, then halved until the slots fit
    /// [`PipelineConfig::ring_bytes`]; `None` when not even
    /// [`MIN_SLOTS`] fit.
    pub fn slots_for(&self, stride: usize) -> Option<usize> {
        let per = stride.saturating_mul(8).saturating_add(SLOT_OVERHEAD);
        let mut cap = self.capacity.max(2).next_power_of_two();
        while cap > MIN_SLOTS && cap.saturating_mul(per) > self.ring_bytes() {
            cap /= 2;
        }
        (cap.saturating_mul(per) <= self.ring_bytes() || cap < MIN_SLOTS).then_some(cap)
    }
}

/// Monotonic counters of the pipeline (see the module docs).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records handed to the agent.
    pub logged: AtomicU64,
    /// Records rejected as invalid (never in the ring).
    pub invalid: AtomicU64,
    /// Records dropped because the ring was full.
    pub dropped_full: AtomicU64,
    /// Records acknowledged by their destination.
    pub shipped: AtomicU64,
    /// Records written to the disk spool, waiting for the collector.
    pub spooled: AtomicU64,
    /// Records dropped because the spool was over its cap.
    pub dropped_spool: AtomicU64,
    /// Records with no destination (local-only agents) or refused for good.
    pub discarded: AtomicU64,
    /// Records profiled but not kept as raw rows (`sample_rate`).
    pub sampled_out: AtomicU64,
    /// Records kept but flagged (missing, non-finite or bad values).
    pub flagged: AtomicU64,
    /// Records logged with an inference error.
    pub inference_errors: AtomicU64,
    /// The agent's own failures (exporter, sink, metrics sampler).
    pub errors: AtomicU64,
    /// Batches encoded.
    pub batches: AtomicU64,
    /// Encoded bytes.
    pub bytes: AtomicU64,
    /// Spans put in the ring (they are no records: none of the above).
    pub spans: AtomicU64,
    /// Spans dropped: no room in the ring or the side budget.
    pub spans_dropped: AtomicU64,
    /// Spans in batches discarded or dropped from the spool.
    pub spans_lost: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Records handed to the agent.
    pub logged: u64,
    /// In the ring or in a batch not yet settled.
    pub pending: u64,
    /// Acknowledged by their destination.
    pub shipped: u64,
    /// In the disk spool.
    pub spooled: u64,
    /// Dropped: ring full.
    pub dropped_full: u64,
    /// Dropped: spool full.
    pub dropped_spool: u64,
    /// No destination, or refused for good.
    pub discarded: u64,
    /// Profiled only (sampled out of the raw rows).
    pub sampled_out: u64,
    /// Rejected as invalid.
    pub invalid: u64,
    /// Kept but flagged.
    pub flagged: u64,
    /// Logged with an inference error.
    pub inference_errors: u64,
    /// The agent's own failures.
    pub errors: u64,
    /// Batches encoded.
    pub batches: u64,
    /// Encoded bytes.
    pub bytes: u64,
    /// Records in the ring now.
    pub in_ring: u64,
    /// Spans put in the ring.
    pub spans: u64,
    /// Spans dropped (no room).
    pub spans_dropped: u64,
    /// Spans in batches discarded or dropped from the spool.
    pub spans_lost: u64,
}

/// What became of a batch the exporter took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged by the collector or accepted by the sink.
    Shipped,
    /// Written to the disk spool.
    Spooled,
    /// Dropped because the spool was over its cap.
    DroppedSpool,
    /// No destination, or refused for good.
    Discarded,
}

/// A sealed, encoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Batch sequence number within the agent.
    pub seq: u64,
    /// Records in it.
    pub n_records: u64,
    /// Spans in it.
    pub n_spans: u64,
    /// The protobuf bytes.
    pub bytes: Vec<u8>,
}

enum OutItem {
    Batch(EncodedBatch),
    /// Every record popped before this ring position is in a batch queued
    /// ahead of the marker.
    Marker(u64),
}

#[derive(Default)]
struct OutQueue {
    items: VecDeque<OutItem>,
    n_batches: usize,
    /// In the exporter's hands: (records, spans, bytes) by batch seq.
    in_hand: HashMap<u64, (u64, u64, usize)>,
    /// Bytes of the queued and in-hand batches.
    bytes: usize,
    settled_upto: u64,
    /// The drain thread has finished: nothing more will be queued.
    finished: bool,
}

impl OutQueue {
    /// Applies markers at the front once no batch ahead of them is in hand.
    fn apply_markers(&mut self) -> bool {
        let mut moved = false;
        while self.in_hand.is_empty() {
            match self.items.front() {
                Some(OutItem::Marker(pos)) => {
                    self.settled_upto = self.settled_upto.max(*pos);
                    self.items.pop_front();
                    moved = true;
                }
                _ => break,
            }
        }
        moved
    }
}

/// Result of [`Pipeline::take_batch`].
#[derive(Debug)]
pub enum Take {
    /// A batch to deliver; report its fate with [`Pipeline::settle`].
    Batch(EncodedBatch),
    /// Nothing arrived before the timeout.
    Timeout,
    /// The pipeline is closed and every batch has been taken.
    Finished,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Nanoseconds since the Unix epoch.
#[inline]
pub fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Most system samples kept while no batch carries them away.
const MAX_SYSTEM_SAMPLES: usize = 1_024;

/// The shared state of one agent's record path.
pub struct Pipeline {
    cfg: PipelineConfig,
    schema: OnceLock<Arc<Schema>>,
    ring: OnceLock<Ring<Slot>>,
    /// Delivery counters.
    pub counters: Counters,
    vocab: Mutex<Vec<VocabEntry>>,
    system: Mutex<Vec<proto::SystemSample>>,
    history: Mutex<std::collections::BTreeMap<u64, proto::WindowProfile>>,
    out: Mutex<OutQueue>,
    items_cv: Condvar,
    space_cv: Condvar,
    settled_cv: Condvar,
    flush_target: AtomicU64,
    /// Seals asked for by `flush` before the ring exists (spans only), and
    /// seals done for them by the drain thread.
    seals_asked: AtomicU64,
    seals_done: AtomicU64,
    stop: AtomicBool,
    wake_mask: usize,
    drain: OnceLock<Thread>,
    handle: Mutex<Option<JoinHandle<()>>>,
    pid: u32,
    /// Bytes of side boxes of records in the ring.
    side_used: AtomicUsize,
    /// `SlotKind::Profile` and `SlotKind::Span` slots in the ring (no
    /// records: `in_ring` leaves them out).
    parts_in_ring: AtomicU64,
    /// Spans ended before the first record fixed the schema (and so the
    /// ring): the drain thread batches them as they are.
    early_spans: Mutex<Vec<Slot>>,
    last_error: Mutex<Option<String>>,
}

/// Most spans kept before the ring exists (see `Pipeline::push_span`).
pub const MAX_EARLY_SPANS: usize = 4096;

/// What became of an attempt to put a record in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insert {
    Pushed,
    /// No room (ring, side budget), no ring yet, or shut down.
    Full,
    /// The record's writer panicked; the slot was published empty.
    Failed,
    /// The record's variable-length parts exceed what one record may take.
    TooLarge,
}

/// Why a schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaTooWide {
    /// Values per record.
    pub stride: usize,
    /// The budget it had to fit.
    pub buffer_bytes: usize,
}

impl std::fmt::Display for SchemaTooWide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a record of {} values does not fit {} ring slots in buffer_bytes={}; \
             raise buffer_bytes",
            self.stride, MIN_SLOTS, self.buffer_bytes
        )
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("model", &self.cfg.model.model)
            .field("agent_id", &self.cfg.model.agent_id)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Creates the pipeline and starts its drain thread.
    ///
    /// # Errors
    /// When the OS refuses to start a thread.
    pub fn start(cfg: PipelineConfig) -> std::io::Result<Arc<Self>> {
        // Wake the drain thread when half a batch has arrived since the last
        // wake, so a burst never waits for the timer, yet a steady stream
        // costs no wake-up per record.
        let wake_every = (cfg.batch_size / 2)
            .clamp(1, cfg.capacity.max(2) / 2)
            .next_power_of_two();
        let p = Arc::new(Self {
            wake_mask: wake_every - 1,
            cfg,
            schema: OnceLock::new(),
            ring: OnceLock::new(),
            counters: Counters::default(),
            vocab: Mutex::new(Vec::new()),
            system: Mutex::new(Vec::new()),
            history: Mutex::new(std::collections::BTreeMap::new()),
            out: Mutex::new(OutQueue::default()),
            items_cv: Condvar::new(),
            space_cv: Condvar::new(),
            settled_cv: Condvar::new(),
            flush_target: AtomicU64::new(0),
            seals_asked: AtomicU64::new(0),
            seals_done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            drain: OnceLock::new(),
            handle: Mutex::new(None),
            pid: std::process::id(),
            side_used: AtomicUsize::new(0),
            parts_in_ring: AtomicU64::new(0),
            early_spans: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
        });
        let worker = Arc::clone(&p);
        let handle = std::thread::Builder::new()
            .name("modeltap-drain".into())
            .spawn(move || worker.drain_loop())?;
        let _ = p.drain.set(handle.thread().clone());
        *lock(&p.handle) = Some(handle);
        Ok(p)
    }

    /// The configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The schema, once fixed.
    pub fn schema(&self) -> Option<&Arc<Schema>> {
        self.schema.get()
    }

    /// Fixes the schema (first caller wins) and allocates the ring for it,
    /// with as many slots as fit the budget. Returns the schema in force,
    /// which may be another caller's.
    ///
    /// # Errors
    /// When `schema` is too wide for [`MIN_SLOTS`] slots in the ring's
    /// budget (and no schema is in force yet).
    pub fn init_schema(&self, schema: Schema) -> Result<&Arc<Schema>, SchemaTooWide> {
        if self.schema.get().is_none() && self.cfg.slots_for(schema.stride()).is_none() {
            return Err(SchemaTooWide {
                stride: schema.stride(),
                buffer_bytes: self.cfg.buffer_bytes,
            });
        }
        let s = self.schema.get_or_init(|| Arc::new(schema));
        let stride = s.stride();
        let slots = self.cfg.slots_for(stride).unwrap_or(MIN_SLOTS);
        self.ring
            .get_or_init(|| Ring::new(slots, || Slot::with_stride(stride)));
        Ok(s)
    }

    /// Ring capacity in slots (before the schema is fixed: the most it may
    /// have).
    pub fn capacity(&self) -> usize {
        self.ring.get().map_or_else(
            || self.cfg.capacity.max(2).next_power_of_two(),
            Ring::capacity,
        )
    }

    /// Announces a new vocabulary entry; call before pushing the first record
    /// that uses the code.
    pub fn announce_vocab(&self, entry: VocabEntry) {
        lock(&self.vocab).push(entry);
    }

    /// Queues a system sample for the next batch.
    pub fn add_system_sample(&self, sample: proto::SystemSample) {
        let mut s = lock(&self.system);
        if s.len() >= MAX_SYSTEM_SAMPLES {
            s.remove(0);
        }
        s.push(sample);
    }

    /// Copies a record into a free slot with `fill`. Counts it as logged,
    /// and as `dropped_full` (returning `false`) when the ring is full or
    /// the schema is not fixed yet. `fill` must not attach a side box (its
    /// bytes would escape the side budget): use [`Pipeline::push_sized`].
    #[inline]
    pub fn push(&self, fill: impl FnOnce(&mut Slot)) -> bool {
        self.push_sized(0, fill)
    }

    /// Like [`Pipeline::push`] for a record whose `fill` attaches a side box
    /// of `side_bytes` (see `Side::heap_bytes`): refused (`dropped_full`)
    /// when the side budget cannot hold it now, and as `invalid` when it
    /// could never hold it ([`PipelineConfig::max_record_side_bytes`]).
    #[inline]
    pub fn push_sized(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> bool {
        self.counters.logged.fetch_add(1, Ordering::AcqRel);
        match self.insert(side_bytes, fill) {
            Insert::Pushed => true,
            Insert::TooLarge => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                false
            }
            Insert::Full | Insert::Failed => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Like [`Pipeline::push_sized`] but does not count a refusal, so the
    /// caller can wait for room and try again (`on_full="block"`, bulk
    /// logging). Returns `true` once the record is taken care of: pushed
    /// (counted as logged), or lost because `fill` panicked (counted as
    /// logged and dropped, and as an error): trying again cannot help.
    #[inline]
    pub fn try_push(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> bool {
        // Counted before the push, so the record is never shipped before it
        // was logged (the counters add up at every moment); taken back when
        // there was no room.
        self.counters.logged.fetch_add(1, Ordering::AcqRel);
        match self.insert(side_bytes, fill) {
            Insert::Pushed => true,
            Insert::Failed => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                true
            }
            Insert::TooLarge => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                true
            }
            Insert::Full => {
                self.counters.logged.fetch_sub(1, Ordering::AcqRel);
                self.wake_drain();
                false
            }
        }
    }

    /// Counts `n` records that were handed to the agent but could not be
    /// taken (no room, shut down), without touching the ring.
    pub fn count_dropped(&self, n: u64) {
        self.counters.logged.fetch_add(n, Ordering::Relaxed);
        self.counters.dropped_full.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` records that their writer profiled (in a part it pushed
    /// with [`Pipeline::try_push_profile`]) and sampled out of the raw rows.
    pub fn count_sampled_out(&self, n: u64) {
        self.counters.logged.fetch_add(n, Ordering::Relaxed);
        self.counters.sampled_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Most [`crate::record::profile_heap_bytes`] a part given to
    /// [`Pipeline::try_push_profile`] may have: a quarter of the side
    /// budget, so that several parts of one wide profile
    /// ([`crate::profile::split_columns`]) fit in the ring at once.
    pub fn max_profile_part_bytes(&self) -> usize {
        (self.cfg.max_record_side_bytes() / 4)
            .saturating_sub(std::mem::size_of::<crate::record::Side>())
    }

    /// Pushes a window profile built by a writer (`SlotKind::Profile`),
    /// taking it out of `part`, whose first column is reference column
    /// `columns_from`; the drain thread merges it into its own windows, in
    /// ring order, so a flush covers it like a record. Counts nothing (it
    /// is no record). Returns `false`, leaving `part` in place, when the
    /// ring or the side budget has no room now; a part larger than
    /// [`PipelineConfig::max_record_side_bytes`] is never taken (keep parts
    /// within [`Pipeline::max_profile_part_bytes`]).
    pub fn try_push_profile(
        &self,
        part: &mut Option<Box<proto::WindowProfile>>,
        columns_from: usize,
    ) -> bool {
        let Some(bytes) = part.as_deref().map(crate::record::profile_heap_bytes) else {
            return true;
        };
        let side_bytes = bytes + std::mem::size_of::<crate::record::Side>();
        // Counted before it can be popped (and taken back if it was not
        // pushed), so `in_ring` never counts it as a record.
        self.parts_in_ring.fetch_add(1, Ordering::AcqRel);
        match self.insert(side_bytes, |slot| {
            slot.kind = SlotKind::Profile;
            slot.profiled = false;
            slot.side = Some(Box::new(crate::record::Side {
                profile: part.take(),
                profile_columns_from: columns_from,
                ..Default::default()
            }));
        }) {
            Insert::Pushed => true,
            Insert::Failed => {
                // Published as `Void`: the drain skips it without counting.
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                true
            }
            Insert::TooLarge => {
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                false
            }
            Insert::Full => {
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                self.wake_drain();
                false
            }
        }
    }

    /// Puts a span (`SlotKind::Span`, written by `fill` with a side box of
    /// `side_bytes`) in the ring, never waiting: counted in `spans`, or in
    /// `spans_dropped` (returning `false`) when there is no room. A span is
    /// no record: the record counters do not see it.
    /// Before the first record fixes the schema there is no ring: up to
    /// [`MAX_EARLY_SPANS`] spans wait in a small queue instead.
    pub fn push_span(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> bool {
        if self.ring.get().is_none() {
            let mut early = lock(&self.early_spans);
            // Charged to the side budget like a slot's side box.
            let room = self.side_used.load(Ordering::Acquire) + side_bytes <= self.cfg.side_bytes();
            if self.is_stopping() || early.len() >= MAX_EARLY_SPANS || !room {
                self.counters.spans_dropped.fetch_add(1, Ordering::Relaxed);
                drop(early);
                self.wake_drain();
                return false;
            }
            self.side_used.fetch_add(side_bytes, Ordering::AcqRel);
            let mut slot = Slot::with_stride(0);
            fill(&mut slot);
            slot.kind = SlotKind::Span;
            slot.side_charge = side_bytes;
            early.push(slot);
            let half = early.len() == MAX_EARLY_SPANS / 2;
            drop(early);
            self.counters.spans.fetch_add(1, Ordering::Relaxed);
            if half {
                self.wake_drain();
            }
            return true;
        }
        self.parts_in_ring.fetch_add(1, Ordering::AcqRel);
        let pushed = match self.insert(side_bytes, fill) {
            Insert::Pushed => true,
            Insert::Full => {
                self.wake_drain();
                false
            }
            Insert::Failed | Insert::TooLarge => false,
        };
        if pushed {
            self.counters.spans.fetch_add(1, Ordering::Relaxed);
        } else {
            self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
            self.counters.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
        pushed
    }

    fn insert(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> Insert {
        if side_bytes > self.cfg.max_record_side_bytes() {
            return Insert::TooLarge;
        }
        // A shut-down pipeline's ring is closed by the drain thread before it
        // finishes, so a push racing the shutdown either lands before the
        // close (and is drained) or is refused: no record is stranded.
        let Some(ring) = self
            .ring
            .get()
            .filter(|_| !self.stop.load(Ordering::Relaxed))
        else {
            // No ring yet, or shut down: nothing would ever drain it.
            return Insert::Full;
        };
        if side_bytes > 0 {
            let before = self.side_used.fetch_add(side_bytes, Ordering::AcqRel);
            if before.saturating_add(side_bytes) > self.cfg.side_bytes() {
                self.side_used.fetch_sub(side_bytes, Ordering::AcqRel);
                return Insert::Full;
            }
        }
        let mut written = true;
        let pushed = ring.push_with_pos(|slot| {
            slot.request_id_inline.clear();
            let fill = std::panic::AssertUnwindSafe(|| fill(slot));
            if std::panic::catch_unwind(fill).is_err() {
                // Half-written: publish nothing the drain would read.
                slot.reset();
                slot.kind = SlotKind::Void;
                written = false;
            }
            slot.side_charge = side_bytes;
        });
        match pushed {
            Some(_) if !written => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                Insert::Failed
            }
            Some(pos) => {
                if pos & self.wake_mask == self.wake_mask {
                    self.wake_drain();
                }
                Insert::Pushed
            }
            None => {
                if side_bytes > 0 {
                    self.side_used.fetch_sub(side_bytes, Ordering::AcqRel);
                }
                Insert::Full
            }
        }
    }

    /// Bytes of side boxes of records now in the ring.
    pub fn side_used(&self) -> usize {
        self.side_used.load(Ordering::Acquire)
    }

    /// Records the drain thread has taken out of the ring so far.
    pub fn consumed(&self) -> u64 {
        self.ring.get().map_or(0, |r| r.head_pos() as u64)
    }

    /// Counts a rejected record.
    pub fn count_invalid(&self) {
        self.counters.logged.fetch_add(1, Ordering::Relaxed);
        self.counters.invalid.fetch_add(1, Ordering::Relaxed);
    }

    fn wake_drain(&self) {
        if let Some(t) = self.drain.get() {
            t.unpark();
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Acquire);
        let shipped = g(&c.shipped);
        let spooled = g(&c.spooled);
        let dropped_full = g(&c.dropped_full);
        let dropped_spool = g(&c.dropped_spool);
        let discarded = g(&c.discarded);
        let sampled_out = g(&c.sampled_out);
        let invalid = g(&c.invalid);
        let logged = g(&c.logged);
        let settled =
            shipped + spooled + dropped_full + dropped_spool + discarded + sampled_out + invalid;
        Stats {
            logged,
            pending: logged.saturating_sub(settled),
            shipped,
            spooled,
            dropped_full,
            dropped_spool,
            discarded,
            sampled_out,
            invalid,
            flagged: g(&c.flagged),
            inference_errors: g(&c.inference_errors),
            errors: g(&c.errors),
            batches: g(&c.batches),
            bytes: g(&c.bytes),
            in_ring: self
                .ring
                .get()
                .map_or(0, |r| r.len() as u64)
                .saturating_sub(self.parts_in_ring.load(Ordering::Acquire)),
            spans: g(&c.spans),
            spans_dropped: g(&c.spans_dropped),
            spans_lost: g(&c.spans_lost),
        }
    }

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

    /// Waits up to `timeout` for the next encoded batch.
    pub fn take_batch(&self, timeout: Duration) -> Take {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.out);
        loop {
            if q.apply_markers() {
                self.settled_cv.notify_all();
            }
            // Markers stay queued while batches ahead of them are in hand;
            // the first batch may sit behind such a marker only if nothing
            // is in hand, which apply_markers just resolved.
            let pos = q.items.iter().position(|i| matches!(i, OutItem::Batch(_)));
            if let Some(pos) = pos.filter(|&p| p == 0 || q.in_hand.is_empty()) {
                if let Some(OutItem::Batch(b)) = q.items.remove(pos) {
                    q.n_batches -= 1;
                    q.in_hand
                        .insert(b.seq, (b.n_records, b.n_spans, b.bytes.len()));
                    self.space_cv.notify_all();
                    return Take::Batch(b);
                }
            }
            if q.finished && q.items.is_empty() {
                return Take::Finished;
            }
            let now = Instant::now();
            if now >= deadline {
                return Take::Timeout;
            }
            q = self
                .items_cv
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Reports what became of a batch taken with [`Pipeline::take_batch`].
    /// Returns `false` if no such batch was in hand.
    pub fn settle(&self, seq: u64, outcome: Outcome) -> bool {
        let mut q = lock(&self.out);
        let Some((n, spans, bytes)) = q.in_hand.remove(&seq) else {
            return false;
        };
        if matches!(outcome, Outcome::Discarded | Outcome::DroppedSpool) {
            self.counters.spans_lost.fetch_add(spans, Ordering::Relaxed);
        }
        q.bytes = q.bytes.saturating_sub(bytes);
        self.space_cv.notify_all();
        self.count_outcome(outcome, n);
        q.apply_markers();
        drop(q);
        self.settled_cv.notify_all();
        self.items_cv.notify_all();
        true
    }

    /// Counts `n` records as having met `outcome` (also for records the
    /// exporter handles outside the queue, such as spool replays).
    pub fn count_outcome(&self, outcome: Outcome, n: u64) {
        let c = &self.counters;
        let counter = match outcome {
            Outcome::Shipped => &c.shipped,
            Outcome::Spooled => &c.spooled,
            Outcome::DroppedSpool => &c.dropped_spool,
            Outcome::Discarded => &c.discarded,
        };
        counter.fetch_add(n, Ordering::AcqRel);
    }

    /// Moves `n` records from `spooled` to `shipped` (a spool replay was
    /// acknowledged) or to `dropped_spool`.
    pub fn unspool(&self, n: u64, outcome: Outcome) {
        let c = &self.counters;
        let _ = c
            .spooled
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        self.count_outcome(outcome, n);
    }

    /// Blocks until every record pushed before the call is in a batch that
    /// has been settled, or `timeout` passes. Returns whether it got there.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(ring) = self.ring.get() else {
            return self.flush_early_spans(timeout);
        };
        let target = ring.tail_pos() as u64;
        if target == 0 {
            return true;
        }
        self.flush_target.fetch_max(target, Ordering::AcqRel);
        self.wake_drain();
        self.wait_out(timeout, |q| {
            if q.settled_upto >= target {
                Some(true)
            } else if q.finished && q.items.is_empty() && q.in_hand.is_empty() {
                Some(false)
            } else {
                None
            }
        })
    }

    /// Waits (at most `timeout`) until `done` decides on the out queue.
    fn wait_out(&self, timeout: Duration, done: impl Fn(&OutQueue) -> Option<bool>) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.out);
        loop {
            if let Some(answer) = done(&q) {
                return answer;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            q = self
                .settled_cv
                .wait_timeout(q, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// `flush` before the first record fixed the schema: only spans can be
    /// waiting. Asks the drain thread to seal what it holds, then waits
    /// until every queued batch is settled.
    fn flush_early_spans(&self, timeout: Duration) -> bool {
        if self.counters.spans.load(Ordering::Acquire) == 0 {
            return true;
        }
        let asked = self.seals_asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake_drain();
        self.wait_out(timeout, |q| {
            let sealed = self.seals_done.load(Ordering::Acquire) >= asked;
            ((sealed || q.finished) && q.items.is_empty() && q.in_hand.is_empty()).then_some(true)
        })
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
            if matches!(slot.kind, SlotKind::Profile | SlotKind::Span) {
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
            }
            if slot.kind == SlotKind::Span {
                self.counters.spans_dropped.fetch_add(1, Ordering::Relaxed);
            }
            !matches!(
                slot.kind,
                SlotKind::Void | SlotKind::Profile | SlotKind::Span
            )
        }) {
            n += u64::from(counted);
        }
        if n > 0 {
            self.counters.dropped_full.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// True once the drain thread has finished and every batch was taken.
    pub fn is_finished(&self) -> bool {
        let q = lock(&self.out);
        q.finished && q.items.iter().all(|i| matches!(i, OutItem::Marker(_)))
    }

    /// True once [`Pipeline::shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn enqueue(&self, item: OutItem) {
        let mut q = lock(&self.out);
        if let OutItem::Batch(b) = &item {
            // Bounded in batches and in bytes; one batch may always wait,
            // however large, so progress never depends on the budget.
            while (q.n_batches >= self.cfg.max_pending_batches
                || (q.bytes > 0 && q.bytes + b.bytes.len() > self.cfg.pending_bytes()))
                && !self.is_stopping()
            {
                q = self
                    .space_cv
                    .wait_timeout(q, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            q.n_batches += 1;
            q.bytes += b.bytes.len();
        }
        q.items.push_back(item);
        if q.apply_markers() {
            self.settled_cv.notify_all();
        }
        drop(q);
        self.items_cv.notify_all();
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

    /// The first internal failure of the drain thread, if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    fn drain_loop(self: Arc<Self>) {
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
                let mut early = lock(&self.early_spans);
                if !early.is_empty() {
                    for mut slot in early.drain(..) {
                        self.side_used
                            .fetch_sub(std::mem::take(&mut slot.side_charge), Ordering::AcqRel);
                        if let Some(prof) = profiler.as_mut() {
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
                    while b.len() < self.cfg.batch_size && b.byte_size() < batch_bytes {
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
                    if b.len() >= self.cfg.batch_size || b.byte_size() >= batch_bytes {
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
