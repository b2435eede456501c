//! The settings of a pipeline and the ring size they give.

use std::sync::Arc;
use std::time::Duration;

use crate::profile::Compiled;
use crate::proto;
use crate::record::Slot;

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
