//! The delivery counters of a pipeline and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Pipeline;

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
    /// Labels (ground truth) put in the ring; no records either.
    pub labels: AtomicU64,
    /// Labels dropped: no room in the ring or the side budget.
    pub labels_dropped: AtomicU64,
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
    /// Labels put in the ring.
    pub labels: u64,
    /// Labels dropped (no room).
    pub labels_dropped: u64,
}

impl Pipeline {
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
            labels: g(&c.labels),
            labels_dropped: g(&c.labels_dropped),
        }
    }
}
