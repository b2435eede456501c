//! The record pipeline of one agent: the ring, the drain thread that turns
//! slots into encoded batches, the queue of batches waiting for the exporter,
//! and the delivery counters.
//!
//! Every record handed to the agent is counted in `logged` and, at any
//! moment, in exactly one of: the ring or a pending batch (`pending`),
//! `shipped`, `spooled`, `discarded`, `dropped_full`, `dropped_spool`,
//! `invalid` or `sampled_out`.

mod config;
mod counters;
mod drain;
mod exporter;
mod push;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::batch::{Schema, VocabEntry};
use crate::proto;
use crate::record::Slot;
use crate::ring::Ring;
use exporter::OutQueue;

pub use config::{
    PipelineConfig, SchemaTooWide, DEFAULT_BUFFER_BYTES, MAX_BATCH_BYTES, MIN_SLOTS, SLOT_OVERHEAD,
};
pub use counters::{Counters, Stats};
pub use exporter::{EncodedBatch, Outcome, Take};
pub use push::LabelPush;

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
    /// `SlotKind::Profile`, `SlotKind::Span` and `SlotKind::Label` slots in
    /// the ring (no records: `in_ring` leaves them out).
    parts_in_ring: AtomicU64,
    /// Spans ended and labels logged before the first record fixed the
    /// schema (and so the ring): the drain thread batches them as they are.
    early_parts: Mutex<Vec<Slot>>,
    /// Slots the drain thread has taken out of `early_parts` so far.
    early_taken: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Most spans and labels kept before the ring exists (see
/// `Pipeline::push_span`, `Pipeline::try_push_label`).
pub const MAX_EARLY_SPANS: usize = 4096;

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
            early_parts: Mutex::new(Vec::new()),
            early_taken: AtomicU64::new(0),
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

    /// True once [`Pipeline::shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The first internal failure of the drain thread, if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }
}
