//! The exporter's side: the queue of encoded batches, taking them and
//! settling their fate, and flushing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::{lock, Pipeline};

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

pub(super) enum OutItem {
    Batch(EncodedBatch),
    /// Every record popped before this ring position is in a batch queued
    /// ahead of the marker.
    Marker(u64),
}

#[derive(Default)]
pub(super) struct OutQueue {
    items: VecDeque<OutItem>,
    n_batches: usize,
    /// In the exporter's hands: (records, spans, bytes) by batch seq.
    in_hand: HashMap<u64, (u64, u64, usize)>,
    /// Bytes of the queued and in-hand batches.
    bytes: usize,
    settled_upto: u64,
    /// The drain thread has finished: nothing more will be queued.
    pub(super) finished: bool,
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

impl Pipeline {
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
            return self.flush_early_parts(timeout);
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

    /// `flush` before the first record fixed the schema: only spans and
    /// labels can be waiting. Asks the drain thread to seal what it holds,
    /// then waits until every queued batch is settled.
    fn flush_early_parts(&self, timeout: Duration) -> bool {
        if self.counters.spans.load(Ordering::Acquire) == 0
            && self.counters.labels.load(Ordering::Acquire) == 0
        {
            return true;
        }
        let asked = self.seals_asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake_drain();
        self.wait_out(timeout, |q| {
            let sealed = self.seals_done.load(Ordering::Acquire) >= asked;
            ((sealed || q.finished) && q.items.is_empty() && q.in_hand.is_empty()).then_some(true)
        })
    }

    pub(super) fn enqueue(&self, item: OutItem) {
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

    /// True once the drain thread has finished and every batch was taken.
    pub fn is_finished(&self) -> bool {
        let q = lock(&self.out);
        q.finished && q.items.iter().all(|i| matches!(i, OutItem::Marker(_)))
    }
}
